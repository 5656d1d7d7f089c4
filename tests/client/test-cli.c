/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbusctl, black box: the built binary against lockbusd on a private
 * bus (one per test case). Every command, every exit status, the JSON
 * output parsed, run's environment, fds and signals, two runs handing a
 * lock over, --user on a private session bus, the pager, bash completion. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli-test.h"

#define EXIT_CONFLICT   1
#define EXIT_USAGE      2
#define EXIT_NOT_LOCKED 3
#define EXIT_NOT_ALLOWED 4
#define EXIT_OTHER      5

static const char *const holder_keys[] = {
        "resource", "mode", "uid", "user", "pid", "comm", "sender", "token", "since", "expires", "scope",
        "description", NULL
};

static const char *const column_names[] = {
        "RESOURCE", "MODE", "USER", "PID", "COMM", "SCOPE", "TOKEN", "SINCE", "EXPIRES", "DESCRIPTION", NULL
};

static void cli_assert_ok(CliResult *r, const char *file, int line, const char *func) {
        test_assert_cli_status(r, 0, "lockbusctl", file, line, func);
        cli_result_free(r);
}
/* Runs lockbusctl, which must succeed; its output is not needed. */
#define cli_ok(b, ...) cli_assert_ok(cli((b), __VA_ARGS__), __FILE__, __LINE__, G_STRFUNC)
#define cli_with_ok(b, s, ...) cli_assert_ok(cli_with((b), (s), __VA_ARGS__), __FILE__, __LINE__, G_STRFUNC)

static uint64_t parse_token(const char *out) {
        g_autoptr(GError) error = NULL;
        g_autofree char *s = g_strdup(out);
        guint64 token = 0;

        g_assert_true(g_str_has_suffix(s, "\n"));
        g_strchomp(s);
        if (!g_ascii_string_to_unsigned(s, 10, 1, G_MAXUINT64, &token, &error))
                g_error("Not a token: \"%s\"", out);
        return token;
}

static char *user_name(uid_t uid) {
        struct passwd *pw = getpwuid(uid);

        return pw ? g_strdup(pw->pw_name) : g_strdup_printf("%u", (unsigned) uid);
}

/* The hold on `resource` goes away, also if the service learns of it only
 * later (a closed fd): an Acquire that waits for it is granted. */
static void assert_released(TestFixture *f, const char *resource) {
        TestAcquireOptions o = { .has_timeout = true, .timeout = TEST_TIMEOUT_USEC };

        test_acquire_ok(f->client, resource, &o);
        test_unlock_ok(f->client, resource);
}

static bool is_timestamp(const char *s) {
        return g_regex_match_simple("^(Sun|Mon|Tue|Wed|Thu|Fri|Sat) [0-9]{4}-[0-9]{2}-[0-9]{2} "
                                    "[0-9]{2}:[0-9]{2}:[0-9]{2} UTC$", s, 0, 0);
}

/* --- Help, version, usage ---------------------------------------------------- */

static void test_cli_help(TestFixture *f, gconstpointer data) {
        static const char *const verbs[] = { "lock", "unlock", "owner", "list", "run", "refresh", "break", "status" };
        g_autoptr(CliResult) r = cli(f->bus, "--help");
        g_autoptr(CliResult) h = cli(f->bus, "-h");
        g_autoptr(CliResult) v = cli(f->bus, "--version");
        g_autofree char *version = g_strdup_printf("lockbusctl %s\n", g_getenv("LOCKBUS_VERSION"));

        assert_cli_status(r, 0);
        g_assert_cmpstr(r->err, ==, "");
        for (size_t i = 0; i < G_N_ELEMENTS(verbs); i++) {
                g_autofree char *line = g_strdup_printf("\n  %s ", verbs[i]);

                g_assert_nonnull(strstr(r->out, line));
        }
        g_assert_nonnull(strstr(r->out, "--conflict-exit-code"));
        assert_cli_status(h, 0);
        g_assert_cmpstr(h->out, ==, r->out);

        assert_cli_status(v, 0);
        g_assert_cmpstr(v->out, ==, version);
}

static void test_cli_usage(TestFixture *f, gconstpointer data) {
        g_autofree char *long_description = g_strnfill(1025, 'x');
        g_autofree char *description_arg = g_strconcat("--description=", long_description, NULL);
        const char *const *cases[] = {
                (const char *const[]) { "frobnicate", NULL },
                (const char *const[]) { "lock", NULL },
                (const char *const[]) { "lock", "a", "b", NULL },
                (const char *const[]) { "unlock", NULL },
                (const char *const[]) { "owner", "a", "b", NULL },
                (const char *const[]) { "list", "extra", NULL },
                (const char *const[]) { "status", "extra", NULL },
                (const char *const[]) { "run", "db", NULL },
                (const char *const[]) { "run", "db", "-c", "true", "extra", NULL },
                (const char *const[]) { "lock", "-c", "true", "db", NULL },
                (const char *const[]) { "--bogus", "list", NULL },
                (const char *const[]) { "lock", "-w", "soon", "db", NULL },
                (const char *const[]) { "lock", "-w", "-1", "db", NULL },
                (const char *const[]) { "lock", "--wait=5x", "db", NULL },
                (const char *const[]) { "lock", "-w", NULL },
                (const char *const[]) { "lock", "--ttl=infinity", "db", NULL },
                (const char *const[]) { "lock", "--ttl=", "db", NULL },
                (const char *const[]) { "lock", "-E", "256", "db", NULL },
                (const char *const[]) { "lock", "-E", "x", "db", NULL },
                (const char *const[]) { "--json=long", "list", NULL },
                (const char *const[]) { "--user", "-H", "host", "list", NULL },
                /* Refused by the service: InvalidResource, InvalidArgs. */
                (const char *const[]) { "lock", "", NULL },
                (const char *const[]) { "lock", "a\001b", NULL },
                (const char *const[]) { "lock", description_arg, "db", NULL },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autoptr(CliResult) r = cli_run(f->bus, NULL, cases[i]);
                g_autofree char *line = g_strjoinv(" ", (char **) cases[i]);

                g_test_message("lockbusctl %.60s", line);
                assert_cli_status(r, EXIT_USAGE);
                g_assert_cmpstr(r->out, ==, "");
                g_assert_cmpstr(r->err, !=, "");
        }

        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "");

                g_assert_nonnull(strstr(r->err, "nvalid resource"));
        }
        /* Nothing was taken on the way. */
        {
                g_autoptr(GPtrArray) locks = test_list_locks_ok(f->client);

                g_assert_cmpuint(locks->len, ==, 0);
        }
}

