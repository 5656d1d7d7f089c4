/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode when things die: a lockbusd killed with SIGKILL (its
 * persistent holds stay, its connection holds vanish cluster-wide after
 * the lease TTL and the other host's waiter is served), a lockbusd killed
 * and started again (a connection hold whose holder is still connected
 * stays, with its token, past the old lease; one whose holder left is
 * deleted at once; one whose lease expired first is told LockLost by the
 * next daemon), a lockbusd restarted cleanly (SIGTERM: its connection
 * hold kept for the next one, its fd hold deleted; the lease revoked when
 * it has no connection hold), a grant etcd made that the daemon cannot set up (no fd
 * for the pipe: refused with Storage, the key deleted), a second Unlock,
 * a Refresh and an Acquire while etcd does not answer the first Unlock
 * (they wait for it, then are answered in order), one etcd member killed (locking goes on, leases
 * stay), and every member killed (Lock fails with Storage naming etcd and
 * its endpoints, never a grant; the holds on the lost lease are dropped
 * and their holder told).
 *
 * The cases run in the order registered: the last two break the program's
 * etcd cluster (one member, then the rest), as the last of its cases.
 *
 * Nothing sleeps: every wait is for a reply (a waiter's grant, error or
 * timeout), a NameOwnerChanged or keys in etcd; where time is the subject
 * the clock is read after the event. */

#include <dirent.h>
#include <poll.h>
#include <inttypes.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cluster-test.h"

#define WAIT_FOREVER (&(TestAcquireOptions) { .has_timeout = true, .timeout = UINT64_MAX })

static char *locked_on_host_message(const char *resource, uid_t uid, pid_t pid, const char *comm,
                                    const char *host) {
        return g_strdup_printf("Resource '%s' already locked by uid %u (pid %d, %s) on host %s", resource,
                               (unsigned) uid, (int) pid, comm, host);
}

/* LockLost signals received on a connection, as "RESOURCE TOKEN REASON". */
typedef struct LostSignals {
        GPtrArray *lines;
        unsigned wanted;
        bool done;
} LostSignals;

static int on_lock_lost(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        LostSignals *l = userdata;
        const char *resource, *reason;
        uint64_t token;

        g_assert_cmpint(sd_bus_message_read(m, "sts", &resource, &token, &reason), >, 0);
        g_ptr_array_add(l->lines, g_strdup_printf("%s %" PRIu64 " %s", resource, token, reason));
        l->done = l->lines->len >= l->wanted;
        return 0;
}

/* Starts recording the LockLost signals that reach bus into l. */
static sd_bus_slot *lost_signals_watch(sd_bus *bus, LostSignals *l) {
        sd_bus_slot *slot = NULL;

        g_assert_cmpint(sd_bus_match_signal(bus, &slot, NULL, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "LockLost",
                                            on_lock_lost, l), >=, 0);
        return slot;
}

/* lockbusd of host A killed (kill -9): its connection hold goes after the
 * lease TTL (B's waiter gets it), its persistent hold stays, and A's next
 * daemon has it again as its own. */
static void test_daemon_killed(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a1 = NULL;
        g_autoptr(TestCall) waiter = NULL;
        g_autoptr(GPtrArray) holders = NULL, on_a = NULL;
        g_autofree char *sender_a = NULL, *sender_b = NULL, *message = NULL;
        uint64_t t_conn, t_pers, t_waiter, killed, granted;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);

        t_conn = test_acquire_ok(a1, "conn", NULL);
        t_pers = test_lock_ok(f->a.client, "pers");
        waiter = test_acquire_async(f->b.client, "conn", WAIT_FOREVER);
        cluster_wait_keys(f, "conn", 2);
        assert_call_pending(waiter);

        killed = test_now_monotonic();
        test_bus_kill_daemon(f->a.bus);

        /* Served once etcd expired A's lease. */
        t_waiter = test_call_wait_token(waiter);
        granted = test_now_monotonic();
        g_test_message("B's waiter granted %" PRIu64 " ms after A's daemon was killed", (granted - killed) / 1000U);
        g_assert_cmpuint(t_waiter, >, t_pers);

        /* The persistent hold stayed, still A's. */
        sender_a = cluster_sender(&f->a, f->a.client);
        holders = test_owner_ok(f->b.client, "pers", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], geteuid(), getpid(), f->comm, sender_a, t_pers, "persistent");
        message = locked_on_host_message("pers", geteuid(), getpid(), f->comm, "hostA");
        r = test_lock(f->b.client, "pers", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);
        g_assert_cmpuint(t_conn, <, t_pers);

        /* A's next daemon: the persistent hold is its host's (plain sender,
         * its uid may unlock it), the connection hold is B's now. */
        cluster_host_start_daemon(f, &f->a);
        on_a = test_list_locks_ok(f->a.client);
        g_assert_cmpuint(on_a->len, ==, 2);
        sender_b = cluster_sender(&f->b, f->b.client);
        g_assert_cmpstr(((TestHolder *) on_a->pdata[0])->resource, ==, "conn");
        assert_holder(on_a->pdata[0], geteuid(), getpid(), f->comm, sender_b, t_waiter, "connection");
        g_assert_cmpstr(((TestHolder *) on_a->pdata[1])->resource, ==, "pers");
        assert_holder(on_a->pdata[1], geteuid(), getpid(), f->comm, test_unique_name(f->a.client), t_pers,
                      "persistent");
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);

        test_unlock_ok(f->a.client, "pers");
        g_assert_cmpuint(test_lock_ok(f->b.client, "pers"), >, t_waiter);
        test_unlock_ok(f->b.client, "pers");
        test_unlock_ok(f->b.client, "conn");
}

