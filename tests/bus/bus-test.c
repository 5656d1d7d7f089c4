/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus-test.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(DIR *, closedir);

static int new_acquire_message(sd_bus *bus, const char *member, const char *resource, const TestAcquireOptions *o,
                               sd_bus_message **ret);

/* --- Processes ---------------------------------------------------------------- */

uid_t test_second_uid(void) {
        struct passwd *pw;
        uid_t uid = 0;

        setpwent();
        while ((pw = getpwent()))
                if (pw->pw_uid != 0 && pw->pw_uid != TEST_OTHER_UID && pw->pw_uid != getuid()) {
                        uid = pw->pw_uid;
                        break;
                }
        endpwent();
        return uid;
}

/* Waits until the process (not necessarily our child) has exited. Returns
 * false if it did not within timeout_usec. */
static bool wait_process_gone(pid_t pid, uint64_t timeout_usec) {
        _cleanup_close_ int pidfd = -1;

        pidfd = test_pidfd_open(pid);
        if (pidfd < 0)
                return true;
        return test_wait_readable(pidfd, test_now_monotonic() + timeout_usec);
}

void test_pidfd_wait_exit(int pidfd, const char *what) {
        g_assert_cmpint(pidfd, >=, 0);
        if (!test_wait_readable(pidfd, test_now_monotonic() + TEST_TIMEOUT_USEC))
                g_error("Timed out waiting for %s", what);
}

/* Reads exactly n bytes; false at EOF or error. */
static bool read_full(int fd, void *buf, size_t n) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = read(fd, (char *) buf + done, n - done);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return false;
                done += (size_t) k;
        }
        return true;
}

/* The guardian (see bus-test.h). It reads from the pipe: 'p' + a pid_t, the
 * process group to kill; 'q', all cleaned up, just exit. At EOF (the test
 * died) it kills the group, if it got one, and removes the dir. */
static pid_t guardian_start(const char *dir, int *ret_fd) {
        _cleanup_close_ int null = -1;
        pid_t pid;
        int p[2];

        g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
        null = open("/dev/null", O_RDWR | O_CLOEXEC);
        g_assert_cmpint(null, >=, 0);
        /* fd 3 is the read end; the write end is closed in the guardian,
         * or it would never see EOF. */
        pid = test_fork(&(TestChild) {
                .pgid = TEST_PGID_NEW,
                .keep_fds = { p[0] },
                .stdin_fd = null,
                .stdout_fd = null,
                .stderr_fd = null,
        });
        if (pid == 0) {
                pid_t pgid = 0;

                for (;;) {
                        char c;

                        if (!read_full(3, &c, 1))
                                break;
                        if (c == 'q')
                                _exit(0);
                        if (c == 'p' && !read_full(3, &pgid, sizeof(pgid)))
                                break;
                }
                if (pgid > 0)
                        (void) kill(-pgid, SIGKILL);
                test_rm_rf(dir);
                _exit(0);
        }

        close(p[0]);
        *ret_fd = p[1];
        return pid;
}

static void guardian_send(TestBus *b, char c, const void *data, size_t size) {
        char buf[1 + sizeof(pid_t)];

        g_assert_cmpuint(size, <, sizeof(buf));
        buf[0] = c;
        if (size > 0)
                memcpy(buf + 1, data, size);
        /* Under PIPE_BUF: one atomic write. */
        g_assert_cmpint(write(b->guardian_fd, buf, 1 + size), ==, (ssize_t) (1 + size));
}

/* --- The bus -------------------------------------------------------------- */

/* The daemon's command line, for the activation file and for direct
 * starts alike. No --idle-timeout unless a test asks for one: the default
 * (30 s) never strikes within a test case, and an idle exit would be
 * harmless (the next call activates it again). */
static char **daemon_argv(TestBus *b, const char *const *wrapper) {
        return test_lockbusd_argv(wrapper, test_getenv_required("LOCKBUS_DAEMON"), b->lock_dir, b->runtime_dir,
                                  (const char *const *) b->extra_args);
}

static char *write_bus_config(TestBus *b) {
        /* A daemon that never takes its name fails the call in 10 s rather
         * than 25 s. */
        static const TestBusLimit limits[] = {
                { "service_start_timeout", TEST_TIMEOUT_USEC / 1000U },
                {}
        };
        g_autofree char *services = g_build_filename(b->dir, "services", NULL);
        g_auto(GStrv) argv = NULL;
        char *conf;

        conf = test_bus_write_config(&(TestBusConfig) {
                .dir = b->dir,
                .dbus_dir = test_getenv_required("LOCKBUS_DBUS_DIR"),
                .service_dir = services,
                .root_may_monitor = true,
                .limits = limits,
        });

        /* Without root, the real policy does not let us own the name:
         * a test-only file does, for our uid only. */
        if (getuid() != 0) {
                g_autofree char *path = g_build_filename(b->dir, "system.d", "zz-test-owner.conf", NULL);

                test_bus_write_user_policy(path, "the tests run lockbusd as this uid.",
                                           "<allow own=\"" LOCKBUS_BUS_NAME "\"/>");
        }

        argv = daemon_argv(b, NULL);
        test_bus_write_activation_file(services, LOCKBUS_BUS_NAME, (const char *const *) argv);
        return conf;
}

TestBus *test_bus_new(void) {
        return test_bus_new_with_args(NULL);
}

TestBus *test_bus_new_with_args(const char *const *extra_args) {
        g_autofree char *conf = NULL;
        TestBus *b;
        int fd;

        /* Processes orphaned in the bus's group (the daemon dbus-daemon
         * activated, its babysitter) become ours, so test_bus_free() reaps
         * them instead of leaving zombies to an init that may not. */
        g_assert_cmpint(prctl(PR_SET_CHILD_SUBREAPER, 1), ==, 0);

        b = g_new0(TestBus, 1);
        b->guardian_fd = -1;
        b->dir = test_make_tmp_dir("lockbus-test-XXXXXX");
        b->guardian_pid = guardian_start(b->dir, &b->guardian_fd);
        b->lock_dir = g_build_filename(b->dir, "lib", NULL);
        b->runtime_dir = g_build_filename(b->dir, "run", NULL);
        b->extra_args = extra_args ? g_strdupv((char **) extra_args) : NULL;

        conf = write_bus_config(b);
        b->bus_pid = test_dbus_daemon_spawn(conf, TEST_PGID_NEW, /* die_with_parent= */ false, &fd);
        /* Before the wait: if the test dies in it, the guardian kills it. */
        guardian_send(b, 'p', &b->bus_pid, sizeof(b->bus_pid));
        b->address = test_dbus_daemon_read_address(fd, b->bus_pid, TEST_TIMEOUT_USEC);
        return b;
}

