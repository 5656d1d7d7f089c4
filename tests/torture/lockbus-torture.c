/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbus-torture: the controller. See torture.h for the processes and
 * README.md for what the run proves.
 *
 *   lockbus-torture [--duration=25s] [--clients=8] [--resources=4]
 *                   [--client-kills=N] [--daemon-kills=N] [--torture-seed=N]
 *                   [--daemon-wrapper='valgrind …'] [--keep] [--verbose]
 *
 * One g_test case, /torture/run, so the output is TAP; the figures are
 * its "# " lines. Needs root (clients run as root, nobody and daemon). */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "torture.h"

#ifndef LOCKBUS_DAEMON_PATH
#  define LOCKBUS_DAEMON_PATH "lockbusd"
#endif
#ifndef LOCKBUS_DBUS_DIR_PATH
#  define LOCKBUS_DBUS_DIR_PATH "dbus"
#endif

/* How long the clients get to finish once told to stop: the longest wait
 * of the workload is 2 s, but waits for ever queue behind others. */
#define STOP_TIMEOUT_USEC (90U * 1000000ULL)

static TortureOptions arg = {
        .duration_usec = 25U * 1000000ULL,
        .n_clients = 8,
        .n_resources = 4,
        .client_kills = -1,
        .daemon_kills = -1,
};

typedef struct Slot {
        pid_t pid;                      /* 0: not running */
        int pidfd;
        unsigned incarnation;
        uid_t uid;
        int log_fd;
} Slot;

typedef struct Controller {
        TortureRun run;
        TortureShared *s;
        char *log_dir;
        char *daemon_path;
        char **wrapper;                 /* argv words, or NULL */
        pid_t bus_pid;
        sd_bus *bus;
        pid_t daemon_pid;
        int daemon_pidfd;
        int daemon_log_fd;
        uint32_t gen;
        GPtrArray *generations;         /* TortureGeneration */
        Slot slots[TORTURE_MAX_CLIENTS];
        GRand *rand;

        uint64_t n_client_kills;
        uint64_t n_daemon_kills;
        uint64_t n_quiet_kills;         /* of those, at a quiet moment */
        uint64_t n_client_kills_while_down;
        uint64_t n_restart_checks;      /* holds checked to be there after a restart */
} Controller;

/* Our children: they cannot be gone before we reap them. */
static int pidfd_open(pid_t pid) {
        int fd = test_pidfd_open(pid);

        if (fd < 0)
                g_error("pidfd_open(%d): %s", (int) pid, g_strerror(-fd));
        return fd;
}

static void generation_free(TortureGeneration *g) {
        g_free(g->unique_name);
        g_free(g);
}

/* --- lockbusd ------------------------------------------------------------------ */

static void controller_publish(Controller *c) {
        atomic_store(&c->s->up_gen, c->gen);
        torture_bump(&c->s->state_seq);
}

/* Starts the next generation and returns once it owns io.lockbus1. It is
 * not published to the clients (up_gen) yet. */
static void controller_start_daemon(Controller *c) {
        g_autoptr(NameWatch) w = name_watch_new(c->bus, LOCKBUS_BUS_NAME);
        g_autofree char *lock_dir = g_build_filename(c->run.dir, "lib", NULL);
        g_autofree char *runtime_dir = g_build_filename(c->run.dir, "run", NULL);
        g_auto(GStrv) argv = NULL, envp = NULL;
        TortureGeneration *g;

        if (name_watch_owner(w)[0] != 0)
                g_error("%s is owned by %s before generation %u starts", LOCKBUS_BUS_NAME, name_watch_owner(w),
                        c->gen + 1);

        argv = test_lockbusd_argv((const char *const *) c->wrapper, c->daemon_path, lock_dir, runtime_dir,
                                  (const char *const[]) { "--idle-timeout=0", NULL });
        envp = test_lockbusd_environ(c->run.address);
        c->daemon_pid = test_spawn(&(TestChild) {
                                           .stdout_fd = c->daemon_log_fd,
                                           .stderr_fd = c->daemon_log_fd,
                                           .die_with_parent = true,
                                   }, argv, envp);
        c->daemon_pidfd = pidfd_open(c->daemon_pid);

        if (!name_watch_wait_owned(w, c->daemon_pidfd)) {
                g_autofree char *st = test_format_wait_status(test_waitpid(c->daemon_pid, 0));

                g_error("lockbusd generation %u %s before taking %s (see %s/lockbusd.log)", c->gen + 1, st,
                        LOCKBUS_BUS_NAME, c->log_dir);
        }

        c->gen++;
        g = g_new0(TortureGeneration, 1);
        *g = (TortureGeneration) {
                .gen = c->gen,
                .unique_name = g_strdup(name_watch_owner(w)),
                .pid = c->daemon_pid,
        };
        g_ptr_array_add(c->generations, g);
        if (arg.verbose)
                g_test_message("lockbusd generation %u: pid %d, %s", g->gen, (int) g->pid, g->unique_name);
}

/* --- Clients ------------------------------------------------------------------------ */

