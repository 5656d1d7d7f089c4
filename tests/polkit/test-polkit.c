/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Break by a non-root caller and polkit, against a real lockbusd on a
 * private system-like bus (bus-test.h) and a polkitd mock answering per UID
 * (polkitd_per_uid.py under python-dbusmock, TESTING.md §3): lockbusd asks
 * CheckAuthorization for io.lockbus1.break with the caller's bus name as
 * subject; the mock resolves the name to its UID, as polkitd does.
 *
 * The mock joins the test bus by D-Bus activation: each case adds a
 * test-only policy (polkit-test-bus.conf: root may own
 * org.freedesktop.PolicyKit1) to the bus's system.d and an activation file
 * running
 *   LOCKBUS_PYTHON -m dbusmock --template LOCKBUS_POLKIT_TEMPLATE
 * to its service directory, then has the bus reload its configuration
 * (ReloadConfig answers once it is in force). The first call to the mock
 * starts it; it runs in the bus's process group, so test_bus_free() ends
 * it with the bus.
 *
 * Nothing here sleeps. A slow polkit is the mock holding its answers until
 * told (HoldAnswers/ReleaseAnswers); the one place where time itself is the
 * subject, that lockbusd does not exit on idle while it waits for polkit,
 * uses the mock's own timer: lockbusd sees no event at all while the mock
 * waits (a timer of its own would wake its loop and so hide the idle
 * period), and the test waits for the Break's answer.
 *
 * Needs root (the callers run as another UID) and python3-dbusmock; skips
 * without them. */

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus-test.h"

#define POLKIT_BUS_NAME         "org.freedesktop.PolicyKit1"
#define POLKIT_OBJECT_PATH      "/org/freedesktop/PolicyKit1/Authority"
#define DBUS_MOCK_IFACE         "org.freedesktop.DBus.Mock"

#define CHILD_COMM "lockbus-child"

/* The idle timeout of the idle case, and how long the mock then waits
 * before it answers: several idle periods. */
static const char *const idle_args[] = { "--idle-timeout=0.2", NULL };
#define IDLE_MOCK_DELAY_MSEC 1000U

/* NULL when python3-dbusmock can be imported, else why not. */
static const char *dbusmock_missing(void) {
        static char *reason = NULL;
        static bool checked = false;
        g_autoptr(GError) error = NULL;
        g_autofree char *err = NULL;
        const char *python;
        int status;

        if (checked)
                return reason;
        checked = true;

        python = test_getenv_required("LOCKBUS_PYTHON");
        if (!g_spawn_sync(NULL, (char *[]) { (char *) python, (char *) "-c", (char *) "import dbusmock", NULL },
                          NULL, G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, NULL, &err, &status, &error))
                reason = g_strdup_printf("%s cannot run: %s", python, error->message);
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                reason = g_strdup_printf("python3-dbusmock is not installed for %s "
                                         "(apt-get install python3-dbusmock)", python);
        return reason;
}

static bool skip_unless_ready(void) {
        const char *reason;

        if (test_skip_unless_root())
                return true;
        reason = dbusmock_missing();
        if (reason) {
                g_test_skip(reason);
                return true;
        }
        return false;
}

/* Lets the mock on the bus (see above); with_mock: also makes it
 * activatable, else polkit stays absent. */
static void setup_polkit(TestFixture *f, bool with_mock) {
        g_autofree char *path = g_build_filename(f->bus->dir, "system.d", "polkit-test-bus.conf", NULL);
        g_autofree char *services = g_build_filename(f->bus->dir, "services", NULL);

        test_copy_file(test_getenv_required("LOCKBUS_POLKIT_BUS_POLICY"), path, 0644);
        if (with_mock)
                test_bus_write_activation_file(services, POLKIT_BUS_NAME, (const char *const[]) {
                        test_getenv_required("LOCKBUS_PYTHON"), "-m", "dbusmock", "--template",
                        test_getenv_required("LOCKBUS_POLKIT_TEMPLATE"), NULL,
                });
        test_bus_reload_config(f->client);
}