/* lockbusd of host A killed and started again while the holder of a
 * connection hold stays connected: the new daemon moves the hold onto its
 * lease. B sees it with the same token, and it outlives the old lease (B's
 * Acquire with a timeout of two lease TTLs, started after the restart, times
 * out); the holder's Unlock on A works, then B locks. */
static void test_daemon_restarted(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a1 = NULL;
        g_autoptr(TestCall) outlived = NULL;
        g_autoptr(GPtrArray) on_b = NULL, on_a = NULL;
        g_autofree char *sender_a1 = NULL;
        uint64_t t, started;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);

        t = test_acquire_ok(a1, "stay", NULL);
        test_bus_kill_daemon(f->a.bus);
        cluster_host_start_daemon(f, &f->a);

        /* Still a1's, with its token, on both hosts. */
        sender_a1 = cluster_sender(&f->a, a1);
        on_b = test_owner_ok(f->b.client, "stay", NULL);
        g_assert_cmpuint(on_b->len, ==, 1);
        assert_holder(on_b->pdata[0], geteuid(), getpid(), f->comm, sender_a1, t, "connection");
        on_a = test_owner_ok(f->a.client, "stay", NULL);
        g_assert_cmpuint(on_a->len, ==, 1);
        assert_holder(on_a->pdata[0], geteuid(), getpid(), f->comm, test_unique_name(a1), t, "connection");
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);

        /* Past the old lease's expiry: B's Acquire times out. */
        started = test_now_monotonic();
        outlived = test_acquire_async(f->b.client, "stay",
                                      &(TestAcquireOptions) { .has_timeout = true,
                                                              .timeout = 2 * CLUSTER_LEASE_TTL_USEC });
        test_call_wait(outlived);
        r = test_call_result(outlived, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, NULL);
        g_assert_cmpuint(test_now_monotonic() - started, >=, 2 * CLUSTER_LEASE_TTL_USEC);
        sd_bus_error_free(&error);

        test_unlock_ok(a1, "stay");
        g_assert_cmpuint(test_acquire_ok(f->b.client, "stay", NULL), >, t);
        test_unlock_ok(f->b.client, "stay");
}

/* The holder of a connection hold left while host A's lockbusd was down:
 * A's next daemon deletes the hold's key at start, so B's waiter is
 * granted at once, not when the old lease expires (a lease TTL of 60 s
 * here, far beyond the wait of a reply). */
static void test_daemon_restarted_holder_gone(ClusterFixture *f, gconstpointer data) {
        sd_bus *a1 = NULL;
        g_autoptr(TestCall) waiter = NULL;
        uint64_t t, t_waiter;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);

        t = test_acquire_ok(a1, "gone", NULL);
        waiter = test_acquire_async(f->b.client, "gone", WAIT_FOREVER);
        cluster_wait_keys(f, "gone", 2);
        assert_call_pending(waiter);

        test_bus_kill_daemon(f->a.bus);
        test_bus_disconnect(f->a.client, TAKE_PTR(a1));
        cluster_host_start_daemon(f, &f->a);

        t_waiter = test_call_wait_token(waiter);
        g_assert_cmpuint(t_waiter, >, t);
        test_unlock_ok(f->b.client, "gone");
}

static const char *const long_lease[] = { "--etcd-lease-ttl=60", NULL };

/* A call waiting on host A when A's lockbusd is killed fails (NoReply);
 * its request's key stays on the dead daemon's lease, ahead of B's waiter.
 * A's next daemon deletes it at start: B's waiter is served as soon as the
 * holder lets go, not when that lease expires (60 s here). */
