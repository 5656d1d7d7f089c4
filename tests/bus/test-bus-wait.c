/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Waiting for locks and the features around it, against a real lockbusd on
 * a private system-like bus: fair FIFO queues with shared and exclusive
 * waiters, wait timeouts, waiters and holders that go away, quotas,
 * AcquireFd, TTL and Refresh, Break, and exit on idle with activation.
 *
 * Nothing here sleeps. Every wait is for a reply, a NameOwnerChanged or a
 * process; where time itself is the subject (timeouts, TTLs, idle exit),
 * the test waits for the event the daemon's own timer causes and checks
 * the clock afterwards. How calls from several connections are put in a
 * known order, and how a call is shown to be still waiting, is explained
 * in bus-test.h ("Calls that wait"). */

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus-test.h"

#define CHILD_COMM "lockbus-child"

#define USEC_PER_MSEC ((uint64_t) 1000U)
#define USEC_PER_SEC ((uint64_t) 1000000U)

#define WAIT_FOREVER(m) (&(TestAcquireOptions) { .mode = (m), .has_timeout = true, .timeout = UINT64_MAX })

/* The uid of "another process" in tests that work either way: another user
 * when we are root, else ourselves. */
static uid_t other_uid(void) {
        return geteuid() == 0 ? TEST_OTHER_UID : geteuid();
}

static char *already_locked_message(const char *resource, uid_t uid, pid_t pid, const char *comm) {
        return g_strdup_printf("Resource '%s' already locked by uid %u (pid %d, %s)",
                               resource, (unsigned) uid, (int) pid, comm);
}

static char *timeout_message(const char *resource, uid_t uid, pid_t pid, const char *comm) {
        return g_strdup_printf("Timed out waiting for resource '%s', locked by uid %u (pid %d, %s)",
                               resource, (unsigned) uid, (int) pid, comm);
}

static char *not_locked_message(const char *resource) {
        return g_strdup_printf("Resource '%s' not locked", resource);
}

static char *not_owner_message(const char *resource, uid_t holder, const char *verb, uid_t caller) {
        return g_strdup_printf("Resource '%s' locked by uid %u cannot be %s by uid %u",
                               resource, (unsigned) holder, verb, (unsigned) caller);
}

static char *quota_message(const char *resource, uid_t uid, unsigned locks, unsigned waiters) {
        return g_strdup_printf("Resource '%s' not granted: uid %u is at its limit of %u locks and %u waiting calls",
                               resource, (unsigned) uid, locks, waiters);
}

static char *access_denied_message(const char *resource, uid_t uid) {
        return g_strdup_printf("Breaking the lock on resource '%s' is not allowed for uid %u",
                               resource, (unsigned) uid);
}

/* "error NAME: MESSAGE", as clients report a failed call. */
static char *error_result(const char *name, const char *message) {
        return g_strdup_printf("error %s: %s", name, message);
}

/* Queues an Acquire of `resource` on `bus` and returns once the daemon has
 * queued it (see bus-test.h): WaiterCount, asked on the same connection,
 * must then be `n_waiting`. */
static TestCall *queue_waiter(sd_bus *bus, const char *resource, const TestAcquireOptions *o, unsigned n_waiting) {
        TestCall *c = test_acquire_async(bus, resource, o);

        g_assert_cmpuint(test_get_property_u(bus, "WaiterCount"), ==, n_waiting);
        return c;
}

/* Owner(resource) has exactly the given connections as holders, in this
 * order, with these tokens, all of this process. */
static void assert_holders(sd_bus *bus, const char *resource, const char *mode, sd_bus *const *conns,
                           const uint64_t *tokens, size_t n) {
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *m = NULL;

        holders = test_owner_ok(bus, resource, &m);
        g_assert_cmpstr(m, ==, mode);
        g_assert_cmpuint(holders->len, ==, n);
        for (size_t i = 0; i < n; i++) {
                const TestHolder *h = holders->pdata[i];

                g_assert_cmpuint(h->uid, ==, getuid());
                g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
                g_assert_cmpstr(h->sender, ==, test_unique_name(conns[i]));
                g_assert_cmpuint(h->token, ==, tokens[i]);
        }
}

/* Owner(resource) has one holder: returns it. It lives in *holders, which
 * is replaced (an earlier array there is freed). */
static const TestHolder *owner_single(GPtrArray **holders, sd_bus *bus, const char *resource) {
        g_clear_pointer(holders, g_ptr_array_unref);
        *holders = test_owner_ok(bus, resource, NULL);
        g_assert_cmpuint((*holders)->len, ==, 1);
        return (*holders)->pdata[0];
}

/* Starts a remote-controlled client (test_client_serve()) and returns it
 * with its unique name. */
static TestClient *start_served(TestBus *b, uid_t uid, char **ret_unique) {
        TestClient *c = test_client_start(b, uid, CHILD_COMM, test_client_serve, NULL);
        g_autofree char *unique = test_client_command(c, "Unique");

        if (!g_str_has_prefix(unique, "ok :"))
                g_error("Client process as uid %u: Unique: %s", (unsigned) uid, unique);
        if (ret_unique)
                *ret_unique = g_strdup(unique + 3);
        return c;
}

/* --- Fair queues ------------------------------------------------------------- */

