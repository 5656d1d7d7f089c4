/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The lock calls of io.lockbus1.Manager against a real lockbusd on a
 * private system-like bus, checked the way a user would: error names and
 * messages, tokens, and what Owner and ListLocks report. */

#include <fnmatch.h>
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus-test.h"

#define CHILD_COMM "lockbus-child"

static char *already_locked_message(const char *resource, uid_t uid, pid_t pid, const char *comm) {
        return g_strdup_printf("Resource '%s' already locked by uid %u (pid %d, %s)",
                               resource, (unsigned) uid, (int) pid, comm);
}

static char *already_locked_result(const char *resource, uid_t uid, pid_t pid, const char *comm) {
        g_autofree char *m = already_locked_message(resource, uid, pid, comm);

        return g_strdup_printf("error " LOCKBUS_ERROR_ALREADY_LOCKED ": %s", m);
}

static char *not_locked_message(const char *resource) {
        return g_strdup_printf("Resource '%s' not locked", resource);
}

static char *not_owner_message(const char *resource, uid_t holder, uid_t caller) {
        return g_strdup_printf("Resource '%s' locked by uid %u cannot be unlocked by uid %u",
                               resource, (unsigned) holder, (unsigned) caller);
}

/* The uid of "another process" in tests that work either way: another user
 * when we are root, else ourselves. */
static uid_t other_uid(void) {
        return geteuid() == 0 ? TEST_OTHER_UID : geteuid();
}

/* A holder as this process's connection `bus` would be reported. */
static void assert_holder(const TestHolder *h, const TestFixture *f, sd_bus *bus, uint64_t token,
                          const char *scope, const char *description) {
        g_assert_cmpuint(h->uid, ==, getuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) getpid());
        g_assert_cmpstr(h->comm, ==, f->comm);
        g_assert_cmpstr(h->sender, ==, test_unique_name(bus));
        g_assert_cmpuint(h->token, ==, token);
        g_assert_cmpuint(h->since, >, 0);
        g_assert_cmpuint(h->expires, ==, 0);
        g_assert_cmpstr(h->scope, ==, scope);
        g_assert_cmpstr(h->description, ==, description);
}

static void test_lock_unlock(TestFixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *mode = NULL;
        uint64_t t1, t2, t3;

        t1 = test_lock_ok(f->client, "db");
        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "exclusive");
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], f, f->client, t1, "persistent", "");

        test_unlock_ok(f->client, "db");
        test_assert_not_locked(f->client, "db");

        /* Tokens only grow, for the same resource and for others. */
        t2 = test_lock_ok(f->client, "db");
        g_assert_cmpuint(t2, >, t1);
        test_unlock_ok(f->client, "db");
        t3 = test_lock_ok(f->client, "other");
        g_assert_cmpuint(t3, >, t2);
        test_unlock_ok(f->client, "other");
        test_assert_not_locked(f->client, "other");
}

static void test_lock_already_locked(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *conn = test_bus_connect(f->bus);
        static const char *const ops_db[] = { "Lock db", "Acquire db", NULL };
        static const char *const ops_conn[] = { "Lock conn", "Acquire conn", NULL };
        g_autofree char *out = NULL, *expected = NULL, *line = NULL;

        /* A persistent hold: another process (another user when root) is
         * told who holds it, by Lock and by Acquire with timeout 0. */
        (void) test_lock_ok(f->client, "db");
        line = already_locked_result("db", getuid(), getpid(), f->comm);
        expected = g_strdup_printf("%s\n%s", line, line);
        out = test_bus_run_client(f->bus, other_uid(), CHILD_COMM, test_client_run_ops, (void *) ops_db);
        g_assert_cmpstr(out, ==, expected);
        g_clear_pointer(&out, g_free);
        g_clear_pointer(&expected, g_free);
        g_clear_pointer(&line, g_free);

        /* A connection hold, likewise. */
        (void) test_acquire_ok(conn, "conn", NULL);
        line = already_locked_result("conn", getuid(), getpid(), f->comm);
        expected = g_strdup_printf("%s\n%s", line, line);
        out = test_bus_run_client(f->bus, other_uid(), CHILD_COMM, test_client_run_ops, (void *) ops_conn);
        g_assert_cmpstr(out, ==, expected);

        /* Nothing changed hands. */
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 2);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
}