static void test_daemon_restarted_waiter_gone(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a1 = NULL, *b2 = NULL;
        g_autoptr(TestCall) orphan = NULL, waiter = NULL;
        uint64_t t;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);
        b2 = test_bus_connect(f->b.bus);

        t = test_acquire_ok(f->b.client, "queue", NULL);
        orphan = test_acquire_async(a1, "queue", WAIT_FOREVER);
        cluster_wait_keys(f, "queue", 2);
        waiter = test_acquire_async(b2, "queue", WAIT_FOREVER);
        cluster_wait_keys(f, "queue", 3);

        test_bus_kill_daemon(f->a.bus);
        test_call_wait(orphan);
        r = test_call_result(orphan, &error);
        g_assert_cmpint(r, <, 0);
        g_assert_true(sd_bus_error_has_name(&error, SD_BUS_ERROR_NO_REPLY));

        cluster_host_start_daemon(f, &f->a);
        cluster_wait_keys(f, "queue", 2);
        test_unlock_ok(f->b.client, "queue");
        g_assert_cmpuint(test_call_wait_token(waiter), >, t);
        test_unlock_ok(b2, "queue");
}

/* Unlock or Refresh, without waiting for the answer. */
static TestCall *call_async(sd_bus *bus, const char *method, const char *resource) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

        g_assert_cmpint(sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                       LOCKBUS_MANAGER_IFACE, method), >=, 0);
        g_assert_cmpint(sd_bus_message_append(m, "s", resource), >=, 0);
        return test_call_async(bus, m, 0);
}

/* The hold files ("RESOURCE@TOKEN") of a resource in h's runtime
 * directory: in cluster mode, the records of its connection holds. */
static unsigned count_records(ClusterHost *h, const char *resource) {
        g_autoptr(GPtrArray) files = test_list_tree(h->bus->runtime_dir, NULL);
        g_autofree char *prefix = g_strconcat(resource, "@", NULL);
        unsigned n = 0;

        for (guint i = 0; i < files->len; i++)
                n += g_str_has_prefix(files->pdata[i], prefix);
        return n;
}

/* lockbusd of host A killed, and back only after its lease expired (B's
 * waiter was granted the connection hold meanwhile), while the hold's
 * holder is still connected: the new daemon tells the holder (LockLost,
 * reason "lost") from the record the hold left in A's runtime directory,
 * and removes that record. */
static void test_daemon_back_after_lease(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a1 = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) on_a = NULL;
        g_autoptr(TestCall) waiter = NULL;
        g_autofree char *expected = NULL, *sender_b = NULL;
        LostSignals signals = { .lines = lines, .wanted = 1 };
        uint64_t t, t_waiter;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);
        slot = lost_signals_watch(a1, &signals);

        t = test_acquire_ok(a1, "late", NULL);
        g_assert_cmpuint(count_records(&f->a, "late"), ==, 1);

        waiter = test_acquire_async(f->b.client, "late", WAIT_FOREVER);
        cluster_wait_keys(f, "late", 2);
        test_bus_kill_daemon(f->a.bus);

        /* The old lease expired: B has it. */
        t_waiter = test_call_wait_token(waiter);
        g_assert_cmpuint(t_waiter, >, t);

        cluster_host_start_daemon(f, &f->a);
        test_bus_process_until(a1, &signals.done, -1, "LockLost for the hold that expired while A was down");
        expected = g_strdup_printf("late %" PRIu64 " lost", t);
        g_assert_cmpuint(lines->len, ==, 1);
        g_assert_cmpstr(lines->pdata[0], ==, expected);

        /* A shows B's hold only, and keeps no record of a1's. */
        sender_b = cluster_sender(&f->b, f->b.client);
        on_a = test_list_locks_ok(f->a.client);
        g_assert_cmpuint(on_a->len, ==, 1);
        assert_holder(on_a->pdata[0], geteuid(), getpid(), f->comm, sender_b, t_waiter, "connection");
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 0);
        g_assert_cmpuint(count_records(&f->a, "late"), ==, 0);

        test_unlock_ok(f->b.client, "late");
}

/* lockbusd of host A restarted cleanly (SIGTERM, then started again, as
 * systemctl restart does): the connection hold of a holder still connected
 * stays, with its token, and B's waiter on it keeps waiting; the holder is
 * told nothing. The fd hold ends at the stop (its pipe closes), and its key
 * is deleted then: B's waiter on it is granted at once, long before the
 * lease TTL of 60 s. */