void test_bus_process_until(sd_bus *bus, const bool *done, int pidfd, const char *what) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;

        for (;;) {
                struct pollfd p[2];
                int r, n_fds = 1, msec;

                for (;;) {
                        r = sd_bus_process(bus, NULL);
                        if (r < 0)
                                g_error("Failed to process the bus while waiting for %s: %s", what, g_strerror(-r));
                        if (*done)
                                return;
                        if (r == 0)
                                break;
                }

                msec = test_bus_poll_msec(bus, test_remaining_msec(deadline, what));
                p[0] = (struct pollfd) { .fd = sd_bus_get_fd(bus), .events = (short) sd_bus_get_events(bus) };
                if (pidfd >= 0)
                        p[n_fds++] = (struct pollfd) { .fd = pidfd, .events = POLLIN };

                r = poll(p, n_fds, msec);
                if (r < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(r, >=, 0);
                if (pidfd >= 0 && (p[1].revents & POLLIN))
                        /* Let the caller say what happened to it. */
                        return;
        }
}

sd_bus *test_bus_connect(TestBus *b) {
        sd_bus *bus = NULL;
        int r;

        r = test_bus_open(b->address, /* is_bus= */ true, TEST_TIMEOUT_USEC, &bus);
        if (r < 0)
                g_error("Failed to connect to %s: %s", b->address, g_strerror(-r));
        return bus;
}

char *test_bus_direct_socket(TestBus *b) {
        return g_build_filename(b->runtime_dir, LOCKBUS_DIRECT_SOCKET_NAME, NULL);
}

int test_direct_connect(const char *path, sd_bus **ret) {
        /* Test paths need no escaping: letters, digits, '-', '_', '.', '/'. */
        g_autofree char *address = g_strconcat("unix:path=", path, NULL);

        return test_bus_open(address, /* is_bus= */ false, TEST_TIMEOUT_USEC, ret);
}

sd_bus *test_bus_connect_direct(TestBus *b) {
        g_autofree char *path = test_bus_direct_socket(b);
        sd_bus *bus = NULL;
        int r;

        r = test_direct_connect(path, &bus);
        if (r < 0)
                g_error("Failed to connect to %s: %s", path, g_strerror(-r));
        return bus;
}

struct TestNameWatch {
        sd_bus_slot *slot;
        char *name;
        bool gone;
        bool appeared;
        GPtrArray *lost_by;     /* old owners of the "no owner" signals, in order */
        char *wait_owner;       /* test_name_watch_wait_lost_by() */
        bool wait_done;
};

static int name_watch_handler(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        TestNameWatch *w = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (!g_str_equal(name, w->name))
                return 0;
        if (*new_owner)
                w->appeared = true;
        else {
                w->gone = true;
                g_ptr_array_add(w->lost_by, g_strdup(old_owner));
                if (w->wait_owner && g_str_equal(w->wait_owner, old_owner))
                        w->wait_done = true;
        }
        return 0;
}

TestNameWatch *test_bus_watch_name(sd_bus *bus, const char *name) {
        TestNameWatch *w;

        w = g_new0(TestNameWatch, 1);
        w->name = g_strdup(name);
        w->lost_by = g_ptr_array_new_with_free_func(g_free);
        w->slot = test_bus_match_name_owner_changed(bus, name, name_watch_handler, w);
        return w;
}

void test_name_watch_wait_gone(TestNameWatch *w) {
        g_autofree char *what = g_strdup_printf("'%s' to leave the bus", w->name);

        test_bus_process_until(sd_bus_slot_get_bus(w->slot), &w->gone, -1, what);
}

unsigned test_name_watch_n_gone(const TestNameWatch *w) {
        return w->lost_by->len;
}

bool test_name_watch_lost_by(const TestNameWatch *w, const char *old_owner) {
        return g_ptr_array_find_with_equal_func(w->lost_by, old_owner, g_str_equal, NULL);
}

void test_name_watch_wait_lost_by(TestNameWatch *w, const char *old_owner) {
        g_autofree char *what = g_strdup_printf("'%s' to lose '%s'", old_owner, w->name);

        if (test_name_watch_lost_by(w, old_owner))
                return;
        g_free(w->wait_owner);
        w->wait_owner = g_strdup(old_owner);
        w->wait_done = false;
        test_bus_process_until(sd_bus_slot_get_bus(w->slot), &w->wait_done, -1, what);
        g_clear_pointer(&w->wait_owner, g_free);
}

void test_name_watch_free(TestNameWatch *w) {
        if (!w)
                return;
        sd_bus_slot_unref(w->slot);
        g_free(w->name);
        g_ptr_array_unref(w->lost_by);
        g_free(w->wait_owner);
        g_free(w);
}

void test_bus_sync(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        /* Signals that arrive before the reply are queued, not dispatched,
         * by sd_bus_call(); the loop dispatches them. */
        r = sd_bus_call_method(bus, DBUS_SERVICE, DBUS_PATH, DBUS_INTERFACE, "GetId", &error, NULL, NULL);
        assert_call_ok(r, &error);
        do
                r = sd_bus_process(bus, NULL);
        while (r > 0);
        g_assert_cmpint(r, ==, 0);
}

void test_bus_reload_config(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, DBUS_SERVICE, DBUS_PATH, DBUS_INTERFACE, "ReloadConfig", &error, NULL, NULL);
        assert_call_ok(r, &error);
}

void test_bus_disconnect(sd_bus *observer, sd_bus *client) {
        g_autoptr(TestNameWatch) w = NULL;
        const char *unique;

        g_assert_cmpint(sd_bus_get_unique_name(client, &unique), >=, 0);
        w = test_bus_watch_name(observer, unique);
        sd_bus_flush_close_unref(client);
        test_name_watch_wait_gone(w);
}

pid_t test_bus_daemon_pid(TestBus *b) {
        return test_bus_pid_of(b, LOCKBUS_BUS_NAME);
}

pid_t test_bus_pid_of(TestBus *b, const char *unique_name) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = test_bus_connect(b);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t pid;
        int r;

        r = sd_bus_call_method(bus, DBUS_SERVICE, DBUS_PATH, DBUS_INTERFACE, "GetConnectionUnixProcessID",
                               &error, &reply, "s", unique_name);
        if (sd_bus_error_has_name(&error, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return 0;
        assert_call_ok(r, &error);
        g_assert_cmpint(sd_bus_message_read(reply, "u", &pid), >=, 0);
        g_assert_cmpuint(pid, >, 0);
        return (pid_t) pid;
}

char *test_bus_daemon_name(TestBus *b) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = test_bus_connect(b);

        return test_bus_get_name_owner(bus, LOCKBUS_BUS_NAME);
}

pid_t test_bus_activate_daemon(TestBus *b) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = test_bus_connect(b);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, "/", "org.freedesktop.DBus.Peer", "Ping",
                               &error, NULL, NULL);
        assert_call_ok(r, &error);
        return test_bus_daemon_pid(b);
}

