/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A private, system-like bus for the bus tests (TESTING.md §1).
 *
 * test_bus_new() makes a 0755 temp dir DIR and starts
 *   dbus-daemon --config-file=DIR/bus.conf --nofork --print-address=FD
 * with the configuration of tests/common/test-bus.h (<type>system</type>,
 * unix:path=DIR/bus.sock, EXTERNAL auth, a default policy like Debian's
 * system.conf, <includedir>DIR/system.d</> holding a copy of the project's
 * own dbus/io.lockbus1.conf), here with root's access to Monitoring, a
 * service_start_timeout of TEST_TIMEOUT_USEC, when not root a test-only
 * file letting the current uid own io.lockbus1, and
 * <servicedir>DIR/services</> with an activation file whose Exec= is the
 * build tree's lockbusd:
 *   lockbusd --lock-directory=DIR/lib --runtime-directory=DIR/run
 * The first call to io.lockbus1 activates it; test_bus_start_daemon()
 * starts the same command line directly instead. test_bus_new_with_args()
 * appends arguments (e.g. --idle-timeout=0.3) to that command line, for
 * activation and direct starts alike.
 *
 * Paths come from the environment, set by tests/bus/meson.build:
 *   LOCKBUS_DAEMON    the lockbusd binary of the build tree
 *   LOCKBUS_DBUS_DIR  the source dbus/ directory (policy, interface XML)
 *
 * Cleanup, also on failure: dbus-daemon leads a process group of its own;
 * the daemon it activates, a daemon started directly and every client
 * process join it. A small guardian process (in a group of its own, so a
 * harness killing the test's group does not take it along) holds a pipe
 * from the test: when the test dies without test_bus_free() (a failed
 * assertion aborts), the pipe hits EOF and the guardian SIGKILLs the group
 * and removes DIR. The test process makes itself a child subreaper, so
 * test_bus_free() reaps every member of the group, also the daemon that
 * dbus-daemon spawned, instead of leaving zombies behind.
 *
 * Nothing here sleeps: every wait is on a bus message, a pidfd or a pipe,
 * bounded by TEST_TIMEOUT_USEC after which the test fails. All functions
 * assert (g_assert) instead of returning errors, except the call wrappers,
 * which return the call's result so tests can check error names. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>
#include <systemd/sd-bus.h>

#include "lockbus-names.h"
#include "macro.h"
#include "test-bus.h"

/* Upper bound of any single wait; reaching it fails the test. */
#define TEST_TIMEOUT_USEC (10U * 1000U * 1000U)

/* The unprivileged identity used for "another user" (nobody/nogroup). */
#define TEST_OTHER_UID ((uid_t) 65534)

/* A second one for "other users are unaffected": an account (dbus-daemon
 * refuses a uid without a passwd entry, so an arbitrary number will not
 * do) other than root, TEST_OTHER_UID and ours; 0 if there is none. */
uid_t test_second_uid(void);

typedef struct TestBus {
        char *dir;              /* 0755, removed by test_bus_free() */
        char *lock_dir;         /* DIR/lib, --lock-directory */
        char *runtime_dir;      /* DIR/run, --runtime-directory */
        char *address;          /* the bus address printed by dbus-daemon */
        pid_t bus_pid;          /* dbus-daemon, leader of its process group */
        pid_t daemon_pid;       /* lockbusd started directly, else 0 */
        pid_t guardian_pid;
        int guardian_fd;        /* write end: 'p'+pgid, then 'q' = all cleaned up */
        char **extra_args;      /* appended to lockbusd's command line, NULL-terminated */
        int pass_fds[2];        /* >= 3: become the fds 3 and 4 of the next lockbusd started directly */
} TestBus;

TestBus *test_bus_new(void);
/* The same, with extra_args (NULL-terminated, may be NULL) appended to the
 * daemon's command line. */
TestBus *test_bus_new_with_args(const char *const *extra_args);
void test_bus_free(TestBus *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestBus, test_bus_free)

/* A new client connection (Hello done) as the current user. */
sd_bus *test_bus_connect(TestBus *b);

/* lockbusd's direct socket, DIR/run/.direct.sock (LOCKBUS_DIRECT_SOCKET_NAME
 * in its runtime directory): it serves io.lockbus1.Manager there peer to
 * peer while it runs. */
char *test_bus_direct_socket(TestBus *b);

/* A peer-to-peer connection to the socket at `path`: no Hello, fd passing
 * negotiated, method call timeout TEST_TIMEOUT_USEC. Returns 0 or a
 * negative errno and asserts nothing, so client processes may use it.
 * sd_bus_start() does not wait for the daemon: a connection it turns away
 * shows as such on its first call. Calls may name any destination (a peer
 * ignores it), so the call wrappers below work on it. */
int test_direct_connect(const char *path, sd_bus **ret);
/* The same on test_bus_direct_socket(b), asserting. The daemon must run
 * (e.g. test_bus_activate_daemon()). */
sd_bus *test_bus_connect_direct(TestBus *b);

/* Starts lockbusd directly (not by activation) with the activation file's
 * arguments and returns once it owns io.lockbus1 (fails if it exits
 * first). Asserts that nobody owns the name before. */
void test_bus_start_daemon(TestBus *b);
/* The same, with `wrapper` (NULL-terminated, may be NULL; e.g. a setpriv
 * command line ending in "--") put before lockbusd's command line, and
 * with its stdout and stderr on log_fd if >= 3. Returns true once it owns
 * io.lockbus1 (b->daemon_pid is set), false if it exited first, with its
 * wait status in *ret_status. */
bool test_bus_try_start_daemon(TestBus *b, const char *const *wrapper, int log_fd, int *ret_status);

/* PID of the current owner of io.lockbus1, 0 if none. Does not activate. */
pid_t test_bus_daemon_pid(TestBus *b);

/* Unique name of the current owner of io.lockbus1, NULL if none. Does not
 * activate. */
char *test_bus_daemon_name(TestBus *b);

/* PID of the process behind a unique name, 0 if the name is gone. */
pid_t test_bus_pid_of(TestBus *b, const char *unique_name);

/* Waits until the process of a pidfd (test_pidfd_open()) has exited, at
 * most TEST_TIMEOUT_USEC; `what` names it in the failure. */
void test_pidfd_wait_exit(int pidfd, const char *what);

/* Makes sure lockbusd runs (activating it with a Peer.Ping) and returns
 * its PID. */
pid_t test_bus_activate_daemon(TestBus *b);

/* SIGKILLs the running lockbusd (activated or direct) and returns once the
 * bus has dropped its name. Asserts that one is running. */
void test_bus_kill_daemon(TestBus *b);
/* SIGTERMs the lockbusd started directly (systemctl stop) and reaps it;
 * fails the test unless it exits with status 0. */
void test_bus_stop_daemon(TestBus *b);

/* Waits until the bus reports that `name` (a unique name) has no owner:
 * NameOwnerChanged(name, old, ""). `bus` must have been subscribed with
 * test_bus_watch_name() before the name could go away. */
typedef struct TestNameWatch TestNameWatch;
TestNameWatch *test_bus_watch_name(sd_bus *bus, const char *name);
void test_name_watch_wait_gone(TestNameWatch *w);
void test_name_watch_free(TestNameWatch *w);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestNameWatch, test_name_watch_free)

