/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* lockbus-torture: many client processes of several uids lock and unlock
 * a few resources on one private bus, while the harness SIGKILLs clients
 * and lockbusd at random; live checks in shared memory and a checker over
 * the clients' logs prove the promises of DESIGN.md. What exactly is
 * proven, and under which rules, is in tests/torture/README.md; the
 * comments here say how.
 *
 * Processes:
 *   controller  (lockbus-torture itself) starts a private system-like
 *               dbus-daemon (its own config, the project's real policy,
 *               and no activation file: lockbusd is started, killed and
 *               restarted by the controller only), then lockbusd
 *               generation 1, then the clients; it kills and restarts
 *               them, stops the run, and checks.
 *   clients     forked children, one per slot; a slot has a fixed uid and
 *               is refilled by a new incarnation when one is killed.
 *   lockbusd    one generation at a time (generation = how many times it
 *               was started), optionally under a wrapper (valgrind).
 *
 * Shared memory (one MAP_SHARED mapping made before forking) holds the
 * occupancy of every resource by every slot, the daemon generation
 * protocol and the counters. */

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>
#include <systemd/sd-bus.h>

#include "lockbus-names.h"
#include "macro.h"
#include "test-bus.h"

#define TORTURE_MAX_CLIENTS     64U
#define TORTURE_MAX_RESOURCES   64U
#define TORTURE_MAX_HELD        8U      /* holds one client has at a time (2 + recovered ones) */
#define TORTURE_N_MESSAGES      64U     /* violation messages kept */
#define TORTURE_MESSAGE_MAX     480U

/* Bounds of the waits of the harness itself (not of the workload): a wait
 * that reaches one fails the run. Generous: lockbusd may run under
 * valgrind. */
#define TORTURE_WAIT_USEC       (120U * 1000000ULL)

typedef enum TortureMode {
        TORTURE_EXCLUSIVE,
        TORTURE_SHARED,
} TortureMode;

typedef enum TortureScope {
        TORTURE_PERSISTENT,
        TORTURE_CONNECTION,
        TORTURE_FD,
        _TORTURE_SCOPE_MAX,
} TortureScope;

const char *torture_mode_to_string(TortureMode m);
const char *torture_scope_to_string(TortureScope s);
int torture_scope_from_string(const char *s);

/* An occupancy word: 0 = free, else a hold a slot is in its critical
 * section with. */
typedef uint64_t OccWord;

static inline OccWord occ_encode(uint64_t token, uint32_t gen, TortureScope scope, TortureMode mode) {
        return (token << 24) | ((uint64_t) (gen & 0xffffU) << 8) | ((uint64_t) scope << 4) | ((uint64_t) mode << 1) | 1U;
}
static inline uint64_t occ_token(OccWord w) { return w >> 24; }
static inline uint32_t occ_gen(OccWord w) { return (uint32_t) ((w >> 8) & 0xffffU); }
static inline TortureScope occ_scope(OccWord w) { return (TortureScope) ((w >> 4) & 0xfU); }
static inline TortureMode occ_mode(OccWord w) { return (TortureMode) ((w >> 1) & 0x7U); }

/* What a client is doing, for the diagnosis of a hang. */
typedef struct TortureActivity {
        _Atomic uint32_t op;            /* TortureOp */
        _Atomic uint32_t resource;
        _Atomic uint64_t since;         /* CLOCK_MONOTONIC µs */
} TortureActivity;

typedef enum TortureOp {
        OP_IDLE,
        OP_ACQUIRE,
        OP_IN_CS,
        OP_UNLOCK,
        OP_WAIT_DAEMON,
        OP_RECOVER,
        OP_STOPPING,
        OP_OTHER,
} TortureOp;