static void test_lock_not_reentrant(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *conn = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *message = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        uint64_t token;
        int r;

        token = test_lock_ok(f->client, "db");
        message = already_locked_message("db", getuid(), getpid(), f->comm);

        /* Again from the same connection. */
        r = test_lock(f->client, "db", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        /* From another connection of the same uid: a persistent hold is the
         * uid's, so that caller "already holds it" too. */
        r = test_lock(conn, "db", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        /* Whatever the timeout: never queued behind itself. A daemon that
         * queues it would leave the call unanswered; the 5 s call timeout
         * turns that into a failure instead of a hang. */
        r = test_acquire(f->client, "db", &(TestAcquireOptions) {
                                .has_timeout = true, .timeout = UINT64_MAX,
                                .call_timeout_usec = 5U * 1000U * 1000U,
                        }, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        r = test_acquire(conn, "db", &(TestAcquireOptions) {
                                .scope = "persistent", .has_timeout = true, .timeout = 60U * 1000U * 1000U,
                                .call_timeout_usec = 5U * 1000U * 1000U,
                        }, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        /* A connection hold: its connection asking again, in any mode. */
        (void) test_acquire_ok(conn, "conn", NULL);
        g_clear_pointer(&message, g_free);
        message = already_locked_message("conn", getuid(), getpid(), f->comm);
        r = test_acquire(conn, "conn", &(TestAcquireOptions) {
                                .has_timeout = true, .timeout = UINT64_MAX,
                                .call_timeout_usec = 5U * 1000U * 1000U,
                        }, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        r = test_acquire(conn, "conn", &(TestAcquireOptions) { .mode = "shared" }, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        /* Nobody waits, the holds are unchanged. */
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
        holders = test_owner_ok(f->client, "db", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], f, f->client, token, "persistent", "");
        g_clear_pointer(&holders, g_ptr_array_unref);
        holders = test_owner_ok(f->client, "conn", NULL);
        g_assert_cmpuint(holders->len, ==, 1);

        /* Unlocking works once and frees it. */
        test_unlock_ok(f->client, "db");
        g_assert_cmpuint(test_lock_ok(conn, "db"), >, token);
}

static void test_unlock_not_locked(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *message = not_locked_message("db");
        int r;

        r = test_unlock(f->client, "db", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, message);
        sd_bus_error_free(&error);

        /* Also once it was locked and unlocked. */
        (void) test_lock_ok(f->client, "db");
        test_unlock_ok(f->client, "db");
        r = test_unlock(f->client, "db", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, message);
}

static void test_unlock_not_owner(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *conn = NULL;
        static const char *const ops[] = { "Unlock db", "Unlock conn", NULL };
        g_autofree char *out = NULL, *expected = NULL, *m_db = NULL, *m_conn = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        uint64_t token;

        if (test_skip_unless_root())
                return;

        conn = test_bus_connect(f->bus);
        token = test_lock_ok(f->client, "db");
        (void) test_acquire_ok(conn, "conn", NULL);

        m_db = not_owner_message("db", 0, TEST_OTHER_UID);
        m_conn = not_owner_message("conn", 0, TEST_OTHER_UID);
        expected = g_strdup_printf("error " LOCKBUS_ERROR_NOT_OWNER ": %s\n"
                                   "error " LOCKBUS_ERROR_NOT_OWNER ": %s", m_db, m_conn);
        out = test_bus_run_client(f->bus, TEST_OTHER_UID, CHILD_COMM, test_client_run_ops, (void *) ops);
        g_assert_cmpstr(out, ==, expected);

        holders = test_owner_ok(f->client, "db", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], f, f->client, token, "persistent", "");
        g_clear_pointer(&holders, g_ptr_array_unref);
        holders = test_owner_ok(f->client, "conn", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
}

static void test_persistent_any_process_of_uid(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *conn = NULL;
        static const char *const ops_db[] = { "Unlock db", NULL };
        static const char *const ops_conn[] = { "Unlock conn", NULL };
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *out = NULL, *sender = NULL, *expected = NULL, *message = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        sd_bus *locker;
        uint64_t token;
        int r;

        /* Locked by a connection that then goes away: the hold stays. */
        locker = test_bus_connect(f->bus);
        sender = g_strdup(test_unique_name(locker));
        token = test_lock_ok(locker, "db");
        test_bus_disconnect(f->client, locker);

        holders = test_owner_ok(f->client, "db", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->scope, ==, "persistent");
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->sender, ==, sender);
        g_assert_cmpuint(((TestHolder *) holders->pdata[0])->token, ==, token);

        /* Any other process of the uid may unlock it. */
        out = test_bus_run_client(f->bus, getuid(), CHILD_COMM, test_client_run_ops, (void *) ops_db);
        g_assert_cmpstr(out, ==, "ok");
        test_assert_not_locked(f->client, "db");
        g_clear_pointer(&out, g_free);

        /* A connection hold is its connection's only: neither another
         * process nor another connection of the uid may unlock it. */
        conn = test_bus_connect(f->bus);
        (void) test_acquire_ok(conn, "conn", NULL);
        message = not_owner_message("conn", getuid(), getuid());
        expected = g_strdup_printf("error " LOCKBUS_ERROR_NOT_OWNER ": %s", message);
        out = test_bus_run_client(f->bus, getuid(), CHILD_COMM, test_client_run_ops, (void *) ops_conn);
        g_assert_cmpstr(out, ==, expected);
        r = test_unlock(f->client, "conn", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        test_unlock_ok(conn, "conn");
        test_assert_not_locked(f->client, "conn");
}

static void test_acquire_shared(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *c1 = test_bus_connect(f->bus),
                *c2 = test_bus_connect(f->bus), *c3 = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *mode = NULL, *message = NULL;
        uint64_t t1, t2, t3;
        int r;

        t1 = test_acquire_ok(c1, "db", &(TestAcquireOptions) { .mode = "shared", .description = "reader 1" });
        t2 = test_acquire_ok(c2, "db", &(TestAcquireOptions) { .mode = "shared", .description = "reader 2" });
        g_assert_cmpuint(t2, >, t1);

        /* Exclusive is refused, by Acquire and by Lock. Both holders are
         * this process, so the message is exact whichever it names. */
        message = already_locked_message("db", getuid(), getpid(), f->comm);
        r = test_acquire(c3, "db", NULL, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);
        r = test_lock(f->client, "db", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(holders->len, ==, 2);
        assert_holder(holders->pdata[0], f, c1, t1, "connection", "reader 1");
        assert_holder(holders->pdata[1], f, c2, t2, "connection", "reader 2");
        g_clear_pointer(&holders, g_ptr_array_unref);
        g_clear_pointer(&mode, g_free);

        /* A third shared holder fits (nobody is queued). */
        t3 = test_acquire_ok(c3, "db", &(TestAcquireOptions) { .mode = "shared" });
        g_assert_cmpuint(t3, >, t2);
        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(holders->len, ==, 3);
        assert_holder(holders->pdata[2], f, c3, t3, "connection", "");
        g_clear_pointer(&holders, g_ptr_array_unref);
        g_clear_pointer(&mode, g_free);

        /* One leaves, the others keep it in grant order. */
        test_unlock_ok(c1, "db");
        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(holders->len, ==, 2);
        assert_holder(holders->pdata[0], f, c2, t2, "connection", "reader 2");
        assert_holder(holders->pdata[1], f, c3, t3, "connection", "");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 1);
}

/* Child of /bus/acquire/connection-scope: takes a connection hold and a
 * persistent one, reports "TOKEN UNIQUE-NAME", then blocks until killed. */
static int child_hold_and_wait(sd_bus *bus, int fd, void *userdata) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *unique = NULL;
        uint64_t token = 0;
        int r;

        r = test_acquire(bus, "db", &(TestAcquireOptions) { .description = "child" }, &token, &error);
        if (r < 0) {
                g_autofree char *result = test_format_result(r, &error);

                test_client_send(fd, "%s", result);
                return 1;
        }
        r = test_lock(bus, "persist", NULL, &error);
        if (r < 0) {
                g_autofree char *result = test_format_result(r, &error);

                test_client_send(fd, "%s", result);
                return 1;
        }
        if (sd_bus_get_unique_name(bus, &unique) < 0)
                return 1;
        test_client_send(fd, "%" PRIu64 " %s", token, unique);

        /* Holds the connection open until the parent kills us. */
        test_client_block(fd);
        return 0;
}

static void test_acquire_connection_scope(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) child = NULL;
        g_autoptr(TestNameWatch) watch = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *line = NULL;
        g_auto(GStrv) words = NULL;
        const TestHolder *h;
        uint64_t token;

        child = test_client_start(f->bus, getuid(), CHILD_COMM, child_hold_and_wait, NULL);
        line = test_client_read_line(child);
        g_assert_nonnull(line);
        words = g_strsplit(line, " ", 2);
        g_assert_nonnull(words[0]);
        g_assert_nonnull(words[1]);
        token = g_ascii_strtoull(words[0], NULL, 10);
        g_assert_cmpuint(token, >, 0);

        holders = test_owner_ok(f->client, "db", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        g_assert_cmpuint(h->uid, ==, getuid());
        g_assert_cmpuint(h->pid, ==, (uint32_t) child->pid);
        g_assert_cmpstr(h->comm, ==, CHILD_COMM);
        g_assert_cmpstr(h->sender, ==, words[1]);
        g_assert_cmpuint(h->token, ==, token);
        g_assert_cmpstr(h->scope, ==, "connection");
        g_assert_cmpstr(h->description, ==, "child");
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* Subscribe before the name can go, then kill the client. */
        watch = test_bus_watch_name(f->client, words[1]);
        test_client_kill(child);
        test_name_watch_wait_gone(watch);

        /* Why Owner now sees the release, without polling: the bus daemon
         * sends NameOwnerChanged for the dead client's unique name to every
         * subscriber in one dispatch step; lockbusd subscribes to it for the
         * names it tracks (sd_bus_track), so the signal was queued to
         * lockbusd no later than to us. We send Owner only after receiving
         * it, and the bus delivers messages to a connection in the order it
         * queued them, so lockbusd reads the signal before our call; sd-bus
         * runs the track handlers of a signal before it dispatches the next
         * message. A daemon that answers Owner with the hold still there
         * has not released it on disconnect. */
        test_assert_not_locked(f->client, "db");

        /* The persistent hold of the dead client is still there. */
        holders = test_owner_ok(f->client, "persist", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->scope, ==, "persistent");
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->sender, ==, words[1]);

        /* And the resource is free for others. */
        g_assert_cmpuint(test_lock_ok(f->client, "db"), >, token);
}

/* Acquire("db", {key: <value>}) with one option of any type. */
static int acquire_with_option(sd_bus *bus, const char *key, const char *type, const void *value,
                               sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                           LOCKBUS_MANAGER_IFACE, "Acquire");
        g_assert_cmpint(r, >=, 0);
        g_assert_cmpint(sd_bus_message_append(m, "s", "db"), >=, 0);
        g_assert_cmpint(sd_bus_message_open_container(m, 'a', "{sv}"), >=, 0);
        g_assert_cmpint(sd_bus_message_open_container(m, 'e', "sv"), >=, 0);
        g_assert_cmpint(sd_bus_message_append(m, "s", key), >=, 0);
        g_assert_cmpint(sd_bus_message_open_container(m, 'v', type), >=, 0);
        g_assert_cmpint(sd_bus_message_append_basic(m, type[0], value), >=, 0);
        g_assert_cmpint(sd_bus_message_close_container(m), >=, 0);
        g_assert_cmpint(sd_bus_message_close_container(m), >=, 0);
        g_assert_cmpint(sd_bus_message_close_container(m), >=, 0);

        return sd_bus_call(bus, m, 0, error, NULL);
}

static void assert_invalid_option(sd_bus *bus, const char *key, const char *type, const void *value,
                                  const char *named) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = acquire_with_option(bus, key, type, value, &error);
        assert_call_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, NULL);
        if (!strstr(strempty(error.message), named)) {
                g_autofree char *m = g_strdup_printf("option %s: InvalidArgs message \"%s\" does not name \"%s\"",
                                                     key, strempty(error.message), named);

                g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, m);
        }
}

