/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbusd with its directories failing under it: full, read-only, removed,
 * entries that are not what the daemon wrote, a token reservation that goes
 * away or cannot be written. The promise checked each time, as a user would
 * check it over the bus and with ls:
 *
 *   - a grant that cannot be stored is answered with io.lockbus1.Error.Storage
 *     naming the errno, and nothing of it is held: Owner says NotLocked,
 *     ListLocks has no row, no file is left behind, LockCount is unchanged,
 *     and the waiters queued behind it are served as if it had never asked;
 *   - an acknowledged persistent hold is never lost: once the fault is gone
 *     and the daemon has crashed and started again, it is there;
 *   - tokens never go backwards, also across that restart;
 *   - the daemon keeps serving what does not need the broken directory, and
 *     recovers once the fault is gone.
 *
 * Mounts happen in a private mount namespace (see faults-test.h). */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults-test.h"

#define HOUR_USEC (3600ULL * 1000000ULL)

/* CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. */
#define DAC_CAPS ((UINT64_C(1) << 1) | (UINT64_C(1) << 2))

static const TestAcquireOptions wait_forever = { .has_timeout = true, .timeout = UINT64_MAX };
static const TestAcquireOptions wait_forever_persistent = {
        .scope = "persistent", .has_timeout = true, .timeout = UINT64_MAX,
};

/* Storage, with the errno's text and the directory in the message. */
static void assert_storage_error(int r, const sd_bus_error *error, int errnum, const char *directory) {
        faults_assert_error(r, error, LOCKBUS_ERROR_STORAGE, g_strerror(errnum));
        if (directory)
                faults_assert_error(r, error, LOCKBUS_ERROR_STORAGE, directory);
}

static uint64_t owner_expires(sd_bus *bus, const char *resource) {
        g_autoptr(GPtrArray) holders = test_owner_ok(bus, resource, NULL);

        g_assert_cmpuint(holders->len, ==, 1);
        return ((TestHolder *) holders->pdata[0])->expires;
}

static const char *owner_sender(GPtrArray **holders, sd_bus *bus, const char *resource) {
        *holders = test_owner_ok(bus, resource, NULL);
        g_assert_cmpuint((*holders)->len, ==, 1);
        return ((TestHolder *) (*holders)->pdata[0])->sender;
}

/* Queues two waiters for `resource`, held by a connection hold of `holder`:
 * first a persistent one (w1), then a connection one (w2). */
static void queue_two_waiters(sd_bus *holder, const char *resource, sd_bus *w1, const TestAcquireOptions *o1,
                              TestCall **ret_c1, sd_bus *w2, const TestAcquireOptions *o2, TestCall **ret_c2) {
        uint32_t base = test_get_property_u(holder, "WaiterCount");

        (void) test_acquire_ok(holder, resource, NULL);
        *ret_c1 = test_acquire_async(w1, resource, o1);
        g_assert_cmpuint(test_get_property_u(w1, "WaiterCount"), ==, base + 1);
        *ret_c2 = test_acquire_async(w2, resource, o2);
        g_assert_cmpuint(test_get_property_u(w2, "WaiterCount"), ==, base + 2);
}

/* ---- A full lock directory ------------------------------------------------------------ */

static void test_lock_dir_full(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *h = NULL, *w1 = NULL, *w2 = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) c1 = NULL, c2 = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *fill = NULL, *file_a = NULL, *file_t = NULL;
        uint64_t t_a, t_t, t_w2, t_c, t_b, expires;
        const char *lib;
        unsigned fds;
        uint32_t count;
        pid_t pid;
        int r;

        if (!faults_enter_mount_namespace(f))
                return;
        lib = f->bus->lock_dir;
        faults_mount_tmpfs(f, lib, "size=256k");
        pid = faults_start_daemon(f);

        t_a = test_lock_ok(f->client, "a");
        t_t = test_acquire_ok(f->client, "t", &(TestAcquireOptions) {
                                      .scope = "persistent", .has_ttl = true, .ttl = HOUR_USEC });
        expires = owner_expires(f->client, "t");
        file_a = faults_hold_file("a", t_a);
        file_t = faults_hold_file("t", t_t);

        h = test_bus_connect(f->bus);
        w1 = test_bus_connect(f->bus);
        w2 = test_bus_connect(f->bus);
        queue_two_waiters(h, "w", w1, &wait_forever_persistent, &c1, w2, &wait_forever, &c2);

        fill = g_build_filename(lib, "fill", NULL);
        faults_fill(fill);
        count = test_get_property_u(f->client, "LockCount");
        g_assert_cmpuint(count, ==, 3);
        fds = faults_count_fds(pid);

        /* A new persistent hold, whichever way asked: Storage, nothing held,
         * nothing left in the directory. */
        r = test_lock(f->client, "b", NULL, &error);
        assert_storage_error(r, &error, ENOSPC, lib);
        sd_bus_error_free(&error);
        r = test_acquire(f->client, "b", &(TestAcquireOptions) { .scope = "persistent", .mode = "shared" },
                         NULL, &error);
        assert_storage_error(r, &error, ENOSPC, lib);
        sd_bus_error_free(&error);
        faults_assert_not_held(f->client, "b");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, count);
        faults_assert_dir(lib, "fill", "tokens", file_a, file_t);
        faults_assert_log_contains(f, "No space left on device");

        /* Refresh rewrites the file: refused, the old expiry stays. */
        r = test_refresh(f->client, "t", NULL, &error);
        assert_storage_error(r, &error, ENOSPC, lib);
        sd_bus_error_free(&error);
        g_assert_cmpuint(owner_expires(f->client, "t"), ==, expires);

        /* The queue: w1's grant cannot be stored, w2 (runtime directory)
         * is served next as if w1 had never asked. */
        test_bus_disconnect(f->client, TAKE_PTR(h));
        test_call_wait(c1);
        r = test_call_result(c1, &error);
        assert_storage_error(r, &error, ENOSPC, lib);
        sd_bus_error_free(&error);
        t_w2 = test_call_wait_token(c2);
        g_assert_cmpstr(owner_sender(&holders, f->client, "w"), ==, test_unique_name(w2));
        g_assert_cmpuint(faults_owner_token(f->client, "w"), ==, t_w2);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        /* Nothing was kept open for the refused grants. */
        g_assert_cmpuint(faults_count_fds(pid), ==, fds);

        /* What does not need the lock directory goes on. */
        t_c = test_acquire_ok(f->client, "c", NULL);
        g_assert_cmpuint(t_c, >, t_w2);
        g_assert_cmpuint(faults_owner_token(f->client, "a"), ==, t_a);

        /* Space again: it works, tokens go on increasing. */
        g_assert_cmpint(unlink(fill), ==, 0);
        t_b = test_lock_ok(f->client, "b");
        g_assert_cmpuint(t_b, >, t_c);

        /* A crash: every acknowledged persistent hold is back, as it was. */
        (void) faults_restart_daemon(f);
        g_assert_cmpuint(faults_owner_token(f->client, "a"), ==, t_a);
        g_assert_cmpuint(faults_owner_token(f->client, "t"), ==, t_t);
        g_assert_cmpuint(owner_expires(f->client, "t"), ==, expires);
        g_assert_cmpuint(faults_owner_token(f->client, "b"), ==, t_b);
        g_assert_cmpuint(test_lock_ok(f->client, "after"), >, t_b);
}