/* --- lock, unlock, owner -------------------------------------------------------- */

static void test_cli_lock_unlock(TestFixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *mode = NULL, *busy = NULL;
        uint64_t token, token2;
        TestHolder *h;

        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "db");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->err, ==, "");
                token = parse_token(r->out);
        }

        /* Persistent, exclusive, ours, taken by lockbusctl. */
        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "exclusive");
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        g_assert_cmpstr(h->scope, ==, "persistent");
        g_assert_cmpuint(h->uid, ==, geteuid());
        g_assert_cmpstr(h->comm, ==, "lockbusctl");
        g_assert_cmpuint(h->token, ==, token);

        /* Taken: the service's message, the conflict status, -E. */
        busy = g_strdup_printf("Resource 'db' already locked by uid %u (pid %u, lockbusctl)\n",
                               (unsigned) geteuid(), (unsigned) h->pid);
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "db");

                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_cmpstr(r->out, ==, "");
                g_assert_cmpstr(r->err, ==, busy);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "-E", "75", "db");

                assert_cli_status(r, 75);
                g_assert_cmpstr(r->err, ==, busy);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "--conflict-exit-code=0", "lock", "db");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "-q", "lock", "db");

                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_cmpstr(r->out, ==, "");
                g_assert_cmpstr(r->err, ==, "");
        }

        /* owner: the table; -q: only the status. */
        {
                g_autoptr(CliResult) r = cli(f->bus, "owner", "db");

                assert_cli_status(r, 0);
                g_assert_true(g_str_has_prefix(r->out, "RESOURCE "));
                g_assert_nonnull(strstr(r->out, "\ndb "));
                g_assert_true(g_str_has_suffix(r->out, "\n1 lock listed.\n"));
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "-q", "owner", "db");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "");
        }

        {
                g_autoptr(CliResult) r = cli(f->bus, "unlock", "db");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "");
                g_assert_cmpstr(r->err, ==, "");
        }
        test_assert_not_locked(f->client, "db");

        /* Free: not locked. */
        {
                g_autoptr(CliResult) r = cli(f->bus, "unlock", "db");

                assert_cli_status(r, EXIT_NOT_LOCKED);
                g_assert_cmpstr(r->err, ==, "Resource 'db' not locked\n");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "-q", "unlock", "db");

                assert_cli_status(r, EXIT_NOT_LOCKED);
                g_assert_cmpstr(r->err, ==, "");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "owner", "db");

                assert_cli_status(r, EXIT_NOT_LOCKED);
                g_assert_cmpstr(r->out, ==, "");
                g_assert_cmpstr(r->err, ==, "Resource 'db' not locked\n");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "-q", "owner", "db");

                assert_cli_status(r, EXIT_NOT_LOCKED);
                g_assert_cmpstr(r->err, ==, "");
        }

        /* Tokens only grow; options after the resource work too. */
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "db", "--description=again");

                assert_cli_status(r, 0);
                token2 = parse_token(r->out);
                g_assert_cmpuint(token2, >, token);
        }
        {
                g_autoptr(GPtrArray) again = test_owner_ok(f->client, "db", NULL);

                g_assert_cmpstr(((TestHolder *) again->pdata[0])->description, ==, "again");
        }
}

static void test_cli_shared(TestFixture *f, gconstpointer data) {
        TestAcquireOptions shared = { .mode = "shared" };
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *mode = NULL;

        /* A shared hold of the test's connection, and a persistent one
         * of lockbusctl's (the other way round the connection's request
         * would find the persistent hold of its uid: AlreadyLocked). */
        test_acquire_ok(f->client, "db", &shared);
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "-s", "--description=reader", "db");

                assert_cli_status(r, 0);
        }
        holders = test_owner_ok(f->client, "db", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(holders->len, ==, 2);

        /* An exclusive one does not; -x after -s wins. */
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "-s", "-x", "db");

                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_nonnull(strstr(r->err, "already locked"));
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "--no-legend", "owner", "db");
                g_auto(GStrv) lines = g_strsplit(r->out, "\n", -1);

                assert_cli_status(r, 0);
                g_assert_cmpuint(g_strv_length(lines), ==, 3);     /* two rows and "" */
                g_assert_true(g_str_has_prefix(lines[0], "db  shared "));
                g_assert_true(g_str_has_prefix(lines[1], "db  shared "));
        }
}

/* --- Waiting -------------------------------------------------------------------- */

static void test_cli_wait(TestFixture *f, gconstpointer data) {
        g_autoptr(CliCallWatch) watch = NULL;
        g_autoptr(CliProcess) forever = NULL, flock_style = NULL;
        uint64_t t1, t2;

        /* A connection hold of the test's: lockbusctl waits behind it (a
         * persistent hold of our uid would be its own: AlreadyLocked). */
        test_acquire_ok(f->client, "db", NULL);
        test_acquire_ok(f->client, "db2", NULL);

        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "-w", "200ms", "db");

                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_true(g_str_has_prefix(r->err, "Timed out waiting for resource 'db'"));
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "--wait=0.1", "-E", "9", "db");

                assert_cli_status(r, 9);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "-w", "0.1", "-n", "db");

                /* -n after -w: no wait, AlreadyLocked. */
                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_true(g_str_has_prefix(r->err, "Resource 'db' already locked"));
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "-q", "lock", "-w", "100ms", "db");

                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_cmpstr(r->err, ==, "");
        }

        /* --wait alone waits for ever; "--wait 5" takes the 5 (flock's way). */
        watch = cli_call_watch_new(f->bus);
        forever = cli_startv(f->bus, NULL, "lock", "--wait", "db");
        cli_call_watch_wait(watch, "Acquire", "db", f->client);
        flock_style = cli_startv(f->bus, NULL, "lock", "--wait", "5", "db2");
        cli_call_watch_wait(watch, "Acquire", "db2", f->client);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 2);

        test_unlock_ok(f->client, "db");
        g_assert_cmpint(cli_process_wait(forever), ==, 0);
        t1 = parse_token(forever->out->str);
        test_unlock_ok(f->client, "db2");
        g_assert_cmpint(cli_process_wait(flock_style), ==, 0);
        t2 = parse_token(flock_style->out->str);
        g_assert_cmpuint(t2, >, t1);

        {
                g_autoptr(GPtrArray) holders = test_owner_ok(f->client, "db2", NULL);

                g_assert_cmpstr(((TestHolder *) holders->pdata[0])->scope, ==, "persistent");
        }
}