bool test_bus_try_start_daemon(TestBus *b, const char *const *wrapper, int log_fd, int *ret_status) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        g_autoptr(TestNameWatch) w = NULL;
        _cleanup_close_ int pidfd = -1;
        g_auto(GStrv) argv = NULL, envp = NULL;
        pid_t pid;

        g_assert_cmpint(test_bus_daemon_pid(b), ==, 0);
        g_assert_cmpint(b->daemon_pid, ==, 0);

        bus = test_bus_connect(b);
        w = test_bus_watch_name(bus, LOCKBUS_BUS_NAME);

        argv = daemon_argv(b, wrapper);
        envp = test_lockbusd_environ(b->address);
        /* Its stderr is a file, whatever ours is. */
        if (log_fd >= 3)
                envp = g_environ_unsetenv(envp, "JOURNAL_STREAM");

        /* In the bus's group: the harness's cleanup (and its guardian)
         * kill it with the group. */
        pid = test_spawn(&(TestChild) {
                                 .pgid = b->bus_pid,
                                 .keep_fds = { b->pass_fds[0], b->pass_fds[1] },
                                 .stdout_fd = log_fd,
                                 .stderr_fd = log_fd,
                         }, argv, envp);
        b->pass_fds[0] = b->pass_fds[1] = -1;

        pidfd = test_pidfd_open(pid);
        g_assert_cmpint(pidfd, >=, 0);
        test_bus_process_until(bus, &w->appeared, pidfd, "lockbusd to take " LOCKBUS_BUS_NAME);
        if (!w->appeared) {
                *ret_status = test_waitpid(pid, 0);
                return false;
        }
        b->daemon_pid = pid;
        return true;
}

void test_bus_start_daemon(TestBus *b) {
        int status = 0;

        if (!test_bus_try_start_daemon(b, NULL, -1, &status)) {
                g_autofree char *st = test_format_wait_status(status);

                g_error("lockbusd %s before taking " LOCKBUS_BUS_NAME " (see its output above)", st);
        }
}

void test_bus_kill_daemon(TestBus *b) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = test_bus_connect(b);
        g_autoptr(TestNameWatch) w = NULL;
        pid_t pid;

        w = test_bus_watch_name(bus, LOCKBUS_BUS_NAME);
        pid = test_bus_daemon_pid(b);
        g_assert_cmpint(pid, >, 0);

        g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
        if (pid == b->daemon_pid) {
                int status = test_waitpid(pid, 0);

                g_assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
                b->daemon_pid = 0;
        }
        test_name_watch_wait_gone(w);
}

void test_bus_stop_daemon(TestBus *b) {
        g_autofree char *st = NULL;
        int status;

        g_assert_cmpint(b->daemon_pid, >, 0);
        g_assert_cmpint(kill(b->daemon_pid, SIGTERM), ==, 0);
        status = test_waitpid(b->daemon_pid, 0);
        b->daemon_pid = 0;
        st = test_format_wait_status(status);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                g_error("lockbusd %s on SIGTERM", st);
}

/* Stops lockbusd with SIGTERM (SIGKILL if it does not go). Best effort:
 * this runs in teardown, failures here are reported, not fatal. */
static void stop_lockbusd(TestBus *b) {
        pid_t pid = test_bus_daemon_pid(b);

        if (pid <= 0)
                pid = b->daemon_pid;
        if (pid > 0 && kill(pid, SIGTERM) >= 0 && !wait_process_gone(pid, TEST_TIMEOUT_USEC)) {
                g_test_message("lockbusd (pid %d) did not exit on SIGTERM, killing it", (int) pid);
                (void) kill(pid, SIGKILL);
        }
        if (b->daemon_pid > 0) {
                int status = test_waitpid(b->daemon_pid, 0);

                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                        g_autofree char *st = test_format_wait_status(status);

                        g_test_message("lockbusd (pid %d) %s on SIGTERM", (int) b->daemon_pid, st);
                }
                b->daemon_pid = 0;
        }
}

void test_bus_free(TestBus *b) {
        if (!b)
                return;

        if (b->bus_pid > 0) {
                if (b->address)
                        stop_lockbusd(b);
                /* Kill the group while its leader is not yet reaped, so the
                 * group id cannot have been reused. */
                (void) kill(-b->bus_pid, SIGKILL);
                /* Reap every member: each one's parent is a member or us,
                 * and we are the subreaper, so once none of our children
                 * is left in the group, the group is gone. */
                for (;;) {
                        pid_t pid = waitpid(-b->bus_pid, NULL, 0);

                        if (pid < 0 && errno == EINTR)
                                continue;
                        if (pid < 0) {
                                g_assert_cmpint(errno, ==, ECHILD);
                                break;
                        }
                        if (pid == b->daemon_pid)
                                b->daemon_pid = 0;
                }
        }
        if (b->dir)
                test_rm_rf(b->dir);
        if (b->guardian_fd >= 0) {
                guardian_send(b, 'q', NULL, 0);
                close(b->guardian_fd);
        }
        if (b->guardian_pid > 0)
                (void) test_waitpid(b->guardian_pid, 0);

        g_free(b->dir);
        g_free(b->lock_dir);
        g_free(b->runtime_dir);
        g_free(b->address);
        g_strfreev(b->extra_args);
        g_free(b);
}

gint test_compare_strings(gconstpointer a, gconstpointer b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static void list_tree_rec(const char *root, const char *rel, const char *const *skip, GPtrArray *out) {
        g_autofree char *path = rel ? g_build_filename(root, rel, NULL) : g_strdup(root);
        _cleanup_(closedirp) DIR *d = NULL;
        struct dirent *de;

        d = opendir(path);
        if (!d)
                g_error("Failed to open %s: %s", path, g_strerror(errno));

        while ((errno = 0, de = readdir(d))) {
                g_autofree char *child = NULL, *full = NULL;
                struct stat st;

                if (g_str_equal(de->d_name, ".") || g_str_equal(de->d_name, ".."))
                        continue;
                child = rel ? g_strconcat(rel, "/", de->d_name, NULL) : g_strdup(de->d_name);
                full = g_build_filename(root, child, NULL);

                /* An entry that went between readdir() and lstat() (a temp
                 * file, a transient fd in /proc) was never really there. */
                if (lstat(full, &st) < 0) {
                        g_assert_cmpint(errno, ==, ENOENT);
                        continue;
                }
                g_ptr_array_add(out, g_strdup(child));
                if (S_ISDIR(st.st_mode) && !(skip && g_strv_contains(skip, child)))
                        list_tree_rec(root, child, skip, out);
        }
        g_assert_cmpint(errno, ==, 0);
}

GPtrArray *test_list_tree(const char *root, const char *const *skip) {
        GPtrArray *out = g_ptr_array_new_with_free_func(g_free);

        list_tree_rec(root, NULL, skip, out);
        g_ptr_array_sort(out, test_compare_strings);
        return out;
}

/* --- Client processes ------------------------------------------------------ */

/* In the child, fd 3 its end of the socketpair. */
static int client_main(const char *address, bool direct, uid_t uid, const char *comm, TestClientFunc func,
                       void *userdata) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int fd = 3, r;

        r = test_become_uid(uid);
        if (r < 0) {
                test_client_send(fd, "error setup: failed to become uid %u: %s", (unsigned) uid, g_strerror(-r));
                return 2;
        }
        if (comm)
                (void) prctl(PR_SET_NAME, comm);

        if (direct)
                r = test_direct_connect(address, &bus);
        else
                r = test_bus_open(address, /* is_bus= */ true, TEST_TIMEOUT_USEC, &bus);
        if (r < 0) {
                test_client_send(fd, "error setup: failed to connect: %s", g_strerror(-r));
                return 2;
        }

        return func(bus, fd, userdata);
}