static void controller_start_client(Controller *c, unsigned slot) {
        Slot *s = &c->slots[slot];
        pid_t pid;

        /* Stdio (stdout is the TAP stream: stderr) and the log only. */
        pid = test_fork(&(TestChild) { .keep_fds = { s->log_fd } });
        if (pid == 0)
                _exit(torture_client_main(&c->run, slot, s->incarnation, s->uid, 3));
        s->pid = pid;
        s->pidfd = pidfd_open(pid);
}

static void controller_reap_client(Controller *c, unsigned slot, int status, bool killed) {
        Slot *s = &c->slots[slot];

        if (killed ? !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
                   : !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                g_autofree char *st = test_format_wait_status(status);

                torture_violation(c->s, "client slot %u (incarnation %u, pid %d) %s", slot, s->incarnation,
                                  (int) s->pid, st);
        }
        close(s->pidfd);
        s->pidfd = -1;
        s->pid = 0;
}

/* SIGSTOP, then clear its connection and fd occupancy (those holds end
 * with the process; the persistent ones stay with the slot for the next
 * incarnation), then SIGKILL, then wait until the bus dropped its name.
 * No conflicting grant can come while it is stopped: its holds are still
 * there. */
static void controller_kill_client_begin(Controller *c, unsigned slot) {
        g_autoptr(NameWatch) w = NULL;
        Slot *s = &c->slots[slot];
        g_autofree char *name = NULL;
        int status;

        if (kill(s->pid, SIGSTOP) < 0)
                g_error("kill(SIGSTOP): %s", g_strerror(errno));
        status = test_waitpid(s->pid, WUNTRACED);
        if (!WIFSTOPPED(status)) {
                controller_reap_client(c, slot, status, false);
                return;
        }

        for (unsigned res = 0; res < arg.n_resources; res++) {
                OccWord word = atomic_load(&c->s->occ[res][slot]);

                if (word != 0 && occ_scope(word) != TORTURE_PERSISTENT)
                        atomic_store(&c->s->occ[res][slot], 0);
        }
        atomic_store(&c->s->fd_entering[slot], 0);
        torture_bump(&c->s->cs_seq);

        name = g_strdup(c->s->unique_name[slot][atomic_load(&c->s->unique_index[slot])]);
        if (name[0])
                w = name_watch_new(c->bus, name);

        if (kill(s->pid, SIGKILL) < 0)
                g_error("kill(SIGKILL): %s", g_strerror(errno));
        controller_reap_client(c, slot, test_waitpid(s->pid, 0), true);
        c->n_client_kills++;

        if (w && !name_watch_wait_unowned(w))
                g_error("The bus did not drop %s of killed slot %u", name, slot);
}

/* Once lockbusd serves: a round trip after the NameOwnerChanged, so that
 * it has handled the disconnect, then the next incarnation. */
static void controller_kill_client_end(Controller *c, unsigned slot) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint32_t waiters;
        int r;

        r = torture_get_waiter_count(c->bus, &waiters, &error);
        if (r < 0)
                torture_violation(c->s, "WaiterCount after killing slot %u failed: %s", slot,
                                  error.message ?: g_strerror(-r));

        c->slots[slot].incarnation++;
        controller_start_client(c, slot);
}

static void controller_kill_client(Controller *c, unsigned slot) {
        controller_kill_client_begin(c, slot);
        controller_kill_client_end(c, slot);
}

static void controller_dump_activity(Controller *c) {
        static const char *const ops[] = {
                [OP_IDLE] = "idle", [OP_ACQUIRE] = "acquiring", [OP_IN_CS] = "in critical section",
                [OP_UNLOCK] = "unlocking", [OP_WAIT_DAEMON] = "waiting for lockbusd",
                [OP_RECOVER] = "recovering", [OP_STOPPING] = "stopping", [OP_OTHER] = "reconnecting",
        };
        uint64_t now = test_now_monotonic();

        for (unsigned slot = 0; slot < arg.n_clients; slot++) {
                TortureActivity *a = &c->s->activity[slot];
                uint32_t op = atomic_load(&a->op);

                if (c->slots[slot].pid <= 0)
                        continue;
                g_test_message("slot %u (pid %d, uid %u): %s '%s' for %.1f s", slot, (int) c->slots[slot].pid,
                               (unsigned) c->slots[slot].uid, op < ELEMENTSOF(ops) ? ops[op] : "?",
                               c->run.resources[atomic_load(&a->resource) % arg.n_resources],
                               (double) (now - atomic_load(&a->since)) / 1e6);
        }
}

static void controller_dump_locks(Controller *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) locks = NULL;
        uint32_t waiters = 0;

        if (torture_list_locks(c->bus, &locks, &error) < 0) {
                g_test_message("ListLocks failed: %s", error.message);
                return;
        }
        (void) torture_get_waiter_count(c->bus, &waiters, NULL);
        g_test_message("lockbusd: %u holds, WaiterCount %u", locks->len, waiters);
        for (guint i = 0; i < locks->len; i++) {
                ListedHold *l = locks->pdata[i];

                g_test_message("  '%s' %s %s token %" PRIu64 " uid %u %s \"%s\"", l->resource, l->mode, l->scope,
                               l->token, l->uid, l->sender, l->description);
        }
}

/* --- Replacing lockbusd ------------------------------------------------------- */

/* A hold a client is in its critical section with, when lockbusd died. */
typedef struct SnapshotEntry {
        unsigned res;
        unsigned slot;
        OccWord word;
} SnapshotEntry;

