/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* liblockbus against a real lockbusd on a private system-like bus: every
 * call, the errno of every error of the contract with the service's
 * message, waits longer than the default bus call timeout, and the
 * asynchronous variant on an sd-event loop. */

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "client-test.h"

#define CHILD_COMM "lockbus-child"

/* The daemon's own default bus call timeout, lowered in the wait tests so
 * that a wait of a few seconds outlives it (as 60 s would outlive the
 * 25 s of sd-bus). */
#define SHORT_CALL_TIMEOUT_USEC (1U * USEC_PER_SEC)

static const lockbus_holder *owner_single(lockbus *l, const char *resource, lockbus_holder **holders, size_t *n) {
        lockbus_holders_free(*holders, *n);
        *holders = NULL;
        *n = 0;
        assert_lockbus_ok(l, lockbus_owner(l, resource, holders, n));
        g_assert_cmpuint(*n, ==, 1);
        return &(*holders)[0];
}

static const char *unique_name(lockbus *l) {
        return test_unique_name(lockbus_get_bus(l));
}

/* --- Handles --------------------------------------------------------------- */

static void case_open(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = NULL, u = NULL, b = NULL;
        g_autofree char *version = NULL, *version_user = NULL, *version_bus = NULL;
        lockbus *tmp = NULL;

        /* The system bus, as DBUS_SYSTEM_BUS_ADDRESS says. */
        l = client_test_open(f);
        g_assert_nonnull(lockbus_get_bus(l));
        assert_lockbus_ok(l, lockbus_get_version(l, &version));
        g_assert_cmpstr(version, ==, g_getenv("LOCKBUS_VERSION"));

        /* The user bus (here: the same bus, named by DBUS_SESSION_BUS_ADDRESS). */
        g_assert_true(g_setenv("DBUS_SESSION_BUS_ADDRESS", f->bus->address, true));
        g_assert_cmpint(lockbus_open_user(&u), ==, 0);
        assert_lockbus_ok(u, lockbus_get_version(u, &version_user));
        g_assert_cmpstr(version_user, ==, version);
        g_assert_true(lockbus_get_bus(u) != lockbus_get_bus(l));

        /* An existing connection: used, referenced, and not closed with
         * the handle. */
        g_assert_cmpint(lockbus_open_bus(&b, f->client), ==, 0);
        g_assert_true(lockbus_get_bus(b) == f->client);
        assert_lockbus_ok(b, lockbus_get_version(b, &version_bus));
        g_assert_cmpstr(version_bus, ==, version);
        b = lockbus_unref(b);
        g_assert_null(b);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 0);

        /* Reference counting. */
        g_assert_true(lockbus_ref(l) == l);
        g_assert_null(lockbus_unref(l));
        g_clear_pointer(&version, g_free);
        assert_lockbus_ok(l, lockbus_get_version(l, &version));
        g_assert_null(lockbus_ref(NULL));
        g_assert_null(lockbus_unref(NULL));
        lockbus_unrefp(&tmp);
        g_assert_null(tmp);
        g_assert_null(lockbus_get_bus(NULL));
        g_assert_null(lockbus_last_error_name(NULL));
        g_assert_null(lockbus_last_error_message(NULL));

        /* Arguments. */
        g_assert_cmpint(lockbus_open_system(NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_open_user(NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_open_bus(&tmp, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_open_bus(NULL, f->client), ==, -EINVAL);
        g_assert_cmpint(lockbus_open_system_remote(&tmp, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_open_system_remote(NULL, "host"), ==, -EINVAL);
        g_assert_null(tmp);
}

/* --- Synchronous calls ------------------------------------------------------- */

static void case_lock_unlock(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f);
        lockbus_holder *holders = NULL;
        const lockbus_holder *h;
        g_autofree char *message = g_strdup_printf("Resource '%s' not locked", "db");
        uint64_t token = 0, t2 = 0;
        size_t n = 0;

        /* The defaults: exclusive, connection scope, no wait, no TTL. */
        assert_lockbus_ok(l, lockbus_lock(l, "db", NULL, &token));
        g_assert_cmpuint(token, >, 0);

        h = owner_single(l, "db", &holders, &n);
        g_assert_cmpstr(h->resource, ==, "db");
        g_assert_cmpint(h->mode, ==, LOCKBUS_MODE_EXCLUSIVE);
        g_assert_cmpuint(h->uid, ==, getuid());
        g_assert_cmpint(h->pid, ==, getpid());
        g_assert_cmpstr(h->comm, ==, f->comm);
        g_assert_cmpstr(h->sender, ==, unique_name(l));
        g_assert_cmpuint(h->token, ==, token);
        g_assert_cmpuint(h->since_usec, >, 0);
        g_assert_cmpuint(h->since_usec, <=, test_now_realtime());
        g_assert_cmpuint(h->expires_usec, ==, 0);
        g_assert_cmpint(h->scope, ==, LOCKBUS_SCOPE_CONNECTION);
        g_assert_cmpstr(h->description, ==, "");

        assert_lockbus_ok(l, lockbus_unlock(l, "db"));
        assert_lockbus_error(l, lockbus_owner(l, "db", &holders, &n), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, message);

        /* LOCKBUS_OPTIONS_INIT is the same as NULL; ret_token may be NULL. */
        assert_lockbus_ok(l, lockbus_lock(l, "db", &(lockbus_options) LOCKBUS_OPTIONS_INIT, NULL));
        h = owner_single(l, "db", &holders, &n);
        g_assert_cmpint(h->scope, ==, LOCKBUS_SCOPE_CONNECTION);
        g_assert_cmpuint(h->token, >, token);
        t2 = h->token;
        assert_lockbus_ok(l, lockbus_unlock(l, "db"));
        assert_lockbus_ok(l, lockbus_lock(l, "db", NULL, &token));
        g_assert_cmpuint(token, >, t2);

        lockbus_holders_free(holders, n);
}

/* Unlock without waiting: later calls of the handle see it released; a
 * refusal is silent and the hold stays. */
static void case_unlock_nowait(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f), other = client_test_open(f);
        lockbus_options persistent = { .scope = LOCKBUS_SCOPE_PERSISTENT };
        lockbus_holder *holders = NULL;
        uint64_t t1, t2;
        size_t n = 0;

        g_assert_cmpint(lockbus_unlock_nowait(NULL, "db"), ==, -EINVAL);
        g_assert_cmpint(lockbus_unlock_nowait(l, NULL), ==, -EINVAL);

        /* Served in order: the lock right after finds it free. */
        for (unsigned i = 0; i < 3; i++) {
                assert_lockbus_ok(l, lockbus_lock(l, "db", NULL, &t1));
                assert_lockbus_ok(l, lockbus_unlock_nowait(l, "db"));
        }
        assert_lockbus_error(l, lockbus_owner(l, "db", &holders, &n), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, NULL);

        assert_lockbus_ok(l, lockbus_lock(l, "pers", &persistent, &t1));
        assert_lockbus_ok(l, lockbus_unlock_nowait(l, "pers"));
        assert_lockbus_ok(l, lockbus_lock(l, "pers", &persistent, &t2));
        g_assert_cmpuint(t2, >, t1);

        /* Not the caller's (a connection hold of another connection): no
         * error comes back, and the hold stays. */
        assert_lockbus_ok(l, lockbus_lock(l, "conn", NULL, &t1));
        assert_lockbus_ok(other, lockbus_unlock_nowait(other, "conn"));
        g_assert_cmpuint(owner_single(other, "conn", &holders, &n)->token, ==, t1);
        g_assert_cmpstr(owner_single(other, "conn", &holders, &n)->sender, ==, unique_name(l));

        lockbus_holders_free(holders, n);
}

static void case_lock_options(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) a = client_test_open(f), b = client_test_open(f);
        lockbus_holder *holders = NULL;
        lockbus_options o = {
                .mode = LOCKBUS_MODE_SHARED,
                .ttl_usec = 3600U * USEC_PER_SEC,
                .description = "nightly backup",
        };
        uint64_t ta, tb, expires, before;
        size_t n = 0;

        before = test_now_realtime();
        assert_lockbus_ok(a, lockbus_lock(a, "db", &o, &ta));
        o.ttl_usec = 0;
        o.description = NULL;
        assert_lockbus_ok(b, lockbus_lock(b, "db", &o, &tb));
        g_assert_cmpuint(tb, >, ta);

        /* Both in grant order, resource and mode filled in. */
        assert_lockbus_ok(a, lockbus_owner(a, "db", &holders, &n));
        g_assert_cmpuint(n, ==, 2);
        g_assert_cmpstr(holders[0].resource, ==, "db");
        g_assert_cmpstr(holders[1].resource, ==, "db");
        g_assert_cmpint(holders[0].mode, ==, LOCKBUS_MODE_SHARED);
        g_assert_cmpint(holders[1].mode, ==, LOCKBUS_MODE_SHARED);
        g_assert_cmpuint(holders[0].token, ==, ta);
        g_assert_cmpuint(holders[1].token, ==, tb);
        g_assert_cmpint(holders[0].scope, ==, LOCKBUS_SCOPE_CONNECTION);
        g_assert_cmpint(holders[1].scope, ==, LOCKBUS_SCOPE_CONNECTION);
        g_assert_cmpstr(holders[0].description, ==, "nightly backup");
        g_assert_cmpstr(holders[1].description, ==, "");
        g_assert_cmpstr(holders[0].sender, ==, unique_name(a));
        g_assert_cmpstr(holders[1].sender, ==, unique_name(b));
        g_assert_cmpuint(holders[0].expires_usec, >=, before + 3600U * USEC_PER_SEC);
        g_assert_cmpuint(holders[0].expires_usec, <=, test_now_realtime() + 3600U * USEC_PER_SEC);
        g_assert_cmpuint(holders[1].expires_usec, ==, 0);

        /* Refresh: the new expiry, or 0 for a hold without TTL. */
        assert_lockbus_ok(a, lockbus_refresh(a, "db", &expires));
        g_assert_cmpuint(expires, >=, holders[0].expires_usec);
        assert_lockbus_ok(a, lockbus_refresh(a, "db", NULL));
        assert_lockbus_ok(b, lockbus_refresh(b, "db", &expires));
        g_assert_cmpuint(expires, ==, 0);
        lockbus_holders_free(holders, n);

        /* An exclusive request does not fit. */
        assert_lockbus_error(b, lockbus_lock(b, "db", NULL, NULL), -EBUSY, LOCKBUS_ERROR_ALREADY_LOCKED, NULL);
}

