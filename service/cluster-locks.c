/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include "cluster-locks.h"
#include "log.h"
#include "resource-name.h"

#define CLEANUP_BACKOFF_MIN_USEC (100U * 1000U)
#define CLEANUP_BACKOFF_MAX_USEC (5U * 1000U * 1000U)
#define GRANT_BACKOFF_MIN_USEC (100U * 1000U)
#define TIMER_ACCURACY_USEC (1000U)
#define MAX_WATCH_ERRORS 8U
#define PREFIX_BACKOFF_MIN_USEC (100U * 1000U)
#define PREFIX_BACKOFF_MAX_USEC (5U * 1000U * 1000U)

typedef enum AcquireState {
        ACQUIRE_TXN,            /* the put + range txn is in flight */
        ACQUIRE_RANGE,          /* reading the resource again */
        ACQUIRE_WATCH,          /* watching the blocker */
        ACQUIRE_LEASE,          /* granting a persistent hold's own lease */
        ACQUIRE_FINALIZE,       /* the put that makes the grant final */
        ACQUIRE_DELETE,         /* deleting the key before an answer */
} AcquireState;

struct ClusterLocks {
        unsigned n_ref;
        bool dead;
        sd_event *event;
        EtcdClient *etcd;
        char *prefix;
        char *machine_id;
        char *hostname;
        char *daemon_id;
        char instance[17];
        uint64_t seq;
        uint64_t lease_ttl_usec;
        ClusterLocksCallbacks callbacks;
        void *userdata;
        bool started;
        bool stopping;
        /* stop() that keeps the lease: answered (from leave_defer) once no
         * request and no background delete is left. */
        struct Op *leaving;
        sd_event_source *leave_defer;

        int64_t lease;                  /* 0: none */
        unsigned lease_generation;
        EtcdCall *grant_call;
        uint64_t grant_sent_usec;       /* CLOCK_BOOTTIME */
        uint64_t grant_backoff_usec;
        EtcdCall *keepalive_call;
        uint64_t keepalive_sent_usec;
        sd_event_source *keepalive_timer;
        sd_event_source *deadline_timer;
        sd_event_source *grant_timer;

        /* The instance watch over <prefix>/locks/: keys of ours deleted by others. */
        char *locks_prefix;             /* "<prefix>/locks/" */
        EtcdWatch *prefix_watch;
        bool prefix_watch_confirmed;
        EtcdCall *check_call;           /* the read of every key (keys only) */
        bool check_again;               /* another read after the one in flight */
        sd_event_source *prefix_timer;  /* backoff before the next watch or read */
        uint64_t prefix_backoff_usec;
        int64_t prefix_revision;        /* every event up to it was seen (0: not watching yet) */
        GHashTable *hold_keys;          /* key → ClusterHold * (borrowed) */
        GHashTable *acquire_keys;       /* key → ClusterAcquire * (borrowed) */

        ClusterLocksStats stats;
        GQueue holds;                   /* ClusterHold* */
        GQueue acquires;                /* ClusterAcquire* */
        GQueue ops;                     /* Op* */
};

struct ClusterAcquire {
        ClusterLocks *cluster;
        GList *link;
        AcquireState state;
        LockMode mode;
        HoldScope scope;
        uint64_t timeout_usec;
        uint64_t ttl_usec;
        uid_t uid;
        pid_t pid;
        char *resource;
        char *comm;
        char *sender;
        char *bus_id;
        char *description;
        char *owner;
        char *key;
        char *range_prefix;
        uint64_t since_usec;
        int64_t lease;
        unsigned lease_generation;
        int64_t token;
        int64_t hold_lease;
        bool waited;
        bool cancelled;                 /* the caller left while the txn was in flight */
        bool timed_out;
        bool in_callback;
        bool indexed;                   /* in cluster->acquire_keys */
        bool key_deleted;               /* someone else deleted the key */
        unsigned n_watch_errors;        /* in a row, none confirmed */
        int pending_error;              /* ACQUIRE_DELETE: the answer after the delete */
        char *pending_message;
        ClusterEntry *pending_blocker;
        EtcdCall *call;
        EtcdWatch *watch;
        char *watch_key;
        sd_event_source *timer;
        ClusterAcquireCallback callback;
        void *userdata;
};

struct ClusterHold {
        ClusterLocks *cluster;
        GList *link;                    /* in cluster->holds, NULL while detached */
        ClusterEntry entry;
        int64_t lease;
        bool on_instance_lease;         /* this instance's lease, of lease_generation */
        unsigned lease_generation;
        bool busy;
        bool indexed;                   /* in cluster->hold_keys */
        bool removed;                   /* someone else deleted the key while busy */
        void *userdata;
};

typedef enum OpKind {
        OP_CLEANUP,
        OP_RELEASE,
        OP_REFRESH,
        OP_QUERY,
        OP_STOP,
        OP_REVOKE,
        OP_MOVE,
} OpKind;

typedef struct Op {
        ClusterLocks *cluster;
        GList *link;
        OpKind kind;
        EtcdCall *call;
        sd_event_source *timer;
        char *key;
        int64_t create_revision;        /* OP_CLEANUP: compare on it; 0: delete by name */
        bool repeat;                    /* OP_CLEANUP: once more a TTL later (unknown outcome) */
        uint64_t backoff_usec;
        ClusterHold *hold;
        char *resource;                 /* OP_QUERY: NULL for all */
        uint64_t expires_usec;
        int64_t lease;
        unsigned step;
        unsigned lease_generation;      /* OP_MOVE */
        bool drop_orphans;              /* OP_QUERY: cluster_locks_list_at_start() */
        ClusterEntry *entry;            /* OP_MOVE: the entry as it will be */
        union {
                ClusterDoneCallback done;
                ClusterRefreshCallback refresh;
                ClusterQueryCallback query;
                ClusterAdoptCallback adopt;
                void (*stop)(ClusterLocks *c, int error, void *userdata);
        } callback;
        void *userdata;
} Op;

/* ---- small helpers -------------------------------------------------------- */

static uint64_t now(clockid_t clock) {
        struct timespec ts;

        clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

static ClusterLocks *cluster_ref(ClusterLocks *c) {
        c->n_ref++;
        return c;
}

static void cluster_destroy(ClusterLocks *c);

static void cluster_unref(ClusterLocks *c) {
        g_assert(c->n_ref > 0);
        if (--c->n_ref == 0)
                cluster_destroy(c);
}

static int64_t ttl_to_seconds(uint64_t usec) {
        uint64_t s = (usec + 999999U) / 1000000U;

        return s == 0 ? 1 : (int64_t) MIN(s, (uint64_t) INT32_MAX);
}

char *cluster_resource_escape(const char *resource) {
        GString *s = g_string_new(NULL);

        for (const unsigned char *p = (const unsigned char *) resource; *p; p++) {
                if (g_ascii_isalnum(*p) || *p == '_' || *p == '.' || *p == '-')
                        g_string_append_c(s, (char) *p);
                else
                        g_string_append_printf(s, "%%%02X", *p);
        }
        return g_string_free(s, false);
}

static bool machine_id_is_valid(const char *s) {
        if (!s || strlen(s) != 32)
                return false;
        for (const char *p = s; *p; p++)
                if (!g_ascii_isxdigit(*p) || g_ascii_isupper(*p))
                        return false;
        return true;
}

static char *owner_of_uid(const ClusterLocks *c, uid_t uid) {
        return g_strdup_printf("uid=" UID_FMT "@%s", (uint32_t) uid, c->machine_id);
}

static char *owner_of_sender(const ClusterLocks *c, const char *sender) {
        return g_strdup_printf("sender=%s@%s.%s", sender, c->machine_id, c->instance);
}

void cluster_entry_clear(ClusterEntry *e) {
        if (!e)
                return;
        g_free(e->key);
        g_free(e->resource);
        g_free(e->comm);
        g_free(e->sender);
        g_free(e->bus_id);
        g_free(e->machine_id);
        g_free(e->hostname);
        g_free(e->instance);
        g_free(e->daemon_id);
        g_free(e->owner);
        g_free(e->description);
        *e = (ClusterEntry) {};
}

static void cluster_entry_copy(ClusterEntry *dst, const ClusterEntry *src) {
        *dst = *src;
        dst->key = g_strdup(src->key);
        dst->resource = g_strdup(src->resource);
        dst->comm = g_strdup(src->comm);
        dst->sender = g_strdup(src->sender);
        dst->bus_id = g_strdup(src->bus_id);
        dst->machine_id = g_strdup(src->machine_id);
        dst->hostname = g_strdup(src->hostname);
        dst->instance = g_strdup(src->instance);
        dst->daemon_id = g_strdup(src->daemon_id);
        dst->owner = g_strdup(src->owner);
        dst->description = g_strdup(src->description);
}

static void entry_free(ClusterEntry *e) {
        cluster_entry_clear(e);
        g_free(e);
}

static ClusterEntry *entry_dup(const ClusterEntry *e) {
        ClusterEntry *d = g_new0(ClusterEntry, 1);

        cluster_entry_copy(d, e);
        return d;
}

/* ---- values ---------------------------------------------------------------- */

/* JSON strings must be UTF-8; comm and the like are not always. */
static void add_string(JsonBuilder *b, const char *name, const char *value) {
        g_autofree char *valid = g_utf8_make_valid(strempty(value), -1);

        json_builder_set_member_name(b, name);
        json_builder_add_string_value(b, valid);
}

static char *value_build(const ClusterEntry *e) {
        g_autoptr(JsonBuilder) b = json_builder_new();
        g_autoptr(JsonGenerator) g = json_generator_new();
        g_autoptr(JsonNode) root = NULL;

        json_builder_begin_object(b);
        add_string(b, "resource", e->resource);
        add_string(b, "mode", lock_mode_to_string(e->mode));
        add_string(b, "scope", hold_scope_to_string(e->scope));
        json_builder_set_member_name(b, "uid");
        json_builder_add_int_value(b, e->uid);
        json_builder_set_member_name(b, "pid");
        json_builder_add_int_value(b, e->pid);
        add_string(b, "comm", e->comm);
        add_string(b, "sender", e->sender);
        add_string(b, "bus_id", e->bus_id);
        add_string(b, "machine_id", e->machine_id);
        add_string(b, "hostname", e->hostname);
        add_string(b, "instance", e->instance);
        add_string(b, "daemon_id", e->daemon_id);
        add_string(b, "owner", e->owner);
        json_builder_set_member_name(b, "since");
        json_builder_add_int_value(b, (int64_t) e->since_usec);
        json_builder_set_member_name(b, "ttl");
        json_builder_add_int_value(b, (int64_t) e->ttl_usec);
        json_builder_set_member_name(b, "expires");
        json_builder_add_int_value(b, (int64_t) e->expires_usec);
        add_string(b, "description", e->description);
        json_builder_end_object(b);

        root = json_builder_get_root(b);
        json_generator_set_root(g, root);
        return json_generator_to_data(g, NULL);
}

static char *member_string(JsonObject *o, const char *name, bool *ok) {
        JsonNode *n = json_object_get_member(o, name);

        if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING) {
                *ok = false;
                return g_strdup("");
        }
        return g_strdup(json_node_get_string(n));
}

