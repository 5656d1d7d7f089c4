/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Helpers for the fault tests (suite 'faults'): lockbusd under storage
 * faults, bad bus input and load. Built on the private-bus harness of
 * tests/bus/bus-test.h, with three differences:
 *
 *  - lockbusd is always started directly by the test (never activated),
 *    with --idle-timeout=0, its stdout and stderr appended to DIR/lockbusd.log
 *    so a test can check what it logged. The activation file is removed, so
 *    a call while no lockbusd runs fails with ServiceUnknown instead of
 *    starting one behind the test's back.
 *
 *  - Storage faults mount things (small tmpfs, read-only remounts). They do
 *    so in a private mount namespace of the test process
 *    (faults_enter_mount_namespace(): unshare(CLONE_NEWNS), then / made
 *    rprivate), entered after dbus-daemon and the harness's guardian were
 *    started, so those two stay in the original namespace. lockbusd, being
 *    forked from the test, runs in the private one (faults_start_daemon()
 *    checks it). Teardown detaches the mounts and returns to the original
 *    namespace before the harness removes DIR. If the test dies instead, the
 *    guardian (original namespace: no mounts there) removes DIR and kills
 *    the process group, and the private namespace with its tmpfs goes away
 *    with its last process: nothing is ever mounted on the host.
 *
 *  - Many calls at once: FaultsBatch sends calls without waiting for each
 *    reply and counts the results by error name.
 *
 * As in bus-test.h nothing sleeps: every wait is on a bus message, a pidfd
 * or a pipe, bounded by TEST_TIMEOUT_USEC. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>
#include <systemd/sd-bus.h>

#include "bus-test.h"

typedef struct FaultsFixture {
        TestBus *bus;
        sd_bus *client;         /* connected as the current user */
        char *log_path;         /* DIR/lockbusd.log: stdout and stderr of every lockbusd run */
        GPtrArray *mounts;      /* mount points to detach at teardown, in mount order */
        bool in_namespace;      /* in a private mount namespace, to be left at teardown */
} FaultsFixture;

/* data: NULL or a NULL-terminated array of extra daemon arguments;
 * --idle-timeout=0 is always added. Does not start lockbusd. */
void faults_fixture_setup(FaultsFixture *f, gconstpointer data);
void faults_fixture_teardown(FaultsFixture *f, gconstpointer data);

#define faults_add(path, args, func) \
        g_test_add((path), FaultsFixture, (args), faults_fixture_setup, (func), faults_fixture_teardown)

/* --- The daemon ------------------------------------------------------------- */

/* Starts lockbusd (as test_bus_start_daemon(), output to f->log_path) and
 * returns its PID once it owns io.lockbus1; fails the test if it exits
 * first. In a private mount namespace, asserts lockbusd runs in it. */
pid_t faults_start_daemon(FaultsFixture *f);

/* The same, with `wrapper` (NULL-terminated, e.g. a setpriv command line
 * ending in "--") put before lockbusd's command line. Returns true once it
 * serves; false if it exited first, with its wait status in *ret_status. */
bool faults_try_start_daemon(FaultsFixture *f, const char *const *wrapper, int *ret_status);

/* kill -9, then start again (the state on disk is what survives). */
pid_t faults_restart_daemon(FaultsFixture *f);

/* Waits until lockbusd's log contains `needle` (inotify on the log file),
 * at most TEST_TIMEOUT_USEC: the first fails the test then, the second
 * returns false. */
void faults_wait_log(FaultsFixture *f, const char *needle);
bool faults_try_wait_log(FaultsFixture *f, const char *needle);
/* The whole log so far, and whether it contains `needle`. */
char *faults_daemon_log(FaultsFixture *f);
#define faults_assert_log_contains(f, needle) \
        faults_assert_log_contains_impl((f), (needle), __FILE__, __LINE__, G_STRFUNC)
void faults_assert_log_contains_impl(FaultsFixture *f, const char *needle, const char *file, int line,
                                     const char *func);

/* A field of /proc/PID/status in kB (e.g. "RssAnon"). */
uint64_t faults_proc_status_kib(pid_t pid, const char *field);
/* A hexadecimal field of /proc/PID/status (e.g. "CapEff"). */
uint64_t faults_proc_status_hex(pid_t pid, const char *field);
/* Number of open fds of a process. */
unsigned faults_count_fds(pid_t pid);

/* --- Mounts (root only) ------------------------------------------------------- */

