/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbusd crashing and starting again: what survives, what does not,
 * tokens that never go back, and a lock directory with garbage in it. */

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus-test.h"
#include "test-fdstore.h"

static const TestHolder *find_lock(GPtrArray *locks, const char *resource) {
        for (guint i = 0; i < locks->len; i++)
                if (g_str_equal(((TestHolder *) locks->pdata[i])->resource, resource))
                        return locks->pdata[i];
        return NULL;
}

static void assert_same_hold(const TestHolder *a, const TestHolder *b) {
        g_assert_nonnull(a);
        g_assert_nonnull(b);
        g_assert_cmpstr(a->resource, ==, b->resource);
        g_assert_cmpstr(a->mode, ==, b->mode);
        g_assert_cmpuint(a->uid, ==, b->uid);
        g_assert_cmpuint(a->pid, ==, b->pid);
        g_assert_cmpstr(a->comm, ==, b->comm);
        g_assert_cmpstr(a->sender, ==, b->sender);
        g_assert_cmpuint(a->token, ==, b->token);
        g_assert_cmpuint(a->since, ==, b->since);
        g_assert_cmpuint(a->expires, ==, b->expires);
        g_assert_cmpstr(a->scope, ==, b->scope);
        g_assert_cmpstr(a->description, ==, b->description);
}

static uint64_t max_token(GPtrArray *locks, uint64_t also) {
        uint64_t m = also;

        for (guint i = 0; i < locks->len; i++)
                m = MAX(m, ((TestHolder *) locks->pdata[i])->token);
        return m;
}

static void test_restart_kill9(TestFixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) before = NULL, after = NULL, again = NULL;
        sd_bus *gone, *stays;
        uint64_t top, t_new, t_newer, t_gone, t_burned;
        pid_t first;

        first = test_bus_activate_daemon(f->bus);
        g_assert_cmpint(first, >, 0);

        /* Two persistent holds, a connection hold whose client will die
         * while the daemon is down, and one whose client stays. */
        (void) test_lock_ok(f->client, "p1");
        (void) test_acquire_ok(f->client, "p2", &(TestAcquireOptions) {
                                .mode = "shared", .scope = "persistent", .description = "keep me",
                        });
        gone = test_bus_connect(f->bus);
        t_gone = test_acquire_ok(gone, "gone", &(TestAcquireOptions) { .description = "client dies" });
        stays = test_bus_connect(f->bus);
        (void) test_acquire_ok(stays, "stays", &(TestAcquireOptions) { .description = "still here" });

        before = test_list_locks_ok(f->client);
        g_assert_cmpuint(before->len, ==, 4);

        /* The highest token so far belongs to no hold at the crash, so
         * only the durable reservation can keep new tokens above it. */
        t_burned = test_lock_ok(f->client, "burned");
        test_unlock_ok(f->client, "burned");
        top = max_token(before, MAX(t_gone, t_burned));
        g_assert_cmpuint(top, ==, t_burned);

        /* Crash; one client goes away meanwhile; start it again directly. */
        test_bus_kill_daemon(f->bus);
        test_bus_disconnect(f->client, gone);
        test_bus_start_daemon(f->bus);
        g_assert_cmpint(f->bus->daemon_pid, !=, first);

        after = test_list_locks_ok(f->client);
        g_assert_cmpuint(after->len, ==, 3);
        assert_same_hold(find_lock(after, "p1"), find_lock(before, "p1"));
        assert_same_hold(find_lock(after, "p2"), find_lock(before, "p2"));
        assert_same_hold(find_lock(after, "stays"), find_lock(before, "stays"));
        g_assert_null(find_lock(after, "gone"));
        test_assert_not_locked(f->client, "gone");

        /* New tokens are above every token handed out before the crash. */
        t_new = test_lock_ok(f->client, "new");
        g_assert_cmpuint(t_new, >, top);

        /* The surviving connection hold is tracked again: released when its
         * client goes (see /bus/acquire/connection-scope on why Owner sees
         * it at once after NameOwnerChanged). */
        test_bus_disconnect(f->client, stays);
        test_assert_not_locked(f->client, "stays");

        /* Once more, this time started again by activation. */
        test_bus_kill_daemon(f->bus);
        t_newer = test_lock_ok(f->client, "newer");
        g_assert_cmpuint(t_newer, >, t_new);

        again = test_list_locks_ok(f->client);
        g_assert_cmpuint(again->len, ==, 4);
        assert_same_hold(find_lock(again, "p1"), find_lock(before, "p1"));
        assert_same_hold(find_lock(again, "p2"), find_lock(before, "p2"));
        g_assert_nonnull(find_lock(again, "new"));
        g_assert_nonnull(find_lock(again, "newer"));
        g_assert_null(find_lock(again, "stays"));
        g_assert_null(find_lock(again, "gone"));
}

/* lockbusd stopped (SIGTERM) while a call waits: it exits with status 0
 * without answering it (the bus tells the caller), and frees it (the
 * sanitizer build reports a leak otherwise). */