/* Forks a client process in the bus's group: c->pid is 0 in the child,
 * where fd 3 is its end of the socketpair and fd 4 a copy of keep_fd (if
 * >= 3). */
static TestClient *client_fork(TestBus *b, int keep_fd) {
        TestClient *c;
        int sv[2];

        g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);

        c = g_new0(TestClient, 1);
        c->buffer = g_string_new(NULL);
        c->replies = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        c->pid = test_fork(&(TestChild) { .pgid = b->bus_pid, .keep_fds = { sv[1], keep_fd } });
        if (c->pid == 0)
                return c;

        close(sv[1]);
        c->fd = sv[0];
        return c;
}

/* address: the bus's, or for a direct connection the socket's path. */
static TestClient *client_start(TestBus *b, const char *address, bool direct, uid_t uid, const char *comm,
                                TestClientFunc func, void *userdata) {
        TestClient *c = client_fork(b, -1);

        if (c->pid == 0)
                /* _exit(): no atexit handlers, no flushing of the test's
                 * stdio buffers a second time. */
                _exit(client_main(address, direct, uid, comm, func, userdata));
        return c;
}

TestClient *test_client_start(TestBus *b, uid_t uid, const char *comm, TestClientFunc func, void *userdata) {
        return client_start(b, b->address, /* direct= */ false, uid, comm, func, userdata);
}

TestClient *test_client_start_direct(TestBus *b, uid_t uid, const char *comm, TestClientFunc func,
                                     void *userdata) {
        g_autofree char *path = test_bus_direct_socket(b);

        /* The child has its own copy of path. */
        return client_start(b, path, /* direct= */ true, uid, comm, func, userdata);
}

char *test_client_read_line(TestClient *c) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;

        for (;;) {
                const char *nl = memchr(c->buffer->str, '\n', c->buffer->len);
                struct pollfd p;
                char buf[4096];
                ssize_t n;
                int r;

                if (nl) {
                        char *line = g_strndup(c->buffer->str, nl - c->buffer->str);

                        g_string_erase(c->buffer, 0, nl - c->buffer->str + 1);
                        return line;
                }
                if (c->fd < 0) {
                        char *rest;

                        /* EOF: a last line without newline, else NULL. */
                        if (c->buffer->len == 0)
                                return NULL;
                        rest = g_strdup(c->buffer->str);
                        g_string_truncate(c->buffer, 0);
                        return rest;
                }

                p = (struct pollfd) { .fd = c->fd, .events = POLLIN };
                r = poll(&p, 1, test_remaining_msec(deadline, "a line from a client process"));
                if (r < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(r, >=, 0);
                if (r == 0)
                        continue;
                n = read(c->fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == ECONNRESET)
                        n = 0;
                g_assert_cmpint(n, >=, 0);
                if (n == 0) {
                        close(c->fd);
                        c->fd = -1;
                        continue;
                }
                g_string_append_len(c->buffer, buf, n);
        }
}

void test_client_wait(TestClient *c) {
        g_autofree char *st = NULL;
        int status;

        g_assert_cmpint(c->pid, >, 0);
        if (!wait_process_gone(c->pid, TEST_TIMEOUT_USEC))
                g_error("Client process %d did not exit in time", (int) c->pid);
        status = test_waitpid(c->pid, 0);
        c->pid = 0;
        st = test_format_wait_status(status);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                g_error("Client process %s", st);
}

void test_client_kill(TestClient *c) {
        g_assert_cmpint(c->pid, >, 0);
        g_assert_cmpint(kill(c->pid, SIGKILL), ==, 0);
        (void) test_waitpid(c->pid, 0);
        c->pid = 0;
}

void test_client_free(TestClient *c) {
        if (!c)
                return;
        if (c->pid > 0)
                test_kill_wait(c->pid);
        if (c->fd >= 0)
                close(c->fd);
        if (c->buffer)
                g_string_free(c->buffer, true);
        if (c->replies)
                g_hash_table_unref(c->replies);
        g_free(c);
}

TestClient *test_client_start_holding_fd(TestBus *b, int fd) {
        TestClient *c;

        g_assert_cmpint(fd, >=, 3);
        c = client_fork(b, fd);
        if (c->pid == 0) {
                /* fd 4 is the copy we keep; EOF on fd 3 ends us. */
                test_client_block(3);
                _exit(0);
        }
        return c;
}

void test_client_finish(TestClient *c) {
        if (c->fd >= 0) {
                close(c->fd);
                c->fd = -1;
        }
        test_client_wait(c);
}

char *test_bus_run_client(TestBus *b, uid_t uid, const char *comm, TestClientFunc func, void *userdata) {
        g_autoptr(TestClient) c = test_client_start(b, uid, comm, func, userdata);
        GString *out = g_string_new(NULL);
        char *line;

        while ((line = test_client_read_line(c))) {
                if (out->len > 0)
                        g_string_append_c(out, '\n');
                g_string_append(out, line);
                g_free(line);
        }
        if (g_str_has_prefix(out->str, "error setup:"))
                g_error("Client process failed: %s", out->str);
        test_client_wait(c);
        return g_string_free(out, false);
}

