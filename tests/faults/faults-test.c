/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "faults-test.h"

/* The test's original mount namespace, opened before it first leaves it. */
static int original_mount_ns = -1;

/* --- Fixture ------------------------------------------------------------------ */

/* The log of the current test case's lockbusd, for dump_log_on_abort(). */
static char *current_log_path = NULL;

/* A failed assertion (SIGABRT) or g_error() (SIGTRAP) ends the test before
 * its teardown: show what lockbusd said. Only async-signal-safe calls. */
static void dump_log_on_abort(int sig) {
        static const char head[] = "--- lockbusd's log ---\n", tail[] = "--- end of lockbusd's log ---\n";
        char buf[4096];
        ssize_t n;
        int fd;

        if (current_log_path && (fd = open(current_log_path, O_RDONLY | O_CLOEXEC)) >= 0) {
                (void) !write(STDERR_FILENO, head, sizeof(head) - 1);
                while ((n = read(fd, buf, sizeof(buf))) > 0)
                        (void) !write(STDERR_FILENO, buf, (size_t) n);
                (void) !write(STDERR_FILENO, tail, sizeof(tail) - 1);
                close(fd);
        }
        signal(sig, SIG_DFL);
        raise(sig);
}

void faults_fixture_setup(FaultsFixture *f, gconstpointer data) {
        g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
        g_auto(GStrv) args = NULL;
        g_autofree char *service = NULL;

        for (const char *const *a = data; a && *a; a++)
                g_strv_builder_add(builder, *a);
        g_strv_builder_add(builder, "--idle-timeout=0");
        args = g_strv_builder_end(builder);

        f->bus = test_bus_new_with_args((const char *const *) args);
        f->client = test_bus_connect(f->bus);
        f->log_path = g_build_filename(f->bus->dir, "lockbusd.log", NULL);
        f->mounts = g_ptr_array_new_with_free_func(g_free);

        current_log_path = f->log_path;
        signal(SIGABRT, dump_log_on_abort);
        signal(SIGTRAP, dump_log_on_abort);

        /* Only the test starts lockbusd (see faults-test.h). */
        service = g_build_filename(f->bus->dir, "services", LOCKBUS_BUS_NAME ".service", NULL);
        g_assert_cmpint(unlink(service), ==, 0);
}

void faults_fixture_teardown(FaultsFixture *f, gconstpointer data) {
        if (g_test_failed()) {
                g_autofree char *log = faults_read_file(f->log_path);

                if (log)
                        g_printerr("--- lockbusd's log ---\n%s--- end of lockbusd's log ---\n", log);
        }
        current_log_path = NULL;

        f->client = sd_bus_flush_close_unref(f->client);

        /* Newest first; detached, so a lockbusd still running (stopped by
         * test_bus_free()) does not keep them busy. */
        for (guint i = f->mounts->len; i > 0; i--) {
                const char *path = f->mounts->pdata[i - 1];

                if (umount2(path, MNT_DETACH) < 0)
                        g_test_message("umount %s: %s", path, g_strerror(errno));
        }
        g_ptr_array_set_size(f->mounts, 0);

        /* Back home before the harness removes DIR: there nothing is
         * mounted on it. */
        if (f->in_namespace) {
                g_assert_cmpint(setns(original_mount_ns, CLONE_NEWNS), ==, 0);
                f->in_namespace = false;
        }

        g_clear_pointer(&f->bus, test_bus_free);
        g_clear_pointer(&f->log_path, g_free);
        g_clear_pointer(&f->mounts, g_ptr_array_unref);
}

/* --- The daemon --------------------------------------------------------------- */

static ino_t mount_ns_of(const char *pid) {
        g_autofree char *path = g_strdup_printf("/proc/%s/ns/mnt", pid);
        struct stat st;

        g_assert_cmpint(stat(path, &st), ==, 0);
        return st.st_ino;
}

bool faults_try_start_daemon(FaultsFixture *f, const char *const *wrapper, int *ret_status) {
        _cleanup_close_ int log_fd = -1;
        g_autofree char *pid_s = NULL;
        pid_t pid;

        log_fd = open(f->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
        g_assert_cmpint(log_fd, >=, 0);
        if (!test_bus_try_start_daemon(f->bus, wrapper, log_fd, ret_status))
                return false;

        pid = f->bus->daemon_pid;
        /* Nobody else could have started one (no activation file). */
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);

        pid_s = g_strdup_printf("%d", (int) pid);
        g_assert_cmpuint(mount_ns_of(pid_s), ==, mount_ns_of("self"));
        return true;
}