typedef enum TortureCounter {
        CNT_CALLS,                      /* method calls to lockbusd */
        CNT_ACQUIRES,
        CNT_LOCKS,                      /* of those, Lock calls */
        CNT_GRANTS,
        CNT_GRANTS_PERSISTENT,
        CNT_GRANTS_CONNECTION,
        CNT_GRANTS_FD,
        CNT_GRANTS_SHARED,
        CNT_GRANTS_AFTER_WAIT,          /* granted after a confirmed wait in the queue */
        CNT_BUSY,
        CNT_TIMEOUTS,
        CNT_QUEUED,                     /* waits confirmed by the WaiterCount round trip */
        CNT_GONE,                       /* calls failed because lockbusd died */
        CNT_RECOVERED,                  /* holds found with Owner/ListLocks after a lost reply */
        CNT_FD_LOST,                    /* fd holds given up because lockbusd died */
        CNT_UNLOCKS,
        CNT_FD_CLOSES,                  /* fd holds released by closing the fd */
        CNT_DISCONNECTS,                /* connections closed with holds */
        CNT_OWNER_CHECKS,               /* Owner calls inside a critical section */
        CNT_REFRESHES,
        CNT_CS_ENTRIES,
        CNT_ADOPTED,                    /* persistent holds taken over from a killed incarnation */
        CNT_SURVIVED,                   /* holds seen again (Owner) after a restart, from inside */
        _CNT_MAX,
} TortureCounter;

typedef struct TortureShared {
        /* Generation protocol. state_seq is bumped (and futex-woken) on
         * every change of stop, up_gen or dead_gen. */
        _Atomic uint32_t state_seq;
        _Atomic uint32_t stop;
        _Atomic uint32_t up_gen;        /* the lockbusd generation serving now (published) */
        _Atomic uint32_t dead_gen;      /* every generation <= this is dead or being killed */
        /* The controller asks for a quiet moment (pause); clients between
         * iterations, holding nothing, count themselves in n_paused. */
        _Atomic uint32_t pause;
        _Atomic uint32_t n_paused;

        /* Bumped (and futex-woken) when a client leaves a critical section
         * or gives an fd grant up: the controller waits on it. */
        _Atomic uint32_t cs_seq;

        /* Occupancy: occ[resource][slot]. */
        _Atomic OccWord occ[TORTURE_MAX_RESOURCES][TORTURE_MAX_CLIENTS];
        /* The generation of an fd grant a slot is about to enter with, 0 = none. */
        _Atomic uint32_t fd_entering[TORTURE_MAX_CLIENTS];

        /* Per resource: the highest token that entered, any mode / exclusive. */
        _Atomic uint64_t max_token_any[TORTURE_MAX_RESOURCES];
        _Atomic uint64_t max_token_exclusive[TORTURE_MAX_RESOURCES];
        /* The highest token any client got in a grant reply. */
        _Atomic uint64_t max_token_seen;

        /* Per slot: its current unique name, set before its first call on a
         * new connection (double-buffered: a client stopped half-way
         * through an update leaves the previous name readable), and what
         * it does. */
        char unique_name[TORTURE_MAX_CLIENTS][2][64];
        _Atomic uint32_t unique_index[TORTURE_MAX_CLIENTS];
        TortureActivity activity[TORTURE_MAX_CLIENTS];

        _Atomic uint64_t counters[_CNT_MAX];

        _Atomic uint64_t n_violations;
        _Atomic uint32_t n_messages;
        char messages[TORTURE_N_MESSAGES][TORTURE_MESSAGE_MAX];
} TortureShared;

typedef struct TortureOptions {
        uint64_t duration_usec;
        unsigned n_clients;
        unsigned n_resources;
        int client_kills;               /* -1: from the duration */
        int daemon_kills;               /* -1: from the duration */
        uint64_t seed;
        char *wrapper;                  /* command words put before lockbusd, or NULL */
        bool keep;                      /* keep the run directory */
        bool verbose;
} TortureOptions;

/* The environment of a run, as the clients see it. */
typedef struct TortureRun {
        const TortureOptions *options;
        TortureShared *shared;
        char *dir;
        char *address;                  /* of the private bus */
        char **resources;               /* n_resources names */
} TortureRun;

/* --- torture-shared.c ---------------------------------------------------- */

TortureShared *torture_shared_new(void);
void torture_shared_free(TortureShared *s);

