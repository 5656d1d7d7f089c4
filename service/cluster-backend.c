/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "cluster-backend.h"
#include "cluster-locks.h"
#include "etcd.h"
#include "fdstore.h"
#include "log.h"
#include "store.h"

/* How long a start waits for etcd before serving anyway (calls then fail
 * with a Storage error until etcd answers), and a clean exit for the
 * lease's revocation. */
#define CLUSTER_START_WAIT_USEC (10U * 1000000ULL)
#define CLUSTER_STOP_WAIT_USEC  (2U * 1000000ULL)

struct ClusterBackend {
        Manager *manager;
        EtcdClient *etcd;
        ClusterLocks *locks;
        char *where;                    /* "etcd (URL, …)" */
        char *machine_id;
        GHashTable *pending;            /* Pending * (owned) */
        GHashTable *pending_per_uid;    /* uid → how many of pending are its (quotas) */
        /* Unlocks under way, by "SENDER\nRESOURCE": the calls of that
         * caller for that resource that came after the Unlock wait for it
         * (GQueue of Deferred *), so that a caller's calls are served in
         * order, as on one host (lockbus_unlock_nowait() relies on it). */
        GHashTable *unlocking;
        GHashTable *unlock_of_hold;     /* "RESOURCE\nTOKEN" → its Unlock's key in unlocking */
        unsigned n_deferred;
        bool adopted;                   /* this machine's persistent holds are in the table */
        bool start_done;                /* the first lease and the adoption finished, or failed */
        unsigned n_moving;              /* connection holds being moved onto our lease at start */
        bool listed;                    /* the adoption's list was gone through */
        GHashTable *records;            /* at start: token → Hold * (owned) recorded by an earlier run */
        GHashTable *stored_fds;         /* at start: token → fd hold's read end, from systemd's fd store */
        GPtrArray *lost_at_start;       /* Hold * (owned): told LockLost once the bus is served */
        GPtrArray *moves;               /* MoveCall * (owned) under way */
        sd_event_source *lost_defer;
        bool stopping;                  /* cluster_backend_stop() runs: calls meanwhile are refused */
        char *grant_error;              /* why etcd gave no lease, until it gives one */
        bool stopped;
};

/* A request under way in etcd. */
typedef struct Pending {
        ClusterBackend *backend;
        AcquireRequest *req;
        ClusterAcquire *acquire;
} Pending;

/* An Unlock, Refresh or Break under way: the hold is found again by its
 * resource and token when etcd answers (it may have ended meanwhile). */
typedef struct HoldCall {
        ClusterBackend *backend;
        char *order_key;                /* Unlock: its key in backend->unlocking */
        char *resource;
        uint64_t token;
        ClusterHold *cluster_hold;
        void *callback;
        void *userdata;
} HoldCall;

/* A call waiting in backend->unlocking: an Acquire, or an Unlock or
 * Refresh of the hold being unlocked. */
typedef struct Deferred {
        AcquireRequest *req;
        HoldCall *call;
        bool refresh;
        char *caller;                   /* an Unlock's */
} Deferred;

static void deferred_free(Deferred *d) {
        g_free(d->caller);
        g_free(d);
}

static char *hold_key(const char *resource, uint64_t token) {
        return g_strdup_printf("%s\n%" PRIu64, resource, token);
}

static HoldCall *hold_call_new(ClusterBackend *b, const Hold *h, void *callback, void *userdata) {
        HoldCall *c = g_new0(HoldCall, 1);

        c->backend = b;
        c->resource = g_strdup(h->resource);
        c->token = h->token;
        c->cluster_hold = h->cluster_hold;
        c->callback = callback;
        c->userdata = userdata;
        return c;
}

static void hold_call_free(HoldCall *c) {
        g_free(c->order_key);
        g_free(c->resource);
        g_free(c);
}

/* This daemon's hold of that resource and token, NULL if it is gone. */
static Hold *find_local_hold(ClusterBackend *b, const char *resource, uint64_t token) {
        const GQueue *holds = lock_table_get_holds(b->manager->table, resource);

        if (holds)
                for (GList *l = holds->head; l; l = l->next) {
                        Hold *h = l->data;

                        if (h->token == token)
                                return h;
                }
        return NULL;
}

/* A Hold that describes an entry read from etcd. */
static Hold *hold_from_entry(ClusterBackend *b, const ClusterEntry *e) {
        Hold *h = hold_new();

        h->resource = g_strdup(e->resource);
        h->mode = e->mode;
        h->scope = e->scope;
        h->token = e->token;
        h->uid = e->uid;
        h->pid = e->pid;
        h->comm = g_strdup(e->comm);
        h->sender = g_strdup(e->sender);
        h->bus_id = g_strdup(e->bus_id);
        h->since_usec = e->since_usec;
        h->expires_usec = e->expires_usec;
        h->ttl_usec = e->ttl_usec;
        g_free(h->description);
        h->description = g_strdup(e->description);
        /* Only holds of other machines are told apart by their host. */
        if (!streq(e->machine_id, b->machine_id))
                h->hostname = g_strdup(e->hostname);
        return h;
}

/* ---- what outlives a restart ------------------------------------------------ */

/* What lets a hold outlive a restart of this daemon, as in directory
 * mode. A connection hold is also a file in the runtime directory: etcd
 * forgets a key when its lease expires, and the file is how the next
 * daemon on this machine, back after that, learns whom to tell (the holder
 * may still be connected). An fd hold's read end goes to systemd's fd
 * store (if there is one), so its pipe stays open across the restart. */
static void record_hold(ClusterBackend *b, Hold *h) {
        int r;

        if (h->scope == HOLD_SCOPE_FD) {
                r = fdstore_push(h->token, sd_event_source_get_io_fd(h->fd_watch));
                if (r < 0)
                        log_warning_errno(r, "Failed to keep the fd hold on '%s' in systemd's fd store, it will "
                                          "not survive a restart: %m", h->resource);
                h->in_fd_store = r > 0;
                return;
        }
        if (h->scope != HOLD_SCOPE_CONNECTION)
                return;
        r = store_save_hold(b->manager->store, h);
        if (r < 0)
                log_warning_errno(r, "Failed to record the hold on '%s' in %s, its holder is not told if this "
                                  "daemon dies and is back only after its lease expired: %m", h->resource,
                                  store_runtime_directory(b->manager->store));
}