static void test_daemon_restarted_clean(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a1 = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) on_b = NULL;
        g_autoptr(TestCall) waiter = NULL, fd_waiter = NULL;
        g_autofree char *sender_a1 = NULL;
        _cleanup_close_ int fd = -1;
        LostSignals signals = { .lines = lines, .wanted = 1 };
        uint64_t t, t_fd, t_waiter;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);
        slot = lost_signals_watch(a1, &signals);

        t = test_acquire_ok(a1, "kept", NULL);
        fd = test_acquire_fd_ok(a1, "fd", NULL, &t_fd);
        waiter = test_acquire_async(f->b.client, "kept", WAIT_FOREVER);
        fd_waiter = test_acquire_async(f->b.client, "fd", WAIT_FOREVER);
        cluster_wait_keys(f, "kept", 2);
        cluster_wait_keys(f, "fd", 2);

        test_bus_stop_daemon(f->a.bus);
        g_assert_true(test_wait_readable(fd, test_now_monotonic() + TEST_TIMEOUT_USEC));
        g_assert_cmpuint(test_call_wait_token(fd_waiter), >, t_fd);

        cluster_host_start_daemon(f, &f->a);
        sender_a1 = cluster_sender(&f->a, a1);
        on_b = test_owner_ok(f->b.client, "kept", NULL);
        g_assert_cmpuint(on_b->len, ==, 1);
        assert_holder(on_b->pdata[0], geteuid(), getpid(), f->comm, sender_a1, t, "connection");
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);
        assert_call_pending(waiter);
        test_bus_sync(a1);
        g_assert_cmpuint(lines->len, ==, 0);

        test_unlock_ok(a1, "kept");
        t_waiter = test_call_wait_token(waiter);
        g_assert_cmpuint(t_waiter, >, t);
        test_unlock_ok(f->b.client, "kept");
        test_unlock_ok(f->b.client, "fd");
}

/* True if the write end `fd` of an fd hold's pipe still has a reader. */
static bool pipe_has_reader(int fd) {
        struct pollfd p = { .fd = fd, .events = 0 };

        g_assert_cmpint(poll(&p, 1, 0), >=, 0);
        return !(p.revents & (POLLERR | POLLHUP));
}

/* An fd hold across a clean restart and a kill of host A's lockbusd, with
 * systemd's fd store (a stand-in): the daemon hands the pipe's read end to
 * the store, so the pipe stays open while no daemon runs; the next daemon
 * gets it back and takes the hold back with its token (B's waiter keeps
 * waiting). Closing the fd then releases it: B is granted, and the store
 * forgets the fd. */
static void test_fd_hold_restarted(ClusterFixture *f, gconstpointer data) {
        g_autoptr(TestFdStore) store = test_fdstore_new(f->a.bus->dir);
        g_autoptr(GPtrArray) on_b = NULL;
        g_autoptr(TestCall) waiter = NULL;
        g_autofree char *sender_a = NULL;
        _cleanup_close_ int fd = -1;
        uint64_t t;

        CLUSTER_SKIP_WITHOUT_ETCD();

        /* A's daemon with the fd store. */
        test_bus_kill_daemon(f->a.bus);
        cluster_host_start_daemon_with_fdstore(f, &f->a, store);

        fd = test_acquire_fd_ok(f->a.client, "fdr", NULL, &t);
        test_fdstore_wait_count(store, 1, TEST_TIMEOUT_USEC);
        waiter = test_acquire_async(f->b.client, "fdr", WAIT_FOREVER);
        cluster_wait_keys(f, "fdr", 2);
        sender_a = cluster_sender(&f->a, f->a.client);

        for (unsigned i = 0; i < 2; i++) {
                /* A clean restart, then a kill and a start. */
                if (i == 0)
                        test_bus_stop_daemon(f->a.bus);
                else
                        test_bus_kill_daemon(f->a.bus);
                g_assert_true(pipe_has_reader(fd));
                test_fdstore_sync(store);
                g_assert_cmpuint(test_fdstore_count(store), ==, 1);
                cluster_host_start_daemon_with_fdstore(f, &f->a, store);

                on_b = test_owner_ok(f->b.client, "fdr", NULL);
                g_assert_cmpuint(on_b->len, ==, 1);
                assert_holder(on_b->pdata[0], geteuid(), getpid(), f->comm, sender_a, t, "fd");
                g_clear_pointer(&on_b, g_ptr_array_unref);
                g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);
                assert_call_pending(waiter);
        }

        close(TAKE_FD(fd));
        g_assert_cmpuint(test_call_wait_token(waiter), >, t);
        test_fdstore_wait_count(store, 0, TEST_TIMEOUT_USEC);
        test_unlock_ok(f->b.client, "fdr");
}

/* A call that comes while lockbusd stops (it tells systemd STOPPING=1,
 * then waits for etcd to take its lease back, which cannot happen with
 * every member paused) is refused, to be tried again, and the daemon
 * exits with status 0 once it gave up waiting. */
static void test_call_while_stopping(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestFdStore) notify = test_fdstore_new(f->a.bus->dir);
        int status, r;
        pid_t pid;

        CLUSTER_SKIP_WITHOUT_ETCD();
        test_bus_kill_daemon(f->a.bus);
        cluster_host_start_daemon_with_fdstore(f, &f->a, notify);
        pid = f->a.bus->daemon_pid;

        for (unsigned i = 0; i < etcd_cluster_size(f->etcd); i++)
                etcd_cluster_pause_member(f->etcd, i);
        g_assert_cmpint(kill(pid, SIGTERM), ==, 0);
        test_fdstore_wait_line(notify, "STOPPING=1", TEST_TIMEOUT_USEC);

        r = test_acquire(f->a.client, "late", NULL, NULL, &error);
        assert_call_error(r, &error, SD_BUS_ERROR_FAILED,
                          "Resource 'late' not granted: lockbusd is exiting, try again");

        status = test_waitpid(pid, 0);
        f->a.bus->daemon_pid = 0;
        g_assert_true(WIFEXITED(status));
        g_assert_cmpint(WEXITSTATUS(status), ==, 0);
        for (unsigned i = 0; i < etcd_cluster_size(f->etcd); i++)
                etcd_cluster_resume_member(f->etcd, i);
}

