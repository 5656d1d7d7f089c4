/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The brokerless fast path: lockbusd serves io.lockbus1.Manager peer to
 * peer on DIR/run/.direct.sock, taking the caller's identity from the
 * socket (SO_PEERCRED). Against a real lockbusd on a private system-like
 * bus: the same calls, tokens and errors as on the bus, connection holds and
 * waiters that go with their connection, fd holds, nothing but the manager
 * object on such a connection, the per-uid connection limit, what a daemon
 * crash does to direct holds, and no exit on idle while a direct connection
 * is open. The library's use of the socket is tested in
 * tests/client/test-client-direct.c.
 *
 * Nothing sleeps here (see test-bus-wait.c). The daemon handles the close
 * of a direct connection asynchronously; where a test needs it handled, the
 * connection holds a connection hold on a marker resource that a bus
 * connection waits for: the daemon drops all of a closed peer's holds and
 * waiters in one go, so that grant proves the close was handled. */

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "bus-test.h"

#define CHILD_COMM "lockbus-child"

#define USEC_PER_MSEC ((uint64_t) 1000U)
#define USEC_PER_SEC ((uint64_t) 1000000U)

#define PEER_IFACE "org.freedesktop.DBus.Peer"
#define PROPERTIES_IFACE "org.freedesktop.DBus.Properties"
#define INTROSPECTABLE_IFACE "org.freedesktop.DBus.Introspectable"

/* The daemon's limit of direct connections per uid but root
 * (DIRECT_CONNECTIONS_PER_USER_MAX in service/direct.h). */
#define DIRECT_CONNECTIONS_PER_USER 256U

#define WAIT_FOREVER(m) (&(TestAcquireOptions) { .mode = (m), .has_timeout = true, .timeout = UINT64_MAX })
/* A wait that ends with Timeout rather than hanging the test when the
 * daemon never releases what it should. */
#define WAIT_5S (&(TestAcquireOptions) { .has_timeout = true, .timeout = 5U * USEC_PER_SEC })

static char *not_owner_message(const char *resource, uid_t holder, const char *verb, uid_t caller) {
        return g_strdup_printf("Resource '%s' locked by uid %u cannot be %s by uid %u",
                               resource, (unsigned) holder, verb, (unsigned) caller);
}

static char *already_locked_message(const char *resource, uid_t uid, pid_t pid, const char *comm) {
        return g_strdup_printf("Resource '%s' already locked by uid %u (pid %d, %s)",
                               resource, (unsigned) uid, (int) pid, comm);
}

/* "error NAME: MESSAGE", as clients report a failed call. */
static char *error_result(const char *name, const char *message) {
        return g_strdup_printf("error %s: %s", name, message);
}

/* Queues an Acquire of `resource` on `bus` and returns once the daemon has
 * queued it: WaiterCount, asked on the same connection, is then
 * `n_waiting` (see bus-test.h, "Calls that wait"). */
static TestCall *queue_waiter(sd_bus *bus, const char *resource, const TestAcquireOptions *o, unsigned n_waiting) {
        TestCall *c = test_acquire_async(bus, resource, o);

        g_assert_cmpuint(test_get_property_u(bus, "WaiterCount"), ==, n_waiting);
        return c;
}

/* Owner(resource) has one holder: returns it. It lives in *holders, which
 * is replaced (an earlier array there is freed). */
static const TestHolder *owner_single(GPtrArray **holders, sd_bus *bus, const char *resource) {
        g_clear_pointer(holders, g_ptr_array_unref);
        *holders = test_owner_ok(bus, resource, NULL);
        g_assert_cmpuint((*holders)->len, ==, 1);
        return (*holders)->pdata[0];
}

/* The name ("direct:N") the daemon gave a direct connection: it takes a
 * connection hold on `marker`, whose Owner tells. */
static char *direct_name(sd_bus *observer, sd_bus *direct, const char *marker) {
        g_autoptr(GPtrArray) holders = NULL;
        const TestHolder *h;

        (void) test_acquire_ok(direct, marker, NULL);
        h = owner_single(&holders, observer, marker);
        if (!g_str_has_prefix(h->sender, "direct:"))
                g_error("A direct connection's hold has sender '%s', not direct:N", h->sender);
        return g_strdup(h->sender);
}

/* Closes a direct connection and returns once the daemon has handled the
 * close: the connection takes a connection hold on `marker`, `observer` (a
 * bus connection) waits for it, and the grant comes when the daemon drops
 * the closed peer's holds and waiters (all at once). */
static void close_direct_and_wait(sd_bus *observer, sd_bus *direct, const char *marker) {
        g_autoptr(TestCall) c = NULL;
        uint64_t tm, tw;

        tm = test_acquire_ok(direct, marker, NULL);
        c = test_acquire_async(observer, marker, WAIT_5S);
        assert_call_pending(c);
        sd_bus_flush_close_unref(direct);
        tw = test_call_wait_token(c);
        g_assert_cmpuint(tw, >, tm);
        test_unlock_ok(observer, marker);
}

static int ping(sd_bus *bus, sd_bus_error *error) {
        return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, PEER_IFACE, "Ping", error, NULL, NULL);
}

static void ping_ok(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = ping(bus, &error);
        assert_call_ok(r, &error);
}

/* --- Calls and identity -------------------------------------------------------- */