/* Two (three) lockbusctl run processes hand a lock over with --wait, in
 * the order they asked. */
static void test_cli_run_handover(TestFixture *f, gconstpointer data) {
        static const CliSpawn with_stdin = { .keep_stdin = true, .leak_fd = -1 };
        g_autoptr(CliCallWatch) watch = NULL;
        g_autoptr(CliProcess) a = NULL, b = NULL, c = NULL;
        g_autofree char *line_a = NULL, *line_b = NULL, *line_c = NULL, *done = NULL;
        uint64_t ta, tb, tc;

        a = cli_startv(f->bus, &with_stdin, "run", "-w", "5", "db", "--",
                       "sh", "-c", "echo \"held $LOCKBUS_TOKEN\"; read x; echo released");
        line_a = cli_process_read_line(a);
        g_assert_true(g_str_has_prefix(line_a, "held "));
        ta = g_ascii_strtoull(line_a + 5, NULL, 10);

        /* From here on each AcquireFd('db') is one of a waiter. */
        watch = cli_call_watch_new(f->bus);

        b = cli_startv(f->bus, &with_stdin, "run", "--wait", "db", "--",
                       "sh", "-c", "echo \"held $LOCKBUS_TOKEN\"; read x || true");
        cli_call_watch_wait(watch, "AcquireFd", "db", f->client);
        c = cli_startv(f->bus, NULL, "run", "--wait=10s", "db", "-c", "echo \"held $LOCKBUS_TOKEN\"");
        cli_call_watch_wait(watch, "AcquireFd", "db", f->client);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 2);
        g_assert_cmpstr(b->out->str, ==, "");

        /* A's command ends: B has it, C still waits. */
        cli_process_close_stdin(a);
        done = cli_process_read_line(a);
        g_assert_cmpstr(done, ==, "released");
        g_assert_cmpint(cli_process_wait(a), ==, 0);
        line_b = cli_process_read_line(b);
        g_assert_true(g_str_has_prefix(line_b, "held "));
        tb = g_ascii_strtoull(line_b + 5, NULL, 10);
        g_assert_cmpuint(tb, >, ta);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 1);

        cli_process_close_stdin(b);
        g_assert_cmpint(cli_process_wait(b), ==, 0);
        line_c = cli_process_read_line(c);
        g_assert_true(g_str_has_prefix(line_c, "held "));
        tc = g_ascii_strtoull(line_c + 5, NULL, 10);
        g_assert_cmpuint(tc, >, tb);
        g_assert_cmpint(cli_process_wait(c), ==, 0);

        /* Released at exit, not later. */
        test_assert_not_locked(f->client, "db");
}

/* --- run ------------------------------------------------------------------------ */

static GPtrArray *list_fds(pid_t pid) {
        g_autofree char *path = g_strdup_printf("/proc/%d/fd", (int) pid);

        return test_list_tree(path, NULL);
}

static void test_cli_run_environment(TestFixture *f, gconstpointer data) {
        static const CliSpawn spawn = { .keep_stdin = true, .leak_fd = 7 };
        g_autoptr(CliProcess) p = NULL;
        g_autofree char *resource = NULL, *token = NULL, *pid_line = NULL, *fd7 = NULL;
        g_autoptr(GPtrArray) holders = NULL, fds = NULL;
        TestHolder *h;
        pid_t cmd;

        p = cli_startv(f->bus, &spawn, "run", "a b/\xc3\xbc", "--",
                       "sh", "-c", "echo \"$LOCKBUS_RESOURCE\"; echo \"$LOCKBUS_TOKEN\"; echo $$; exec cat");
        resource = cli_process_read_line(p);
        token = cli_process_read_line(p);
        pid_line = cli_process_read_line(p);
        g_assert_cmpstr(resource, ==, "a b/\xc3\xbc");
        cmd = (pid_t) g_ascii_strtoll(pid_line, NULL, 10);
        g_assert_cmpint(cmd, >, 0);

        /* An fd hold of lockbusctl's, with the token the command got. */
        holders = test_owner_ok(f->client, "a b/\xc3\xbc", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        g_assert_cmpstr(h->scope, ==, "fd");
        g_assert_cmpuint(h->pid, ==, (uint32_t) p->pid);
        g_assert_cmpstr(h->comm, ==, "lockbusctl");
        g_assert_cmpuint(h->token, ==, g_ascii_strtoull(token, NULL, 10));

        /* Once cat echoes a line it runs (its loader and locale files are
         * closed again): only then are its fds the command's own. */
        g_assert_cmpint(write(p->in_fd, "ready\n", 6), ==, 6);
        g_autofree char *echo = cli_process_read_line(p);
        g_assert_cmpstr(echo, ==, "ready");

        /* lockbusctl got fd 7 from us; the command gets 0, 1 and 2 only. */
        fd7 = g_strdup_printf("/proc/%d/fd/7", (int) p->pid);
        g_assert_true(g_file_test(fd7, G_FILE_TEST_EXISTS));
        fds = list_fds(cmd);
        g_assert_cmpuint(fds->len, ==, 3);
        g_assert_cmpstr(fds->pdata[0], ==, "0");
        g_assert_cmpstr(fds->pdata[1], ==, "1");
        g_assert_cmpstr(fds->pdata[2], ==, "2");

        cli_process_close_stdin(p);
        g_assert_cmpint(cli_process_wait(p), ==, 0);
        g_assert_cmpstr(p->err->str, ==, "");
        test_assert_not_locked(f->client, "a b/\xc3\xbc");
}

static void test_cli_run_status(TestFixture *f, gconstpointer data) {
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "--", "sh", "-c", "exit 7");

                assert_cli_status(r, 7);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "-c", "echo \"$LOCKBUS_RESOURCE\"; exit 3");

                assert_cli_status(r, 3);
                g_assert_cmpstr(r->out, ==, "db\n");
        }
        {
                /* The command's options are its own: no "--" needed. */
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "sh", "-c", "echo \"$1\"", "sh", "-x");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "-x\n");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "-s", "db", "true");

                assert_cli_status(r, 0);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "--", "/nonexistent/command");

                assert_cli_status(r, 127);
                g_assert_cmpstr(r->err, ==, "Failed to execute '/nonexistent/command': No such file or directory\n");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "--", "/");

                assert_cli_status(r, 126);
                g_assert_true(g_str_has_prefix(r->err, "Failed to execute '/': "));
        }
        /* Each released the lock before it exited. */
        test_assert_not_locked(f->client, "db");
}