static void unrecord_hold(ClusterBackend *b, Hold *h) {
        int r;

        if (h->scope == HOLD_SCOPE_FD && h->in_fd_store) {
                fdstore_remove(h->token);
                h->in_fd_store = false;
        }
        if (h->scope != HOLD_SCOPE_CONNECTION)
                return;
        r = store_remove_hold(b->manager->store, h);
        if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Failed to remove the record of the hold on '%s' from %s, ignoring: %m",
                                  h->resource, store_runtime_directory(b->manager->store));
}

/* Every hold of this daemon leaves the table here (or through
 * cluster_backend_forget(), or once its Unlock is done). */
static void drop_hold(ClusterBackend *b, Hold *h, const char *reason) {
        unrecord_hold(b, h);
        manager_drop_hold(b->manager, h, reason);
}

/* A connection or fd hold of an earlier run that did not come back (takes
 * old): its record goes, and its holder, if still on this bus, is told
 * LockLost once the bus is served. */
static void lost_at_start(ClusterBackend *b, Hold *old) {
        const char *sender = strempty(old->sender);
        int r = 0;

        unrecord_hold(b, old);
        if (old->bus_id && streq(old->bus_id, b->manager->bus_id))
                r = peer_registry_watch(b->manager->peers, sender);
        if (r <= 0) {
                hold_free(old);
                return;
        }

        log_notice("The hold of %s on '%s' (token %" PRIu64 ") ended with the etcd lease of an earlier run of "
                   "this daemon, telling it.", sender, old->resource, old->token);
        if (!b->lost_at_start)
                b->lost_at_start = g_ptr_array_new_with_free_func(hold_destroy);
        g_ptr_array_add(b->lost_at_start, old);
}

/* The records an earlier run left: connection holds only (a directory
 * mode run may have left persistent and fd holds; they are not ours). */
static void load_records(ClusterBackend *b) {
        g_autoptr(GPtrArray) holds = NULL;
        int r;

        b->records = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, hold_destroy);
        r = store_load_holds(b->manager->store, &holds);
        if (r < 0) {
                log_warning_errno(r, "Failed to read the records of connection holds in %s, the holders of "
                                  "those lost meanwhile are not told: %m", store_runtime_directory(b->manager->store));
                return;
        }
        for (guint i = 0; i < holds->len; i++) {
                Hold *h = holds->pdata[i];

                if (h->scope == HOLD_SCOPE_CONNECTION)
                        g_hash_table_replace(b->records, &h->token, g_steal_pointer(&holds->pdata[i]));
        }
}

/* After the adoption's list: what is still recorded had no key left. */
static void settle_records(ClusterBackend *b) {
        GHashTableIter iter;
        gpointer h;

        g_hash_table_iter_init(&iter, b->records);
        while (g_hash_table_iter_next(&iter, NULL, &h)) {
                g_hash_table_iter_steal(&iter);
                lost_at_start(b, h);
        }
        g_clear_pointer(&b->records, g_hash_table_destroy);
}

/* ---- acquire ------------------------------------------------------------- */

static void pending_free(Pending *p) {
        g_free(p);
}

static void pending_count_uid(ClusterBackend *b, uid_t uid, int delta) {
        unsigned n = GPOINTER_TO_UINT(g_hash_table_lookup(b->pending_per_uid, GUINT_TO_POINTER(uid))) + delta;

        if (n == 0)
                g_hash_table_remove(b->pending_per_uid, GUINT_TO_POINTER(uid));
        else
                g_hash_table_insert(b->pending_per_uid, GUINT_TO_POINTER(uid), GUINT_TO_POINTER(n));
}

static void pending_add(ClusterBackend *b, Pending *p) {
        g_hash_table_add(b->pending, p);
        pending_count_uid(b, p->req->caller.uid, +1);
}

/* Frees p; its request is the caller's to answer. */
static void pending_remove(ClusterBackend *b, Pending *p) {
        pending_count_uid(b, p->req->caller.uid, -1);
        g_hash_table_remove(b->pending, p);
}

static void answer_etcd_failure(ClusterBackend *b, AcquireRequest *req, int error, const char *message) {
        log_error_errno(error, "Failed to lock '%s' in %s: %s", req->resource, b->where,
                        message ?: strerror(-error));
        req->storage_error = error;
        req->storage_where = b->where;
        req->storage_message = g_strdup(message);
        manager_answer_request(req, -EIO, NULL, -1);
}

static void on_acquired(ClusterAcquire *a, int error, const char *error_message, ClusterHold *cluster_hold,
                        const ClusterEntry *blocker, void *userdata) {
        Pending *p = userdata;
        ClusterBackend *b = p->backend;
        AcquireRequest *req = p->req;
        _cleanup_(hold_freep) Hold *shown = NULL;
        _cleanup_close_ int write_fd = -1;
        Hold *h;
        int r;

        pending_remove(b, p);

        switch (error) {
        case 0:
                h = hold_from_entry(b, cluster_hold_get_entry(cluster_hold));
                g_free(h->sender);
                h->sender = g_strdup(req->caller.name);
                h->cluster_hold = cluster_hold;
                cluster_hold_set_userdata(cluster_hold, h);

                r = manager_take_hold(b->manager, h, -1, &write_fd, "Granted");
                if (r < 0) {
                        /* Nothing is held: etcd lets go of it too. */
                        g_autofree char *why = g_strdup_printf("the grant could not be set up here: %s",
                                                               strerror(-r));

                        (void) cluster_locks_release(b->locks, cluster_hold, NULL, NULL);
                        return answer_etcd_failure(b, req, r, why);
                }
                record_hold(b, h);
                req->granted_token = h->token;
                return manager_answer_request(req, 0, NULL, write_fd);

        case -EBUSY:
        case -EALREADY:
        case -ETIMEDOUT:
                if (blocker)
                        shown = hold_from_entry(b, blocker);
                return manager_answer_request(req, error, shown, -1);

        default:
                return answer_etcd_failure(b, req, error, error_message);
        }
}