static void test_stop_with_waiter(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *waiting = NULL;
        g_autoptr(TestCall) call = NULL;
        int r;

        test_bus_start_daemon(f->bus);
        waiting = test_bus_connect(f->bus);
        /* A connection hold: another connection of the same uid waits. */
        (void) test_acquire_ok(f->client, "held", NULL);
        call = test_acquire_async(waiting, "held", &(TestAcquireOptions) { .has_timeout = true,
                                                                           .timeout = UINT64_MAX });
        /* Asked on the same connection: answered after the Acquire was queued. */
        g_assert_cmpuint(test_get_property_u(waiting, "WaiterCount"), ==, 1);

        test_bus_stop_daemon(f->bus);

        test_call_wait(call);
        r = test_call_result(call, &error);
        g_assert_cmpint(r, <, 0);
        g_assert_true(sd_bus_error_has_name(&error, SD_BUS_ERROR_NO_REPLY));
}

/* Starts lockbusd directly with the fd store, as systemd would. */
static void start_daemon_with_fdstore(TestBus *b, TestFdStore *store) {
        g_auto(GStrv) wrapper = test_fdstore_wrapper(store, b->pass_fds);
        int status = 0;

        if (!test_bus_try_start_daemon(b, (const char *const *) wrapper, -1, &status))
                g_error("lockbusd %s before taking " LOCKBUS_BUS_NAME, test_format_wait_status(status));
}

/* An fd hold survives a crash with systemd's fd store (a stand-in): the
 * daemon hands the read end of the hold's pipe to it, the next daemon gets
 * it back and keeps the hold with its token; closing the fd then releases
 * the hold, and the store forgets the fd. A second fd hold whose fd is
 * closed while no daemon runs is released at the next start. */
static void test_restart_fd_store(TestFixture *f, gconstpointer data) {
        g_autoptr(TestFdStore) store = test_fdstore_new(f->bus->dir);
        g_autoptr(GPtrArray) before = NULL, after = NULL;
        _cleanup_close_ int fd = -1, closed = -1;
        uint64_t t;

        start_daemon_with_fdstore(f->bus, store);
        fd = test_acquire_fd_ok(f->client, "fd", NULL, &t);
        closed = test_acquire_fd_ok(f->client, "closed", NULL, NULL);
        test_fdstore_wait_count(store, 2, TEST_TIMEOUT_USEC);
        before = test_list_locks_ok(f->client);

        test_bus_kill_daemon(f->bus);
        close(TAKE_FD(closed));
        test_fdstore_sync(store);
        g_assert_cmpuint(test_fdstore_count(store), ==, 2);
        start_daemon_with_fdstore(f->bus, store);

        after = test_list_locks_ok(f->client);
        g_assert_cmpuint(after->len, ==, 1);
        assert_same_hold(find_lock(after, "fd"), find_lock(before, "fd"));
        test_fdstore_wait_count(store, 1, TEST_TIMEOUT_USEC);

        close(TAKE_FD(fd));
        test_fdstore_wait_count(store, 0, TEST_TIMEOUT_USEC);
        test_assert_not_locked(f->client, "fd");
        g_assert_cmpuint(test_lock_ok(f->client, "fd"), >, t);
}

static void test_store_corrupt_file(TestFixture *f, gconstpointer data) {
        static const char garbage[] = "\x7f" "ELF\x01\x02\x00 not a hold [Hold\nResource=\nToken=-1\n\xff\xfe";
        g_autofree char *path = NULL, *quarantine = NULL;
        g_autoptr(GDir) d = NULL;
        g_autoptr(GError) error = NULL;
        const char *name;
        bool found = false;

        /* A hold file of the store's naming ("<stem>@<token>", see
         * service/store.h) that is garbage, before the daemon first runs. */
        g_assert_cmpint(mkdir(f->bus->lock_dir, 0755), ==, 0);
        path = g_build_filename(f->bus->lock_dir, "db@5", NULL);
        g_assert_true(g_file_set_contents(path, garbage, sizeof(garbage) - 1, &error));

        /* It starts and serves. */
        g_assert_cmpint(test_bus_activate_daemon(f->bus), >, 0);
        (void) test_lock_ok(f->client, "x");
        test_assert_not_locked(f->client, "db");

        /* The file was moved aside, intact. */
        g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
        quarantine = g_build_filename(f->bus->lock_dir, ".quarantine", NULL);
        d = g_dir_open(quarantine, 0, &error);
        if (!d)
                g_error("%s: %s", quarantine, error->message);
        while ((name = g_dir_read_name(d))) {
                g_autofree char *p = g_build_filename(quarantine, name, NULL), *contents = NULL;
                gsize size;

                if (g_file_get_contents(p, &contents, &size, NULL) &&
                    size == sizeof(garbage) - 1 && memcmp(contents, garbage, size) == 0)
                        found = true;
        }
        g_assert_true(found);

        /* And the name is free to use. */
        (void) test_lock_ok(f->client, "db");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 2);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/bus/restart/kill-9", test_restart_kill9);
        test_add("/bus/restart/fd-store", test_restart_fd_store);
        test_add("/bus/restart/stop-with-waiter", test_stop_with_waiter);
        test_add("/bus/store/corrupt-file", test_store_corrupt_file);

        return g_test_run();
}