/* For a well-known name: how many times the bus reported it without an
 * owner so far (among the signals dispatched on the watch's connection),
 * whether `old_owner` (a unique name) lost it, and waiting for that. */
unsigned test_name_watch_n_gone(const TestNameWatch *w);
bool test_name_watch_lost_by(const TestNameWatch *w, const char *old_owner);
void test_name_watch_wait_lost_by(TestNameWatch *w, const char *old_owner);

/* A round trip to the bus daemon (GetId), then dispatches everything that
 * arrived before its reply: every signal the bus queued for `bus` before
 * it answered has been handled when this returns. */
void test_bus_sync(sd_bus *bus);

/* Dispatches `bus` until *done, or until pidfd (if >= 0) is readable (the
 * process died: the caller says what that means); fails the test after
 * TEST_TIMEOUT_USEC. */
void test_bus_process_until(sd_bus *bus, const bool *done, int pidfd, const char *what);

/* org.freedesktop.DBus.ReloadConfig: answers once the bus's configuration
 * as it is on disk now (e.g. a policy file added to DIR/system.d) is in
 * force. */
void test_bus_reload_config(sd_bus *bus);

/* Closes a client connection and returns once the bus has processed the
 * disconnect (NameOwnerChanged seen on `observer`). */
void test_bus_disconnect(sd_bus *observer, sd_bus *client);

/* Every path (relative to root, "/"-separated, sorted) in the tree at root,
 * not following symlinks; entries below the given relative directories
 * (e.g. "lib", "run") are left out, the directories themselves not. */
GPtrArray *test_list_tree(const char *root, const char *const *skip);

/* For g_ptr_array_sort() of an array of strings. */
gint test_compare_strings(gconstpointer a, gconstpointer b);