void test_client_send(int fd, const char *format, ...) {
        g_autofree char *s = NULL, *line = NULL;
        size_t len, done = 0;
        va_list ap;

        va_start(ap, format);
        s = g_strdup_vprintf(format, ap);
        va_end(ap);
        line = g_strconcat(s, "\n", NULL);
        len = strlen(line);

        while (done < len) {
                ssize_t n = send(fd, line + done, len - done, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        _exit(3);
                done += (size_t) n;
        }
}

void test_client_block(int fd) {
        for (;;) {
                char buf[64];
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return;
        }
}

/* test_client_serve(): child side. No g_assert here (see above). */

typedef struct ServeCall {
        int fd;
        char *id;
} ServeCall;

static int serve_reply_handler(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ServeCall *sc = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *signature = sd_bus_message_get_signature(m, true);
        g_autofree char *result = NULL;
        uint64_t token;

        if (e)
                result = test_format_result(-(sd_bus_error_get_errno(e) ?: EIO), e);
        else if (streq(signature, ""))
                result = g_strdup("ok");
        else if (!streq(signature, "t") || sd_bus_message_read(m, "t", &token) <= 0)
                result = g_strdup("error errno: unexpected reply");
        else
                result = g_strdup_printf("ok %" PRIu64, token);
        test_client_send(sc->fd, "reply %s %s", sc->id, result);

        g_free(sc->id);
        g_free(sc);
        return 0;
}

int test_client_call_async(sd_bus *bus, int fd, const char *id, sd_bus_message *m) {
        ServeCall *sc;
        int r;

        sc = g_new0(ServeCall, 1);
        sc->fd = fd;
        sc->id = g_strdup(id);
        r = sd_bus_call_async(bus, NULL, m, serve_reply_handler, sc, 0);
        if (r < 0) {
                /* Not queued: the handler never runs. */
                g_free(sc->id);
                g_free(sc);
                return r;
        }
        /* Written now, not at the next dispatch. */
        return sd_bus_flush(bus);
}

/* Fills o from words "key=value"; false (with *ret_bad) on a word it does
 * not know. The strings point into words. */
static bool serve_parse_options(char **words, TestAcquireOptions *o, const char **ret_bad) {
        for (char **w = words; w && *w; w++) {
                char *v = strchr(*w, '=');

                if (!v) {
                        *ret_bad = *w;
                        return false;
                }
                *v++ = '\0';
                if (g_str_equal(*w, "mode"))
                        o->mode = v;
                else if (g_str_equal(*w, "scope"))
                        o->scope = v;
                else if (g_str_equal(*w, "description"))
                        o->description = v;
                else if (g_str_equal(*w, "timeout")) {
                        o->has_timeout = true;
                        o->timeout = g_str_equal(v, "max") ? UINT64_MAX : g_ascii_strtoull(v, NULL, 10);
                } else if (g_str_equal(*w, "ttl")) {
                        o->has_ttl = true;
                        o->ttl = g_ascii_strtoull(v, NULL, 10);
                } else {
                        *ret_bad = *w;
                        return false;
                }
        }
        return true;
}

static char *format_value_result(int r, const sd_bus_error *error, uint64_t value) {
        if (r < 0)
                return test_format_result(r, error);
        return g_strdup_printf("ok %" PRIu64, value);
}

/* Runs one command line and returns its result. */
static char *serve_command(sd_bus *bus, int fd, const char *line) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_auto(GStrv) words = g_strsplit(line, " ", -1);
        TestAcquireOptions o = {};
        const char *bad = NULL, *unique = NULL;
        uint64_t value = 0;
        int r;

        if (!words[0] || !words[1]) {
                if (words[0] && g_str_equal(words[0], "Unique")) {
                        r = sd_bus_get_unique_name(bus, &unique);
                        if (r < 0)
                                return test_format_result(r, NULL);
                        return g_strdup_printf("ok %s", unique);
                }
                return g_strdup_printf("error test: bad command '%s'", line);
        }

        if (g_str_equal(words[0], "Lock")) {
                r = test_lock(bus, words[1], &value, &error);
                return format_value_result(r, &error, value);
        }
        if (g_str_equal(words[0], "Unlock"))
                return test_format_result(test_unlock(bus, words[1], &error), &error);
        if (g_str_equal(words[0], "Break"))
                return test_format_result(test_break(bus, words[1], &error), &error);
        if (g_str_equal(words[0], "Refresh")) {
                r = test_refresh(bus, words[1], &value, &error);
                return format_value_result(r, &error, value);
        }
        if (g_str_equal(words[0], "Acquire")) {
                if (!serve_parse_options(words + 2, &o, &bad))
                        return g_strdup_printf("error test: bad option '%s'", bad);
                r = test_acquire(bus, words[1], &o, &value, &error);
                return format_value_result(r, &error, value);
        }
        if (g_str_equal(words[0], "Start") && words[2]) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                uint32_t count = 0;

                if (!serve_parse_options(words + 3, &o, &bad))
                        return g_strdup_printf("error test: bad option '%s'", bad);
                r = new_acquire_message(bus, "Acquire", words[2], &o, &m);
                if (r >= 0)
                        r = test_client_call_async(bus, fd, words[1], m);
                if (r < 0)
                        return test_format_result(r, NULL);
                /* Read by the daemon after the Acquire (see bus-test.h). */
                r = sd_bus_get_property_trivial(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                LOCKBUS_MANAGER_IFACE, "WaiterCount", &error, 'u', &count);
                return format_value_result(r, &error, count);
        }
        return g_strdup_printf("error test: bad command '%s'", line);
}

int test_client_serve(sd_bus *bus, int fd, void *userdata) {
        return test_client_serve_with(bus, fd, serve_command);
}