/* ---- A read-only lock directory ----------------------------------------------------------- */

static void test_lock_dir_read_only(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *h = NULL, *w1 = NULL, *w2 = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = -1;
        g_autoptr(TestCall) c1 = NULL, c2 = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *file_a = NULL, *file_u = NULL, *file_t = NULL;
        uint64_t t_a, t_u, t_t, t_w2, t_fd, t_b, expires;
        const char *lib;
        uint32_t count;

        if (!faults_enter_mount_namespace(f))
                return;
        lib = f->bus->lock_dir;
        faults_mount_tmpfs(f, lib, "size=1m");
        (void) faults_start_daemon(f);

        t_a = test_lock_ok(f->client, "a");
        t_u = test_lock_ok(f->client, "u");
        t_t = test_acquire_ok(f->client, "t", &(TestAcquireOptions) {
                                      .scope = "persistent", .has_ttl = true, .ttl = HOUR_USEC });
        expires = owner_expires(f->client, "t");
        file_a = faults_hold_file("a", t_a);
        file_u = faults_hold_file("u", t_u);
        file_t = faults_hold_file("t", t_t);

        h = test_bus_connect(f->bus);
        w1 = test_bus_connect(f->bus);
        w2 = test_bus_connect(f->bus);
        queue_two_waiters(h, "w", w1, &wait_forever_persistent, &c1, w2, &wait_forever, &c2);
        count = test_get_property_u(f->client, "LockCount");

        faults_remount(f, lib, true);

        /* New persistent holds: refused, nothing held. */
        assert_storage_error(test_lock(f->client, "b", NULL, &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        faults_assert_not_held(f->client, "b");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, count);
        faults_assert_dir(lib, "tokens", file_a, file_u, file_t);

        /* A persistent hold whose file cannot be removed stays held: it
         * would come back at the next start. Unlock and Break say so. */
        assert_storage_error(test_unlock(f->client, "u", &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        assert_storage_error(test_break(f->client, "u", &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        g_assert_cmpuint(faults_owner_token(f->client, "u"), ==, t_u);

        assert_storage_error(test_refresh(f->client, "t", NULL, &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        g_assert_cmpuint(owner_expires(f->client, "t"), ==, expires);

        /* The queue behind a refused grant. */
        test_bus_disconnect(f->client, TAKE_PTR(h));
        test_call_wait(c1);
        assert_storage_error(test_call_result(c1, &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        t_w2 = test_call_wait_token(c2);
        g_assert_cmpstr(owner_sender(&holders, f->client, "w"), ==, test_unique_name(w2));
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        /* Holds in the runtime directory, and every read, go on. */
        fd = test_acquire_fd_ok(f->client, "fd", NULL, &t_fd);
        g_assert_cmpuint(t_fd, >, t_w2);
        g_assert_cmpuint(faults_owner_token(f->client, "a"), ==, t_a);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, count + 1);

        /* Writable again: everything works, tokens go on increasing. */
        faults_remount(f, lib, false);
        t_b = test_lock_ok(f->client, "b");
        g_assert_cmpuint(t_b, >, t_fd);
        test_unlock_ok(f->client, "u");

        (void) faults_restart_daemon(f);
        g_assert_cmpuint(faults_owner_token(f->client, "a"), ==, t_a);
        g_assert_cmpuint(faults_owner_token(f->client, "t"), ==, t_t);
        g_assert_cmpuint(faults_owner_token(f->client, "b"), ==, t_b);
        faults_assert_not_held(f->client, "u");
        g_assert_cmpuint(test_lock_ok(f->client, "after"), >, t_b);
}

/* ---- The token reservation cannot be renewed ----------------------------------------------- */

/* Tokens come from a durable reservation (the file "tokens"); while the
 * lock directory is read-only, grants in the runtime directory go on until
 * the reservation is used up. The next one would need a token that no
 * durable record covers: refused. */
static void test_token_reservation_read_only(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t t_a, reserved, last, t_next;
        const char *lib;

        if (!faults_enter_mount_namespace(f))
                return;
        lib = f->bus->lock_dir;
        faults_mount_tmpfs(f, lib, "size=1m");
        (void) faults_start_daemon(f);

        t_a = test_lock_ok(f->client, "a");
        reserved = faults_read_tokens(lib);
        g_assert_cmpuint(reserved, >, t_a);

        faults_remount(f, lib, true);

        last = faults_spend_tokens(f->client, reserved - t_a);
        g_assert_cmpuint(last, ==, reserved);

        /* Connection, fd and persistent holds alike: the reservation is in
         * the lock directory, and the error says so. */
        assert_storage_error(test_acquire(f->client, "x", NULL, NULL, &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        assert_storage_error(test_acquire_fd(f->client, "x", NULL, NULL, NULL, &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        assert_storage_error(test_lock(f->client, "x", NULL, &error), &error, EROFS, lib);
        sd_bus_error_free(&error);
        faults_assert_not_held(f->client, "x");
        g_assert_cmpuint(faults_read_tokens(lib), ==, reserved);

        faults_remount(f, lib, false);
        t_next = test_acquire_ok(f->client, "x", NULL);
        g_assert_cmpuint(t_next, >, reserved);

        (void) faults_restart_daemon(f);
        g_assert_cmpuint(test_lock_ok(f->client, "y"), >, t_next);
        g_assert_cmpuint(faults_owner_token(f->client, "a"), ==, t_a);
}

/* The same with only the reservation file unwritable (a read-only bind
 * mount on it: renaming over it fails with EBUSY). */
static void test_token_reservation_unwritable(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *tokens = NULL;
        uint64_t t_a, reserved, last, t_next;
        const char *lib;

        if (!faults_enter_mount_namespace(f))
                return;
        lib = f->bus->lock_dir;
        (void) faults_start_daemon(f);

        t_a = test_lock_ok(f->client, "a");
        reserved = faults_read_tokens(lib);
        tokens = g_build_filename(lib, "tokens", NULL);
        faults_bind_read_only(f, tokens);

        /* Holds are still written: only the reservation is stuck. */
        last = faults_spend_tokens(f->client, reserved - t_a - 1);
        g_assert_cmpuint(test_lock_ok(f->client, "b"), ==, last + 1);

        assert_storage_error(test_acquire(f->client, "x", NULL, NULL, &error), &error, EBUSY, lib);
        sd_bus_error_free(&error);
        assert_storage_error(test_lock(f->client, "x", NULL, &error), &error, EBUSY, lib);
        sd_bus_error_free(&error);
        faults_assert_not_held(f->client, "x");

        faults_umount(f, tokens);
        t_next = test_lock_ok(f->client, "x");
        g_assert_cmpuint(t_next, >, reserved);

        (void) faults_restart_daemon(f);
        g_assert_cmpuint(faults_owner_token(f->client, "b"), ==, reserved);
        g_assert_cmpuint(faults_owner_token(f->client, "x"), ==, t_next);
        g_assert_cmpuint(test_lock_ok(f->client, "y"), >, t_next);
}

/* ---- The runtime directory full or read-only ---------------------------------------------------- */

static void test_runtime_dir_full(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = -1;
        g_autofree char *fill = NULL, *file_c0 = NULL;
        uint64_t t_c0, t_p, t_c;
        const char *run;
        unsigned fds = 0;
        uint32_t count;
        pid_t pid;

        if (!faults_enter_mount_namespace(f))
                return;
        run = f->bus->runtime_dir;
        faults_mount_tmpfs(f, run, "size=256k");
        pid = faults_start_daemon(f);

        t_c0 = test_acquire_ok(f->client, "c0", NULL);
        file_c0 = faults_hold_file("c0", t_c0);
        fill = g_build_filename(run, "fill", NULL);
        faults_fill(fill);
        count = test_get_property_u(f->client, "LockCount");

        assert_storage_error(test_acquire(f->client, "c", NULL, NULL, &error), &error, ENOSPC, run);
        sd_bus_error_free(&error);
        assert_storage_error(test_acquire(f->client, "c", &(TestAcquireOptions) { .mode = "shared" }, NULL, &error),
                             &error, ENOSPC, run);
        sd_bus_error_free(&error);
        /* An fd hold: no fd handed out, none kept by the daemon. Counted
         * after a first refusal (which may set up what the event loop
         * keeps anyway), each time after a later call: lockbusd answers a
         * call before the handler has cleaned up, but handles the next
         * call of the connection only after that. */
        for (unsigned i = 0; i < 10; i++) {
                assert_storage_error(test_acquire_fd(f->client, "c", NULL, &fd, NULL, &error), &error, ENOSPC, run);
                sd_bus_error_free(&error);
                g_assert_cmpint(fd, <, 0);
                g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, count);
                if (i == 0)
                        fds = faults_count_fds(pid);
        }
        g_assert_cmpuint(faults_count_fds(pid), ==, fds);

        faults_assert_not_held(f->client, "c");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, count);
        faults_assert_dir(run, "fill", file_c0);

        /* Persistent holds do not need the runtime directory. */
        t_p = test_lock_ok(f->client, "p");
        g_assert_cmpuint(t_p, >, t_c0);

        g_assert_cmpint(unlink(fill), ==, 0);
        t_c = test_acquire_ok(f->client, "c", NULL);
        g_assert_cmpuint(t_c, >, t_p);
        fd = test_acquire_fd_ok(f->client, "d", NULL, NULL);
}

static void test_runtime_dir_read_only(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *k = NULL, *h = NULL, *w1 = NULL, *w2 = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) c1 = NULL, c2 = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *file_k = NULL, *file_x = NULL;
        uint64_t t_k, t_w2, t_x;
        const char *run;

        if (!faults_enter_mount_namespace(f))
                return;
        run = f->bus->runtime_dir;
        faults_mount_tmpfs(f, run, "size=1m");
        (void) faults_start_daemon(f);

        k = test_bus_connect(f->bus);
        t_k = test_acquire_ok(k, "k", NULL);
        file_k = faults_hold_file("k", t_k);

        /* This time the first waiter needs the runtime directory and the
         * second one does not. */
        h = test_bus_connect(f->bus);
        w1 = test_bus_connect(f->bus);
        w2 = test_bus_connect(f->bus);
        queue_two_waiters(h, "w", w1, &wait_forever, &c1, w2, &wait_forever_persistent, &c2);

        faults_remount(f, run, true);

        assert_storage_error(test_acquire(f->client, "x", NULL, NULL, &error), &error, EROFS, run);
        sd_bus_error_free(&error);
        faults_assert_not_held(f->client, "x");

        /* The holder leaves: its file cannot be removed, the hold ends
         * anyway (a connection hold is never trusted at start without its
         * connection); w1 cannot be stored, w2 can. */
        test_bus_disconnect(f->client, TAKE_PTR(h));
        test_call_wait(c1);
        assert_storage_error(test_call_result(c1, &error), &error, EROFS, run);
        sd_bus_error_free(&error);
        t_w2 = test_call_wait_token(c2);
        g_assert_cmpstr(owner_sender(&holders, f->client, "w"), ==, test_unique_name(w2));
        g_clear_pointer(&holders, g_ptr_array_unref);

        test_bus_disconnect(f->client, TAKE_PTR(k));
        faults_assert_not_held(f->client, "k");
        g_assert_true(g_file_test(run, G_FILE_TEST_IS_DIR));

        faults_remount(f, run, false);
        t_x = test_acquire_ok(f->client, "x", NULL);
        g_assert_cmpuint(t_x, >, t_w2);
        file_x = faults_hold_file("x", t_x);

        /* After a restart the files left behind do not come back as holds
         * and are cleaned up; x's caller is still connected: x stays. */
        (void) faults_restart_daemon(f);
        faults_assert_not_held(f->client, "k");
        g_assert_cmpuint(faults_owner_token(f->client, "x"), ==, t_x);
        g_assert_cmpuint(faults_owner_token(f->client, "w"), ==, t_w2);
        faults_assert_dir(run, file_x);
}

/* A connection hold released by Unlock while the runtime directory is
 * read-only: its file stays behind. Someone else then holds the resource
 * persistently. After a restart, with the first caller still connected,
 * the stale file must not bring the released hold back, let alone push
 * out the acknowledged persistent one. */
static void test_runtime_dir_read_only_unlock(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *k = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) holders = NULL;
        uint64_t t_k, t_p;
        const char *run;
        int r;

        if (!faults_enter_mount_namespace(f))
                return;
        run = f->bus->runtime_dir;
        faults_mount_tmpfs(f, run, "size=1m");
        (void) faults_start_daemon(f);

        k = test_bus_connect(f->bus);
        t_k = test_acquire_ok(k, "k", NULL);

        faults_remount(f, run, true);
        r = test_unlock(k, "k", &error);
        if (r < 0) {
                /* Refusing is keeping the promise too: then it is still
                 * held, by k, and nobody else gets it. */
                assert_storage_error(r, &error, EROFS, run);
                g_assert_cmpuint(faults_owner_token(f->client, "k"), ==, t_k);
                return;
        }
        faults_assert_not_held(f->client, "k");
        t_p = test_lock_ok(f->client, "k");
        g_assert_cmpuint(t_p, >, t_k);
        faults_remount(f, run, false);

        (void) faults_restart_daemon(f);
        holders = test_owner_ok(f->client, "k", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        if (((TestHolder *) holders->pdata[0])->token != t_p)
                g_error("After a restart 'k' is held by %s (token %" PRIu64 ", scope %s), not by the persistent hold "
                        "(token %" PRIu64 ") granted after the first hold was unlocked",
                        ((TestHolder *) holders->pdata[0])->sender, ((TestHolder *) holders->pdata[0])->token,
                        ((TestHolder *) holders->pdata[0])->scope, t_p);
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->scope, ==, "persistent");
}

/* ---- Directories removed under the daemon ------------------------------------------------------- */

/* Lock after `rm -rf` of the lock directory: the daemon holds an fd to a
 * directory that is gone, and anything written there is lost with it. It
 * must not acknowledge a persistent grant it cannot keep: either Storage,
 * or a grant whose file is really in the lock directory. */
static void test_lock_dir_removed(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *file = NULL, *path = NULL;
        uint64_t t_keep, t_new = 0;
        const char *lib = f->bus->lock_dir;
        int r;

        (void) faults_start_daemon(f);
        t_keep = test_lock_ok(f->client, "keep");

        faults_rm_rf(lib);

        r = test_lock(f->client, "new", &t_new, &error);
        if (r < 0) {
                assert_storage_error(r, &error, ENOENT, lib);
                faults_assert_not_held(f->client, "new");
                g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 1);
        } else {
                /* Granted: then it is on disk where the next start looks. */
                file = faults_hold_file("new", t_new);
                path = g_build_filename(lib, file, NULL);
                g_assert_true(g_file_test(path, G_FILE_TEST_IS_REGULAR));
                g_assert_cmpuint(faults_read_tokens(lib), >=, t_new);
        }

        /* It keeps serving reads. Grants in the runtime directory are
         * refused too: their tokens need the reservation in the lock
         * directory, which went with it. */
        g_assert_cmpuint(faults_owner_token(f->client, "keep"), ==, t_keep);
        sd_bus_error_free(&error);
        r = test_acquire(f->client, "c", NULL, NULL, &error);
        assert_storage_error(r, &error, ENOENT, lib);
        faults_assert_not_held(f->client, "c");
}

/* Once the lock directory is back (as an administrator or
 * systemd-tmpfiles would re-create it), lockbusd must recover: grant again,
 * and keep its promises across a restart, i.e. still hold what it
 * acknowledged before the directory vanished, and never hand out a token
 * again. */
static void test_lock_dir_removed_recovers(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t t_keep, t_c, t_new, t_c2, top;
        const char *lib = f->bus->lock_dir;

        (void) faults_start_daemon(f);
        t_keep = test_lock_ok(f->client, "keep");
        t_c = test_acquire_ok(f->client, "c", NULL);

        faults_rm_rf(lib);
        (void) test_lock(f->client, "lost", NULL, &error);
        sd_bus_error_free(&error);

        g_assert_cmpint(mkdir(lib, 0755), ==, 0);

        /* Serves again. */
        t_new = test_lock_ok(f->client, "new");
        g_assert_cmpuint(t_new, >, t_c);
        t_c2 = test_acquire_ok(f->client, "c2", NULL);
        top = MAX(t_new, t_c2);

        /* Across a crash: nothing acknowledged is lost, tokens go on. */
        (void) faults_restart_daemon(f);
        g_assert_cmpuint(faults_owner_token(f->client, "keep"), ==, t_keep);
        g_assert_cmpuint(faults_owner_token(f->client, "new"), ==, t_new);
        g_assert_cmpuint(test_lock_ok(f->client, "after"), >, top);
}

/* The runtime directory removed: connection holds are refused or really
 * stored, and once it is back they work again. */
static void test_runtime_dir_removed(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t t_c = 0, t_p, t_d;
        const char *run = f->bus->runtime_dir;
        int r;

        (void) faults_start_daemon(f);
        (void) test_acquire_ok(f->client, "c0", NULL);

        faults_rm_rf(run);

        r = test_acquire(f->client, "c", NULL, &t_c, &error);
        if (r < 0) {
                assert_storage_error(r, &error, ENOENT, run);
                faults_assert_not_held(f->client, "c");
        } else {
                g_autofree char *file = faults_hold_file("c", t_c), *path = g_build_filename(run, file, NULL);

                g_assert_true(g_file_test(path, G_FILE_TEST_IS_REGULAR));
        }
        sd_bus_error_free(&error);

        /* Persistent holds go on. */
        t_p = test_lock_ok(f->client, "p");

        g_assert_cmpint(mkdir(run, 0755), ==, 0);
        t_d = test_acquire_ok(f->client, "d", NULL);
        g_assert_cmpuint(t_d, >, t_p);
        {
                g_autofree char *file = faults_hold_file("d", t_d), *path = g_build_filename(run, file, NULL);

                g_assert_true(g_file_test(path, G_FILE_TEST_IS_REGULAR));
        }
}

/* Both directories removed, and only the lock directory back: a connection
 * grant (refused, its directory is missing) must not leave the lock
 * directory it took up empty. What was acknowledged is written there at
 * once, so a crash right after keeps it and tokens go on. */
static void test_both_dirs_removed_lock_back_first(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *lib = f->bus->lock_dir, *run = f->bus->runtime_dir;
        uint64_t t_keep, t_c;

        (void) faults_start_daemon(f);
        t_keep = test_lock_ok(f->client, "keep");
        t_c = test_acquire_ok(f->client, "c", NULL);

        faults_rm_rf(lib);
        faults_rm_rf(run);
        g_assert_cmpint(mkdir(lib, 0755), ==, 0);

        assert_storage_error(test_acquire(f->client, "c2", NULL, NULL, &error), &error, ENOENT, run);
        faults_assert_not_held(f->client, "c2");
        {
                g_autofree char *file = faults_hold_file("keep", t_keep), *path = g_build_filename(lib, file, NULL);

                g_assert_true(g_file_test(path, G_FILE_TEST_IS_REGULAR));
        }
        g_assert_cmpuint(faults_read_tokens(lib), >, t_c);

        (void) faults_restart_daemon(f);
        g_assert_cmpuint(faults_owner_token(f->client, "keep"), ==, t_keep);
        g_assert_cmpuint(test_lock_ok(f->client, "after"), >, t_c);
}

/* ---- Entries that are not what the daemon wrote ---------------------------------------------------- */

/* A directory where the next hold file goes: the rename cannot replace
 * it; a symlink or a FIFO there is replaced. */
static void test_hold_name_taken(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *taken = NULL, *path = NULL, *inside = NULL, *file_a = NULL, *file_e = NULL,
                *quarantined = NULL, *outside = NULL, *link_name = NULL, *link_path = NULL, *fifo_name = NULL,
                *fifo_path = NULL, *contents = NULL;
        uint64_t t_a, t_e;
        const char *lib = f->bus->lock_dir;

        (void) faults_start_daemon(f);
        t_a = test_lock_ok(f->client, "a");
        file_a = faults_hold_file("a", t_a);

        /* The next token is t_a + 1 (see tokens.h). */
        taken = faults_hold_file("e", t_a + 1);
        path = g_build_filename(lib, taken, NULL);
        g_assert_cmpint(mkdir(path, 0755), ==, 0);
        inside = g_build_filename(path, "something", NULL);
        g_assert_true(g_file_set_contents(inside, "not ours\n", -1, NULL));

        assert_storage_error(test_lock(f->client, "e", NULL, &error), &error, EISDIR, lib);
        sd_bus_error_free(&error);
        faults_assert_not_held(f->client, "e");
        faults_assert_dir(lib, "tokens", file_a, taken);
        g_assert_true(g_file_test(inside, G_FILE_TEST_IS_REGULAR));

        /* The refused grant burned its token; the next one is fine. */
        t_e = test_lock_ok(f->client, "e");
        g_assert_cmpuint(t_e, ==, t_a + 2);
        file_e = faults_hold_file("e", t_e);

        /* A symlink (to a file outside) and a FIFO where the next hold
         * files go: replaced by the hold files, never followed or opened. */
        outside = g_build_filename(f->bus->dir, "outside", NULL);
        g_assert_true(g_file_set_contents(outside, "outside\n", -1, NULL));
        link_name = faults_hold_file("l", t_e + 1);
        link_path = g_build_filename(lib, link_name, NULL);
        g_assert_cmpint(symlink(outside, link_path), ==, 0);
        fifo_name = faults_hold_file("p", t_e + 2);
        fifo_path = g_build_filename(lib, fifo_name, NULL);
        g_assert_cmpint(mkfifo(fifo_path, 0644), ==, 0);
        g_assert_cmpuint(test_lock_ok(f->client, "l"), ==, t_e + 1);
        g_assert_cmpuint(test_lock_ok(f->client, "p"), ==, t_e + 2);
        g_assert_true(g_file_test(link_path, G_FILE_TEST_IS_REGULAR) && !g_file_test(link_path, G_FILE_TEST_IS_SYMLINK));
        g_assert_true(g_file_test(fifo_path, G_FILE_TEST_IS_REGULAR));
        contents = faults_read_file(outside);
        g_assert_cmpstr(contents, ==, "outside\n");
        test_unlock_ok(f->client, "l");
        test_unlock_ok(f->client, "p");

        /* At the next start the directory is moved aside, intact. */
        (void) faults_restart_daemon(f);
        g_assert_cmpuint(faults_owner_token(f->client, "e"), ==, t_e);
        faults_assert_dir(lib, ".quarantine", "tokens", file_a, file_e);
        quarantined = g_build_filename(lib, ".quarantine", taken, "something", NULL);
        g_assert_true(g_file_test(quarantined, G_FILE_TEST_IS_REGULAR));
        faults_assert_log_contains(f, "is invalid (not a regular file)");
}

/* Hold files replaced, while the daemon was down, by a symlink (to a valid
 * hold file outside the directory), a FIFO and a directory: never followed,
 * never blocking the start, moved to .quarantine with a log line. A hold
 * file owned by another user (0600): a root daemon reads it, and it loads
 * as any other: ownership of the files says nothing, the directory (0755,
 * the daemon's) is what is trusted. */
static void test_entries_replaced(FaultsFixture *f, gconstpointer data) {
        g_autofree char *file_s = NULL, *file_p = NULL, *file_d = NULL, *file_o = NULL, *file_r = NULL;
        g_autofree char *path_s = NULL, *path_p = NULL, *path_d = NULL, *path_o = NULL, *path_r = NULL;
        g_autofree char *outside = NULL, *outside_r = NULL, *contents = NULL, *target = NULL, *q = NULL,
                *moved = NULL, *inside = NULL, *line = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *r_client = NULL;
        uint64_t t_s, t_p, t_d, t_o, t_r;
        const char *lib = f->bus->lock_dir, *run = f->bus->runtime_dir;
        struct stat st;

        if (test_skip_unless_root())
                return;

        (void) faults_start_daemon(f);
        t_s = test_lock_ok(f->client, "s");
        t_p = test_lock_ok(f->client, "p");
        t_d = test_lock_ok(f->client, "d");
        t_o = test_lock_ok(f->client, "o");
        r_client = test_bus_connect(f->bus);
        t_r = test_acquire_ok(r_client, "r", NULL);
        test_bus_kill_daemon(f->bus);

        file_s = faults_hold_file("s", t_s);
        file_p = faults_hold_file("p", t_p);
        file_d = faults_hold_file("d", t_d);
        file_o = faults_hold_file("o", t_o);
        file_r = faults_hold_file("r", t_r);
        path_s = g_build_filename(lib, file_s, NULL);
        path_p = g_build_filename(lib, file_p, NULL);
        path_d = g_build_filename(lib, file_d, NULL);
        path_o = g_build_filename(lib, file_o, NULL);
        path_r = g_build_filename(run, file_r, NULL);

        /* s: a symlink to a copy of itself outside the directory. */
        outside = g_build_filename(f->bus->dir, "outside-s", NULL);
        g_assert_cmpint(rename(path_s, outside), ==, 0);
        g_assert_cmpint(symlink(outside, path_s), ==, 0);
        /* p: a FIFO nobody writes to. */
        g_assert_cmpint(unlink(path_p), ==, 0);
        g_assert_cmpint(mkfifo(path_p, 0644), ==, 0);
        /* d: a directory holding the original file. */
        inside = g_build_filename(f->bus->dir, "d-file", NULL);
        g_assert_cmpint(rename(path_d, inside), ==, 0);
        g_assert_cmpint(mkdir(path_d, 0755), ==, 0);
        {
                g_autofree char *dest = g_build_filename(path_d, file_d, NULL);

                g_assert_cmpint(rename(inside, dest), ==, 0);
        }
        /* o: owned by nobody, 0600. */
        g_assert_cmpint(chown(path_o, TEST_OTHER_UID, TEST_OTHER_UID), ==, 0);
        g_assert_cmpint(chmod(path_o, 0600), ==, 0);
        /* r, in the runtime directory, with its client still connected: a
         * symlink to a copy. */
        outside_r = g_build_filename(f->bus->dir, "outside-r", NULL);
        g_assert_cmpint(rename(path_r, outside_r), ==, 0);
        g_assert_cmpint(symlink(outside_r, path_r), ==, 0);

        /* Starts (the FIFO does not block it) and serves. */
        (void) faults_start_daemon(f);
        faults_assert_not_held(f->client, "s");
        faults_assert_not_held(f->client, "p");
        faults_assert_not_held(f->client, "d");
        faults_assert_not_held(f->client, "r");
        g_assert_cmpuint(faults_owner_token(f->client, "o"), ==, t_o);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 1);

        q = g_build_filename(lib, ".quarantine", NULL);
        faults_assert_dir(lib, ".quarantine", "tokens", file_o);
        faults_assert_dir(q, file_s, file_p, file_d);
        faults_assert_dir(run, ".quarantine");

        /* Moved as they were: the link still points where it did, the
         * file it points to is untouched. */
        moved = g_build_filename(q, file_s, NULL);
        target = g_file_read_link(moved, NULL);
        g_assert_cmpstr(target, ==, outside);
        contents = faults_read_file(outside);
        g_assert_nonnull(strstr(contents, "Resource=s\n"));
        g_clear_pointer(&moved, g_free);
        moved = g_build_filename(q, file_p, NULL);
        g_assert_cmpint(lstat(moved, &st), ==, 0);
        g_assert_true(S_ISFIFO(st.st_mode));

        line = g_strdup_printf("Hold file '%s' is invalid (not a regular file), moved to", path_s);
        faults_assert_log_contains(f, line);
        g_clear_pointer(&line, g_free);
        line = g_strdup_printf("Hold file '%s' is invalid (not a regular file), moved to", path_p);
        faults_assert_log_contains(f, line);
        g_clear_pointer(&line, g_free);
        line = g_strdup_printf("Hold file '%s' is invalid (not a regular file), moved to", path_d);
        faults_assert_log_contains(f, line);
        g_clear_pointer(&line, g_free);
        line = g_strdup_printf("Hold file '%s' is invalid (not a regular file), moved to", path_r);
        faults_assert_log_contains(f, line);

        /* The names are free again, and tokens go on. */
        g_assert_cmpuint(test_lock_ok(f->client, "s"), >, MAX(t_r, t_o));
}

/* A daemon without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, as the real
 * one (User=lockbus), that finds a hold file it cannot read (an
 * administrator restored a backup as root, 0600). It must not hand the
 * lock out again: either it refuses to start, naming the file, or it keeps
 * the resource locked (or refuses grants of it). */
static void test_unreadable_hold(FaultsFixture *f, gconstpointer data) {
        static const char *const no_dac[] = {
                "setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", NULL,
        };
        g_autofree char *file = NULL, *path = NULL, *result = NULL;
        g_autoptr(TestClient) other = NULL;
        uint64_t t_o;
        int status = 0;

        g_autofree char *setpriv = NULL;

        if (test_skip_unless_root())
                return;
        setpriv = g_find_program_in_path("setpriv");
        if (!setpriv) {
                g_test_skip("setpriv (util-linux) not found");
                return;
        }

        (void) faults_start_daemon(f);
        t_o = test_lock_ok(f->client, "o");
        test_bus_kill_daemon(f->bus);

        file = faults_hold_file("o", t_o);
        path = g_build_filename(f->bus->lock_dir, file, NULL);
        g_assert_cmpint(chown(path, TEST_OTHER_UID, TEST_OTHER_UID), ==, 0);
        g_assert_cmpint(chmod(path, 0600), ==, 0);

        if (!faults_try_start_daemon(f, no_dac, &status)) {
                g_assert_true(WIFEXITED(status));
                g_assert_cmpint(WEXITSTATUS(status), !=, 0);
                faults_assert_log_contains(f, path);
                return;
        }

        /* It serves: check it really cannot read the file, then that
         * nobody else gets the lock. */
        g_assert_cmpuint(faults_proc_status_hex(f->bus->daemon_pid, "CapEff") & DAC_CAPS, ==, 0);
        other = test_client_start(f->bus, TEST_OTHER_UID, "other", test_client_serve, NULL);
        result = test_client_command(other, "Lock o");
        if (g_str_has_prefix(result, "ok"))
                g_error("Resource 'o' was granted again (%s) while its persistent hold (token %" PRIu64
                        ") is still on disk in %s, only unreadable: granted twice", result, t_o, path);
        g_assert_true(g_str_has_prefix(result, "error " LOCKBUS_ERROR_ALREADY_LOCKED) ||
                      g_str_has_prefix(result, "error " LOCKBUS_ERROR_STORAGE));
}

/* ---- The token reservation removed or corrupted while running --------------------------------------- */

/* A token is only handed out while a durable reservation covers it. The
 * reservation is removed; a connection hold is granted (and released, so
 * no hold file remembers its token); the daemon crashes. The next token
 * must still be above it. */
static void test_tokens_removed(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *c = NULL;
        g_autofree char *tokens = g_build_filename(f->bus->lock_dir, "tokens", NULL);
        uint64_t t1, t2, t3;

        (void) faults_start_daemon(f);
        t1 = test_acquire_ok(f->client, "a", NULL);
        g_assert_cmpint(unlink(tokens), ==, 0);

        c = test_bus_connect(f->bus);
        t2 = test_acquire_ok(c, "b", NULL);
        g_assert_cmpuint(t2, >, t1);
        test_bus_disconnect(f->client, TAKE_PTR(c));
        test_unlock_ok(f->client, "a");

        (void) faults_restart_daemon(f);
        t3 = test_acquire_ok(f->client, "c", NULL);
        if (t3 <= t2)
                g_error("Token %" PRIu64 " handed out after a restart, although %" PRIu64 " was handed out before "
                        "(the token reservation had been removed while lockbusd ran)", t3, t2);
}

/* The reservation overwritten with garbage while running: the daemon goes
 * on from what it knows; at the next start it refuses to guess (see README,
 * Decisions), or starts above every token it handed out. Repaired by hand,
 * it starts again above it. */
static void test_tokens_corrupted(FaultsFixture *f, gconstpointer data) {
        g_autofree char *tokens = g_build_filename(f->bus->lock_dir, "tokens", NULL), *value = NULL;
        uint64_t t1, t2, t3;
        int status = 0;

        (void) faults_start_daemon(f);
        t1 = test_acquire_ok(f->client, "a", NULL);
        g_assert_true(g_file_set_contents(tokens, "garbage\n", -1, NULL));

        t2 = test_acquire_ok(f->client, "b", NULL);
        g_assert_cmpuint(t2, >, t1);
        test_unlock_ok(f->client, "a");
        test_unlock_ok(f->client, "b");

        test_bus_kill_daemon(f->bus);
        if (faults_try_start_daemon(f, NULL, &status)) {
                g_assert_cmpuint(test_acquire_ok(f->client, "c", NULL), >, t2);
                return;
        }
        g_assert_true(WIFEXITED(status));
        g_assert_cmpint(WEXITSTATUS(status), ==, 1);
        faults_assert_log_contains(f, "tokens is corrupt; refusing to start");

        /* As the log says: a value above every token ever issued. */
        value = g_strdup_printf("%" PRIu64 "\n", t2 + 1000);
        g_assert_true(g_file_set_contents(tokens, value, -1, NULL));
        (void) faults_start_daemon(f);
        t3 = test_acquire_ok(f->client, "c", NULL);
        g_assert_cmpuint(t3, >, t2 + 1000);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        faults_add("/faults/storage/lock-dir/full", NULL, test_lock_dir_full);
        faults_add("/faults/storage/lock-dir/read-only", NULL, test_lock_dir_read_only);
        faults_add("/faults/storage/lock-dir/removed", NULL, test_lock_dir_removed);
        faults_add("/faults/storage/lock-dir/removed-recovers", NULL, test_lock_dir_removed_recovers);
        faults_add("/faults/storage/runtime-dir/full", NULL, test_runtime_dir_full);
        faults_add("/faults/storage/runtime-dir/read-only", NULL, test_runtime_dir_read_only);
        faults_add("/faults/storage/runtime-dir/read-only-unlock", NULL, test_runtime_dir_read_only_unlock);
        faults_add("/faults/storage/runtime-dir/removed-recovers", NULL, test_runtime_dir_removed);
        faults_add("/faults/storage/both-dirs/removed-lock-back-first", NULL, test_both_dirs_removed_lock_back_first);
        faults_add("/faults/storage/tokens/reservation-read-only", NULL, test_token_reservation_read_only);
        faults_add("/faults/storage/tokens/reservation-unwritable", NULL, test_token_reservation_unwritable);
        faults_add("/faults/storage/tokens/removed", NULL, test_tokens_removed);
        faults_add("/faults/storage/tokens/corrupted", NULL, test_tokens_corrupted);
        faults_add("/faults/storage/entries/name-taken-by-directory", NULL, test_hold_name_taken);
        faults_add("/faults/storage/entries/replaced-at-start", NULL, test_entries_replaced);
        faults_add("/faults/storage/entries/unreadable-without-dac-override", NULL, test_unreadable_hold);

        return g_test_run();
}