static void fixture_setup(TestFixture *f, gconstpointer data) {
        test_fixture_setup_with_args(f, data);
        if (geteuid() == 0 && !dbusmock_missing())
                setup_polkit(f, true);
}

static void fixture_setup_without_polkit(TestFixture *f, gconstpointer data) {
        test_fixture_setup_with_args(f, data);
        setup_polkit(f, false);
}

#define polkit_test_add(path, func) \
        g_test_add((path), TestFixture, NULL, fixture_setup, (func), test_fixture_teardown)
#define polkit_test_add_with_args(path, args, func) \
        g_test_add((path), TestFixture, (args), fixture_setup, (func), test_fixture_teardown)

/* --- The mock's control interface ------------------------------------------ */

static void mock_call(TestFixture *f, const char *member, sd_bus_message **ret_reply, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *what = g_strdup_printf("mock %s()", member);
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(f->client, &m, POLKIT_BUS_NAME, POLKIT_OBJECT_PATH, DBUS_MOCK_IFACE,
                                           member);
        g_assert_cmpint(r, >=, 0);
        if (types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                g_assert_cmpint(r, >=, 0);
        }
        r = sd_bus_call(f->client, m, 0, &error, ret_reply);
        test_assert_call_ok(r, &error, __FILE__, __LINE__, G_STRFUNC, what);
}

/* The mock allows io.lockbus1.break for exactly these UIDs. */
static void mock_allow_break(TestFixture *f, const uid_t *uids, size_t n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree uint32_t *array = g_new0(uint32_t, MAX(n, 1U));
        int r;

        for (size_t i = 0; i < n; i++)
                array[i] = (uint32_t) uids[i];
        r = sd_bus_message_new_method_call(f->client, &m, POLKIT_BUS_NAME, POLKIT_OBJECT_PATH, DBUS_MOCK_IFACE,
                                           "SetAllowedUids");
        g_assert_cmpint(r, >=, 0);
        g_assert_cmpint(sd_bus_message_append(m, "s", LOCKBUS_POLKIT_ACTION_BREAK), >=, 0);
        g_assert_cmpint(sd_bus_message_append_array(m, 'u', array, n * sizeof(uint32_t)), >=, 0);
        r = sd_bus_call(f->client, m, 0, &error, NULL);
        assert_call_ok(r, &error);
}

static unsigned mock_release_answers(TestFixture *f, uint32_t delay_msec) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t n = 0;

        mock_call(f, "ReleaseAnswers", &reply, "u", delay_msec);
        g_assert_cmpint(sd_bus_message_read(reply, "u", &n), >, 0);
        return n;
}

typedef struct PolkitCheck {
        char *name;             /* the subject's bus name */
        uint32_t uid;           /* its UID, as the mock found it */
        char *action;
        uint32_t flags;
} PolkitCheck;

static void polkit_check_free(PolkitCheck *c) {
        if (!c)
                return;
        g_free(c->name);
        g_free(c->action);
        g_free(c);
}

/* Every CheckAuthorization the mock got so far, in order. */
static GPtrArray *mock_get_checks(TestFixture *f) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        GPtrArray *checks = g_ptr_array_new_with_free_func((GDestroyNotify) polkit_check_free);
        const char *name, *action;
        uint32_t uid, flags;
        int r;

        mock_call(f, "GetChecks", &reply, NULL);
        g_assert_cmpint(sd_bus_message_enter_container(reply, 'a', "(susu)"), >, 0);
        while ((r = sd_bus_message_read(reply, "(susu)", &name, &uid, &action, &flags)) > 0) {
                PolkitCheck *c = g_new0(PolkitCheck, 1);

                c->name = g_strdup(name);
                c->uid = uid;
                c->action = g_strdup(action);
                c->flags = flags;
                g_ptr_array_add(checks, c);
        }
        g_assert_cmpint(r, ==, 0);
        g_assert_cmpint(sd_bus_message_exit_container(reply), >=, 0);
        return checks;
}

/* The mock got exactly one check, for io.lockbus1.break by `name`
 * (resolved to `uid`) with these flags. */
