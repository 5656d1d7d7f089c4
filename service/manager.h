/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The Manager owns the daemon's state (bus, event loop, lock table, store,
 * token issuer, peer registry) and carries out grants and releases in the
 * one order the design allows: decide (lock table) → issue a token → store
 * durably → add to the table → answer. It serves waiters whenever a hold or
 * a waiter goes away, enforces quotas, TTLs, fd hang-ups and exit on idle.
 * The bus layer (bus-manager.c) calls it and gets answers through a
 * completion callback; it never calls back up otherwise. */

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <systemd/sd-id128.h>

#include "hold.h"
#include "identity.h"
#include "lock-table.h"
#include "macro.h"
#include "store.h"
#include "tokens.h"

#define DEFAULT_MAX_LOCKS_PER_USER      1024U
#define DEFAULT_MAX_WAITERS_PER_USER    128U
#define DEFAULT_IDLE_TIMEOUT_USEC       (30U * 1000000ULL)
#define DEFAULT_ETCD_PREFIX             "/lockbus"
#define DEFAULT_ETCD_LEASE_TTL_USEC     (10U * 1000000ULL)

typedef struct ClusterBackend ClusterBackend;

typedef struct ManagerConfig {
        bool user_bus;                  /* the session bus instead of the system bus */
        const char *lock_directory;
        const char *runtime_directory;
        unsigned max_locks_per_user;
        unsigned max_waiters_per_user;
        uint64_t idle_timeout_usec;     /* 0 = never exit */

        /* The etcd backend (cluster mode) when etcd_endpoints is set. */
        char **etcd_endpoints;
        const char *etcd_prefix;
        uint64_t etcd_lease_ttl_usec;
        const char *etcd_ca_file;       /* TLS files (etcd.h, EtcdTlsOptions), NULL: unset */
        const char *etcd_cert_file;
        const char *etcd_key_file;
        const char *etcd_user;          /* authentication (etcd.h, etcd_client_set_auth()), NULL: none */
        const char *etcd_password;      /* with etcd_user: the password itself, never logged */
} ManagerConfig;

typedef struct Manager {
        sd_event *event;
        sd_bus *bus;
        char bus_id[SD_ID128_STRING_MAX];

        Store *store;
        LockTable *table;
        TokenIssuer *tokens;
        PeerRegistry *peers;
        struct DirectServer *direct;    /* the brokerless socket, NULL if it could not be set up */
        ClusterBackend *cluster;        /* cluster mode: decisions on etcd; NULL: the lock directory */

        unsigned max_locks_per_user;
        unsigned max_waiters_per_user;
        uint64_t idle_timeout_usec;
        uint64_t last_activity_usec;    /* CLOCK_MONOTONIC: the last call, or the last busy moment */

        /* Calls the bus layer answers later, other than waiters (Break
         * waiting for polkit); it sets the destroy function. */
        GHashTable *pending_calls;

        /* Group commit of the lock directory: callbacks waiting for the
         * next store_sync(), run by commit_source (idle priority, after
         * the bus is drained) or commit_timer (a bound on the delay). */
        GQueue after_commit;
        sd_event_source *commit_source;
        sd_event_source *commit_timer;

        /* Told when a hold ends without its owner asking (reason:
         * "expired", "broken", "lost"), before it is freed; the bus layer
         * sends the holder LockLost. */
        void (*hold_lost)(struct Manager *m, const Hold *h, const char *reason);

        /* Set once the bus name was released for an idle exit. */
        bool exiting;
        /* The loop ends (SIGTERM, SIGINT, an idle exit), leaving the event
         * loop usable for the cluster backend's goodbye to etcd. */
        bool stop_requested;
        sd_bus_slot *release_name_slot;
} Manager;

typedef struct AcquireRequest AcquireRequest;

/* Called exactly once per request, with error:
 *    0            granted, durably: token is the fencing token, fd the
 *                 caller's end of an fd hold (else -1, borrowed: dup it to
 *                 keep it); hold is NULL;
 *   -EBUSY        another owner holds it and the request does not wait;
 *                 hold is the holder in the way (NULL if only waiters are);
 *   -EALREADY     the caller holds it already; hold is that hold;
 *   -EDQUOT       the caller's uid is over its quota;
 *   -ETIMEDOUT    waited `timeout_usec` in vain; hold as for -EBUSY;
 *   -ECONNRESET   the caller left the bus while waiting: nobody to answer;
 *   -ESHUTDOWN    the daemon is exiting and could not take its name back;
 *   -EIO          the grant could not be stored, nothing is held: the
 *                 cause is req->storage_error (and req->storage_message,
 *                 if set), the place req->storage_where
 *                 (errno values of the disk never reach the other cases). */
