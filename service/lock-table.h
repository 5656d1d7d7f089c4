/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The LockTable: which holds exist on which resource, who waits for it, and
 * whether a request fits. Pure logic: no D-Bus, no disk, no clock. The
 * caller makes a grant durable before it adds the hold here (all or
 * nothing), and removes it from disk when it takes it out.
 *
 * Rules (DESIGN.md): any number of shared holds or one exclusive; not
 * re-entrant: an owner (the uid for a persistent hold, the sender for a
 * connection or fd hold) has at most one hold per resource. Fair: a request
 * is granted at once only if it fits the holds and nobody waits ahead of it;
 * waiters are served in arrival order (the caller serves the head while
 * lock_table_check_waiter() says it fits). */

#include <stdbool.h>
#include <sys/types.h>

#include <glib.h>

#include "hold.h"

typedef struct LockTable LockTable;

typedef enum LockVerdict {
        LOCK_VERDICT_GRANT,             /* fits: may be granted now */
        LOCK_VERDICT_CONFLICT,          /* blocked by another owner's hold, or by waiters ahead */
        LOCK_VERDICT_HELD_BY_CALLER,    /* the caller already holds it */
} LockVerdict;

/* A queued request. Embedded in, and owned by, the caller's request object;
 * the table only links it. Fields are set before lock_table_enqueue() and
 * not changed while queued. */
typedef struct Waiter {
        const char *resource;
        LockMode mode;
        HoldScope scope;
        uid_t uid;
        const char *sender;
        GList link;                     /* in the resource's queue; data = the Waiter */
} Waiter;

/* Per-uid usage, for quotas. */
typedef struct UidUsage {
        unsigned n_holds;
        unsigned n_waiters;
} UidUsage;

LockTable *lock_table_new(void);
LockTable *lock_table_free(LockTable *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(LockTable *, lock_table_free);

/* Decides a new request of `mode` on `resource` by the caller (uid, sender).
 * For CONFLICT and HELD_BY_CALLER, *ret_blocker (if given) points to the
 * hold in the way (borrowed); it is NULL only for a conflict with waiters
 * on a resource nobody holds. */
LockVerdict lock_table_check(LockTable *t, const char *resource, LockMode mode,
                             uid_t uid, const char *sender, const Hold **ret_blocker);

/* The hold on `resource` the caller could release: its connection's
 * connection or fd hold first, else a persistent hold of its uid. NULL if
 * there is none. Borrowed. */
Hold *lock_table_find_owned(LockTable *t, const char *resource, uid_t uid, const char *sender);

/* Adds a hold (ownership moves to the table). The caller has checked it. */
void lock_table_add(LockTable *t, Hold *h);

/* Takes a hold out of the table and gives it back to the caller. */
Hold *lock_table_remove(LockTable *t, Hold *h);

/* The holds of a resource in grant order (borrowed), NULL if it is free. */
const GQueue *lock_table_get_holds(LockTable *t, const char *resource);

/* Queues a waiter at the tail of its resource's queue / takes it out. */
void lock_table_enqueue(LockTable *t, Waiter *w);
void lock_table_dequeue(LockTable *t, Waiter *w);

/* The first waiter of a resource, NULL if none. */
Waiter *lock_table_peek_waiter(LockTable *t, const char *resource);

/* Decides the head waiter against the current holds only (nobody is ahead
 * of it). *ret_blocker as for lock_table_check(). */
LockVerdict lock_table_check_waiter(LockTable *t, const Waiter *w, const Hold **ret_blocker);

/* The connection and fd holds / the waiters of `sender`, as new arrays of
 * borrowed pointers (possibly empty). */
GPtrArray *lock_table_holds_of_sender(LockTable *t, const char *sender);
GPtrArray *lock_table_waiters_of_sender(LockTable *t, const char *sender);

/* Every hold, sorted by resource name (bytewise), then grant order. A new
 * array of borrowed pointers. */
GPtrArray *lock_table_list(LockTable *t);

/* Every waiter, in no particular order. A new array of borrowed pointers. */
GPtrArray *lock_table_list_waiters(LockTable *t);

/* Number of resources with at least one hold. */
unsigned lock_table_resource_count(const LockTable *t);
/* Number of queued waiters. */
unsigned lock_table_waiter_count(const LockTable *t);
/* Number of connection and fd holds (those that keep the daemon busy). */
unsigned lock_table_volatile_hold_count(const LockTable *t);
/* Holds and waiters of a uid. */
UidUsage lock_table_uid_usage(const LockTable *t, uid_t uid);
