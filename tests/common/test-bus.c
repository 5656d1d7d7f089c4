/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test-bus.h"

/* --- Clocks ------------------------------------------------------------------- */

static uint64_t now_clock(clockid_t clock) {
        struct timespec ts;

        /* No g_assert: forked children use it too. */
        (void) clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

uint64_t test_now_monotonic(void) {
        return now_clock(CLOCK_MONOTONIC);
}

uint64_t test_now_realtime(void) {
        return now_clock(CLOCK_REALTIME);
}

int test_remaining_msec(uint64_t deadline, const char *what) {
        uint64_t n = test_now_monotonic();

        if (n >= deadline)
                g_error("Timed out waiting for %s", what);
        return (int) MIN((deadline - n + 999U) / 1000U, (uint64_t) INT_MAX);
}

bool test_wait_readable(int fd, uint64_t deadline) {
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                uint64_t n = test_now_monotonic();
                int r;

                if (n >= deadline)
                        return false;
                r = poll(&p, 1, (int) MIN((deadline - n + 999U) / 1000U, (uint64_t) INT_MAX));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        g_error("poll: %s", g_strerror(errno));
                if (r > 0)
                        return true;
        }
}

int test_bus_poll_msec(sd_bus *bus, int msec) {
        uint64_t timeout, n;
        int bus_msec;

        if (sd_bus_get_timeout(bus, &timeout) < 0 || timeout == UINT64_MAX)
                return msec;
        n = test_now_monotonic();
        bus_msec = timeout <= n ? 0 : (int) MIN((timeout - n + 999U) / 1000U, (uint64_t) INT_MAX);
        return msec < 0 ? bus_msec : MIN(msec, bus_msec);
}

/* --- Environment and files ------------------------------------------------------- */

const char *test_getenv_required(const char *name) {
        const char *v = g_getenv(name);

        if (!v || !*v)
                g_error("$%s is not set: run the tests with meson test", name);
        return v;
}

void test_write_file(const char *path, const char *contents) {
        g_autoptr(GError) error = NULL;

        if (!g_file_set_contents(path, contents, -1, &error))
                g_error("Failed to write %s: %s", path, error->message);
        if (chmod(path, 0644) < 0)
                g_error("Failed to chmod %s: %s", path, g_strerror(errno));
}

void test_copy_file(const char *from, const char *to, mode_t mode) {
        g_autoptr(GError) error = NULL;
        g_autofree char *contents = NULL;
        gsize size = 0;

        if (!g_file_get_contents(from, &contents, &size, &error) ||
            !g_file_set_contents(to, contents, (gssize) size, &error))
                g_error("Failed to copy %s to %s: %s", from, to, error->message);
        if (chmod(to, mode) < 0)
                g_error("Failed to chmod %s: %s", to, g_strerror(errno));
}

char *test_read_file(const char *path) {
        g_autoptr(GError) error = NULL;
        char *contents = NULL;

        if (!g_file_get_contents(path, &contents, NULL, &error))
                g_error("Failed to read %s: %s", path, error->message);
        return contents;
}

char *test_make_tmp_dir(const char *template) {
        g_autoptr(GError) error = NULL;
        char *dir = g_dir_make_tmp(template, &error);

        if (!dir)
                g_error("Failed to make a temp dir: %s", error->message);
        if (chmod(dir, 0755) < 0)
                g_error("Failed to chmod %s: %s", dir, g_strerror(errno));
        return dir;
}

static int rm_rf_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