static bool fd_holds_of_dead_generations(Controller *c, uint32_t dead) {
        for (unsigned slot = 0; slot < arg.n_clients; slot++) {
                uint32_t e = atomic_load(&c->s->fd_entering[slot]);

                if (e != 0 && e <= dead)
                        return true;
                for (unsigned res = 0; res < arg.n_resources; res++) {
                        OccWord w = atomic_load(&c->s->occ[res][slot]);

                        if (w != 0 && occ_scope(w) == TORTURE_FD && occ_gen(w) <= dead)
                                return true;
                }
        }
        return false;
}

/* After a generation died: every persistent hold and every connection
 * hold of a live connection that a client was in its critical section
 * with when it died, and still is after the next generation answered
 * ListLocks, must be listed, with its token; an fd hold listed must be
 * new (its token above every token seen before the death). */
static void controller_check_restart(Controller *c, GArray *snapshot, uint64_t max_token_before,
                                     uint64_t t_connection, uint64_t t_persistent) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) locks = NULL;
        int r;

        r = torture_list_locks(c->bus, &locks, &error);
        if (r < 0) {
                torture_violation(c->s, "ListLocks after the start of generation %u failed: %s", c->gen,
                                  error.message ?: g_strerror(-r));
                return;
        }

        for (guint i = 0; i < snapshot->len; i++) {
                SnapshotEntry *e = &g_array_index(snapshot, SnapshotEntry, i);
                const char *scope = torture_scope_to_string(occ_scope(e->word));
                bool listed = false;

                if (atomic_load(&c->s->occ[e->res][e->slot]) != e->word)
                        continue; /* left its critical section meanwhile: may be released */
                c->n_restart_checks++;
                for (guint j = 0; j < locks->len && !listed; j++) {
                        ListedHold *l = locks->pdata[j];

                        listed = l->token == occ_token(e->word) && streq(l->resource, c->run.resources[e->res]) &&
                                streq(l->scope, scope) &&
                                streq(l->mode, torture_mode_to_string(occ_mode(e->word)));
                }
                if (!listed)
                        torture_violation(c->s, "%s %s hold on '%s' (token %" PRIu64 ") of slot %u, acknowledged "
                                          "before lockbusd generation %u died, is not there after the restart",
                                          torture_mode_to_string(occ_mode(e->word)), scope,
                                          c->run.resources[e->res], occ_token(e->word), e->slot, c->gen - 1);
        }

        for (int k = 0; k < 2; k++) {
                uint64_t t = k == 0 ? t_connection : t_persistent;
                bool listed = false;

                if (t == 0)
                        continue;
                c->n_restart_checks++;
                for (guint j = 0; j < locks->len && !listed; j++)
                        listed = ((ListedHold *) locks->pdata[j])->token == t;
                if (!listed)
                        torture_violation(c->s, "the controller's %s hold (token %" PRIu64 ") is not there after "
                                          "the restart of lockbusd generation %u", k == 0 ? "connection" : "persistent",
                                          t, c->gen - 1);
        }

        for (guint j = 0; j < locks->len; j++) {
                ListedHold *l = locks->pdata[j];

                if (streq(l->scope, "fd") && l->token <= max_token_before)
                        torture_violation(c->s, "fd hold on '%s' (token %" PRIu64 ", %s) survived the death of "
                                          "lockbusd generation %u", l->resource, l->token, l->sender, c->gen - 1);
        }
}

/* The controller's own calls, on resources no client uses. */
static uint64_t controller_acquire(Controller *c, const char *resource, const char *scope) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t token = 0;
        int r;

        r = sd_bus_call_method(c->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Acquire",
                               &error, &reply, "sa{sv}", resource, 1, "scope", "s", scope);
        if (r >= 0)
                r = sd_bus_message_read(reply, "t", &token);
        if (r < 0)
                g_error("Acquire('%s', %s) by the controller failed: %s", resource, scope,
                        error.message ?: g_strerror(-r));
        return token;
}

static void controller_unlock(Controller *c, const char *resource) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(c->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Unlock",
                               &error, NULL, "s", resource);
        if (r < 0)
                torture_violation(c->s, "Unlock('%s') by the controller failed: %s", resource,
                                  error.message ?: g_strerror(-r));
}

/* A token of our own, released at once. */
static uint64_t controller_burn_token(Controller *c) {
        uint64_t token = controller_acquire(c, "torture-controller", "connection");

        controller_unlock(c, "torture-controller");
        return token;
}

/* The clients pause between iterations (holding only persistent holds of
 * killed incarnations, if any). */
static void controller_pause_clients(Controller *c) {
        uint64_t deadline = test_now_monotonic() + TORTURE_WAIT_USEC;

        atomic_store(&c->s->pause, 1);
        torture_bump(&c->s->state_seq);
        for (;;) {
                uint32_t seq = atomic_load(&c->s->cs_seq);

                if (atomic_load(&c->s->n_paused) >= arg.n_clients)
                        return;
                if (test_now_monotonic() >= deadline) {
                        controller_dump_activity(c);
                        g_error("The clients did not pause");
                }
                torture_futex_wait(&c->s->cs_seq, seq, 1000000U);
        }
}

static void controller_resume_clients(Controller *c) {
        atomic_store(&c->s->pause, 0);
        torture_bump(&c->s->state_seq);
}