int test_client_serve_with(sd_bus *bus, int fd, TestClientCommandFunc command) {
        g_autoptr(GString) in = g_string_new(NULL);

        for (;;) {
                struct pollfd p[2];
                char buf[4096], *nl;
                bool handled = false;
                ssize_t n;
                int r;

                /* Dispatch what came in, e.g. replies of Start calls,
                 * also those a synchronous call queued. */
                do
                        r = sd_bus_process(bus, NULL);
                while (r > 0);
                if (r < 0) {
                        test_client_send(fd, "error bus: %s", g_strerror(-r));
                        return 2;
                }

                while ((nl = memchr(in->str, '\n', in->len))) {
                        g_autofree char *line = g_strndup(in->str, nl - in->str), *result = NULL;

                        g_string_erase(in, 0, nl - in->str + 1);
                        result = command(bus, fd, line);
                        test_client_send(fd, "= %s", result);
                        handled = true;
                }
                if (handled)
                        continue;

                /* Calls have the connection's timeout: sd_bus_process()
                 * fails an expired one. */
                p[0] = (struct pollfd) { .fd = fd, .events = POLLIN };
                p[1] = (struct pollfd) { .fd = sd_bus_get_fd(bus), .events = (short) sd_bus_get_events(bus) };
                r = poll(p, 2, test_bus_poll_msec(bus, -1));
                if (r < 0 && errno != EINTR)
                        return 2;
                if (r <= 0 || !(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
                        continue;

                n = read(fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return 0;       /* the parent closed its end */
                g_string_append_len(in, buf, n);
        }
}

/* Parent side: the next line that answers a command ("= RESULT"); async
 * replies read meanwhile are kept for test_client_wait_reply(). With id
 * set, the reply of that call instead. */
static char *client_read_answer(TestClient *c, const char *id) {
        for (;;) {
                g_autofree char *line = test_client_read_line(c);
                char *rest, *space;

                if (!line && id)
                        g_error("Client process %d exited before the reply of call %s", (int) c->pid, id);
                if (!line)
                        g_error("Client process %d exited before answering a command", (int) c->pid);
                if (g_str_has_prefix(line, "reply ")) {
                        rest = line + strlen("reply ");
                        space = strchr(rest, ' ');
                        g_assert_nonnull(space);
                        *space = '\0';
                        if (id && g_str_equal(rest, id))
                                return g_strdup(space + 1);
                        g_hash_table_replace(c->replies, g_strdup(rest), g_strdup(space + 1));
                        continue;
                }
                if (!id && g_str_has_prefix(line, "= "))
                        return g_strdup(line + 2);
                g_error("Unexpected line from client process %d: %s", (int) c->pid, line);
        }
}

_printf_(2, 0)
static char *client_commandv(TestClient *c, const char *format, va_list ap) {
        g_autofree char *command = g_strdup_vprintf(format, ap), *line = NULL;
        size_t len, done = 0;

        g_assert_nonnull(c->replies);
        g_assert_null(strchr(command, '\n'));
        line = g_strconcat(command, "\n", NULL);
        len = strlen(line);
        while (done < len) {
                ssize_t n = send(c->fd, line + done, len - done, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        g_error("Failed to send '%s' to client process %d: %s", command, (int) c->pid,
                                g_strerror(errno));
                done += (size_t) n;
        }
        return client_read_answer(c, NULL);
}

char *test_client_command(TestClient *c, const char *format, ...) {
        va_list ap;
        char *result;

        va_start(ap, format);
        result = client_commandv(c, format, ap);
        va_end(ap);
        return result;
}

char *test_client_wait_reply(TestClient *c, const char *id) {
        char *result = NULL;

        if (g_hash_table_steal_extended(c->replies, id, NULL, (gpointer *) &result))
                return result;
        return client_read_answer(c, id);
}

void test_assert_client_command(TestClient *c, const char *expected, const char *file, int line,
                                const char *func, const char *format, ...) {
        g_autofree char *command = NULL, *result = NULL, *msg = NULL;
        va_list ap;

        va_start(ap, format);
        command = g_strdup_vprintf(format, ap);
        va_end(ap);
        result = test_client_command(c, "%s", command);
        if (g_str_equal(result, expected))
                return;
        msg = g_strdup_printf("client '%s': expected \"%s\", got \"%s\"", command, expected, result);
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

uint64_t test_client_command_ok(TestClient *c, const char *format, ...) {
        g_autofree char *command = NULL, *result = NULL;
        va_list ap;

        va_start(ap, format);
        command = g_strdup_vprintf(format, ap);
        va_end(ap);
        result = test_client_command(c, "%s", command);
        if (!g_str_equal(result, "ok") && !g_str_has_prefix(result, "ok "))
                g_error("client '%s': %s", command, result);
        return g_str_has_prefix(result, "ok ") ? g_ascii_strtoull(result + 3, NULL, 10) : 0;
}

char *test_format_result(int r, const sd_bus_error *error) {
        if (r >= 0)
                return g_strdup("ok");
        if (sd_bus_error_is_set(error))
                return g_strdup_printf("error %s: %s", error->name, strempty(error->message));
        return g_strdup_printf("error errno: %s", g_strerror(-r));
}

static int run_op(sd_bus *bus, const char *method, const char *arg, sd_bus_error *error) {
        if (g_str_equal(method, "Lock"))
                return test_lock(bus, arg, NULL, error);
        if (g_str_equal(method, "Acquire"))
                return test_acquire(bus, arg, NULL, NULL, error);
        if (g_str_equal(method, "Unlock"))
                return test_unlock(bus, arg, error);
        if (g_str_equal(method, "Owner"))
                return test_owner(bus, arg, NULL, NULL, error);
        if (g_str_equal(method, "ListLocks")) {
                g_autoptr(GPtrArray) locks = NULL;

                return test_list_locks(bus, &locks, error);
        }
        if (g_str_equal(method, "Ping"))
                return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                          "org.freedesktop.DBus.Peer", "Ping", error, NULL, NULL);
        if (g_str_equal(method, "Introspect"))
                return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                          "org.freedesktop.DBus.Introspectable", "Introspect",
                                          error, NULL, NULL);
        if (g_str_equal(method, "GetVersion"))
                return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                          "org.freedesktop.DBus.Properties", "Get", error, NULL,
                                          "ss", LOCKBUS_MANAGER_IFACE, "Version");
        if (g_str_equal(method, "GetManagedObjects"))
                return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                          "org.freedesktop.DBus.ObjectManager", "GetManagedObjects",
                                          error, NULL, NULL);
        if (g_str_equal(method, "RequestName"))
                return sd_bus_call_method(bus, DBUS_SERVICE, DBUS_PATH, DBUS_INTERFACE, "RequestName",
                                          error, NULL, "su", arg, 0U);
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "test bug: unknown op %s", method);
}

int test_client_run_ops(sd_bus *bus, int fd, void *userdata) {
        for (const char *const *op = userdata; *op; op++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                g_auto(GStrv) words = g_strsplit(*op, " ", 2);
                g_autofree char *result = NULL;
                int r;

                r = run_op(bus, words[0], words[1] ? words[1] : "", &error);
                result = test_format_result(r, &error);
                test_client_send(fd, "%s", result);
        }
        return 0;
}

/* --- Calls --------------------------------------------------------------- */

int test_lock(sd_bus *bus, const char *resource, uint64_t *ret_token, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t token;
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Lock",
                               error, &reply, "s", resource);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "t", &token);
        if (r < 0)
                return r;
        if (ret_token)
                *ret_token = token;
        return 0;
}

/* A new Acquire or AcquireFd call of resource with the options of o. */
static int new_acquire_message(sd_bus *bus, const char *member, const char *resource, const TestAcquireOptions *o,
                               sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                           LOCKBUS_MANAGER_IFACE, member);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", resource);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        if (o->mode) {
                r = sd_bus_message_append(m, "{sv}", "mode", "s", o->mode);
                if (r < 0)
                        return r;
        }
        if (o->scope) {
                r = sd_bus_message_append(m, "{sv}", "scope", "s", o->scope);
                if (r < 0)
                        return r;
        }
        if (o->has_timeout) {
                r = sd_bus_message_append(m, "{sv}", "timeout", "t", o->timeout);
                if (r < 0)
                        return r;
        }
        if (o->description) {
                r = sd_bus_message_append(m, "{sv}", "description", "s", o->description);
                if (r < 0)
                        return r;
        }
        if (o->has_ttl) {
                r = sd_bus_message_append(m, "{sv}", "ttl", "t", o->ttl);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

int test_acquire(sd_bus *bus, const char *resource, const TestAcquireOptions *o, uint64_t *ret_token,
                 sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        static const TestAcquireOptions none = {};
        uint64_t token;
        int r;

        if (!o)
                o = &none;

        r = new_acquire_message(bus, "Acquire", resource, o, &m);
        if (r < 0)
                return r;
        r = sd_bus_call(bus, m, o->call_timeout_usec, error, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "t", &token);
        if (r < 0)
                return r;
        if (ret_token)
                *ret_token = token;
        return 0;
}

int test_acquire_fd(sd_bus *bus, const char *resource, const TestAcquireOptions *o, int *ret_fd,
                    uint64_t *ret_token, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        static const TestAcquireOptions none = {};
        uint64_t token;
        int r, fd;

        if (!o)
                o = &none;

        r = new_acquire_message(bus, "AcquireFd", resource, o, &m);
        if (r < 0)
                return r;
        r = sd_bus_call(bus, m, o->call_timeout_usec, error, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "ht", &fd, &token);
        if (r < 0)
                return r;
        /* The fd belongs to the message: ours is a copy. */
        if (ret_fd) {
                *ret_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                if (*ret_fd < 0)
                        return -errno;
        }
        if (ret_token)
                *ret_token = token;
        return 0;
}

int test_refresh(sd_bus *bus, const char *resource, uint64_t *ret_expires, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t expires;
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Refresh",
                               error, &reply, "s", resource);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "t", &expires);
        if (r < 0)
                return r;
        if (ret_expires)
                *ret_expires = expires;
        return 0;
}