/* Two daemons on one machine (a system and a --user lockbusd, sharing the
 * prefix): B's daemon is started again as the same machine as A, on its
 * own bus. It must not take A's connection and fd holds and waiting
 * requests for its own earlier run's: they stay A's, and A serves them. */
static void test_two_daemons_one_machine(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a1 = NULL, *a2 = NULL, *a3 = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autoptr(TestCall) waiter = NULL;
        _cleanup_close_ int fd = -1;
        uint64_t t_mine, t_fd, t_blk;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);
        a2 = test_bus_connect(f->a.bus);
        a3 = test_bus_connect(f->a.bus);

        t_mine = test_acquire_ok(a1, "mine", NULL);
        fd = test_acquire_fd_ok(a1, "fdm", NULL, &t_fd);
        t_blk = test_acquire_ok(a3, "blk", NULL);
        waiter = test_acquire_async(a2, "blk", WAIT_FOREVER);
        cluster_wait_keys(f, "blk", 2);

        test_bus_kill_daemon(f->b.bus);
        f->b.machine_id = f->a.machine_id;
        cluster_host_start_daemon(f, &f->b);

        /* Still A's, all of them. */
        holders = test_owner_ok(f->a.client, "mine", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], geteuid(), getpid(), f->comm, test_unique_name(a1), t_mine, "connection");
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 3);
        g_assert_true(pipe_has_reader(fd));
        cluster_wait_keys(f, "blk", 2);
        assert_call_pending(waiter);

        test_unlock_ok(a3, "blk");
        g_assert_cmpuint(test_call_wait_token(waiter), >, t_blk);
        test_unlock_ok(a2, "blk");
        test_unlock_ok(a1, "mine");
        g_assert_cmpuint(t_fd, >, 0);
}

/* lockbusd of host A killed while its Unlock waits for etcd (every member
 * paused): whether etcd applies the delete or not, the holder is never
 * told it lost the hold (its record is removed before the delete is
 * sent), and the resource ends up free, or still the holder's until it
 * unlocks again. */
static void test_killed_during_unlock(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a1 = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(TestCall) unlock = NULL;
        LostSignals signals = { .lines = lines, .wanted = 1 };
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a1 = test_bus_connect(f->a.bus);
        slot = lost_signals_watch(a1, &signals);

        (void) test_acquire_ok(a1, "u", NULL);
        for (unsigned i = 0; i < etcd_cluster_size(f->etcd); i++)
                etcd_cluster_pause_member(f->etcd, i);
        unlock = call_async(a1, "Unlock", "u");
        /* Answered after the Unlock was read: the record is gone by then. */
        g_assert_cmpuint(test_get_property_u(a1, "LockCount"), ==, 1);
        test_bus_kill_daemon(f->a.bus);
        for (unsigned i = 0; i < etcd_cluster_size(f->etcd); i++)
                etcd_cluster_resume_member(f->etcd, i);
        g_assert_cmpuint(count_records(&f->a, "u"), ==, 0);

        cluster_host_start_daemon(f, &f->a);
        test_bus_sync(a1);
        g_assert_cmpuint(lines->len, ==, 0);

        r = test_unlock(a1, "u", &error);
        g_test_message("Unlock again: %s", r >= 0 ? "released" : error.name);
        if (r < 0)
                assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, NULL);
        test_assert_not_locked(f->b.client, "u");
}

/* lockbusd of host A stopped cleanly with no connection hold: it revokes
 * its lease, so B's waiter on A's fd hold is granted at once (the lease
 * TTL is 60 s here). */
static void test_daemon_stopped_revokes(ClusterFixture *f, gconstpointer data) {
        g_autoptr(TestCall) waiter = NULL;
        _cleanup_close_ int fd = -1;
        uint64_t t;

        CLUSTER_SKIP_WITHOUT_ETCD();

        fd = test_acquire_fd_ok(f->a.client, "fd", NULL, &t);
        waiter = test_acquire_async(f->b.client, "fd", WAIT_FOREVER);
        cluster_wait_keys(f, "fd", 2);

        test_bus_stop_daemon(f->a.bus);
        g_assert_cmpuint(test_call_wait_token(waiter), >, t);
        test_unlock_ok(f->b.client, "fd");
}

