/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Helpers of the lockbusctl tests: running the built CLI on a private bus
 * of bus-test.h, a private session bus for --user, watching the calls that
 * reach the service, and a small JSON parser to check --json output.
 *
 * Paths come from the environment, set by tests/client/meson.build:
 *   LOCKBUS_CTL         the lockbusctl binary of the build tree
 *   LOCKBUS_LIBRARY     liblockbus.so of the build tree (copied with
 *                       lockbusctl for another uid, see CliSpawn.uid)
 *   LOCKBUS_COMPLETION  the bash completion script (source tree)
 * plus those of bus-test.h.
 *
 * Every lockbusctl process joins the bus's process group, so the test
 * bus's guardian and test_bus_free() kill and reap it also when a test
 * fails. Its environment is the test's, with DBUS_SYSTEM_BUS_ADDRESS the
 * private bus, TZ=UTC, no DBUS_SESSION_BUS_ADDRESS and no pager variables,
 * plus CliSpawn.env. Nothing sleeps: every wait is on a pipe, a pidfd or the
 * bus, bounded by TEST_TIMEOUT_USEC. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>
#include <systemd/sd-bus.h>

#include "bus-test.h"

typedef struct CliSpawn {
        uid_t uid;                      /* run as this uid (gid = uid, no groups), a copy of
                                         * lockbusctl in the bus's directory (the build tree
                                         * may be out of its reach); 0 and the current uid
                                         * mean "as we are" */
        const char *const *env;         /* NULL-terminated "NAME=VALUE" (or "NAME" to unset), may be NULL */
        bool keep_stdin;                /* stdin a pipe of ours (cli_process_close_stdin()), else /dev/null */
        int leak_fd;                    /* if >= 3: a copy of /dev/null left open (not O_CLOEXEC) at this fd */
} CliSpawn;

/* A lockbusctl process. out/err collect its stdout and stderr. */
typedef struct CliProcess {
        pid_t pid;
        int pidfd;
        int in_fd, out_fd, err_fd;      /* -1 once closed / at EOF */
        GString *out, *err;
        size_t out_read;                /* how much of out cli_process_read_line() returned */
        int status;                     /* wait status, valid once pid is 0 */
} CliProcess;

CliProcess *cli_start(TestBus *b, const CliSpawn *s, const char *const *argv);
#define cli_startv(b, s, ...) cli_start((b), (s), (const char *const[]) { __VA_ARGS__, NULL })

/* The next line of its stdout (without the newline); fails the test at EOF. */
char *cli_process_read_line(CliProcess *p);
/* Waits until its stderr contains `needle`. */
void cli_process_wait_stderr(CliProcess *p, const char *needle);
void cli_process_close_stdin(CliProcess *p);
/* Reads the rest of its output, waits for it to exit; returns the exit
 * status, fails the test if a signal killed it. */
int cli_process_wait(CliProcess *p);
/* The same, returning the wait status, whatever it is. */
int cli_process_wait_status(CliProcess *p);
void cli_process_free(CliProcess *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CliProcess, cli_process_free)

/* A finished run of lockbusctl. */
typedef struct CliResult {
        int status;                     /* exit status */
        char *out, *err;
} CliResult;

CliResult *cli_run(TestBus *b, const CliSpawn *s, const char *const *argv);
void cli_result_free(CliResult *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CliResult, cli_result_free)

/* cli(b, "lock", "db"): as the current user, default environment. */
#define cli(b, ...) cli_run((b), NULL, (const char *const[]) { __VA_ARGS__, NULL })
#define cli_with(b, s, ...) cli_run((b), (s), (const char *const[]) { __VA_ARGS__, NULL })

/* Fails unless the run exited with `status`; the message shows the command
 * line's result (stdout and stderr). */
#define assert_cli_status(r, st) test_assert_cli_status((r), (st), #r, __FILE__, __LINE__, G_STRFUNC)
void test_assert_cli_status(const CliResult *r, int status, const char *expr, const char *file, int line,
                            const char *func);

/* --- Calls reaching the service -------------------------------------------
 * A monitor connection (BecomeMonitor; a test policy file lets the current
 * uid call it) that sees every method call to io.lockbus1. */

typedef struct CliCallWatch CliCallWatch;

CliCallWatch *cli_call_watch_new(TestBus *b);
/* Waits until someone called `member` with first argument `resource` (the
 * next such call since the last wait: calls are seen in order, from the
 * moment the watch was made), then
 * until lockbusd has handled that call: it answers a Ping sent now from
 * `client` only after every message the bus passed to it before. */
void cli_call_watch_wait(CliCallWatch *w, const char *member, const char *resource, sd_bus *client);
void cli_call_watch_free(CliCallWatch *w);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CliCallWatch, cli_call_watch_free)

/* --- A private session bus (for --user) --------------------------------------
 * dbus-daemon with <type>session</type> on DIR/session/bus.sock (DIR: the
 * test bus's directory), in the test bus's process group, activating
 *   lockbusd --user --lock-directory=DIR/session/lib --runtime-directory=DIR/session/run
 * unless with_service is false. Freed (killed and reaped) by
 * cli_session_bus_free() or with the test bus. */

typedef struct CliSessionBus {
        char *dir, *lock_dir, *address;
        pid_t pid;
} CliSessionBus;

CliSessionBus *cli_session_bus_new(TestBus *b, bool with_service);
void cli_session_bus_free(CliSessionBus *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CliSessionBus, cli_session_bus_free)

/* --- JSON ------------------------------------------------------------------
 * A strict parser (RFC 8259: one value, nothing but whitespace around it,
 * no duplicate keys), enough to check lockbusctl's output. */

typedef enum TestJsonType {
        TEST_JSON_NULL,
        TEST_JSON_BOOL,
        TEST_JSON_NUMBER,
        TEST_JSON_STRING,
        TEST_JSON_ARRAY,
        TEST_JSON_OBJECT,
} TestJsonType;

typedef struct TestJson TestJson;
struct TestJson {
        TestJsonType type;
        bool boolean;
        char *text;                     /* a string (decoded), or a number's literal */
        GPtrArray *items;               /* array: TestJson*; object: values, in order */
        GPtrArray *keys;                /* object: char*, in order */
};

/* NULL with *error set on a syntax error. */
TestJson *test_json_parse(const char *text, GError **error);
/* Parses or fails the test. */
TestJson *test_json_parse_ok(const char *text);
void test_json_free(TestJson *j);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestJson, test_json_free)

/* Object members; each asserts the member exists and has that type. */
const TestJson *test_json_member(const TestJson *o, const char *key);
const char *test_json_get_string(const TestJson *o, const char *key);
uint64_t test_json_get_uint(const TestJson *o, const char *key);
bool test_json_is_null(const TestJson *o, const char *key);
/* Asserts the object has exactly these keys (NULL-terminated), in this order. */
void test_json_assert_keys(const TestJson *o, const char *const *keys);