static int64_t member_int(JsonObject *o, const char *name, bool *ok) {
        JsonNode *n = json_object_get_member(o, name);

        if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64) {
                *ok = false;
                return 0;
        }
        return json_node_get_int(n);
}

/* Fills e from one kv. A value that does not parse gives an entry that is
 * not valid, counted as exclusive (it blocks: never a false grant). */
static void entry_from_kv(ClusterEntry *e, const EtcdKeyValue *kv) {
        g_autoptr(JsonParser) p = json_parser_new();
        g_autofree char *mode = NULL, *scope = NULL;
        JsonObject *o = NULL;
        bool ok = true;

        *e = (ClusterEntry) {
                .key = g_strndup(kv->key, kv->key_size),
                .token = (uint64_t) kv->create_revision,
                .lease = kv->lease,
                .mode = LOCK_MODE_EXCLUSIVE,
                .scope = HOLD_SCOPE_PERSISTENT,
        };

        if (json_parser_load_from_data(p, kv->value, (gssize) kv->value_size, NULL) &&
            JSON_NODE_HOLDS_OBJECT(json_parser_get_root(p)))
                o = json_node_get_object(json_parser_get_root(p));
        if (!o) {
                ok = false;
                e->resource = g_strdup("");
                e->comm = g_strdup("");
                e->sender = g_strdup("");
                e->bus_id = g_strdup("");
                e->machine_id = g_strdup("");
                e->hostname = g_strdup("");
                e->instance = g_strdup("");
                e->daemon_id = g_strdup("");
                e->owner = g_strdup("");
                e->description = g_strdup("");
        } else {
                LockMode m;
                HoldScope s;

                e->resource = member_string(o, "resource", &ok);
                mode = member_string(o, "mode", &ok);
                scope = member_string(o, "scope", &ok);
                e->uid = (uid_t) member_int(o, "uid", &ok);
                e->pid = (pid_t) member_int(o, "pid", &ok);
                e->comm = member_string(o, "comm", &ok);
                e->sender = member_string(o, "sender", &ok);
                /* Optional: values written before it read as a direct connection's. */
                e->bus_id = member_string(o, "bus_id", &(bool) { true });
                e->machine_id = member_string(o, "machine_id", &ok);
                e->hostname = member_string(o, "hostname", &ok);
                e->instance = member_string(o, "instance", &ok);
                /* Optional too: values written before it are any daemon's. */
                e->daemon_id = member_string(o, "daemon_id", &(bool) { true });
                e->owner = member_string(o, "owner", &ok);
                e->since_usec = (uint64_t) member_int(o, "since", &ok);
                e->ttl_usec = (uint64_t) member_int(o, "ttl", &ok);
                e->expires_usec = (uint64_t) member_int(o, "expires", &ok);
                e->description = member_string(o, "description", &ok);
                m = lock_mode_from_string(mode);
                s = hold_scope_from_string(scope);
                if (m < 0 || s < 0)
                        ok = false;
                else {
                        e->mode = m;
                        e->scope = s;
                }
        }
        e->is_valid = ok;
        if (!ok)
                e->mode = LOCK_MODE_EXCLUSIVE;
}

static int entry_compare(gconstpointer a, gconstpointer b) {
        const ClusterEntry *x = *(ClusterEntry * const *) a, *y = *(ClusterEntry * const *) b;

        return x->token < y->token ? -1 : x->token > y->token ? 1 : 0;
}

/* The entries of kvs (ClusterEntry *, owned), sorted by create_revision. */
static GPtrArray *entries_from_kvs(const EtcdKeyValue *kvs, size_t n) {
        GPtrArray *a = g_ptr_array_new_with_free_func((GDestroyNotify) entry_free);

        for (size_t i = 0; i < n; i++) {
                ClusterEntry *e = g_new0(ClusterEntry, 1);

                entry_from_kv(e, &kvs[i]);
                g_ptr_array_add(a, e);
        }
        g_ptr_array_sort(a, entry_compare);
        return a;
}

/* How many entries at the head of a resource's order are granted. */
static size_t granted_head(GPtrArray *entries, size_t from, size_t to) {
        const ClusterEntry *first;
        size_t i;

        if (from >= to)
                return 0;
        first = entries->pdata[from];
        if (first->mode == LOCK_MODE_EXCLUSIVE)
                return 1;
        for (i = from; i < to; i++)
                if (((ClusterEntry *) entries->pdata[i])->mode != LOCK_MODE_SHARED)
                        break;
        return i - from;
}

/* ---- ops: short background work and queries -------------------------------- */

static Op *op_new(ClusterLocks *c, OpKind kind) {
        Op *op = g_new0(Op, 1);

        op->cluster = c;
        op->kind = kind;
        g_queue_push_tail(&c->ops, op);
        op->link = c->ops.tail;
        return op;
}

static void ch_free(ClusterHold *h);
static void prefix_check(ClusterLocks *c);
static void acquire_fail(ClusterAcquire *a, int error, const char *message);

static void leave_check(ClusterLocks *c);

static void op_free(Op *op) {
        if (!op)
                return;
        if (op->link)
                g_queue_delete_link(&op->cluster->ops, op->link);
        leave_check(op->cluster);
        etcd_call_cancel(op->call);
        sd_event_source_disable_unref(op->timer);
        if (op->hold && !op->hold->link)
                ch_free(op->hold);
        if (op->entry)
                entry_free(op->entry);
        g_free(op->key);
        g_free(op->resource);
        g_free(op);
}

static void cleanup_start(Op *op);

static int on_cleanup_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Op *op = userdata;

        op->timer = sd_event_source_disable_unref(op->timer);
        cleanup_start(op);
        return 0;
}

static void cleanup_retry(Op *op, uint64_t delay) {
        int r;

        r = sd_event_add_time_relative(op->cluster->event, &op->timer, CLOCK_MONOTONIC, delay, 0, on_cleanup_timer,
                                       op);
        if (r < 0) {
                log_warning_errno(r, "Failed to schedule the deletion of '%s': %m, giving up.", op->key);
                op_free(op);
        }
}

static void on_cleanup_txn(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                           void *userdata) {
        Op *op = userdata;

        op->call = NULL;
        if (error < 0) {
                op->backoff_usec = MIN(MAX(op->backoff_usec * 2, CLEANUP_BACKOFF_MIN_USEC), CLEANUP_BACKOFF_MAX_USEC);
                cleanup_retry(op, op->backoff_usec);
                return;
        }
        if (op->repeat) {
                /* A write of unknown outcome may still be committed late. */
                op->repeat = false;
                op->backoff_usec = 0;
                cleanup_retry(op, op->cluster->lease_ttl_usec);
                return;
        }
        op_free(op);
}

static void cleanup_start(Op *op) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        int r;

        r = etcd_txn_new(&t);
        if (r >= 0 && op->create_revision > 0)
                r = etcd_txn_compare(t, op->key, strlen(op->key), ETCD_COMPARE_CREATE, ETCD_COMPARE_EQUAL,
                                     op->create_revision);
        if (r >= 0)
                r = etcd_txn_delete(t, ETCD_TXN_SUCCESS, op->key, strlen(op->key), false);
        if (r >= 0)
                r = etcd_txn(op->cluster->etcd, t, on_cleanup_txn, op, &op->call);
        if (r < 0) {
                log_warning_errno(r, "Failed to delete '%s': %m, giving up.", op->key);
                op_free(op);
        }
}

/* Deletes key in the background until etcd answers. create_revision 0: by
 * name (keys are unique); unknown: the write may land later. */
static void cleanup_key(ClusterLocks *c, const char *key, int64_t create_revision, bool unknown) {
        Op *op = op_new(c, OP_CLEANUP);

        op->key = g_strdup(key);
        op->create_revision = create_revision;
        op->repeat = unknown;
        cleanup_start(op);
}

static void on_revoke_done(EtcdCall *call, int error, const char *error_message, int64_t revision,
                           void *userdata) {
        Op *op = userdata;

        op->call = NULL;
        op_free(op);
}

/* Best effort: a lease we gave up on ends sooner than its TTL. */
static void revoke_lease(ClusterLocks *c, int64_t lease) {
        Op *op;

        if (lease == 0)
                return;
        op = op_new(c, OP_REVOKE);
        if (etcd_lease_revoke(c->etcd, lease, on_revoke_done, op, &op->call) < 0)
                op_free(op);
}

/* ---- holds ------------------------------------------------------------------ */

static void ch_unindex(ClusterHold *h) {
        if (!h->indexed)
                return;
        g_hash_table_remove(h->cluster->hold_keys, h->entry.key);
        h->indexed = false;
}

/* Found by its key when the instance watch sees it deleted. Of two handles
 * of one key (an entry adopted twice) only the first is. */
static void ch_index(ClusterHold *h) {
        if (h->indexed || g_hash_table_contains(h->cluster->hold_keys, h->entry.key))
                return;
        g_hash_table_insert(h->cluster->hold_keys, g_strdup(h->entry.key), h);
        h->indexed = true;
}

static void ch_free(ClusterHold *h) {
        if (!h)
                return;
        if (h->link)
                g_queue_delete_link(&h->cluster->holds, h->link);
        ch_unindex(h);
        cluster_entry_clear(&h->entry);
        g_free(h);
}

/* Its key was on an instance lease that is gone since (not reported in
 * lease_lost because the hold was out of the list, being released or
 * refreshed). */
static bool hold_is_lost(const ClusterLocks *c, const ClusterHold *h) {
        return h->on_instance_lease && h->lease_generation != c->lease_generation;
}

static void ch_attach(ClusterLocks *c, ClusterHold *h) {
        g_queue_push_tail(&c->holds, h);
        h->link = c->holds.tail;
}

static void ch_detach(ClusterHold *h) {
        if (!h->link)
                return;
        g_queue_delete_link(&h->cluster->holds, h->link);
        h->link = NULL;
}