static void test_direct_lock_unlock(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *d = NULL, *d2 = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) holders = NULL, locks = NULL;
        g_autofree char *mode = NULL, *version = NULL, *lock_dir = NULL, *message = NULL, *sender = NULL;
        const TestHolder *h;
        uint64_t tb1, tp, tc, tc2, tb2, expires, before;
        int r;

        (void) test_bus_activate_daemon(f->bus);
        tb1 = test_lock_ok(f->client, "bus-p");

        /* A raw sd-bus peer: sd_bus_new() + the socket's address + fd
         * passing, no Hello. */
        d = test_bus_connect_direct(f->bus);
        g_assert_cmpint(sd_bus_is_bus_client(d), ==, 0);

        /* Lock and Acquire, with tokens of the bus's sequence. */
        tp = test_lock_ok(d, "direct-p");
        g_assert_cmpuint(tp, >, tb1);
        tc = test_acquire_ok(d, "direct-c", &(TestAcquireOptions) {
                                .mode = "shared", .description = "over the socket",
                                .has_ttl = true, .ttl = 3600U * USEC_PER_SEC,
                        });
        g_assert_cmpuint(tc, >, tp);

        /* Owner over the bus: the caller as the socket tells it. */
        holders = test_owner_ok(f->client, "direct-c", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        if (!g_str_has_prefix(h->sender, "direct:"))
                g_error("sender of a direct connection's hold: '%s', expected direct:N", h->sender);
        sender = g_strdup(h->sender);
        g_assert_cmpuint(h->uid, ==, geteuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
        g_assert_cmpstr(h->comm, ==, f->comm);
        g_assert_cmpuint(h->token, ==, tc);
        g_assert_cmpstr(h->scope, ==, "connection");
        g_assert_cmpstr(h->description, ==, "over the socket");
        g_assert_cmpuint(h->expires, ==, h->since + 3600U * USEC_PER_SEC);

        /* The same over the socket; the persistent hold has the same
         * sender. */
        h = owner_single(&holders, d, "direct-c");
        g_assert_cmpstr(h->sender, ==, sender);
        g_assert_cmpuint(h->token, ==, tc);
        h = owner_single(&holders, d, "direct-p");
        g_assert_cmpstr(h->sender, ==, sender);
        g_assert_cmpstr(h->scope, ==, "persistent");
        g_assert_cmpuint(h->uid, ==, geteuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
        g_assert_cmpstr(h->comm, ==, f->comm);
        g_assert_cmpuint(h->token, ==, tp);

        /* Another direct connection has another name. */
        d2 = test_bus_connect_direct(f->bus);
        tc2 = test_acquire_ok(d2, "direct-c2", NULL);
        g_assert_cmpuint(tc2, >, tc);
        h = owner_single(&holders, f->client, "direct-c2");
        g_assert_true(g_str_has_prefix(h->sender, "direct:"));
        g_assert_cmpstr(h->sender, !=, sender);

        /* The bus goes on above. */
        tb2 = test_acquire_ok(f->client, "bus-c", NULL);
        g_assert_cmpuint(tb2, >, tc2);

        /* Refresh over the socket. */
        before = test_now_realtime();
        expires = test_refresh_ok(d, "direct-c");
        g_assert_cmpuint(expires, >=, before + 3600U * USEC_PER_SEC);
        g_assert_cmpuint(owner_single(&holders, f->client, "direct-c")->expires, ==, expires);

        /* ListLocks over the socket: the bus's holds and the socket's. */
        locks = test_list_locks_ok(d);
        g_assert_cmpuint(locks->len, ==, 5);
        {
                static const char *const resources[] = { "bus-c", "bus-p", "direct-c", "direct-c2", "direct-p" };
                const uint64_t tokens[] = { tb2, tb1, tc, tc2, tp };

                for (size_t i = 0; i < G_N_ELEMENTS(resources); i++) {
                        const TestHolder *l = locks->pdata[i];

                        g_assert_cmpstr(l->resource, ==, resources[i]);
                        g_assert_cmpuint(l->token, ==, tokens[i]);
                        g_assert_cmpuint(l->uid, ==, geteuid());
                        if (g_str_has_prefix(resources[i], "bus-"))
                                g_assert_cmpstr(l->sender, ==, test_unique_name(f->client));
                        else
                                g_assert_true(g_str_has_prefix(l->sender, "direct:"));
                }
        }

        /* Properties over the socket. */
        version = test_get_property_s(d, "Version");
        g_assert_cmpstr(version, ==, g_getenv("LOCKBUS_VERSION"));
        lock_dir = test_get_property_s(d, "LockDirectory");
        g_assert_cmpstr(lock_dir, ==, f->bus->lock_dir);
        g_assert_cmpuint(test_get_property_u(d, "LockCount"), ==, 5);
        g_assert_cmpuint(test_get_property_u(d, "WaiterCount"), ==, 0);

        /* Errors as on the bus. Its own hold again: re-entry. */
        message = already_locked_message("direct-c", geteuid(), getpid(), f->comm);
        r = test_acquire(d, "direct-c", NULL, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);
        g_clear_pointer(&message, g_free);

        /* A connection hold of the bus connection is not the socket's, not
         * even for the same uid. */
        message = not_owner_message("bus-c", geteuid(), "unlocked", geteuid());
        r = test_unlock(d, "bus-c", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        sd_bus_error_free(&error);
        g_clear_pointer(&message, g_free);

        message = g_strdup("Resource 'free' not locked");
        r = test_unlock(d, "free", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, message);
        sd_bus_error_free(&error);
        g_clear_pointer(&message, g_free);

        r = test_lock(d, "", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
        sd_bus_error_free(&error);

        /* A persistent hold is its uid's: any connection of it, bus or
         * socket, unlocks it. */
        test_unlock_ok(d, "bus-p");
        test_unlock_ok(f->client, "direct-p");
        test_unlock_ok(d, "direct-c");
        test_assert_not_locked(f->client, "bus-p");
        test_assert_not_locked(d, "direct-p");
        test_assert_not_locked(f->client, "direct-c");
        g_assert_cmpuint(test_get_property_u(d, "LockCount"), ==, 2);

        /* Root breaks over the socket too (without polkit). */
        if (geteuid() == 0) {
                test_break_ok(d, "direct-c2");
                test_assert_not_locked(f->client, "direct-c2");
        }
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, geteuid() == 0 ? 1 : 2);
}

static void test_direct_other_uid(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) c = NULL;
        g_autoptr(GPtrArray) holders = NULL, locks = NULL;
        g_autofree char *m_not_owner = NULL, *e_not_owner = NULL, *m_refresh = NULL, *e_refresh = NULL,
                *m_locked = NULL, *e_locked = NULL;
        const TestHolder *h;
        uint64_t troot, t, tp;

        if (test_skip_unless_root())
                return;

        (void) test_bus_activate_daemon(f->bus);
        troot = test_lock_ok(f->client, "roots");

        c = test_client_start_direct(f->bus, TEST_OTHER_UID, CHILD_COMM, test_client_serve, NULL);

        /* Its identity is the socket's: uid, pid and comm of the process. */
        t = test_client_command_ok(c, "Acquire theirs description=direct");
        g_assert_cmpuint(t, >, troot);
        h = owner_single(&holders, f->client, "theirs");
        g_assert_cmpuint(h->uid, ==, TEST_OTHER_UID);
        g_assert_cmpuint(h->pid, ==, (uint32_t) c->pid);
        g_assert_cmpstr(h->comm, ==, CHILD_COMM);
        g_assert_true(g_str_has_prefix(h->sender, "direct:"));
        g_assert_cmpstr(h->scope, ==, "connection");
        g_assert_cmpuint(h->token, ==, t);
        tp = test_client_command_ok(c, "Lock theirs-p");
        h = owner_single(&holders, f->client, "theirs-p");
        g_assert_cmpuint(h->uid, ==, TEST_OTHER_UID);
        g_assert_cmpstr(h->scope, ==, "persistent");
        g_assert_cmpuint(h->token, ==, tp);

        /* Root's persistent lock is not theirs. */
        m_not_owner = not_owner_message("roots", 0, "unlocked", TEST_OTHER_UID);
        e_not_owner = error_result(LOCKBUS_ERROR_NOT_OWNER, m_not_owner);
        assert_client_command(c, e_not_owner, "Unlock roots");
        m_refresh = not_owner_message("roots", 0, "refreshed", TEST_OTHER_UID);
        e_refresh = error_result(LOCKBUS_ERROR_NOT_OWNER, m_refresh);
        assert_client_command(c, e_refresh, "Refresh roots");
        m_locked = already_locked_message("roots", 0, getpid(), f->comm);
        e_locked = error_result(LOCKBUS_ERROR_ALREADY_LOCKED, m_locked);
        assert_client_command(c, e_locked, "Lock roots");

        /* Break needs polkit, which is not on this bus: denied, for
         * another uid's hold, a free resource and its own alike. */
        for (size_t i = 0; i < 3; i++) {
                static const char *const resources[] = { "roots", "free", "theirs-p" };
                g_autofree char *m = g_strdup_printf("Breaking the lock on resource '%s' is not allowed for uid %u",
                                                     resources[i], (unsigned) TEST_OTHER_UID);
                g_autofree char *expected = error_result(SD_BUS_ERROR_ACCESS_DENIED, m);
                g_autofree char *got = test_client_command(c, "Break %s", resources[i]);

                if (!g_str_has_prefix(got, expected) || !strstr(got, "(polkit: "))
                        g_error("Break %s over the socket: expected \"%s (polkit: …)\", got \"%s\"",
                                resources[i], expected, got);
        }

        /* Nothing changed. */
        g_assert_cmpuint(owner_single(&holders, f->client, "roots")->token, ==, troot);
        g_assert_cmpuint(owner_single(&holders, f->client, "theirs")->token, ==, t);
        g_assert_cmpuint(owner_single(&holders, f->client, "theirs-p")->token, ==, tp);

        /* Its own holds are its own to unlock. */
        assert_client_command(c, "ok", "Unlock theirs");
        assert_client_command(c, "ok", "Unlock theirs-p");
        locks = test_list_locks_ok(f->client);
        g_assert_cmpuint(locks->len, ==, 1);
        g_assert_cmpstr(((TestHolder *) locks->pdata[0])->resource, ==, "roots");
        test_client_finish(c);
}

/* The header fields of a message on a direct connection are the peer's own
 * words: there is no bus daemon to vouch for them. A peer that writes a
 * bus peer's unique name into the sender field must still be itself. */
typedef struct ForgeArgs {
        const char *known;      /* a unique name whose identity the daemon knows (it made calls) */
        const char *unknown;    /* a unique name on the bus that never called the daemon */
} ForgeArgs;

/* Child side: one call on the direct connection with the sender field set
 * to `sender`. No g_assert here (see bus-test.h). */
static char *forged_call(sd_bus *bus, const char *sender, const char *member, const char *resource) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                           member);
        if (r >= 0)
                r = sd_bus_message_set_sender(m, sender);
        if (r >= 0)
                /* Persistent: the hold stays when the child is gone. */
                r = g_str_equal(member, "Acquire") ? sd_bus_message_append(m, "sa{sv}", resource, 1,
                                                                           "scope", "s", "persistent")
                                                   : sd_bus_message_append(m, "s", resource);
        if (r < 0)
                return g_strdup_printf("error test: building %s: %s", member, g_strerror(-r));
        r = sd_bus_call(bus, m, 0, &error, NULL);
        return test_format_result(r, &error);
}