static void test_cli_run_conflict(TestFixture *f, gconstpointer data) {
        test_acquire_ok(f->client, "db", NULL);

        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "--", "sh", "-c", "echo ran");

                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_cmpstr(r->out, ==, "");
                g_assert_true(g_str_has_prefix(r->err, "Resource 'db' already locked by uid"));
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "-E", "75", "db", "-c", "echo ran");

                assert_cli_status(r, 75);
                g_assert_cmpstr(r->out, ==, "");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "-w", "100ms", "db", "-c", "echo ran");

                assert_cli_status(r, EXIT_CONFLICT);
                g_assert_cmpstr(r->out, ==, "");
                g_assert_true(g_str_has_prefix(r->err, "Timed out waiting for resource 'db'"));
        }
}

static void test_cli_run_signal(TestFixture *f, gconstpointer data) {
        static const CliSpawn with_stdin = { .keep_stdin = true, .leak_fd = -1 };

        /* The command killed by a signal: 128+N. */
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "--", "sh", "-c", "kill -TERM $$");

                assert_cli_status(r, 128 + SIGTERM);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "run", "db", "--", "sh", "-c", "kill -KILL $$");

                assert_cli_status(r, 128 + SIGKILL);
        }
        test_assert_not_locked(f->client, "db");

        /* Signals to lockbusctl reach the command. */
        for (int i = 0; i < 2; i++) {
                int sig = i == 0 ? SIGTERM : SIGUSR1;
                g_autoptr(CliProcess) p = cli_startv(f->bus, &with_stdin, "run", "db", "--", "sh", "-c",
                                                     "echo ready; exec cat");
                g_autofree char *ready = cli_process_read_line(p);

                g_assert_cmpstr(ready, ==, "ready");
                g_assert_cmpint(kill(p->pid, sig), ==, 0);
                g_assert_cmpint(cli_process_wait(p), ==, 128 + sig);
                test_assert_not_locked(f->client, "db");
        }
}

/* lockbusctl killed: the hold goes with it, and so does the command. */
static void test_cli_run_killed(TestFixture *f, gconstpointer data) {
        static const CliSpawn with_stdin = { .keep_stdin = true, .leak_fd = -1 };
        g_autoptr(CliProcess) p = cli_startv(f->bus, &with_stdin, "run", "db", "--", "sh", "-c", "echo $$; exec cat");
        g_autofree char *pid_line = cli_process_read_line(p);
        pid_t cmd = (pid_t) g_ascii_strtoll(pid_line, NULL, 10);
        int pidfd = test_pidfd_open(cmd), status;

        g_assert_cmpint(pidfd, >=, 0);
        g_assert_cmpint(kill(p->pid, SIGKILL), ==, 0);
        status = cli_process_wait_status(p);
        g_assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

        test_pidfd_wait_exit(pidfd, "the command to get SIGTERM");
        close(pidfd);
        assert_released(f, "db");
}

/* A hold that ends under a running command: a warning, the command goes on. */
static void test_cli_run_broken(TestFixture *f, gconstpointer data) {
        static const CliSpawn with_stdin = { .keep_stdin = true, .leak_fd = -1 };
        g_autoptr(CliProcess) p = NULL;
        g_autofree char *ready = NULL;

        if (test_skip_unless_root())
                return;

        p = cli_startv(f->bus, &with_stdin, "run", "db", "--", "sh", "-c", "echo ready; exec cat");
        ready = cli_process_read_line(p);
        {
                g_autoptr(CliResult) r = cli(f->bus, "break", "db");

                assert_cli_status(r, 0);
        }
        cli_process_wait_stderr(p, "Warning: the hold on 'db' ended while the command runs");
        cli_process_close_stdin(p);
        g_assert_cmpint(cli_process_wait(p), ==, 0);
}

/* --- list, owner, JSON --------------------------------------------------------------- */

/* The start of each column in the header line. */
static void header_offsets(const char *header, size_t offsets[]) {
        for (size_t c = 0; column_names[c]; c++) {
                const char *at = strstr(header, column_names[c]);

                g_assert_nonnull(at);
                offsets[c] = (size_t) (at - header);
        }
}