const ClusterEntry *cluster_hold_get_entry(const ClusterHold *h) {
        return &h->entry;
}

void cluster_hold_set_userdata(ClusterHold *h, void *userdata) {
        h->userdata = userdata;
}

void *cluster_hold_get_userdata(const ClusterHold *h) {
        return h->userdata;
}

GPtrArray *cluster_locks_get_holds(ClusterLocks *c) {
        GPtrArray *a = g_ptr_array_new();

        for (GList *l = c->holds.head; l; l = l->next)
                g_ptr_array_add(a, l->data);
        return a;
}

int cluster_locks_adopt(ClusterLocks *c, const ClusterEntry *e, ClusterHold **ret) {
        ClusterHold *h;

        if (!c || !e || !e->key || e->token == 0 || !ret)
                return -EINVAL;
        h = g_new0(ClusterHold, 1);
        h->cluster = c;
        cluster_entry_copy(&h->entry, e);
        h->lease = e->lease;
        h->on_instance_lease = e->lease != 0 && e->lease == c->lease;
        h->lease_generation = c->lease_generation;
        ch_attach(c, h);
        ch_index(h);
        /* The entry was read before: a deletion since may predate the watch. */
        prefix_check(c);
        *ret = h;
        return 0;
}

static void on_moved(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                     void *userdata) {
        Op *op = userdata;
        ClusterLocks *c = op->cluster;
        ClusterAdoptCallback cb = op->callback.adopt;
        void *ud = op->userdata;
        g_autofree char *message = g_strdup(error_message);
        ClusterHold *h = NULL;
        int r = error;

        op->call = NULL;
        if (r >= 0 && !result->succeeded) {
                r = -ENOENT;
                g_free(message);
                message = g_strdup_printf("the key of the hold on '%s' is gone (its lease expired)",
                                          op->entry->resource);
        } else if (r >= 0 && op->lease_generation != c->lease_generation) {
                /* Put on a lease that was lost meanwhile: it goes with it. */
                r = -ENOLINK;
                g_free(message);
                message = g_strdup("the instance lease was lost while the hold was moved onto it");
        } else if (r >= 0) {
                h = g_new0(ClusterHold, 1);
                h->cluster = c;
                cluster_entry_copy(&h->entry, op->entry);
                h->lease = op->entry->lease;
                h->on_instance_lease = true;
                h->lease_generation = op->lease_generation;
                ch_attach(c, h);
                ch_index(h);
                /* A deletion after the put may predate the instance watch. */
                prefix_check(c);
        }
        op_free(op);

        cluster_ref(c);
        cb(c, r, message, h, ud);
        cluster_unref(c);
}

int cluster_locks_adopt_onto_lease(ClusterLocks *c, const ClusterEntry *e, ClusterAdoptCallback callback,
                                   void *userdata) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        g_autofree char *value = NULL;
        ClusterEntry *moved;
        Op *op;
        int r;

        if (!c || c->dead || !e || !e->key || e->token == 0 || !e->is_valid || !callback ||
            e->scope == HOLD_SCOPE_PERSISTENT)
                return -EINVAL;
        if (c->lease == 0 || c->stopping)
                return -ENOTCONN;

        moved = entry_dup(e);
        moved->lease = c->lease;
        g_free(moved->instance);
        moved->instance = g_strdup(c->instance);
        g_free(moved->daemon_id);
        moved->daemon_id = g_strdup(c->daemon_id);
        g_free(moved->owner);
        moved->owner = owner_of_sender(c, moved->sender);
        value = value_build(moved);

        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_compare(t, moved->key, strlen(moved->key), ETCD_COMPARE_CREATE, ETCD_COMPARE_EQUAL,
                                     (int64_t) moved->token);
        if (r >= 0)
                r = etcd_txn_put(t, ETCD_TXN_SUCCESS, moved->key, strlen(moved->key), value, strlen(value),
                                 moved->lease);
        if (r < 0) {
                entry_free(moved);
                return r;
        }

        op = op_new(c, OP_MOVE);
        op->entry = moved;
        op->lease_generation = c->lease_generation;
        op->callback.adopt = callback;
        op->userdata = userdata;
        r = etcd_txn(c->etcd, t, on_moved, op, &op->call);
        if (r < 0) {
                op->call = NULL;
                op_free(op);
                return r;
        }
        return 0;
}

/* ---- the instance watch -------------------------------------------------------- */

static void prefix_watch_start(ClusterLocks *c);

static bool prefix_is_active(const ClusterLocks *c) {
        return c->started && !c->stopping && !c->dead;
}

static int on_prefix_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterLocks *c = userdata;

        c->prefix_timer = sd_event_source_disable_unref(c->prefix_timer);
        /* Not watching yet (or compacted): read first, then watch. */
        if (c->prefix_revision == 0 || c->check_again) {
                c->check_again = false;
                prefix_check(c);
        } else if (!c->prefix_watch)
                prefix_watch_start(c);
        return 0;
}

/* Tries again later (0: on the next iteration), or backs off. */
static void prefix_retry(ClusterLocks *c, bool at_once) {
        int r;

        if (!prefix_is_active(c) || c->prefix_timer)
                return;
        if (at_once)
                c->prefix_backoff_usec = 0;
        else
                c->prefix_backoff_usec = MIN(MAX(c->prefix_backoff_usec * 2, PREFIX_BACKOFF_MIN_USEC),
                                             PREFIX_BACKOFF_MAX_USEC);
        r = sd_event_add_time_relative(c->event, &c->prefix_timer, CLOCK_MONOTONIC, c->prefix_backoff_usec,
                                       TIMER_ACCURACY_USEC, on_prefix_timer, c);
        if (r < 0)
                log_warning_errno(r, "Failed to schedule the etcd watch of '%s', holds deleted by others go "
                                  "unnoticed: %m", c->locks_prefix);
}

/* Someone else deleted the key of h, at revision (0: unknown). Returns
 * false when the instance was freed by the callback. */
static bool hold_deleted(ClusterLocks *c, ClusterHold *h, int64_t revision) {
        bool alive;

        if (revision > 0 && (uint64_t) revision <= h->entry.token)
                return true; /* an older key of that name */
        if (h->busy) {
                /* Its release or refresh learns it from etcd, or from this. */
                h->removed = true;
                return true;
        }
        log_debug("The key of the hold on '%s' (token %" PRIu64 ") was deleted by someone else.",
                 h->entry.resource, h->entry.token);
        /* Out of every list: freeing the instance from the callback leaves it. */
        ch_detach(h);
        ch_unindex(h);
        cluster_ref(c);
        if (c->callbacks.hold_removed)
                c->callbacks.hold_removed(c, h, c->userdata);
        ch_free(h);
        alive = !c->dead;
        cluster_unref(c);
        return alive;
}

/* The same for a request under way: it will not be granted. */
static void acquire_deleted(ClusterAcquire *a) {
        if (a->cancelled || a->state == ACQUIRE_DELETE)
                return; /* our own delete */
        a->key_deleted = true;
        if (a->state == ACQUIRE_WATCH)
                acquire_fail(a, -ENOLINK, "the request's key was deleted by someone else");
        /* Otherwise decided when what is in flight returns. */
}

static void key_deleted(ClusterLocks *c, const char *key, int64_t revision) {
        ClusterHold *h = g_hash_table_lookup(c->hold_keys, key);
        ClusterAcquire *a;

        if (h) {
                if (!hold_deleted(c, h, revision))
                        return;
        }
        a = g_hash_table_lookup(c->acquire_keys, key);
        if (a)
                acquire_deleted(a);
}

static void on_prefix_watch_created(EtcdWatch *w, int64_t revision, void *userdata) {
        ClusterLocks *c = userdata;

        c->prefix_watch_confirmed = true;
        c->prefix_backoff_usec = 0;
}

static void on_prefix_watch_event(EtcdWatch *w, const EtcdEvent *event, void *userdata) {
        ClusterLocks *c = userdata;
        g_autofree char *key = NULL;

        c->prefix_revision = MAX(c->prefix_revision, event->kv.mod_revision);
        /* Only deletes come (a put to one of our keys by someone else keeps
         * its place and token: ignored, see the header); the check keeps
         * an etcd that ignored the filter harmless. */
        if (event->type != ETCD_EVENT_DELETE)
                return;
        key = g_strndup(event->kv.key, event->kv.key_size);
        key_deleted(c, key, event->kv.mod_revision);
}

static void on_prefix_watch_error(EtcdWatch *w, int error, const char *error_message, void *userdata) {
        ClusterLocks *c = userdata;
        bool confirmed = c->prefix_watch_confirmed;

        c->prefix_watch = NULL;
        c->prefix_watch_confirmed = false;
        if (!prefix_is_active(c))
                return;
        if (error == -ERANGE) {
                /* Compacted: what we missed is read instead. */
                log_notice("The etcd watch of '%s' was compacted (%s), reading the keys of this instance again.",
                           c->locks_prefix, error_message);
                c->prefix_revision = 0;
                prefix_retry(c, true);
                return;
        }
        log_notice("The etcd watch of '%s' ended (%s), watching again from revision %" PRIi64 ".",
                   c->locks_prefix, error_message, c->prefix_revision + 1);
        prefix_retry(c, confirmed);
}

static void prefix_watch_start(ClusterLocks *c) {
        static const EtcdWatchCallbacks callbacks = {
                .created = on_prefix_watch_created,
                .event = on_prefix_watch_event,
                .error = on_prefix_watch_error,
        };
        EtcdWatchOptions options = {
                .prefix = true,
                .start_revision = c->prefix_revision + 1,
                /* Every change in the cluster passes here: half of them
                 * (the puts) need not. */
                .deletes_only = true,
        };
        int r;

        if (!prefix_is_active(c) || c->prefix_watch)
                return;
        c->stats.n_prefix_watches++;
        c->prefix_watch_confirmed = false;
        r = etcd_watch(c->etcd, c->locks_prefix, strlen(c->locks_prefix), &options, &callbacks, c,
                       &c->prefix_watch);
        if (r < 0) {
                c->prefix_watch = NULL;
                log_warning_errno(r, "Failed to watch '%s': %m", c->locks_prefix);
                prefix_retry(c, false);
        }
}

static int compare_kv_key(const void *key, const void *kv) {
        return strcmp(key, ((const EtcdKeyValue *) kv)->key);
}

static int compare_kvs(const void *a, const void *b) {
        return strcmp(((const EtcdKeyValue *) a)->key, ((const EtcdKeyValue *) b)->key);
}