static int forge_child(sd_bus *bus, int fd, void *userdata) {
        const ForgeArgs *a = userdata;
        static const char *const calls[][2] = {
                { "Unlock", "roots" }, { "Break", "roots" }, { "Refresh", "roots" }, { "Acquire", "forged" },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(calls); i++) {
                g_autofree char *result = forged_call(bus, a->known, calls[i][0], calls[i][1]);

                test_client_send(fd, "%s", result);
        }
        {
                g_autofree char *result = forged_call(bus, a->unknown, "Acquire", "forged-unknown");

                test_client_send(fd, "%s", result);
        }
        return 0;
}

static void test_direct_forged_sender(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *v = test_bus_connect(f->bus);
        g_autoptr(TestClient) c = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *e_unlock = NULL, *m_unlock = NULL, *e_refresh = NULL, *m_refresh = NULL, *m_break = NULL;
        g_autofree char *r_unlock = NULL, *r_break = NULL, *r_refresh = NULL, *r_acquire = NULL, *r_unknown = NULL;
        g_autofree char *known = NULL, *unknown = NULL;
        const TestHolder *h;
        uid_t uid = geteuid() == 0 ? TEST_OTHER_UID : geteuid();
        uint64_t troot;
        ForgeArgs a;
        pid_t pid;

        (void) test_bus_activate_daemon(f->bus);
        /* f->client is known to the daemon, v is not (no call yet). */
        troot = test_lock_ok(f->client, "roots");
        known = g_strdup(test_unique_name(f->client));
        unknown = g_strdup(test_unique_name(v));
        a = (ForgeArgs) { .known = known, .unknown = unknown };

        c = test_client_start_direct(f->bus, uid, CHILD_COMM, forge_child, &a);
        pid = c->pid;
        r_unlock = test_client_read_line(c);
        r_break = test_client_read_line(c);
        r_refresh = test_client_read_line(c);
        r_acquire = test_client_read_line(c);
        r_unknown = test_client_read_line(c);
        g_assert_nonnull(r_unknown);
        test_client_wait(c);

        if (uid != geteuid()) {
                /* Root's lock is not its to unlock, break or refresh. */
                m_unlock = not_owner_message("roots", geteuid(), "unlocked", uid);
                e_unlock = error_result(LOCKBUS_ERROR_NOT_OWNER, m_unlock);
                g_assert_cmpstr(r_unlock, ==, e_unlock);
                m_refresh = not_owner_message("roots", geteuid(), "refreshed", uid);
                e_refresh = error_result(LOCKBUS_ERROR_NOT_OWNER, m_refresh);
                g_assert_cmpstr(r_refresh, ==, e_refresh);
                m_break = g_strdup_printf("error %s: Breaking the lock on resource 'roots' is not allowed for uid %u",
                                          SD_BUS_ERROR_ACCESS_DENIED, (unsigned) uid);
                if (!g_str_has_prefix(r_break, m_break))
                        g_error("Break over the socket as uid %u with the sender field set to root's %s: "
                                "expected \"%s…\", got \"%s\"", (unsigned) uid, known, m_break, r_break);
                h = owner_single(&holders, f->client, "roots");
                g_assert_cmpuint(h->token, ==, troot);
                g_assert_cmpuint(h->uid, ==, geteuid());
        }

        /* What it did, it did as itself. */
        h = owner_single(&holders, f->client, "forged");
        g_assert_cmpuint(h->uid, ==, uid);
        g_assert_cmpuint(h->pid, ==, (uint32_t) pid);
        g_assert_cmpstr(h->comm, ==, CHILD_COMM);
        if (!g_str_has_prefix(h->sender, "direct:"))
                g_error("A hold taken over the socket with the sender field set to %s was recorded for sender '%s'",
                        known, h->sender);
        g_assert_cmpstr(r_acquire, ==, "ok");
        g_assert_cmpstr(r_unknown, ==, "ok");
        h = owner_single(&holders, f->client, "forged-unknown");
        g_assert_cmpuint(h->uid, ==, uid);
        g_assert_cmpuint(h->pid, ==, (uint32_t) pid);
        if (!g_str_has_prefix(h->sender, "direct:"))
                g_error("A hold taken over the socket with the sender field set to %s was recorded for sender '%s'",
                        unknown, h->sender);

        /* The bus peers whose names it wrote are still themselves. */
        (void) test_acquire_ok(v, "v-check", NULL);
        h = owner_single(&holders, f->client, "v-check");
        g_assert_cmpuint(h->uid, ==, geteuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
        g_assert_cmpstr(h->sender, ==, unknown);
        (void) test_acquire_ok(f->client, "client-check", NULL);
        h = owner_single(&holders, f->client, "client-check");
        g_assert_cmpuint(h->uid, ==, geteuid());
        g_assert_cmpstr(h->sender, ==, known);
}

/* --- Holds that go with the connection --------------------------------------- */

static void test_direct_connection_hold(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus), *wm = test_bus_connect(f->bus),
                *d3 = NULL;
        g_autoptr(TestCall) cw = NULL, c2 = NULL, c3 = NULL, cm = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *name2 = NULL, *name3 = NULL;
        const TestHolder *h;
        sd_bus *d, *d2;
        uint64_t td, tw, th, tm, t3;

        (void) test_bus_activate_daemon(f->bus);

        /* 1. A connection hold taken over the socket goes when that
         * connection closes: the waiter on the bus is granted. */
        d = test_bus_connect_direct(f->bus);
        td = test_acquire_ok(d, "c", NULL);
        cw = queue_waiter(w, "c", WAIT_5S, 1);
        assert_call_pending(cw);
        sd_bus_flush_close_unref(d);
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, td);
        h = owner_single(&holders, f->client, "c");
        g_assert_cmpstr(h->sender, ==, test_unique_name(w));
        g_assert_cmpuint(h->token, ==, tw);

        /* 2. A waiter on a direct connection that closes leaves the queue.
         * Two direct waiters behind our hold; d2 goes. */
        th = test_acquire_ok(f->client, "q", NULL);
        d2 = test_bus_connect_direct(f->bus);
        d3 = test_bus_connect_direct(f->bus);
        name2 = direct_name(f->client, d2, "marker2");
        name3 = direct_name(f->client, d3, "marker3");
        c2 = queue_waiter(d2, "q", WAIT_FOREVER(NULL), 1);
        c3 = queue_waiter(d3, "q", WAIT_FOREVER(NULL), 2);
        /* The marker: granted when the daemon has handled d2's close. */
        cm = queue_waiter(wm, "marker2", WAIT_FOREVER(NULL), 3);
        assert_call_pending(c3);
        assert_call_pending(cm);

        g_clear_pointer(&c2, test_call_free);
        sd_bus_flush_close_unref(d2);
        tm = test_call_wait_token(cm);
        g_assert_cmpstr(owner_single(&holders, f->client, "marker2")->sender, ==, test_unique_name(wm));

        /* Only d3 waits now, and it gets q next. */
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 1);
        g_assert_cmpuint(owner_single(&holders, f->client, "q")->token, ==, th);
        assert_call_pending(c3);
        test_unlock_ok(f->client, "q");
        t3 = test_call_wait_token(c3);
        g_assert_cmpuint(t3, >, tm);
        h = owner_single(&holders, f->client, "q");
        g_assert_cmpstr(h->sender, ==, name3);
        g_assert_cmpuint(h->token, ==, t3);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
        g_assert_cmpstr(name2, !=, name3);
}