typedef enum KillFlags {
        KILL_DAEMON = 1 << 0,           /* else: it died by itself, reap it */
        KILL_QUIET = 1 << 1,            /* at a quiet moment */
} KillFlags;

/* Kills the serving generation (or reaps one that died by itself) and
 * starts the next: dead_gen first, so that no fd grant of the dead one
 * enters a critical section from now on; the next starts only when the fd
 * holds of the dead one have all left theirs (their holds are dropped at
 * start: no systemd fd store here).
 *
 * The controller holds a connection and a persistent hold across every
 * kill: they must be there after it, whatever the clients did.
 *
 * KILL_QUIET: the clients pause first, and the controller takes and
 * releases a token just before the kill, so that the highest token handed
 * out belongs to no hold: only the durable reservation keeps the next
 * generation above it, which the first token after the restart shows.
 *
 * kill_slot >= 0: that client dies while lockbusd is down; its connection
 * holds must not come back (it is gone from the bus before the start). */
static void controller_replace_daemon(Controller *c, KillFlags flags, int kill_slot) {
        g_autoptr(NameWatch) w = name_watch_new(c->bus, LOCKBUS_BUS_NAME);
        g_autoptr(GArray) snapshot = g_array_new(false, false, sizeof(SnapshotEntry));
        uint64_t deadline, max_token_before, t_connection = 0, t_persistent = 0, burned = 0;
        bool kill_it = flags & KILL_DAEMON;
        int status;

        if (kill_it) {
                if (flags & KILL_QUIET)
                        controller_pause_clients(c);
                t_connection = controller_acquire(c, "torture-controller/connection", "connection");
                t_persistent = controller_acquire(c, "torture-controller/persistent", "persistent");
                if (flags & KILL_QUIET)
                        burned = controller_burn_token(c);
        }

        atomic_store(&c->s->dead_gen, c->gen);
        torture_bump(&c->s->state_seq);

        if (kill_it && kill(c->daemon_pid, SIGKILL) < 0)
                g_error("kill(lockbusd): %s", g_strerror(errno));
        status = test_waitpid(c->daemon_pid, 0);
        if (kill_it && !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
                g_autofree char *st = test_format_wait_status(status);

                torture_violation(c->s, "lockbusd generation %u %s before it was killed", c->gen, st);
        }
        close(c->daemon_pidfd);
        c->daemon_pidfd = -1;
        c->daemon_pid = 0;
        if (!name_watch_wait_unowned(w))
                g_error("The bus did not drop %s of generation %u", LOCKBUS_BUS_NAME, c->gen);

        if (kill_slot >= 0)
                controller_kill_client_begin(c, (unsigned) kill_slot);

        /* Nothing can be released or granted now. */
        for (unsigned res = 0; res < arg.n_resources; res++)
                for (unsigned slot = 0; slot < arg.n_clients; slot++) {
                        OccWord word = atomic_load(&c->s->occ[res][slot]);

                        if (word != 0 && occ_scope(word) != TORTURE_FD)
                                g_array_append_val(snapshot, ((SnapshotEntry) { res, slot, word }));
                }

        deadline = test_now_monotonic() + TORTURE_WAIT_USEC;
        for (;;) {
                uint32_t seq = atomic_load(&c->s->cs_seq);

                if (!fd_holds_of_dead_generations(c, c->gen))
                        break;
                if (test_now_monotonic() >= deadline)
                        g_error("fd holds of lockbusd generation %u did not leave their critical sections", c->gen);
                torture_futex_wait(&c->s->cs_seq, seq, 1000000U);
        }
        max_token_before = atomic_load(&c->s->max_token_seen);

        controller_start_daemon(c);
        controller_check_restart(c, snapshot, max_token_before, t_connection, t_persistent);

        if (flags & KILL_QUIET) {
                uint64_t after = controller_burn_token(c);

                if (after <= burned)
                        torture_violation(c->s, "tokens went back across a restart: %" PRIu64 " before, %" PRIu64
                                          " after", burned, after);
                c->n_quiet_kills++;
        }
        if (kill_it) {
                controller_unlock(c, "torture-controller/connection");
                controller_unlock(c, "torture-controller/persistent");
                c->n_daemon_kills++;
        }

        controller_publish(c);
        if (flags & KILL_QUIET)
                controller_resume_clients(c);
        if (kill_slot >= 0) {
                controller_kill_client_end(c, (unsigned) kill_slot);
                c->n_client_kills_while_down++;
        }
}

/* --- The run ---------------------------------------------------------------------------- */

typedef struct Event {
        uint64_t at;                    /* µs after the start */
        bool daemon;
} Event;

static int compare_events(gconstpointer a, gconstpointer b) {
        const Event *x = a, *y = b;

        return x->at < y->at ? -1 : x->at > y->at;
}

/* Handles clients or a lockbusd that exited on their own; returns true if
 * one did. */