static const EtcdKeyValue *find_kv(const EtcdKeyValue *kvs, size_t n, const char *key) {
        if (n == 0)
                return NULL;
        return bsearch(key, kvs, n, sizeof(EtcdKeyValue), compare_kv_key);
}

static void on_prefix_check(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                            void *userdata) {
        ClusterLocks *c = userdata;
        g_autoptr(GPtrArray) gone = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) gone_acquires = g_ptr_array_new_with_free_func(g_free);
        g_autofree EtcdKeyValue *kvs = NULL;
        GHashTableIter it;
        gpointer k, v;

        c->check_call = NULL;
        if (error < 0) {
                log_notice("Failed to read the keys under '%s': %s", c->locks_prefix, error_message);
                c->check_again = true;
                prefix_retry(c, false);
                return;
        }

        /* Keys sorted for lookup (etcd sorts by key already; not relied on). */
        if (result->n_kvs > 0) {
                kvs = g_memdup2(result->kvs, result->n_kvs * sizeof(EtcdKeyValue));
                qsort(kvs, result->n_kvs, sizeof(EtcdKeyValue), compare_kvs);
        }

        /* Keys known to exist at their token and missing at this read were
         * deleted in between. A key granted after the read is the watch's. */
        g_hash_table_iter_init(&it, c->hold_keys);
        while (g_hash_table_iter_next(&it, &k, &v)) {
                ClusterHold *h = v;
                const EtcdKeyValue *kv;

                if (h->entry.token > (uint64_t) result->revision)
                        continue;
                kv = find_kv(kvs, result->n_kvs, k);
                if (!kv || (uint64_t) kv->create_revision != h->entry.token)
                        g_ptr_array_add(gone, g_strdup(k));
        }
        g_hash_table_iter_init(&it, c->acquire_keys);
        while (g_hash_table_iter_next(&it, &k, &v)) {
                ClusterAcquire *a = v;

                if (a->token == 0 || a->token > result->revision)
                        continue;
                if (!find_kv(kvs, result->n_kvs, k))
                        g_ptr_array_add(gone_acquires, g_strdup(k));
        }

        c->stats.n_prefix_reads++;
        c->prefix_backoff_usec = 0;
        if (c->prefix_revision == 0)
                c->prefix_revision = result->revision;
        if (!c->prefix_watch)
                prefix_watch_start(c);

        cluster_ref(c);
        /* Looked up again: a callback may have freed or released others. */
        for (size_t i = 0; i < gone->len && !c->dead; i++) {
                ClusterHold *h = g_hash_table_lookup(c->hold_keys, gone->pdata[i]);

                if (h)
                        (void) hold_deleted(c, h, 0);
        }
        for (size_t i = 0; i < gone_acquires->len && !c->dead; i++) {
                ClusterAcquire *a = g_hash_table_lookup(c->acquire_keys, gone_acquires->pdata[i]);

                if (a)
                        acquire_deleted(a);
        }
        if (!c->dead && c->check_again) {
                c->check_again = false;
                prefix_check(c);
        }
        cluster_unref(c);
}

/* Reads every key under the prefix (keys only) and reports this instance's
 * holds whose keys are gone; the watch starts (again) from that read if it
 * is not running. One at a time: asked again meanwhile, once more after. */
static void prefix_check(ClusterLocks *c) {
        EtcdRangeOptions options = {
                .prefix = true,
                .keys_only = true,
        };
        int r;

        if (!prefix_is_active(c))
                return;
        if (c->check_call || c->prefix_timer) {
                c->check_again = true;
                return;
        }
        r = etcd_range(c->etcd, c->locks_prefix, strlen(c->locks_prefix), &options, on_prefix_check, c,
                       &c->check_call);
        if (r < 0) {
                c->check_call = NULL;
                log_warning_errno(r, "Failed to read the keys under '%s': %m", c->locks_prefix);
                c->check_again = true;
                prefix_retry(c, false);
        }
}

/* At each lease: starts watching, unless under way. */
static void prefix_start(ClusterLocks *c) {
        if (c->prefix_watch || c->check_call || c->prefix_timer)
                return;
        if (c->prefix_revision == 0)
                prefix_check(c);
        else
                prefix_watch_start(c);
}

static void prefix_stop(ClusterLocks *c) {
        etcd_watch_cancel(c->prefix_watch);
        c->prefix_watch = NULL;
        etcd_call_cancel(c->check_call);
        c->check_call = NULL;
        c->prefix_timer = sd_event_source_disable_unref(c->prefix_timer);
}

/* ---- the instance lease ------------------------------------------------------ */

static void lease_grant_start(ClusterLocks *c);

static int on_grant_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterLocks *c = userdata;

        c->grant_timer = sd_event_source_disable_unref(c->grant_timer);
        lease_grant_start(c);
        return 0;
}

static void lease_grant_retry(ClusterLocks *c) {
        int r;

        c->grant_backoff_usec = MIN(MAX(c->grant_backoff_usec * 2, GRANT_BACKOFF_MIN_USEC),
                                    MAX(c->lease_ttl_usec / 3, GRANT_BACKOFF_MIN_USEC));
        r = sd_event_add_time_relative(c->event, &c->grant_timer, CLOCK_MONOTONIC, c->grant_backoff_usec, 0,
                                       on_grant_timer, c);
        if (r < 0)
                log_warning_errno(r, "Failed to schedule an etcd lease grant: %m");
}

/* The lease is gone (or may be): tell, and start over. */
static void lease_lost(ClusterLocks *c, const char *why) {
        g_autoptr(GPtrArray) lost = g_ptr_array_new_with_free_func((GDestroyNotify) ch_free);
        g_autoptr(GPtrArray) failed = g_ptr_array_new();
        int64_t old = c->lease;

        if (old == 0)
                return;

        log_warning("etcd lease %" PRIx64 " lost (%s): its holds are gone.", (uint64_t) old, why);
        c->lease = 0;
        c->lease_generation++;
        etcd_call_cancel(c->keepalive_call);
        c->keepalive_call = NULL;
        c->keepalive_timer = sd_event_source_disable_unref(c->keepalive_timer);
        c->deadline_timer = sd_event_source_disable_unref(c->deadline_timer);

        for (GList *l = c->holds.head, *next; l; l = next) {
                ClusterHold *h = l->data;

                next = l->next;
                if (h->lease != old)
                        continue;
                ch_detach(h);
                g_ptr_array_add(lost, h);
        }
        for (GList *l = c->acquires.head; l; l = l->next) {
                ClusterAcquire *a = l->data;

                /* A txn in flight finds the generation changed when it returns. */
                if (a->lease == old && a->state != ACQUIRE_TXN && a->state != ACQUIRE_DELETE && !a->cancelled)
                        g_ptr_array_add(failed, a);
        }

        revoke_lease(c, old);
        if (!c->stopping)
                lease_grant_start(c);

        cluster_ref(c);
        if (c->callbacks.lease_lost)
                c->callbacks.lease_lost(c, (ClusterHold * const *) lost->pdata, lost->len, c->userdata);
        for (size_t i = 0; i < failed->len && !c->dead; i++) {
                ClusterAcquire *a = failed->pdata[i];

                /* It may have been cancelled by an earlier callback. */
                if (g_queue_find(&c->acquires, a))
                        acquire_fail(a, -ENOLINK, "the etcd lease was lost while the request was pending");
        }
        cluster_unref(c);
}

static int on_deadline(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterLocks *c = userdata;

        lease_lost(c, "no renewal succeeded within its TTL");
        return 0;
}

static int arm_deadline(ClusterLocks *c, uint64_t sent, int64_t ttl_sec) {
        uint64_t ttl = MIN(c->lease_ttl_usec, (uint64_t) ttl_sec * 1000000U);
        uint64_t deadline = sent + ttl;

        if (c->deadline_timer)
                return sd_event_source_set_time(c->deadline_timer, deadline);
        /* Accuracy 1 µs: sd-event's default would let it slip by 250 ms. */
        return sd_event_add_time(c->event, &c->deadline_timer, CLOCK_BOOTTIME, deadline, 1, on_deadline, c);
}

static void keepalive_send(ClusterLocks *c);

static int on_keepalive_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterLocks *c = userdata;
        int r;

        r = sd_event_source_set_time_relative(s, c->lease_ttl_usec / 3);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ON);
        if (r < 0)
                log_warning_errno(r, "Failed to rearm the etcd lease renewal: %m");
        if (!c->keepalive_call)
                keepalive_send(c);
        return 0;
}

static void on_keepalive(EtcdCall *call, int error, const char *error_message, int64_t ttl_sec, void *userdata) {
        ClusterLocks *c = userdata;
        int r;

        c->keepalive_call = NULL;
        if (error == -ENOENT) {
                lease_lost(c, error_message);
                return;
        }
        if (error < 0) {
                /* The deadline decides; the next tick tries again. */
                log_notice("Failed to renew etcd lease %" PRIx64 ": %s", (uint64_t) c->lease, error_message);
                return;
        }
        r = arm_deadline(c, c->keepalive_sent_usec, ttl_sec);
        if (r < 0)
                log_warning_errno(r, "Failed to arm the etcd lease deadline: %m");
}

static void keepalive_send(ClusterLocks *c) {
        int r;

        c->keepalive_sent_usec = now(CLOCK_BOOTTIME);
        r = etcd_lease_keepalive(c->etcd, c->lease, on_keepalive, c, &c->keepalive_call);
        if (r < 0) {
                c->keepalive_call = NULL;
                log_warning_errno(r, "Failed to renew the etcd lease: %m");
        }
}

static void on_lease_granted(EtcdCall *call, int error, const char *error_message, int64_t lease_id,
                             int64_t ttl_sec, void *userdata) {
        ClusterLocks *c = userdata;
        int r;

        c->grant_call = NULL;
        if (error < 0) {
                log_notice("Failed to grant an etcd lease: %s", error_message);
                lease_grant_retry(c);
                if (c->callbacks.grant_failed)
                        c->callbacks.grant_failed(c, error, error_message, c->userdata);
                return;
        }

        c->lease = lease_id;
        c->lease_generation++;
        c->grant_backoff_usec = 0;
        r = arm_deadline(c, c->grant_sent_usec, ttl_sec);
        if (r >= 0)
                r = sd_event_add_time_relative(c->event, &c->keepalive_timer, CLOCK_MONOTONIC, c->lease_ttl_usec / 3,
                                               TIMER_ACCURACY_USEC, on_keepalive_timer, c);
        if (r < 0) {
                log_warning_errno(r, "Failed to set up the etcd lease timers: %m");
                lease_lost(c, "no timers");
                return;
        }

        prefix_start(c);
        if (c->callbacks.ready)
                c->callbacks.ready(c, lease_id, c->userdata);
}