static void assert_pipe_write_end(int fd) {
        struct stat st;
        int flags;

        g_assert_cmpint(fstat(fd, &st), ==, 0);
        g_assert_true(S_ISFIFO(st.st_mode));
        flags = fcntl(fd, F_GETFL);
        g_assert_cmpint(flags, >=, 0);
        g_assert_cmpint(flags & O_ACCMODE, ==, O_WRONLY);
}

static void test_direct_fd_hold(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus), *w2 = test_bus_connect(f->bus),
                *d2 = NULL;
        _cleanup_close_ int fd = -1, fd2 = -1;
        g_autoptr(TestCall) cw = NULL, ca = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *sender = NULL;
        const TestHolder *h;
        uint64_t tf, tw, th, ta;
        sd_bus *d;

        (void) test_bus_activate_daemon(f->bus);

        /* AcquireFd over the socket: the fd comes with the reply. */
        d = test_bus_connect_direct(f->bus);
        fd = test_acquire_fd_ok(d, "f", &(TestAcquireOptions) { .description = "fd over the socket" }, &tf);
        assert_pipe_write_end(fd);
        h = owner_single(&holders, f->client, "f");
        g_assert_true(g_str_has_prefix(h->sender, "direct:"));
        sender = g_strdup(h->sender);
        g_assert_cmpstr(h->scope, ==, "fd");
        g_assert_cmpuint(h->token, ==, tf);
        g_assert_cmpuint(h->uid, ==, geteuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
        g_assert_cmpstr(h->description, ==, "fd over the socket");

        /* The connection closes, the fd stays open: so does the hold. */
        close_direct_and_wait(w, d, "marker");
        h = owner_single(&holders, f->client, "f");
        g_assert_cmpstr(h->scope, ==, "fd");
        g_assert_cmpstr(h->sender, ==, sender);
        g_assert_cmpuint(h->token, ==, tf);

        /* Closing the fd ends it: the waiter is granted. */
        cw = queue_waiter(w2, "f", WAIT_5S, 1);
        assert_call_pending(cw);
        g_assert_cmpint(close(TAKE_FD(fd)), ==, 0);
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, tf);
        g_assert_cmpstr(owner_single(&holders, f->client, "f")->sender, ==, test_unique_name(w2));

        /* A deferred AcquireFd reply over the socket carries the fd too. */
        th = test_acquire_ok(f->client, "g", NULL);
        d2 = test_bus_connect_direct(f->bus);
        ca = test_acquire_fd_async(d2, "g", WAIT_FOREVER("shared"));
        g_assert_cmpuint(test_get_property_u(d2, "WaiterCount"), ==, 1);
        assert_call_pending(ca);
        test_unlock_ok(f->client, "g");
        fd2 = test_call_wait_fd(ca, &ta);
        g_assert_cmpuint(ta, >, th);
        assert_pipe_write_end(fd2);
        h = owner_single(&holders, f->client, "g");
        g_assert_cmpstr(h->scope, ==, "fd");
        g_assert_true(g_str_has_prefix(h->sender, "direct:"));
        g_assert_cmpstr(h->sender, !=, sender);
        g_clear_pointer(&cw, test_call_free);
        cw = queue_waiter(w, "g", WAIT_5S, 1);
        assert_call_pending(cw);
        g_assert_cmpint(close(TAKE_FD(fd2)), ==, 0);
        g_assert_cmpuint(test_call_wait_token(cw), >, ta);
}

/* A peer that did not negotiate fd passing cannot receive the fd of
 * AcquireFd. The daemon knows it on its side of the socket: it must say so
 * at once, not leave the call unanswered (a caller would wait for its
 * call's timeout), and hold nothing. */