static void test_cli_list_table(TestFixture *f, gconstpointer data) {
        g_autofree char *me = user_name(geteuid());
        size_t offsets[G_N_ELEMENTS(column_names)];

        {
                g_autoptr(CliResult) r = cli(f->bus, "list");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "0 locks listed.\n");
        }
        {
                /* list is the default command. */
                g_autoptr(CliResult) r = cli(f->bus, "--no-legend");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "");
        }

        cli_ok(f->bus, "lock", "--description=line1\nline2\ttab", "db");
        cli_ok(f->bus, "lock", "-s", "--ttl=1h", "a b");

        {
                g_autoptr(CliResult) r = cli(f->bus, "list");
                g_auto(GStrv) lines = g_strsplit(r->out, "\n", -1);
                g_auto(GStrv) names = NULL;
                g_autofree char *joined = NULL;

                assert_cli_status(r, 0);
                /* header, 2 rows, "", footer, "" */
                g_assert_cmpuint(g_strv_length(lines), ==, 6);
                names = g_regex_split_simple("  +", lines[0], 0, 0);
                joined = g_strjoinv(",", names);
                g_assert_cmpstr(joined, ==, "RESOURCE,MODE,USER,PID,COMM,SCOPE,TOKEN,SINCE,EXPIRES,DESCRIPTION");
                header_offsets(lines[0], offsets);
                g_assert_cmpstr(lines[3], ==, "");
                g_assert_cmpstr(lines[4], ==, "2 locks listed.");

                /* Sorted by resource; each cell under its header. */
                for (int row = 1; row <= 2; row++) {
                        const char *l = lines[row];
                        const char *expect_resource = row == 1 ? "a b" : "db";
                        const char *expect_mode = row == 1 ? "shared" : "exclusive";
                        g_autofree char *since = NULL, *expires = NULL;

                        g_assert_true(g_str_has_prefix(l + offsets[0], expect_resource));
                        g_assert_true(g_str_has_prefix(l + offsets[1], expect_mode));
                        g_assert_true(g_str_has_prefix(l + offsets[2], me));
                        g_assert_true(g_str_has_prefix(l + offsets[4], "lockbusctl"));
                        g_assert_true(g_str_has_prefix(l + offsets[5], "persistent"));
                        since = g_strndup(l + offsets[7], offsets[8] - offsets[7]);
                        g_strchomp(since);
                        g_assert_true(is_timestamp(since));
                        expires = g_strndup(l + offsets[8], offsets[9] - offsets[8]);
                        g_strchomp(expires);
                        if (row == 1)
                                g_assert_true(is_timestamp(expires));
                        else
                                g_assert_cmpstr(expires, ==, "never");
                }
                /* Control characters escaped: one row per hold. */
                g_assert_cmpstr(lines[2] + offsets[9], ==, "line1\\nline2\\ttab");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "list", "--no-legend");
                g_auto(GStrv) lines = g_strsplit(r->out, "\n", -1);

                assert_cli_status(r, 0);
                g_assert_cmpuint(g_strv_length(lines), ==, 3);
                g_assert_true(g_str_has_prefix(lines[0], "a b  shared  "));
                g_assert_true(g_str_has_prefix(lines[1], "db   exclusive  "));
        }
}

/* JSON holder objects against ListLocks. */
static void assert_json_holders(const TestJson *array, GPtrArray *locks) {
        g_assert_cmpint(array->type, ==, TEST_JSON_ARRAY);
        g_assert_cmpuint(array->items->len, ==, locks->len);
        for (guint i = 0; i < locks->len; i++) {
                const TestJson *o = array->items->pdata[i];
                const TestHolder *h = locks->pdata[i];
                g_autofree char *user = user_name(h->uid);

                test_json_assert_keys(o, holder_keys);
                g_assert_cmpstr(test_json_get_string(o, "resource"), ==, h->resource);
                g_assert_cmpstr(test_json_get_string(o, "mode"), ==, h->mode);
                g_assert_cmpuint(test_json_get_uint(o, "uid"), ==, h->uid);
                g_assert_cmpstr(test_json_get_string(o, "user"), ==, user);
                g_assert_cmpuint(test_json_get_uint(o, "pid"), ==, h->pid);
                g_assert_cmpstr(test_json_get_string(o, "comm"), ==, h->comm);
                g_assert_cmpstr(test_json_get_string(o, "sender"), ==, h->sender);
                g_assert_cmpuint(test_json_get_uint(o, "token"), ==, h->token);
                g_assert_cmpuint(test_json_get_uint(o, "since"), ==, h->since);
                g_assert_cmpuint(test_json_get_uint(o, "expires"), ==, h->expires);
                g_assert_cmpstr(test_json_get_string(o, "scope"), ==, h->scope);
                g_assert_cmpstr(test_json_get_string(o, "description"), ==, h->description);
        }
}

static void test_cli_json(TestFixture *f, gconstpointer data) {
        static const char description[] = "quote \" backslash \\ slash / newline \n tab \t bell \a del \x7f "
                                          "\xc3\xbc \xe2\x82\xac \xf0\x9f\x94\x92";
        g_autofree char *description_arg = g_strconcat("--description=", description, NULL);
        TestAcquireOptions shared = { .mode = "shared", .description = "reader", .has_ttl = true,
                                      .ttl = 3600U * 1000000U };
        g_autoptr(GPtrArray) locks = NULL;
        _cleanup_close_ int fd = -1;
        uint64_t token;

        {
                g_autoptr(CliResult) r = cli(f->bus, "--json=short", "list");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "[]\n");
        }

        cli_ok(f->bus, "lock", description_arg, "\"quoted\" \\ name");
        test_acquire_ok(f->client, "sh", &shared);
        fd = test_acquire_fd_ok(f->client, "zz", NULL, NULL);
        locks = test_list_locks_ok(f->client);
        g_assert_cmpuint(locks->len, ==, 3);
        g_assert_cmpstr(((TestHolder *) locks->pdata[0])->description, ==, description);

        {
                g_autoptr(CliResult) r = cli(f->bus, "list", "--json=short");
                g_autoptr(TestJson) j = NULL;

                assert_cli_status(r, 0);
                /* One line. */
                g_assert_true(g_str_has_suffix(r->out, "\n"));
                g_assert_cmpuint(strchr(r->out, '\n') - r->out, ==, strlen(r->out) - 1);
                j = test_json_parse_ok(r->out);
                assert_json_holders(j, locks);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "list", "--json=pretty");
                g_autoptr(TestJson) j = NULL;

                assert_cli_status(r, 0);
                g_assert_true(g_str_has_prefix(r->out, "[\n  {\n    \"resource\": "));
                g_assert_true(g_str_has_suffix(r->out, "\n  }\n]\n"));
                j = test_json_parse_ok(r->out);
                assert_json_holders(j, locks);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "owner", "--json=pretty", "sh");
                g_autoptr(TestJson) j = NULL;
                g_autoptr(GPtrArray) one = g_ptr_array_new();

                assert_cli_status(r, 0);
                j = test_json_parse_ok(r->out);
                g_ptr_array_add(one, locks->pdata[1]);
                assert_json_holders(j, one);
                g_assert_cmpuint(test_json_get_uint(j->items->pdata[0], "expires"), >, 0);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "lock", "--json=short", "new");
                g_autoptr(TestJson) j = NULL;
                g_autofree char *expected = NULL;
                static const char *const keys[] = { "resource", "token", NULL };

                assert_cli_status(r, 0);
                j = test_json_parse_ok(r->out);
                test_json_assert_keys(j, keys);
                g_assert_cmpstr(test_json_get_string(j, "resource"), ==, "new");
                token = test_json_get_uint(j, "token");
                g_assert_cmpuint(token, >, ((TestHolder *) locks->pdata[2])->token);
                expected = g_strdup_printf("{\"resource\":\"new\",\"token\":%" G_GUINT64_FORMAT "}\n", token);
                g_assert_cmpstr(r->out, ==, expected);
        }
        /* A user without a name: null. */
        {
                g_autoptr(GError) error = NULL;
                g_autoptr(TestJson) j = test_json_parse("{\"user\":null}", &error);

                g_assert_no_error(error);
                g_assert_true(test_json_is_null(j, "user"));
        }
}