void test_rm_rf(const char *path) {
        (void) nftw(path, rm_rf_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* --- The bus's configuration ---------------------------------------------------------- */

static void make_dir(const char *path) {
        if (mkdir(path, 0755) < 0)
                g_error("Failed to create %s: %s", path, g_strerror(errno));
}

char *test_bus_write_config(const TestBusConfig *c) {
        g_autofree char *system_d = g_build_filename(c->dir, "system.d", NULL);
        g_autofree char *policy_src = g_build_filename(c->dbus_dir, "io.lockbus1.conf", NULL);
        g_autofree char *policy_dst = g_build_filename(system_d, "io.lockbus1.conf", NULL);
        g_autoptr(GString) s = g_string_new(NULL);
        char *path;

        /* A copy of the real policy, so the real policy is what is tested. */
        make_dir(system_d);
        test_copy_file(policy_src, policy_dst, 0644);

        /* Like Debian's system.conf, minus <user>, <fork/>, <servicehelper>,
         * pid file and syslog. */
        g_string_append_printf(s,
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>system</type>\n"
                "  <listen>unix:path=%s/bus.sock</listen>\n"
                "  <auth>EXTERNAL</auth>\n", c->dir);
        if (c->service_dir) {
                make_dir(c->service_dir);
                g_string_append_printf(s, "  <servicedir>%s</servicedir>\n", c->service_dir);
        }
        g_string_append(s,
                "  <policy context=\"default\">\n"
                "    <allow user=\"*\"/>\n"
                "    <deny own=\"*\"/>\n"
                "    <deny send_type=\"method_call\"/>\n"
                "    <allow send_type=\"signal\"/>\n"
                "    <allow send_requested_reply=\"true\" send_type=\"method_return\"/>\n"
                "    <allow send_requested_reply=\"true\" send_type=\"error\"/>\n"
                "    <allow receive_type=\"method_call\"/>\n"
                "    <allow receive_type=\"method_return\"/>\n"
                "    <allow receive_type=\"error\"/>\n"
                "    <allow receive_type=\"signal\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Introspectable\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Properties\"/>\n"
                "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\" send_member=\"UpdateActivationEnvironment\"/>\n"
                "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Debug.Stats\"/>\n"
                "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.systemd1.Activator\"/>\n"
                "  </policy>\n");
        if (c->root_may_monitor)
                g_string_append(s,
                        "  <policy user=\"root\">\n"
                        "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Monitoring\"/>\n"
                        "  </policy>\n");
        for (const TestBusLimit *l = c->limits; l && l->name; l++)
                g_string_append_printf(s, "  <limit name=\"%s\">%u</limit>\n", l->name, l->value);
        g_string_append_printf(s,
                "  <includedir>%s</includedir>\n"
                "</busconfig>\n", system_d);

        path = g_build_filename(c->dir, "bus.conf", NULL);
        test_write_file(path, s->str);
        return path;
}

void test_bus_write_user_policy(const char *path, const char *comment, const char *rules) {
        struct passwd *pw = getpwuid(geteuid());
        g_autofree char *user = pw ? g_strdup(pw->pw_name) : g_strdup_printf("%u", (unsigned) geteuid());
        g_autofree char *policy = g_strdup_printf(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n"
                " \"https://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<!-- Test only: %s -->\n"
                "<busconfig>\n"
                "  <policy user=\"%s\">\n"
                "    %s\n"
                "  </policy>\n"
                "</busconfig>\n", comment, user, rules);

        test_write_file(path, policy);
}

void test_bus_write_activation_file(const char *service_dir, const char *name, const char *const *argv) {
        g_autoptr(GString) exec = g_string_new(NULL);
        g_autofree char *file = g_strconcat(name, ".service", NULL);
        g_autofree char *path = g_build_filename(service_dir, file, NULL);
        g_autofree char *service = NULL;

        for (const char *const *a = argv; *a; a++) {
                g_autofree char *q = g_shell_quote(*a);

                if (exec->len > 0)
                        g_string_append_c(exec, ' ');
                g_string_append(exec, q);
        }
        service = g_strdup_printf("[D-BUS Service]\n"
                                  "Name=%s\n"
                                  "Exec=%s\n", name, exec->str);
        test_write_file(path, service);
}

/* --- lockbusd ------------------------------------------------------------------------- */

char **test_lockbusd_argv(const char *const *wrapper, const char *daemon, const char *lock_dir,
                          const char *runtime_dir, const char *const *extra_args) {
        g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
        g_autofree char *lock = g_strconcat("--lock-directory=", lock_dir, NULL);
        g_autofree char *runtime = g_strconcat("--runtime-directory=", runtime_dir, NULL);

        for (const char *const *a = wrapper; a && *a; a++) {
                g_autofree char *program = NULL;

                /* execve() does not search $PATH. */
                if (a == wrapper) {
                        program = g_find_program_in_path(*a);
                        if (!program)
                                g_error("Daemon wrapper %s not found in $PATH", *a);
                }
                g_strv_builder_add(builder, program ?: *a);
        }
        g_strv_builder_add(builder, daemon);
        g_strv_builder_add(builder, lock);
        g_strv_builder_add(builder, runtime);
        for (const char *const *a = extra_args; a && *a; a++)
                g_strv_builder_add(builder, *a);
        return g_strv_builder_end(builder);
}

char **test_lockbusd_environ(const char *address) {
        char **envp = g_get_environ();

        envp = g_environ_setenv(envp, "DBUS_SYSTEM_BUS_ADDRESS", address, true);
        envp = g_environ_unsetenv(envp, "DBUS_STARTER_ADDRESS");
        envp = g_environ_unsetenv(envp, "DBUS_STARTER_BUS_TYPE");
        return envp;
}

/* --- Child processes ------------------------------------------------------------------- */

/* In the child: every fd it gets goes out of the way first (>= 100), so
 * that no dup2() overwrites another's source; dup2() also clears
 * O_CLOEXEC. Only async-signal-safe calls. */
static int child_setup(const TestChild *c) {
        int null, in, out, err, keep[2] = { -1, -1 }, n_keep = 0;

        if (c->pgid > 0)
                (void) setpgid(0, c->pgid);
        else if (c->pgid == TEST_PGID_NEW)
                (void) setpgid(0, 0);
        if (c->die_with_parent)
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);

        null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null < 0)
                return -errno;
        in = fcntl(c->stdin_fd >= 3 ? c->stdin_fd : null, F_DUPFD_CLOEXEC, 100);
        err = fcntl(c->stderr_fd >= 3 ? c->stderr_fd : STDERR_FILENO, F_DUPFD_CLOEXEC, 100);
        out = c->stdout_fd >= 3 ? fcntl(c->stdout_fd, F_DUPFD_CLOEXEC, 100) : err;
        if (in < 0 || out < 0 || err < 0)
                return -errno;
        for (; n_keep < 2 && c->keep_fds[n_keep] >= 3; n_keep++) {
                keep[n_keep] = fcntl(c->keep_fds[n_keep], F_DUPFD_CLOEXEC, 100);
                if (keep[n_keep] < 0)
                        return -errno;
        }

        if (dup2(in, STDIN_FILENO) < 0 || dup2(out, STDOUT_FILENO) < 0 || dup2(err, STDERR_FILENO) < 0)
                return -errno;
        for (int i = 0; i < n_keep; i++)
                if (dup2(keep[i], 3 + i) < 0)
                        return -errno;
        /* No copy of the test's bus sockets or pipes. */
        (void) close_range(3 + (unsigned) n_keep, ~0U, 0);
        return 0;
}