/* How many fds process pid has open now. */
static unsigned count_open_fds(pid_t pid) {
        g_autofree char *path = g_strdup_printf("/proc/%d/fd", (int) pid);
        g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
        unsigned n = 0;

        g_assert_nonnull(dir);
        while (g_dir_read_name(dir))
                n++;
        return n;
}

static void set_fd_limit(pid_t pid, rlim_t soft) {
        struct rlimit old, new;

        g_assert_cmpint(prlimit(pid, RLIMIT_NOFILE, NULL, &old), ==, 0);
        new = (struct rlimit) { .rlim_cur = soft, .rlim_max = old.rlim_max };
        g_assert_cmpint(prlimit(pid, RLIMIT_NOFILE, &new, NULL), ==, 0);
}

/* etcd granted a request the daemon cannot set up (no fd left for an fd
 * hold's pipe): the caller gets Storage naming the resource and etcd, the
 * key is deleted (nobody holds it, on either host), and once fds are
 * there again the same request is granted. */
static void test_grant_not_set_up(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = -1;
        pid_t pid = f->a.bus->daemon_pid;
        uint64_t token = 0, t;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        g_assert_cmpint(pid, >, 0);

        /* The daemon's connections to etcd are open and idle now. */
        t = test_lock_ok(f->a.client, "warm");
        test_unlock_ok(f->a.client, "warm");

        /* One fd to spare: a pipe needs two. */
        set_fd_limit(pid, count_open_fds(pid) + 1);
        r = test_acquire_fd(f->a.client, "nofd", NULL, &fd, &token, &error);
        set_fd_limit(pid, 1024);
        g_test_message("AcquireFd without fds to spare: %s: %s", strempty(error.name), strempty(error.message));
        assert_call_error(r, &error, LOCKBUS_ERROR_STORAGE, NULL);
        g_assert_nonnull(strstr(error.message, "'nofd'"));
        g_assert_nonnull(strstr(error.message, "etcd"));
        g_assert_cmpint(fd, <, 0);
        sd_bus_error_free(&error);

        cluster_wait_keys(f, "nofd", 0);
        test_assert_not_locked(f->a.client, "nofd");
        test_assert_not_locked(f->b.client, "nofd");
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 0);

        fd = test_acquire_fd_ok(f->a.client, "nofd", NULL, &token);
        g_assert_cmpuint(token, >, t);
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);
}

static uint64_t reply_cookie(TestCall *c) {
        uint64_t cookie;

        g_assert_cmpint(sd_bus_message_get_cookie(test_call_reply(c), &cookie), >=, 0);
        return cookie;
}

/* etcd stops answering (every member SIGSTOPped) while A's first Unlock
 * deletes the hold's key: a second Unlock and a Refresh of it by the same
 * caller, and an Acquire, all sent after the first Unlock, wait for it.
 * Once etcd answers again they are answered in the order asked, as on one
 * host: the first Unlock succeeds, the second Unlock and the Refresh find
 * it not locked, and the Acquire (timeout 0) is granted with a new token.
 * A lease TTL far beyond the pause, so that only the calls wait for etcd. */
static void test_unlock_twice_etcd_paused(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) unlock1 = NULL, unlock2 = NULL, refresh = NULL, acquire = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *sender_a = NULL;
        uint64_t t, t_again;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();

        t = test_acquire_ok(f->a.client, "u", NULL);
        for (unsigned i = 0; i < etcd_cluster_size(f->etcd); i++)
                etcd_cluster_pause_member(f->etcd, i);

        unlock1 = call_async(f->a.client, "Unlock", "u");
        unlock2 = call_async(f->a.client, "Unlock", "u");
        refresh = call_async(f->a.client, "Refresh", "u");
        acquire = test_acquire_async(f->a.client, "u", NULL);
        /* Read after all four on the same connection: none is answered,
         * and the hold is still A's (nothing was deleted). */
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);
        assert_call_pending(unlock1);
        assert_call_pending(unlock2);
        assert_call_pending(refresh);
        assert_call_pending(acquire);

        for (unsigned i = 0; i < etcd_cluster_size(f->etcd); i++)
                etcd_cluster_resume_member(f->etcd, i);

        test_call_wait(unlock1);
        r = test_call_result(unlock1, &error);
        assert_call_ok(r, &error);
        test_call_wait(unlock2);
        r = test_call_result(unlock2, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, "Resource 'u' not locked");
        sd_bus_error_free(&error);
        test_call_wait(refresh);
        r = test_call_result(refresh, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, "Resource 'u' not locked");
        sd_bus_error_free(&error);
        t_again = test_call_wait_token(acquire);
        g_assert_cmpuint(t_again, >, t);
        /* Answered in the order asked. */
        g_assert_cmpuint(reply_cookie(unlock1), <, reply_cookie(unlock2));
        g_assert_cmpuint(reply_cookie(unlock2), <, reply_cookie(refresh));
        g_assert_cmpuint(reply_cookie(refresh), <, reply_cookie(acquire));

        /* The new hold is the only one, on both hosts. */
        sender_a = cluster_sender(&f->a, f->a.client);
        holders = test_owner_ok(f->b.client, "u", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], geteuid(), getpid(), f->comm, sender_a, t_again, "connection");
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);

        /* Released, it is free: not locked, and B can lock it. */
        test_unlock_ok(f->a.client, "u");
        test_assert_not_locked(f->a.client, "u");
        test_assert_not_locked(f->b.client, "u");
        g_assert_cmpuint(test_lock_ok(f->b.client, "u"), >, t_again);
        test_unlock_ok(f->b.client, "u");
}