/* --- Client processes ---------------------------------------------------
 *
 * A client is a forked process that joins the bus's process group, drops
 * to `uid` (gid = uid, no supplementary groups) when uid differs from the
 * current one, sets its comm to `comm`, connects to the bus and runs
 * func(bus, fd, userdata); its return value is the exit status. fd is one
 * end of a socketpair: the child writes result lines with
 * test_client_send(). The child must not use g_assert or print to stdout
 * (it shares the TAP stream); it reports through fd instead. */

typedef int (*TestClientFunc)(sd_bus *bus, int fd, void *userdata);

typedef struct TestClient {
        pid_t pid;
        int fd;
        GString *buffer;        /* read but not yet returned */
        GHashTable *replies;    /* test_client_serve(): id → result of an async call not yet asked for */
} TestClient;

TestClient *test_client_start(TestBus *b, uid_t uid, const char *comm, TestClientFunc func, void *userdata);
/* The same, but the child's connection is a direct one to the running
 * daemon's socket (test_direct_connect()) instead of the bus. */
TestClient *test_client_start_direct(TestBus *b, uid_t uid, const char *comm, TestClientFunc func,
                                     void *userdata);
/* Next line from the child without its newline, NULL at EOF. */
char *test_client_read_line(TestClient *c);
/* Waits for the child to exit and asserts it exited with status 0. */
void test_client_wait(TestClient *c);
/* SIGKILL + waitpid. */
void test_client_kill(TestClient *c);
/* Kills a child still running. */
void test_client_free(TestClient *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestClient, test_client_free)

/* Runs a client to completion; returns all its lines joined with "\n". */
char *test_bus_run_client(TestBus *b, uid_t uid, const char *comm, TestClientFunc func, void *userdata);

/* A process in the bus's group that is no bus client: it keeps a copy of
 * `fd` (e.g. the fd of an AcquireFd hold) and nothing else of ours, and
 * exits with status 0 once c->fd is closed (test_client_finish()) or the
 * test dies. */
TestClient *test_client_start_holding_fd(TestBus *b, int fd);
/* Closes our end of the client's socket, then waits as test_client_wait(). */
void test_client_finish(TestClient *c);

/* A client under remote control: start it with
 *   test_client_start(b, uid, comm, test_client_serve, NULL)
 * and send it commands with test_client_command(); each returns the
 * command's result, "ok", "ok VALUE" or "error NAME: MESSAGE"
 * (test_format_result()). Resources and option values contain no spaces.
 *   Lock R                    → ok TOKEN
 *   Acquire R [OPTION...]     → ok TOKEN
 *   Unlock R, Break R         → ok
 *   Refresh R                 → ok EXPIRES
 *   Unique                    → ok UNIQUE-NAME of its connection (an
 *                             error on a direct connection: it has none)
 *   Start ID R [OPTION...]    Acquire without waiting for the reply (which
 *                             test_client_wait_reply(c, ID) returns later),
 *                             then WaiterCount on the same connection
 *                             → ok WAITERCOUNT (so the call is queued or
 *                             answered when this returns)
 * OPTION is mode=M, scope=S, description=D, timeout=USEC|max, ttl=USEC.
 * While idle the client dispatches its bus, so replies of Start calls are
 * sent as soon as they arrive. It exits when c->fd is closed. */
int test_client_serve(sd_bus *bus, int fd, void *userdata);
/* The loop of test_client_serve() with another set of commands: command()
 * turns a line into its result ("= RESULT" goes back); async replies may
 * be sent from handlers with test_client_send(fd, "reply ID RESULT"). */
typedef char *(*TestClientCommandFunc)(sd_bus *bus, int fd, const char *line);
int test_client_serve_with(sd_bus *bus, int fd, TestClientCommandFunc command);
/* Child side, for such commands: sends m without waiting; its reply goes
 * to the parent as "reply ID RESULT" (test_client_wait_reply()), RESULT
 * "ok", "ok TOKEN" for a reply of type "t", or the error. 0 or a negative
 * errno. */
int test_client_call_async(sd_bus *bus, int fd, const char *id, sd_bus_message *m);
char *test_client_command(TestClient *c, const char *format, ...) _printf_(2, 3);
char *test_client_wait_reply(TestClient *c, const char *id);
/* Fails the test unless the command's result is `expected` exactly; for
 * "ok VALUE" results use test_client_command_ok(). */
#define assert_client_command(c, expected, ...)                                 \
        test_assert_client_command((c), (expected), __FILE__, __LINE__, G_STRFUNC, __VA_ARGS__)
