/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <string.h>

#include "lock-table.h"

typedef struct Resource {
        char *name;
        GQueue holds;           /* Hold*, grant order */
} Resource;

struct LockTable {
        GHashTable *resources;  /* name → Resource* (owned) */
        GHashTable *by_sender;  /* sender → GPtrArray* of Hold* (connection and fd holds) */
};

static void resource_free(Resource *r) {
        if (!r)
                return;
        /* The table removes empty resources only; a table being freed still
         * owns the holds of the ones left. */
        g_queue_clear_full(&r->holds, hold_destroy);
        g_free(r->name);
        g_free(r);
}

LockTable *lock_table_new(void) {
        LockTable *t = g_new0(LockTable, 1);

        t->resources = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify) resource_free);
        t->by_sender = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_ptr_array_unref);
        return t;
}

LockTable *lock_table_free(LockTable *t) {
        if (!t)
                return NULL;
        g_hash_table_destroy(t->by_sender);
        g_hash_table_destroy(t->resources);
        g_free(t);
        return NULL;
}

static bool hold_is_owned_by(const Hold *h, uid_t uid, const char *sender) {
        if (hold_is_persistent(h))
                return h->uid == uid;
        return sender && h->sender && strcmp(h->sender, sender) == 0;
}

static bool modes_conflict(LockMode held, LockMode wanted) {
        return held == LOCK_MODE_EXCLUSIVE || wanted == LOCK_MODE_EXCLUSIVE;
}

LockVerdict lock_table_check(LockTable *t, const char *resource, LockMode mode,
                             uid_t uid, const char *sender, const Hold **ret_blocker) {
        const Hold *blocker = NULL;
        Resource *r;

        r = g_hash_table_lookup(t->resources, resource);
        if (!r)
                return LOCK_VERDICT_GRANT;

        /* Re-entry is refused before conflicts are considered: a caller never
         * waits behind itself. */
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

        r = g_hash_table_lookup(t->resources, h->resource);
        if (!r) {
                r = g_new0(Resource, 1);
                r->name = g_strdup(h->resource);
                g_queue_init(&r->holds);
                g_hash_table_insert(t->resources, r->name, r);
        }
        g_queue_push_tail(&r->holds, h);

        if (!hold_is_persistent(h)) {
                GPtrArray *a = g_hash_table_lookup(t->by_sender, h->sender);

                if (!a) {
                        a = g_ptr_array_new();
                        g_hash_table_insert(t->by_sender, g_strdup(h->sender), a);
                }
                g_ptr_array_add(a, h);
        }
}

Hold *lock_table_remove(LockTable *t, Hold *h) {
        Resource *r;

        r = g_hash_table_lookup(t->resources, h->resource);
        g_assert(r);
        gboolean found = g_queue_remove(&r->holds, h);
        g_assert(found);
        if (g_queue_is_empty(&r->holds))
                g_hash_table_remove(t->resources, h->resource);

        if (!hold_is_persistent(h)) {
                GPtrArray *a = g_hash_table_lookup(t->by_sender, h->sender);

                g_assert(a);
                g_ptr_array_remove_fast(a, h);
                if (a->len == 0)
                        g_hash_table_remove(t->by_sender, h->sender);
        }
        return h;
}

const GQueue *lock_table_get_holds(LockTable *t, const char *resource) {
        Resource *r = g_hash_table_lookup(t->resources, resource);

        return r ? &r->holds : NULL;
}

GPtrArray *lock_table_holds_of_sender(LockTable *t, const char *sender) {
        GPtrArray *a = g_hash_table_lookup(t->by_sender, sender);
        GPtrArray *copy = g_ptr_array_new();

        if (a)
                for (guint i = 0; i < a->len; i++)
                        g_ptr_array_add(copy, a->pdata[i]);
        return copy;
}

static gint compare_resource_names(gconstpointer a, gconstpointer b) {
        const Resource *x = *(Resource *const *) a, *y = *(Resource *const *) b;

        return strcmp(x->name, y->name);
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
        return g_hash_table_size(t->resources);
}