static void case_lock_scopes(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f), w = client_test_open(f), other = client_test_open(f);
        lockbus_options wait = { .timeout_usec = TEST_TIMEOUT_USEC / 2 };
        lockbus_holder *holders = NULL;
        g_autofree char *sender = g_strdup(unique_name(l));
        const lockbus_holder *h;
        size_t n = 0;

        assert_lockbus_ok(l, lockbus_lock(l, "conn", NULL, NULL));
        assert_lockbus_ok(l, lockbus_lock(l, "pers", &(lockbus_options) { .scope = LOCKBUS_SCOPE_PERSISTENT }, NULL));

        /* Freeing the handle closes its connection: the connection hold
         * goes (a waiter gets it, which is how we wait for the daemon to
         * notice), the persistent one stays. */
        l = lockbus_unref(l);
        assert_lockbus_ok(w, lockbus_lock(w, "conn", &wait, NULL));
        h = owner_single(w, "conn", &holders, &n);
        g_assert_cmpstr(h->sender, ==, unique_name(w));

        h = owner_single(w, "pers", &holders, &n);
        g_assert_cmpint(h->scope, ==, LOCKBUS_SCOPE_PERSISTENT);
        g_assert_cmpstr(h->sender, ==, sender);

        /* Any connection of the uid may unlock a persistent hold. */
        assert_lockbus_ok(other, lockbus_unlock(other, "pers"));
        lockbus_holders_free(holders, n);
}

static void case_acquire_fd(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f), w = client_test_open(f);
        lockbus_options o = {
                .scope = LOCKBUS_SCOPE_PERSISTENT,      /* ignored */
                .description = "fd hold",
        };
        lockbus_holder *holders = NULL;
        const lockbus_holder *h;
        uint64_t token = 0, tw = 0;
        size_t n = 0;
        int fd = -1, flags;

        g_assert_cmpint(lockbus_acquire_fd(l, "db", NULL, NULL, NULL), ==, -EINVAL);

        assert_lockbus_ok(l, lockbus_acquire_fd(l, "db", &o, &fd, &token));
        g_assert_cmpint(fd, >, 2);
        g_assert_cmpuint(token, >, 0);
        flags = fcntl(fd, F_GETFD);
        g_assert_cmpint(flags, >=, 0);
        g_assert_true(flags & FD_CLOEXEC);

        h = owner_single(l, "db", &holders, &n);
        g_assert_cmpint(h->scope, ==, LOCKBUS_SCOPE_FD);
        g_assert_cmpstr(h->description, ==, "fd hold");
        g_assert_cmpuint(h->token, ==, token);

        /* Busy while the fd is open; a waiter gets it when it closes. */
        assert_lockbus_error(w, lockbus_acquire_fd(w, "db", NULL, &fd, NULL), -EBUSY, LOCKBUS_ERROR_ALREADY_LOCKED,
                             NULL);
        g_assert_cmpint(close(fd), ==, 0);
        assert_lockbus_ok(w, lockbus_lock(w, "db", &(lockbus_options) { .timeout_usec = TEST_TIMEOUT_USEC / 2 },
                                          &tw));
        g_assert_cmpuint(tw, >, token);
        h = owner_single(l, "db", &holders, &n);
        g_assert_cmpint(h->scope, ==, LOCKBUS_SCOPE_CONNECTION);

        /* Without ret_token. */
        assert_lockbus_ok(l, lockbus_acquire_fd(l, "other", NULL, &fd, NULL));
        g_assert_cmpint(close(fd), ==, 0);
        lockbus_holders_free(holders, n);
}