static void assert_checked_once(TestFixture *f, const char *name, uid_t uid, uint32_t flags) {
        g_autoptr(GPtrArray) checks = mock_get_checks(f);
        const PolkitCheck *c;

        g_assert_cmpuint(checks->len, ==, 1);
        c = checks->pdata[0];
        g_assert_cmpstr(c->name, ==, name);
        g_assert_cmpuint(c->uid, ==, uid);
        g_assert_cmpstr(c->action, ==, LOCKBUS_POLKIT_ACTION_BREAK);
        g_assert_cmpuint(c->flags, ==, flags);
}

/* --- A client that breaks asynchronously ------------------------------------
 * test_client_serve() makes its calls one at a time; this child (its loop
 * with other commands, test_client_serve_with(): "= RESULT" answers,
 * "reply ID RESULT" for async calls, so test_client_command() and
 * test_client_wait_reply() work with it) leaves a Break waiting:
 *   StartBreak ID R [interactive]  sends Break(R) (with
 *                                  ALLOW_INTERACTIVE_AUTHORIZATION) → ok
 *   Ping                           Peer.Ping on lockbusd over the same
 *                                  connection, then dispatches → ok: every
 *                                  answer lockbusd sent before is reported
 *   Unique                         → ok UNIQUE-NAME
 * Child side: no g_assert (see bus-test.h). */

static char *breaker_command(sd_bus *bus, int fd, const char *line) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_auto(GStrv) words = g_strsplit(line, " ", -1);
        guint n = g_strv_length(words);
        const char *unique = NULL;
        int r;

        if (n == 1 && g_str_equal(words[0], "Unique")) {
                r = sd_bus_get_unique_name(bus, &unique);
                return r < 0 ? test_format_result(r, NULL) : g_strdup_printf("ok %s", unique);
        }
        if (n == 1 && g_str_equal(words[0], "Ping")) {
                r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer",
                                       "Ping", &error, NULL, NULL);
                if (r < 0)
                        return test_format_result(r, &error);
                /* Replies queued during the Ping, reported before its answer. */
                do
                        r = sd_bus_process(bus, NULL);
                while (r > 0);
                return test_format_result(r, NULL);
        }
        if (IN_SET(n, 3U, 4U) && g_str_equal(words[0], "StartBreak") &&
            (n == 3 || g_str_equal(words[3], "interactive"))) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                r = sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                   LOCKBUS_MANAGER_IFACE, "Break");
                if (r >= 0)
                        r = sd_bus_message_append(m, "s", words[2]);
                if (r >= 0 && n == 4)
                        r = sd_bus_message_set_allow_interactive_authorization(m, true);
                if (r >= 0)
                        r = test_client_call_async(bus, fd, words[1], m);
                return test_format_result(r, NULL);
        }
        return g_strdup_printf("error test: bad command '%s'", line);
}

static int breaker_serve(sd_bus *bus, int fd, void *userdata) {
        return test_client_serve_with(bus, fd, breaker_command);
}

/* --- Helpers ------------------------------------------------------------------ */

/* A client process of `uid` running func (test_client_serve or
 * breaker_serve); *ret_unique: its unique name. */
static TestClient *start_client(TestFixture *f, uid_t uid, TestClientFunc func, char **ret_unique) {
        TestClient *c = test_client_start(f->bus, uid, CHILD_COMM, func, NULL);
        g_autofree char *unique = test_client_command(c, "Unique");

        if (!g_str_has_prefix(unique, "ok :"))
                g_error("client of uid %u: Unique: %s", (unsigned) uid, unique);
        if (ret_unique)
                *ret_unique = g_strdup(unique + strlen("ok "));
        return c;
}

#define start_served(f, uid, ret_unique) start_client((f), (uid), test_client_serve, (ret_unique))
#define start_breaker(f, uid, ret_unique) start_client((f), (uid), breaker_serve, (ret_unique))

static char *access_denied_result(const char *resource, uid_t uid) {
        return g_strdup_printf("error " SD_BUS_ERROR_ACCESS_DENIED ": "
                               "Breaking the lock on resource '%s' is not allowed for uid %u",
                               resource, (unsigned) uid);
}