pid_t faults_start_daemon(FaultsFixture *f) {
        int status = 0;

        if (!faults_try_start_daemon(f, NULL, &status)) {
                g_autofree char *log = faults_daemon_log(f);

                g_error("lockbusd exited (wait status 0x%x) before taking " LOCKBUS_BUS_NAME "; its log:\n%s",
                        (unsigned) status, log);
        }
        return f->bus->daemon_pid;
}

pid_t faults_restart_daemon(FaultsFixture *f) {
        test_bus_kill_daemon(f->bus);
        g_assert_cmpint(f->bus->daemon_pid, ==, 0);
        return faults_start_daemon(f);
}

char *faults_daemon_log(FaultsFixture *f) {
        char *log = faults_read_file(f->log_path);

        return log ?: g_strdup("");
}

void faults_wait_log(FaultsFixture *f, const char *needle) {
        if (!faults_try_wait_log(f, needle))
                g_error("Timed out after %u s waiting for lockbusd to log \"%s\"",
                        TEST_TIMEOUT_USEC / 1000000U, needle);
}

bool faults_try_wait_log(FaultsFixture *f, const char *needle) {
        _cleanup_close_ int fd = -1;
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;

        fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
        g_assert_cmpint(fd, >=, 0);
        /* Watch first, then look: nothing written in between is missed. */
        g_assert_cmpint(inotify_add_watch(fd, f->log_path, IN_MODIFY), >=, 0);

        for (;;) {
                g_autofree char *log = faults_daemon_log(f);
                char buf[4096];

                if (strstr(log, needle))
                        return true;
                if (test_now_monotonic() >= deadline)
                        return false;
                (void) test_wait_readable(fd, deadline);
                while (read(fd, buf, sizeof(buf)) > 0)
                        ;
        }
}

void faults_assert_log_contains_impl(FaultsFixture *f, const char *needle, const char *file, int line,
                                     const char *func) {
        g_autofree char *log = faults_daemon_log(f), *msg = NULL;

        if (strstr(log, needle))
                return;
        msg = g_strdup_printf("lockbusd's log does not contain \"%s\"", needle);
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

static uint64_t proc_status_field(pid_t pid, const char *field, unsigned base) {
        g_autofree char *path = g_strdup_printf("/proc/%d/status", (int) pid), *contents = NULL;
        g_autofree char *prefix = g_strconcat(field, ":", NULL);
        g_auto(GStrv) lines = NULL;

        contents = faults_read_file(path);
        g_assert_nonnull(contents);
        lines = g_strsplit(contents, "\n", -1);
        for (char **l = lines; *l; l++)
                if (g_str_has_prefix(*l, prefix))
                        return g_ascii_strtoull(g_strchug(*l + strlen(prefix)), NULL, base);
        g_error("%s has no field %s", path, field);
}

uint64_t faults_proc_status_kib(pid_t pid, const char *field) {
        return proc_status_field(pid, field, 10);
}

uint64_t faults_proc_status_hex(pid_t pid, const char *field) {
        return proc_status_field(pid, field, 16);
}

unsigned faults_count_fds(pid_t pid) {
        g_autofree char *path = g_strdup_printf("/proc/%d/fd", (int) pid);
        g_autoptr(GPtrArray) names = faults_list_dir(path);

        return names->len;
}

/* --- Mounts ------------------------------------------------------------------- */

bool faults_enter_mount_namespace(FaultsFixture *f) {
        if (test_skip_unless_root())
                return false;

        g_assert_false(f->in_namespace);
        if (original_mount_ns < 0) {
                original_mount_ns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
                g_assert_cmpint(original_mount_ns, >=, 0);
        }

        if (unshare(CLONE_NEWNS) < 0) {
                g_autofree char *why = g_strdup_printf("cannot make a private mount namespace: %s",
                                                       g_strerror(errno));
                g_test_skip(why);
                return false;
        }
        f->in_namespace = true;

        /* Nothing we mount may propagate back to the host. */
        g_assert_cmpint(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), ==, 0);
        return true;
}