static void test_wait_fifo_mixed(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *x = test_bus_connect(f->bus),
                *a = test_bus_connect(f->bus), *b = test_bus_connect(f->bus), *c = test_bus_connect(f->bus),
                *d = test_bus_connect(f->bus), *e = test_bus_connect(f->bus), *g = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) ca = NULL, cb = NULL, cc = NULL, cd = NULL, ce = NULL, cg = NULL;
        g_autofree char *message = NULL;
        uint64_t tx, ta, tb, tc, td, te, tg;
        int r;

        tx = test_acquire_ok(x, "db", NULL);

        /* A exclusive, B and C shared, D exclusive, E shared, in this order. */
        ca = queue_waiter(a, "db", WAIT_FOREVER("exclusive"), 1);
        cb = queue_waiter(b, "db", WAIT_FOREVER("shared"), 2);
        cc = queue_waiter(c, "db", WAIT_FOREVER("shared"), 3);
        cd = queue_waiter(d, "db", WAIT_FOREVER("exclusive"), 4);
        ce = queue_waiter(e, "db", WAIT_FOREVER("shared"), 5);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 5);
        assert_call_pending(ca);

        /* X goes: only A. The daemon answers Owner and WaiterCount only
         * after it has handled the Unlock that granted A, so they show what
         * that release did; the pending checks show that B and C were not
         * answered either. */
        test_unlock_ok(x, "db");
        ta = test_call_wait_token(ca);
        g_assert_cmpuint(ta, >, tx);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 4);
        assert_holders(f->client, "db", "exclusive", (sd_bus *[]) { a }, (uint64_t[]) { ta }, 1);
        assert_call_pending(cb);
        assert_call_pending(cc);
        assert_call_pending(cd);
        assert_call_pending(ce);

        /* A goes: B and C together, D still waits (and E behind it). */
        test_unlock_ok(a, "db");
        tb = test_call_wait_token(cb);
        tc = test_call_wait_token(cc);
        g_assert_cmpuint(tb, >, ta);
        g_assert_cmpuint(tc, >, tb);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 2);
        assert_holders(f->client, "db", "shared", (sd_bus *[]) { b, c }, (uint64_t[]) { tb, tc }, 2);
        assert_call_pending(cd);
        assert_call_pending(ce);

        /* A new shared request fits B and C but D waits: it does not jump
         * ahead. With timeout 0 it fails, naming the first holder. */
        message = already_locked_message("db", getuid(), getpid(), f->comm);
        r = test_acquire(g, "db", &(TestAcquireOptions) { .mode = "shared" }, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 2);

        /* Waiting, it queues behind E. */
        cg = queue_waiter(g, "db", WAIT_FOREVER("shared"), 3);
        assert_call_pending(cg);
        assert_holders(f->client, "db", "shared", (sd_bus *[]) { b, c }, (uint64_t[]) { tb, tc }, 2);

        /* B goes: C still holds, D still waits. */
        test_unlock_ok(b, "db");
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 3);
        assert_holders(f->client, "db", "shared", (sd_bus *[]) { c }, (uint64_t[]) { tc }, 1);
        assert_call_pending(cd);

        /* C goes: D alone. */
        test_unlock_ok(c, "db");
        td = test_call_wait_token(cd);
        g_assert_cmpuint(td, >, tc);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 2);
        assert_holders(f->client, "db", "exclusive", (sd_bus *[]) { d }, (uint64_t[]) { td }, 1);
        assert_call_pending(ce);
        assert_call_pending(cg);

        /* D goes: E and the late G together. */
        test_unlock_ok(d, "db");
        te = test_call_wait_token(ce);
        tg = test_call_wait_token(cg);
        g_assert_cmpuint(te, >, td);
        g_assert_cmpuint(tg, >, te);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
        assert_holders(f->client, "db", "shared", (sd_bus *[]) { e, g }, (uint64_t[]) { te, tg }, 2);

        test_unlock_ok(e, "db");
        test_unlock_ok(g, "db");
        test_assert_not_locked(f->client, "db");
}

/* --- Timeouts ---------------------------------------------------------------- */

static void test_wait_timeout_short(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus),
                *x = test_bus_connect(f->bus), *s = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) cx = NULL, cs = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *message = NULL;
        uint64_t th, ts, start, elapsed;
        int r;

        /* 200 ms on a held resource: Timeout, naming it and its holder. */
        th = test_acquire_ok(f->client, "db", &(TestAcquireOptions) { .mode = "shared" });
        message = timeout_message("db", getuid(), getpid(), f->comm);
        start = test_now_monotonic();
        r = test_acquire(w, "db", &(TestAcquireOptions) { .has_timeout = true, .timeout = 200U * USEC_PER_MSEC },
                         NULL, &error);
        elapsed = test_now_monotonic() - start;
        assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, message);
        sd_bus_error_free(&error);
        /* It did wait: our clock started before the daemon's. */
        g_assert_cmpuint(elapsed, >=, 200U * USEC_PER_MSEC);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
        g_assert_cmpuint(owner_single(&holders, f->client, "db")->token, ==, th);

        /* A waiter that times out at the head lets those behind it in when
         * they fit: S (shared) queued behind X (exclusive) while a shared
         * hold is there is granted when X gives up. (500 ms, so that S is
         * queued long before X's time is up.) */
        start = test_now_monotonic();
        cx = queue_waiter(x, "db", &(TestAcquireOptions) { .has_timeout = true, .timeout = 500U * USEC_PER_MSEC }, 1);
        cs = queue_waiter(s, "db", WAIT_FOREVER("shared"), 2);
        assert_call_pending(cs);
        test_call_wait(cx);
        elapsed = test_now_monotonic() - start;
        r = test_call_result(cx, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, message);
        g_assert_cmpuint(elapsed, >=, 500U * USEC_PER_MSEC);
        ts = test_call_wait_token(cs);
        g_assert_cmpuint(ts, >, th);
        assert_holders(f->client, "db", "shared", (sd_bus *[]) { f->client, s }, (uint64_t[]) { th, ts }, 2);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        /* Nobody is left in the queue to take it. */
        test_unlock_ok(f->client, "db");
        test_unlock_ok(s, "db");
        test_assert_not_locked(f->client, "db");
}

static void test_wait_timeout_long(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *l = test_bus_connect(f->bus), *s = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) cl = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *message = NULL;
        uint64_t th, tl;
        int r;

        th = test_acquire_ok(f->client, "db", NULL);

        /* 60 s; the call's own timeout is longer than sd-bus's default
         * 25 s, or the client would give up first. */
        cl = queue_waiter(l, "db", &(TestAcquireOptions) {
                                .has_timeout = true, .timeout = 60U * USEC_PER_SEC,
                                .call_timeout_usec = 70U * USEC_PER_SEC,
                        }, 1);

        /* Time passes on the daemon's clock: a 1 ms waiter behind it gives
         * up, the long one stays. */
        message = timeout_message("db", getuid(), getpid(), f->comm);
        r = test_acquire(s, "db", &(TestAcquireOptions) { .has_timeout = true, .timeout = USEC_PER_MSEC },
                         NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, message);
        assert_call_pending(cl);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 1);

        /* Granted when the holder lets go, long before its time is up. */
        test_unlock_ok(f->client, "db");
        tl = test_call_wait_token(cl);
        g_assert_cmpuint(tl, >, th);
        g_assert_cmpstr(owner_single(&holders, f->client, "db")->sender, ==, test_unique_name(l));
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
}

static void test_wait_forever(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus), *s = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *message = NULL;
        uint64_t th, tw;
        int r;

        th = test_acquire_ok(f->client, "db", NULL);
        cw = queue_waiter(w, "db", WAIT_FOREVER(NULL), 1);

        /* UINT64_MAX is no deadline (not one that has passed, nor one that
         * overflows): after another waiter's 50 ms ran out, it still waits. */
        message = timeout_message("db", getuid(), getpid(), f->comm);
        r = test_acquire(s, "db", &(TestAcquireOptions) { .has_timeout = true, .timeout = 50U * USEC_PER_MSEC },
                         NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, message);
        assert_call_pending(cw);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 1);

        test_unlock_ok(f->client, "db");
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, th);
        g_assert_cmpstr(owner_single(&holders, f->client, "db")->sender, ==, test_unique_name(w));
}