static void test_acquire_invalid_options(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *long_description = g_strnfill(LOCKBUS_DESCRIPTION_MAX + 1, 'x');
        g_autofree char *max_description = g_strnfill(LOCKBUS_DESCRIPTION_MAX, 'x');
        g_autoptr(GPtrArray) holders = NULL;
        uint32_t u = 1;
        int32_t i = 5;
        int r;

        assert_invalid_option(f->client, "foo", "s", "x", "foo");
        assert_invalid_option(f->client, "mode", "u", &u, "mode");
        assert_invalid_option(f->client, "mode", "s", "bogus", "mode");
        assert_invalid_option(f->client, "scope", "s", "forever", "scope");
        assert_invalid_option(f->client, "scope", "b", &i, "scope");
        assert_invalid_option(f->client, "timeout", "s", "10", "timeout");
        assert_invalid_option(f->client, "timeout", "i", &i, "timeout");
        assert_invalid_option(f->client, "ttl", "s", "10", "ttl");
        assert_invalid_option(f->client, "description", "u", &u, "description");
        assert_invalid_option(f->client, "description", "s", long_description, "description");

        /* All or nothing: none of them holds or queues anything. */
        test_assert_not_locked(f->client, "db");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 0);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        /* 1024 bytes is still fine. */
        r = acquire_with_option(f->client, "description", "s", max_description, &error);
        assert_call_ok(r, &error);
        holders = test_owner_ok(f->client, "db", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->description, ==, max_description);
}