static void test_direct_fd_hold_without_fd_passing(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *d = NULL, *w = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *path = NULL, *address = NULL, *result = NULL;
        g_autoptr(TestCall) cw = NULL;
        uint64_t tw;
        int r, fd = -1;

        (void) test_bus_activate_daemon(f->bus);
        path = test_bus_direct_socket(f->bus);
        address = g_strconcat("unix:path=", path, NULL);
        g_assert_cmpint(sd_bus_new(&d), >=, 0);
        g_assert_cmpint(sd_bus_set_address(d, address), >=, 0);
        g_assert_cmpint(sd_bus_negotiate_fds(d, false), >=, 0);
        g_assert_cmpint(sd_bus_set_method_call_timeout(d, TEST_TIMEOUT_USEC), >=, 0);
        g_assert_cmpint(sd_bus_start(d), >=, 0);
        ping_ok(d);

        r = test_acquire_fd(d, "f", NULL, &fd, NULL, &error);
        if (r >= 0)
                close(fd);
        result = test_format_result(r, &error);
        if (r >= 0 || sd_bus_error_has_names(&error, SD_BUS_ERROR_TIMEOUT, SD_BUS_ERROR_NO_REPLY))
                g_error("AcquireFd on a direct connection without fd passing: expected an error at once, got \"%s\"",
                        result);
        sd_bus_error_free(&error);

        /* Nothing held: a waiter on the bus is granted (the daemon may
         * release a grant it could not deliver asynchronously). */
        cw = test_acquire_async(w, "f", &(TestAcquireOptions) { .has_timeout = true, .timeout = 5U * USEC_PER_SEC });
        tw = test_call_wait_token(cw);
        g_assert_cmpuint(tw, >, 0);
        g_assert_cmpuint(test_get_property_u(d, "LockCount"), ==, 1);
}

/* --- What a direct connection offers ---------------------------------------------- */

static int call_method(sd_bus *bus, const char *path, const char *interface, const char *member,
                       sd_bus_error *error) {
        return sd_bus_call_method(bus, LOCKBUS_BUS_NAME, path, interface, member, error, NULL, NULL);
}

#define assert_error_name(r, error, name) \
        assert_call_error((r), (error), (name), NULL)

static void assert_introspection(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        g_autoptr(GDBusNodeInfo) node = NULL;
        g_autoptr(GError) gerror = NULL;
        g_autoptr(GPtrArray) names = g_ptr_array_new();
        static const char *const expected[] = {
                LOCKBUS_MANAGER_IFACE, INTROSPECTABLE_IFACE, PEER_IFACE, PROPERTIES_IFACE,
        };
        const char *xml;
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, INTROSPECTABLE_IFACE, "Introspect",
                               &error, &reply, NULL);
        assert_call_ok(r, &error);
        g_assert_cmpint(sd_bus_message_read(reply, "s", &xml), >, 0);
        node = g_dbus_node_info_new_for_xml(xml, &gerror);
        g_assert_no_error(gerror);

        for (GDBusInterfaceInfo **i = node->interfaces; i && *i; i++)
                g_ptr_array_add(names, (*i)->name);
        g_ptr_array_sort(names, test_compare_strings);
        g_assert_cmpuint(names->len, ==, G_N_ELEMENTS(expected));
        for (size_t i = 0; i < G_N_ELEMENTS(expected); i++)
                g_assert_cmpstr(names->pdata[i], ==, expected[i]);
        g_assert_true(!node->nodes || !node->nodes[0]);
}

static void test_direct_policy(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *d = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t t1, t2;
        int r;

        (void) test_bus_activate_daemon(f->bus);
        d = test_bus_connect_direct(f->bus);

        /* The manager with Introspectable, Properties and Peer, and no
         * other interface or child object. */
        assert_introspection(d);
        ping_ok(d);
        r = sd_bus_call_method(d, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, PEER_IFACE, "GetMachineId",
                               &error, &reply, NULL);
        assert_call_ok(r, &error);
        reply = sd_bus_message_unref(reply);
        r = sd_bus_call_method(d, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, PROPERTIES_IFACE, "GetAll",
                               &error, &reply, "s", LOCKBUS_MANAGER_IFACE);
        assert_call_ok(r, &error);
        reply = sd_bus_message_unref(reply);

        /* Another object path. */
        r = call_method(d, "/io/lockbus1/other", LOCKBUS_MANAGER_IFACE, "ListLocks", &error);
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_OBJECT);
        sd_bus_error_free(&error);
        r = call_method(d, "/org/freedesktop/DBus", INTROSPECTABLE_IFACE, "Introspect", &error);
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_OBJECT);
        sd_bus_error_free(&error);

        /* Another interface on the manager's path: sd-bus answers a method
         * call on it with UnknownMethod naming the interface (as on the
         * bus), Properties with UnknownInterface. */
        r = call_method(d, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", &error);
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_METHOD);
        g_assert_nonnull(strstr(error.message, "org.freedesktop.DBus.ObjectManager"));
        sd_bus_error_free(&error);
        r = sd_bus_call_method(d, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, PROPERTIES_IFACE, "GetAll",
                               &error, NULL, "s", "org.example.Other");
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_INTERFACE);
        sd_bus_error_free(&error);

        /* Another method, and a known one with wrong arguments. */
        r = call_method(d, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Steal", &error);
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_METHOD);
        sd_bus_error_free(&error);
        r = sd_bus_call_method(d, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Lock",
                               &error, NULL, "u", 42U);
        assert_error_name(r, &error, SD_BUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);

        /* Properties are read-only; unknown ones do not exist. */
        r = sd_bus_call_method(d, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, PROPERTIES_IFACE, "Set",
                               &error, NULL, "ssv", LOCKBUS_MANAGER_IFACE, "LockCount", "u", 7U);
        assert_error_name(r, &error, SD_BUS_ERROR_PROPERTY_READ_ONLY);
        sd_bus_error_free(&error);
        r = sd_bus_call_method(d, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, PROPERTIES_IFACE, "Get",
                               &error, NULL, "ss", LOCKBUS_MANAGER_IFACE, "Owner");
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_PROPERTY);
        sd_bus_error_free(&error);

        /* There is no bus daemon behind the socket: what only the bus
         * offers is not there, wherever it is asked for. */
        r = sd_bus_call_method(d, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello",
                               &error, NULL, NULL);
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_OBJECT);
        sd_bus_error_free(&error);
        r = sd_bus_call_method(d, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "RequestName", &error, NULL, "su", LOCKBUS_BUS_NAME, 0U);
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_OBJECT);
        sd_bus_error_free(&error);
        r = call_method(d, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus", "Hello", &error);
        assert_error_name(r, &error, SD_BUS_ERROR_UNKNOWN_METHOD);
        sd_bus_error_free(&error);

        /* And the daemon serves on, on both paths. */
        t1 = test_lock_ok(d, "after-direct");
        t2 = test_lock_ok(f->client, "after-bus");
        g_assert_cmpuint(t2, >, t1);
        g_assert_cmpuint(test_get_property_u(d, "LockCount"), ==, 2);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 2);
        assert_introspection(d);
}

static void direct_close(void *p) {
        sd_bus_flush_close_unref(p);
}

/* --- The per-uid connection limit ------------------------------------------------ */

/* A child with many direct connections (test_client_start_direct(), its
 * first connection is `bus`; userdata is the socket's path), under remote
 * control like test_client_serve(). Commands, each answered "= RESULT":
 *   open N        opens N more connections, each proven by a Ping
 *                 → "ok TOTAL", or the first failure ("error …"; that
 *                 connection is dropped and no more are opened)
 *   acquire I R   Acquire R on connection I (0-based) → "ok TOKEN"
 *   close I       closes connection I → "ok"
 *   raw           connects a socket that never says a word → "ok"
 *   raw-closed    waits (at most TEST_TIMEOUT_USEC) until the daemon has
 *                 closed that socket → "ok", else "error …"
 * No g_assert here (see bus-test.h). */