static void case_list(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) a = client_test_open(f), b = client_test_open(f);
        lockbus_options shared = { .mode = LOCKBUS_MODE_SHARED };
        lockbus_holder *holders = NULL;
        uint64_t t1, t2, t3, t4;
        size_t n = 42;

        assert_lockbus_ok(a, lockbus_list(a, &holders, &n));
        g_assert_cmpuint(n, ==, 0);
        lockbus_holders_free(holders, n);

        assert_lockbus_ok(a, lockbus_lock(a, "zeta", &(lockbus_options) { .scope = LOCKBUS_SCOPE_PERSISTENT }, &t1));
        assert_lockbus_ok(b, lockbus_lock(b, "alpha", &shared, &t2));
        assert_lockbus_ok(a, lockbus_lock(a, "alpha", &shared, &t3));
        assert_lockbus_ok(b, lockbus_lock(b, "mid dle/..", NULL, &t4));

        assert_lockbus_ok(a, lockbus_list(a, &holders, &n));
        g_assert_cmpuint(n, ==, 4);
        g_assert_cmpstr(holders[0].resource, ==, "alpha");
        g_assert_cmpuint(holders[0].token, ==, t2);
        g_assert_cmpstr(holders[0].sender, ==, unique_name(b));
        g_assert_cmpint(holders[0].mode, ==, LOCKBUS_MODE_SHARED);
        g_assert_cmpstr(holders[1].resource, ==, "alpha");
        g_assert_cmpuint(holders[1].token, ==, t3);
        g_assert_cmpstr(holders[1].sender, ==, unique_name(a));
        g_assert_cmpstr(holders[2].resource, ==, "mid dle/..");
        g_assert_cmpuint(holders[2].token, ==, t4);
        g_assert_cmpint(holders[2].mode, ==, LOCKBUS_MODE_EXCLUSIVE);
        g_assert_cmpstr(holders[3].resource, ==, "zeta");
        g_assert_cmpuint(holders[3].token, ==, t1);
        g_assert_cmpint(holders[3].scope, ==, LOCKBUS_SCOPE_PERSISTENT);
        for (size_t i = 0; i < n; i++) {
                g_assert_cmpuint(holders[i].uid, ==, getuid());
                g_assert_cmpint(holders[i].pid, ==, getpid());
                g_assert_cmpstr(holders[i].comm, ==, f->comm);
        }
        lockbus_holders_free(holders, n);

        g_assert_cmpint(lockbus_list(a, NULL, &n), ==, -EINVAL);
        g_assert_cmpint(lockbus_list(a, &holders, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_owner(a, "x", NULL, &n), ==, -EINVAL);
        g_assert_cmpint(lockbus_owner(a, NULL, &holders, &n), ==, -EINVAL);
        lockbus_holders_free(NULL, 0);
}

static void case_break(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) a = client_test_open(f), b = client_test_open(f);
        lockbus_holder *holders = NULL;
        size_t n = 0;

        if (test_skip_unless_root())
                return;

        /* Root may break any hold: all of them go. */
        assert_lockbus_ok(a, lockbus_lock(a, "db", &(lockbus_options) { .mode = LOCKBUS_MODE_SHARED }, NULL));
        assert_lockbus_ok(b, lockbus_lock(b, "db", &(lockbus_options) {
                .mode = LOCKBUS_MODE_SHARED, .scope = LOCKBUS_SCOPE_PERSISTENT }, NULL));
        assert_lockbus_ok(b, lockbus_break(b, "db"));
        assert_lockbus_error(a, lockbus_owner(a, "db", &holders, &n), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, NULL);
}