static void test_owner_fields(TestFixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *mode = NULL;
        uint64_t before, after, token;
        const TestHolder *h;

        before = test_now_realtime();
        token = test_acquire_ok(f->client, "db", &(TestAcquireOptions) { .description = "nightly backup" });
        after = test_now_realtime();

        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "exclusive");
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        assert_holder(h, f, f->client, token, "connection", "nightly backup");
        /* CLOCK_REALTIME µs at the grant (1 s of slack for coarse clocks;
         * ms, s or CLOCK_MONOTONIC would be far off). */
        g_assert_cmpuint(h->since, >=, before - 1000000U);
        g_assert_cmpuint(h->since, <=, after + 1000000U);
        g_clear_pointer(&holders, g_ptr_array_unref);
        g_clear_pointer(&mode, g_free);

        /* Lock: persistent, no description. */
        token = test_lock_ok(f->client, "p");
        holders = test_owner_ok(f->client, "p", &mode);
        g_assert_cmpstr(mode, ==, "exclusive");
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], f, f->client, token, "persistent", "");
        g_clear_pointer(&holders, g_ptr_array_unref);
        g_clear_pointer(&mode, g_free);

        /* Options show up as given. */
        token = test_acquire_ok(f->client, "s", &(TestAcquireOptions) {
                                .mode = "shared", .scope = "persistent", .description = "d",
                        });
        holders = test_owner_ok(f->client, "s", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], f, f->client, token, "persistent", "d");
}