static void test_cli_refresh(TestFixture *f, gconstpointer data) {
        uint64_t now, expires;

        cli_ok(f->bus, "lock", "--ttl=1h", "db");
        cli_ok(f->bus, "lock", "forever");

        {
                g_autoptr(CliResult) r = cli(f->bus, "refresh", "db");
                g_autofree char *line = g_strdup(r->out);

                assert_cli_status(r, 0);
                g_assert_true(is_timestamp(g_strchomp(line)));
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "--json=short", "refresh", "db");
                g_autoptr(TestJson) j = NULL;
                static const char *const keys[] = { "resource", "expires", NULL };

                now = test_now_realtime();
                assert_cli_status(r, 0);
                j = test_json_parse_ok(r->out);
                test_json_assert_keys(j, keys);
                expires = test_json_get_uint(j, "expires");
                g_assert_cmpuint(expires, >, now + 3540U * 1000000U);
                g_assert_cmpuint(expires, <=, now + 3600U * 1000000U);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "refresh", "forever");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "never\n");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "-q", "refresh", "forever");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "refresh", "free");

                assert_cli_status(r, EXIT_NOT_LOCKED);
                g_assert_cmpstr(r->err, ==, "Resource 'free' not locked\n");
        }
}

static void test_cli_status(TestFixture *f, gconstpointer data) {
        g_autofree char *expected = NULL;

        cli_ok(f->bus, "lock", "a");
        cli_ok(f->bus, "lock", "b");

        {
                g_autoptr(CliResult) r = cli(f->bus, "status");

                expected = g_strdup_printf("       Version: %s\n"
                                           "           Bus: system\n"
                                           "Lock directory: %s\n"
                                           "         Locks: 2\n"
                                           "       Waiters: 0\n",
                                           g_getenv("LOCKBUS_VERSION"), f->bus->lock_dir);
                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, expected);
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "status", "--json=pretty");
                g_autoptr(TestJson) j = NULL;
                static const char *const keys[] = { "version", "bus", "lock_directory", "lock_count",
                                                    "waiter_count", NULL };

                assert_cli_status(r, 0);
                j = test_json_parse_ok(r->out);
                test_json_assert_keys(j, keys);
                g_assert_cmpstr(test_json_get_string(j, "version"), ==, g_getenv("LOCKBUS_VERSION"));
                g_assert_cmpstr(test_json_get_string(j, "bus"), ==, "system");
                g_assert_cmpstr(test_json_get_string(j, "lock_directory"), ==, f->bus->lock_dir);
                g_assert_cmpuint(test_json_get_uint(j, "lock_count"), ==, 2);
                g_assert_cmpuint(test_json_get_uint(j, "waiter_count"), ==, 0);
        }
}

/* --- Other users: NotOwner, break, AccessDenied ----------------------------------------- */

static void test_cli_other_user(TestFixture *f, gconstpointer data) {
        static const CliSpawn nobody = { .uid = TEST_OTHER_UID, .leak_fd = -1 };
        g_autofree char *other = NULL;

        if (test_skip_unless_root())
                return;
        other = user_name(TEST_OTHER_UID);

        cli_with_ok(f->bus, &nobody, "lock", "db");
        {
                g_autoptr(CliResult) r = cli(f->bus, "--no-legend", "list");
                g_autofree char *prefix = g_strdup_printf("db  exclusive  %s  ", other);

                assert_cli_status(r, 0);
                g_assert_true(g_str_has_prefix(r->out, prefix));
        }
        {
                /* Not ours: 4, and -q does not hide it. */
                g_autoptr(CliResult) r = cli(f->bus, "-q", "unlock", "db");

                assert_cli_status(r, EXIT_NOT_ALLOWED);
                g_assert_cmpstr(r->err, ==, "Resource 'db' locked by uid 65534 cannot be unlocked by uid 0\n");
        }
        {
                g_autoptr(CliResult) r = cli_with(f->bus, &nobody, "break", "db");

                assert_cli_status(r, EXIT_NOT_ALLOWED);
                g_assert_cmpstr(r->err, !=, "");
        }
        {
                g_autoptr(CliResult) r = cli(f->bus, "break", "db");

                assert_cli_status(r, 0);
        }
        test_assert_not_locked(f->client, "db");
        {
                g_autoptr(CliResult) r = cli(f->bus, "break", "db");

                assert_cli_status(r, EXIT_NOT_LOCKED);
        }
}

/* --- Buses ------------------------------------------------------------------------------ */

static void test_cli_no_bus(TestFixture *f, gconstpointer data) {
        g_autofree char *address = g_strdup_printf("DBUS_SYSTEM_BUS_ADDRESS=unix:path=%s/nonexistent", f->bus->dir);
        const char *const env[] = { address, NULL };
        const CliSpawn spawn = { .env = env, .leak_fd = -1 };
        g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "list");

        assert_cli_status(r, EXIT_OTHER);
        g_assert_true(g_str_has_prefix(r->err, "Failed to connect to the system bus: "));
}