typedef struct LimitChild {
        GPtrArray *conns;       /* sd_bus*, NULL once closed */
        int raw;
} LimitChild;

static char *limit_child_open(LimitChild *lc, const char *path, unsigned n) {
        for (unsigned i = 0; i < n; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus *bus = NULL;
                int r;

                r = test_direct_connect(path, &bus);
                if (r >= 0)
                        r = ping(bus, &error);
                if (r < 0) {
                        g_autofree char *result = test_format_result(r, &error);

                        sd_bus_flush_close_unref(bus);
                        return g_strdup_printf("%s (connection %u)", result, lc->conns->len);
                }
                g_ptr_array_add(lc->conns, bus);
        }
        return g_strdup_printf("ok %u", lc->conns->len);
}

static char *limit_child_raw(LimitChild *lc, const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        if (strlen(path) >= sizeof(sa.sun_path))
                return g_strdup("error test: path too long");
        strcpy(sa.sun_path, path);
        lc->raw = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lc->raw < 0 || connect(lc->raw, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return g_strdup_printf("error errno: %s", g_strerror(errno));
        return g_strdup("ok");
}

static char *limit_child_raw_closed(LimitChild *lc) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;

        for (;;) {
                struct pollfd p = { .fd = lc->raw, .events = POLLIN };
                uint64_t n = test_now_monotonic();
                char buf[256];
                ssize_t k;
                int r;

                if (n >= deadline)
                        return g_strdup("error test: the daemon did not close the connection");
                r = poll(&p, 1, (int) ((deadline - n + 999U) / 1000U));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return g_strdup_printf("error errno: %s", g_strerror(errno));
                if (r == 0)
                        continue;
                k = read(lc->raw, buf, sizeof(buf));
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno != ECONNRESET)
                        return g_strdup_printf("error errno: %s", g_strerror(errno));
                if (k <= 0)
                        return g_strdup("ok");
                /* The daemon may have started to talk: it did not hear us. */
        }
}

static char *limit_child_command(LimitChild *lc, const char *path, const char *line) {
        g_auto(GStrv) words = g_strsplit(line, " ", -1);
        unsigned i;

        if (g_str_equal(words[0], "open") && words[1])
                return limit_child_open(lc, path, (unsigned) g_ascii_strtoull(words[1], NULL, 10));
        if (g_str_equal(words[0], "raw"))
                return limit_child_raw(lc, path);
        if (g_str_equal(words[0], "raw-closed"))
                return limit_child_raw_closed(lc);
        if (!words[1])
                return g_strdup_printf("error test: bad command '%s'", line);
        i = (unsigned) g_ascii_strtoull(words[1], NULL, 10);
        if (i >= lc->conns->len || !lc->conns->pdata[i])
                return g_strdup_printf("error test: no connection %u", i);
        if (g_str_equal(words[0], "acquire") && words[2]) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                uint64_t token = 0;
                int r;

                r = test_acquire(lc->conns->pdata[i], words[2], NULL, &token, &error);
                if (r < 0)
                        return test_format_result(r, &error);
                return g_strdup_printf("ok %" PRIu64, token);
        }
        if (g_str_equal(words[0], "close")) {
                sd_bus_flush_close_unref(lc->conns->pdata[i]);
                lc->conns->pdata[i] = NULL;
                return g_strdup("ok");
        }
        return g_strdup_printf("error test: bad command '%s'", line);
}

static int limit_child(sd_bus *bus, int fd, void *userdata) {
        const char *path = userdata;
        g_autoptr(GString) in = g_string_new(NULL);
        LimitChild lc = { .conns = g_ptr_array_new(), .raw = -1 };
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        /* The first connection, proven like the others. */
        r = ping(bus, &error);
        if (r < 0) {
                g_autofree char *result = test_format_result(r, &error);

                test_client_send(fd, "error setup: first direct connection: %s", result);
                return 2;
        }
        g_ptr_array_add(lc.conns, sd_bus_ref(bus));

        for (;;) {
                char buf[4096], *nl;
                ssize_t n;

                while ((nl = memchr(in->str, '\n', in->len))) {
                        g_autofree char *line = g_strndup(in->str, nl - in->str), *result = NULL;

                        g_string_erase(in, 0, nl - in->str + 1);
                        result = limit_child_command(&lc, path, line);
                        test_client_send(fd, "= %s", result);
                }

                n = read(fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return 0;       /* the parent closed its end */
                g_string_append_len(in, buf, n);
        }
}

static void test_direct_connection_limit(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = test_bus_connect(f->bus);
        g_autoptr(GPtrArray) roots = g_ptr_array_new_with_free_func(direct_close);
        g_autoptr(TestClient) c = NULL;
        g_autoptr(TestCall) cm = NULL;
        g_autofree char *path = NULL, *result = NULL;
        uint64_t tm, tw;

        if (test_skip_unless_root())
                return;

        (void) test_bus_activate_daemon(f->bus);
        path = test_bus_direct_socket(f->bus);

        /* 256 connections of 65534, each one answering a Ping. */
        c = test_client_start_direct(f->bus, TEST_OTHER_UID, CHILD_COMM, limit_child, path);
        g_assert_cmpuint(test_client_command_ok(c, "open %u", DIRECT_CONNECTIONS_PER_USER - 1), ==,
                         DIRECT_CONNECTIONS_PER_USER);

        /* The 257th is closed by the daemon. */
        result = test_client_command(c, "open 1");
        if (!g_str_has_prefix(result, "error "))
                g_error("connection %u of uid %u: expected to be turned away, got \"%s\"",
                        DIRECT_CONNECTIONS_PER_USER + 1, (unsigned) TEST_OTHER_UID, result);
        g_clear_pointer(&result, g_free);

        /* Others are not limited by that; root is not limited at all. */
        for (unsigned i = 0; i < DIRECT_CONNECTIONS_PER_USER + 1; i++) {
                sd_bus *d = test_bus_connect_direct(f->bus);

                g_ptr_array_add(roots, d);
                ping_ok(d);
        }
        g_clear_pointer(&roots, g_ptr_array_unref);

        /* Closing one lets a new one in. The daemon sees the close
         * asynchronously: the closed connection held "marker", the grant
         * of the waiter on the bus shows the close was handled. */
        tm = test_client_command_ok(c, "acquire %u marker", DIRECT_CONNECTIONS_PER_USER - 1);
        cm = queue_waiter(w, "marker", WAIT_5S, 1);
        assert_call_pending(cm);
        assert_client_command(c, "ok", "close %u", DIRECT_CONNECTIONS_PER_USER - 1);
        tw = test_call_wait_token(cm);
        g_assert_cmpuint(tw, >, tm);
        g_assert_cmpuint(test_client_command_ok(c, "open 1"), ==, DIRECT_CONNECTIONS_PER_USER + 1);
        result = test_client_command(c, "open 1");
        if (!g_str_has_prefix(result, "error "))
                g_error("again at the limit, a connection of uid %u: expected to be turned away, got \"%s\"",
                        (unsigned) TEST_OTHER_UID, result);
        g_clear_pointer(&result, g_free);

        test_client_finish(c);
}

static int store_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        *(sd_bus_message **) userdata = sd_bus_message_ref(m);
        return 0;
}