/* A Break refused because polkit could not answer: AccessDenied, and the
 * message says why after the refusal. */
static void assert_denied_polkit_failed(const char *result, const char *resource, uid_t uid) {
        g_autofree char *expected = access_denied_result(resource, uid);

        if (!g_str_has_prefix(result, expected) || !strstr(result + strlen(expected), " (polkit: "))
                g_error("Break %s: expected \"%s (polkit: …)\", got \"%s\"", resource, expected, result);
}

/* The single holder of `resource`: its token and UID. */
static void assert_single_holder(TestFixture *f, const char *resource, uid_t uid, uint64_t token) {
        g_autoptr(GPtrArray) holders = test_owner_ok(f->client, resource, NULL);
        const TestHolder *h;

        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        g_assert_cmpuint(h->uid, ==, uid);
        g_assert_cmpuint(h->token, ==, token);
}

/* --- Tests -------------------------------------------------------------------- */

static void test_allowed_uid(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) waiter = NULL, breaker = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *waiter_name = NULL, *breaker_name = NULL, *got = NULL;
        const TestHolder *h;
        uint64_t t0, tw;

        if (skip_unless_ready())
                return;
        mock_allow_break(f, (uid_t[]) { TEST_OTHER_UID }, 1);

        /* Root's persistent lock, a waiter of another user behind it. */
        t0 = test_lock_ok(f->client, "db");
        waiter = start_served(f, TEST_OTHER_UID, &waiter_name);
        assert_client_command(waiter, "ok 1", "Start w db timeout=max");

        /* polkit allows 65534: its Break frees the lock, the waiter gets it. */
        breaker = start_served(f, TEST_OTHER_UID, &breaker_name);
        assert_client_command(breaker, "ok", "Break db");
        got = test_client_wait_reply(waiter, "w");
        g_assert_true(g_str_has_prefix(got, "ok "));
        tw = g_ascii_strtoull(got + 3, NULL, 10);
        g_assert_cmpuint(tw, >, t0);

        holders = test_owner_ok(f->client, "db", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        g_assert_cmpuint(h->uid, ==, TEST_OTHER_UID);
        g_assert_cmpuint(h->token, ==, tw);
        g_assert_cmpstr(h->sender, ==, waiter_name);
        g_assert_cmpstr(h->scope, ==, "connection");
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        /* lockbusd asked about the caller, by its bus name, not
         * interactively (the caller did not allow it). */
        assert_checked_once(f, breaker_name, TEST_OTHER_UID, 0);
}

static void test_other_uid_only(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) waiter = NULL, breaker = NULL, second = NULL;
        g_autoptr(GPtrArray) before = NULL, after = NULL, checks = NULL;
        g_autofree char *waiter_name = NULL, *breaker_name = NULL, *second_name = NULL, *expected = NULL,
                *got = NULL;
        uid_t uid2;
        uint64_t t0;

        if (skip_unless_ready())
                return;
        uid2 = test_second_uid();
        if (uid2 == 0) {
                g_test_skip("no second unprivileged account in the passwd database");
                return;
        }
        mock_allow_break(f, (uid_t[]) { uid2 }, 1);

        t0 = test_lock_ok(f->client, "db");
        waiter = start_served(f, TEST_OTHER_UID, &waiter_name);
        assert_client_command(waiter, "ok 1", "Start w db timeout=max");
        before = test_list_locks_ok(f->client);

        /* Only uid2 may: 65534 gets a plain AccessDenied. */
        breaker = start_served(f, TEST_OTHER_UID, &breaker_name);
        expected = access_denied_result("db", TEST_OTHER_UID);
        assert_client_command(breaker, expected, "Break db");

        /* Nothing changed: root's hold, the waiter still waiting. */
        after = test_list_locks_ok(f->client);
        g_assert_cmpuint(after->len, ==, before->len);
        assert_single_holder(f, "db", 0, t0);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 1);

        /* The same question for uid2 gets the other answer: it is the UID
         * that decides. */
        second = start_served(f, uid2, &second_name);
        assert_client_command(second, "ok", "Break db");
        got = test_client_wait_reply(waiter, "w");
        g_assert_true(g_str_has_prefix(got, "ok "));

        checks = mock_get_checks(f);
        g_assert_cmpuint(checks->len, ==, 2);
        g_assert_cmpstr(((PolkitCheck *) checks->pdata[0])->name, ==, breaker_name);
        g_assert_cmpuint(((PolkitCheck *) checks->pdata[0])->uid, ==, TEST_OTHER_UID);
        g_assert_cmpstr(((PolkitCheck *) checks->pdata[1])->name, ==, second_name);
        g_assert_cmpuint(((PolkitCheck *) checks->pdata[1])->uid, ==, uid2);
}

