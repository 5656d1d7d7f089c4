/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A Hold: one grant of one resource to one owner. Data shared by the lock
 * table (which decides) and the store (which makes it durable), plus the
 * event sources that end it (its fd's hang-up, its TTL), which the manager
 * sets and the hold owns. Neither D-Bus nor disk state lives here.
 *
 * Ownership rules (DESIGN.md): a persistent hold belongs to its uid, any
 * connection of that uid may unlock it; a connection or fd hold belongs to
 * the unique bus name (sender) that acquired it. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-event.h>

#include "macro.h"

typedef enum LockMode {
        LOCK_MODE_EXCLUSIVE,
        LOCK_MODE_SHARED,
        _LOCK_MODE_MAX,
        _LOCK_MODE_INVALID = -EINVAL,
} LockMode;

typedef enum HoldScope {
        HOLD_SCOPE_CONNECTION,
        HOLD_SCOPE_PERSISTENT,
        HOLD_SCOPE_FD,
        _HOLD_SCOPE_MAX,
        _HOLD_SCOPE_INVALID = -EINVAL,
} HoldScope;

typedef struct Hold {
        char *resource;
        LockMode mode;
        HoldScope scope;
        uint64_t token;

        /* Who holds it, from the bus credentials at grant time. */
        uid_t uid;
        pid_t pid;
        char *comm;             /* display only */
        char *sender;           /* unique bus name that acquired it */
        char *bus_id;           /* 32 hex digits: the bus the sender was on */

        uint64_t since_usec;    /* CLOCK_REALTIME */
        uint64_t expires_usec;  /* CLOCK_REALTIME, 0 = never */
        uint64_t ttl_usec;      /* 0 = none */
        char *description;      /* never NULL, may be "" */

        /* Cluster mode (etcd backend): the host of a hold granted by
         * another lockbusd (NULL: this one), and this daemon's handle of
         * its own holds in etcd (a ClusterHold, owned by the backend). */
        char *hostname;
        void *cluster_hold;
        bool in_fd_store;               /* cluster mode: its fd was handed to systemd's fd store */

        sd_event_source *fd_watch;      /* fd holds: the pipe's read end, watched for hang-up */
        sd_event_source *expiry_timer;  /* holds with a TTL */
} Hold;

Hold *hold_new(void);
Hold *hold_free(Hold *h);
DEFINE_TRIVIAL_CLEANUP_FUNC(Hold *, hold_free);
/* hold_free() with the signature of a GDestroyNotify, for GLib containers. */
void hold_destroy(void *h);

const char *lock_mode_to_string(LockMode m) _pure_;
LockMode lock_mode_from_string(const char *s) _pure_;
const char *hold_scope_to_string(HoldScope s) _pure_;
HoldScope hold_scope_from_string(const char *s) _pure_;

/* True if a persistent hold: owned by uid, not by a connection. */
static inline bool hold_is_persistent(const Hold *h) {
        return h->scope == HOLD_SCOPE_PERSISTENT;
}