static void test_cli_user(TestFixture *f, gconstpointer data) {
        g_autoptr(CliSessionBus) session = cli_session_bus_new(f->bus, true);
        g_autofree char *address = g_strconcat("DBUS_SESSION_BUS_ADDRESS=", session->address, NULL);
        const char *const env[] = { address, "XDG_RUNTIME_DIR", NULL };
        const CliSpawn spawn = { .env = env, .leak_fd = -1 };
        uint64_t token;

        {
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "lock", "mine");

                assert_cli_status(r, 0);
                token = parse_token(r->out);
        }
        {
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "--json=short", "list");
                g_autoptr(TestJson) j = NULL;

                assert_cli_status(r, 0);
                j = test_json_parse_ok(r->out);
                g_assert_cmpuint(j->items->len, ==, 1);
                g_assert_cmpstr(test_json_get_string(j->items->pdata[0], "resource"), ==, "mine");
                g_assert_cmpuint(test_json_get_uint(j->items->pdata[0], "token"), ==, token);
        }
        {
                /* Not on the system bus; --system after --user wins. */
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "--system", "--json=short", "list");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "[]\n");
        }
        {
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "--json=short", "status");
                g_autoptr(TestJson) j = NULL;

                assert_cli_status(r, 0);
                j = test_json_parse_ok(r->out);
                g_assert_cmpstr(test_json_get_string(j, "bus"), ==, "user");
                g_assert_cmpstr(test_json_get_string(j, "lock_directory"), ==, session->lock_dir);
        }
        {
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "run", "mine", "-c", "echo ran");

                assert_cli_status(r, EXIT_CONFLICT);
        }
        {
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "run", "other", "-c", "echo ran");

                assert_cli_status(r, 0);
                g_assert_cmpstr(r->out, ==, "ran\n");
        }
        {
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "unlock", "mine");

                assert_cli_status(r, 0);
        }
        {
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "owner", "mine");

                assert_cli_status(r, EXIT_NOT_LOCKED);
        }
}

static void test_cli_user_no_service(TestFixture *f, gconstpointer data) {
        g_autoptr(CliSessionBus) session = cli_session_bus_new(f->bus, false);
        g_autofree char *address = g_strconcat("DBUS_SESSION_BUS_ADDRESS=", session->address, NULL);
        const char *const env[] = { address, NULL };
        const CliSpawn spawn = { .env = env, .leak_fd = -1 };
        g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "--user", "lock", "db");

        /* Not the service's error: said what failed. */
        assert_cli_status(r, EXIT_OTHER);
        g_assert_true(g_str_has_prefix(r->err, "Failed to lock 'db': "));
}

/* --- Pager ------------------------------------------------------------------------------- */

/* Runs lockbusctl with stdout and stderr on a pseudo terminal; returns
 * what it wrote there. */