/* Enters a private mount namespace (see above). Returns false after
 * g_test_skip() when that is not possible (not root, no CAP_SYS_ADMIN). */
bool faults_enter_mount_namespace(FaultsFixture *f);
/* Mounts a tmpfs (nosuid, nodev, mode 0755) with `options` (e.g.
 * "size=256k") on path, creating the directory if needed. */
void faults_mount_tmpfs(FaultsFixture *f, const char *path, const char *options);
/* Remounts the tmpfs at path read-only or read-write. */
void faults_remount(FaultsFixture *f, const char *path, bool read_only);
/* Bind-mounts path onto itself, read-only. */
void faults_bind_read_only(FaultsFixture *f, const char *path);
/* Detaches the mount at path (the newest one there). */
void faults_umount(FaultsFixture *f, const char *path);

/* --- Files ----------------------------------------------------------------- */

/* rm -rf, asserting that path is gone afterwards. */
void faults_rm_rf(const char *path);
/* Writes to path until the file system is full (ENOSPC). */
void faults_fill(const char *path);
/* The names in a directory, sorted, "." and ".." left out. */
GPtrArray *faults_list_dir(const char *path);
/* Fails unless the directory holds exactly these names (NULL-terminated,
 * any order), naming what differs; lockbusd's socket ".direct.sock" (in
 * the runtime directory) is left out. */
#define faults_assert_dir(path, ...) \
        faults_assert_dir_impl((path), (const char *const[]) { __VA_ARGS__, NULL }, __FILE__, __LINE__, G_STRFUNC)
void faults_assert_dir_impl(const char *path, const char *const *expected, const char *file, int line,
                            const char *func);
/* The name of the hold file of a short ASCII resource name (the stem is the
 * name itself, see resource-name.h): "NAME@TOKEN". */
char *faults_hold_file(const char *resource, uint64_t token);
/* Contents of a small file, or NULL if it does not exist. */
char *faults_read_file(const char *path);
/* The token reservation in dir/tokens. */
uint64_t faults_read_tokens(const char *lock_dir);

/* --- Calls ----------------------------------------------------------------- */

/* A new call of io.lockbus1.Manager.member on bus; append the arguments. */
sd_bus_message *faults_new_call(sd_bus *bus, const char *member);
/* Calls it and returns the result (negative with *error set). */
int faults_call(sd_bus *bus, sd_bus_message *m, sd_bus_error *error, sd_bus_message **ret_reply);

/* Fails unless r < 0 with the error `name` and a message containing
 * `substring` (if not NULL). */
#define faults_assert_error(r, error, name, substring) \
        faults_assert_error_impl((r), (error), (name), (substring), __FILE__, __LINE__, G_STRFUNC)
void faults_assert_error_impl(int r, const sd_bus_error *error, const char *name, const char *substring,
                              const char *file, int line, const char *func);

/* All that a user can see of "nobody holds it": Owner says NotLocked and
 * ListLocks has no row for it. */
void faults_assert_not_held(sd_bus *bus, const char *resource);
/* The token of the only holder of resource (asserting there is one). */
uint64_t faults_owner_token(sd_bus *bus, const char *resource);

/* Grants and releases connection holds n times (n tokens are used up),
 * pipelined, asserting each call succeeds; returns the last token. */
uint64_t faults_spend_tokens(sd_bus *bus, unsigned n);

/* --- Many calls at once -------------------------------------------------------- */

typedef struct FaultsBatch FaultsBatch;

FaultsBatch *faults_batch_new(void);
void faults_batch_free(FaultsBatch *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FaultsBatch, faults_batch_free)

/* Sends m without waiting, and without a reply timeout (a waiting Acquire
 * may be answered much later). */
void faults_batch_send(FaultsBatch *b, sd_bus *bus, sd_bus_message *m);
/* Dispatches the buses until n replies in all have arrived. */
void faults_batch_wait(FaultsBatch *b, sd_bus *const *buses, size_t n_buses, unsigned n, const char *what);
/* Replies so far, in total and by result: "ok" or the error name. */
unsigned faults_batch_n_replies(const FaultsBatch *b);
unsigned faults_batch_count(const FaultsBatch *b, const char *result);
/* Every result seen, "NAME xCOUNT, ...", for failure messages. */
char *faults_batch_describe(const FaultsBatch *b);
/* The largest token of the "ok" replies of type "t" (or "ht"). */
uint64_t faults_batch_max_token(const FaultsBatch *b);