/* --- Waiters and holders that go away -------------------------------------- */

static void test_wait_waiter_disconnects(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w2 = test_bus_connect(f->bus);
        g_autoptr(TestClient) w1 = NULL;
        g_autoptr(TestNameWatch) watch = NULL;
        g_autoptr(TestCall) c2 = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *unique = NULL;
        uint64_t th, t2;

        th = test_acquire_ok(f->client, "db", NULL);

        /* W1, a client process, waits first; W2 behind it. */
        w1 = start_served(f->bus, other_uid(), &unique);
        g_assert_cmpuint(test_client_command_ok(w1, "Start 1 db timeout=max"), ==, 1);
        c2 = queue_waiter(w2, "db", WAIT_FOREVER(NULL), 2);

        /* W1 dies. Why WaiterCount sees it at once, without polling: the
         * bus sends NameOwnerChanged for W1's unique name to every
         * subscriber in one dispatch step; lockbusd tracks every caller
         * (sd_bus_track), so the signal was queued to lockbusd no later
         * than to us. We ask only after receiving it, and the bus delivers
         * a connection's messages in the order it queued them, so lockbusd
         * reads the signal before our call (see also
         * /bus/acquire/connection-scope). */
        watch = test_bus_watch_name(f->client, unique);
        test_client_kill(w1);
        test_name_watch_wait_gone(watch);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 1);
        assert_call_pending(c2);

        /* The next one in line gets it. */
        test_unlock_ok(f->client, "db");
        t2 = test_call_wait_token(c2);
        g_assert_cmpuint(t2, >, th);
        g_assert_cmpstr(owner_single(&holders, f->client, "db")->sender, ==, test_unique_name(w2));
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
}

static void test_wait_holder_killed(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus);
        g_autoptr(TestClient) holder = NULL;
        g_autoptr(TestCall) cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *unique = NULL;
        const TestHolder *h;
        uint64_t tk, tw;

        holder = start_served(f->bus, other_uid(), &unique);
        tk = test_client_command_ok(holder, "Acquire db description=victim");
        g_assert_cmpuint(tk, >, 0);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->uid, ==, other_uid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) holder->pid);
        g_assert_cmpstr(h->comm, ==, CHILD_COMM);
        g_assert_cmpstr(h->sender, ==, unique);
        g_assert_cmpstr(h->scope, ==, "connection");
        g_assert_cmpstr(h->description, ==, "victim");
        g_clear_pointer(&holders, g_ptr_array_unref);

        cw = queue_waiter(w, "db", WAIT_FOREVER(NULL), 1);

        /* SIGKILL: no Unlock, only the connection going away. The grant is
         * the event to wait for. */
        test_client_kill(holder);
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, tk);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->uid, ==, getuid());
        g_assert_cmpstr(h->sender, ==, test_unique_name(w));
        g_assert_cmpuint(h->token, ==, tw);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
}

/* --- Quotas ------------------------------------------------------------------- */

#define QUOTA_LOCKS 3
#define QUOTA_WAITERS 2
static const char *const quota_args[] = {
        "--max-locks-per-user=" STRINGIFY_VALUE(QUOTA_LOCKS),
        "--max-waiters-per-user=" STRINGIFY_VALUE(QUOTA_WAITERS),
        NULL,
};

/* A client's result for a call refused by the quotas of quota_args. */
static char *quota_result(const char *resource, uid_t uid) {
        g_autofree char *m = quota_message(resource, uid, QUOTA_LOCKS, QUOTA_WAITERS);

        return error_result(LOCKBUS_ERROR_QUOTA_EXCEEDED, m);
}

static void test_quota_locks(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) n = NULL, n2 = NULL, m = NULL;
        g_autoptr(TestNameWatch) watch = NULL;
        /* Without root the limited uid is our own; the parts about root
         * and other users need root. */
        uid_t limited = other_uid(), uid2 = geteuid() == 0 ? test_second_uid() : 0;
        g_autofree char *e_a4 = quota_result("a4", limited), *e_a5 = quota_result("a5", limited),
                *e_a6 = quota_result("a6", limited), *unique = NULL;
        unsigned n_root = 0, n_second = 0;

        /* Three locks of every kind, then the limit, whichever way it
         * asks (and a waiting call is not queued). */
        n = start_served(f->bus, limited, &unique);
        (void) test_client_command_ok(n, "Lock a1");
        (void) test_client_command_ok(n, "Acquire a2");
        (void) test_client_command_ok(n, "Acquire a3 mode=shared scope=persistent");
        assert_client_command(n, e_a4, "Lock a4");
        assert_client_command(n, e_a4, "Acquire a4");
        assert_client_command(n, e_a4, "Acquire a4 mode=shared scope=persistent timeout=max");
        test_assert_not_locked(f->client, "a4");
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        if (geteuid() == 0) {
                /* Root is never limited. */
                for (unsigned i = 1; i <= 5; i++) {
                        g_autofree char *r = g_strdup_printf("r%u", i);

                        (void) test_lock_ok(f->client, r);
                }
                n_root = 5;
        } else
                g_test_message("Not root: skipping the parts about root and other users");

        /* Another user has a quota of its own. */
        if (uid2 > 0) {
                g_autofree char *e_b4 = quota_result("b4", uid2);

                m = start_served(f->bus, uid2, NULL);
                (void) test_client_command_ok(m, "Lock b1");
                (void) test_client_command_ok(m, "Acquire b2");
                (void) test_client_command_ok(m, "Lock b3");
                assert_client_command(m, e_b4, "Lock b4");
                n_second = 3;
        } else if (geteuid() == 0)
                g_test_message("No second unprivileged account; only root shows others are unaffected");

        /* An Unlock makes room again. */
        assert_client_command(n, "ok", "Unlock a1");
        (void) test_client_command_ok(n, "Lock a4");
        assert_client_command(n, e_a5, "Lock a5");

        /* So does the end of a connection hold (a2): another process of
         * the uid gets one more lock, not two (a3 and a4 are persistent).
         * On the ordering after NameOwnerChanged see
         * /bus/wait/waiter-disconnects. */
        watch = test_bus_watch_name(f->client, unique);
        test_client_kill(n);
        test_name_watch_wait_gone(watch);
        n2 = start_served(f->bus, limited, NULL);
        (void) test_client_command_ok(n2, "Lock a5");
        assert_client_command(n2, e_a6, "Lock a6");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 3 + n_root + n_second);
}