static void lease_grant_start(ClusterLocks *c) {
        int r;

        if (c->grant_call || c->grant_timer)
                return;
        c->grant_sent_usec = now(CLOCK_BOOTTIME);
        r = etcd_lease_grant(c->etcd, ttl_to_seconds(c->lease_ttl_usec), on_lease_granted, c, &c->grant_call);
        if (r < 0) {
                c->grant_call = NULL;
                log_warning_errno(r, "Failed to grant an etcd lease: %m");
                lease_grant_retry(c);
        }
}

/* ---- the instance ------------------------------------------------------------ */

int cluster_locks_new(sd_event *event, EtcdClient *etcd, const char *prefix, const ClusterHost *host,
                      uint64_t lease_ttl_usec, ClusterLocks **ret) {
        ClusterLocks *c;
        uint64_t nonce;

        if (!event || !etcd || !prefix || !host || !machine_id_is_valid(host->machine_id) || !host->hostname ||
            lease_ttl_usec < 1000000U || !ret)
                return -EINVAL;
        if (getrandom(&nonce, sizeof nonce, 0) != sizeof nonce)
                return errno > 0 ? -errno : -EIO;

        c = g_new0(ClusterLocks, 1);
        c->n_ref = 1;
        c->event = sd_event_ref(event);
        c->etcd = etcd;
        c->prefix = g_strdup(prefix);
        while (*c->prefix && g_str_has_suffix(c->prefix, "/"))
                c->prefix[strlen(c->prefix) - 1] = '\0';
        c->machine_id = g_strdup(host->machine_id);
        c->hostname = g_strdup(host->hostname);
        c->daemon_id = g_strdup(host->daemon_id ?: "");
        snprintf(c->instance, sizeof c->instance, "%016" PRIx64, nonce);
        c->lease_ttl_usec = lease_ttl_usec;
        c->locks_prefix = g_strdup_printf("%s/locks/", c->prefix);
        c->hold_keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        c->acquire_keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        g_queue_init(&c->holds);
        g_queue_init(&c->acquires);
        g_queue_init(&c->ops);
        *ret = c;
        return 0;
}

int cluster_locks_start(ClusterLocks *c, const ClusterLocksCallbacks *callbacks, void *userdata) {
        if (!c || c->started)
                return -EINVAL;
        if (callbacks)
                c->callbacks = *callbacks;
        c->userdata = userdata;
        c->started = true;
        lease_grant_start(c);
        return 0;
}

int64_t cluster_locks_get_lease(const ClusterLocks *c) {
        return c->lease;
}

const char *cluster_locks_get_instance(const ClusterLocks *c) {
        return c->instance;
}

ClusterLocksStats cluster_locks_get_stats(const ClusterLocks *c) {
        return c->stats;
}

static void acquire_free(ClusterAcquire *a);

static void cluster_destroy(ClusterLocks *c) {
        g_hash_table_destroy(c->hold_keys);
        g_hash_table_destroy(c->acquire_keys);
        g_free(c->locks_prefix);
        g_free(c->prefix);
        g_free(c->machine_id);
        g_free(c->hostname);
        g_free(c->daemon_id);
        sd_event_unref(c->event);
        g_free(c);
}

ClusterLocks *cluster_locks_free(ClusterLocks *c) {
        if (!c || c->dead)
                return NULL;

        c->dead = true;
        c->leave_defer = sd_event_source_disable_unref(c->leave_defer);
        etcd_call_cancel(c->grant_call);
        etcd_call_cancel(c->keepalive_call);
        c->grant_call = c->keepalive_call = NULL;
        c->keepalive_timer = sd_event_source_disable_unref(c->keepalive_timer);
        c->deadline_timer = sd_event_source_disable_unref(c->deadline_timer);
        c->grant_timer = sd_event_source_disable_unref(c->grant_timer);
        prefix_stop(c);

        while (!g_queue_is_empty(&c->acquires)) {
                ClusterAcquire *a = g_queue_peek_head(&c->acquires);

                /* One in its own callback is freed when that returns. */
                g_queue_delete_link(&c->acquires, a->link);
                a->link = NULL;
                if (!a->in_callback)
                        acquire_free(a);
        }
        while (!g_queue_is_empty(&c->ops))
                op_free(g_queue_peek_head(&c->ops));
        while (!g_queue_is_empty(&c->holds))
                ch_free(g_queue_peek_head(&c->holds));

        cluster_unref(c);
        return NULL;
}

static void on_stop_revoked(EtcdCall *call, int error, const char *error_message, int64_t revision,
                            void *userdata) {
        Op *op = userdata;
        ClusterLocks *c = op->cluster;
        void (*cb)(ClusterLocks *, int, void *) = op->callback.stop;
        void *ud = op->userdata;

        op->call = NULL;
        op_free(op);
        if (cb)
                cb(c, error == -ENOENT ? 0 : error, ud);
}

/* Wakes the answer of a stop() that keeps the lease once nothing is in
 * flight (from the loop: this runs inside op_free() and acquire_free()). */
static void leave_check(ClusterLocks *c) {
        if (!c->leaving || c->dead || !g_queue_is_empty(&c->acquires) || g_queue_get_length(&c->ops) > 1)
                return;
        (void) sd_event_source_set_enabled(c->leave_defer, SD_EVENT_ONESHOT);
}

static int on_leave_defer(sd_event_source *s, void *userdata) {
        ClusterLocks *c = userdata;
        Op *op = c->leaving;
        void (*cb)(ClusterLocks *, int, void *) = op->callback.stop;
        void *ud = op->userdata;

        if (!g_queue_is_empty(&c->acquires) || g_queue_get_length(&c->ops) > 1)
                return 0; /* woken again by the last one */
        c->leaving = NULL;
        c->leave_defer = sd_event_source_disable_unref(c->leave_defer);
        op_free(op);
        if (cb)
                cb(c, 0, ud);
        return 0;
}

int cluster_locks_stop(ClusterLocks *c, bool keep_lease,
                       void (*callback)(ClusterLocks *c, int error, void *userdata), void *userdata) {
        int64_t lease;
        Op *op;
        int r;

        if (!c || c->stopping)
                return -EINVAL;

        c->stopping = true;
        lease = c->lease;
        c->lease = 0;
        c->lease_generation++;
        etcd_call_cancel(c->grant_call);
        etcd_call_cancel(c->keepalive_call);
        c->grant_call = c->keepalive_call = NULL;
        c->keepalive_timer = sd_event_source_disable_unref(c->keepalive_timer);
        c->deadline_timer = sd_event_source_disable_unref(c->deadline_timer);
        c->grant_timer = sd_event_source_disable_unref(c->grant_timer);
        prefix_stop(c);
        for (GList *l = c->acquires.head, *next; l; l = next) {
                next = l->next;
                cluster_acquire_cancel(l->data);
        }
        /* Holds on the lease go with it. */
        for (GList *l = c->holds.head, *next; l; l = next) {
                ClusterHold *h = l->data;

                next = l->next;
                if (h->lease == lease && lease != 0)
                        ch_free(h);
        }

        op = op_new(c, OP_STOP);
        op->callback.stop = callback;
        op->userdata = userdata;
        if (keep_lease) {
                /* The keys on the lease stay for the next instance; the
                 * cancelled requests' deletes (and the caller's releases)
                 * are waited for. */
                r = sd_event_add_defer(c->event, &c->leave_defer, on_leave_defer, c);
                if (r < 0) {
                        op_free(op);
                        return r;
                }
                c->leaving = op;
                return 0;
        }
        if (lease == 0) {
                /* Nothing to revoke: answer from the loop all the same. */
                r = etcd_lease_revoke(c->etcd, INT64_MAX, on_stop_revoked, op, &op->call);
        } else
                r = etcd_lease_revoke(c->etcd, lease, on_stop_revoked, op, &op->call);
        if (r < 0) {
                op_free(op);
                return r;
        }
        return 0;
}

/* ---- acquire --------------------------------------------------------------- */

static void acquire_free(ClusterAcquire *a) {
        if (!a)
                return;
        if (a->link)
                g_queue_delete_link(&a->cluster->acquires, a->link);
        leave_check(a->cluster);
        if (a->indexed)
                g_hash_table_remove(a->cluster->acquire_keys, a->key);
        etcd_call_cancel(a->call);
        etcd_watch_cancel(a->watch);
        sd_event_source_disable_unref(a->timer);
        g_free(a->resource);
        g_free(a->comm);
        g_free(a->sender);
        g_free(a->bus_id);
        g_free(a->description);
        g_free(a->owner);
        g_free(a->key);
        g_free(a->range_prefix);
        g_free(a->watch_key);
        g_free(a->pending_message);
        if (a->pending_blocker)
                entry_free(a->pending_blocker);
        g_free(a);
}

/* Stops what is in flight (but not a txn whose outcome we must learn). */
static void acquire_stop_io(ClusterAcquire *a) {
        etcd_call_cancel(a->call);
        a->call = NULL;
        etcd_watch_cancel(a->watch);
        a->watch = NULL;
        a->timer = sd_event_source_disable_unref(a->timer);
}

/* Answers the caller and frees the request. */
static void acquire_finish(ClusterAcquire *a, int error, const char *message, ClusterHold *hold,
                           const ClusterEntry *blocker) {
        ClusterLocks *c = a->cluster;

        acquire_stop_io(a);
        if (a->link) {
                g_queue_delete_link(&c->acquires, a->link);
                a->link = NULL;
        }
        cluster_ref(c);
        a->in_callback = true;
        a->callback(a, error, message, hold, blocker, a->userdata);
        acquire_free(a);
        cluster_unref(c);
}

/* Fails the request; its key, if it may exist, is deleted in the background. */
static void acquire_fail(ClusterAcquire *a, int error, const char *message) {
        revoke_lease(a->cluster, a->hold_lease);
        a->hold_lease = 0;
        if (a->key)
                cleanup_key(a->cluster, a->key, a->token, a->token == 0);
        acquire_finish(a, error, message, NULL, NULL);
}

static void on_answer_deleted(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                              void *userdata) {
        ClusterAcquire *a = userdata;
        g_autofree char *message = TAKE_PTR(a->pending_message);

        a->call = NULL;
        if (error < 0)
                /* The answer stands; the key goes in the background. */
                cleanup_key(a->cluster, a->key, a->token, false);
        acquire_finish(a, a->pending_error, message, NULL, a->pending_blocker);
}