static char *order_key(const char *sender, const char *resource) {
        return g_strdup_printf("%s\n%s", sender, resource);
}

void cluster_backend_submit(ClusterBackend *b, AcquireRequest *req) {
        g_autofree char *key = order_key(req->caller.name, req->resource);
        GQueue *after_unlock = g_hash_table_lookup(b->unlocking, key);
        ClusterRequest request = {
                .resource = req->resource,
                .mode = req->mode,
                .scope = req->scope,
                .timeout_usec = req->timeout_usec,
                .ttl_usec = req->ttl_usec,
                .uid = req->caller.uid,
                .pid = req->caller.pid,
                .comm = req->caller.comm,
                .sender = req->caller.name,
                .bus_id = req->caller.direct ? "" : b->manager->bus_id,
                .description = req->description,
        };
        Pending *p;
        int r;

        /* As during an idle exit: try again (with the next daemon). */
        if (b->stopping)
                return manager_answer_request(req, -ESHUTDOWN, NULL, -1);
        if (after_unlock) {
                Deferred *d = g_new0(Deferred, 1);

                d->req = req;
                g_queue_push_tail(after_unlock, d);
                b->n_deferred++;
                return;
        }

        p = g_new0(Pending, 1);
        p->backend = b;
        p->req = req;

        r = cluster_locks_acquire(b->locks, &request, on_acquired, p, &p->acquire);
        if (r < 0) {
                pending_free(p);
                return answer_etcd_failure(b, req, r, r != -ENOTCONN ? NULL :
                                           b->grant_error ?: "no lease: etcd has not answered yet");
        }
        pending_add(b, p);
}

void cluster_backend_peer_gone(ClusterBackend *b, const char *sender) {
        g_autoptr(GPtrArray) gone = g_ptr_array_new();
        GHashTableIter iter;
        gpointer p;

        g_hash_table_iter_init(&iter, b->pending);
        while (g_hash_table_iter_next(&iter, &p, NULL))
                if (streq(((Pending *) p)->req->caller.name, sender))
                        g_ptr_array_add(gone, p);

        for (guint i = 0; i < gone->len; i++) {
                Pending *pending = gone->pdata[i];
                AcquireRequest *req = pending->req;

                /* Its key goes in the background; nobody is left to answer. */
                cluster_acquire_cancel(pending->acquire);
                pending_remove(b, pending);
                manager_answer_request(req, -ECONNRESET, NULL, -1);
        }

        /* And those waiting for one of its Unlocks. */
        g_hash_table_iter_init(&iter, b->unlocking);
        while (g_hash_table_iter_next(&iter, NULL, &p)) {
                GQueue *queue = p;

                for (GList *l = queue->head, *next; l; l = next) {
                        Deferred *d = l->data;

                        next = l->next;
                        /* An Unlock or Refresh is answered in turn. */
                        if (!d->req || !streq(d->req->caller.name, sender))
                                continue;
                        g_queue_delete_link(queue, l);
                        b->n_deferred--;
                        manager_answer_request(d->req, -ECONNRESET, NULL, -1);
                        deferred_free(d);
                }
        }
}

unsigned cluster_backend_pending_count(const ClusterBackend *b) {
        return g_hash_table_size(b->pending) + b->n_deferred;
}

unsigned cluster_backend_pending_count_of_uid(const ClusterBackend *b, uid_t uid) {
        return GPOINTER_TO_UINT(g_hash_table_lookup(b->pending_per_uid, GUINT_TO_POINTER(uid)));
}

/* ---- holds ---------------------------------------------------------------- */

void cluster_backend_forget(ClusterBackend *b, Hold *h) {
        ClusterHold *ch = h->cluster_hold;

        unrecord_hold(b, h);
        /* NULL: an Unlock of it is under way and deletes the key. */
        if (!ch)
                return;
        h->cluster_hold = NULL;
        (void) cluster_locks_release(b->locks, ch, NULL, NULL);
}

static void deferred_answer(ClusterBackend *b, Deferred *d, int error, const char *error_message) {
        HoldCall *call = d->call;

        if (d->refresh)
                ((ClusterBackendRefreshDone) call->callback)(b->manager, error, error_message, 0, call->userdata);
        else
                ((ClusterBackendDone) call->callback)(b->manager, error, error_message, call->userdata);
}

/* Serves (and frees) a call that waited for its caller's Unlock, which
 * etcd answered with unlock_error. */
static void run_deferred(ClusterBackend *b, Deferred *d, int unlock_error) {
        HoldCall *call = d->call;
        Hold *h;

        if (d->req) {
                b->n_deferred--;
                cluster_backend_submit(b, d->req);
                deferred_free(d);
                return;
        }

        h = find_local_hold(b, call->resource, call->token);
        if (h && h->cluster_hold) {
                /* The Unlock failed: the hold is still there. */
                if (d->refresh)
                        cluster_backend_refresh(b, h, call->callback, call->userdata);
                else
                        cluster_backend_unlock(b, h, d->caller, call->callback, call->userdata);
        } else
                /* Gone with the caller's own Unlock: not locked, as far as
                 * its calls go (as on one host). If another host had taken
                 * it away first, the caller hears who holds it now. */
                deferred_answer(b, d, unlock_error >= 0 ? -ENOLCK : -ENOENT, NULL);
        hold_call_free(call);
        deferred_free(d);
}

/* Answers (and frees) a call that waited for an Unlock, at exit. */
static void abandon_deferred(ClusterBackend *b, Deferred *d) {
        if (d->req)
                manager_answer_request(d->req, -ECONNRESET, NULL, -1);
        else {
                deferred_answer(b, d, -ECONNRESET, "lockbusd is exiting");
                hold_call_free(d->call);
        }
        deferred_free(d);
}

/* What the caller asked after an Unlock goes on, in order, once etcd
 * answered it; behind the next Unlock of the hold if one of them starts
 * one (the first failed). */