static bool controller_check_exits(Controller *c, uint64_t timeout_usec) {
        struct pollfd p[TORTURE_MAX_CLIENTS + 1];
        unsigned idx[TORTURE_MAX_CLIENTS + 1];
        bool any = false;
        int n = 0, r;

        for (unsigned slot = 0; slot < arg.n_clients; slot++)
                if (c->slots[slot].pid > 0) {
                        idx[n] = slot;
                        p[n++] = (struct pollfd) { .fd = c->slots[slot].pidfd, .events = POLLIN };
                }
        if (c->daemon_pidfd >= 0) {
                idx[n] = UINT_MAX;
                p[n++] = (struct pollfd) { .fd = c->daemon_pidfd, .events = POLLIN };
        }

        r = poll(p, (nfds_t) n, (int) MIN(timeout_usec / 1000U, (uint64_t) INT32_MAX));
        if (r < 0 && errno != EINTR)
                g_error("poll: %s", g_strerror(errno));
        if (r <= 0)
                return false;

        for (int i = 0; i < n; i++) {
                if (!(p[i].revents & POLLIN))
                        continue;
                any = true;
                if (idx[i] == UINT_MAX) {
                        torture_violation(c->s, "lockbusd generation %u died by itself (see %s/lockbusd.log)",
                                          c->gen, c->log_dir);
                        controller_replace_daemon(c, 0, -1);
                } else if (!atomic_load(&c->s->stop)) {
                        unsigned slot = idx[i];

                        controller_reap_client(c, slot, test_waitpid(c->slots[slot].pid, 0), false);
                        c->slots[slot].incarnation++;
                        controller_start_client(c, slot);
                }
        }
        return any;
}

static void controller_run(Controller *c) {
        g_autoptr(GArray) events = g_array_new(false, false, sizeof(Event));
        uint64_t start, duration = arg.duration_usec;
        guint next = 0;

        /* Kills at random times in the middle 90% (clients) and 80%
         * (lockbusd) of the run, so that the end is calm enough for the
         * quiescence check to mean something either way. */
        for (int i = 0; i < arg.client_kills; i++)
                g_array_append_val(events, ((Event) {
                        .at = duration / 20 + (uint64_t) g_rand_double_range(c->rand, 0, (double) duration * 0.9),
                }));
        for (int i = 0; i < arg.daemon_kills; i++)
                g_array_append_val(events, ((Event) {
                        .at = duration / 10 + (uint64_t) g_rand_double_range(c->rand, 0, (double) duration * 0.8),
                        .daemon = true,
                }));
        g_array_sort(events, compare_events);

        start = test_now_monotonic();
        for (;;) {
                uint64_t now = test_now_monotonic() - start;
                uint64_t until = next < events->len ? g_array_index(events, Event, next).at : duration;

                if (now >= duration)
                        break;
                if (now < until) {
                        (void) controller_check_exits(c, until - now);
                        continue;
                }
                if (g_array_index(events, Event, next).daemon && c->n_daemon_kills % 2 == 1)
                        controller_replace_daemon(c, KILL_DAEMON | KILL_QUIET, -1);
                else if (g_array_index(events, Event, next).daemon)
                        /* Half the time a client dies while lockbusd is down. */
                        controller_replace_daemon(c, KILL_DAEMON, g_rand_boolean(c->rand) ?
                                                  g_rand_int_range(c->rand, 0, (gint32) arg.n_clients) : -1);
                else
                        controller_kill_client(c, (unsigned) g_rand_int_range(c->rand, 0, (gint32) arg.n_clients));
                next++;
        }
}

/* Tells the clients to stop and waits for each to release everything and
 * exit. A client that does not is stuck: a stranded waiter, or a hold that
 * never comes free. */