static void test_quota_waiters(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *r1 = NULL, *r2 = NULL, *r3 = NULL;
        g_autoptr(TestCall) c1 = NULL, c2 = NULL, c3 = NULL;
        g_autoptr(TestClient) n = NULL, m = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *e_w3 = quota_result("w3", TEST_OTHER_UID), *e_y = quota_result("y", TEST_OTHER_UID),
                *e_z = quota_result("z", TEST_OTHER_UID), *locked = NULL, *e_locked = NULL, *reply = NULL;
        unsigned n_second = 0;
        uint64_t t_w1;
        uid_t uid2;

        if (test_skip_unless_root())
                return;
        uid2 = test_second_uid();

        /* Connection holds: root's own waiters below would be re-entry
         * with a persistent hold of root. */
        r1 = test_bus_connect(f->bus);
        r2 = test_bus_connect(f->bus);
        r3 = test_bus_connect(f->bus);
        for (unsigned i = 1; i <= 3; i++) {
                g_autofree char *w = g_strdup_printf("w%u", i);

                (void) test_acquire_ok(f->client, w, NULL);
        }
        t_w1 = owner_single(&holders, f->client, "w1")->token;
        g_clear_pointer(&holders, g_ptr_array_unref);

        locked = already_locked_message("w3", 0, getpid(), f->comm);
        e_locked = error_result(LOCKBUS_ERROR_ALREADY_LOCKED, locked);

        /* 65534 waits twice; a third waiting call is refused at once, with
         * any timeout but 0 (which does not wait, so is AlreadyLocked). */
        n = start_served(f->bus, TEST_OTHER_UID, NULL);
        g_assert_cmpuint(test_client_command_ok(n, "Start 1 w1 timeout=max"), ==, 1);
        g_assert_cmpuint(test_client_command_ok(n, "Start 2 w2 timeout=max"), ==, 2);
        assert_client_command(n, e_w3, "Acquire w3 timeout=max");
        assert_client_command(n, e_w3, "Acquire w3 mode=shared timeout=5000000");
        assert_client_command(n, e_locked, "Acquire w3");
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 2);

        /* Waiting calls count against the lock limit too: 2 + 1 = 3. */
        (void) test_client_command_ok(n, "Lock x");
        assert_client_command(n, e_y, "Lock y");

        /* Another user waits as it likes; root without limit. */
        if (uid2 > 0) {
                m = start_served(f->bus, uid2, NULL);
                g_assert_cmpuint(test_client_command_ok(m, "Start 1 w3 timeout=max"), ==, 3);
                g_assert_cmpuint(test_client_command_ok(m, "Start 2 w1 timeout=max"), ==, 4);
                n_second = 2;
        } else
                g_test_message("No second unprivileged account; only root shows others are unaffected");
        c1 = queue_waiter(r1, "w1", WAIT_FOREVER(NULL), n_second + 3);
        c2 = queue_waiter(r2, "w2", WAIT_FOREVER(NULL), n_second + 4);
        c3 = queue_waiter(r3, "w3", WAIT_FOREVER(NULL), n_second + 5);

        /* w1 is released: 65534 was first in line. It now holds x and w1
         * and waits for w2: at its limit again. */
        test_unlock_ok(f->client, "w1");
        reply = test_client_wait_reply(n, "1");
        g_assert_true(g_str_has_prefix(reply, "ok "));
        g_assert_cmpuint(g_ascii_strtoull(reply + 3, NULL, 10), >, t_w1);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, n_second + 4);
        assert_client_command(n, e_z, "Lock z");
        assert_call_pending(c1);
}

/* --- AcquireFd ---------------------------------------------------------------- */

/* What AcquireFd hands out: the write end of a pipe. */
static void assert_pipe_write_end(int fd) {
        struct stat st;
        int flags;

        g_assert_cmpint(fstat(fd, &st), ==, 0);
        g_assert_true(S_ISFIFO(st.st_mode));
        flags = fcntl(fd, F_GETFL);
        g_assert_cmpint(flags, >=, 0);
        g_assert_cmpint(flags & O_ACCMODE, ==, O_WRONLY);
}

static void test_fd_close_releases(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus);
        _cleanup_close_ int fd = -1;
        g_autoptr(TestCall) cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        const TestHolder *h;
        uint64_t tf, tw;

        fd = test_acquire_fd_ok(f->client, "db", &(TestAcquireOptions) { .description = "fd" }, &tf);
        assert_pipe_write_end(fd);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->uid, ==, getuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
        g_assert_cmpstr(h->sender, ==, test_unique_name(f->client));
        g_assert_cmpuint(h->token, ==, tf);
        g_assert_cmpstr(h->scope, ==, "fd");
        g_assert_cmpstr(h->description, ==, "fd");
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* The daemon sees the close asynchronously (a hang-up on its end of
         * the pipe), so instead of asking Owner until it changes, another
         * connection waits for the resource: the grant comes exactly on the
         * release. A daemon that never releases answers Timeout. */
        cw = queue_waiter(w, "db", &(TestAcquireOptions) { .has_timeout = true, .timeout = 5U * USEC_PER_SEC }, 1);
        assert_call_pending(cw);
        g_assert_cmpint(close(TAKE_FD(fd)), ==, 0);
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, tf);

        /* Our connection is still there, the hold is not. */
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpstr(h->sender, ==, test_unique_name(w));
        g_assert_cmpstr(h->scope, ==, "connection");
}

static void test_fd_waits(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a = test_bus_connect(f->bus), *w = test_bus_connect(f->bus);
        _cleanup_close_ int fd = -1;
        g_autoptr(TestCall) ca = NULL, cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        const TestHolder *h;
        uint64_t th, ta, tw;

        /* AcquireFd waits like Acquire; the deferred reply carries the fd. */
        th = test_acquire_ok(f->client, "db", NULL);
        ca = test_acquire_fd_async(a, "db", WAIT_FOREVER("shared"));
        g_assert_cmpuint(test_get_property_u(a, "WaiterCount"), ==, 1);
        assert_call_pending(ca);
        test_unlock_ok(f->client, "db");
        fd = test_call_wait_fd(ca, &ta);
        g_assert_cmpuint(ta, >, th);
        assert_pipe_write_end(fd);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpstr(h->scope, ==, "fd");
        g_assert_cmpstr(h->sender, ==, test_unique_name(a));
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* And that fd is the hold. */
        cw = queue_waiter(w, "db", WAIT_FOREVER(NULL), 1);
        assert_call_pending(cw);
        g_assert_cmpint(close(TAKE_FD(fd)), ==, 0);
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, ta);
}