int test_break(sd_bus *bus, const char *resource, sd_bus_error *error) {
        return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Break",
                                  error, NULL, "s", resource);
}

int test_unlock(sd_bus *bus, const char *resource, sd_bus_error *error) {
        return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Unlock",
                                  error, NULL, "s", resource);
}

void test_holder_free(TestHolder *h) {
        if (!h)
                return;
        g_free(h->resource);
        g_free(h->mode);
        g_free(h->comm);
        g_free(h->sender);
        g_free(h->scope);
        g_free(h->description);
        g_free(h);
}

static int read_holders(sd_bus_message *reply, bool with_resource, GPtrArray **ret) {
        g_autoptr(GPtrArray) holders = g_ptr_array_new_with_free_func((GDestroyNotify) test_holder_free);
        const char *type = with_resource ? "(ssuusstttss)" : "(uusstttss)";
        int r;

        r = sd_bus_message_enter_container(reply, 'a', type);
        if (r < 0)
                return r;
        for (;;) {
                const char *resource = NULL, *mode = NULL, *comm, *sender, *scope, *description;
                TestHolder *h;

                h = g_new0(TestHolder, 1);
                if (with_resource)
                        r = sd_bus_message_read(reply, "(ssuusstttss)", &resource, &mode,
                                                &h->uid, &h->pid, &comm, &sender,
                                                &h->token, &h->since, &h->expires, &scope, &description);
                else
                        r = sd_bus_message_read(reply, "(uusstttss)",
                                                &h->uid, &h->pid, &comm, &sender,
                                                &h->token, &h->since, &h->expires, &scope, &description);
                if (r <= 0) {
                        g_free(h);
                        if (r < 0)
                                return r;
                        break;
                }
                h->resource = g_strdup(resource);
                h->mode = g_strdup(mode);
                h->comm = g_strdup(comm);
                h->sender = g_strdup(sender);
                h->scope = g_strdup(scope);
                h->description = g_strdup(description);
                g_ptr_array_add(holders, h);
        }
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return r;

        *ret = g_steal_pointer(&holders);
        return 0;
}

int test_owner(sd_bus *bus, const char *resource, char **ret_mode, GPtrArray **ret_holders,
               sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        const char *mode;
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Owner",
                               error, &reply, "s", resource);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &mode);
        if (r < 0)
                return r;
        r = read_holders(reply, false, &holders);
        if (r < 0)
                return r;

        if (ret_mode)
                *ret_mode = g_strdup(mode);
        if (ret_holders)
                *ret_holders = g_steal_pointer(&holders);
        return 0;
}

int test_list_locks(sd_bus *bus, GPtrArray **ret_locks, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "ListLocks",
                               error, &reply, NULL);
        if (r < 0)
                return r;
        return read_holders(reply, true, ret_locks);
}

static void assert_ok_what(int r, const sd_bus_error *error, const char *call, const char *resource) {
        g_autofree char *what = NULL;

        if (r >= 0)
                return;
        what = g_strdup_printf("%s('%s')", call, resource);
        test_assert_call_ok(r, error, __FILE__, __LINE__, G_STRFUNC, what);
}

uint64_t test_lock_ok(sd_bus *bus, const char *resource) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t token = 0;
        int r;

        r = test_lock(bus, resource, &token, &error);
        assert_ok_what(r, &error, "Lock", resource);
        g_assert_cmpuint(token, >, 0);
        return token;
}

uint64_t test_acquire_ok(sd_bus *bus, const char *resource, const TestAcquireOptions *o) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t token = 0;
        int r;

        r = test_acquire(bus, resource, o, &token, &error);
        assert_ok_what(r, &error, "Acquire", resource);
        g_assert_cmpuint(token, >, 0);
        return token;
}

void test_unlock_ok(sd_bus *bus, const char *resource) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = test_unlock(bus, resource, &error);
        assert_ok_what(r, &error, "Unlock", resource);
}

int test_acquire_fd_ok(sd_bus *bus, const char *resource, const TestAcquireOptions *o, uint64_t *ret_token) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t token = 0;
        int r, fd = -1;

        r = test_acquire_fd(bus, resource, o, &fd, &token, &error);
        assert_ok_what(r, &error, "AcquireFd", resource);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpuint(token, >, 0);
        if (ret_token)
                *ret_token = token;
        return fd;
}

uint64_t test_refresh_ok(sd_bus *bus, const char *resource) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t expires = 0;
        int r;

        r = test_refresh(bus, resource, &expires, &error);
        assert_ok_what(r, &error, "Refresh", resource);
        return expires;
}

void test_break_ok(sd_bus *bus, const char *resource) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = test_break(bus, resource, &error);
        assert_ok_what(r, &error, "Break", resource);
}

GPtrArray *test_owner_ok(sd_bus *bus, const char *resource, char **ret_mode) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        GPtrArray *holders = NULL;
        int r;

        r = test_owner(bus, resource, ret_mode, &holders, &error);
        assert_ok_what(r, &error, "Owner", resource);
        return holders;
}

GPtrArray *test_list_locks_ok(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        GPtrArray *locks = NULL;
        int r;

        r = test_list_locks(bus, &locks, &error);
        assert_call_ok(r, &error);
        return locks;
}

void test_assert_not_locked(sd_bus *bus, const char *resource) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *message = g_strdup_printf("Resource '%s' not locked", resource);
        int r;

        r = test_owner(bus, resource, NULL, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, message);
}

uint32_t test_get_property_u(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint32_t v = 0;
        int r;

        r = sd_bus_get_property_trivial(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                        name, &error, 'u', &v);
        assert_call_ok(r, &error);
        return v;
}

char *test_get_property_s(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *v = NULL;
        int r;

        r = sd_bus_get_property_string(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                       name, &error, &v);
        assert_call_ok(r, &error);
        return g_strdup(v);
}

/* --- Calls that wait ---------------------------------------------------------- */

struct TestCall {
        sd_bus *bus;
        sd_bus_slot *slot;
        sd_bus_message *reply;
        char *what;             /* for messages: "Acquire('db')" */
        bool done;
};

static int call_reply_handler(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        TestCall *c = userdata;

        c->reply = sd_bus_message_ref(m);
        c->done = true;
        return 0;
}