/* Deletes the request's key, then answers error (a refusal or a timeout). */
static void acquire_delete_then_fail(ClusterAcquire *a, int error, char *message, const ClusterEntry *blocker) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        int r;

        acquire_stop_io(a);
        a->state = ACQUIRE_DELETE;
        a->pending_error = error;
        g_free(a->pending_message);
        a->pending_message = message;
        if (blocker && !a->pending_blocker)
                a->pending_blocker = entry_dup(blocker);

        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_compare(t, a->key, strlen(a->key), ETCD_COMPARE_CREATE, ETCD_COMPARE_EQUAL, a->token);
        if (r >= 0)
                r = etcd_txn_delete(t, ETCD_TXN_SUCCESS, a->key, strlen(a->key), false);
        if (r >= 0)
                r = etcd_txn(a->cluster->etcd, t, on_answer_deleted, a, &a->call);
        if (r < 0) {
                g_autofree char *m = TAKE_PTR(a->pending_message);

                cleanup_key(a->cluster, a->key, a->token, false);
                acquire_finish(a, error, m, NULL, a->pending_blocker);
        }
}

static char *describe_holder(const ClusterEntry *e) {
        if (!e->is_valid)
                return g_strdup_printf("an unreadable entry (%s)", e->key);
        return g_strdup_printf("uid " UID_FMT " (pid " PID_FMT ", %s) on host %s (%s)", (uint32_t) e->uid,
                               (int32_t) e->pid, e->comm, e->hostname, e->machine_id);
}

static void acquire_grant(ClusterAcquire *a);
static void acquire_evaluate(ClusterAcquire *a, const EtcdKeyValue *kvs, size_t n, int64_t revision);
static void acquire_range(ClusterAcquire *a);

static void on_watch_event(EtcdWatch *w, const EtcdEvent *event, void *userdata) {
        ClusterAcquire *a = userdata;

        if (event->type != ETCD_EVENT_DELETE)
                return; /* a put keeps the blocker's place */
        etcd_watch_cancel(a->watch);
        a->watch = NULL;
        acquire_range(a);
}

static void on_watch_created(EtcdWatch *w, int64_t revision, void *userdata) {
        ClusterAcquire *a = userdata;

        a->n_watch_errors = 0;
}

static void on_watch_error(EtcdWatch *w, int error, const char *error_message, void *userdata) {
        ClusterAcquire *a = userdata;

        a->watch = NULL;
        /* Compaction, a member gone: read again, watch again. But a watch
         * that keeps failing before etcd confirmed it would spin. */
        if (++a->n_watch_errors > MAX_WATCH_ERRORS) {
                acquire_fail(a, error, error_message);
                return;
        }
        acquire_range(a);
}

static void acquire_watch(ClusterAcquire *a, const ClusterEntry *blocker, int64_t revision) {
        static const EtcdWatchCallbacks callbacks = {
                .created = on_watch_created,
                .event = on_watch_event,
                .error = on_watch_error,
        };
        EtcdWatchOptions options = {
                .start_revision = revision + 1,
        };
        int r;

        a->state = ACQUIRE_WATCH;
        a->cluster->stats.n_watches++;
        a->waited = true;
        g_free(a->watch_key);
        a->watch_key = g_strdup(blocker->key);
        r = etcd_watch(a->cluster->etcd, a->watch_key, strlen(a->watch_key), &options, &callbacks, a, &a->watch);
        if (r < 0) {
                a->watch = NULL;
                acquire_fail(a, r, "could not watch the entry ahead");
        }
}

static void on_range(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                     void *userdata) {
        ClusterAcquire *a = userdata;

        a->call = NULL;
        if (error < 0) {
                acquire_fail(a, error, error_message);
                return;
        }
        acquire_evaluate(a, result->kvs, result->n_kvs, result->revision);
}

static void acquire_range(ClusterAcquire *a) {
        EtcdRangeOptions options = {
                .prefix = true,
                .sort_target = ETCD_SORT_CREATE,
                .sort_order = ETCD_SORT_ASCEND,
        };
        int r;

        a->state = ACQUIRE_RANGE;
        a->cluster->stats.n_reads++;
        r = etcd_range(a->cluster->etcd, a->range_prefix, strlen(a->range_prefix), &options, on_range, a,
                       &a->call);
        if (r < 0) {
                a->call = NULL;
                acquire_fail(a, r, "could not read the resource");
        }
}

/* The caller's match: another entry it already owns. */
static bool entry_is_callers(const ClusterAcquire *a, const ClusterEntry *e) {
        ClusterLocks *c = a->cluster;
        g_autofree char *by_uid = owner_of_uid(c, a->uid);
        g_autofree char *by_sender = a->sender ? owner_of_sender(c, a->sender) : NULL;

        if (!e->is_valid)
                return false;
        if (e->scope == HOLD_SCOPE_PERSISTENT && streq(e->owner, by_uid))
                return true;
        return by_sender && e->scope != HOLD_SCOPE_PERSISTENT && streq(e->owner, by_sender);
}

static void acquire_evaluate(ClusterAcquire *a, const EtcdKeyValue *kvs, size_t n, int64_t revision) {
        g_autoptr(GPtrArray) entries = entries_from_kvs(kvs, n);
        const ClusterEntry *blocker = NULL;
        ssize_t own = -1;

        if (a->lease_generation != a->cluster->lease_generation) {
                acquire_fail(a, -ENOLINK, "the etcd lease was lost while the request was pending");
                return;
        }
        if (a->key_deleted) {
                acquire_fail(a, -ENOLINK, "the request's key was deleted by someone else");
                return;
        }

        /* Only entries ahead of ours: of two requests of one owner in
         * flight at once, the later one is refused, the earlier one goes on. */
        for (size_t i = 0; i < entries->len; i++) {
                const ClusterEntry *e = entries->pdata[i];

                if (streq(e->key, a->key)) {
                        own = (ssize_t) i;
                        break;
                }
                if (entry_is_callers(a, e)) {
                        g_autofree char *who = describe_holder(e);

                        acquire_delete_then_fail(
                                a, -EALREADY,
                                g_strdup_printf("Resource '%s' already locked by the caller: %s", a->resource, who),
                                e);
                        return;
                }
        }
        if (own < 0) {
                acquire_fail(a, -ENOLINK, "the request's key is gone (its lease expired)");
                return;
        }
        a->token = (int64_t) ((ClusterEntry *) entries->pdata[own])->token;

        if (a->mode == LOCK_MODE_EXCLUSIVE) {
                if (own > 0)
                        blocker = entries->pdata[own - 1];
        } else
                for (ssize_t i = own - 1; i >= 0; i--)
                        if (((ClusterEntry *) entries->pdata[i])->mode != LOCK_MODE_SHARED) {
                                blocker = entries->pdata[i];
                                break;
                        }

        if (!blocker) {
                acquire_grant(a);
                return;
        }

        if (a->timeout_usec == 0 || a->timed_out) {
                const ClusterEntry *first = entries->pdata[0];
                g_autofree char *who = describe_holder(first);

                if (a->timed_out)
                        acquire_delete_then_fail(
                                a, -ETIMEDOUT,
                                g_strdup_printf("Timed out waiting for resource '%s' (locked by %s)", a->resource,
                                                who),
                                NULL);
                else
                        acquire_delete_then_fail(
                                a, -EBUSY,
                                g_strdup_printf("Resource '%s' already locked by %s", a->resource, who), first);
                return;
        }
        acquire_watch(a, blocker, revision);
}

static ClusterHold *acquire_make_hold(ClusterAcquire *a, int64_t lease) {
        ClusterLocks *c = a->cluster;
        ClusterHold *h = g_new0(ClusterHold, 1);

        h->cluster = c;
        h->lease = lease;
        h->on_instance_lease = lease != 0 && lease == a->lease;
        h->lease_generation = a->lease_generation;
        h->entry = (ClusterEntry) {
                .key = g_strdup(a->key),
                .resource = g_strdup(a->resource),
                .mode = a->mode,
                .scope = a->scope,
                .token = (uint64_t) a->token,
                .lease = lease,
                .uid = a->uid,
                .pid = a->pid,
                .comm = g_strdup(a->comm),
                .sender = g_strdup(a->sender),
                .bus_id = g_strdup(a->bus_id),
                .machine_id = g_strdup(c->machine_id),
                .hostname = g_strdup(c->hostname),
                .instance = g_strdup(c->instance),
                .daemon_id = g_strdup(c->daemon_id),
                .owner = g_strdup(a->owner),
                .description = g_strdup(a->description),
                .since_usec = a->since_usec,
                .ttl_usec = a->ttl_usec,
                .expires_usec = a->ttl_usec > 0 ? a->since_usec + a->ttl_usec : 0,
                .is_valid = true,
        };
        return h;
}

static void acquire_granted(ClusterAcquire *a, int64_t lease) {
        ClusterHold *h;

        if (a->key_deleted) {
                /* The watch saw it go before the grant came back. */
                acquire_fail(a, -ENOLINK, "the request's key was deleted by someone else");
                return;
        }
        h = acquire_make_hold(a, lease);
        ch_attach(a->cluster, h);
        ch_index(h);
        acquire_finish(a, 0, NULL, h, NULL);
}

static void on_finalized(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                         void *userdata) {
        ClusterAcquire *a = userdata;
        int64_t lease = a->scope == HOLD_SCOPE_PERSISTENT ? a->hold_lease : a->lease;

        a->call = NULL;
        if (error < 0 || !result->succeeded) {
                acquire_fail(a, error < 0 ? error : -ENOLINK,
                             error < 0 ? error_message : "the request's key vanished while it was granted");
                return;
        }
        if (a->lease_generation != a->cluster->lease_generation && lease == a->lease) {
                acquire_fail(a, -ENOLINK, "the etcd lease was lost while the request was granted");
                return;
        }
        a->hold_lease = 0;
        acquire_granted(a, lease);
}

/* Puts the key again with its final value and lease, compared on its
 * create_revision (a key that vanished is never brought back). */