/* Pings the daemon on `bus`, a connection that may still be
 * authenticating, and waits at most usec for the answer: 0 if none came,
 * 1 for a reply, the error's negative errno (with *error set) for an
 * error. Not sd_bus_call() nor test_call_async(): they wait for the
 * authentication first, which sd-bus bounds by its own 90 s, not by the
 * call's timeout. */
static int ping_within(sd_bus *bus, uint64_t usec, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        uint64_t deadline = test_now_monotonic() + usec;

        g_assert_cmpint(sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, PEER_IFACE,
                                                       "Ping"), >=, 0);
        g_assert_cmpint(sd_bus_call_async(bus, &slot, m, store_reply, &reply, usec), >=, 0);
        for (;;) {
                struct pollfd p;
                uint64_t n, until = UINT64_MAX;
                int r;

                r = sd_bus_process(bus, NULL);
                g_assert_cmpint(r, >=, 0);
                if (reply) {
                        const sd_bus_error *e = sd_bus_message_get_error(reply);

                        if (!e)
                                return 1;
                        r = sd_bus_error_copy(error, e);
                        return r < 0 ? r : -EIO;
                }
                if (r > 0)
                        continue;

                n = test_now_monotonic();
                if (n >= deadline)
                        return 0;
                g_assert_cmpint(sd_bus_get_timeout(bus, &until), >=, 0);
                p = (struct pollfd) { .fd = sd_bus_get_fd(bus), .events = (short) sd_bus_get_events(bus) };
                r = poll(&p, 1, (int) ((MIN(deadline, MAX(until, n)) - n + 999U) / 1000U));
                if (r < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(r, >=, 0);
        }
}

static void test_direct_connection_limit_silent(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *d = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestClient) c = NULL;
        g_autofree char *path = NULL;
        int r;

        if (test_skip_unless_root())
                return;

        (void) test_bus_activate_daemon(f->bus);
        path = test_bus_direct_socket(f->bus);
        c = test_client_start_direct(f->bus, TEST_OTHER_UID, CHILD_COMM, limit_child, path);
        g_assert_cmpuint(test_client_command_ok(c, "open %u", DIRECT_CONNECTIONS_PER_USER - 1), ==,
                         DIRECT_CONNECTIONS_PER_USER);

        /* One more of 65534 that connects and never says a word (no
         * authentication). The daemon accepts connections in the order
         * they came: a root connection made afterwards is served only
         * after the silent one was dealt with. It must not have to wait
         * for that client. */
        assert_client_command(c, "ok", "raw");
        d = test_bus_connect_direct(f->bus);
        r = ping_within(d, TEST_TIMEOUT_USEC, &error);
        if (r == 0)
                g_error("After a connection of uid %u over its limit that never authenticated, lockbusd did not "
                        "answer a Ping on the next connection (root's) within %u s",
                        (unsigned) TEST_OTHER_UID, (unsigned) (TEST_TIMEOUT_USEC / USEC_PER_SEC));
        assert_call_ok(r, &error);
        ping_ok(f->client);
        (void) test_lock_ok(f->client, "still-serving");

        /* And the silent one was closed. */
        assert_client_command(c, "ok", "raw-closed");
        test_client_finish(c);
}

/* --- Daemon restarts and exit on idle ----------------------------------------------- */

static void test_direct_restart(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *d = NULL, *d2 = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        static const char *const skip[] = { ".quarantine", NULL };
        g_autoptr(GPtrArray) holders = NULL, run = NULL;
        g_autofree char *sender = NULL;
        const TestHolder *h;
        uint64_t tc, tp, tn, since;
        pid_t first, second;
        int r;

        first = test_bus_activate_daemon(f->bus);
        d = test_bus_connect_direct(f->bus);
        tc = test_acquire_ok(d, "c", NULL);
        tp = test_acquire_ok(d, "p", &(TestAcquireOptions) { .scope = "persistent", .description = "kept" });
        h = owner_single(&holders, f->client, "p");
        g_assert_true(g_str_has_prefix(h->sender, "direct:"));
        sender = g_strdup(h->sender);
        since = h->since;
        g_assert_cmpuint(owner_single(&holders, f->client, "c")->token, ==, tc);

        /* The daemon dies, its direct connections with it. */
        test_bus_kill_daemon(f->bus);
        r = ping(d, &error);
        g_assert_cmpint(r, <, 0);
        sd_bus_error_free(&error);

        /* The next call activates a new one: the connection hold is gone,
         * also from disk, the persistent hold is there as it was. */
        test_assert_not_locked(f->client, "c");
        second = test_bus_daemon_pid(f->bus);
        g_assert_cmpint(second, >, 0);
        g_assert_cmpint(second, !=, first);
        h = owner_single(&holders, f->client, "p");
        g_assert_cmpuint(h->token, ==, tp);
        g_assert_cmpuint(h->uid, ==, geteuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
        g_assert_cmpstr(h->comm, ==, f->comm);
        g_assert_cmpstr(h->sender, ==, sender);
        g_assert_cmpuint(h->since, ==, since);
        g_assert_cmpstr(h->scope, ==, "persistent");
        g_assert_cmpstr(h->description, ==, "kept");
        run = test_list_tree(f->bus->runtime_dir, skip);
        for (guint i = 0; i < run->len; i++)
                if (!g_str_equal(run->pdata[i], LOCKBUS_DIRECT_SOCKET_NAME) &&
                    !g_str_equal(run->pdata[i], ".quarantine"))
                        g_error("The runtime directory still has '%s' after the restart", (char *) run->pdata[i]);

        /* The new daemon's socket serves, with tokens above the old ones. */
        d2 = test_bus_connect_direct(f->bus);
        tn = test_acquire_ok(d2, "c", NULL);
        g_assert_cmpuint(tn, >, MAX(tc, tp));
        test_unlock_ok(d2, "p");
        test_assert_not_locked(f->client, "p");
}

/* Connects to the socket and says nothing: a client that never
 * authenticates. */
static int connect_silent(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        g_assert_cmpuint(strlen(path), <, sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), ==, 0);
        return fd;
}

static void test_direct_stop(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *d = NULL;
        g_autoptr(TestNameWatch) watch = NULL;
        g_autofree char *path = NULL, *name = NULL;
        _cleanup_close_ int silent = -1, pidfd = -1;
        pid_t pid;

        pid = test_bus_activate_daemon(f->bus);
        pidfd = test_pidfd_open(pid);
        g_assert_cmpint(pidfd, >=, 0);
        name = test_bus_daemon_name(f->bus);
        watch = test_bus_watch_name(f->client, name);
        path = test_bus_direct_socket(f->bus);

        /* An open direct connection, and one that never authenticates;
         * the daemon accepts in order, so the Ping on the later one shows
         * it has accepted both. */
        silent = connect_silent(path);
        d = test_bus_connect_direct(f->bus);
        ping_ok(d);
        (void) test_acquire_ok(d, "c", NULL);

        /* SIGTERM (systemctl stop): it exits at once, neither connection
         * holds it up. */
        g_assert_cmpint(kill(pid, SIGTERM), ==, 0);
        test_pidfd_wait_exit(pidfd, "lockbusd to exit on SIGTERM with a direct connection that never authenticated");
        test_name_watch_wait_gone(watch);

        /* The next one has neither the connection hold nor the socket's
         * connections. */
        test_assert_not_locked(f->client, "c");
}