static void run_after_unlock(ClusterBackend *b, const char *key, int unlock_error) {
        GQueue *queue = g_hash_table_lookup(b->unlocking, key), *next;
        Deferred *d;

        if (!queue)
                return;
        /* The table frees its key, not the queue. */
        g_hash_table_remove(b->unlocking, key);
        while ((d = g_queue_pop_head(queue))) {
                run_deferred(b, d, unlock_error);
                next = g_hash_table_lookup(b->unlocking, key);
                if (next) {
                        while ((d = g_queue_pop_head(queue)))
                                g_queue_push_tail(next, d);
                        break;
                }
        }
        g_queue_free(queue);
}

static void on_unlocked(ClusterLocks *c, int error, const char *error_message, void *userdata) {
        HoldCall *call = userdata;
        ClusterBackend *b = call->backend;
        ClusterBackendDone callback = call->callback;
        Hold *h = find_local_hold(b, call->resource, call->token);
        g_autofree char *hk = hold_key(call->resource, call->token);

        g_hash_table_remove(b->unlock_of_hold, hk);
        /* Its record went when the Unlock was sent. */
        if (error >= 0) {
                if (h)
                        manager_drop_hold(b->manager, h, "Released (unlocked)");
        } else if (error == -ENOENT) {
                /* Its key was gone already: broken by another host, or
                 * removed by hand. Not the caller's any more; the caller
                 * hears who holds it now. */
                if (h)
                        manager_drop_hold(b->manager, h, "Released (gone from etcd)");
        } else if (h) {
                /* Still held: it may be unlocked again. */
                h->cluster_hold = call->cluster_hold;
                record_hold(b, h);
        }

        callback(b->manager, error, error_message, call->userdata);
        run_after_unlock(b, call->order_key, error);
        hold_call_free(call);
}

/* Why a hold without its handle, and no Unlock of it under way, cannot be
 * unlocked or refreshed now. */
static const char *busy_reason(const ClusterBackend *b) {
        return b->stopping ? "lockbusd is stopping" : "a Break of it is under way";
}

/* An Unlock (caller: its sender) or Refresh (caller NULL) of a hold whose
 * key is being deleted waits for that in the Unlock's queue. Returns false
 * if no Unlock is under way (a Break is). */
static bool defer_behind_unlock(ClusterBackend *b, Hold *h, const char *caller, void *callback, void *userdata) {
        g_autofree char *hk = hold_key(h->resource, h->token);
        const char *key = g_hash_table_lookup(b->unlock_of_hold, hk);
        GQueue *queue = key ? g_hash_table_lookup(b->unlocking, key) : NULL;
        Deferred *d;

        if (!queue)
                return false;
        d = g_new0(Deferred, 1);
        d->call = hold_call_new(b, h, callback, userdata);
        d->refresh = !caller;
        d->caller = g_strdup(caller);
        g_queue_push_tail(queue, d);
        return true;
}

void cluster_backend_unlock(ClusterBackend *b, Hold *h, const char *caller, ClusterBackendDone callback,
                            void *userdata) {
        HoldCall *call;
        int r;

        if (!h->cluster_hold) {
                if (defer_behind_unlock(b, h, caller, callback, userdata))
                        return;
                return callback(b->manager, -EINPROGRESS, busy_reason(b), userdata);
        }

        call = hold_call_new(b, h, callback, userdata);
        h->cluster_hold = NULL;
        r = cluster_locks_release(b->locks, call->cluster_hold, on_unlocked, call);
        if (r < 0) {
                h->cluster_hold = call->cluster_hold;
                hold_call_free(call);
                return callback(b->manager, r, NULL, userdata);
        }

        call->order_key = order_key(caller, h->resource);
        if (!g_hash_table_contains(b->unlocking, call->order_key))
                g_hash_table_insert(b->unlocking, g_strdup(call->order_key), g_queue_new());
        g_hash_table_replace(b->unlock_of_hold, hold_key(h->resource, h->token), g_strdup(call->order_key));
        /* Before etcd deletes the key: dying in between must not leave a
         * record of a hold that is gone (the next daemon would tell its
         * holder it was lost). A key left instead is taken back as usual. */
        unrecord_hold(b, h);
}

static void on_refreshed(ClusterLocks *c, int error, const char *error_message, uint64_t expires_usec,
                         void *userdata) {
        HoldCall *call = userdata;
        ClusterBackend *b = call->backend;
        ClusterBackendRefreshDone callback = call->callback;
        Hold *h = find_local_hold(b, call->resource, call->token);

        if (error == -ENOENT && h) {
                /* Its key is gone (its own lease expired): so is the hold. */
                h->cluster_hold = NULL;
                manager_notify_hold_lost(b->manager, h, "lost");
                drop_hold(b, h, "Released (gone from etcd)");
        } else if (error >= 0 && h) {
                int r = manager_hold_set_expiry(b->manager, h, expires_usec);

                if (r < 0)
                        log_warning_errno(r, "Failed to re-arm the TTL timer for '%s', ignoring: %m", h->resource);
        }

        callback(b->manager, error, error_message, expires_usec, call->userdata);
        hold_call_free(call);
}

void cluster_backend_refresh(ClusterBackend *b, Hold *h, ClusterBackendRefreshDone callback, void *userdata) {
        HoldCall *call;
        int r;

        if (!h->cluster_hold) {
                if (defer_behind_unlock(b, h, NULL, callback, userdata))
                        return;
                return callback(b->manager, -EINPROGRESS, busy_reason(b), 0, userdata);
        }

        call = hold_call_new(b, h, callback, userdata);
        r = cluster_locks_refresh(b->locks, h->cluster_hold, on_refreshed, call);
        if (r < 0) {
                hold_call_free(call);
                callback(b->manager, r, NULL, 0, userdata);
        }
}

/* ---- break ----------------------------------------------------------------- */

typedef struct BreakCall {
        ClusterBackend *backend;
        char *resource;
        ClusterBackendBreakDone callback;
        void *userdata;
        unsigned n_pending;
        unsigned n_released;
        int error;
        char *error_message;
} BreakCall;

static void break_call_finish(BreakCall *call) {
        call->callback(call->backend->manager, call->error < 0 ? call->error : (int) call->n_released,
                       call->error_message, call->userdata);
        g_free(call->resource);
        g_free(call->error_message);
        g_free(call);
}

typedef struct BreakOne {
        BreakCall *call;
        uint64_t token;
} BreakOne;