static void acquire_finalize(ClusterAcquire *a) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        g_autofree char *value = NULL;
        ClusterHold *h;
        int64_t lease = a->scope == HOLD_SCOPE_PERSISTENT ? a->hold_lease : a->lease;
        int r;

        a->state = ACQUIRE_FINALIZE;
        a->since_usec = now(CLOCK_REALTIME);
        h = acquire_make_hold(a, lease);
        value = value_build(&h->entry);
        ch_free(h);

        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_compare(t, a->key, strlen(a->key), ETCD_COMPARE_CREATE, ETCD_COMPARE_EQUAL, a->token);
        if (r >= 0)
                r = etcd_txn_put(t, ETCD_TXN_SUCCESS, a->key, strlen(a->key), value, strlen(value), lease);
        if (r >= 0)
                r = etcd_txn(a->cluster->etcd, t, on_finalized, a, &a->call);
        if (r < 0) {
                a->call = NULL;
                acquire_fail(a, r, "could not write the grant");
        }
}

static void on_hold_lease(EtcdCall *call, int error, const char *error_message, int64_t lease_id, int64_t ttl_sec,
                          void *userdata) {
        ClusterAcquire *a = userdata;

        a->call = NULL;
        if (error < 0) {
                acquire_fail(a, error, error_message);
                return;
        }
        a->hold_lease = lease_id;
        acquire_finalize(a);
}

static void acquire_grant(ClusterAcquire *a) {
        int r;

        if (a->scope == HOLD_SCOPE_PERSISTENT && a->ttl_usec > 0) {
                a->state = ACQUIRE_LEASE;
                r = etcd_lease_grant(a->cluster->etcd, ttl_to_seconds(a->ttl_usec), on_hold_lease, a, &a->call);
                if (r < 0) {
                        a->call = NULL;
                        acquire_fail(a, r, "could not grant the hold's lease");
                }
                return;
        }
        if (a->scope == HOLD_SCOPE_PERSISTENT || a->waited) {
                acquire_finalize(a);
                return;
        }
        acquire_granted(a, a->lease);
}

static void on_acquire_txn(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                           void *userdata) {
        ClusterAcquire *a = userdata;
        ClusterLocks *c = a->cluster;
        const EtcdOpResult *range = NULL;

        a->call = NULL;
        if (a->cancelled) {
                /* The caller left while the txn was on its way. */
                cleanup_key(c, a->key, error < 0 ? 0 : result->revision, error < 0);
                acquire_free(a);
                return;
        }
        if (error < 0) {
                bool lease_gone = error == -ENOENT && a->lease_generation == c->lease_generation;
                g_autofree char *message = g_strdup(error_message);

                cluster_ref(c);
                acquire_fail(a, error, message);
                if (lease_gone && !c->dead)
                        /* etcd says the lease does not exist: believe it. */
                        lease_lost(c, message);
                cluster_unref(c);
                return;
        }
        a->token = result->revision;
        for (size_t i = 0; i < result->n_responses; i++)
                if (result->responses[i].type == ETCD_OP_RANGE)
                        range = &result->responses[i];
        if (!range) {
                acquire_fail(a, -EBADMSG, "etcd answered the txn without the range");
                return;
        }
        acquire_evaluate(a, range->kvs, range->n_kvs, result->revision);
}

static int on_acquire_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterAcquire *a = userdata;

        a->timer = sd_event_source_disable_unref(a->timer);
        a->timed_out = true;
        switch (a->state) {
        case ACQUIRE_TXN:
        case ACQUIRE_DELETE:
                /* Decided when it returns. */
                break;
        case ACQUIRE_LEASE:
        case ACQUIRE_FINALIZE:
        case ACQUIRE_RANGE:
        case ACQUIRE_WATCH:
                /* A finalize may still land: the grant is not reported, its lease goes. */
                revoke_lease(a->cluster, a->hold_lease);
                a->hold_lease = 0;
                acquire_delete_then_fail(
                        a, -ETIMEDOUT,
                        g_strdup_printf("Timed out waiting for resource '%s'", a->resource), NULL);
                break;
        }
        return 0;
}

static bool request_is_valid(const ClusterRequest *q) {
        if (!q || !q->resource || !resource_name_is_valid(q->resource))
                return false;
        if (q->mode != LOCK_MODE_EXCLUSIVE && q->mode != LOCK_MODE_SHARED)
                return false;
        if (q->scope < 0 || q->scope >= _HOLD_SCOPE_MAX)
                return false;
        if (q->scope != HOLD_SCOPE_PERSISTENT && (!q->sender || !*q->sender))
                return false;
        return true;
}

int cluster_locks_acquire(ClusterLocks *c, const ClusterRequest *request, ClusterAcquireCallback callback,
                          void *userdata, ClusterAcquire **ret) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        g_autofree char *escaped = NULL, *value = NULL;
        ClusterAcquire *a;
        ClusterHold *h;
        int r;

        if (!c || c->dead || !callback || !request_is_valid(request))
                return -EINVAL;
        if (c->lease == 0 || c->stopping)
                return -ENOTCONN;

        escaped = cluster_resource_escape(request->resource);
        a = g_new0(ClusterAcquire, 1);
        a->cluster = c;
        a->mode = request->mode;
        a->scope = request->scope;
        a->timeout_usec = request->timeout_usec;
        a->ttl_usec = request->ttl_usec;
        a->uid = request->uid;
        a->pid = request->pid;
        a->resource = g_strdup(request->resource);
        a->comm = g_strdup(strempty(request->comm));
        a->sender = g_strdup(strempty(request->sender));
        a->bus_id = g_strdup(strempty(request->bus_id));
        a->description = g_strdup(strempty(request->description));
        a->owner = a->scope == HOLD_SCOPE_PERSISTENT ? owner_of_uid(c, a->uid) : owner_of_sender(c, a->sender);
        a->range_prefix = g_strdup_printf("%s/locks/%s/", c->prefix, escaped);
        a->key = g_strdup_printf("%s%s.%s.%" PRIu64, a->range_prefix, c->machine_id, c->instance, ++c->seq);
        a->since_usec = now(CLOCK_REALTIME);
        a->lease = c->lease;
        a->lease_generation = c->lease_generation;
        a->callback = callback;
        a->userdata = userdata;
        a->state = ACQUIRE_TXN;

        h = acquire_make_hold(a, a->lease);
        value = value_build(&h->entry);
        ch_free(h);

        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_put(t, ETCD_TXN_SUCCESS, a->key, strlen(a->key), value, strlen(value), a->lease);
        if (r >= 0)
                r = etcd_txn_range(t, ETCD_TXN_SUCCESS, a->range_prefix, strlen(a->range_prefix), true);
        if (r >= 0)
                r = etcd_txn(c->etcd, t, on_acquire_txn, a, &a->call);
        /* Huge timeouts wait forever, as on one host. */
        if (r >= 0 && a->timeout_usec > 0 && a->timeout_usec < UINT64_MAX / 4)
                r = sd_event_add_time_relative(c->event, &a->timer, CLOCK_MONOTONIC, a->timeout_usec,
                                               TIMER_ACCURACY_USEC, on_acquire_timeout, a);
        if (r < 0) {
                /* No call left: the txn was never sent, or is cancelled with it. */
                g_free(TAKE_PTR(a->key));
                acquire_free(a);
                return r;
        }

        g_queue_push_tail(&c->acquires, a);
        a->link = c->acquires.tail;
        if (!g_hash_table_contains(c->acquire_keys, a->key)) {
                g_hash_table_insert(c->acquire_keys, g_strdup(a->key), a);
                a->indexed = true;
        }
        c->stats.n_acquires++;
        if (ret)
                *ret = a;
        return 0;
}

void cluster_acquire_cancel(ClusterAcquire *a) {
        ClusterLocks *c;

        if (!a || a->in_callback)
                return;
        c = a->cluster;
        if (a->cancelled)
                return;
        if (a->state == ACQUIRE_TXN && a->call && !c->dead) {
                /* Learn whether the key was written, then delete it. It stays
                 * listed (so freeing the instance frees it), marked. */
                a->cancelled = true;
                a->timer = sd_event_source_disable_unref(a->timer);
                return;
        }
        if (a->link) {
                g_queue_delete_link(&c->acquires, a->link);
                a->link = NULL;
        }
        if (!c->dead) {
                revoke_lease(c, a->hold_lease);
                a->hold_lease = 0;
        }
        if (!c->dead)
                cleanup_key(c, a->key, a->token, a->token == 0);
        acquire_free(a);
}

const char *cluster_acquire_get_key(const ClusterAcquire *a) {
        return a->key;
}

/* ---- release and refresh ------------------------------------------------------ */

static void on_release(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                       void *userdata) {
        Op *op = userdata;
        ClusterLocks *c = op->cluster;
        ClusterHold *h = op->hold;
        ClusterDoneCallback cb = op->callback.done;
        void *ud = op->userdata;
        g_autofree char *message = g_strdup(error_message);
        int r = error;

        op->call = NULL;
        if (error >= 0 && !result->succeeded) {
                r = -ENOENT;
                g_free(message);
                message = g_strdup_printf("Resource '%s' not locked (the hold's key is gone)", h->entry.resource);
        }
        if (r >= 0 || r == -ENOENT) {
                if (h->lease != 0 && h->entry.scope == HOLD_SCOPE_PERSISTENT)
                        revoke_lease(c, h->lease);
        } else {
                /* etcd failed: the hold stays (unless its lease went meanwhile). */
                h->busy = false;
                op->hold = NULL;
                if (h->removed) {
                        ch_free(h);
                        r = -ENOENT;
                        g_free(message);
                        message = g_strdup("the hold's key was deleted by someone else");
                } else if (!hold_is_lost(c, h))
                        ch_attach(c, h);
                else {
                        ch_free(h);
                        r = -ENOENT;
                        g_free(message);
                        message = g_strdup("the etcd lease of the hold was lost");
                }
        }
        op_free(op); /* frees a released hold */

        cluster_ref(c);
        if (cb)
                cb(c, r, message, ud);
        cluster_unref(c);
}

int cluster_locks_release(ClusterLocks *c, ClusterHold *h, ClusterDoneCallback callback, void *userdata) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        Op *op;
        int r;

        if (!c || !h || h->cluster != c || h->busy)
                return -EINVAL;

        if (!callback) {
                cleanup_key(c, h->entry.key, (int64_t) h->entry.token, false);
                if (h->lease != 0 && h->entry.scope == HOLD_SCOPE_PERSISTENT)
                        revoke_lease(c, h->lease);
                ch_free(h);
                return 0;
        }

        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_compare(t, h->entry.key, strlen(h->entry.key), ETCD_COMPARE_CREATE,
                                     ETCD_COMPARE_EQUAL, (int64_t) h->entry.token);
        if (r >= 0)
                r = etcd_txn_delete(t, ETCD_TXN_SUCCESS, h->entry.key, strlen(h->entry.key), false);
        if (r < 0)
                return r;

        op = op_new(c, OP_RELEASE);
        op->callback.done = callback;
        op->userdata = userdata;
        r = etcd_txn(c->etcd, t, on_release, op, &op->call);
        if (r < 0) {
                op_free(op);
                return r;
        }
        /* Owned by the op until etcd answers: a lost lease no longer reports it. */
        ch_detach(h);
        h->busy = true;
        op->hold = h;
        return 0;
}