typedef void (*AcquireDone)(AcquireRequest *req, int error, const Hold *hold, uint64_t token, int fd);

struct AcquireRequest {
        /* Set by the caller before manager_submit(). */
        char *resource;
        LockMode mode;
        HoldScope scope;
        uint64_t timeout_usec;          /* 0 = fail at once, UINT64_MAX = forever */
        uint64_t ttl_usec;              /* 0 = none */
        char *description;              /* never NULL */
        Peer caller;                    /* a copy */
        AcquireDone done;
        void *userdata;

        /* The manager's, while the request waits or its grant is being
         * made durable. */
        Manager *manager;
        uint64_t granted_token;
        int storage_error;              /* with -EIO: what failed (negative errno) */
        const char *storage_where;      /* with -EIO: the directory (borrowed from the store) */
        char *storage_message;          /* with -EIO: the reason, if more than the errno's text (owned) */
        Waiter waiter;
        sd_event_source *timeout_source;
};

AcquireRequest *acquire_request_new(const Peer *caller, const char *resource);
AcquireRequest *acquire_request_free(AcquireRequest *req);
DEFINE_TRIVIAL_CLEANUP_FUNC(AcquireRequest *, acquire_request_free);

/* Connects to the bus, opens the store (waiting for another daemon on the
 * same lock directory to let go) and reloads the holds. */
int manager_new(const ManagerConfig *config, Manager **ret);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

/* Exports the objects, then takes the bus name, then runs until SIGTERM,
 * SIGINT or an idle exit. */
int manager_run(Manager *m);

/* Grants the request now, queues it, or refuses it; req->done is called
 * exactly once, possibly before this returns. Takes ownership of req. */
void manager_submit(Manager *m, AcquireRequest *req);

/* For a backend that decides elsewhere (cluster-backend.h): answers a
 * request (and frees it) as the done callback describes. */
void manager_answer_request(AcquireRequest *req, int error, const Hold *hold, int fd);

/* Takes a hold granted elsewhere into the table: the pipe of an fd hold
 * (the caller's end in *ret_write_fd), or with read_fd >= 0 the read end
 * of one that came back from systemd's fd store (taken, also on failure);
 * its TTL timer; logs the grant. On failure the hold is freed. */
int manager_take_hold(Manager *m, Hold *hold, int read_fd, int *ret_write_fd, const char *what);

/* Tells the holder its hold ends without it asking (see hold_lost). */
void manager_notify_hold_lost(Manager *m, const Hold *h, const char *reason);

/* Takes a hold out of the table and frees it, without touching its
 * storage (the backend did, or it is gone); logs `reason`. */
void manager_drop_hold(Manager *m, Hold *h, const char *reason);

/* Sets a new expiry (CLOCK_REALTIME µs, 0 never) and re-arms its timer. */
int manager_hold_set_expiry(Manager *m, Hold *h, uint64_t expires_usec);

/* Releases a hold (it is freed) and serves the waiters it blocked. If its
 * file cannot be removed, a persistent hold, or any hold whose owner asked
 * (by_owner: Unlock, Break), stays and the error is returned: the file
 * would bring it back at the next start while its owner still lives. A hold
 * that ends with its owner (connection closed, fd closed, TTL) is released
 * anyway: at start its file is not trusted without that owner. */
int manager_release(Manager *m, Hold *h, const char *reason, bool by_owner);

/* Releases every hold on `resource`, then serves the waiters. Returns the
 * number of holds released, or the first error (the holds that could be
 * released are). */
int manager_break(Manager *m, const char *resource);

/* Restarts the TTL of a hold from now, durably. *ret_expires_usec is the new
 * expiry (CLOCK_REALTIME), 0 for a hold without TTL. */
int manager_refresh(Manager *m, Hold *h, uint64_t *ret_expires_usec);

/* Runs callback(m, error, userdata) once every change to the lock
 * directory made so far is durable (error 0), at once if there is none.
 * If making them durable fails, error is negative and the daemon exits
 * after answering: which of the changes reached the disk is unknown, and
 * the next start reloads what did. */
typedef void (*ManagerCommitCallback)(Manager *m, int error, void *userdata);
void manager_after_commit(Manager *m, ManagerCommitCallback callback, void *userdata);

/* Work this process must finish itself (a waiter, an fd hold, a polkit
 * query) arriving during an idle exit takes the bus name back: what came
 * before the release would otherwise be lost with the process. The next
 * instance cannot own the name yet, it waits for the lock directory.
 * Returns 0 if the daemon serves on (or was not exiting). */
int manager_cancel_idle_exit(Manager *m);

/* True if nothing but durable state is held: no connection or fd holds, no
 * waiters, no calls waiting for an answer from elsewhere (polkit), nothing
 * waiting for the group commit. */
bool manager_is_idle(const Manager *m);