/* Waits until `path` no longer exists, with inotify on its directory (no
 * polling): at most TEST_TIMEOUT_USEC. */
static void wait_file_gone(const char *path) {
        g_autofree char *dir = g_path_get_dirname(path);
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;
        _cleanup_close_ int ifd = -1;

        ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
        g_assert_cmpint(ifd, >=, 0);
        g_assert_cmpint(inotify_add_watch(ifd, dir, IN_DELETE | IN_MOVED_FROM), >=, 0);

        for (;;) {
                struct pollfd p = { .fd = ifd, .events = POLLIN };
                char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
                uint64_t n;
                int r;

                if (access(path, F_OK) < 0) {
                        g_assert_cmpint(errno, ==, ENOENT);
                        return;
                }
                n = test_now_monotonic();
                if (n >= deadline)
                        g_error("Timed out waiting for %s to be removed", path);
                r = poll(&p, 1, (int) ((deadline - n + 999U) / 1000U));
                if (r < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(r, >=, 0);
                while (read(ifd, buf, sizeof(buf)) > 0)
                        ;
        }
}

/* The one file in the lock directory that is neither the token
 * reservation nor hidden: the hold file of the only persistent hold. */
static char *only_hold_file(TestBus *b) {
        g_autoptr(GPtrArray) files = test_list_tree(b->lock_dir, NULL);
        char *found = NULL;

        for (guint i = 0; i < files->len; i++) {
                const char *name = files->pdata[i];

                if (g_str_equal(name, "tokens") || name[0] == '.' || strchr(name, '/'))
                        continue;
                g_assert_null(found);
                found = g_build_filename(b->lock_dir, name, NULL);
        }
        g_assert_nonnull(found);
        return found;
}

static const char *const idle_args[] = { "--idle-timeout=0.3", NULL };

/* Starts lockbusd (activation) with a connection hold of a new bus
 * connection, which keeps it from exiting on idle until that connection is
 * closed: returns the connection, the daemon's unique name and a pidfd. */
static sd_bus *start_kept(TestFixture *f, char **ret_name, int *ret_pidfd) {
        sd_bus *k = test_bus_connect(f->bus);
        g_autoptr(TestCall) c = test_acquire_async(k, "keep", NULL);
        pid_t pid;

        (void) test_call_wait_token(c);
        /* The reply's sender: the daemon that granted it. */
        *ret_name = g_strdup(sd_bus_message_get_sender(test_call_reply(c)));
        g_assert_true(g_str_has_prefix(*ret_name, ":"));
        pid = test_bus_pid_of(f->bus, *ret_name);
        g_assert_cmpint(pid, >, 0);
        *ret_pidfd = test_pidfd_open(pid);
        g_assert_cmpint(*ret_pidfd, >=, 0);
        return k;
}

static void test_direct_no_idle_exit(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestNameWatch) watch = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *d0 = NULL, *d1 = NULL, *file = NULL, *owner = NULL;
        _cleanup_close_ int pidfd = -1, pidfd1 = -1;
        const TestHolder *h;
        uint64_t expires;
        sd_bus *d, *k;
        int r;

        watch = test_bus_watch_name(f->client, LOCKBUS_BUS_NAME);
        k = start_kept(f, &d0, &pidfd);

        /* A direct connection that holds nothing, just open. */
        d = test_bus_connect_direct(f->bus);
        ping_ok(d);

        /* The event to wait for: a persistent hold's TTL of a second (over
         * three idle periods) runs out; the daemon then removes its file.
         * A persistent hold does not keep the daemon (see the end), so a
         * daemon that exited on idle would never remove it. (A waiter's
         * timeout, the event of /bus/idle/exit-and-reactivate, would not
         * do: a waiter keeps the daemon by itself.) */
        (void) test_acquire_ok(f->client, "ttl", &(TestAcquireOptions) {
                                .scope = "persistent", .has_ttl = true, .ttl = USEC_PER_SEC,
                        });
        h = owner_single(&holders, d, "ttl");
        expires = h->expires;
        g_assert_cmpuint(expires, >, 0);
        file = only_hold_file(f->bus);

        /* From now on only the direct connection keeps the daemon. */
        test_bus_disconnect(f->client, k);
        wait_file_gone(file);
        g_assert_cmpuint(test_now_realtime(), >=, expires);

        /* The daemon never let go of its name meanwhile, and serves the
         * socket still. */
        test_bus_sync(f->client);
        g_assert_false(test_name_watch_lost_by(watch, d0));
        g_assert_cmpuint(test_name_watch_n_gone(watch), ==, 0);
        r = test_owner(d, "ttl", NULL, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, "Resource 'ttl' not locked");
        sd_bus_error_free(&error);
        owner = test_bus_daemon_name(f->bus);
        g_assert_cmpstr(owner, ==, d0);

        /* Once the connection closes, it exits on idle. */
        sd_bus_flush_close_unref(d);
        test_name_watch_wait_lost_by(watch, d0);
        test_pidfd_wait_exit(pidfd, "lockbusd to exit on idle");

        /* The premise: without a direct connection, a persistent hold with
         * a TTL does not keep the daemon (5 s: far beyond the idle exit). */
        k = start_kept(f, &d1, &pidfd1);
        g_assert_cmpstr(d1, !=, d0);
        (void) test_acquire_ok(f->client, "ttl2", &(TestAcquireOptions) {
                                .scope = "persistent", .has_ttl = true, .ttl = 5U * USEC_PER_SEC,
                        });
        expires = owner_single(&holders, f->client, "ttl2")->expires;
        test_bus_disconnect(f->client, k);
        test_name_watch_wait_lost_by(watch, d1);
        g_assert_cmpuint(test_now_realtime(), <, expires);
        test_pidfd_wait_exit(pidfd1, "lockbusd to exit on idle");
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/direct/lock-unlock", test_direct_lock_unlock);
        test_add("/direct/other-uid", test_direct_other_uid);
        test_add("/direct/connection-hold", test_direct_connection_hold);
        test_add("/direct/fd-hold", test_direct_fd_hold);
        test_add("/direct/policy", test_direct_policy);
        test_add("/direct/connection-limit", test_direct_connection_limit);
        test_add("/direct/connection-limit/silent", test_direct_connection_limit_silent);
        test_add("/direct/restart", test_direct_restart);
        test_add_with_args("/direct/no-idle-exit", idle_args, test_direct_no_idle_exit);
        test_add("/direct/forged-sender", test_direct_forged_sender);
        test_add("/direct/stop", test_direct_stop);
        test_add("/direct/fd-hold/without-fd-passing", test_direct_fd_hold_without_fd_passing);

        return g_test_run();
}