static void test_root_not_asked(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) holder = NULL;
        g_autoptr(GPtrArray) checks = NULL;

        if (skip_unless_ready())
                return;
        /* The mock allows nobody; root needs no permission. */
        mock_allow_break(f, NULL, 0);

        holder = start_served(f, TEST_OTHER_UID, NULL);
        (void) test_client_command_ok(holder, "Lock db");
        test_break_ok(f->client, "db");
        test_assert_not_locked(f->client, "db");

        checks = mock_get_checks(f);
        g_assert_cmpuint(checks->len, ==, 0);
}

static void test_interactive(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) breaker = NULL;
        g_autofree char *breaker_name = NULL, *got = NULL;

        if (skip_unless_ready())
                return;
        mock_allow_break(f, (uid_t[]) { TEST_OTHER_UID }, 1);

        (void) test_lock_ok(f->client, "db");
        breaker = start_breaker(f, TEST_OTHER_UID, &breaker_name);
        assert_client_command(breaker, "ok", "StartBreak b db interactive");
        got = test_client_wait_reply(breaker, "b");
        g_assert_cmpstr(got, ==, "ok");
        test_assert_not_locked(f->client, "db");

        /* The caller allowed interaction, so lockbusd lets polkit ask. */
        assert_checked_once(f, breaker_name, TEST_OTHER_UID, 1);
}

static void test_absent(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) breaker = NULL;
        g_autofree char *got = NULL;
        uint64_t t0;

        if (test_skip_unless_root())
                return;

        /* Nobody provides org.freedesktop.PolicyKit1: fail closed. */
        t0 = test_lock_ok(f->client, "db");
        breaker = start_served(f, TEST_OTHER_UID, NULL);
        got = test_client_command(breaker, "Break db");
        assert_denied_polkit_failed(got, "db", TEST_OTHER_UID);
        assert_single_holder(f, "db", 0, t0);
}

static void test_vanishes(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) breaker = NULL;
        g_autofree char *got = NULL;
        uint64_t t0;
        pid_t mock_pid;

        if (skip_unless_ready())
                return;
        mock_allow_break(f, (uid_t[]) { TEST_OTHER_UID }, 1);
        mock_call(f, "HoldAnswers", NULL, "b", true);

        t0 = test_lock_ok(f->client, "db");
        breaker = start_breaker(f, TEST_OTHER_UID, NULL);
        assert_client_command(breaker, "ok", "StartBreak b db");
        mock_call(f, "WaitForChecks", NULL, "u", 1U);

        /* polkit dies with the question unanswered (it would have said
         * yes): the bus answers NoReply in its place, lockbusd refuses. */
        mock_pid = test_bus_pid_of(f->bus, POLKIT_BUS_NAME);
        g_assert_cmpint(mock_pid, >, 0);
        g_assert_cmpint(kill(mock_pid, SIGKILL), ==, 0);

        got = test_client_wait_reply(breaker, "b");
        assert_denied_polkit_failed(got, "db", TEST_OTHER_UID);
        assert_single_holder(f, "db", 0, t0);
}