static void test_fd_passed_to_child(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus);
        g_autoptr(TestClient) child = NULL;
        g_autoptr(TestCall) cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        uint64_t tf, tw;
        int fd;

        fd = test_acquire_fd_ok(f->client, "db", NULL, &tf);
        child = test_client_start_holding_fd(f->bus, fd);
        g_assert_cmpint(close(fd), ==, 0);

        /* Our copy is closed, the child's keeps the pipe open: nothing for
         * the daemon to see, the hold stays. */
        g_assert_cmpuint(owner_single(&holders, f->client, "db")->token, ==, tf);
        g_clear_pointer(&holders, g_ptr_array_unref);
        cw = queue_waiter(w, "db", WAIT_FOREVER(NULL), 1);
        assert_call_pending(cw);
        g_assert_cmpuint(owner_single(&holders, f->client, "db")->token, ==, tf);
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* The child exits: the last copy is gone. */
        test_client_finish(child);
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, tf);
        g_assert_cmpstr(owner_single(&holders, f->client, "db")->sender, ==, test_unique_name(w));
}

static void test_fd_outlives_connection(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus);
        _cleanup_close_ int fd = -1;
        g_autoptr(TestCall) cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *sender = NULL;
        const TestHolder *h;
        sd_bus *c;
        uint64_t tf, tw;

        /* The connection that acquired it goes (see
         * /bus/wait/waiter-disconnects on why Owner sees that at once). */
        c = test_bus_connect(f->bus);
        sender = g_strdup(test_unique_name(c));
        fd = test_acquire_fd_ok(c, "db", NULL, &tf);
        test_bus_disconnect(f->client, c);

        h = owner_single(&holders, f->client, "db");
        g_assert_cmpstr(h->scope, ==, "fd");
        g_assert_cmpstr(h->sender, ==, sender);
        g_assert_cmpuint(h->token, ==, tf);
        g_clear_pointer(&holders, g_ptr_array_unref);

        cw = queue_waiter(w, "db", WAIT_FOREVER(NULL), 1);
        assert_call_pending(cw);
        g_assert_cmpint(close(TAKE_FD(fd)), ==, 0);
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, tf);
}

static void test_fd_no_scope(TestFixture *f, gconstpointer data) {
        static const char *const scopes[] = { "connection", "persistent", "fd", NULL };

        for (size_t i = 0; scopes[i]; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                int r, fd = -1;

                r = test_acquire_fd(f->client, "db", &(TestAcquireOptions) { .scope = scopes[i] }, &fd, NULL,
                                    &error);
                if (r >= 0)
                        close(fd);
                assert_call_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, NULL);
                if (!strstr(strempty(error.message), "'scope'")) {
                        g_autofree char *m = g_strdup_printf("InvalidArgs message \"%s\" does not name 'scope'",
                                                             strempty(error.message));

                        g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, m);
                }
        }
        test_assert_not_locked(f->client, "db");
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
}

/* --- TTL and Refresh -------------------------------------------------------- */

/* Waits for the grant of cw and checks it came no earlier than `expires`
 * (CLOCK_REALTIME µs): the daemon's timer fires at or after it, and we
 * read the clock after the reply. */
static uint64_t wait_grant_after(TestCall *cw, uint64_t expires) {
        uint64_t token = test_call_wait_token(cw), now = test_now_realtime();

        if (now < expires) {
                g_autofree char *m = g_strdup_printf("granted %" PRIu64 " µs before the hold's expiry",
                                                     expires - now);

                g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, m);
        }
        return token;
}

static void test_ttl_expiry(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *holder = test_bus_connect(f->bus),
                *w = test_bus_connect(f->bus), *w2 = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) cw = NULL, cw2 = NULL;
        g_autoptr(TestClient) k = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *message = NULL;
        const TestHolder *h;
        uint64_t th, tw, tp, tw2, expires;
        int r;

        /* A connection hold with a TTL of 300 ms. */
        th = test_acquire_ok(holder, "db", &(TestAcquireOptions) { .has_ttl = true, .ttl = 300U * USEC_PER_MSEC });
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->token, ==, th);
        g_assert_cmpuint(h->expires, ==, h->since + 300U * USEC_PER_MSEC);
        expires = h->expires;
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* Its expiry is the event a waiter waits for. */
        cw = queue_waiter(w, "db", WAIT_FOREVER(NULL), 1);
        tw = wait_grant_after(cw, expires);
        g_assert_cmpuint(tw, >, th);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpstr(h->sender, ==, test_unique_name(w));
        g_assert_cmpuint(h->expires, ==, 0);
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* The expired holder's connection holds nothing any more. */
        message = not_owner_message("db", getuid(), "unlocked", getuid());
        r = test_unlock(holder, "db", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        sd_bus_error_free(&error);
        g_clear_pointer(&message, g_free);
        message = not_owner_message("db", getuid(), "refreshed", getuid());
        r = test_refresh(holder, "db", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        sd_bus_error_free(&error);

        /* A persistent hold expires the same way. It must be another
         * uid's for us to wait for it (our own would be re-entry). */
        if (geteuid() != 0) {
                g_test_message("Not root: skipping the persistent TTL part");
                return;
        }
        k = start_served(f->bus, TEST_OTHER_UID, NULL);
        tp = test_client_command_ok(k, "Acquire p scope=persistent ttl=%" PRIu64, 300U * USEC_PER_MSEC);
        h = owner_single(&holders, f->client, "p");
        g_assert_cmpstr(h->scope, ==, "persistent");
        g_assert_cmpuint(h->token, ==, tp);
        g_assert_cmpuint(h->expires, ==, h->since + 300U * USEC_PER_MSEC);
        expires = h->expires;
        g_clear_pointer(&holders, g_ptr_array_unref);
        cw2 = queue_waiter(w2, "p", WAIT_FOREVER(NULL), 1);
        tw2 = wait_grant_after(cw2, expires);
        g_assert_cmpuint(tw2, >, tp);
        g_assert_cmpstr(owner_single(&holders, f->client, "p")->sender, ==, test_unique_name(w2));
}

static void test_ttl_refresh(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *holder = test_bus_connect(f->bus),
                *other = test_bus_connect(f->bus), *w = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *message = NULL, *not_locked = NULL;
        const TestHolder *h;
        uint64_t th, e1, e2, before, tw;
        int r;

        /* 600 ms: the Refresh below comes long before the first expiry. */
        th = test_acquire_ok(holder, "db", &(TestAcquireOptions) { .has_ttl = true, .ttl = 600U * USEC_PER_MSEC });
        h = owner_single(&holders, f->client, "db");
        e1 = h->expires;
        g_assert_cmpuint(e1, ==, h->since + 600U * USEC_PER_MSEC);
        g_clear_pointer(&holders, g_ptr_array_unref);

        before = test_now_realtime();
        e2 = test_refresh_ok(holder, "db");
        g_assert_cmpuint(e2, >, e1);
        g_assert_cmpuint(e2, >=, before + 600U * USEC_PER_MSEC);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->expires, ==, e2);
        g_assert_cmpuint(h->token, ==, th);
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* A hold without TTL: 0. */
        (void) test_acquire_ok(holder, "plain", NULL);
        g_assert_cmpuint(test_refresh_ok(holder, "plain"), ==, 0);

        /* Not the caller's: another connection of the uid (a connection
         * hold is its connection's), another uid. Free: NotLocked. */
        message = not_owner_message("db", getuid(), "refreshed", getuid());
        r = test_refresh(other, "db", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        sd_bus_error_free(&error);
        if (geteuid() == 0) {
                g_autofree char *m = not_owner_message("db", 0, "refreshed", TEST_OTHER_UID);
                g_autofree char *expected = error_result(LOCKBUS_ERROR_NOT_OWNER, m);
                g_autoptr(TestClient) c = start_served(f->bus, TEST_OTHER_UID, NULL);

                assert_client_command(c, expected, "Refresh db");
        }
        not_locked = not_locked_message("free");
        r = test_refresh(holder, "free", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, not_locked);
        sd_bus_error_free(&error);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->expires, ==, e2);
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* It is released at the new expiry, not the old one. */
        cw = queue_waiter(w, "db", WAIT_FOREVER(NULL), 1);
        tw = wait_grant_after(cw, e2);
        g_assert_cmpuint(tw, >, th);
}

