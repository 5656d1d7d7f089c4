/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <string.h>

#include "lock-table.h"

typedef struct Resource {
        char *name;
        GQueue holds;           /* Hold*, grant order (owned) */
        GQueue waiters;         /* Waiter*, arrival order (links owned by the waiters) */
} Resource;

typedef struct SenderEntry {
        GPtrArray *holds;       /* connection and fd holds */
        GPtrArray *waiters;
} SenderEntry;

struct LockTable {
        GHashTable *resources;  /* name → Resource* (owned) */
        GHashTable *by_sender;  /* sender → SenderEntry* (owned) */
        GHashTable *by_uid;     /* uid → UidUsage* (owned) */
        unsigned n_resources_held;
        unsigned n_waiters;
        unsigned n_volatile_holds;
};

static void resource_free(Resource *r) {
        if (!r)
                return;
        /* Waiters belong to their requests, which are gone when the table is
         * freed; holds that are left are the table's. */
        g_queue_clear_full(&r->holds, hold_destroy);
        g_free(r->name);
        g_free(r);
}

static void sender_entry_free(SenderEntry *e) {
        if (!e)
                return;
        g_ptr_array_unref(e->holds);
        g_ptr_array_unref(e->waiters);
        g_free(e);
}

LockTable *lock_table_new(void) {
        LockTable *t = g_new0(LockTable, 1);

        t->resources = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify) resource_free);
        t->by_sender = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify) sender_entry_free);
        t->by_uid = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
        return t;
}

LockTable *lock_table_free(LockTable *t) {
        if (!t)
                return NULL;
        g_hash_table_destroy(t->by_uid);
        g_hash_table_destroy(t->by_sender);
        g_hash_table_destroy(t->resources);
        g_free(t);
        return NULL;
}

static Resource *resource_get(LockTable *t, const char *name) {
        Resource *r = g_hash_table_lookup(t->resources, name);

        if (!r) {
                r = g_new0(Resource, 1);
                r->name = g_strdup(name);
                g_queue_init(&r->holds);
                g_queue_init(&r->waiters);
                g_hash_table_insert(t->resources, r->name, r);
        }
        return r;
}

static void resource_gc(LockTable *t, Resource *r) {
        if (g_queue_is_empty(&r->holds) && g_queue_is_empty(&r->waiters))
                g_hash_table_remove(t->resources, r->name);
}

static SenderEntry *sender_entry_get(LockTable *t, const char *sender) {
        SenderEntry *e = g_hash_table_lookup(t->by_sender, sender);

        if (!e) {
                e = g_new0(SenderEntry, 1);
                e->holds = g_ptr_array_new();
                e->waiters = g_ptr_array_new();
                g_hash_table_insert(t->by_sender, g_strdup(sender), e);
        }
        return e;
}

static void sender_entry_remove(LockTable *t, const char *sender, GPtrArray *(*which)(SenderEntry *), void *item) {
        SenderEntry *e = g_hash_table_lookup(t->by_sender, sender);
        gboolean found;

        g_assert(e);
        found = g_ptr_array_remove_fast(which(e), item);
        g_assert(found);
        if (e->holds->len == 0 && e->waiters->len == 0)
                g_hash_table_remove(t->by_sender, sender);
}

static GPtrArray *sender_entry_holds(SenderEntry *e) {
        return e->holds;
}

static GPtrArray *sender_entry_waiters(SenderEntry *e) {
        return e->waiters;
}

static UidUsage *uid_usage_get(LockTable *t, uid_t uid) {
        UidUsage *u = g_hash_table_lookup(t->by_uid, GUINT_TO_POINTER(uid));

        if (!u) {
                u = g_new0(UidUsage, 1);
                g_hash_table_insert(t->by_uid, GUINT_TO_POINTER(uid), u);
        }
        return u;
}

static void uid_usage_gc(LockTable *t, uid_t uid, UidUsage *u) {
        if (u->n_holds == 0 && u->n_waiters == 0)
                g_hash_table_remove(t->by_uid, GUINT_TO_POINTER(uid));
}