void faults_mount_tmpfs(FaultsFixture *f, const char *path, const char *options) {
        g_autofree char *all = g_strconcat("mode=0755,", options, NULL);

        g_assert_true(f->in_namespace);
        if (mkdir(path, 0755) < 0)
                g_assert_cmpint(errno, ==, EEXIST);
        if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, all) < 0)
                g_error("Failed to mount a tmpfs (%s) on %s: %s", all, path, g_strerror(errno));
        g_ptr_array_add(f->mounts, g_strdup(path));
}

void faults_remount(FaultsFixture *f, const char *path, bool read_only) {
        unsigned long flags = MS_REMOUNT | MS_NOSUID | MS_NODEV | (read_only ? MS_RDONLY : 0);

        g_assert_true(f->in_namespace);
        if (mount(NULL, path, NULL, flags, NULL) < 0)
                g_error("Failed to remount %s %s: %s", path, read_only ? "ro" : "rw", g_strerror(errno));
}

void faults_bind_read_only(FaultsFixture *f, const char *path) {
        g_assert_true(f->in_namespace);
        if (mount(path, path, NULL, MS_BIND, NULL) < 0)
                g_error("Failed to bind-mount %s: %s", path, g_strerror(errno));
        g_ptr_array_add(f->mounts, g_strdup(path));
        if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
                g_error("Failed to make the bind mount %s read-only: %s", path, g_strerror(errno));
}

void faults_umount(FaultsFixture *f, const char *path) {
        for (guint i = f->mounts->len; i > 0; i--)
                if (streq(f->mounts->pdata[i - 1], path)) {
                        g_assert_cmpint(umount2(path, MNT_DETACH), ==, 0);
                        g_ptr_array_remove_index(f->mounts, i - 1);
                        return;
                }
        g_error("%s was not mounted by this test", path);
}

/* --- Files ---------------------------------------------------------------------- */

void faults_rm_rf(const char *path) {
        test_rm_rf(path);
        g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
}

void faults_fill(const char *path) {
        static const char block[4096] = {};
        _cleanup_close_ int fd = -1;
        size_t chunk = sizeof(block);

        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        g_assert_cmpint(fd, >=, 0);

        /* Down to single bytes: not even a partial page may be left. */
        while (chunk > 0) {
                ssize_t n = write(fd, block, chunk);

                if (n < 0) {
                        g_assert_cmpint(errno, ==, ENOSPC);
                        chunk /= 2;
                }
        }
}