static void on_broken_one(ClusterLocks *c, int error, const char *error_message, void *userdata) {
        BreakOne *one = userdata;
        BreakCall *call = one->call;
        ClusterBackend *b = call->backend;
        Hold *h = find_local_hold(b, call->resource, one->token);

        if (error >= 0 || error == -ENOENT) {
                if (h) {
                        h->cluster_hold = NULL;
                        manager_notify_hold_lost(b->manager, h, "broken");
                        drop_hold(b, h, "Released (broken)");
                }
                if (error >= 0)
                        call->n_released++;
        } else if (call->error == 0) {
                call->error = error;
                call->error_message = g_strdup(error_message);
        }

        g_free(one);
        if (--call->n_pending == 0)
                break_call_finish(call);
}

static void on_break_owner(ClusterLocks *c, int error, const char *error_message, const ClusterEntry * const *entries,
                           size_t n, size_t n_waiting, void *userdata) {
        BreakCall *call = userdata;
        ClusterBackend *b = call->backend;

        if (error < 0) {
                call->error = error;
                call->error_message = g_strdup(error_message);
                return break_call_finish(call);
        }

        /* One more, so that a release answered at once does not finish early. */
        call->n_pending = 1;
        for (size_t i = 0; i < n; i++) {
                Hold *h = find_local_hold(b, call->resource, entries[i]->token);
                ClusterHold *ch = NULL;
                BreakOne *one;
                int r;

                if (h && h->cluster_hold) {
                        ch = h->cluster_hold;
                        h->cluster_hold = NULL;
                } else if (!h) {
                        r = cluster_locks_adopt(b->locks, entries[i], &ch);
                        if (r < 0) {
                                if (call->error == 0)
                                        call->error = r;
                                continue;
                        }
                } else
                        continue; /* an Unlock of it is under way */

                one = g_new0(BreakOne, 1);
                one->call = call;
                one->token = entries[i]->token;
                call->n_pending++;
                r = cluster_locks_release(b->locks, ch, on_broken_one, one);
                if (r < 0) {
                        call->n_pending--;
                        g_free(one);
                        if (call->error == 0)
                                call->error = r;
                }
        }
        if (--call->n_pending == 0)
                break_call_finish(call);
}

void cluster_backend_break(ClusterBackend *b, const char *resource, ClusterBackendBreakDone callback,
                           void *userdata) {
        BreakCall *call = g_new0(BreakCall, 1);
        int r;

        call->backend = b;
        call->resource = g_strdup(resource);
        call->callback = callback;
        call->userdata = userdata;

        r = cluster_locks_owner(b->locks, resource, on_break_owner, call);
        if (r < 0) {
                call->error = r;
                break_call_finish(call);
        }
}

/* ---- reading --------------------------------------------------------------- */

typedef struct QueryCall {
        ClusterBackend *backend;
        ClusterBackendQueryDone callback;
        void *userdata;
} QueryCall;

static void on_queried(ClusterLocks *c, int error, const char *error_message, const ClusterEntry * const *entries,
                       size_t n, size_t n_waiting, void *userdata) {
        g_autofree QueryCall *call = userdata;
        ClusterBackend *b = call->backend;
        g_autoptr(GPtrArray) holds = g_ptr_array_new_with_free_func(hold_destroy);

        for (size_t i = 0; error >= 0 && i < n; i++) {
                Hold *h = hold_from_entry(b, entries[i]);

                /* Another host's unique names mean nothing on this bus. */
                if (h->hostname && h->sender) {
                        char *s = g_strdup_printf("%s@%s", h->sender, h->hostname);

                        g_free(h->sender);
                        h->sender = s;
                }
                g_ptr_array_add(holds, h);
        }

        call->callback(b->manager, error, error_message, error < 0 ? NULL : holds, call->userdata);
}

void cluster_backend_query(ClusterBackend *b, const char *resource, ClusterBackendQueryDone callback,
                           void *userdata) {
        QueryCall *call = g_new0(QueryCall, 1);
        int r;

        call->backend = b;
        call->callback = callback;
        call->userdata = userdata;

        r = resource ? cluster_locks_owner(b->locks, resource, on_queried, call)
                     : cluster_locks_list(b->locks, on_queried, call);
        if (r < 0) {
                g_free(call);
                callback(b->manager, r, NULL, NULL, userdata);
        }
}

/* ---- the lease, start and stop ---------------------------------------------- */

static void on_lease_lost(ClusterLocks *c, ClusterHold * const *holds, size_t n, void *userdata) {
        ClusterBackend *b = userdata;

        log_warning("Lost the etcd lease (no answer from %s within its TTL): %zu hold(s) of this daemon "
                    "may be granted to others now, dropping them.", b->where, n);
        for (size_t i = 0; i < n; i++) {
                Hold *h = cluster_hold_get_userdata(holds[i]);

                if (!h)
                        continue;
                h->cluster_hold = NULL;
                manager_notify_hold_lost(b->manager, h, "lost");
                drop_hold(b, h, "Lost (etcd lease expired)");
        }
}

/* Someone else deleted the key of one of this daemon's holds (another
 * host's Break, etcdctl del): it may be granted elsewhere now. */
static void on_hold_removed(ClusterLocks *c, ClusterHold *ch, void *userdata) {
        ClusterBackend *b = userdata;
        Hold *h = cluster_hold_get_userdata(ch);

        if (!h || h->cluster_hold != ch)
                return;
        log_warning("The hold on '%s' (token %" PRIu64 ") was removed from %s by someone else, dropping it.",
                    h->resource, h->token, b->where);
        h->cluster_hold = NULL;
        manager_notify_hold_lost(b->manager, h, "broken");
        drop_hold(b, h, "Released (removed from etcd)");
}

static int on_lost_defer(sd_event_source *s, void *userdata) {
        ClusterBackend *b = userdata;

        b->lost_defer = sd_event_source_disable_unref(b->lost_defer);
        for (guint i = 0; b->lost_at_start && i < b->lost_at_start->len; i++)
                manager_notify_hold_lost(b->manager, b->lost_at_start->pdata[i], "lost");
        g_clear_pointer(&b->lost_at_start, g_ptr_array_unref);
        return 0;
}