static TestCall *call_send(sd_bus *bus, sd_bus_message *m, uint64_t usec, char *what) {
        TestCall *c;
        int r;

        c = g_new0(TestCall, 1);
        c->bus = sd_bus_ref(bus);
        c->what = what;
        r = sd_bus_call_async(bus, &c->slot, m, call_reply_handler, c, usec);
        if (r < 0)
                g_error("Failed to send %s: %s", c->what, g_strerror(-r));
        /* Written now, not at the next dispatch. */
        r = sd_bus_flush(bus);
        if (r < 0)
                g_error("Failed to send %s: %s", c->what, g_strerror(-r));
        return c;
}

TestCall *test_call_async(sd_bus *bus, sd_bus_message *m, uint64_t usec) {
        return call_send(bus, m, usec, g_strdup_printf("%s()", strempty(sd_bus_message_get_member(m))));
}

TestCall *test_acquire_async(sd_bus *bus, const char *resource, const TestAcquireOptions *o) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        static const TestAcquireOptions none = {};
        int r;

        if (!o)
                o = &none;
        r = new_acquire_message(bus, "Acquire", resource, o, &m);
        g_assert_cmpint(r, >=, 0);
        return call_send(bus, m, o->call_timeout_usec, g_strdup_printf("Acquire('%s')", resource));
}

TestCall *test_acquire_fd_async(sd_bus *bus, const char *resource, const TestAcquireOptions *o) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        static const TestAcquireOptions none = {};
        int r;

        if (!o)
                o = &none;
        r = new_acquire_message(bus, "AcquireFd", resource, o, &m);
        g_assert_cmpint(r, >=, 0);
        return call_send(bus, m, o->call_timeout_usec, g_strdup_printf("AcquireFd('%s')", resource));
}

void test_call_wait(TestCall *c) {
        g_autofree char *what = g_strdup_printf("the reply to %s", c->what);

        test_bus_process_until(c->bus, &c->done, -1, what);
}

bool test_call_poll(TestCall *c) {
        int r;

        while (!c->done) {
                r = sd_bus_process(c->bus, NULL);
                if (r < 0)
                        g_error("Failed to process the bus waiting for %s: %s", c->what, g_strerror(-r));
                if (r == 0)
                        break;
        }
        return c->done;
}

int test_call_result(TestCall *c, sd_bus_error *error) {
        const sd_bus_error *e;

        int r;

        g_assert_true(c->done);
        g_assert_nonnull(c->reply);
        e = sd_bus_message_get_error(c->reply);
        if (!e)
                return 0;
        /* Returns the error's errno, negative. */
        r = sd_bus_error_copy(error, e);
        return r < 0 ? r : -EIO;
}

sd_bus_message *test_call_reply(TestCall *c) {
        g_assert_true(c->done);
        g_assert_nonnull(c->reply);
        return c->reply;
}

uint64_t test_call_wait_token(TestCall *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t token = 0;
        int r;

        test_call_wait(c);
        r = test_call_result(c, &error);
        if (r < 0)
                test_assert_call_ok(r, &error, __FILE__, __LINE__, G_STRFUNC, c->what);
        g_assert_cmpint(sd_bus_message_read(c->reply, "t", &token), >, 0);
        g_assert_cmpuint(token, >, 0);
        return token;
}

int test_call_wait_fd(TestCall *c, uint64_t *ret_token) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t token = 0;
        int r, fd = -1, copy;

        test_call_wait(c);
        r = test_call_result(c, &error);
        if (r < 0)
                test_assert_call_ok(r, &error, __FILE__, __LINE__, G_STRFUNC, c->what);
        g_assert_cmpint(sd_bus_message_read(c->reply, "ht", &fd, &token), >, 0);
        g_assert_cmpuint(token, >, 0);
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        g_assert_cmpint(copy, >=, 0);
        /* Its copy must not keep the hold. */
        c->reply = sd_bus_message_unref(c->reply);
        if (ret_token)
                *ret_token = token;
        return copy;
}

void test_assert_call_pending(TestCall *c, const char *what, const char *file, int line, const char *func) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *result = NULL, *msg = NULL;
        int r;

        /* The daemon answers the calls of one connection in order, and the
         * bus delivers its messages to us in order: an answer sent before
         * the Ping's is here once the Ping's is. */
        r = sd_bus_call_method(c->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer", "Ping",
                               &error, NULL, NULL);
        test_assert_call_ok(r, &error, file, line, func, "Ping");
        if (!test_call_poll(c))
                return;
        r = test_call_result(c, &error);
        result = test_format_result(r, &error);
        msg = g_strdup_printf("%s (%s) was answered while it should still wait: %s", what, c->what, result);
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

void test_call_free(TestCall *c) {
        if (!c)
                return;
        sd_bus_slot_unref(c->slot);
        sd_bus_message_unref(c->reply);
        sd_bus_unref(c->bus);
        g_free(c->what);
        g_free(c);
}

char *test_get_comm(void) {
        g_autofree char *comm = test_read_file("/proc/self/comm");

        return g_strdup(g_strchomp(comm));
}

/* --- Assertions ------------------------------------------------------------ */

void test_assert_call_ok(int r, const sd_bus_error *error, const char *file, int line,
                         const char *func, const char *expr) {
        g_autofree char *result = NULL, *msg = NULL;

        if (r >= 0)
                return;
        result = test_format_result(r, error);
        msg = g_strdup_printf("%s: %s", expr, result);
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

void test_assert_call_error(int r, const sd_bus_error *error, const char *name, const char *message,
                            const char *file, int line, const char *func) {
        g_autofree char *result = test_format_result(r, error), *msg = NULL;

        if (r >= 0 && message)
                msg = g_strdup_printf("expected %s: \"%s\", the call succeeded", name, message);
        else if (r >= 0)
                msg = g_strdup_printf("expected %s, the call succeeded", name);
        else if (!sd_bus_error_has_name(error, name))
                msg = g_strdup_printf("expected %s, got %s", name, result);
        else if (message && !g_str_equal(strempty(error->message), message))
                msg = g_strdup_printf("expected %s: \"%s\", got \"%s\"", name, message, strempty(error->message));
        if (msg)
                g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

bool test_skip_unless_root(void) {
        if (geteuid() == 0)
                return false;
        g_test_skip("needs root");
        return true;
}

/* --- Fixture ----------------------------------------------------------------- */

void test_fixture_setup(TestFixture *f, gconstpointer data) {
        f->bus = test_bus_new();
        f->client = test_bus_connect(f->bus);
        f->comm = test_get_comm();
}

void test_fixture_setup_with_args(TestFixture *f, gconstpointer data) {
        f->bus = test_bus_new_with_args(data);
        f->client = test_bus_connect(f->bus);
        f->comm = test_get_comm();
}

void test_fixture_teardown(TestFixture *f, gconstpointer data) {
        f->client = sd_bus_flush_close_unref(f->client);
        g_clear_pointer(&f->bus, test_bus_free);
        g_clear_pointer(&f->comm, g_free);
}

const char *test_unique_name(sd_bus *bus) {
        const char *unique = NULL;

        g_assert_cmpint(sd_bus_get_unique_name(bus, &unique), >=, 0);
        return unique;
}