static void test_slow_answer(TestFixture *f, gconstpointer data) {
        g_autoptr(TestClient) waiter = NULL, breaker = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *breaker_name = NULL, *got = NULL;
        uint64_t t0;

        if (skip_unless_ready())
                return;
        mock_allow_break(f, (uid_t[]) { TEST_OTHER_UID }, 1);
        mock_call(f, "HoldAnswers", NULL, "b", true);

        t0 = test_lock_ok(f->client, "db");
        waiter = start_served(f, TEST_OTHER_UID, NULL);
        assert_client_command(waiter, "ok 1", "Start w db timeout=max");

        /* The Break reaches polkit, which keeps its answer back. */
        breaker = start_breaker(f, TEST_OTHER_UID, &breaker_name);
        assert_client_command(breaker, "ok", "StartBreak b db");
        mock_call(f, "WaitForChecks", NULL, "u", 1U);

        /* Meanwhile lockbusd serves everybody else, and the Break waits. */
        (void) test_lock_ok(f->client, "other");
        assert_single_holder(f, "db", 0, t0);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 1);
        (void) test_client_command_ok(waiter, "Lock mine");
        holders = test_list_locks_ok(f->client);
        g_assert_cmpuint(holders->len, ==, 3);
        assert_client_command(breaker, "ok", "Ping");
        g_assert_false(g_hash_table_contains(breaker->replies, "b"));

        /* polkit says yes: the Break is answered, the waiter served. */
        g_assert_cmpuint(mock_release_answers(f, 0), ==, 1);
        got = test_client_wait_reply(breaker, "b");
        g_assert_cmpstr(got, ==, "ok");
        g_clear_pointer(&got, g_free);
        got = test_client_wait_reply(waiter, "w");
        g_assert_true(g_str_has_prefix(got, "ok "));
        g_assert_cmpuint(g_ascii_strtoull(got + 3, NULL, 10), >, t0);

        assert_checked_once(f, breaker_name, TEST_OTHER_UID, 0);
}

static void test_no_idle_exit(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *keeper = NULL;
        g_autoptr(TestNameWatch) watch = NULL;
        g_autoptr(TestClient) breaker = NULL;
        g_autofree char *got = NULL;
        pid_t pid;

        if (skip_unless_ready())
                return;
        mock_allow_break(f, (uid_t[]) { TEST_OTHER_UID }, 1);
        mock_call(f, "HoldAnswers", NULL, "b", true);

        /* A connection hold keeps lockbusd from its first call on, until
         * the Break's question is with polkit. */
        watch = test_bus_watch_name(f->client, LOCKBUS_BUS_NAME);
        keeper = test_bus_connect(f->bus);
        (void) test_acquire_ok(keeper, "keep", NULL);
        pid = test_bus_daemon_pid(f->bus);
        g_assert_cmpint(pid, >, 0);
        (void) test_lock_ok(f->client, "db");

        breaker = start_breaker(f, TEST_OTHER_UID, NULL);
        assert_client_command(breaker, "ok", "StartBreak b db");
        mock_call(f, "WaitForChecks", NULL, "u", 1U);
        test_bus_disconnect(f->client, keeper);
        keeper = NULL;

        /* Only the pending question is left. The mock answers after several
         * idle periods in which lockbusd sees no event at all; it must
         * still be there to answer the Break. */
        g_assert_cmpuint(mock_release_answers(f, IDLE_MOCK_DELAY_MSEC), ==, 1);
        got = test_client_wait_reply(breaker, "b");
        g_assert_cmpstr(got, ==, "ok");
        test_bus_sync(f->client);
        g_assert_cmpuint(test_name_watch_n_gone(watch), ==, 0);
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);
        test_assert_not_locked(f->client, "db");
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        polkit_test_add("/polkit/break/allowed-uid", test_allowed_uid);
        polkit_test_add("/polkit/break/other-uid-only", test_other_uid_only);
        polkit_test_add("/polkit/break/root-not-asked", test_root_not_asked);
        polkit_test_add("/polkit/break/interactive", test_interactive);
        g_test_add("/polkit/break/absent", TestFixture, NULL, fixture_setup_without_polkit, test_absent,
                   test_fixture_teardown);
        polkit_test_add("/polkit/break/vanishes", test_vanishes);
        polkit_test_add("/polkit/break/slow-answer", test_slow_answer);
        polkit_test_add_with_args("/polkit/break/no-idle-exit", idle_args, test_no_idle_exit);

        return g_test_run();
}