static char *run_on_tty(TestFixture *f, const char *const *env, const char *const *argv, int *ret_status) {
        g_auto(GStrv) envp = g_get_environ();
        g_autoptr(GPtrArray) args = g_ptr_array_new();
        g_autoptr(GString) out = g_string_new(NULL);
        const char *ctl = g_getenv("LOCKBUS_CTL");
        const char *slave_name;
        int master, status;
        int64_t deadline;
        pid_t pid;

        envp = g_environ_setenv(envp, "DBUS_SYSTEM_BUS_ADDRESS", f->bus->address, true);
        envp = g_environ_unsetenv(envp, "SYSTEMD_PAGER");
        envp = g_environ_unsetenv(envp, "PAGER");
        for (const char *const *e = env; e && *e; e++) {
                const char *eq = strchr(*e, '=');
                g_autofree char *name = g_strndup(*e, eq - *e);

                envp = g_environ_setenv(envp, name, eq + 1, true);
        }
        g_ptr_array_add(args, (char *) ctl);
        for (const char *const *a = argv; *a; a++)
                g_ptr_array_add(args, (char *) *a);
        g_ptr_array_add(args, NULL);

        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        g_assert_cmpint(master, >=, 0);
        g_assert_cmpint(grantpt(master), ==, 0);
        g_assert_cmpint(unlockpt(master), ==, 0);
        slave_name = ptsname(master);
        g_assert_nonnull(slave_name);

        fflush(stdout);
        fflush(stderr);
        pid = fork();
        g_assert_cmpint(pid, >=, 0);
        if (pid == 0) {
                int slave, null;

                (void) setpgid(0, f->bus->bus_pid);
                slave = open(slave_name, O_RDWR | O_NOCTTY);
                null = open("/dev/null", O_RDONLY);
                if (slave < 0 || null < 0 || dup2(null, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0)
                        _exit(127);
                (void) close_range(3, ~0U, 0);
                execve(ctl, (char **) args->pdata, envp);
                _exit(127);
        }
        (void) setpgid(pid, f->bus->bus_pid);

        /* EIO once every copy of the slave is closed: lockbusctl and its pager are done. */
        deadline = g_get_monotonic_time() + TEST_TIMEOUT_USEC;
        for (;;) {
                struct pollfd p = { .fd = master, .events = POLLIN };
                int64_t left = deadline - g_get_monotonic_time();
                char buf[4096];
                ssize_t n;

                if (left <= 0)
                        g_error("Timed out waiting for lockbusctl on the terminal; so far: \"%s\"", out->str);
                if (poll(&p, 1, (int) ((left + 999) / 1000)) <= 0)
                        continue;
                n = read(master, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                g_string_append_len(out, buf, n);
        }
        close(master);
        g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
        g_assert_true(WIFEXITED(status));
        *ret_status = WEXITSTATUS(status);
        return g_strdup(out->str);
}

static void test_cli_pager(TestFixture *f, gconstpointer data) {
        g_autofree char *paged = g_build_filename(f->bus->dir, "paged", NULL);
        g_autofree char *pager = g_strdup_printf("SYSTEMD_PAGER=cat > '%s'", paged);
        const char *const env[] = { pager, NULL };
        g_autofree char *contents = NULL;
        int status;

        cli_ok(f->bus, "lock", "db");

        /* Not a terminal: no pager. */
        {
                const CliSpawn spawn = { .env = env, .leak_fd = -1 };
                g_autoptr(CliResult) r = cli_with(f->bus, &spawn, "list");

                assert_cli_status(r, 0);
                g_assert_true(g_str_has_prefix(r->out, "RESOURCE"));
                g_assert_false(g_file_test(paged, G_FILE_TEST_EXISTS));
        }

        /* A terminal: the pager gets the table. */
        {
                g_autofree char *tty = run_on_tty(f, env, (const char *const[]) { "list", NULL }, &status);

                g_assert_cmpint(status, ==, 0);
                g_assert_null(strstr(tty, "RESOURCE"));
                g_assert_true(g_file_get_contents(paged, &contents, NULL, NULL));
                g_assert_true(g_str_has_prefix(contents, "RESOURCE"));
                g_assert_true(g_str_has_suffix(contents, "1 lock listed.\n"));
                g_assert_cmpint(unlink(paged), ==, 0);
        }

        /* --no-pager, or PAGER=cat: straight to the terminal. */
        {
                g_autofree char *tty = run_on_tty(f, env, (const char *const[]) { "--no-pager", "list", NULL }, &status);

                g_assert_cmpint(status, ==, 0);
                g_assert_true(g_str_has_prefix(tty, "RESOURCE"));
                g_assert_false(g_file_test(paged, G_FILE_TEST_EXISTS));
        }
        {
                const char *const cat[] = { "PAGER=cat", NULL };
                g_autofree char *tty = run_on_tty(f, cat, (const char *const[]) { "list", NULL }, &status);

                g_assert_cmpint(status, ==, 0);
                g_assert_true(g_str_has_prefix(tty, "RESOURCE"));
        }
}

/* --- Bash completion ----------------------------------------------------------------------- */

static char *complete(TestFixture *f, const char *const *words) {
        g_autoptr(GError) error = NULL;
        g_autofree char *bash = g_find_program_in_path("bash");
        g_autofree char *ctl_dir = g_path_get_dirname(g_getenv("LOCKBUS_CTL"));
        g_autofree char *path = g_strconcat(ctl_dir, ":", g_getenv("PATH"), NULL);
        g_auto(GStrv) envp = g_get_environ();
        g_autoptr(GPtrArray) argv = g_ptr_array_new();
        g_autofree char *out = NULL, *err = NULL;
        int status = 0;

        envp = g_environ_setenv(envp, "PATH", path, true);
        envp = g_environ_setenv(envp, "DBUS_SYSTEM_BUS_ADDRESS", f->bus->address, true);
        envp = g_environ_unsetenv(envp, "DBUS_SESSION_BUS_ADDRESS");
        /* No user bus to be found. */
        envp = g_environ_setenv(envp, "XDG_RUNTIME_DIR", f->bus->dir, true);

        g_ptr_array_add(argv, bash);
        g_ptr_array_add(argv, (char *) "--norc");
        g_ptr_array_add(argv, (char *) "-c");
        g_ptr_array_add(argv, (char *) "source \"$1\" && shift && COMP_WORDS=(\"$@\") && COMP_CWORD=$(($# - 1)) && "
                                       "_lockbusctl && printf '%s\\n' \"${COMPREPLY[@]}\"");
        g_ptr_array_add(argv, (char *) "bash");
        g_ptr_array_add(argv, (char *) g_getenv("LOCKBUS_COMPLETION"));
        for (const char *const *w = words; *w; w++)
                g_ptr_array_add(argv, (char *) *w);
        g_ptr_array_add(argv, NULL);

        if (!g_spawn_sync(NULL, (char **) argv->pdata, envp, G_SPAWN_STDIN_FROM_DEV_NULL, NULL, NULL, &out, &err,
                          &status, &error))
                g_error("Failed to run bash: %s", error->message);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                g_error("The completion failed (wait status 0x%x); stderr: %s", (unsigned) status, err);
        g_assert_cmpstr(err, ==, "");
        /* printf of an empty array prints one empty line. */
        if (g_str_equal(out, "\n"))
                out[0] = '\0';
        return g_steal_pointer(&out);
}

#define assert_completion(f, expected, ...) \
        do { \
                g_autofree char *_got = complete((f), (const char *const[]) { "lockbusctl", __VA_ARGS__, NULL }); \
                g_assert_cmpstr(_got, ==, (expected)); \
        } while (0)

static void test_cli_completion(TestFixture *f, gconstpointer data) {
        g_autofree char *bash = g_find_program_in_path("bash");

        if (!bash) {
                g_test_skip("no bash");
                return;
        }
        cli_ok(f->bus, "lock", "my db");
        cli_ok(f->bus, "lock", "other");

        assert_completion(f, "lock\nunlock\nowner\nlist\nrun\nrefresh\nbreak\nstatus\n", "");
        assert_completion(f, "unlock\n", "un");
        assert_completion(f, "refresh\n", "-q", "re");
        assert_completion(f, "my\\ db\nother\n", "unlock", "");
        assert_completion(f, "other\n", "-q", "owner", "o");
        assert_completion(f, "my\\ db\n", "break", "my");
        assert_completion(f, "", "unlock", "other", "");
        assert_completion(f, "", "--user", "refresh", "");
        assert_completion(f, "", "lock", "");
        assert_completion(f, "--shared\n", "lock", "--sh");
        assert_completion(f, "pretty\n", "--json", "=", "p");
        assert_completion(f, "short\npretty\noff\n", "--json", "=");
        assert_completion(f, "my\\ db\nother\n", "--json", "=", "short", "owner", "");
        assert_completion(f, "", "-w", "");
        assert_completion(f, "my\\ db\nother\n", "-w", "5", "unlock", "");
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/cli/help", test_cli_help);
        test_add("/cli/usage", test_cli_usage);
        test_add("/cli/lock-unlock", test_cli_lock_unlock);
        test_add("/cli/shared", test_cli_shared);
        test_add("/cli/wait", test_cli_wait);
        test_add("/cli/run/handover", test_cli_run_handover);
        test_add("/cli/run/environment", test_cli_run_environment);
        test_add("/cli/run/status", test_cli_run_status);
        test_add("/cli/run/conflict", test_cli_run_conflict);
        test_add("/cli/run/signal", test_cli_run_signal);
        test_add("/cli/run/killed", test_cli_run_killed);
        test_add("/cli/run/broken", test_cli_run_broken);
        test_add("/cli/list/table", test_cli_list_table);
        test_add("/cli/list/json", test_cli_json);
        test_add("/cli/refresh", test_cli_refresh);
        test_add("/cli/status", test_cli_status);
        test_add("/cli/other-user", test_cli_other_user);
        test_add("/cli/no-bus", test_cli_no_bus);
        test_add("/cli/user", test_cli_user);
        test_add("/cli/user/no-service", test_cli_user_no_service);
        test_add("/cli/pager", test_cli_pager);
        test_add("/cli/completion", test_cli_completion);

        return g_test_run();
}