static void test_owner_not_locked(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        test_assert_not_locked(f->client, "db");
        (void) test_acquire_ok(f->client, "db", NULL);
        test_unlock_ok(f->client, "db");
        test_assert_not_locked(f->client, "db");

        /* An invalid name is not "not locked". */
        r = test_owner(f->client, "", NULL, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
}

static void test_list_locks_sorted(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *c1 = test_bus_connect(f->bus),
                *c2 = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) locks = NULL;
        uint64_t tc, ta2, tb, ta1;
        int r;

        r = test_list_locks(f->client, &locks, &error);
        assert_call_ok(r, &error);
        g_assert_cmpuint(locks->len, ==, 0);
        g_clear_pointer(&locks, g_ptr_array_unref);

        /* Granted out of resource order, and "a" by c2 before c1. */
        tc = test_lock_ok(c1, "c");
        ta2 = test_acquire_ok(c2, "a", &(TestAcquireOptions) { .mode = "shared", .description = "first" });
        tb = test_acquire_ok(c1, "b", &(TestAcquireOptions) { .scope = "persistent", .description = "bee" });
        ta1 = test_acquire_ok(c1, "a", &(TestAcquireOptions) { .mode = "shared", .description = "second" });

        r = test_list_locks(f->client, &locks, &error);
        assert_call_ok(r, &error);
        g_assert_cmpuint(locks->len, ==, 4);

        g_assert_cmpstr(((TestHolder *) locks->pdata[0])->resource, ==, "a");
        g_assert_cmpstr(((TestHolder *) locks->pdata[0])->mode, ==, "shared");
        assert_holder(locks->pdata[0], f, c2, ta2, "connection", "first");

        g_assert_cmpstr(((TestHolder *) locks->pdata[1])->resource, ==, "a");
        g_assert_cmpstr(((TestHolder *) locks->pdata[1])->mode, ==, "shared");
        assert_holder(locks->pdata[1], f, c1, ta1, "connection", "second");

        g_assert_cmpstr(((TestHolder *) locks->pdata[2])->resource, ==, "b");
        g_assert_cmpstr(((TestHolder *) locks->pdata[2])->mode, ==, "exclusive");
        assert_holder(locks->pdata[2], f, c1, tb, "persistent", "bee");

        g_assert_cmpstr(((TestHolder *) locks->pdata[3])->resource, ==, "c");
        g_assert_cmpstr(((TestHolder *) locks->pdata[3])->mode, ==, "exclusive");
        assert_holder(locks->pdata[3], f, c1, tc, "persistent", "");

        /* The same facts as Owner gives. */
        for (guint i = 0; i < locks->len; i++) {
                const TestHolder *row = locks->pdata[i];
                g_autoptr(GPtrArray) holders = NULL;
                g_autofree char *mode = NULL;
                bool found = false;

                holders = test_owner_ok(f->client, row->resource, &mode);
                g_assert_cmpstr(mode, ==, row->mode);
                for (guint j = 0; j < holders->len; j++) {
                        const TestHolder *h = holders->pdata[j];

                        if (h->token != row->token)
                                continue;
                        found = true;
                        g_assert_cmpuint(h->since, ==, row->since);
                        g_assert_cmpstr(h->sender, ==, row->sender);
                }
                g_assert_true(found);
        }
}