GPtrArray *faults_list_dir(const char *path) {
        GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
        DIR *d;
        struct dirent *de;

        d = opendir(path);
        if (!d)
                g_error("Failed to open %s: %s", path, g_strerror(errno));
        while ((errno = 0, de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                        g_ptr_array_add(names, g_strdup(de->d_name));
        g_assert_cmpint(errno, ==, 0);
        closedir(d);

        g_ptr_array_sort(names, test_compare_strings);
        return names;
}

void faults_assert_dir_impl(const char *path, const char *const *expected, const char *file, int line,
                            const char *func) {
        g_autoptr(GPtrArray) names = faults_list_dir(path);
        g_autoptr(GPtrArray) want = g_ptr_array_new();
        g_autofree char *got_s = NULL, *want_s = NULL, *msg = NULL;
        bool same;

        /* The daemon's peer-to-peer socket is not a file it writes. */
        for (guint i = 0; i < names->len; i++)
                if (streq(names->pdata[i], ".direct.sock"))
                        g_ptr_array_remove_index(names, i--);

        for (const char *const *e = expected; *e; e++)
                g_ptr_array_add(want, (char *) *e);
        g_ptr_array_sort(want, test_compare_strings);

        same = names->len == want->len;
        for (guint i = 0; same && i < names->len; i++)
                same = streq(names->pdata[i], want->pdata[i]);
        if (same)
                return;

        g_ptr_array_add(names, NULL);
        g_ptr_array_add(want, NULL);
        got_s = g_strjoinv(" ", (char **) names->pdata);
        want_s = g_strjoinv(" ", (char **) want->pdata);
        msg = g_strdup_printf("%s holds [%s], expected [%s]", path, got_s, want_s);
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

char *faults_hold_file(const char *resource, uint64_t token) {
        for (const char *p = resource; *p; p++)
                g_assert_true(g_ascii_isalnum(*p) || *p == '_' || *p == '-');
        return g_strdup_printf("%s@%" PRIu64, resource, token);
}

char *faults_read_file(const char *path) {
        g_autoptr(GError) error = NULL;
        char *contents = NULL;

        if (!g_file_get_contents(path, &contents, NULL, &error)) {
                if (g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
                        return NULL;
                g_error("Failed to read %s: %s", path, error->message);
        }
        return contents;
}

uint64_t faults_read_tokens(const char *lock_dir) {
        g_autofree char *path = g_build_filename(lock_dir, "tokens", NULL);
        g_autofree char *contents = faults_read_file(path);
        guint64 u;

        g_assert_nonnull(contents);
        g_strchomp(contents);
        g_assert_true(g_ascii_string_to_unsigned(contents, 10, 1, UINT64_MAX, &u, NULL));
        return u;
}

/* --- Calls ------------------------------------------------------------------------ */

sd_bus_message *faults_new_call(sd_bus *bus, const char *member) {
        sd_bus_message *m = NULL;

        g_assert_cmpint(sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                       LOCKBUS_MANAGER_IFACE, member), >=, 0);
        return m;
}

int faults_call(sd_bus *bus, sd_bus_message *m, sd_bus_error *error, sd_bus_message **ret_reply) {
        return sd_bus_call(bus, m, 0, error, ret_reply);
}

void faults_assert_error_impl(int r, const sd_bus_error *error, const char *name, const char *substring,
                              const char *file, int line, const char *func) {
        g_autofree char *msg = NULL;

        if (r < 0 && sd_bus_error_has_name(error, name) &&
            (!substring || (error->message && strstr(error->message, substring))))
                return;

        if (r >= 0)
                msg = g_strdup_printf("expected error %s (\"...%s...\"), but the call succeeded",
                                      name, strempty(substring));
        else
                msg = g_strdup_printf("expected error %s (\"...%s...\"), got %s: %s", name, strempty(substring),
                                      sd_bus_error_is_set(error) ? error->name : g_strerror(-r),
                                      sd_bus_error_is_set(error) ? strempty(error->message) : "");
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

void faults_assert_not_held(sd_bus *bus, const char *resource) {
        g_autoptr(GPtrArray) locks = NULL;

        test_assert_not_locked(bus, resource);
        locks = test_list_locks_ok(bus);
        for (guint i = 0; i < locks->len; i++)
                g_assert_cmpstr(((TestHolder *) locks->pdata[i])->resource, !=, resource);
}

uint64_t faults_owner_token(sd_bus *bus, const char *resource) {
        g_autoptr(GPtrArray) holders = test_owner_ok(bus, resource, NULL);

        g_assert_cmpuint(holders->len, ==, 1);
        return ((TestHolder *) holders->pdata[0])->token;
}

/* --- Many calls at once --------------------------------------------------------------- */

struct FaultsBatch {
        unsigned n_sent;
        unsigned n_replies;
        GHashTable *results;    /* "ok" or error name → count */
        uint64_t max_token;
};

typedef struct BatchCall {
        FaultsBatch *batch;
} BatchCall;

FaultsBatch *faults_batch_new(void) {
        FaultsBatch *b = g_new0(FaultsBatch, 1);

        b->results = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        return b;
}

void faults_batch_free(FaultsBatch *b) {
        if (!b)
                return;
        g_hash_table_unref(b->results);
        g_free(b);
}

static int on_batch_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        FaultsBatch *b = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *result = e ? e->name : "ok";
        gpointer count = g_hash_table_lookup(b->results, result);

        if (!count)
                g_hash_table_insert(b->results, g_strdup(result), GUINT_TO_POINTER(1));
        else
                g_hash_table_insert(b->results, g_strdup(result), GUINT_TO_POINTER(GPOINTER_TO_UINT(count) + 1));
        b->n_replies++;

        if (!e) {
                const char *sig = sd_bus_message_get_signature(m, true);
                uint64_t token = 0;
                int fd;

                if (streq(sig, "t") && sd_bus_message_read(m, "t", &token) > 0)
                        b->max_token = MAX(b->max_token, token);
                else if (streq(sig, "ht") && sd_bus_message_read(m, "ht", &fd, &token) > 0)
                        b->max_token = MAX(b->max_token, token);
        }
        return 0;
}

void faults_batch_send(FaultsBatch *b, sd_bus *bus, sd_bus_message *m) {
        int r;

        /* Floating slot: freed with the reply or the connection. */
        r = sd_bus_call_async(bus, NULL, m, on_batch_reply, b, UINT64_MAX);
        if (r < 0)
                g_error("Failed to send call %u: %s", b->n_sent + 1, g_strerror(-r));
        b->n_sent++;
}

/* Dispatches the buses until check(userdata) is true. */
static void process_until(sd_bus *const *buses, size_t n_buses, bool (*check)(void *userdata), void *userdata,
                          const char *what) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;
        g_autofree struct pollfd *p = g_new(struct pollfd, n_buses);

        for (;;) {
                bool progress = false;
                int msec, r;

                for (size_t i = 0; i < n_buses; i++) {
                        r = sd_bus_process(buses[i], NULL);
                        if (r < 0)
                                g_error("Failed to process a bus while waiting for %s: %s", what, g_strerror(-r));
                        if (r > 0)
                                progress = true;
                }
                if (check(userdata))
                        return;
                if (progress)
                        continue;

                msec = test_remaining_msec(deadline, what);
                for (size_t i = 0; i < n_buses; i++) {
                        p[i] = (struct pollfd) { .fd = sd_bus_get_fd(buses[i]),
                                                 .events = (short) sd_bus_get_events(buses[i]) };
                        msec = test_bus_poll_msec(buses[i], msec);
                }
                r = poll(p, n_buses, msec);
                if (r < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(r, >=, 0);
        }
}

typedef struct BatchTarget {
        const FaultsBatch *batch;
        unsigned n;
} BatchTarget;

static bool batch_has_replies(void *userdata) {
        BatchTarget *t = userdata;

        return t->batch->n_replies >= t->n;
}

void faults_batch_wait(FaultsBatch *b, sd_bus *const *buses, size_t n_buses, unsigned n, const char *what) {
        BatchTarget t = { .batch = b, .n = n };

        process_until(buses, n_buses, batch_has_replies, &t, what);
}

unsigned faults_batch_n_replies(const FaultsBatch *b) {
        return b->n_replies;
}

unsigned faults_batch_count(const FaultsBatch *b, const char *result) {
        return GPOINTER_TO_UINT(g_hash_table_lookup(b->results, result));
}

char *faults_batch_describe(const FaultsBatch *b) {
        GString *s = g_string_new(NULL);
        GHashTableIter iter;
        gpointer key, value;

        g_hash_table_iter_init(&iter, b->results);
        while (g_hash_table_iter_next(&iter, &key, &value))
                g_string_append_printf(s, "%s%s x%u", s->len > 0 ? ", " : "", (const char *) key,
                                       GPOINTER_TO_UINT(value));
        return g_string_free(s, false);
}

uint64_t faults_batch_max_token(const FaultsBatch *b) {
        return b->max_token;
}

uint64_t faults_spend_tokens(sd_bus *bus, unsigned n) {
        /* Well below dbus-daemon's limit of pending replies per connection. */
        const unsigned window = 32;
        uint64_t last = 0;

        for (unsigned done = 0; done < n; ) {
                g_autoptr(FaultsBatch) acquired = faults_batch_new(), released = faults_batch_new();
                unsigned k = MIN(window, n - done);

                for (unsigned i = 0; i < k; i++) {
                        g_autofree char *resource = g_strdup_printf("spend-%u", i);
                        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = faults_new_call(bus, "Acquire");

                        g_assert_cmpint(sd_bus_message_append(m, "sa{sv}", resource, 0), >=, 0);
                        faults_batch_send(acquired, bus, m);
                }
                faults_batch_wait(acquired, &bus, 1, k, "Acquire replies");
                if (faults_batch_count(acquired, "ok") != k) {
                        g_autofree char *d = faults_batch_describe(acquired);

                        g_error("Spending tokens %u to %u: %s", done + 1, done + k, d);
                }

                for (unsigned i = 0; i < k; i++) {
                        g_autofree char *resource = g_strdup_printf("spend-%u", i);
                        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = faults_new_call(bus, "Unlock");

                        g_assert_cmpint(sd_bus_message_append(m, "s", resource), >=, 0);
                        faults_batch_send(released, bus, m);
                }
                faults_batch_wait(released, &bus, 1, k, "Unlock replies");
                g_assert_cmpuint(faults_batch_count(released, "ok"), ==, k);

                last = faults_batch_max_token(acquired);
                done += k;
        }
        return last;
}