/* --- Break -------------------------------------------------------------------- */

static void test_break_root(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestClient) n1 = NULL, n2 = NULL, m = NULL;
        g_autoptr(TestCall) cw = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *mode = NULL, *not_owner = NULL, *e_not_owner = NULL, *not_locked = NULL;
        const TestHolder *h;
        uint64_t t1, t2, t3 = 0, tw;
        uid_t uid2;
        int r;

        if (test_skip_unless_root())
                return;

        /* Shared holds of 65534 on two connections, and a persistent one
         * of another user (a persistent hold is its uid's, so 65534 cannot
         * have both). */
        n1 = start_served(f->bus, TEST_OTHER_UID, NULL);
        n2 = start_served(f->bus, TEST_OTHER_UID, NULL);
        t1 = test_client_command_ok(n1, "Acquire db mode=shared");
        t2 = test_client_command_ok(n2, "Acquire db mode=shared");
        uid2 = test_second_uid();
        if (uid2 > 0) {
                m = start_served(f->bus, uid2, NULL);
                t3 = test_client_command_ok(m, "Acquire db mode=shared scope=persistent");
        }
        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(holders->len, ==, uid2 > 0 ? 3 : 2);
        g_assert_cmpuint(((TestHolder *) holders->pdata[0])->uid, ==, TEST_OTHER_UID);
        g_assert_cmpuint(((TestHolder *) holders->pdata[1])->uid, ==, TEST_OTHER_UID);
        if (uid2 > 0) {
                g_assert_cmpuint(((TestHolder *) holders->pdata[2])->uid, ==, uid2);
                g_assert_cmpstr(((TestHolder *) holders->pdata[2])->scope, ==, "persistent");
        }
        g_clear_pointer(&holders, g_ptr_array_unref);

        w = test_bus_connect(f->bus);
        cw = queue_waiter(w, "db", WAIT_FOREVER("exclusive"), 1);

        /* Root breaks it: every hold goes, the waiter is served. */
        test_break_ok(f->client, "db");
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, MAX(MAX(t1, t2), t3));
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->uid, ==, 0);
        g_assert_cmpstr(h->sender, ==, test_unique_name(w));
        g_clear_pointer(&holders, g_ptr_array_unref);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        not_owner = not_owner_message("db", 0, "unlocked", TEST_OTHER_UID);
        e_not_owner = error_result(LOCKBUS_ERROR_NOT_OWNER, not_owner);
        assert_client_command(n1, e_not_owner, "Unlock db");
        assert_client_command(n2, e_not_owner, "Unlock db");
        if (uid2 > 0) {
                g_autofree char *m2 = not_owner_message("db", 0, "unlocked", uid2);
                g_autofree char *e2 = error_result(LOCKBUS_ERROR_NOT_OWNER, m2);

                assert_client_command(m, e2, "Unlock db");
        }

        /* Free: NotLocked. */
        not_locked = not_locked_message("free");
        r = test_break(f->client, "free", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, not_locked);
        sd_bus_error_free(&error);

        /* The broken holds are gone from disk too: after a crash only the
         * waiter's connection hold is back (a left-over file of n1 or n2,
         * whose connections live on, would come back first: earlier
         * token). */
        test_bus_kill_daemon(f->bus);
        h = owner_single(&holders, f->client, "db");
        g_assert_cmpuint(h->token, ==, tw);
        g_assert_cmpstr(h->sender, ==, test_unique_name(w));
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* Breaking the last hold frees it. */
        test_break_ok(f->client, "db");
        test_assert_not_locked(f->client, "db");
}

static void test_break_denied(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *c = test_bus_connect(f->bus);
        static const char *const resources[] = { "db", "db2", "free", "own", NULL };
        g_autoptr(TestClient) n = NULL;
        g_autoptr(GPtrArray) before = NULL, after = NULL;
        uid_t uid = other_uid();

        (void) test_lock_ok(f->client, "db");
        (void) test_acquire_ok(c, "db2", &(TestAcquireOptions) { .mode = "shared" });
        n = start_served(f->bus, uid, NULL);
        (void) test_client_command_ok(n, "Lock own");
        before = test_list_locks_ok(f->client);
        g_assert_cmpuint(before->len, ==, 3);

        /* Others' holds, a free resource (authorization comes first, so
         * it tells nothing), and even its own. No polkit runs on this bus:
         * the daemon fails closed and says why after the refusal. */
        for (size_t i = 0; resources[i]; i++) {
                g_autofree char *m = access_denied_message(resources[i], uid);
                g_autofree char *expected = error_result(SD_BUS_ERROR_ACCESS_DENIED, m);
                g_autofree char *got = test_client_command(n, "Break %s", resources[i]);

                g_assert_nonnull(got);
                if (!g_str_has_prefix(got, expected) || !strstr(got, "(polkit: "))
                        g_error("Break %s: expected \"%s (polkit: …)\", got \"%s\"", resources[i], expected, got);
        }

        /* Nothing changed. */
        after = test_list_locks_ok(f->client);
        g_assert_cmpuint(after->len, ==, before->len);
        for (guint i = 0; i < after->len; i++) {
                const TestHolder *a = after->pdata[i], *b = before->pdata[i];

                g_assert_cmpstr(a->resource, ==, b->resource);
                g_assert_cmpstr(a->sender, ==, b->sender);
                g_assert_cmpuint(a->token, ==, b->token);
        }
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
}