/* The adoption is over once its list was gone through and every move
 * answered. Holders of moves that found their key gone are told from the
 * loop, once the bus side is set up (LockLost is not sent before). */
static void adopt_check_done(ClusterBackend *b) {
        int r;

        if (!b->listed || b->n_moving > 0)
                return;
        if (b->lost_at_start && b->lost_at_start->len > 0 && !b->lost_defer) {
                r = sd_event_add_defer(b->manager->event, &b->lost_defer, on_lost_defer, b);
                if (r < 0)
                        log_warning_errno(r, "Failed to schedule LockLost for holds lost at start, ignoring: %m");
        }
        b->adopted = true;
        b->start_done = true;
}

/* A connection hold being moved onto this daemon's lease at start. */
typedef struct MoveCall {
        ClusterBackend *backend;
        Hold *hold;                     /* as read: told LockLost if its key is gone */
        int fd;                         /* an fd hold's read end from the fd store, else -1 */
} MoveCall;

static void move_call_free(MoveCall *mc) {
        hold_free(mc->hold);
        if (mc->fd >= 0)
                close(mc->fd);
        g_free(mc);
}

/* A hold of an earlier run that did not come back: the fd store forgets
 * its fd (takes fd). */
static void forget_stored_fd(const Hold *old, int fd) {
        if (fd < 0)
                return;
        fdstore_remove(old->token);
        close(fd);
}

/* A connection hold of an earlier run of this daemon whose holder is still
 * on the bus, or an fd hold whose fd came back from the fd store, is on
 * this daemon's lease now (or its key was gone). */
static void on_moved(ClusterLocks *c, int error, const char *error_message, ClusterHold *ch, void *userdata) {
        MoveCall *mc = userdata;
        ClusterBackend *b = mc->backend;
        _cleanup_(hold_freep) Hold *old = TAKE_PTR(mc->hold);
        int fd = TAKE_FD(mc->fd);
        const ClusterEntry *e;
        Hold *h;
        int r;

        g_ptr_array_remove_fast(b->moves, mc);
        g_assert(b->n_moving > 0);
        b->n_moving--;

        if (error < 0) {
                /* -ENOENT: its old lease expired first, another host may hold it now. */
                if (error != -ENOENT)
                        log_warning_errno(error, "Failed to take back the hold on '%s' from %s, it ends with "
                                          "its old lease: %s", old->resource, b->where,
                                          error_message ?: strerror(-error));
                forget_stored_fd(old, fd);
                lost_at_start(b, TAKE_PTR(old));
                return adopt_check_done(b);
        }

        e = cluster_hold_get_entry(ch);
        if (fd < 0 && peer_registry_watch(b->manager->peers, e->sender) <= 0) {
                /* It left while the key was being moved. */
                log_notice("%s left while its hold on '%s' was taken back, releasing it.", e->sender, e->resource);
                unrecord_hold(b, old);
                (void) cluster_locks_release(c, ch, NULL, NULL);
                return adopt_check_done(b);
        }

        h = hold_from_entry(b, e);
        h->cluster_hold = ch;
        cluster_hold_set_userdata(ch, h);
        /* An fd hold's fd stays in the fd store, as it came. */
        h->in_fd_store = fd >= 0;
        r = manager_take_hold(b->manager, h, fd, NULL, "Restored");
        if (r < 0) {
                log_warning_errno(r, "Failed to take back the hold on '%s', releasing it: %m", old->resource);
                (void) cluster_locks_release(c, ch, NULL, NULL);
                if (old->scope == HOLD_SCOPE_FD)
                        fdstore_remove(old->token);
                lost_at_start(b, TAKE_PTR(old));
        } else if (fd < 0)
                record_hold(b, h);
        adopt_check_done(b);
}

/* Moves a hold of an earlier run of this daemon onto this daemon's lease
 * (takes fd: its read end for an fd hold, else -1). */
static int move_onto_lease(ClusterBackend *b, const ClusterEntry *e, int fd) {
        MoveCall *mc = g_new0(MoveCall, 1);
        int r;

        mc->backend = b;
        mc->fd = fd;
        r = cluster_locks_adopt_onto_lease(b->locks, e, on_moved, mc);
        if (r < 0) {
                mc->fd = -1;
                g_free(mc);
                return r;
        }
        mc->hold = hold_from_entry(b, e);
        g_ptr_array_add(b->moves, mc);
        b->n_moving++;
        return 0;
}

/* Deletes the key of a hold of an earlier run that does not come back. */
static void drop_entry(ClusterBackend *b, const ClusterEntry *e, const char *why) {
        ClusterHold *ch = NULL;
        int r;

        log_notice("Dropping hold on '%s' (token %" PRIu64 ", uid " UID_FMT ", %s): %s.", e->resource, e->token,
                   e->uid, strempty(e->sender), why);
        r = cluster_locks_adopt(b->locks, e, &ch);
        if (r >= 0)
                r = cluster_locks_release(b->locks, ch, NULL, NULL);
        if (r < 0)
                log_warning_errno(r, "Failed to delete the hold on '%s' from %s, it ends with its old lease: %m",
                                  e->resource, b->where);
}

/* An fd hold of an earlier run of this daemon: kept if its fd came back
 * from systemd's fd store, else deleted at once (its pipe closed with that
 * run, its holder saw that). */
static void adopt_fd_hold(ClusterBackend *b, const ClusterEntry *e) {
        g_autofree gpointer key = NULL;
        gpointer fd;
        int r;

        if (!b->stored_fds || !g_hash_table_steal_extended(b->stored_fds, &e->token, &key, &fd))
                return drop_entry(b, e, "its fd did not survive the restart (no systemd fd store)");
        r = move_onto_lease(b, e, GPOINTER_TO_INT(fd));
        if (r < 0) {
                log_warning_errno(r, "Failed to take back the hold on '%s': %m", e->resource);
                close(GPOINTER_TO_INT(fd));
                fdstore_remove(e->token);
                drop_entry(b, e, "it could not be moved onto this daemon's lease");
        }
}

/* A connection hold of an earlier run of this daemon on this machine: kept
 * if its holder is still on this bus, else deleted at once. */