pid_t test_fork(const TestChild *c) {
        static const TestChild defaults = {};
        pid_t pid;

        if (!c)
                c = &defaults;
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid < 0)
                g_error("fork: %s", g_strerror(errno));
        if (pid == 0) {
                if (child_setup(c) < 0)
                        _exit(127);
                return 0;
        }

        if (c->pgid > 0)
                (void) setpgid(pid, c->pgid);
        else if (c->pgid == TEST_PGID_NEW)
                (void) setpgid(pid, pid);
        return pid;
}

pid_t test_spawn(const TestChild *c, char *const *argv, char *const *envp) {
        pid_t pid = test_fork(c);

        if (pid == 0) {
                if (envp)
                        execve(argv[0], argv, envp);
                else
                        execv(argv[0], argv);
                _exit(127);
        }
        return pid;
}

int test_become_uid(uid_t uid) {
        gid_t gid = (gid_t) uid;

        if (uid == geteuid())
                return 0;
        if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
                return -errno;
        return 0;
}

int test_pidfd_open(pid_t pid) {
        int fd = (int) syscall(SYS_pidfd_open, pid, 0);

        if (fd < 0) {
                if (errno != ESRCH)
                        g_error("pidfd_open(%d): %s", (int) pid, g_strerror(errno));
                return -ESRCH;
        }
        return fd;
}

int test_waitpid(pid_t pid, int flags) {
        int status = 0;
        pid_t r;

        do
                r = waitpid(pid, &status, flags);
        while (r < 0 && errno == EINTR);
        if (r != pid)
                g_error("waitpid(%d): %s", (int) pid, r < 0 ? g_strerror(errno) : "no such child");
        return status;
}

char *test_format_wait_status(int status) {
        if (WIFEXITED(status))
                return g_strdup_printf("exited with status %d", WEXITSTATUS(status));
        if (WIFSIGNALED(status))
                return g_strdup_printf("was killed by signal %s", strsignal(WTERMSIG(status)));
        return g_strdup_printf("ended with wait status 0x%x", (unsigned) status);
}

