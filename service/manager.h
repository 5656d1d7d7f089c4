/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The Manager owns the daemon's state (bus, event loop, lock table, store,
 * token issuer, peer registry) and carries out grants and releases in the
 * one order the design allows: decide (lock table) → issue a token → store
 * durably → add to the table → answer. The bus layer (bus-manager.c) calls
 * it; it never calls back up. */

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

typedef struct ManagerConfig {
        bool user_bus;                  /* the session bus instead of the system bus */
        const char *lock_directory;
        const char *runtime_directory;
} ManagerConfig;

typedef struct Manager {
        sd_event *event;
        sd_bus *bus;
        char bus_id[SD_ID128_STRING_MAX];

        Store *store;
        LockTable *table;
        TokenIssuer *tokens;
        PeerRegistry *peers;
} Manager;

typedef struct LockRequest {
        const char *resource;
        LockMode mode;
        HoldScope scope;
        const char *description;        /* NULL for none */
} LockRequest;

/* Connects to the bus, opens the store (waiting for another daemon on the
 * same lock directory to let go) and reloads the holds. */
int manager_new(const ManagerConfig *config, Manager **ret);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

/* Exports the objects, then takes the bus name, then runs until SIGTERM or
 * SIGINT. */
int manager_run(Manager *m);

/* Grants `req` to `caller` if it fits now. Returns:
 *    0          granted; *ret_hold is the new hold (borrowed);
 *   -EBUSY      another owner holds it; *ret_hold is the blocking hold;
 *   -EALREADY   the caller holds it already; *ret_hold is that hold;
 *   other       the grant could not be stored or no token issued: nothing
 *               is held. */
int manager_acquire(Manager *m, const Peer *caller, const LockRequest *req, const Hold **ret_hold);

/* Releases a hold (it is freed). For a persistent hold whose file cannot be
 * removed the hold stays and the error is returned: it would come back at
 * the next start. Other holds are released anyway; their files are not
 * trusted at start without their connection. */
int manager_release(Manager *m, Hold *h, const char *reason);