static bool hold_is_owned_by(const Hold *h, uid_t uid, const char *sender) {
        if (hold_is_persistent(h))
                return h->uid == uid;
        return sender && h->sender && strcmp(h->sender, sender) == 0;
}

static bool modes_conflict(LockMode held, LockMode wanted) {
        return held == LOCK_MODE_EXCLUSIVE || wanted == LOCK_MODE_EXCLUSIVE;
}

/* Decides a request against the holds of r only. Re-entry is refused before
 * conflicts are considered: a caller never waits behind itself. */
static LockVerdict resource_check_holds(const Resource *r, LockMode mode, uid_t uid, const char *sender,
                                        const Hold **ret_blocker) {
        const Hold *blocker = NULL;

        for (GList *l = r->holds.head; l; l = l->next) {
                const Hold *h = l->data;

                if (hold_is_owned_by(h, uid, sender)) {
                        if (ret_blocker)
                                *ret_blocker = h;
                        return LOCK_VERDICT_HELD_BY_CALLER;
                }
                if (!blocker && modes_conflict(h->mode, mode))
                        blocker = h;
        }

        if (!blocker)
                return LOCK_VERDICT_GRANT;
        if (ret_blocker)
                *ret_blocker = blocker;
        return LOCK_VERDICT_CONFLICT;
}

LockVerdict lock_table_check(LockTable *t, const char *resource, LockMode mode,
                             uid_t uid, const char *sender, const Hold **ret_blocker) {
        Resource *r;
        LockVerdict v;

        r = g_hash_table_lookup(t->resources, resource);
        if (!r)
                return LOCK_VERDICT_GRANT;

        v = resource_check_holds(r, mode, uid, sender, ret_blocker);
        if (v != LOCK_VERDICT_GRANT || g_queue_is_empty(&r->waiters))
                return v;

        /* It fits, but others were first. */
        if (ret_blocker)
                *ret_blocker = g_queue_peek_head(&r->holds);
        return LOCK_VERDICT_CONFLICT;
}

LockVerdict lock_table_check_waiter(LockTable *t, const Waiter *w, const Hold **ret_blocker) {
        Resource *r = g_hash_table_lookup(t->resources, w->resource);

        g_assert(r);
        return resource_check_holds(r, w->mode, w->uid, w->sender, ret_blocker);
}

Hold *lock_table_find_owned(LockTable *t, const char *resource, uid_t uid, const char *sender) {
        Hold *persistent = NULL;
        Resource *r;

        r = g_hash_table_lookup(t->resources, resource);
        if (!r)
                return NULL;

        for (GList *l = r->holds.head; l; l = l->next) {
                Hold *h = l->data;

                if (!hold_is_owned_by(h, uid, sender))
                        continue;
                if (!hold_is_persistent(h))
                        return h;
                if (!persistent)
                        persistent = h;
        }
        return persistent;
}

void lock_table_add(LockTable *t, Hold *h) {
        Resource *r;

        g_assert(h && h->resource);

        r = resource_get(t, h->resource);
        if (g_queue_is_empty(&r->holds))
                t->n_resources_held++;
        g_queue_push_tail(&r->holds, h);
        uid_usage_get(t, h->uid)->n_holds++;

        if (!hold_is_persistent(h)) {
                g_ptr_array_add(sender_entry_get(t, h->sender)->holds, h);
                t->n_volatile_holds++;
        }
}

Hold *lock_table_remove(LockTable *t, Hold *h) {
        UidUsage *u;
        Resource *r;
        gboolean found;

        r = g_hash_table_lookup(t->resources, h->resource);
        g_assert(r);
        found = g_queue_remove(&r->holds, h);
        g_assert(found);
        if (g_queue_is_empty(&r->holds))
                t->n_resources_held--;
        resource_gc(t, r);

        u = uid_usage_get(t, h->uid);
        u->n_holds--;
        uid_usage_gc(t, h->uid, u);

        if (!hold_is_persistent(h)) {
                sender_entry_remove(t, h->sender, sender_entry_holds, h);
                t->n_volatile_holds--;
        }
        return h;
}