/* Breaks the program's cluster: one member killed. Locking goes on through
 * the others, and the daemons' leases stay (a hold outlives the TTL: a
 * waiter with a longer timeout times out). */
static void test_member_killed(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b2 = NULL;
        g_autoptr(TestCall) waiter = NULL, outlived = NULL;
        g_autofree char *message = NULL;
        uint64_t t, t_waiter, t_keep, t_next, started;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        b2 = test_bus_connect(f->b.bus);

        t = test_acquire_ok(f->a.client, "m", NULL);
        t_keep = test_acquire_ok(f->a.client, "keep", NULL);
        waiter = test_acquire_async(b2, "m", WAIT_FOREVER);
        cluster_wait_keys(f, "m", 2);

        /* The first endpoint: the one every client starts with. */
        etcd_cluster_kill_member(f->etcd, 0);

        test_unlock_ok(f->a.client, "m");
        t_waiter = test_call_wait_token(waiter);
        g_assert_cmpuint(t_waiter, >, t);
        g_assert_cmpuint(t_waiter, >, t_keep);

        message = locked_on_host_message("m", geteuid(), getpid(), f->comm, "hostB");
        r = test_lock(f->a.client, "m", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        t_next = test_lock_ok(f->a.client, "m2");
        g_assert_cmpuint(t_next, >, t_waiter);
        g_assert_cmpuint(test_lock_ok(f->b.client, "m3"), >, t_next);
        test_unlock_ok(f->a.client, "m2");
        test_unlock_ok(f->b.client, "m3");
        test_unlock_ok(b2, "m");
        g_assert_cmpuint(test_acquire_ok(f->a.client, "m", NULL), >, t_next);

        /* A's hold on "keep" outlives one and a half lease TTLs. */
        started = test_now_monotonic();
        outlived = test_acquire_async(f->b.client, "keep",
                                      &(TestAcquireOptions) { .has_timeout = true,
                                                              .timeout = CLUSTER_LEASE_TTL_USEC * 3 / 2 });
        test_call_wait(outlived);
        r = test_call_result(outlived, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, NULL);
        g_assert_cmpuint(test_now_monotonic() - started, >=, CLUSTER_LEASE_TTL_USEC * 3 / 2);
        sd_bus_error_free(&error);
        test_unlock_ok(f->a.client, "keep");
}

static void assert_storage_error(int r, const sd_bus_error *error, EtcdCluster *etcd, const char *what) {
        g_test_message("%s with etcd down: %s: %s", what, strempty(error->name), strempty(error->message));
        assert_call_error(r, error, LOCKBUS_ERROR_STORAGE, NULL);
        g_assert_nonnull(strstr(error->message, "etcd"));
        for (unsigned i = 0; i < etcd_cluster_size(etcd); i++)
                g_assert_nonnull(strstr(error->message, etcd_cluster_endpoint(etcd, i)));
}

/* Breaks the program's cluster for good: every member killed. Lock fails
 * with Storage naming etcd and the endpoints, right away and after the
 * lease is lost (shown by the daemon dropping an fd hold); the holder of
 * the lost holds hears LockLost; a waiter gets an error, never a grant. */
static void test_all_members_killed(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b2 = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(TestCall) waiter = NULL;
        g_autofree char *lost_c = NULL, *lost_fd = NULL;
        _cleanup_close_ int fd = -1;
        LostSignals signals = { .lines = lines, .wanted = 2 };
        uint64_t killed, lost, t_c, t_fd;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        b2 = test_bus_connect(f->b.bus);

        slot = lost_signals_watch(f->a.client, &signals);
        t_c = test_acquire_ok(f->a.client, "c", NULL);
        fd = test_acquire_fd_ok(f->a.client, "fd", NULL, &t_fd);
        waiter = test_acquire_async(b2, "c", WAIT_FOREVER);
        cluster_wait_keys(f, "c", 2);

        killed = test_now_monotonic();
        for (unsigned i = 0; i < etcd_cluster_size(f->etcd); i++)
                etcd_cluster_kill_member(f->etcd, i);

        /* Right away: the leases are not known lost yet. */
        r = test_lock(f->a.client, "new", NULL, &error);
        assert_storage_error(r, &error, f->etcd, "Lock on A");
        sd_bus_error_free(&error);
        r = test_acquire(f->b.client, "new", NULL, NULL, &error);
        assert_storage_error(r, &error, f->etcd, "Acquire on B");
        sd_bus_error_free(&error);

        /* B's waiter: an error once B's daemon gives up on it, not a grant. */
        test_call_wait(waiter);
        r = test_call_result(waiter, &error);
        g_test_message("B's waiter %" PRIu64 " ms after etcd went down: %s: %s",
                       (test_now_monotonic() - killed) / 1000U, strempty(error.name), strempty(error.message));
        g_assert_cmpint(r, <, 0);
        g_assert_true(sd_bus_error_is_set(&error));
        sd_bus_error_free(&error);

        /* Still refused, still named. */
        r = test_lock(f->b.client, "new", NULL, &error);
        assert_storage_error(r, &error, f->etcd, "Lock on B after its waiter failed");
        sd_bus_error_free(&error);
        r = test_acquire(f->a.client, "c", WAIT_FOREVER, NULL, &error);
        g_test_message("Acquire on A of its own hold: %s: %s", strempty(error.name), strempty(error.message));
        g_assert_cmpint(r, <, 0);
        g_assert_true(sd_bus_error_has_names(&error, LOCKBUS_ERROR_ALREADY_LOCKED, LOCKBUS_ERROR_STORAGE));
        sd_bus_error_free(&error);

        /* A's lease is lost within about a TTL of the kill (a TTL after
         * the last renewal it sent): A drops its fd hold, closing its end of
         * the hold's pipe (README, "Cluster mode"). Still refused then. */
        if (!test_wait_readable(fd, killed + 2 * CLUSTER_LEASE_TTL_USEC))
                g_error("A's fd hold was not dropped within two lease TTLs of etcd going down");
        lost = test_now_monotonic();
        g_test_message("A dropped its fd hold %" PRIu64 " ms after etcd went down", (lost - killed) / 1000U);
        r = test_lock(f->a.client, "new", NULL, &error);
        assert_storage_error(r, &error, f->etcd, "Lock on A after its lease was lost");
        sd_bus_error_free(&error);

        /* Its holder was told, for both holds (LockLost, reason "lost"). */
        test_bus_process_until(f->a.client, &signals.done, -1, "LockLost for A's holds");
        g_ptr_array_sort(lines, test_compare_strings);
        lost_c = g_strdup_printf("c %" PRIu64 " lost", t_c);
        lost_fd = g_strdup_printf("fd %" PRIu64 " lost", t_fd);
        g_assert_cmpuint(lines->len, ==, 2);
        g_assert_cmpstr(lines->pdata[0], ==, lost_c);
        g_assert_cmpstr(lines->pdata[1], ==, lost_fd);

        /* Both daemons are still there. */
        g_assert_cmpint(test_bus_daemon_pid(f->a.bus), ==, f->a.bus->daemon_pid);
        g_assert_cmpint(test_bus_daemon_pid(f->b.bus), ==, f->b.bus->daemon_pid);
}

int main(int argc, char *argv[]) {
        cluster_test_init(&argc, &argv);

        cluster_test_add("/cluster/failure/daemon-killed", test_daemon_killed);
        cluster_test_add("/cluster/failure/daemon-restarted", test_daemon_restarted);
        cluster_test_add_with_args("/cluster/failure/daemon-restarted-holder-gone", long_lease,
                                   test_daemon_restarted_holder_gone);
        cluster_test_add_with_args("/cluster/failure/daemon-restarted-waiter-gone", long_lease,
                                   test_daemon_restarted_waiter_gone);
        cluster_test_add("/cluster/failure/daemon-back-after-lease", test_daemon_back_after_lease);
        cluster_test_add_with_args("/cluster/failure/daemon-restarted-clean", long_lease,
                                   test_daemon_restarted_clean);
        cluster_test_add_with_args("/cluster/failure/daemon-stopped-revokes", long_lease,
                                   test_daemon_stopped_revokes);
        cluster_test_add_with_args("/cluster/failure/fd-hold-restarted", long_lease, test_fd_hold_restarted);
        cluster_test_add("/cluster/failure/call-while-stopping", test_call_while_stopping);
        cluster_test_add_with_args("/cluster/failure/killed-during-unlock", long_lease, test_killed_during_unlock);
        cluster_test_add_with_args("/cluster/failure/two-daemons-one-machine", long_lease,
                                   test_two_daemons_one_machine);
        cluster_test_add_with_args("/cluster/failure/grant-not-set-up", long_lease, test_grant_not_set_up);
        cluster_test_add_with_args("/cluster/failure/unlock-twice-etcd-paused", long_lease,
                                   test_unlock_twice_etcd_paused);
        cluster_test_add("/cluster/failure/etcd-member-killed", test_member_killed);
        cluster_test_add("/cluster/failure/etcd-all-killed", test_all_members_killed);

        return cluster_test_run();
}