/* futex on a shared word: wait while *word == expected, at most
 * timeout_usec (UINT64_MAX: no bound); wake everybody. */
void torture_futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t timeout_usec);
void torture_futex_wake(_Atomic uint32_t *word);
void torture_bump(_Atomic uint32_t *word);

void torture_count(TortureShared *s, TortureCounter c);
/* Records a violation: counted, its message kept (the first
 * TORTURE_N_MESSAGES) and printed to stderr. Async-signal-unsafe, fine. */
void torture_violation(TortureShared *s, const char *format, ...) _printf_(2, 3);
void torture_atomic_max(_Atomic uint64_t *p, uint64_t v);

typedef enum EnterResult {
        ENTER_OK,
        ENTER_LOST,                     /* an fd grant of a dead generation: not entered */
} EnterResult;

/* The critical section bookkeeping of slot `slot` for a hold on `res`.
 * torture_enter() publishes the occupancy and checks, at once, that no
 * conflicting occupancy exists and that the token is above every token
 * that entered before (see README.md). `check_token` is false for a hold
 * taken over from a killed incarnation, which entered before. */
EnterResult torture_enter(TortureRun *run, unsigned slot, unsigned res, uint64_t token, uint32_t gen,
                          TortureScope scope, TortureMode mode, bool check_token);
void torture_exit(TortureRun *run, unsigned slot, unsigned res);

/* --- torture-client.c ------------------------------------------------------ */

/* The body of a client process; returns its exit status. log_fd is its log
 * (O_APPEND), opened by the controller. */
int torture_client_main(TortureRun *run, unsigned slot, unsigned incarnation, uid_t uid, int log_fd);

/* --- torture-bus.c ---------------------------------------------------------- */

/* Writes DIR/bus.conf (test-bus.h's system-like configuration with the
 * real io.lockbus1.conf; no service directory, higher connection and reply
 * limits) and starts dbus-daemon (dying with us); returns its pid and the
 * address. */
pid_t torture_bus_start(const char *dir, const char *dbus_dir, char **ret_address);

sd_bus *torture_bus_connect(const char *address);

/* A match for NameOwnerChanged of one name, on the controller's connection. */
typedef struct NameWatch NameWatch;
NameWatch *name_watch_new(sd_bus *bus, const char *name);
void name_watch_free(NameWatch *w);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(NameWatch, name_watch_free)
/* The owner the bus last reported ("" for none), after dispatching what
 * arrived. */
const char *name_watch_owner(NameWatch *w);
/* Waits until the name has an owner / none; false if pidfd (>= 0) became
 * readable first (the process died) or after TORTURE_WAIT_USEC. */
bool name_watch_wait_owned(NameWatch *w, int pidfd);
bool name_watch_wait_unowned(NameWatch *w);

/* One row of ListLocks. */
typedef struct ListedHold {
        char *resource;
        char *mode;
        uint32_t uid;
        uint32_t pid;
        char *sender;
        uint64_t token;
        char *scope;
        char *description;
} ListedHold;
void listed_hold_free(ListedHold *h);

/* ListLocks: a GPtrArray of ListedHold; negative on failure (error set). */
int torture_list_locks(sd_bus *bus, GPtrArray **ret, sd_bus_error *error);
int torture_get_waiter_count(sd_bus *bus, uint32_t *ret, sd_bus_error *error);

/* --- torture-check.c ---------------------------------------------------------- */

typedef struct TortureGeneration {
        uint32_t gen;
        char *unique_name;
        pid_t pid;
} TortureGeneration;

typedef struct CheckStats {
        uint64_t records;
        uint64_t grants;
        uint64_t tokens_checked;
        uint64_t fifo_pairs;            /* (earlier queued, later sent) pairs compared */
        uint64_t fifo_timeout_pairs;
        uint64_t violations;
} CheckStats;

/* Reads every client log in log_dir (client-*.log) and checks tokens
 * across generations and FIFO order; violations go to run->shared. */
void torture_check_logs(TortureRun *run, const char *log_dir, GPtrArray *generations, CheckStats *ret);