static void adopt_connection_hold(ClusterBackend *b, const ClusterEntry *e) {
        Manager *m = b->manager;
        const char *drop = NULL;
        int r;

        if (!e->bus_id || e->bus_id[0] == '\0' || !streq(e->bus_id, m->bus_id))
                drop = "its connection is not on this bus (another bus instance, or a direct connection)";
        else {
                r = peer_registry_watch(m->peers, e->sender);
                if (r < 0) {
                        log_warning_errno(r, "Failed to check whether %s is still connected: %m", e->sender);
                        drop = "its connection could not be checked";
                } else if (r == 0)
                        drop = "its connection is gone";
        }

        if (!drop) {
                r = move_onto_lease(b, e, -1);
                if (r >= 0)
                        return;
                log_warning_errno(r, "Failed to take back the hold on '%s': %m", e->resource);
                drop = "it could not be moved onto this daemon's lease";
        }

        /* Told if it is on this bus after all (its move failed). */
        lost_at_start(b, hold_from_entry(b, e));
        drop_entry(b, e, drop);
}

static void settle_stored_fds(ClusterBackend *b) {
        GHashTableIter iter;
        gpointer token;

        if (!b->stored_fds)
                return;
        g_hash_table_iter_init(&iter, b->stored_fds);
        while (g_hash_table_iter_next(&iter, &token, NULL))
                fdstore_remove(*(uint64_t *) token);
        g_clear_pointer(&b->stored_fds, g_hash_table_destroy);
}

/* Takes back this machine's persistent holds, granted by an earlier run,
 * its connection holds whose holder is still on the bus, and its fd holds
 * whose fd came back from systemd's fd store. */
static void on_adopt_list(ClusterLocks *c, int error, const char *error_message, const ClusterEntry * const *entries,
                          size_t n, size_t n_waiting, void *userdata) {
        ClusterBackend *b = userdata;
        unsigned adopted = 0;

        if (error < 0) {
                b->start_done = true;
                log_error_errno(error, "Failed to read the holds of this machine from %s: %s", b->where,
                                error_message ?: strerror(-error));
                return;
        }

        for (size_t i = 0; i < n; i++) {
                const ClusterEntry *e = entries[i];
                ClusterHold *ch = NULL;
                Hold *h;
                int r;

                if (!streq(e->machine_id, b->machine_id) || find_local_hold(b, e->resource, e->token) ||
                    streq(e->instance, cluster_locks_get_instance(b->locks)))
                        continue;
                /* Volatile holds of another daemon of this machine are its own. */
                if (e->scope != HOLD_SCOPE_PERSISTENT && !cluster_locks_is_earlier_run(b->locks, e))
                        continue;
                if (e->scope == HOLD_SCOPE_FD) {
                        adopt_fd_hold(b, e);
                        continue;
                }
                if (e->scope == HOLD_SCOPE_CONNECTION) {
                        /* Its key is there: not lost meanwhile. */
                        if (b->records)
                                g_hash_table_remove(b->records, &e->token);
                        adopt_connection_hold(b, e);
                        continue;
                }

                r = cluster_locks_adopt(b->locks, e, &ch);
                if (r < 0) {
                        log_warning_errno(r, "Failed to take back the hold on '%s', ignoring: %m", e->resource);
                        continue;
                }
                h = hold_from_entry(b, e);
                h->cluster_hold = ch;
                cluster_hold_set_userdata(ch, h);
                r = manager_take_hold(b->manager, h, -1, NULL, "Restored");
                if (r < 0) {
                        log_warning_errno(r, "Failed to take back the hold on '%s', ignoring: %m", e->resource);
                        continue;
                }
                adopted++;
        }
        log_info("Serving locks from %s; %u persistent hold(s) of this machine taken back, %u connection or fd "
                 "hold(s) being taken back.", b->where, adopted, b->n_moving);
        settle_records(b);
        /* fds of holds that are gone: systemd forgets them, the table closes them. */
        settle_stored_fds(b);
        b->listed = true;
        adopt_check_done(b);
}

/* Kept for the calls that fail for want of a lease. When etcd turned this
 * daemon away (a wrong user or password), waiting for it at start is
 * pointless: the daemon serves at once, and locking fails with etcd's
 * reason until it is let in. */
static void on_grant_failed(ClusterLocks *c, int error, const char *error_message, void *userdata) {
        ClusterBackend *b = userdata;

        g_free(b->grant_error);
        b->grant_error = g_strdup_printf("no lease: %s", error_message ?: strerror(-error));
        if (b->start_done || error != -EACCES)
                return;
        log_error("%s refuses this daemon (%s); serving, locking fails until that is fixed.", b->where,
                  strempty(error_message));
        b->start_done = true;
}

static void on_lease_ready(ClusterLocks *c, int64_t lease_id, void *userdata) {
        ClusterBackend *b = userdata;
        int r;

        log_info("Holding etcd lease %" PRIx64 " at %s.", (uint64_t) lease_id, b->where);
        g_clear_pointer(&b->grant_error, g_free);
        if (b->adopted)
                return;
        r = cluster_locks_list_at_start(b->locks, on_adopt_list, b);
        if (r < 0) {
                log_error_errno(r, "Failed to read the holds of this machine from %s: %m", b->where);
                b->start_done = true;
        }
}

static void run_until(sd_event *event, const bool *flag, uint64_t usec) {
        uint64_t deadline = 0, now = 0;

        (void) sd_event_now(event, CLOCK_MONOTONIC, &now);
        deadline = now + usec;
        while (!*flag) {
                (void) sd_event_now(event, CLOCK_MONOTONIC, &now);
                if (now >= deadline || sd_event_run(event, deadline - now) < 0)
                        break;
        }
}