static void controller_stop(Controller *c) {
        uint64_t deadline = test_now_monotonic() + STOP_TIMEOUT_USEC;

        atomic_store(&c->s->stop, 1);
        torture_bump(&c->s->state_seq);

        for (;;) {
                bool running = false;
                uint64_t now = test_now_monotonic();

                for (unsigned slot = 0; slot < arg.n_clients; slot++)
                        running = running || c->slots[slot].pid > 0;
                if (!running)
                        return;
                if (now >= deadline) {
                        torture_violation(c->s, "clients did not finish within %u s of the stop: stranded",
                                          (unsigned) (STOP_TIMEOUT_USEC / 1000000U));
                        controller_dump_activity(c);
                        controller_dump_locks(c);
                        for (unsigned slot = 0; slot < arg.n_clients; slot++)
                                if (c->slots[slot].pid > 0) {
                                        (void) kill(c->slots[slot].pid, SIGKILL);
                                        (void) test_waitpid(c->slots[slot].pid, 0);
                                        close(c->slots[slot].pidfd);
                                        c->slots[slot].pid = 0;
                                }
                        return;
                }

                if (!controller_check_exits(c, MIN(deadline - now, 1000000U)))
                        continue;
                for (unsigned slot = 0; slot < arg.n_clients; slot++) {
                        Slot *s = &c->slots[slot];
                        siginfo_t si = {};

                        if (s->pid <= 0)
                                continue;
                        if (waitid(P_PID, (id_t) s->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
                                continue;
                        controller_reap_client(c, slot, test_waitpid(s->pid, 0), false);
                }
        }
}

/* Everything stopped: only persistent holds a slot is recorded to be in
 * its critical section with may be listed (all clients released
 * everything, so none), and nobody waits. */
static void controller_check_quiescence(Controller *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) locks = NULL;
        uint32_t waiters = 0;
        unsigned recorded = 0;
        int r;

        r = torture_list_locks(c->bus, &locks, &error);
        if (r < 0)
                return (void) torture_violation(c->s, "final ListLocks failed: %s", error.message ?: g_strerror(-r));
        r = torture_get_waiter_count(c->bus, &waiters, &error);
        if (r < 0)
                return (void) torture_violation(c->s, "final WaiterCount failed: %s", error.message ?: g_strerror(-r));
        if (waiters != 0)
                torture_violation(c->s, "WaiterCount is %u after every client stopped", waiters);

        for (unsigned res = 0; res < arg.n_resources; res++)
                for (unsigned slot = 0; slot < arg.n_clients; slot++) {
                        OccWord word = atomic_load(&c->s->occ[res][slot]);
                        bool listed = false;

                        if (word == 0)
                                continue;
                        recorded++;
                        if (occ_scope(word) != TORTURE_PERSISTENT)
                                torture_violation(c->s, "slot %u stopped inside a %s critical section on '%s'", slot,
                                                  torture_scope_to_string(occ_scope(word)), c->run.resources[res]);
                        for (guint j = 0; j < locks->len && !listed; j++)
                                listed = ((ListedHold *) locks->pdata[j])->token == occ_token(word);
                        if (!listed)
                                torture_violation(c->s, "persistent hold on '%s' (token %" PRIu64 ") of slot %u is "
                                                  "not listed at the end", c->run.resources[res], occ_token(word), slot);
                }

        for (guint j = 0; j < locks->len; j++) {
                ListedHold *l = locks->pdata[j];
                bool recorded_hold = false;

                for (unsigned res = 0; res < arg.n_resources && !recorded_hold; res++)
                        for (unsigned slot = 0; slot < arg.n_clients && !recorded_hold; slot++)
                                recorded_hold = occ_token(atomic_load(&c->s->occ[res][slot])) == l->token;
                if (!recorded_hold || !streq(l->scope, "persistent"))
                        torture_violation(c->s, "at the end '%s' is held (%s %s, token %" PRIu64 ", uid %u, %s, \"%s\") "
                                          "but no client holds it", l->resource, l->mode, l->scope, l->token, l->uid,
                                          l->sender, l->description);
        }
        if (arg.verbose)
                g_test_message("quiescence: %u holds listed, %u recorded, WaiterCount %u", locks->len, recorded,
                               waiters);
}

/* SIGTERM, so that a wrapper such as valgrind reports (leaks are checked
 * at exit); the exit status must be 0. */
static void controller_stop_daemon(Controller *c) {
        int status;

        if (c->daemon_pid <= 0)
                return;
        if (kill(c->daemon_pid, SIGTERM) < 0)
                g_error("kill(lockbusd): %s", g_strerror(errno));
        status = test_waitpid(c->daemon_pid, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                g_autofree char *st = test_format_wait_status(status);

                torture_violation(c->s, "lockbusd generation %u %s on SIGTERM (see %s/lockbusd.log)", c->gen, st,
                                  c->log_dir);
        }
        close(c->daemon_pidfd);
        c->daemon_pidfd = -1;
        c->daemon_pid = 0;
}

/* lockbusd's stderr goes to logs/lockbusd.log: copy sanitizer reports from
 * there to ours (where the test harness looks for them), and count them. */
static void controller_scan_daemon_log(Controller *c) {
        g_autofree char *path = g_build_filename(c->log_dir, "lockbusd.log", NULL);
        g_autofree char *line = NULL;
        unsigned context = 0;
        size_t size = 0;
        FILE *f;

        f = fopen(path, "re");
        if (!f)
                return (void) torture_violation(c->s, "Failed to read %s: %s", path, g_strerror(errno));
        while (getline(&line, &size, f) >= 0) {
                if (strstr(line, "Sanitizer") || strstr(line, "runtime error:")) {
                        if (context == 0)
                                torture_violation(c->s, "lockbusd: %s", g_strchomp(line));
                        context = 40;
                }
                if (context > 0) {
                        fputs(line, stderr);
                        if (!strchr(line, '\n'))
                                fputc('\n', stderr);
                        context--;
                }
        }
        fclose(f);
}

static uid_t pick_uid(unsigned slot) {
        /* root, nobody and daemon: dbus-daemon refuses uids without a
         * passwd entry. */
        static const uid_t uids[] = { 0, 65534, 1 };
        uid_t uid = uids[slot % ELEMENTSOF(uids)];

        if (!getpwuid(uid))
                g_error("uid %u has no passwd entry", (unsigned) uid);
        return uid;
}

static void print_counters(Controller *c, const CheckStats *st) {
        uint64_t *n = (uint64_t *) c->s->counters;

        g_test_message("run: %.0f s, %u clients (uids 0, 65534, 1), %u resources, seed %" PRIu64,
                       (double) arg.duration_usec / 1e6, arg.n_clients, arg.n_resources, arg.seed);
        g_test_message("operations: %" PRIu64 " calls to lockbusd, %" PRIu64 " acquires (%" PRIu64 " of them Lock), %"
                       PRIu64 " unlocks, %" PRIu64 " fd closes, %" PRIu64 " disconnects, %" PRIu64 " Owner checks, %"
                       PRIu64 " refreshes",
                       n[CNT_CALLS], n[CNT_ACQUIRES], n[CNT_LOCKS], n[CNT_UNLOCKS], n[CNT_FD_CLOSES], n[CNT_DISCONNECTS],
                       n[CNT_OWNER_CHECKS], n[CNT_REFRESHES]);
        g_test_message("grants: %" PRIu64 " (persistent %" PRIu64 ", connection %" PRIu64 ", fd %" PRIu64
                       "; shared %" PRIu64 "; after a confirmed wait %" PRIu64 "), critical sections %" PRIu64,
                       n[CNT_GRANTS], n[CNT_GRANTS_PERSISTENT], n[CNT_GRANTS_CONNECTION], n[CNT_GRANTS_FD],
                       n[CNT_GRANTS_SHARED], n[CNT_GRANTS_AFTER_WAIT], n[CNT_CS_ENTRIES]);
        g_test_message("refusals: %" PRIu64 " busy, %" PRIu64 " timeouts; %" PRIu64 " waits confirmed queued",
                       n[CNT_BUSY], n[CNT_TIMEOUTS], n[CNT_QUEUED]);
        g_test_message("kills: %" PRIu64 " clients (%" PRIu64 " while lockbusd was down), %" PRIu64 " lockbusd (%"
                       PRIu64 " of them at a quiet moment; %u generations); %" PRIu64 " calls lost with lockbusd, %"
                       PRIu64 " holds found after a lost reply, %" PRIu64 " fd holds dropped with lockbusd, %" PRIu64
                       " persistent holds taken over",
                       c->n_client_kills, c->n_client_kills_while_down, c->n_daemon_kills, c->n_quiet_kills, c->gen,
                       n[CNT_GONE],
                       n[CNT_RECOVERED], n[CNT_FD_LOST], n[CNT_ADOPTED]);
        g_test_message("checked: %" PRIu64 " log records, %" PRIu64 " token pairs, %" PRIu64 " FIFO pairs (+%" PRIu64
                       " with a timed-out waiter), holds across restarts %" PRIu64 " (ListLocks) and %" PRIu64
                       " (Owner, from inside)",
                       st->records, st->tokens_checked, st->fifo_pairs, st->fifo_timeout_pairs, c->n_restart_checks,
                       n[CNT_SURVIVED]);
        g_test_message("violations: %" PRIu64, atomic_load(&c->s->n_violations));
}

static void test_torture(gconstpointer data) {
        g_autoptr(GError) error = NULL;
        g_autofree char *dbus_dir = NULL;
        Controller c = {
                .daemon_pidfd = -1,
                .daemon_log_fd = -1,
        };
        CheckStats st = {};
        char *log_path;
        uint64_t violations;

        if (geteuid() != 0) {
                g_test_skip("needs root (clients run as several uids)");
                return;
        }

        /* Processes orphaned by the bus are ours to reap. */
        (void) prctl(PR_SET_CHILD_SUBREAPER, 1);

        c.rand = g_rand_new_with_seed((guint32) arg.seed);
        c.generations = g_ptr_array_new_with_free_func((GDestroyNotify) generation_free);
        c.daemon_path = g_strdup(g_getenv("LOCKBUS_DAEMON") ?: LOCKBUS_DAEMON_PATH);
        dbus_dir = g_strdup(g_getenv("LOCKBUS_DBUS_DIR") ?: LOCKBUS_DBUS_DIR_PATH);
        if (arg.wrapper && !g_shell_parse_argv(arg.wrapper, NULL, &c.wrapper, &error))
                g_error("Bad daemon wrapper '%s': %s", arg.wrapper, error->message);

        c.s = torture_shared_new();
        c.run.options = &arg;
        c.run.shared = c.s;
        c.run.resources = g_new0(char *, arg.n_resources + 1);
        for (unsigned i = 0; i < arg.n_resources; i++)
                /* Names the store must escape, too. */
                c.run.resources[i] = g_strdup_printf(i % 2 ? "torture/res %u" : "torture-%u", i);

        /* 0755: other uids must reach the bus socket. */
        c.run.dir = test_make_tmp_dir("lockbus-torture-XXXXXX");
        c.log_dir = g_build_filename(c.run.dir, "logs", NULL);
        g_assert_cmpint(mkdir(c.log_dir, 0755), ==, 0);
        g_test_message("run directory: %s", c.run.dir);

        c.bus_pid = torture_bus_start(c.run.dir, dbus_dir, &c.run.address);
        c.bus = torture_bus_connect(c.run.address);

        log_path = g_build_filename(c.log_dir, "lockbusd.log", NULL);
        c.daemon_log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        g_assert_cmpint(c.daemon_log_fd, >=, 0);
        g_free(log_path);

        controller_start_daemon(&c);
        controller_publish(&c);

        for (unsigned slot = 0; slot < arg.n_clients; slot++) {
                Slot *s = &c.slots[slot];

                log_path = g_strdup_printf("%s/client-%02u.log", c.log_dir, slot);
                s->log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                g_assert_cmpint(s->log_fd, >=, 0);
                g_free(log_path);
                s->uid = pick_uid(slot);
                s->pidfd = -1;
                controller_start_client(&c, slot);
        }

        controller_run(&c);
        controller_stop(&c);
        controller_check_quiescence(&c);
        controller_stop_daemon(&c);
        controller_scan_daemon_log(&c);

        torture_check_logs(&c.run, c.log_dir, c.generations, &st);
        print_counters(&c, &st);

        violations = atomic_load(&c.s->n_violations);
        for (uint32_t i = 0; i < MIN(atomic_load(&c.s->n_messages), TORTURE_N_MESSAGES); i++)
                g_test_message("violation: %s", c.s->messages[i]);

        sd_bus_flush_close_unref(c.bus);
        (void) kill(c.bus_pid, SIGTERM);
        (void) test_waitpid(c.bus_pid, 0);
        for (unsigned slot = 0; slot < arg.n_clients; slot++)
                close(c.slots[slot].log_fd);
        close(c.daemon_log_fd);

        if (violations == 0 && !arg.keep)
                test_rm_rf(c.run.dir);
        else
                g_test_message("kept %s (logs in logs/: lockbusd.log, client-NN.log)", c.run.dir);

        g_assert_cmpuint(violations, ==, 0);

        g_ptr_array_unref(c.generations);
        g_strfreev(c.wrapper);
        g_strfreev(c.run.resources);
        g_free(c.run.dir);
        g_free(c.run.address);
        g_free(c.log_dir);
        g_free(c.daemon_path);
        g_rand_free(c.rand);
        torture_shared_free(c.s);
}

static int parse_duration(const char *s, uint64_t *ret) {
        static const struct {
                const char *suffix;
                double usec;
        } units[] = {
                { "ms", 1e3 }, { "min", 60e6 }, { "m", 60e6 }, { "h", 3600e6 }, { "s", 1e6 }, { "", 1e6 },
        };
        char *end;
        double v;

        errno = 0;
        v = g_ascii_strtod(s, &end);
        if (errno != 0 || end == s || v <= 0)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (streq(end, units[i].suffix)) {
                        *ret = (uint64_t) (v * units[i].usec);
                        return 0;
                }
        return -EINVAL;
}

static gboolean option_duration(const char *name, const char *value, gpointer data, GError **error) {
        if (parse_duration(value, &arg.duration_usec) < 0) {
                g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "Bad duration '%s'", value);
                return false;
        }
        return true;
}