const GQueue *lock_table_get_holds(LockTable *t, const char *resource) {
        Resource *r = g_hash_table_lookup(t->resources, resource);

        return r && !g_queue_is_empty(&r->holds) ? &r->holds : NULL;
}

void lock_table_enqueue(LockTable *t, Waiter *w) {
        Resource *r = resource_get(t, w->resource);

        w->link = (GList) { .data = w };
        g_queue_push_tail_link(&r->waiters, &w->link);
        g_ptr_array_add(sender_entry_get(t, w->sender)->waiters, w);
        uid_usage_get(t, w->uid)->n_waiters++;
        t->n_waiters++;
}

void lock_table_dequeue(LockTable *t, Waiter *w) {
        Resource *r = g_hash_table_lookup(t->resources, w->resource);
        UidUsage *u;

        g_assert(r);
        g_queue_unlink(&r->waiters, &w->link);
        resource_gc(t, r);

        sender_entry_remove(t, w->sender, sender_entry_waiters, w);

        u = uid_usage_get(t, w->uid);
        u->n_waiters--;
        uid_usage_gc(t, w->uid, u);
        t->n_waiters--;
}

Waiter *lock_table_peek_waiter(LockTable *t, const char *resource) {
        Resource *r = g_hash_table_lookup(t->resources, resource);

        return r ? g_queue_peek_head(&r->waiters) : NULL;
}

static GPtrArray *copy_of_sender_array(LockTable *t, const char *sender, GPtrArray *(*which)(SenderEntry *)) {
        SenderEntry *e = g_hash_table_lookup(t->by_sender, sender);
        GPtrArray *copy = g_ptr_array_new();

        if (e) {
                GPtrArray *a = which(e);

                for (guint i = 0; i < a->len; i++)
                        g_ptr_array_add(copy, a->pdata[i]);
        }
        return copy;
}

GPtrArray *lock_table_holds_of_sender(LockTable *t, const char *sender) {
        return copy_of_sender_array(t, sender, sender_entry_holds);
}

GPtrArray *lock_table_waiters_of_sender(LockTable *t, const char *sender) {
        return copy_of_sender_array(t, sender, sender_entry_waiters);
}

static gint compare_resource_names(gconstpointer a, gconstpointer b) {
        const Resource *x = *(Resource *const *) a, *y = *(Resource *const *) b;

        return strcmp(x->name, y->name);
}

GPtrArray *lock_table_list_waiters(LockTable *t) {
        GPtrArray *waiters = g_ptr_array_new();
        GHashTableIter iter;
        gpointer value;

        g_hash_table_iter_init(&iter, t->resources);
        while (g_hash_table_iter_next(&iter, NULL, &value))
                for (GList *l = ((Resource *) value)->waiters.head; l; l = l->next)
                        g_ptr_array_add(waiters, l->data);
        return waiters;
}

GPtrArray *lock_table_list(LockTable *t) {
        g_autoptr(GPtrArray) resources = g_ptr_array_new();
        GPtrArray *holds = g_ptr_array_new();
        GHashTableIter iter;
        gpointer value;

        g_hash_table_iter_init(&iter, t->resources);
        while (g_hash_table_iter_next(&iter, NULL, &value))
                g_ptr_array_add(resources, value);
        g_ptr_array_sort(resources, compare_resource_names);

        for (guint i = 0; i < resources->len; i++) {
                Resource *r = resources->pdata[i];

                for (GList *l = r->holds.head; l; l = l->next)
                        g_ptr_array_add(holds, l->data);
        }
        return holds;
}

unsigned lock_table_resource_count(const LockTable *t) {
        return t->n_resources_held;
}

unsigned lock_table_waiter_count(const LockTable *t) {
        return t->n_waiters;
}

unsigned lock_table_volatile_hold_count(const LockTable *t) {
        return t->n_volatile_holds;
}

UidUsage lock_table_uid_usage(const LockTable *t, uid_t uid) {
        const UidUsage *u = g_hash_table_lookup(t->by_uid, GUINT_TO_POINTER(uid));

        return u ? *u : (UidUsage) {};
}