int cluster_backend_new(Manager *m, const ClusterBackendConfig *config, ClusterBackend **ret) {
        ClusterBackend *b;
        ClusterHost host = {
                .machine_id = config->machine_id,
                .hostname = config->hostname,
                /* Another lockbusd of this machine (--user) serves another bus. */
                .daemon_id = m->bus_id,
        };
        static const ClusterLocksCallbacks callbacks = {
                .ready = on_lease_ready,
                .grant_failed = on_grant_failed,
                .lease_lost = on_lease_lost,
                .hold_removed = on_hold_removed,
        };
        g_autofree char *list = NULL;
        int r;

        b = g_new0(ClusterBackend, 1);
        b->manager = m;
        b->machine_id = g_strdup(config->machine_id);
        b->pending = g_hash_table_new_full(g_direct_hash, g_direct_equal, (GDestroyNotify) pending_free, NULL);
        b->pending_per_uid = g_hash_table_new(g_direct_hash, g_direct_equal);
        b->unlocking = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        b->unlock_of_hold = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        b->moves = g_ptr_array_new_with_free_func((GDestroyNotify) move_call_free);
        list = g_strjoinv(", ", config->endpoints);
        b->where = g_strdup_printf("etcd (%s)", list);

        r = etcd_client_new(m->event, config->endpoints, 0, &b->etcd);
        if (r < 0) {
                log_error_errno(r, "Invalid etcd endpoints %s: %m", list);
                goto fail;
        }
        r = etcd_client_set_tls(b->etcd, &(EtcdTlsOptions) {
                        .ca_file = config->ca_file,
                        .cert_file = config->cert_file,
                        .key_file = config->key_file,
                });
        if (r < 0) {
                log_error_errno(r, "Invalid TLS files for %s (a client certificate needs its key): %m", list);
                goto fail;
        }
        r = etcd_client_set_auth(b->etcd, config->user, config->password);
        if (r < 0) {
                log_error_errno(r, "Invalid etcd credentials for %s (a user needs its password): %m", list);
                goto fail;
        }
        r = cluster_locks_new(m->event, b->etcd, config->prefix, &host, config->lease_ttl_usec, &b->locks);
        if (r < 0) {
                log_error_errno(r, "Failed to set up cluster locks under '%s': %m", config->prefix);
                goto fail;
        }
        load_records(b);
        b->stored_fds = fdstore_take();
        r = cluster_locks_start(b->locks, &callbacks, b);
        if (r < 0) {
                log_error_errno(r, "Failed to start the etcd lease: %m");
                goto fail;
        }

        /* Serve with this machine's holds back, or without etcd for now
         * (calls fail with Storage, the lease is retried). */
        run_until(m->event, &b->start_done, CLUSTER_START_WAIT_USEC);
        if (!b->start_done)
                log_warning("No answer from %s yet; serving, locking fails until it answers.", b->where);

        *ret = b;
        return 0;

fail:
        cluster_backend_free(b);
        return r;
}

static void on_stopped(ClusterLocks *c, int error, void *userdata) {
        ClusterBackend *b = userdata;

        if (error < 0)
                log_warning_errno(error, "Failed to revoke the etcd lease, its holds end after its TTL: %m");
        b->stopped = true;
}

void cluster_backend_stop(ClusterBackend *b) {
        g_autoptr(GPtrArray) holds = NULL;
        unsigned n_kept = 0;

        if (!b || !b->locks)
                return;
        b->stopping = true;

        /* Connection holds, and fd holds whose fd is in systemd's fd store,
         * stay on the lease for the next daemon of this machine (a
         * restart), as in directory mode: it takes back those whose holder
         * is still connected or whose fd comes back, or tells them if it
         * comes after the TTL. Other fd holds end now (their pipes close
         * with us): their keys are deleted. Without holds to keep the lease
         * is revoked. */
        holds = lock_table_list(b->manager->table);
        for (guint i = 0; i < holds->len; i++) {
                Hold *h = holds->pdata[i];

                if (h->cluster_hold && (h->scope == HOLD_SCOPE_CONNECTION || h->in_fd_store))
                        n_kept++;
        }
        for (guint i = 0; i < holds->len; i++) {
                Hold *h = holds->pdata[i];
                ClusterHold *ch = h->cluster_hold;

                if (hold_is_persistent(h))
                        continue;
                /* The handles on the lease go with the stop. */
                h->cluster_hold = NULL;
                if (n_kept > 0 && h->scope == HOLD_SCOPE_FD && !h->in_fd_store && ch)
                        (void) cluster_locks_release(b->locks, ch, NULL, NULL);
        }
        if (n_kept > 0)
                log_info("Leaving %u connection or fd hold(s) on the etcd lease for the next lockbusd of this "
                         "machine; they end after its TTL unless one takes them back.", n_kept);
        if (cluster_locks_stop(b->locks, n_kept > 0, on_stopped, b) < 0)
                return;
        run_until(b->manager->event, &b->stopped, CLUSTER_STOP_WAIT_USEC);
}

ClusterBackend *cluster_backend_free(ClusterBackend *b) {
        GHashTableIter iter;
        gpointer p;

        if (!b)
                return NULL;
        /* Requests still under way go with the daemon: their keys with its
         * lease, their callers unanswered (the bus tells them). */
        g_hash_table_iter_init(&iter, b->pending);
        while (g_hash_table_iter_next(&iter, &p, NULL)) {
                AcquireRequest *req = ((Pending *) p)->req;

                g_hash_table_iter_remove(&iter);
                manager_answer_request(req, -ECONNRESET, NULL, -1);
        }
        g_hash_table_iter_init(&iter, b->unlocking);
        while (g_hash_table_iter_next(&iter, NULL, &p)) {
                GQueue *queue = p;
                Deferred *d;

                while ((d = g_queue_pop_head(queue)))
                        abandon_deferred(b, d);
                g_queue_free(queue);
        }
        g_hash_table_destroy(b->unlocking);
        g_hash_table_destroy(b->unlock_of_hold);
        b->locks = cluster_locks_free(b->locks);
        b->etcd = etcd_client_free(b->etcd);
        g_hash_table_destroy(b->pending);
        g_hash_table_destroy(b->pending_per_uid);
        g_ptr_array_unref(b->moves);
        b->lost_defer = sd_event_source_disable_unref(b->lost_defer);
        g_clear_pointer(&b->lost_at_start, g_ptr_array_unref);
        g_clear_pointer(&b->records, g_hash_table_destroy);
        g_clear_pointer(&b->stored_fds, g_hash_table_destroy);
        g_free(b->grant_error);
        g_free(b->where);
        g_free(b->machine_id);
        g_free(b);
        return NULL;
}

const char *cluster_backend_where(const ClusterBackend *b) {
        return b->where;
}
