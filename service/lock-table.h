/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The LockTable: which holds exist on which resource and whether a new
 * request fits. Pure logic: no D-Bus, no disk, no clock. The caller makes a
 * grant durable before it adds the hold here (all or nothing), and removes
 * it from disk when it takes it out.
 *
 * Rules (DESIGN.md): any number of shared holds or one exclusive; not
 * re-entrant: an owner (the uid for a persistent hold, the sender for a
 * connection or fd hold) has at most one hold per resource. */

#include <stdbool.h>
#include <sys/types.h>

#include <glib.h>

#include "hold.h"

typedef struct LockTable LockTable;

typedef enum LockVerdict {
        LOCK_VERDICT_GRANT,             /* fits: may be granted now */
        LOCK_VERDICT_CONFLICT,          /* blocked by another owner's hold */
        LOCK_VERDICT_HELD_BY_CALLER,    /* the caller already holds it */
} LockVerdict;

LockTable *lock_table_new(void);
LockTable *lock_table_free(LockTable *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(LockTable *, lock_table_free);

/* Decides a request of `mode` on `resource` by the caller (uid, sender).
 * For CONFLICT and HELD_BY_CALLER, *ret_blocker (if given) points to the
 * hold that is in the way (borrowed). */
LockVerdict lock_table_check(LockTable *t, const char *resource, LockMode mode,
                             uid_t uid, const char *sender, const Hold **ret_blocker);

/* The hold on `resource` the caller could release: its connection's
 * connection or fd hold first, else a persistent hold of its uid. NULL if
 * there is none. Borrowed. */
Hold *lock_table_find_owned(LockTable *t, const char *resource, uid_t uid, const char *sender);

/* Adds a hold (ownership moves to the table). The caller has checked it with
 * lock_table_check(). */
void lock_table_add(LockTable *t, Hold *h);

/* Takes a hold out of the table and gives it back to the caller. */
Hold *lock_table_remove(LockTable *t, Hold *h);

/* The holds of a resource in grant order (borrowed), NULL if it is free. */
const GQueue *lock_table_get_holds(LockTable *t, const char *resource);

/* The connection and fd holds acquired by `sender`, as a new array of
 * borrowed Hold pointers (possibly empty). */
GPtrArray *lock_table_holds_of_sender(LockTable *t, const char *sender);

/* Every hold, sorted by resource name (bytewise), then grant order. A new
 * array of borrowed pointers. */
GPtrArray *lock_table_list(LockTable *t);

/* Number of resources with at least one hold. */
unsigned lock_table_resource_count(const LockTable *t);