static void refresh_finish(Op *op, int error, const char *message, uint64_t expires) {
        ClusterLocks *c = op->cluster;
        ClusterHold *h = op->hold;
        ClusterRefreshCallback cb = op->callback.refresh;
        void *ud = op->userdata;

        op->hold = NULL;
        h->busy = false;
        if (error != -ENOENT && h->removed) {
                /* Seen deleted by the watch (after the refresh was applied, or its answer lost). */
                error = -ENOENT;
                message = "the hold's key was deleted by someone else";
        } else if (error != -ENOENT && hold_is_lost(c, h)) {
                /* Its lease was lost meanwhile (it was not reported: it was ours). */
                error = -ENOENT;
                message = "the etcd lease of the hold was lost";
        }
        g_autofree char *m = g_strdup(message);
        if (error == -ENOENT)
                ch_free(h);
        else {
                if (error >= 0)
                        h->entry.expires_usec = expires;
                ch_attach(c, h);
        }
        op_free(op);

        cluster_ref(c);
        cb(c, error, m, error < 0 ? 0 : expires, ud);
        cluster_unref(c);
}

static void on_refresh_put(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                           void *userdata) {
        Op *op = userdata;

        op->call = NULL;
        if (error >= 0 && !result->succeeded)
                refresh_finish(op, -ENOENT, "the hold's key is gone", 0);
        else
                refresh_finish(op, error, error_message, op->expires_usec);
}

/* Writes the new expiry into the value. */
static void refresh_put(Op *op) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        ClusterHold *h = op->hold;
        g_autofree char *value = NULL;
        uint64_t saved = h->entry.expires_usec;
        int r;

        h->entry.expires_usec = op->expires_usec;
        value = value_build(&h->entry);
        h->entry.expires_usec = saved;

        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_compare(t, h->entry.key, strlen(h->entry.key), ETCD_COMPARE_CREATE,
                                     ETCD_COMPARE_EQUAL, (int64_t) h->entry.token);
        if (r >= 0)
                r = etcd_txn_put(t, ETCD_TXN_SUCCESS, h->entry.key, strlen(h->entry.key), value, strlen(value),
                                 h->lease);
        if (r >= 0)
                r = etcd_txn(op->cluster->etcd, t, on_refresh_put, op, &op->call);
        if (r < 0) {
                op->call = NULL;
                refresh_finish(op, r, "could not write the new expiry", 0);
        }
}

static void on_refresh_keepalive(EtcdCall *call, int error, const char *error_message, int64_t ttl_sec,
                                 void *userdata) {
        Op *op = userdata;

        op->call = NULL;
        if (error < 0) {
                refresh_finish(op, error, error_message, 0);
                return;
        }
        refresh_put(op);
}

int cluster_locks_refresh(ClusterLocks *c, ClusterHold *h, ClusterRefreshCallback callback, void *userdata) {
        Op *op;
        int r;

        if (!c || !h || h->cluster != c || h->busy || !callback)
                return -EINVAL;

        op = op_new(c, OP_REFRESH);
        op->callback.refresh = callback;
        op->userdata = userdata;
        op->hold = h;
        h->busy = true;
        if (h->entry.ttl_usec == 0) {
                /* Nothing to renew; answered from the loop like the rest. */
                op->expires_usec = 0;
                op->lease = 0;
        } else
                op->expires_usec = now(CLOCK_REALTIME) + h->entry.ttl_usec;

        if (h->entry.ttl_usec > 0 && h->entry.scope == HOLD_SCOPE_PERSISTENT && h->lease != 0)
                r = etcd_lease_keepalive(c->etcd, h->lease, on_refresh_keepalive, op, &op->call);
        else if (h->entry.ttl_usec > 0) {
                ch_detach(h);
                refresh_put(op);
                return 0;
        } else {
                /* Ask etcd whether the key still exists, so -ENOENT is told. */
                _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;

                r = etcd_txn_new(&t);
                if (r >= 0)
                        r = etcd_txn_compare(t, h->entry.key, strlen(h->entry.key), ETCD_COMPARE_CREATE,
                                             ETCD_COMPARE_EQUAL, (int64_t) h->entry.token);
                if (r >= 0)
                        r = etcd_txn(c->etcd, t, on_refresh_put, op, &op->call);
        }
        if (r < 0) {
                op->hold = NULL;
                h->busy = false;
                op_free(op);
                return r;
        }
        /* Owned by the op until etcd answers, like a release. */
        ch_detach(h);
        return 0;
}

/* ---- reading --------------------------------------------------------------------- */

static int entry_compare_resource(gconstpointer a, gconstpointer b) {
        const ClusterEntry *x = *(ClusterEntry * const *) a, *y = *(ClusterEntry * const *) b;
        int k = strcmp(x->resource, y->resource);

        if (k != 0)
                return k;
        return x->token < y->token ? -1 : x->token > y->token ? 1 : 0;
}

/* The escaped resource part of a key: the component before the last '/'. */
static char *key_group(const ClusterLocks *c, const char *key) {
        const char *start = key + strlen(c->prefix) + strlen("/locks/");
        const char *slash = strrchr(key, '/');

        if (strlen(key) < strlen(c->prefix) + strlen("/locks/") || !slash || slash < start)
                return g_strdup("");
        return g_strndup(start, (size_t) (slash - start));
}

bool cluster_locks_is_earlier_run(const ClusterLocks *c, const ClusterEntry *e) {
        return streq(e->machine_id, c->machine_id) && !streq(e->instance, c->instance) &&
                (e->daemon_id[0] == '\0' || streq(e->daemon_id, c->daemon_id));
}

/* Waiting requests of an earlier run of this daemon: their callers
 * were told the call failed when it died (the bus or the direct socket
 * hung up), so nobody waits for them; deleted now, not after that
 * instance's lease, since everything behind them waits too. */
static void drop_orphans(ClusterLocks *c, ClusterEntry **waiting, size_t n) {
        for (size_t i = 0; i < n; i++) {
                const ClusterEntry *e = waiting[i];

                if (!cluster_locks_is_earlier_run(c, e))
                        continue;
                log_info("Deleting the request of an earlier run of this daemon for '%s' (token %" PRIu64 ", "
                         "%s): its caller was told it failed.", e->resource, e->token, strempty(e->sender));
                cleanup_key(c, e->key, (int64_t) e->token, false);
        }
}

static void on_query(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                     void *userdata) {
        Op *op = userdata;
        ClusterLocks *c = op->cluster;
        ClusterQueryCallback cb = op->callback.query;
        void *ud = op->userdata;
        g_autoptr(GPtrArray) entries = NULL, granted = g_ptr_array_new();
        size_t n_waiting = 0;

        op->call = NULL;
        if (error < 0) {
                g_autofree char *m = g_strdup(error_message);

                op_free(op);
                cluster_ref(c);
                cb(c, error, m, NULL, 0, 0, ud);
                cluster_unref(c);
                return;
        }

        /* Group by key (the escaped resource), then order each group. */
        entries = g_ptr_array_new_with_free_func((GDestroyNotify) entry_free);
        {
                g_autoptr(GHashTable) groups = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                                                      (GDestroyNotify) g_ptr_array_unref);
                GHashTableIter it;
                gpointer v;

                for (size_t i = 0; i < result->n_kvs; i++) {
                        ClusterEntry *e = g_new0(ClusterEntry, 1);
                        char *group;
                        GPtrArray *a;

                        entry_from_kv(e, &result->kvs[i]);
                        g_ptr_array_add(entries, e);
                        group = key_group(c, e->key);
                        a = g_hash_table_lookup(groups, group);
                        if (!a) {
                                a = g_ptr_array_new();
                                g_hash_table_insert(groups, group, a);
                        } else
                                g_free(group);
                        g_ptr_array_add(a, e);
                }
                g_hash_table_iter_init(&it, groups);
                while (g_hash_table_iter_next(&it, NULL, &v)) {
                        GPtrArray *a = v;
                        size_t k;

                        g_ptr_array_sort(a, entry_compare);
                        k = granted_head(a, 0, a->len);
                        for (size_t i = 0; i < k; i++)
                                g_ptr_array_add(granted, a->pdata[i]);
                        n_waiting += a->len - k;
                        if (op->drop_orphans)
                                drop_orphans(c, (ClusterEntry **) a->pdata + k, a->len - k);
                }
        }
        g_ptr_array_sort(granted, entry_compare_resource);

        op_free(op);
        cluster_ref(c);
        cb(c, 0, NULL, (const ClusterEntry * const *) granted->pdata, granted->len, n_waiting, ud);
        cluster_unref(c);
}

static int query_start(ClusterLocks *c, const char *resource, bool at_start, ClusterQueryCallback callback,
                       void *userdata) {
        EtcdRangeOptions options = {
                .prefix = true,
        };
        g_autofree char *escaped = NULL, *key = NULL;
        Op *op;
        int r;

        if (!c || c->dead || !callback || (resource && !resource_name_is_valid(resource)))
                return -EINVAL;

        if (resource) {
                escaped = cluster_resource_escape(resource);
                key = g_strdup_printf("%s/locks/%s/", c->prefix, escaped);
        } else
                key = g_strdup_printf("%s/locks/", c->prefix);

        op = op_new(c, OP_QUERY);
        op->drop_orphans = at_start;
        op->callback.query = callback;
        op->userdata = userdata;
        r = etcd_range(c->etcd, key, strlen(key), &options, on_query, op, &op->call);
        if (r < 0) {
                op->call = NULL;
                op_free(op);
                return r;
        }
        return 0;
}

int cluster_locks_owner(ClusterLocks *c, const char *resource, ClusterQueryCallback callback, void *userdata) {
        if (!resource)
                return -EINVAL;
        return query_start(c, resource, false, callback, userdata);
}

int cluster_locks_list(ClusterLocks *c, ClusterQueryCallback callback, void *userdata) {
        return query_start(c, NULL, false, callback, userdata);
}

int cluster_locks_list_at_start(ClusterLocks *c, ClusterQueryCallback callback, void *userdata) {
        return query_start(c, NULL, true, callback, userdata);
}