/* --- Exit on idle ------------------------------------------------------------- */

static const char *const idle_args[] = { "--idle-timeout=0.3", NULL };

/* Acquire, returning the token and the unique name of the daemon that
 * granted it (the reply's sender). */
static uint64_t acquire_from(sd_bus *bus, const char *resource, const TestAcquireOptions *o, char **ret_daemon) {
        g_autoptr(TestCall) c = test_acquire_async(bus, resource, o);
        uint64_t token = test_call_wait_token(c);

        *ret_daemon = g_strdup(sd_bus_message_get_sender(test_call_reply(c)));
        g_assert_true(g_str_has_prefix(*ret_daemon, ":"));
        return token;
}

static void test_idle_exit_and_reactivate(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *keeper = test_bus_connect(f->bus), *w = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestNameWatch) watch = NULL, wwatch = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *d1 = NULL, *d2 = NULL, *d3 = NULL, *d4 = NULL;
        const TestHolder *h;
        _cleanup_close_ int pidfd1 = -1;
        uint64_t tc, tp, tq, tk = 0, since, expires;
        pid_t pid1, pid2;
        int r, fd;

        /* Subscribed before the daemon first runs. */
        watch = test_bus_watch_name(f->client, LOCKBUS_BUS_NAME);

        /* 1. A connection hold keeps the daemon: with a TTL of a second
         * (over three idle periods) the daemon must still own the name when
         * the hold expires; it leaves only afterwards. Both are events we
         * can wait for: the loss of the name, then the clock checked
         * against the expiry the daemon reported. */
        tc = acquire_from(keeper, "conn", &(TestAcquireOptions) { .has_ttl = true, .ttl = USEC_PER_SEC }, &d1);
        pid1 = test_bus_pid_of(f->bus, d1);
        g_assert_cmpint(pid1, >, 0);
        pidfd1 = test_pidfd_open(pid1);
        g_assert_cmpint(pidfd1, >=, 0);
        tp = test_lock_ok(f->client, "p");
        h = owner_single(&holders, f->client, "conn");
        expires = h->expires;
        g_assert_cmpuint(expires, >, 0);
        g_clear_pointer(&holders, g_ptr_array_unref);
        h = owner_single(&holders, f->client, "p");
        since = h->since;
        g_clear_pointer(&holders, g_ptr_array_unref);

        test_name_watch_wait_lost_by(watch, d1);
        g_assert_cmpuint(test_now_realtime(), >=, expires);
        /* And then the process exits (after answering what was queued). */
        test_pidfd_wait_exit(pidfd1, "the first lockbusd to exit");

        /* 2. The next call activates a new instance; the persistent hold
         * is back as it was, tokens go on above every earlier one. */
        h = owner_single(&holders, f->client, "p");
        g_assert_cmpuint(h->token, ==, tp);
        g_assert_cmpuint(h->since, ==, since);
        g_assert_cmpstr(h->scope, ==, "persistent");
        g_clear_pointer(&holders, g_ptr_array_unref);
        tq = acquire_from(keeper, "conn2", NULL, &d2);
        g_assert_cmpstr(d2, !=, d1);
        pid2 = test_bus_pid_of(f->bus, d2);
        g_assert_cmpint(pid2, >, 0);
        g_assert_cmpint(pid2, !=, pid1);
        g_assert_cmpuint(tq, >, MAX(tc, tp));
        test_assert_not_locked(f->client, "conn");

        /* 3. A waiter keeps it (needs a persistent hold of another uid to
         * wait for: one's own is re-entry, refused at once). The waiter's
         * 1 s timeout is the event; its connection also watches the name,
         * and the bus keeps the order of what it sends there, so a name
         * released before the Timeout was sent would be seen first. */
        if (geteuid() == 0) {
                g_autoptr(TestClient) k = start_served(f->bus, TEST_OTHER_UID, NULL);
                g_autoptr(TestCall) cw = NULL;
                g_autofree char *message = NULL;
                sd_bus *kc = keeper;
                pid_t kpid = k->pid;

                tk = test_client_command_ok(k, "Lock theirs");
                test_client_finish(k);

                w = test_bus_connect(f->bus);
                wwatch = test_bus_watch_name(w, LOCKBUS_BUS_NAME);
                cw = queue_waiter(w, "theirs", &(TestAcquireOptions) { .has_timeout = true, .timeout = USEC_PER_SEC },
                                  1);
                /* Now only the waiter is left. */
                keeper = NULL;
                test_bus_disconnect(f->client, kc);

                test_call_wait(cw);
                g_assert_false(test_name_watch_lost_by(wwatch, d2));
                r = test_call_result(cw, &error);
                message = g_strdup_printf("Timed out waiting for resource 'theirs', locked by uid %u (pid %d, %s)",
                                          (unsigned) TEST_OTHER_UID, (int) kpid, CHILD_COMM);
                assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, message);
                sd_bus_error_free(&error);
                g_assert_cmpstr(sd_bus_message_get_sender(test_call_reply(cw)), ==, d2);
        } else {
                g_test_message("Not root: no persistent hold of another uid to wait for; "
                               "skipping the waiter part");
                test_bus_disconnect(f->client, TAKE_PTR(keeper));
        }
        test_name_watch_wait_lost_by(watch, d2);

        /* 4. An fd hold keeps it until its fd is closed. */
        fd = test_acquire_fd_ok(f->client, "fd", NULL, NULL);
        d3 = test_bus_daemon_name(f->bus);
        g_assert_nonnull(d3);
        g_assert_cmpstr(d3, !=, d2);
        g_assert_cmpint(close(fd), ==, 0);
        test_name_watch_wait_lost_by(watch, d3);

        /* 5. A connection hold until its connection closes. */
        keeper = test_bus_connect(f->bus);
        (void) acquire_from(keeper, "conn3", NULL, &d4);
        g_assert_cmpstr(d4, !=, d3);
        test_bus_disconnect(f->client, TAKE_PTR(keeper));
        test_name_watch_wait_lost_by(watch, d4);

        /* Through four exits, the persistent holds are still there. */
        g_assert_cmpuint(owner_single(&holders, f->client, "p")->token, ==, tp);
        g_clear_pointer(&holders, g_ptr_array_unref);
        if (tk > 0)
                g_assert_cmpuint(owner_single(&holders, f->client, "theirs")->token, ==, tk);
        test_assert_not_locked(f->client, "fd");
        test_assert_not_locked(f->client, "conn3");
}

static const char *const burst_args[] = { "--idle-timeout=0.05", NULL };