/* Entries of `dir` whose name matches `pattern` (fnmatch), sorted. */
static GPtrArray *list_matching(const char *dir, const char *pattern) {
        GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
        const char *name;

        g_assert_nonnull(d);
        while ((name = g_dir_read_name(d)))
                if (fnmatch(pattern, name, 0) == 0)
                        g_ptr_array_add(out, g_strdup(name));
        g_ptr_array_sort(out, test_compare_strings);
        return out;
}

static void assert_same_listing(GPtrArray *before, GPtrArray *after, const char *where) {
        GString *diff = g_string_new(NULL);

        for (guint i = 0; i < after->len; i++)
                if (!g_ptr_array_find_with_equal_func(before, after->pdata[i], g_str_equal, NULL))
                        g_string_append_printf(diff, " +%s", (const char *) after->pdata[i]);
        for (guint i = 0; i < before->len; i++)
                if (!g_ptr_array_find_with_equal_func(after, before->pdata[i], g_str_equal, NULL))
                        g_string_append_printf(diff, " -%s", (const char *) before->pdata[i]);
        if (diff->len > 0) {
                g_autofree char *m = g_strdup_printf("%s changed:%s", where, diff->str);

                g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, m);
        }
        g_string_free(diff, true);
}

/* Only flat files in a store directory: a hold never becomes a directory
 * or a symlink (dot entries are the store's own). */
