/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What every harness of a private, system-like bus (TESTING.md §1) does
 * the same way: tests/bus (bus-test.h, and through it the client, fault
 * and polkit tests) and tests/torture.
 *
 *  - The bus's configuration: DIR/bus.conf like Debian's system.conf
 *    (<type>system</type>, unix:path=DIR/bus.sock, EXTERNAL, its default
 *    policy; no <user>, <fork/>, <servicehelper>), <includedir>DIR/system.d
 *    holding a copy of the project's own dbus/io.lockbus1.conf, plus what a
 *    harness chooses (TestBusConfig): a service directory, root's access
 *    to the Monitoring interface, <limit>s.
 *  - Activation files, and lockbusd's command line and environment, for
 *    activation and direct starts alike.
 *  - Child processes: test_fork() sets up a child's fds, process group
 *    and parent-death signal; test_become_uid() drops it to another uid;
 *    test_dbus_daemon_start() starts dbus-daemon so and reads its address.
 *  - Small helpers: clocks, files, wait statuses, one connection.
 *
 * What stays with each harness: who cleans up (bus-test.h's guardian and
 * process group; the torture controller's parent-death signals), the
 * timeouts, and everything about lockbusd's calls.
 *
 * Errors: what a forked child may call (test_become_uid(), test_bus_open(),
 * the clocks) returns a negative errno or asserts nothing; everything else
 * fails the test (g_error, g_assert) like the rest of the harness code.
 * Nothing sleeps: every wait here is on an fd, bounded by the caller's
 * timeout or deadline. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>
#include <systemd/sd-bus.h>

#include "macro.h"

#define DBUS_SERVICE "org.freedesktop.DBus"
#define DBUS_PATH "/org/freedesktop/DBus"
#define DBUS_INTERFACE "org.freedesktop.DBus"

/* --- Clocks ---------------------------------------------------------------- */

/* In µs. */
uint64_t test_now_monotonic(void);
uint64_t test_now_realtime(void);

/* Milliseconds left until deadline (CLOCK_MONOTONIC µs), rounded up, for
 * poll(); fails the test naming `what` once it has passed. */
int test_remaining_msec(uint64_t deadline, const char *what);

/* Waits until fd is readable (true) or deadline (CLOCK_MONOTONIC µs) has
 * passed (false). */
bool test_wait_readable(int fd, uint64_t deadline);

/* msec (-1: no bound), or less if `bus` has a reply timeout coming first:
 * the poll() timeout of a loop that dispatches it. */
int test_bus_poll_msec(sd_bus *bus, int msec);

/* --- Environment and files ----------------------------------------------------- */

/* $name, failing the test if it is unset or empty (meson test sets it). */
const char *test_getenv_required(const char *name);

/* Writes (or copies) a file and gives it `mode`: 0644 for test_write_file(). */
void test_write_file(const char *path, const char *contents);
void test_copy_file(const char *from, const char *to, mode_t mode);
char *test_read_file(const char *path);

/* A new temp dir from a template ("lockbus-test-XXXXXX"), mode 0755 so
 * that other uids reach the bus socket in it (mkdtemp gives 0700). */
char *test_make_tmp_dir(const char *template);
/* rm -rf, not following symlinks nor crossing mount points; best effort. */
void test_rm_rf(const char *path);

/* --- The bus's configuration ------------------------------------------------------ */

typedef struct TestBusLimit {
        const char *name;
        unsigned value;
} TestBusLimit;

typedef struct TestBusConfig {
        const char *dir;                /* DIR: bus.conf, bus.sock, system.d/ */
        const char *dbus_dir;           /* the project's dbus/ (io.lockbus1.conf) */
        const char *service_dir;        /* made (0755) and named in <servicedir>; NULL: nothing activatable */
        bool root_may_monitor;          /* as in Debian: root may use org.freedesktop.DBus.Monitoring */
        const TestBusLimit *limits;     /* <limit>s, ended by { NULL }; may be NULL */
} TestBusConfig;

/* Writes DIR/system.d (0755, with the copy of the policy) and DIR/bus.conf,
 * and returns the path of the latter, for --config-file. */
char *test_bus_write_config(const TestBusConfig *c);

/* A test-only policy file at `path`: <policy user="CURRENT USER"> with
 * `rules` (XML elements) in it; `comment` says why. */
void test_bus_write_user_policy(const char *path, const char *comment, const char *rules);

/* DIR/NAME.service: [D-BUS Service] Name=name, Exec=argv (each word shell
 * quoted). User= and SystemdService= are left out: a private bus runs
 * services as its own uid and has no systemd. */
void test_bus_write_activation_file(const char *service_dir, const char *name, const char *const *argv);

/* --- lockbusd -------------------------------------------------------------------- */

/* [WRAPPER... (its program found in $PATH)] DAEMON --lock-directory=LOCK_DIR
 * --runtime-directory=RUNTIME_DIR [EXTRA_ARGS...]; wrapper and extra_args
 * are NULL-terminated and may be NULL. */
char **test_lockbusd_argv(const char *const *wrapper, const char *daemon, const char *lock_dir,
                          const char *runtime_dir, const char *const *extra_args);

/* Our environment with DBUS_SYSTEM_BUS_ADDRESS=address (lockbusd connects
 * with sd_bus_open_system()), and without the DBUS_STARTER_* variables
 * that only an activated process has. */
char **test_lockbusd_environ(const char *address);

/* --- Child processes ---------------------------------------------------------------
 * A zeroed TestChild is a child in our process group with stdin from
 * /dev/null, stdout on our stderr (our stdout is the TAP stream), our
 * stderr, and no fd above 2. An fd given below is used if it is >= 3 (0,
 * 1 and 2 are our own stdio, never what a child should get instead). */

#define TEST_PGID_NEW ((pid_t) -1)

typedef struct TestChild {
        pid_t pgid;             /* > 0: joins that process group; TEST_PGID_NEW: leads a new one */
        int keep_fds[2];        /* become the child's fds 3 and 4 (the second only with the first) */
        int stdin_fd;
        int stdout_fd;          /* else its stderr */
        int stderr_fd;
        bool die_with_parent;   /* SIGKILL when we die (PR_SET_PDEATHSIG; a uid change clears it) */
} TestChild;

/* fork() with the child set up as c says (both sides set its process
 * group, so it is set whoever runs first): returns 0 in the child (which
 * _exit(127)s if the setup fails), its PID in the parent. The child must
 * leave with _exit(), not to flush our stdio buffers a second time. */
pid_t test_fork(const TestChild *c);
/* The same, then execve(argv[0], argv, envp (NULL: our environment)). */
pid_t test_spawn(const TestChild *c, char *const *argv, char *const *envp);

/* In a child: becomes uid (gid = uid, no supplementary groups), unless
 * that is the effective uid already. 0 or a negative errno. */
int test_become_uid(uid_t uid);

/* A pidfd (O_CLOEXEC) for a running process, -ESRCH if it is gone already:
 * open it while something keeps the process alive (e.g. it is our
 * unreaped child), so the PID cannot have been reused. */
int test_pidfd_open(pid_t pid);
/* waitpid(), again on EINTR; fails the test unless it returns pid. Returns
 * the wait status. */
int test_waitpid(pid_t pid, int flags);
/* "exited with status 1", "was killed by signal Killed", … */
char *test_format_wait_status(int status);
/* SIGKILL and reap, if not reaped already (by a harness reaping a whole
 * process group). */
void test_kill_wait(pid_t pid);

/* --- dbus-daemon ------------------------------------------------------------------------ */

/* Starts dbus-daemon --config-file=CONFIG --nofork --print-address=3 as a
 * child (pgid and die_with_parent as in TestChild) and returns its PID
 * once it printed its address (*ret_address); fails the test if it exits
 * first or after timeout_usec. */
pid_t test_dbus_daemon_start(const char *config_path, pid_t pgid, bool die_with_parent, uint64_t timeout_usec,
                             char **ret_address);
/* The same in two steps, for a harness that arranges for its cleanup
 * before it waits: the first returns the PID and the pipe the address
 * comes on, the second reads it from there (and closes the pipe). */
pid_t test_dbus_daemon_spawn(const char *config_path, pid_t pgid, bool die_with_parent, int *ret_address_fd);
char *test_dbus_daemon_read_address(int fd, pid_t pid, uint64_t timeout_usec);

/* A new connection to `address`, method calls timing out after
 * call_timeout_usec: a client of the bus there (Hello done) if is_bus,
 * else a peer-to-peer one with fd passing negotiated (sd_bus_start() does
 * not wait for the peer: one that turns it away shows on the first call).
 * 0 or a negative errno. */
int test_bus_open(const char *address, bool is_bus, uint64_t call_timeout_usec, sd_bus **ret);

/* A match for NameOwnerChanged of `name`, added synchronously: the bus has
 * it when this returns. */
sd_bus_slot *test_bus_match_name_owner_changed(sd_bus *bus, const char *name, sd_bus_message_handler_t handler,
                                               void *userdata);
/* GetNameOwner: the unique name owning `name`, NULL if none. */
char *test_bus_get_name_owner(sd_bus *bus, const char *name);