#define BURST_CLIENTS 4U
#define BURST_BATCHES 4U
#define BURST_PAIRS 25U         /* Lock + Unlock: 200 calls per client */

typedef struct BurstClient {
        unsigned index;
        bool wait_for_exit;     /* between batches, until io.lockbus1 drops */
} BurstClient;

static int burst_name_lost(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *name, *old_owner, *new_owner;
        unsigned *n_lost = userdata;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) > 0 && !*new_owner)
                (*n_lost)++;
        return 0;
}

/* Child: no g_assert (see bus-test.h). Sends one line per failure, then
 * "done CALLS FAILURES". */
static int child_burst(sd_bus *bus, int fd, void *userdata) {
        const BurstClient *bc = userdata;
        unsigned n_lost = 0, n_calls = 0, n_failed = 0;
        uint64_t last = 0;
        int r;

        r = sd_bus_add_match(bus, NULL,
                             "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                             "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" LOCKBUS_BUS_NAME "'",
                             burst_name_lost, &n_lost);
        if (r < 0) {
                test_client_send(fd, "error setup: match: %s", g_strerror(-r));
                return 2;
        }

        for (unsigned batch = 0; batch < BURST_BATCHES; batch++) {
                for (unsigned i = 0; i < BURST_PAIRS; i++) {
                        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                        g_autofree char *resource = g_strdup_printf("burst-%u-%u", bc->index, i);
                        uint64_t token = 0;

                        n_calls++;
                        r = test_lock(bus, resource, &token, &error);
                        if (r < 0) {
                                g_autofree char *result = test_format_result(r, &error);

                                test_client_send(fd, "Lock %s (batch %u): %s", resource, batch, result);
                                n_failed++;
                                continue;
                        }
                        if (token <= last) {
                                test_client_send(fd, "Lock %s: token %" PRIu64 " after %" PRIu64,
                                                 resource, token, last);
                                n_failed++;
                        }
                        last = token;

                        n_calls++;
                        r = test_unlock(bus, resource, &error);
                        if (r < 0) {
                                g_autofree char *result = test_format_result(r, &error);

                                test_client_send(fd, "Unlock %s (batch %u): %s", resource, batch, result);
                                n_failed++;
                        }
                }

                if (bc->wait_for_exit && batch + 1 < BURST_BATCHES) {
                        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;
                        unsigned seen;

                        /* What already came in counts as before. */
                        while ((r = sd_bus_process(bus, NULL)) > 0)
                                ;
                        seen = n_lost;
                        while (r >= 0 && n_lost == seen) {
                                uint64_t n = test_now_monotonic();

                                if (n >= deadline) {
                                        test_client_send(fd, "batch %u: io.lockbus1 did not drop", batch);
                                        n_failed++;
                                        break;
                                }
                                r = sd_bus_process(bus, NULL);
                                if (r == 0)
                                        r = sd_bus_wait(bus, deadline - n);
                        }
                        if (r < 0) {
                                test_client_send(fd, "batch %u: bus: %s", batch, g_strerror(-r));
                                return 2;
                        }
                }
        }

        test_client_send(fd, "done %u %u", n_calls, n_failed);
        return 0;
}

static void test_idle_burst(TestFixture *f, gconstpointer data) {
        g_autoptr(TestNameWatch) watch = NULL;
        g_autoptr(GString) failures = g_string_new(NULL);
        BurstClient bcs[BURST_CLIENTS];
        TestClient *clients[BURST_CLIENTS];
        unsigned restarts;

        watch = test_bus_watch_name(f->client, LOCKBUS_BUS_NAME);

        /* Half of them push on, half wait for the daemon to go between
         * batches (so there are restarts, with calls from the others
         * arriving around them); half run as another user when root. */
        for (unsigned i = 0; i < BURST_CLIENTS; i++) {
                uid_t uid = (i / 2 == 1) ? other_uid() : getuid();

                bcs[i] = (BurstClient) { .index = i, .wait_for_exit = i % 2 == 0 };
                clients[i] = test_client_start(f->bus, uid, CHILD_COMM, child_burst, &bcs[i]);
        }

        for (unsigned i = 0; i < BURST_CLIENTS; i++) {
                g_autoptr(TestClient) c = clients[i];
                char *line;

                while ((line = test_client_read_line(c))) {
                        unsigned n_calls = 0, n_failed = 0;

                        if (sscanf(line, "done %u %u", &n_calls, &n_failed) == 2) {
                                g_assert_cmpuint(n_calls, ==, 2U * BURST_BATCHES * BURST_PAIRS);
                                if (n_failed > 0)
                                        g_string_append_printf(failures, "client %u: %u of %u calls failed\n",
                                                               i, n_failed, n_calls);
                        } else
                                g_string_append_printf(failures, "client %u: %s\n", i, line);
                        g_free(line);
                }
                test_client_wait(c);
        }
        if (failures->len > 0)
                g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, failures->str);

        /* Every signal the bus sent us so far, counted. */
        test_bus_sync(f->client);
        restarts = test_name_watch_n_gone(watch);
        g_test_message("io.lockbus1 dropped %u times during the burst", restarts);
        g_assert_cmpuint(restarts, >, 0);

        /* Nothing left behind; the burst's last token is below a new one. */
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 0);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/bus/wait/fifo-mixed", test_wait_fifo_mixed);
        test_add("/bus/wait/timeout-short", test_wait_timeout_short);
        test_add("/bus/wait/timeout-long", test_wait_timeout_long);
        test_add("/bus/wait/forever", test_wait_forever);
        test_add("/bus/wait/waiter-disconnects", test_wait_waiter_disconnects);
        test_add("/bus/wait/holder-killed", test_wait_holder_killed);
        test_add_with_args("/bus/wait/quota-waiters", quota_args, test_quota_waiters);
        test_add_with_args("/bus/quota/locks", quota_args, test_quota_locks);
        test_add("/bus/fd/close-releases", test_fd_close_releases);
        test_add("/bus/fd/waits", test_fd_waits);
        test_add("/bus/fd/passed-to-child", test_fd_passed_to_child);
        test_add("/bus/fd/outlives-connection", test_fd_outlives_connection);
        test_add("/bus/fd/no-scope", test_fd_no_scope);
        test_add("/bus/ttl/expiry", test_ttl_expiry);
        test_add("/bus/ttl/refresh", test_ttl_refresh);
        test_add("/bus/break/root", test_break_root);
        test_add("/bus/break/denied", test_break_denied);
        test_add_with_args("/bus/idle/exit-and-reactivate", idle_args, test_idle_exit_and_reactivate);
        test_add_with_args("/bus/idle/burst", burst_args, test_idle_burst);

        return g_test_run();
}