static void assert_flat(const char *dir) {
        g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
        const char *name;

        g_assert_nonnull(d);
        while ((name = g_dir_read_name(d))) {
                g_autofree char *path = NULL;
                struct stat st;

                if (name[0] == '.')
                        continue;
                path = g_build_filename(dir, name, NULL);
                g_assert_cmpint(lstat(path, &st), ==, 0);
                if (!S_ISREG(st.st_mode)) {
                        g_autofree char *m = g_strdup_printf("%s is not a regular file", path);

                        g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, m);
                }
        }
}

/* Locks each name and checks Owner gives the hold back under it. */
static void lock_all(TestFixture *f, const char *const *names) {
        for (size_t i = 0; names[i]; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                g_autoptr(GPtrArray) holders = NULL;
                uint64_t token;
                int r;

                r = test_lock(f->client, names[i], &token, &error);
                if (r < 0) {
                        g_autofree char *result = test_format_result(r, &error);
                        g_autofree char *escaped = g_strescape(names[i], NULL);
                        g_autofree char *m = g_strdup_printf("Lock(\"%s\") (%zu bytes): %s",
                                                             escaped, strlen(names[i]), result);

                        g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, m);
                }
                holders = test_owner_ok(f->client, names[i], NULL);
                g_assert_cmpuint(holders->len, ==, 1);
                g_assert_cmpuint(((TestHolder *) holders->pdata[0])->token, ==, token);
        }
}