void test_assert_client_command(TestClient *c, const char *expected, const char *file, int line,
                                const char *func, const char *format, ...) _printf_(6, 7);
/* Runs a command that must succeed and returns its VALUE as a number (0 if
 * it has none). */
uint64_t test_client_command_ok(TestClient *c, const char *format, ...) _printf_(2, 3);

/* A TestClientFunc running userdata, a NULL-terminated array of strings
 * "METHOD ARG", one after the other on one connection, and sending one
 * result line (test_format_result()) per call. METHOD is one of:
 *   Lock R, Acquire R (no options), Unlock R, Owner R, ListLocks,
 *   Ping (Peer.Ping), Introspect, GetVersion (Properties.Get Version),
 *   GetManagedObjects (ObjectManager, which the policy does not allow),
 *   RequestName N (org.freedesktop.DBus.RequestName). */
int test_client_run_ops(sd_bus *bus, int fd, void *userdata);

/* Child side. */
void test_client_send(int fd, const char *format, ...) _printf_(2, 3);
/* Blocks until the parent closes its end (or kills the child). */
void test_client_block(int fd);
/* "ok" for r >= 0, else "error NAME: MESSAGE" (or "error errno: TEXT"). */
char *test_format_result(int r, const sd_bus_error *error);

/* --- Calls of io.lockbus1.Manager ---------------------------------------
 * Each returns the sd-bus result (negative on error, with *error set). */

typedef struct TestAcquireOptions {
        const char *mode;               /* NULL: not passed */
        const char *scope;              /* NULL: not passed */
        const char *description;        /* NULL: not passed */
        bool has_timeout;
        uint64_t timeout;
        uint64_t call_timeout_usec;     /* 0: TEST_TIMEOUT_USEC */
        bool has_ttl;
        uint64_t ttl;
} TestAcquireOptions;

typedef struct TestHolder {
        char *resource;                 /* ListLocks only */
        char *mode;                     /* ListLocks only */
        uint32_t uid;
        uint32_t pid;
        char *comm;
        char *sender;
        uint64_t token;
        uint64_t since;
        uint64_t expires;
        char *scope;
        char *description;
} TestHolder;

void test_holder_free(TestHolder *h);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestHolder, test_holder_free)

int test_lock(sd_bus *bus, const char *resource, uint64_t *ret_token, sd_bus_error *error);
int test_acquire(sd_bus *bus, const char *resource, const TestAcquireOptions *o, uint64_t *ret_token, sd_bus_error *error);
int test_unlock(sd_bus *bus, const char *resource, sd_bus_error *error);
/* AcquireFd: *ret_fd is ours to close (O_CLOEXEC). */
int test_acquire_fd(sd_bus *bus, const char *resource, const TestAcquireOptions *o, int *ret_fd,
                    uint64_t *ret_token, sd_bus_error *error);
int test_refresh(sd_bus *bus, const char *resource, uint64_t *ret_expires, sd_bus_error *error);
int test_break(sd_bus *bus, const char *resource, sd_bus_error *error);
/* ret_holders: GPtrArray of TestHolder (resource and mode NULL). */
int test_owner(sd_bus *bus, const char *resource, char **ret_mode, GPtrArray **ret_holders, sd_bus_error *error);
/* ret_locks: GPtrArray of TestHolder with resource and mode set. */
int test_list_locks(sd_bus *bus, GPtrArray **ret_locks, sd_bus_error *error);
/* The same, asserting success (the failure names the call and resource);
 * tokens are asserted to be > 0. */
uint64_t test_lock_ok(sd_bus *bus, const char *resource);
uint64_t test_acquire_ok(sd_bus *bus, const char *resource, const TestAcquireOptions *o);
void test_unlock_ok(sd_bus *bus, const char *resource);
/* Returns the fd; the token goes to *ret_token. */
int test_acquire_fd_ok(sd_bus *bus, const char *resource, const TestAcquireOptions *o, uint64_t *ret_token);
uint64_t test_refresh_ok(sd_bus *bus, const char *resource);
void test_break_ok(sd_bus *bus, const char *resource);
GPtrArray *test_owner_ok(sd_bus *bus, const char *resource, char **ret_mode);
GPtrArray *test_list_locks_ok(sd_bus *bus);
/* Owner(resource) fails with NotLocked "Resource 'R' not locked". */
void test_assert_not_locked(sd_bus *bus, const char *resource);

uint32_t test_get_property_u(sd_bus *bus, const char *name);
char *test_get_property_s(sd_bus *bus, const char *name);