static void case_properties(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f), w = client_test_open(f);
        g_autofree char *version = NULL, *dir = NULL;
        uint32_t u = 42;

        assert_lockbus_ok(l, lockbus_get_version(l, &version));
        g_assert_cmpstr(version, ==, g_getenv("LOCKBUS_VERSION"));
        assert_lockbus_ok(l, lockbus_get_lock_directory(l, &dir));
        g_assert_cmpstr(dir, ==, f->bus->lock_dir);

        assert_lockbus_ok(l, lockbus_get_lock_count(l, &u));
        g_assert_cmpuint(u, ==, 0);
        assert_lockbus_ok(l, lockbus_lock(l, "a", NULL, NULL));
        assert_lockbus_ok(l, lockbus_lock(l, "b", &(lockbus_options) { .mode = LOCKBUS_MODE_SHARED }, NULL));
        assert_lockbus_ok(w, lockbus_lock(w, "b", &(lockbus_options) { .mode = LOCKBUS_MODE_SHARED }, NULL));
        assert_lockbus_ok(l, lockbus_get_lock_count(l, &u));
        g_assert_cmpuint(u, ==, 2);

        assert_lockbus_ok(l, lockbus_get_waiter_count(l, &u));
        g_assert_cmpuint(u, ==, 0);

        g_assert_cmpint(lockbus_get_version(l, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_get_lock_directory(NULL, &dir), ==, -EINVAL);
        g_assert_cmpint(lockbus_get_lock_count(l, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_get_waiter_count(NULL, &u), ==, -EINVAL);
}

/* --- Errors ------------------------------------------------------------------ */

static void case_error_map(TestFixture *f, gconstpointer data) {
        static const struct {
                const char *name;
                int error;
        } table[] = {
                { LOCKBUS_ERROR_ALREADY_LOCKED,   EBUSY },
                { LOCKBUS_ERROR_NOT_LOCKED,       ENOENT },
                { LOCKBUS_ERROR_NOT_OWNER,        EPERM },
                { LOCKBUS_ERROR_TIMEOUT,          ETIMEDOUT },
                { LOCKBUS_ERROR_INVALID_RESOURCE, EINVAL },
                { LOCKBUS_ERROR_QUOTA_EXCEEDED,   EDQUOT },
                { LOCKBUS_ERROR_STORAGE,          EIO },
                { SD_BUS_ERROR_ACCESS_DENIED,     EACCES },
                { SD_BUS_ERROR_INVALID_ARGS,      EINVAL },
        };
        g_autoptr(lockbus) l = client_test_open(f);

        /* Opening a handle registers the map with sd-bus; this checks the
         * table of lockbus.h and lockbus(3) for the errors a test cannot
         * provoke (Storage needs a failing disk). */
        for (size_t i = 0; i < G_N_ELEMENTS(table); i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;

                g_assert_cmpint(sd_bus_error_set(&e, table[i].name, "x"), ==, -table[i].error);
                g_assert_cmpint(sd_bus_error_get_errno(&e), ==, table[i].error);
        }
}

static void case_errors(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) a = client_test_open(f), b = client_test_open(f);
        g_autofree char *busy = NULL, *free_msg = g_strdup("Resource 'free' not locked"), *long_desc = NULL;
        lockbus_holder *holders = NULL;
        uint64_t expires = 42, t0;
        size_t n = 0;

        busy = g_strdup_printf("Resource 'db' already locked by uid %u (pid %d, %s)",
                               (unsigned) getuid(), (int) getpid(), f->comm);

        /* AlreadyLocked → EBUSY, for someone else and for the holder itself. */
        assert_lockbus_ok(a, lockbus_lock(a, "db", NULL, NULL));
        assert_lockbus_error(b, lockbus_lock(b, "db", NULL, NULL), -EBUSY, LOCKBUS_ERROR_ALREADY_LOCKED, busy);
        assert_lockbus_error(a, lockbus_lock(a, "db", &(lockbus_options) { .timeout_usec = LOCKBUS_WAIT_FOREVER },
                                             NULL), -EBUSY, LOCKBUS_ERROR_ALREADY_LOCKED, busy);

        /* A success forgets the last error. */
        assert_lockbus_ok(b, lockbus_lock(b, "other", NULL, NULL));

        /* NotLocked → ENOENT, for every call that needs a hold. */
        assert_lockbus_error(a, lockbus_unlock(a, "free"), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, free_msg);
        assert_lockbus_error(a, lockbus_refresh(a, "free", &expires), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, free_msg);
        g_assert_cmpuint(expires, ==, 42);
        assert_lockbus_error(a, lockbus_owner(a, "free", &holders, &n), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, free_msg);
        g_assert_null(holders);
        if (geteuid() == 0)
                assert_lockbus_error(a, lockbus_break(a, "free"), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, free_msg);

        /* NotOwner → EPERM: another connection's hold, even of our uid. */
        assert_lockbus_error(b, lockbus_unlock(b, "db"), -EPERM, LOCKBUS_ERROR_NOT_OWNER, NULL);
        assert_lockbus_error(b, lockbus_refresh(b, "db", NULL), -EPERM, LOCKBUS_ERROR_NOT_OWNER, NULL);

        /* Timeout → ETIMEDOUT, from the service. */
        t0 = test_now_monotonic();
        assert_lockbus_error(b, lockbus_lock(b, "db", &(lockbus_options) { .timeout_usec = 200U * USEC_PER_MSEC },
                                             NULL), -ETIMEDOUT, LOCKBUS_ERROR_TIMEOUT, NULL);
        g_assert_cmpuint(test_now_monotonic() - t0, >=, 200U * USEC_PER_MSEC);

        /* InvalidResource → EINVAL. */
        assert_lockbus_error(a, lockbus_lock(a, "", NULL, NULL), -EINVAL, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
        assert_lockbus_error(a, lockbus_unlock(a, "a\tb"), -EINVAL, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);

        /* InvalidArgs → EINVAL: a description over 1024 bytes, named. */
        long_desc = g_strnfill(LOCKBUS_DESCRIPTION_MAX + 1, 'x');
        assert_lockbus_error(a, lockbus_lock(a, "x", &(lockbus_options) { .description = long_desc }, NULL),
                             -EINVAL, SD_BUS_ERROR_INVALID_ARGS, NULL);
        g_assert_nonnull(strstr(lockbus_last_error_message(a), "description"));
        long_desc[LOCKBUS_DESCRIPTION_MAX] = '\0';
        assert_lockbus_ok(a, lockbus_lock(a, "x", &(lockbus_options) { .description = long_desc }, NULL));

        /* Refused by the library itself: no bus error to show. */
        assert_lockbus_error(b, lockbus_lock(b, "db", NULL, NULL), -EBUSY, LOCKBUS_ERROR_ALREADY_LOCKED, busy);
        g_assert_cmpint(lockbus_lock(b, "y", &(lockbus_options) { .scope = LOCKBUS_SCOPE_FD }, NULL), ==, -EINVAL);
        g_assert_null(lockbus_last_error_name(b));
        g_assert_null(lockbus_last_error_message(b));
        g_assert_cmpint(lockbus_lock(b, "y", &(lockbus_options) { .scope = 7 }, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_lock(b, "y", &(lockbus_options) { .mode = 7 }, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_lock(b, NULL, NULL, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_lock(NULL, "y", NULL, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_unlock(b, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_refresh(b, NULL, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_break(b, NULL), ==, -EINVAL);
        g_assert_null(lockbus_last_error_name(b));
        assert_lockbus_error(a, lockbus_owner(a, "y", &holders, &n), -ENOENT, LOCKBUS_ERROR_NOT_LOCKED, NULL);
}

/* Another uid, in a child process: runs userdata, a NULL-terminated list
 * of "Lock R", "Persist R", "Unlock R", "Refresh R", "Break R", through the
 * library on the child's connection and reports one result line each. */
static int child_run_ops(sd_bus *bus, int fd, void *userdata) {
        const char *const *ops = userdata;
        lockbus *l = NULL;
        int r;

        r = lockbus_open_bus(&l, bus);
        if (r < 0) {
                test_client_send(fd, "error setup: lockbus_open_bus: %s", strerror(-r));
                return 2;
        }
        for (size_t i = 0; ops[i]; i++) {
                g_autofree char *result = NULL;
                const char *arg = strchr(ops[i], ' ') + 1;

                if (g_str_has_prefix(ops[i], "Lock "))
                        r = lockbus_lock(l, arg, NULL, NULL);
                else if (g_str_has_prefix(ops[i], "Persist "))
                        r = lockbus_lock(l, arg, &(lockbus_options) { .scope = LOCKBUS_SCOPE_PERSISTENT }, NULL);
                else if (g_str_has_prefix(ops[i], "Unlock "))
                        r = lockbus_unlock(l, arg);
                else if (g_str_has_prefix(ops[i], "Refresh "))
                        r = lockbus_refresh(l, arg, NULL);
                else if (g_str_has_prefix(ops[i], "Break "))
                        r = lockbus_break(l, arg);
                else
                        r = -EOPNOTSUPP;
                result = client_test_format_result(l, r);
                test_client_send(fd, "%s", result);
        }
        lockbus_unref(l);
        return 0;
}

static void case_errors_not_owner(TestFixture *f, gconstpointer data) {
        static const char *const ops[] = { "Unlock db", "Refresh db", NULL };
        g_autoptr(lockbus) l = client_test_open(f);
        g_autofree char *out = NULL, *expected = NULL;

        if (test_skip_unless_root())
                return;

        /* NotOwner → EPERM: a persistent hold of root, unlocked by nobody. */
        assert_lockbus_ok(l, lockbus_lock(l, "db", &(lockbus_options) { .scope = LOCKBUS_SCOPE_PERSISTENT }, NULL));
        out = test_bus_run_client(f->bus, TEST_OTHER_UID, CHILD_COMM, child_run_ops, (void *) ops);
        expected = g_strdup_printf("%d %s: Resource 'db' locked by uid 0 cannot be unlocked by uid %u\n"
                                   "%d %s: Resource 'db' locked by uid 0 cannot be refreshed by uid %u",
                                   -EPERM, LOCKBUS_ERROR_NOT_OWNER, (unsigned) TEST_OTHER_UID,
                                   -EPERM, LOCKBUS_ERROR_NOT_OWNER, (unsigned) TEST_OTHER_UID);
        g_assert_cmpstr(out, ==, expected);
}

/* The uid of "another process" in tests that work either way: another user
 * when we are root, else ourselves. */
static uid_t other_uid(void) {
        return geteuid() == 0 ? TEST_OTHER_UID : geteuid();
}

static void case_errors_access_denied(TestFixture *f, gconstpointer data) {
        static const char *const ops[] = { "Break db", NULL };
        g_autoptr(lockbus) l = client_test_open(f);
        lockbus_holder *holders = NULL;
        g_autofree char *out = NULL, *expected = NULL;
        size_t n = 0;

        /* AccessDenied → EACCES: Break without privilege (no polkit on this
         * bus, so it fails closed). */
        assert_lockbus_ok(l, lockbus_lock(l, "db", NULL, NULL));
        out = test_bus_run_client(f->bus, other_uid(), CHILD_COMM, child_run_ops, (void *) ops);
        expected = g_strdup_printf("%d %s: ", -EACCES, SD_BUS_ERROR_ACCESS_DENIED);
        g_assert_true(g_str_has_prefix(out, expected));
        g_assert_nonnull(strstr(out, "'db'"));
        assert_lockbus_ok(l, lockbus_owner(l, "db", &holders, &n));
        g_assert_cmpuint(n, ==, 1);
        lockbus_holders_free(holders, n);
}

static const char *const quota_args[] = { "--max-locks-per-user=1", NULL };

static void case_errors_quota(TestFixture *f, gconstpointer data) {
        static const char *const ops[] = { "Persist a", "Lock b", "Unlock a", "Lock b", NULL };
        g_autofree char *out = NULL, *expected = NULL;

        /* QuotaExceeded → EDQUOT: one lock per user, root excepted. */
        out = test_bus_run_client(f->bus, other_uid(), CHILD_COMM, child_run_ops, (void *) ops);
        expected = g_strdup_printf("ok\n%d %s: Resource 'b' not granted: uid %u is at its limit of 1 locks and "
                                   "128 waiting calls\nok\nok",
                                   -EDQUOT, LOCKBUS_ERROR_QUOTA_EXCEEDED, (unsigned) other_uid());
        g_assert_cmpstr(out, ==, expected);
}

/* --- Waits longer than the bus call timeout ----------------------------------- */

/* A plain sd-bus Acquire that waits longer than its connection's call
 * timeout dies locally: what the library must prevent. */
static void case_wait_needs_longer_call(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) h = client_test_open(f);
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = test_bus_connect(f->bus);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t t0;
        int r;

        assert_lockbus_ok(h, lockbus_lock(h, "db", NULL, NULL));
        g_assert_cmpint(sd_bus_set_method_call_timeout(bus, SHORT_CALL_TIMEOUT_USEC), >=, 0);
        g_assert_cmpint(sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                       LOCKBUS_MANAGER_IFACE, "Acquire"), >=, 0);
        g_assert_cmpint(sd_bus_message_append(m, "sa{sv}", "db", 1, "timeout", "t",
                                              (uint64_t) (3U * USEC_PER_SEC)), >=, 0);
        t0 = test_now_monotonic();
        r = sd_bus_call(bus, m, 0, &error, NULL);
        g_assert_cmpint(r, ==, -ETIMEDOUT);
        g_assert_false(sd_bus_error_has_name(&error, LOCKBUS_ERROR_TIMEOUT));
        g_assert_cmpuint(test_now_monotonic() - t0, <, 3U * USEC_PER_SEC);
}

/* The holder's TTL ends the wait: a grant that comes long after the
 * connection's default call timeout. */
static void lock_with_ttl(lockbus *h, const char *resource, uint64_t ttl_usec) {
        assert_lockbus_ok(h, lockbus_lock(h, resource, &(lockbus_options) { .ttl_usec = ttl_usec }, NULL));
}

static void assert_long_wait_granted(lockbus *w, const char *resource, uint64_t timeout_usec) {
        lockbus_holder *holders = NULL;
        uint64_t t0, token = 0;
        size_t n = 0;

        t0 = test_now_monotonic();
        assert_lockbus_ok(w, lockbus_lock(w, resource, &(lockbus_options) { .timeout_usec = timeout_usec }, &token));
        g_assert_cmpuint(test_now_monotonic() - t0, >, SHORT_CALL_TIMEOUT_USEC + 500U * USEC_PER_MSEC);
        assert_lockbus_ok(w, lockbus_owner(w, resource, &holders, &n));
        g_assert_cmpuint(n, ==, 1);
        g_assert_cmpstr(holders[0].sender, ==, unique_name(w));
        g_assert_cmpuint(holders[0].token, ==, token);
        lockbus_holders_free(holders, n);
}

static void case_wait_long(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) h = client_test_open(f);
        g_autoptr(lockbus) w = client_test_open_with_call_timeout(f, SHORT_CALL_TIMEOUT_USEC);
        uint64_t def = 0, t0;

        g_assert_cmpint(sd_bus_get_method_call_timeout(lockbus_get_bus(w), &def), >=, 0);
        g_assert_cmpuint(def, ==, SHORT_CALL_TIMEOUT_USEC);

        /* Granted after about 2 s, waiting at most 5 s. */
        lock_with_ttl(h, "db", 2U * USEC_PER_SEC);
        assert_long_wait_granted(w, "db", 5U * USEC_PER_SEC);

        /* Waiting for ever has no call timeout either. */
        lock_with_ttl(h, "forever", 2U * USEC_PER_SEC);
        assert_long_wait_granted(w, "forever", LOCKBUS_WAIT_FOREVER);

        /* A 3 s wait that ends without a grant: the service's Timeout, not
         * the bus call's. */
        assert_lockbus_ok(h, lockbus_lock(h, "held", NULL, NULL));
        t0 = test_now_monotonic();
        assert_lockbus_error(w, lockbus_lock(w, "held", &(lockbus_options) { .timeout_usec = 3U * USEC_PER_SEC },
                                             NULL), -ETIMEDOUT, LOCKBUS_ERROR_TIMEOUT, NULL);
        g_assert_cmpuint(test_now_monotonic() - t0, >=, 3U * USEC_PER_SEC);

        /* Calls that do not wait keep the connection's default. */
        assert_lockbus_error(w, lockbus_lock(w, "held", NULL, NULL), -EBUSY, LOCKBUS_ERROR_ALREADY_LOCKED, NULL);
}

/* The same with SYSTEMD_BUS_TIMEOUT, the environment variable of sd-bus
 * for the default call timeout, on a handle of lockbus_open_system(). */
static void case_wait_long_env(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) h = client_test_open(f), w = NULL;
        uint64_t def = 0;

        g_assert_true(g_setenv("SYSTEMD_BUS_TIMEOUT", "1s", true));
        w = client_test_open(f);
        g_unsetenv("SYSTEMD_BUS_TIMEOUT");
        g_assert_cmpint(sd_bus_get_method_call_timeout(lockbus_get_bus(w), &def), >=, 0);
        g_assert_cmpuint(def, ==, SHORT_CALL_TIMEOUT_USEC);

        lock_with_ttl(h, "db", 2U * USEC_PER_SEC);
        assert_long_wait_granted(w, "db", 5U * USEC_PER_SEC);
}

/* --- Asynchronous acquisition ------------------------------------------------- */

typedef struct AsyncResult {
        unsigned n_calls;
        lockbus *handle;
        int error;
        char *message;
        char *error_name;       /* lockbus_last_error_name() in the handler */
        uint64_t token;
        int fd;
} AsyncResult;

static void async_result_clear(AsyncResult *a) {
        g_clear_pointer(&a->message, g_free);
        g_clear_pointer(&a->error_name, g_free);
        if (a->fd >= 0)
                close(a->fd);
        *a = (AsyncResult) { .fd = -1 };
}

static void async_handler(lockbus *l, int error, const char *error_message, uint64_t token, int fd,
                          void *userdata) {
        AsyncResult *a = userdata;

        a->n_calls++;
        a->handle = l;
        a->error = error;
        g_free(a->message);
        a->message = g_strdup(error_message);
        g_free(a->error_name);
        a->error_name = g_strdup(lockbus_last_error_name(l));
        a->token = token;
        if (a->fd >= 0)
                close(a->fd);
        a->fd = fd;
}

static sd_event *new_event(lockbus *l) {
        sd_event *e = NULL;

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        g_assert_cmpint(lockbus_attach_event(l, e, 0), ==, 0);
        return e;
}

static void case_async(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f), h = client_test_open(f);
        _cleanup_(sd_event_unrefp) sd_event *e = new_event(l), *other = NULL;
        AsyncResult a = { .fd = -1 };
        lockbus_holder *holders = NULL;
        uint32_t waiters = 0;
        uint64_t th;
        size_t n = 0;
        int flags;

        /* Attaching again: to the same loop fine, to another not. */
        g_assert_cmpint(lockbus_attach_event(l, e, 0), ==, 0);
        g_assert_cmpint(sd_event_new(&other), >=, 0);
        g_assert_cmpint(lockbus_attach_event(l, other, 0), ==, -EBUSY);

        /* Granted at once: called from the loop, not from the call. */
        assert_lockbus_ok(l, lockbus_lock_async(l, "free", NULL, false, async_handler, &a, NULL));
        g_assert_cmpuint(a.n_calls, ==, 0);
        client_test_run_until(e, &a.n_calls, 1, "the grant of 'free'");
        g_assert_true(a.handle == l);
        g_assert_cmpint(a.error, ==, 0);
        g_assert_null(a.message);
        g_assert_null(a.error_name);
        g_assert_cmpuint(a.token, >, 0);
        g_assert_cmpint(a.fd, ==, -1);
        assert_lockbus_ok(l, lockbus_owner(l, "free", &holders, &n));
        g_assert_cmpuint(holders[0].token, ==, a.token);
        g_assert_cmpint(holders[0].scope, ==, LOCKBUS_SCOPE_CONNECTION);
        lockbus_holders_free(holders, n);
        async_result_clear(&a);

        /* Waiting: queued (WaiterCount on the same connection is answered
         * after the Acquire was queued), then granted on the release. */
        assert_lockbus_ok(h, lockbus_lock(h, "db", NULL, &th));
        assert_lockbus_ok(l, lockbus_lock_async(l, "db", &(lockbus_options) {
                .timeout_usec = LOCKBUS_WAIT_FOREVER, .description = "async" }, false, async_handler, &a, NULL));
        assert_lockbus_ok(l, lockbus_get_waiter_count(l, &waiters));
        g_assert_cmpuint(waiters, ==, 1);
        client_test_run_idle(e);
        g_assert_cmpuint(a.n_calls, ==, 0);
        assert_lockbus_ok(h, lockbus_unlock(h, "db"));
        client_test_run_until(e, &a.n_calls, 1, "the grant of 'db'");
        g_assert_cmpint(a.error, ==, 0);
        g_assert_cmpuint(a.token, >, th);
        assert_lockbus_ok(h, lockbus_owner(h, "db", &holders, &n));
        g_assert_cmpstr(holders[0].sender, ==, unique_name(l));
        g_assert_cmpstr(holders[0].description, ==, "async");
        lockbus_holders_free(holders, n);
        async_result_clear(&a);

        /* An error: the service's message, also in the handle. */
        assert_lockbus_ok(l, lockbus_lock_async(l, "db", NULL, false, async_handler, &a, NULL));
        client_test_run_until(e, &a.n_calls, 1, "AlreadyLocked");
        g_assert_cmpint(a.error, ==, -EBUSY);
        g_assert_nonnull(a.message);
        g_assert_true(g_str_has_prefix(a.message, "Resource 'db' already locked by uid"));
        g_assert_cmpstr(a.error_name, ==, LOCKBUS_ERROR_ALREADY_LOCKED);
        g_assert_cmpstr(lockbus_last_error_message(l), ==, a.message);
        g_assert_cmpuint(a.token, ==, 0);
        g_assert_cmpint(a.fd, ==, -1);
        async_result_clear(&a);

        /* A timeout of the wait. */
        assert_lockbus_ok(h, lockbus_lock(h, "held", NULL, NULL));
        assert_lockbus_ok(l, lockbus_lock_async(l, "held", &(lockbus_options) {
                .timeout_usec = 200U * USEC_PER_MSEC }, false, async_handler, &a, NULL));
        client_test_run_until(e, &a.n_calls, 1, "Timeout");
        g_assert_cmpint(a.error, ==, -ETIMEDOUT);
        g_assert_cmpstr(a.error_name, ==, LOCKBUS_ERROR_TIMEOUT);
        async_result_clear(&a);

        /* An fd hold: the handler owns the fd. */
        assert_lockbus_ok(l, lockbus_lock_async(l, "fd", &(lockbus_options) { .description = "fd" }, true,
                                                async_handler, &a, NULL));
        client_test_run_until(e, &a.n_calls, 1, "the fd grant");
        g_assert_cmpint(a.error, ==, 0);
        g_assert_cmpint(a.fd, >, 2);
        flags = fcntl(a.fd, F_GETFD);
        g_assert_true(flags >= 0 && (flags & FD_CLOEXEC));
        assert_lockbus_ok(l, lockbus_owner(l, "fd", &holders, &n));
        g_assert_cmpint(holders[0].scope, ==, LOCKBUS_SCOPE_FD);
        g_assert_cmpuint(holders[0].token, ==, a.token);
        lockbus_holders_free(holders, n);
        async_result_clear(&a);         /* closes the fd */
        assert_lockbus_ok(h, lockbus_lock(h, "fd", &(lockbus_options) { .timeout_usec = TEST_TIMEOUT_USEC / 2 },
                                          NULL));

        /* Arguments, checked before anything is sent. */
        g_assert_cmpint(lockbus_lock_async(l, "x", NULL, false, NULL, &a, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_lock_async(l, NULL, NULL, false, async_handler, &a, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_lock_async(l, "x", &(lockbus_options) { .scope = LOCKBUS_SCOPE_FD }, false,
                                           async_handler, &a, NULL), ==, -EINVAL);
        g_assert_cmpint(lockbus_lock_async(NULL, "x", NULL, false, async_handler, &a, NULL), ==, -EINVAL);
        client_test_run_idle(e);
        g_assert_cmpuint(a.n_calls, ==, 0);
}

static void case_async_cancel(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f), h = client_test_open(f), gone = client_test_open(f);
        _cleanup_(sd_event_unrefp) sd_event *e = new_event(l), *e_gone = new_event(gone);
        AsyncResult a = { .fd = -1 }, b = { .fd = -1 }, c = { .fd = -1 };
        lockbus_holder *holders = NULL;
        sd_bus_slot *slot = NULL, *slot_c = NULL;
        uint32_t waiters = 0;
        size_t n = 0;

        /* Unreferencing the slot cancels the call: the handler is not
         * called, though the grant (which the call no longer wants) comes
         * to the connection. */
        assert_lockbus_ok(h, lockbus_lock(h, "db", NULL, NULL));
        assert_lockbus_ok(l, lockbus_lock_async(l, "db", &(lockbus_options) { .timeout_usec = LOCKBUS_WAIT_FOREVER },
                                                false, async_handler, &a, &slot));
        g_assert_nonnull(slot);
        assert_lockbus_ok(l, lockbus_get_waiter_count(l, &waiters));
        g_assert_cmpuint(waiters, ==, 1);
        slot = sd_bus_slot_unref(slot);
        assert_lockbus_ok(h, lockbus_unlock(h, "db"));
        /* The daemon sent the grant before it answered the Unlock; Owner on
         * l is answered after it, and dispatching l's loop then sees both. */
        assert_lockbus_ok(l, lockbus_owner(l, "db", &holders, &n));
        g_assert_cmpstr(holders[0].sender, ==, unique_name(l));
        lockbus_holders_free(holders, n);
        client_test_run_idle(e);
        g_assert_cmpuint(a.n_calls, ==, 0);

        /* Freeing the handle cancels its pending calls, whoever holds the
         * slot: no handler runs with a freed handle. */
        assert_lockbus_ok(h, lockbus_lock(h, "b", NULL, NULL));
        assert_lockbus_ok(h, lockbus_lock(h, "c", NULL, NULL));
        assert_lockbus_ok(gone, lockbus_lock_async(gone, "b", &(lockbus_options) {
                .timeout_usec = LOCKBUS_WAIT_FOREVER }, false, async_handler, &b, NULL));
        assert_lockbus_ok(gone, lockbus_lock_async(gone, "c", &(lockbus_options) {
                .timeout_usec = LOCKBUS_WAIT_FOREVER }, true, async_handler, &c, &slot_c));
        assert_lockbus_ok(gone, lockbus_get_waiter_count(gone, &waiters));
        g_assert_cmpuint(waiters, ==, 2);
        gone = lockbus_unref(gone);
        assert_lockbus_ok(h, lockbus_unlock(h, "b"));
        assert_lockbus_ok(h, lockbus_unlock(h, "c"));
        client_test_run_idle(e_gone);
        g_assert_cmpuint(b.n_calls, ==, 0);
        g_assert_cmpuint(c.n_calls, ==, 0);
        slot_c = sd_bus_slot_unref(slot_c);
}

/* The asynchronous call, too, outlives the connection's call timeout. */
static void case_async_wait_long(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) h = client_test_open(f);
        g_autoptr(lockbus) w = client_test_open_with_call_timeout(f, SHORT_CALL_TIMEOUT_USEC);
        _cleanup_(sd_event_unrefp) sd_event *e = new_event(w);
        AsyncResult a = { .fd = -1 };
        uint64_t t0;

        lock_with_ttl(h, "db", 2U * USEC_PER_SEC);
        t0 = test_now_monotonic();
        assert_lockbus_ok(w, lockbus_lock_async(w, "db", &(lockbus_options) { .timeout_usec = 5U * USEC_PER_SEC },
                                                false, async_handler, &a, NULL));
        client_test_run_until(e, &a.n_calls, 1, "the grant after the TTL");
        g_assert_cmpint(a.error, ==, 0);
        g_assert_cmpuint(test_now_monotonic() - t0, >, SHORT_CALL_TIMEOUT_USEC + 500U * USEC_PER_MSEC);
        async_result_clear(&a);
}

/* Handler called from the loop of the default event (lockbus_attach_event
 * with NULL), and a handle unreferenced inside its own handler. */
static void unref_handler(lockbus *l, int error, const char *error_message, uint64_t token, int fd,
                          void *userdata) {
        unsigned *n_calls = userdata;

        (*n_calls)++;
        g_assert_cmpint(error, ==, 0);
        g_assert_cmpuint(token, >, 0);
        lockbus_unref(l);
}

static void case_async_default_event(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        lockbus *l = client_test_open(f);
        unsigned n_calls = 0;

        g_assert_cmpint(sd_event_default(&e), >=, 0);
        g_assert_cmpint(lockbus_attach_event(l, NULL, SD_EVENT_PRIORITY_NORMAL), ==, 0);
        g_assert_cmpint(lockbus_attach_event(l, e, SD_EVENT_PRIORITY_NORMAL), ==, 0);
        g_assert_cmpint(lockbus_attach_event(l, NULL, SD_EVENT_PRIORITY_NORMAL), ==, 0);
        assert_lockbus_ok(l, lockbus_lock_async(l, "db", NULL, false, unref_handler, &n_calls, NULL));
        assert_lockbus_ok(l, lockbus_lock_async(l, "db2", NULL, false, unref_handler, &n_calls, NULL));
        /* The first handler frees the handle: the second call goes with it. */
        client_test_run_until(e, &n_calls, 1, "the grant");
        client_test_run_idle(e);
        g_assert_cmpuint(n_calls, ==, 1);
}

/* --- Strings ------------------------------------------------------------------ */

static void case_strings(void) {
        g_assert_cmpstr(lockbus_mode_to_string(LOCKBUS_MODE_EXCLUSIVE), ==, "exclusive");
        g_assert_cmpstr(lockbus_mode_to_string(LOCKBUS_MODE_SHARED), ==, "shared");
        g_assert_null(lockbus_mode_to_string(2));
        g_assert_null(lockbus_mode_to_string(-1));
        g_assert_cmpstr(lockbus_scope_to_string(LOCKBUS_SCOPE_CONNECTION), ==, "connection");
        g_assert_cmpstr(lockbus_scope_to_string(LOCKBUS_SCOPE_PERSISTENT), ==, "persistent");
        g_assert_cmpstr(lockbus_scope_to_string(LOCKBUS_SCOPE_FD), ==, "fd");
        g_assert_null(lockbus_scope_to_string(3));
}

/* LockLost as lockbus_set_lost_handler() reports it: "RESOURCE TOKEN REASON". */
typedef struct LostRecorder {
        lockbus *handle;
        GPtrArray *lines;
        unsigned n_calls;
} LostRecorder;

static void lost_handler(lockbus *l, const char *resource, uint64_t token, const char *reason, void *userdata) {
        LostRecorder *r = userdata;

        g_assert_true(l == r->handle);
        g_ptr_array_add(r->lines, g_strdup_printf("%s %" PRIu64 " %s", resource, token, reason));
        r->n_calls++;
}

static void case_lost(TestFixture *f, gconstpointer data) {
        g_autoptr(lockbus) l = client_test_open(f), h = client_test_open(f);
        _cleanup_(sd_event_unrefp) sd_event *e = new_event(l);
        g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) other_lines = g_ptr_array_new_with_free_func(g_free);
        LostRecorder lost = { .handle = l, .lines = lines }, other = { .handle = l, .lines = other_lines };
        g_autofree char *expired = NULL, *broken = NULL, *expired2 = NULL;
        uint64_t t_ttl = 0, t_brk = 0, t_ttl2 = 0;

        g_assert_cmpint(lockbus_set_lost_handler(NULL, lost_handler, &lost), ==, -EINVAL);
        g_assert_cmpint(lockbus_set_lost_handler(l, lost_handler, &lost), ==, 0);

        /* A TTL that runs out. */
        assert_lockbus_ok(l, lockbus_lock(l, "ttl", &(lockbus_options) { .ttl_usec = 100 * USEC_PER_MSEC }, &t_ttl));
        client_test_run_until(e, &lost.n_calls, 1, "LockLost for 'ttl'");
        expired = g_strdup_printf("ttl %" PRIu64 " expired", t_ttl);
        g_assert_cmpstr(lines->pdata[0], ==, expired);

        /* A Break by someone else (root here). */
        assert_lockbus_ok(l, lockbus_lock(l, "brk", NULL, &t_brk));
        assert_lockbus_ok(h, lockbus_break(h, "brk"));
        client_test_run_until(e, &lost.n_calls, 2, "LockLost for 'brk'");
        broken = g_strdup_printf("brk %" PRIu64 " broken", t_brk);
        g_assert_cmpstr(lines->pdata[1], ==, broken);

        /* An unlock of its own is not reported. */
        assert_lockbus_ok(l, lockbus_lock(l, "plain", NULL, NULL));
        assert_lockbus_ok(l, lockbus_unlock(l, "plain"));

        /* Another handler replaces it; NULL removes it. */
        g_assert_cmpint(lockbus_set_lost_handler(l, lost_handler, &other), ==, 0);
        assert_lockbus_ok(l, lockbus_lock(l, "ttl2", &(lockbus_options) { .ttl_usec = 50 * USEC_PER_MSEC }, &t_ttl2));
        client_test_run_until(e, &other.n_calls, 1, "LockLost for 'ttl2'");
        expired2 = g_strdup_printf("ttl2 %" PRIu64 " expired", t_ttl2);
        g_assert_cmpstr(other_lines->pdata[0], ==, expired2);
        g_assert_cmpuint(lost.n_calls, ==, 2);

        g_assert_cmpint(lockbus_set_lost_handler(l, NULL, NULL), ==, 0);
        assert_lockbus_ok(l, lockbus_lock(l, "ttl3", &(lockbus_options) { .ttl_usec = 50 * USEC_PER_MSEC }, NULL));
        /* h waits for it: granted once the TTL ran out, and the signal sent
         * before that grant is in l's queue by the next round trip. */
        assert_lockbus_ok(h, lockbus_lock(h, "ttl3", &(lockbus_options) { .timeout_usec = LOCKBUS_WAIT_FOREVER },
                                          NULL));
        test_bus_sync(lockbus_get_bus(l));
        client_test_run_idle(e);
        g_assert_cmpuint(lost.n_calls, ==, 2);
        g_assert_cmpuint(other.n_calls, ==, 1);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/lib/strings", case_strings);
        test_add("/lib/open", case_open);
        test_add("/lib/lock-unlock", case_lock_unlock);
        test_add("/lib/unlock-nowait", case_unlock_nowait);
        test_add("/lib/lock/options", case_lock_options);
        test_add("/lib/lock/scopes", case_lock_scopes);
        test_add("/lib/acquire-fd", case_acquire_fd);
        test_add("/lib/list", case_list);
        test_add("/lib/break", case_break);
        test_add("/lib/properties", case_properties);
        test_add("/lib/errors/map", case_error_map);
        test_add("/lib/errors", case_errors);
        test_add("/lib/errors/not-owner", case_errors_not_owner);
        test_add("/lib/errors/access-denied", case_errors_access_denied);
        test_add_with_args("/lib/errors/quota", quota_args, case_errors_quota);
        test_add("/lib/wait/plain-call-times-out", case_wait_needs_longer_call);
        test_add("/lib/wait/long", case_wait_long);
        test_add("/lib/wait/long-env", case_wait_long_env);
        test_add("/lib/async", case_async);
        test_add("/lib/async/cancel", case_async_cancel);
        test_add("/lib/async/wait-long", case_async_wait_long);
        test_add("/lib/async/default-event", case_async_default_event);
        test_add("/lib/lost", case_lost);

        return g_test_run();
}