static void test_names_safe(TestFixture *f, gconstpointer data) {
        static const char *const skip[] = { "lib", "run", NULL };
        g_autofree char *name255 = g_strnfill(LOCKBUS_RESOURCE_MAX, 'n');
        g_autofree char *name256 = g_strnfill(LOCKBUS_RESOURCE_MAX + 1, 'n');
        g_autofree char *outside = g_build_filename(f->bus->dir, "outside", NULL);
        g_autofree char *outside_conn = g_build_filename(f->bus->dir, "outside-conn", NULL);
        g_autofree char *base = g_path_get_basename(f->bus->dir);
        g_autofree char *up_and_back = g_strdup_printf("../../%s/back", base);
        g_autofree char *escape = g_strdup_printf("../../../../../../..%s/escape", f->bus->dir);
        g_autoptr(GString) multibyte = g_string_new(NULL);
        g_autoptr(GPtrArray) tree_before = NULL, tree_after = NULL, etc_before = NULL, etc_after = NULL;
        g_autoptr(GPtrArray) locks = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *invalid[] = { "", name256, "a\001b", "tab\there", "new\nline", "del\177", "\033[1m", NULL };
        const char *conn_names[] = { "../conn", outside_conn, NULL };
        /* Names a careless store would turn into paths that stay inside
         * our temp dir (the lock directory is DIR/lib): tried first, so a
         * broken daemon is caught before it is given names that point at
         * the host. */
        const char *confined[] = {
                "../x", "..", ".", "a/b/c", "dir/../../up", outside, up_and_back, escape, NULL,
        };
        const char *others[] = {
                "/etc/passwd", "x y", ".hidden", "-dash", "@at", "name@1", "%41", "~tilde",
                "z\xc3\xbcrich \xe3\x83\xad\xe3\x83\x83\xe3\x82\xaf",  /* "zürich ロック" */
                name255, NULL /* multibyte */, NULL,
        };
        size_t n_confined = g_strv_length((char **) confined), n_others;
        int r;

        /* 85 three-byte characters: 255 bytes, the limit counts bytes. */
        for (int i = 0; i < 85; i++)
                g_string_append(multibyte, "\xe3\x83\xad");
        n_others = g_strv_length((char **) others);
        others[n_others++] = multibyte->str;

        /* The daemon's directories exist once it runs; everything else in
         * our tree (and /etc) must stay as it is. */
        (void) test_bus_activate_daemon(f->bus);
        tree_before = test_list_tree(f->bus->dir, skip);
        etc_before = list_matching("/etc", "passwd*");

        /* Persistent holds go to the lock directory, connection holds to
         * the runtime directory: both stores see the tricky names. */
        lock_all(f, confined);
        for (size_t i = 0; conn_names[i]; i++)
                (void) test_acquire_ok(f->client, conn_names[i], NULL);
        tree_after = test_list_tree(f->bus->dir, skip);
        assert_same_listing(tree_before, tree_after, f->bus->dir);
        g_clear_pointer(&tree_after, g_ptr_array_unref);

        lock_all(f, others);

        for (size_t i = 0; invalid[i]; i++) {
                r = test_lock(f->client, invalid[i], NULL, &error);
                assert_call_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
                sd_bus_error_free(&error);
                r = test_acquire(f->client, invalid[i], NULL, NULL, &error);
                assert_call_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
                sd_bus_error_free(&error);
        }
        r = test_unlock(f->client, "", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
        sd_bus_error_free(&error);

        /* ListLocks gives every name back exactly. */
        locks = test_list_locks_ok(f->client);
        g_assert_cmpuint(locks->len, ==, n_confined + n_others + 2);
        for (guint j = 0; j < locks->len; j++) {
                const char *resource = ((TestHolder *) locks->pdata[j])->resource;

                g_assert_true(g_strv_contains(confined, resource) || g_strv_contains(others, resource) ||
                              g_strv_contains(conn_names, resource));
        }

        /* Nothing was created, removed or replaced outside the daemon's
         * directories, and inside them no name became a path. */
        tree_after = test_list_tree(f->bus->dir, skip);
        assert_same_listing(tree_before, tree_after, f->bus->dir);
        etc_after = list_matching("/etc", "passwd*");
        assert_same_listing(etc_before, etc_after, "/etc");
        assert_flat(f->bus->lock_dir);
        assert_flat(f->bus->runtime_dir);

        /* And every one can be unlocked by its name. */
        for (size_t i = 0; confined[i]; i++)
                test_unlock_ok(f->client, confined[i]);
        for (size_t i = 0; others[i]; i++)
                test_unlock_ok(f->client, others[i]);
        for (size_t i = 0; conn_names[i]; i++)
                test_unlock_ok(f->client, conn_names[i]);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 0);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/bus/lock-unlock", test_lock_unlock);
        test_add("/bus/lock/already-locked", test_lock_already_locked);
        test_add("/bus/lock/not-reentrant", test_lock_not_reentrant);
        test_add("/bus/unlock/not-locked", test_unlock_not_locked);
        test_add("/bus/unlock/not-owner", test_unlock_not_owner);
        test_add("/bus/persistent/any-process-of-uid", test_persistent_any_process_of_uid);
        test_add("/bus/acquire/shared", test_acquire_shared);
        test_add("/bus/acquire/connection-scope", test_acquire_connection_scope);
        test_add("/bus/acquire/invalid-options", test_acquire_invalid_options);
        test_add("/bus/owner", test_owner_fields);
        test_add("/bus/owner/not-locked", test_owner_not_locked);
        test_add("/bus/list-locks", test_list_locks_sorted);
        test_add("/bus/names/safe", test_names_safe);

        return g_test_run();
}