void test_kill_wait(pid_t pid) {
        (void) kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
}

/* --- dbus-daemon ---------------------------------------------------------------------------- */

char *test_dbus_daemon_read_address(int fd, pid_t pid, uint64_t timeout_usec) {
        _cleanup_close_ int owned = fd;
        uint64_t deadline = test_now_monotonic() + timeout_usec;
        g_autoptr(GString) s = g_string_new(NULL);

        while (!strchr(s->str, '\n')) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char buf[256];
                ssize_t n;
                int r;

                r = poll(&p, 1, test_remaining_msec(deadline, "the bus address from dbus-daemon"));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        g_error("poll: %s", g_strerror(errno));
                if (r == 0)
                        continue;
                n = read(fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        g_error("Failed to read the bus address: %s", g_strerror(errno));
                if (n == 0) {
                        g_autofree char *st = test_format_wait_status(test_waitpid(pid, 0));

                        g_error("dbus-daemon (pid %d) %s before printing its address (see its output above)",
                                (int) pid, st);
                }
                g_string_append_len(s, buf, n);
        }

        g_strchomp(s->str);
        return g_strdup(s->str);
}

pid_t test_dbus_daemon_spawn(const char *config_path, pid_t pgid, bool die_with_parent, int *ret_address_fd) {
        g_autofree char *dbus_daemon = g_find_program_in_path("dbus-daemon");
        g_autofree char *config_arg = NULL;
        pid_t pid;
        int p[2];

        if (!dbus_daemon)
                g_error("dbus-daemon not found in $PATH");
        config_arg = g_strconcat("--config-file=", config_path, NULL);

        if (pipe2(p, O_CLOEXEC) < 0)
                g_error("pipe2: %s", g_strerror(errno));
        pid = test_spawn(&(TestChild) {
                                 .pgid = pgid,
                                 .keep_fds = { p[1] },
                                 .die_with_parent = die_with_parent,
                         },
                         (char *[]) { dbus_daemon, config_arg, (char *) "--nofork", (char *) "--print-address=3", NULL },
                         NULL);
        close(p[1]);
        *ret_address_fd = p[0];
        return pid;
}

pid_t test_dbus_daemon_start(const char *config_path, pid_t pgid, bool die_with_parent, uint64_t timeout_usec,
                             char **ret_address) {
        int fd;
        pid_t pid = test_dbus_daemon_spawn(config_path, pgid, die_with_parent, &fd);

        *ret_address = test_dbus_daemon_read_address(fd, pid, timeout_usec);
        return pid;
}

int test_bus_open(const char *address, bool is_bus, uint64_t call_timeout_usec, sd_bus **ret) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        int r;

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_address(bus, address);
        if (r < 0)
                return r;
        if (is_bus)
                r = sd_bus_set_bus_client(bus, true);
        else
                r = sd_bus_negotiate_fds(bus, true);
        if (r < 0)
                return r;
        r = sd_bus_set_method_call_timeout(bus, call_timeout_usec);
        if (r < 0)
                return r;
        r = sd_bus_start(bus);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(bus);
        return 0;
}

sd_bus_slot *test_bus_match_name_owner_changed(sd_bus *bus, const char *name, sd_bus_message_handler_t handler,
                                               void *userdata) {
        g_autofree char *rule = g_strdup_printf("type='signal',sender='" DBUS_SERVICE "',path='" DBUS_PATH "',"
                                                "interface='" DBUS_INTERFACE "',member='NameOwnerChanged',"
                                                "arg0='%s'", name);
        sd_bus_slot *slot = NULL;
        int r;

        r = sd_bus_add_match(bus, &slot, rule, handler, userdata);
        if (r < 0)
                g_error("Failed to add match %s: %s", rule, g_strerror(-r));
        return slot;
}

char *test_bus_get_name_owner(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *owner;
        int r;

        r = sd_bus_call_method(bus, DBUS_SERVICE, DBUS_PATH, DBUS_INTERFACE, "GetNameOwner", &error, &reply,
                               "s", name);
        if (sd_bus_error_has_name(&error, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return NULL;
        if (r < 0)
                g_error("GetNameOwner(%s) failed: %s", name, error.message ?: g_strerror(-r));
        r = sd_bus_message_read(reply, "s", &owner);
        if (r < 0)
                g_error("Bad GetNameOwner reply: %s", g_strerror(-r));
        return g_strdup(owner);
}