/* --- Calls that wait ------------------------------------------------------
 * test_*_async() send a call and return at once; the reply is recorded
 * whenever the connection is dispatched (test_call_wait(), or any other
 * call on the same connection followed by sd_bus_process()).
 *
 * Arrival order: a daemon reads the calls of one connection in the order
 * they were sent. So after test_acquire_async(bus, …) a synchronous call on
 * the same `bus` (e.g. test_get_property_u(bus, "WaiterCount")) is answered
 * only after the Acquire was granted, queued or refused, which is how a
 * test queues waiters from several connections in a known order. */

typedef struct TestCall TestCall;

/* Sends m with a reply timeout of usec (0: the connection's default,
 * TEST_TIMEOUT_USEC for test_bus_connect()). */
TestCall *test_call_async(sd_bus *bus, sd_bus_message *m, uint64_t usec);
/* Acquire / AcquireFd; o->call_timeout_usec is the reply timeout (0:
 * default). */
TestCall *test_acquire_async(sd_bus *bus, const char *resource, const TestAcquireOptions *o);
TestCall *test_acquire_fd_async(sd_bus *bus, const char *resource, const TestAcquireOptions *o);
/* Waits for the reply, at most TEST_TIMEOUT_USEC. */
void test_call_wait(TestCall *c);
/* Dispatches what the connection has received, without blocking; true
 * once the reply is there. */
bool test_call_poll(TestCall *c);
/* After the reply: the call's result (negative with *error set, as the
 * synchronous wrappers) and the reply message (borrowed). */
int test_call_result(TestCall *c, sd_bus_error *error);
sd_bus_message *test_call_reply(TestCall *c);
/* Waits for an Acquire reply, asserts success and returns the token. */
uint64_t test_call_wait_token(TestCall *c);
/* The same for AcquireFd: returns a copy of the fd, ours to close, and
 * drops the reply (which holds a copy too, so test_call_reply() is no
 * longer available). */
int test_call_wait_fd(TestCall *c, uint64_t *ret_token);
/* Fails the test if the call was answered by the time the daemon answers a
 * Peer.Ping sent now on the same connection: lockbusd handles the messages
 * of a connection in order and the bus keeps the order of its replies, so
 * an answer sent before the Ping's arrives before it. */
#define assert_call_pending(c) test_assert_call_pending((c), #c, __FILE__, __LINE__, G_STRFUNC)
void test_assert_call_pending(TestCall *c, const char *what, const char *file, int line, const char *func);
void test_call_free(TestCall *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestCall, test_call_free)

/* The comm of this process (/proc/self/comm), as the daemon reports it. */
char *test_get_comm(void);

/* Fails the test with the call's error unless r >= 0. */
#define assert_call_ok(r, error)                                                \
        test_assert_call_ok((r), (error), __FILE__, __LINE__, G_STRFUNC, #r)
void test_assert_call_ok(int r, const sd_bus_error *error, const char *file, int line,
                         const char *func, const char *expr);

/* Fails the test unless r < 0 and error has the given name (and, if
 * message is not NULL, exactly that message). */
#define assert_call_error(r, error, name, message)                              \
        test_assert_call_error((r), (error), (name), (message), __FILE__, __LINE__, G_STRFUNC)
void test_assert_call_error(int r, const sd_bus_error *error, const char *name, const char *message,
                            const char *file, int line, const char *func);

/* Skips the current test case unless running as root. Returns true if
 * skipped. */
bool test_skip_unless_root(void);

/* --- Per-test-case fixture ------------------------------------------------
 * A fresh bus (and so a fresh lockbusd with empty directories, activated
 * on the first call) per test case, so cases never share state. */

typedef struct TestFixture {
        TestBus *bus;
        sd_bus *client;         /* connected as the current user */
        char *comm;             /* this process's comm, as the daemon reports it */
} TestFixture;

void test_fixture_setup(TestFixture *f, gconstpointer data);
/* data: NULL-terminated extra daemon arguments (test_bus_new_with_args()). */
void test_fixture_setup_with_args(TestFixture *f, gconstpointer data);
void test_fixture_teardown(TestFixture *f, gconstpointer data);

#define test_add(path, func) \
        g_test_add((path), TestFixture, NULL, test_fixture_setup, (func), test_fixture_teardown)
/* args: a static NULL-terminated array of strings. */
#define test_add_with_args(path, args, func) \
        g_test_add((path), TestFixture, (args), test_fixture_setup_with_args, (func), test_fixture_teardown)

/* The unique name of a connection. */
const char *test_unique_name(sd_bus *bus);