int main(int argc, char *argv[]) {
        g_autoptr(GOptionContext) context = NULL;
        g_autoptr(GError) error = NULL;
        gint clients = (gint) arg.n_clients, resources = (gint) arg.n_resources;
        gint64 seed = -1;
        const GOptionEntry entries[] = {
                { "duration", 0, 0, G_OPTION_ARG_CALLBACK, option_duration, "How long (25s, 10min, …)", "DURATION" },
                { "clients", 0, 0, G_OPTION_ARG_INT, &clients, "Client processes", "N" },
                { "resources", 0, 0, G_OPTION_ARG_INT, &resources, "Resources", "N" },
                { "client-kills", 0, 0, G_OPTION_ARG_INT, &arg.client_kills, "Clients to SIGKILL (default: one per 2 s)", "N" },
                { "daemon-kills", 0, 0, G_OPTION_ARG_INT, &arg.daemon_kills, "Times to SIGKILL lockbusd (default: one per 10 s)", "N" },
                { "torture-seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Random seed of the workload (default: from the time; --seed is g_test's)", "N" },
                { "daemon-wrapper", 0, 0, G_OPTION_ARG_STRING, &arg.wrapper,
                  "Command put before lockbusd (default: $LOCKBUS_DAEMON_WRAPPER)", "CMD" },
                { "keep", 0, 0, G_OPTION_ARG_NONE, &arg.keep, "Keep the run directory", NULL },
                { "verbose", 0, 0, G_OPTION_ARG_NONE, &arg.verbose, "Say more", NULL },
                {}
        };

        g_test_init(&argc, &argv, NULL);

        context = g_option_context_new("- lockbus torture test");
        g_option_context_add_main_entries(context, entries, NULL);
        if (!g_option_context_parse(context, &argc, &argv, &error)) {
                fprintf(stderr, "%s\n", error->message);
                return 2;
        }
        if (clients < 1 || (unsigned) clients > TORTURE_MAX_CLIENTS ||
            resources < 1 || (unsigned) resources > TORTURE_MAX_RESOURCES) {
                fprintf(stderr, "--clients must be 1-%u, --resources 1-%u\n", TORTURE_MAX_CLIENTS,
                        TORTURE_MAX_RESOURCES);
                return 2;
        }
        arg.n_clients = (unsigned) clients;
        arg.n_resources = (unsigned) resources;
        arg.seed = seed >= 0 ? (uint64_t) seed : (uint64_t) g_get_real_time();
        if (arg.client_kills < 0)
                arg.client_kills = (int) (arg.duration_usec / (2U * 1000000U));
        if (arg.daemon_kills < 0)
                arg.daemon_kills = (int) (arg.duration_usec / (10U * 1000000U));
        if (!arg.wrapper && g_getenv("LOCKBUS_DAEMON_WRAPPER") && *g_getenv("LOCKBUS_DAEMON_WRAPPER"))
                arg.wrapper = g_strdup(g_getenv("LOCKBUS_DAEMON_WRAPPER"));

        g_test_add_data_func("/torture/run", NULL, test_torture);
        return g_test_run();
}
