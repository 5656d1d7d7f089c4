/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The cluster lock algorithm (service/cluster-locks.[ch]) against a real
 * 3-member etcd 3.4 cluster: two ClusterLocks instances with different
 * machine ids act as two hosts, on one sd-event loop; each case has a key
 * prefix of its own. Every case waits on events (a callback, a watch event
 * on the case's prefix, the instance's counters moving); a case that shows
 * that something does NOT happen runs the loop for a moment
 * (test_run_for). Cases: exclusion across hosts and the conflict naming
 * holder and host; shared holds across hosts; FIFO over two hosts; no
 * writer starvation; adjacent shared waiters granted together; a release
 * waking only the waiter behind it; timeout; cancel of a middle waiter;
 * not re-entrant; tokens; a stale handle; a foreign key; persistent holds
 * outliving a crashed instance whose connection holds go after the TTL; a
 * persistent TTL and Refresh; a connection hold of a crashed instance
 * moved onto the next one's lease (token and place kept; -ENOENT once its
 * key is gone); a clean stop; Owner and List; a revoked
 * lease; an acquire whose answer is lost (a proxy drops it); holds whose
 * keys someone else deleted (a Break from the other host, a delete by
 * hand) reported, and the instance's own deletes not; such a delete
 * found by a read when the watch that missed it cannot resume (compacted).
 * The cases that break a cluster come last: one member killed (of the shared
 * cluster), and every member killed (a cluster of its own). */

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "cluster-locks.h"
#include "etcd-sync.h"
#include "etcd-test.h"
#include "etcd.h"

#define SEC G_USEC_PER_SEC
#define MSEC (G_USEC_PER_SEC / 1000U)
#define WAIT_USEC (20U * SEC)
#define MACHINE_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define MACHINE_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define MACHINE_C "cccccccccccccccccccccccccccccccc"

static EtcdCluster *cluster;

/* ---- one host ------------------------------------------------------------ */

typedef struct Host {
        EtcdClient *etcd;
        ClusterLocks *locks;
        bool ready;
        unsigned n_ready;
        unsigned n_lost;
        size_t n_lost_holds;
        GPtrArray *lost_resources;      /* char * */
        uint64_t lost_at;
        unsigned n_removed;
        GPtrArray *removed_resources;   /* char * */
        GPtrArray *removed_tokens;      /* uint64_t as pointer-sized ints */
} Host;

static void on_ready(ClusterLocks *c, int64_t lease, void *userdata) {
        Host *h = userdata;

        g_assert_cmpint(lease, !=, 0);
        h->ready = true;
        h->n_ready++;
}

static void on_lease_lost(ClusterLocks *c, ClusterHold * const *holds, size_t n, void *userdata) {
        Host *h = userdata;

        h->n_lost++;
        h->n_lost_holds += n;
        h->lost_at = test_now_usec();
        for (size_t i = 0; i < n; i++)
                g_ptr_array_add(h->lost_resources, g_strdup(cluster_hold_get_entry(holds[i])->resource));
}

static void on_hold_removed(ClusterLocks *c, ClusterHold *hold, void *userdata) {
        Host *h = userdata;
        const ClusterEntry *e = cluster_hold_get_entry(hold);

        h->n_removed++;
        g_ptr_array_add(h->removed_resources, g_strdup(e->resource));
        g_ptr_array_add(h->removed_tokens, GSIZE_TO_POINTER((gsize) e->token));
}

static void host_start(Host *h, sd_event *e, char **endpoints, const char *prefix, const char *machine_id,
                       const char *hostname, uint64_t ttl) {
        static const ClusterLocksCallbacks callbacks = {
                .ready = on_ready,
                .lease_lost = on_lease_lost,
                .hold_removed = on_hold_removed,
        };
        ClusterHost host = {
                .machine_id = machine_id,
                .hostname = hostname,
        };

        *h = (Host) {
                .lost_resources = g_ptr_array_new_with_free_func(g_free),
                .removed_resources = g_ptr_array_new_with_free_func(g_free),
                .removed_tokens = g_ptr_array_new(),
        };
        g_assert_cmpint(etcd_client_new(e, endpoints, 10 * SEC, &h->etcd), ==, 0);
        g_assert_cmpint(cluster_locks_new(e, h->etcd, prefix, &host, ttl, &h->locks), ==, 0);
        g_assert_cmpint(cluster_locks_start(h->locks, &callbacks, h), ==, 0);
        test_run_until(e, &h->ready, WAIT_USEC);
}

static void host_stop(Host *h) {
        h->locks = cluster_locks_free(h->locks);
        h->etcd = etcd_client_free(h->etcd);
        if (h->lost_resources)
                g_ptr_array_unref(h->lost_resources);
        h->lost_resources = NULL;
        if (h->removed_resources)
                g_ptr_array_unref(h->removed_resources);
        h->removed_resources = NULL;
        if (h->removed_tokens)
                g_ptr_array_unref(h->removed_tokens);
        h->removed_tokens = NULL;
}

/* ---- the fixture: hosts a and b on the shared cluster ------------------------ */

typedef struct Fixture {
        sd_event *event;
        char *prefix;
        Host a, b;
        SyncResult r;
        unsigned order;                 /* grants so far, for FIFO checks */
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer data) {
        g_assert_cmpint(sd_event_new(&f->event), >=, 0);
        f->prefix = test_key("lockbus");
        if (!cluster)
                return;
        host_start(&f->a, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_A, "host-a", 5 * SEC);
        host_start(&f->b, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_B, "host-b", 5 * SEC);
}

static void fixture_teardown(Fixture *f, gconstpointer data) {
        host_stop(&f->a);
        host_stop(&f->b);
        sync_result_clear(&f->r);
        g_free(f->prefix);
        sd_event_unref(f->event);
}

/* ---- acquire, release, query ------------------------------------------------- */

typedef struct Acq {
        Fixture *f;
        ClusterAcquire *handle;
        bool done;
        int error;
        char *message;
        ClusterHold *hold;
        ClusterEntry blocker;
        bool has_blocker;
        unsigned order;
        uint64_t started, finished;
} Acq;

static void acq_clear(Acq *q) {
        g_free(q->message);
        cluster_entry_clear(&q->blocker);
        *q = (Acq) {};
}

static void on_acquired(ClusterAcquire *a, int error, const char *error_message, ClusterHold *hold,
                        const ClusterEntry *blocker, void *userdata) {
        Acq *q = userdata;

        g_assert_false(q->done);
        q->done = true;
        q->handle = NULL;
        q->error = error;
        q->message = g_strdup(error_message);
        q->hold = hold;
        q->finished = test_now_usec();
        if (error == 0) {
                g_assert_nonnull(hold);
                q->order = ++q->f->order;
        } else {
                g_assert_null(hold);
                g_assert_nonnull(error_message);
        }
        if (blocker) {
                g_assert_true(error == -EBUSY || error == -EALREADY);
                q->has_blocker = true;
                q->blocker = (ClusterEntry) {
                        .key = g_strdup(blocker->key),
                        .resource = g_strdup(blocker->resource),
                        .mode = blocker->mode,
                        .scope = blocker->scope,
                        .token = blocker->token,
                        .uid = blocker->uid,
                        .pid = blocker->pid,
                        .comm = g_strdup(blocker->comm),
                        .sender = g_strdup(blocker->sender),
                        .machine_id = g_strdup(blocker->machine_id),
                        .hostname = g_strdup(blocker->hostname),
                        .instance = g_strdup(blocker->instance),
                        .owner = g_strdup(blocker->owner),
                        .description = g_strdup(blocker->description),
                };
        }
}

typedef struct Req {
        LockMode mode;
        HoldScope scope;
        uint64_t timeout;
        uint64_t ttl;
        uid_t uid;
        pid_t pid;
        const char *comm;
        const char *sender;
        const char *bus_id;
        const char *description;
} Req;

static void acq_start(Fixture *f, Host *h, const char *resource, const Req *req, Acq *q) {
        ClusterRequest r = {
                .resource = resource,
                .mode = req->mode,
                .scope = req->scope,
                .timeout_usec = req->timeout,
                .ttl_usec = req->ttl,
                .uid = req->uid ?: 1000,
                .pid = req->pid ?: 4242,
                .comm = req->comm ?: "psql",
                .sender = req->sender ?: ":1.42",
                .bus_id = req->bus_id,
                .description = req->description,
        };

        *q = (Acq) {
                .f = f,
                .started = test_now_usec(),
        };
        g_assert_cmpint(cluster_locks_acquire(h->locks, &r, on_acquired, q, &q->handle), ==, 0);
        g_assert_false(q->done);
}

static int acq_sync(Fixture *f, Host *h, const char *resource, const Req *req, Acq *q) {
        acq_start(f, h, resource, req, q);
        test_run_until(f->event, &q->done, WAIT_USEC);
        return q->error;
}

typedef struct Done {
        bool done;
        int error;
        char *message;
        uint64_t expires;
} Done;

static void on_done(ClusterLocks *c, int error, const char *error_message, void *userdata) {
        Done *d = userdata;

        g_assert_false(d->done);
        d->done = true;
        d->error = error;
        d->message = g_strdup(error_message);
}

static int release_sync(Fixture *f, Host *h, ClusterHold *hold) {
        Done d = {};

        g_assert_cmpint(cluster_locks_release(h->locks, hold, on_done, &d), ==, 0);
        test_run_until(f->event, &d.done, WAIT_USEC);
        g_free(d.message);
        return d.error;
}

static void on_refreshed(ClusterLocks *c, int error, const char *error_message, uint64_t expires, void *userdata) {
        Done *d = userdata;

        g_assert_false(d->done);
        d->done = true;
        d->error = error;
        d->message = g_strdup(error_message);
        d->expires = expires;
}

typedef struct Query {
        bool done;
        int error;
        GPtrArray *entries;             /* ClusterEntry * copies */
        size_t n_waiting;
} Query;

static void entry_free_test(ClusterEntry *e) {
        cluster_entry_clear(e);
        g_free(e);
}

static void query_clear(Query *q) {
        if (q->entries)
                g_ptr_array_unref(q->entries);
        *q = (Query) {};
}

static void on_query(ClusterLocks *c, int error, const char *error_message, const ClusterEntry * const *entries,
                     size_t n, size_t n_waiting, void *userdata) {
        Query *q = userdata;

        g_assert_false(q->done);
        q->done = true;
        q->error = error;
        q->n_waiting = n_waiting;
        q->entries = g_ptr_array_new_with_free_func((GDestroyNotify) entry_free_test);
        for (size_t i = 0; i < n; i++) {
                const ClusterEntry *e = entries[i];
                ClusterEntry *copy = g_new0(ClusterEntry, 1);

                *copy = (ClusterEntry) {
                        .key = g_strdup(e->key),
                        .resource = g_strdup(e->resource),
                        .mode = e->mode,
                        .scope = e->scope,
                        .token = e->token,
                        .lease = e->lease,
                        .uid = e->uid,
                        .pid = e->pid,
                        .comm = g_strdup(e->comm),
                        .sender = g_strdup(e->sender),
                        .bus_id = g_strdup(e->bus_id),
                        .machine_id = g_strdup(e->machine_id),
                        .hostname = g_strdup(e->hostname),
                        .instance = g_strdup(e->instance),
                        .owner = g_strdup(e->owner),
                        .description = g_strdup(e->description),
                        .since_usec = e->since_usec,
                        .ttl_usec = e->ttl_usec,
                        .expires_usec = e->expires_usec,
                        .is_valid = e->is_valid,
                };
                g_ptr_array_add(q->entries, copy);
        }
}

static const ClusterEntry *query_entry(const Query *q, unsigned i) {
        g_assert_cmpuint(i, <, q->entries->len);
        return q->entries->pdata[i];
}

static int owner_sync(Fixture *f, Host *h, const char *resource, Query *q) {
        query_clear(q);
        g_assert_cmpint(cluster_locks_owner(h->locks, resource, on_query, q), ==, 0);
        test_run_until(f->event, &q->done, WAIT_USEC);
        return q->error;
}

static int list_sync(Fixture *f, Host *h, Query *q) {
        query_clear(q);
        g_assert_cmpint(cluster_locks_list(h->locks, on_query, q), ==, 0);
        test_run_until(f->event, &q->done, WAIT_USEC);
        return q->error;
}

/* The number of keys (granted or waiting) of a resource, read from etcd. */
static int64_t count_keys(Fixture *f, Host *h, const char *resource) {
        g_autofree char *escaped = cluster_resource_escape(resource);
        g_autofree char *key = g_strdup_printf("%s/locks/%s/", f->prefix, escaped);
        EtcdRangeOptions options = { .prefix = true, .count_only = true };

        g_assert_cmpint(sync_range(f->event, h->etcd, key, strlen(key), &options, &f->r), ==, 0);
        return f->r.count;
}

/* ---- a watch that counts the keys created and deleted under the prefix ---- */

typedef struct KeyCounter {
        EtcdWatch *watch;
        bool created;
        unsigned n_created;
        unsigned n_deleted;
        GHashTable *keys;               /* created so far */
} KeyCounter;

static void counter_created(EtcdWatch *w, int64_t revision, void *userdata) {
        KeyCounter *k = userdata;

        k->created = true;
}

static void counter_event(EtcdWatch *w, const EtcdEvent *event, void *userdata) {
        KeyCounter *k = userdata;

        if (event->type == ETCD_EVENT_DELETE)
                k->n_deleted++;
        else if (event->kv.version == 1) {
                k->n_created++;
                g_hash_table_add(k->keys, g_strndup(event->kv.key, event->kv.key_size));
        }
}

static void counter_error(EtcdWatch *w, int error, const char *error_message, void *userdata) {
        g_error("the test's watch ended: %s", error_message);
}

static void counter_start_on(Fixture *f, KeyCounter *k, EtcdClient *client) {
        static const EtcdWatchCallbacks callbacks = {
                .created = counter_created,
                .event = counter_event,
                .error = counter_error,
        };
        EtcdWatchOptions options = { .prefix = true };

        *k = (KeyCounter) {
                .keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
        };
        g_assert_cmpint(etcd_watch(client, f->prefix, strlen(f->prefix), &options, &callbacks, k, &k->watch), ==, 0);
        test_run_until(f->event, &k->created, WAIT_USEC);
}

static void counter_start(Fixture *f, KeyCounter *k) {
        counter_start_on(f, k, f->a.etcd);
}

static void counter_stop(KeyCounter *k) {
        etcd_watch_cancel(k->watch);
        k->watch = NULL;
        if (k->keys)
                g_hash_table_unref(k->keys);
        k->keys = NULL;
}

/* Starts a waiting request and returns once its key is in etcd (so the
 * next one arrives after it). */
static void acq_queue(Fixture *f, KeyCounter *k, Host *h, const char *resource, const Req *req, Acq *q) {
        g_autofree char *key = NULL;
        uint64_t deadline = test_now_usec() + WAIT_USEC;

        acq_start(f, h, resource, req, q);
        key = g_strdup(cluster_acquire_get_key(q->handle));
        while (!g_hash_table_contains(k->keys, key)) {
                g_assert_cmpuint(test_now_usec(), <, deadline);
                g_assert_cmpint(sd_event_run(f->event, 1 * SEC), >=, 0);
        }
        g_assert_false(q->done);
}

/* ---- cases ---------------------------------------------------------------- */

static const Req excl = { .mode = LOCK_MODE_EXCLUSIVE, .scope = HOLD_SCOPE_CONNECTION };

static void test_exclusive_blocks_other_host(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq a = {}, b = {};
        Req ra = excl, rb = excl;
        uint64_t token;

        ETCD_SKIP_WITHOUT_CLUSTER();

        ra.uid = 1000;
        ra.pid = 4242;
        ra.comm = "psql";
        ra.sender = ":1.7";
        ra.description = "migrating";
        g_assert_cmpint(acq_sync(f, &f->a, "db/main", &ra, &a), ==, 0);
        g_assert_cmpuint(cluster_hold_get_entry(a.hold)->token, >, 0);
        g_assert_cmpstr(cluster_hold_get_entry(a.hold)->hostname, ==, "host-a");

        rb.uid = 1001;
        rb.sender = ":1.8";
        g_assert_cmpint(acq_sync(f, &f->b, "db/main", &rb, &b), ==, -EBUSY);
        g_test_message("%s", b.message);
        g_assert_nonnull(strstr(b.message, "'db/main'"));
        g_assert_nonnull(strstr(b.message, "uid 1000 (pid 4242, psql)"));
        g_assert_nonnull(strstr(b.message, "host-a"));
        g_assert_true(b.has_blocker);
        g_assert_cmpstr(b.blocker.hostname, ==, "host-a");
        g_assert_cmpstr(b.blocker.machine_id, ==, MACHINE_A);
        g_assert_cmpuint(b.blocker.uid, ==, 1000);
        g_assert_cmpint(b.blocker.pid, ==, 4242);
        g_assert_cmpstr(b.blocker.comm, ==, "psql");
        g_assert_cmpstr(b.blocker.sender, ==, ":1.7");
        g_assert_cmpstr(b.blocker.description, ==, "migrating");
        g_assert_cmpuint(b.blocker.token, ==, cluster_hold_get_entry(a.hold)->token);

        /* The refused request left nothing behind. */
        g_assert_cmpint(count_keys(f, &f->b, "db/main"), ==, 1);

        /* Released: the other host gets it, with a greater token. */
        token = cluster_hold_get_entry(a.hold)->token;
        g_assert_cmpint(release_sync(f, &f->a, a.hold), ==, 0);
        g_assert_cmpint(count_keys(f, &f->b, "db/main"), ==, 0);
        acq_clear(&b);
        g_assert_cmpint(acq_sync(f, &f->b, "db/main", &rb, &b), ==, 0);
        g_assert_cmpuint(cluster_hold_get_entry(b.hold)->token, >, token);
}

static void test_shared_coexist(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq a = {}, b = {}, x = {};
        Req shared = { .mode = LOCK_MODE_SHARED, .scope = HOLD_SCOPE_CONNECTION };
        _cleanup_(query_clear) Query q = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "cache", &shared, &a), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->b, "cache", &shared, &b), ==, 0);
        g_assert_cmpuint(cluster_hold_get_entry(b.hold)->token, >, cluster_hold_get_entry(a.hold)->token);

        g_assert_cmpint(owner_sync(f, &f->a, "cache", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 2);
        g_assert_cmpstr(query_entry(&q, 0)->hostname, ==, "host-a");
        g_assert_cmpstr(query_entry(&q, 1)->hostname, ==, "host-b");
        g_assert_cmpint(query_entry(&q, 0)->mode, ==, LOCK_MODE_SHARED);

        /* An exclusive request does not fit. */
        g_assert_cmpint(acq_sync(f, &f->a, "cache", &(Req) { .mode = LOCK_MODE_EXCLUSIVE, .sender = ":1.99" }, &x),
                        ==, -EBUSY);
}

static void test_fifo(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, w1 = {}, w2 = {}, w3 = {};
        _cleanup_(counter_stop) KeyCounter k = {};
        Req r = excl;

        ETCD_SKIP_WITHOUT_CLUSTER();
        counter_start(f, &k);

        g_assert_cmpint(acq_sync(f, &f->a, "queue", &excl, &h), ==, 0);

        r.timeout = UINT64_MAX;
        r.sender = ":1.b1";
        acq_queue(f, &k, &f->b, "queue", &r, &w1);
        r.sender = ":1.a2";
        acq_queue(f, &k, &f->a, "queue", &r, &w2);
        r.sender = ":1.b3";
        acq_queue(f, &k, &f->b, "queue", &r, &w3);

        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, 0);
        test_run_until(f->event, &w1.done, WAIT_USEC);
        g_assert_cmpint(w1.error, ==, 0);
        g_assert_false(w2.done);
        g_assert_false(w3.done);

        g_assert_cmpint(release_sync(f, &f->b, w1.hold), ==, 0);
        test_run_until(f->event, &w2.done, WAIT_USEC);
        g_assert_cmpint(w2.error, ==, 0);
        g_assert_false(w3.done);

        g_assert_cmpint(release_sync(f, &f->a, w2.hold), ==, 0);
        test_run_until(f->event, &w3.done, WAIT_USEC);
        g_assert_cmpint(w3.error, ==, 0);

        g_assert_cmpuint(w1.order, <, w2.order);
        g_assert_cmpuint(w2.order, <, w3.order);
        g_assert_cmpuint(cluster_hold_get_entry(w3.hold)->token, >, 0);
        g_assert_cmpint(release_sync(f, &f->b, w3.hold), ==, 0);
}

static void test_no_writer_starvation(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq s1 = {}, x = {}, s2 = {}, s3 = {};
        _cleanup_(counter_stop) KeyCounter k = {};
        Req shared = { .mode = LOCK_MODE_SHARED, .scope = HOLD_SCOPE_CONNECTION, .sender = ":1.s1" };
        Req wx = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.x" };

        ETCD_SKIP_WITHOUT_CLUSTER();
        counter_start(f, &k);

        g_assert_cmpint(acq_sync(f, &f->a, "rw", &shared, &s1), ==, 0);
        acq_queue(f, &k, &f->b, "rw", &wx, &x);

        /* A shared request that fits the holder but not the queue: refused
         * at once with timeout 0, queued behind the writer otherwise. */
        shared.sender = ":1.s2";
        g_assert_cmpint(acq_sync(f, &f->a, "rw", &shared, &s2), ==, -EBUSY);
        shared.sender = ":1.s3";
        shared.timeout = UINT64_MAX;
        acq_queue(f, &k, &f->a, "rw", &shared, &s3);

        g_assert_cmpint(release_sync(f, &f->a, s1.hold), ==, 0);
        test_run_until(f->event, &x.done, WAIT_USEC);
        g_assert_cmpint(x.error, ==, 0);
        g_assert_false(s3.done);

        g_assert_cmpint(release_sync(f, &f->b, x.hold), ==, 0);
        test_run_until(f->event, &s3.done, WAIT_USEC);
        g_assert_cmpint(s3.error, ==, 0);
        g_assert_cmpint(release_sync(f, &f->a, s3.hold), ==, 0);
}

static void test_shared_granted_together(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, s1 = {}, s2 = {}, x = {};
        _cleanup_(counter_stop) KeyCounter k = {};
        Req shared = { .mode = LOCK_MODE_SHARED, .timeout = UINT64_MAX };
        Req wx = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.x" };

        ETCD_SKIP_WITHOUT_CLUSTER();
        counter_start(f, &k);

        g_assert_cmpint(acq_sync(f, &f->a, "batch", &excl, &h), ==, 0);
        shared.sender = ":1.s1";
        acq_queue(f, &k, &f->b, "batch", &shared, &s1);
        shared.sender = ":1.s2";
        acq_queue(f, &k, &f->a, "batch", &shared, &s2);
        acq_queue(f, &k, &f->b, "batch", &wx, &x);

        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, 0);
        test_run_until(f->event, &s1.done, WAIT_USEC);
        test_run_until(f->event, &s2.done, WAIT_USEC);
        g_assert_cmpint(s1.error, ==, 0);
        g_assert_cmpint(s2.error, ==, 0);
        g_assert_false(x.done);

        g_assert_cmpint(release_sync(f, &f->b, s1.hold), ==, 0);
        test_run_for(f->event, 300 * MSEC);
        g_assert_false(x.done);
        g_assert_cmpint(release_sync(f, &f->a, s2.hold), ==, 0);
        test_run_until(f->event, &x.done, WAIT_USEC);
        g_assert_cmpint(x.error, ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, x.hold), ==, 0);
}

/* No thundering herd: a release wakes only the waiter right behind it;
 * the others watch other keys and never read the resource again. */
static void test_no_herd(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {};
        _cleanup_(counter_stop) KeyCounter k = {};
        _cleanup_(query_clear) Query q = {};
        ClusterLocksStats before, after;
        Acq w[4] = {};
        Req r = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX };

        ETCD_SKIP_WITHOUT_CLUSTER();
        counter_start(f, &k);

        g_assert_cmpint(acq_sync(f, &f->a, "herd", &excl, &h), ==, 0);
        for (unsigned i = 0; i < G_N_ELEMENTS(w); i++) {
                g_autofree char *sender = g_strdup_printf(":1.w%u", i);

                r.sender = sender;
                acq_queue(f, &k, &f->b, "herd", &r, &w[i]);
        }
        /* Every waiter has its answer and watches its blocker. */
        while (cluster_locks_get_stats(f->b.locks).n_watches < G_N_ELEMENTS(w))
                g_assert_cmpint(sd_event_run(f->event, WAIT_USEC), >, 0);
        before = cluster_locks_get_stats(f->b.locks);
        g_assert_cmpuint(before.n_watches, ==, G_N_ELEMENTS(w));
        g_assert_cmpuint(before.n_reads, ==, 0);

        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, 0);
        test_run_until(f->event, &w[0].done, WAIT_USEC);
        g_assert_cmpint(w[0].error, ==, 0);
        /* Give any other wake-up time to show. */
        g_assert_cmpint(owner_sync(f, &f->b, "herd", &q), ==, 0);
        g_assert_cmpuint(q.n_waiting, ==, G_N_ELEMENTS(w) - 1);
        test_run_for(f->event, 300 * MSEC);

        after = cluster_locks_get_stats(f->b.locks);
        g_assert_cmpuint(after.n_reads - before.n_reads, ==, 1);
        g_assert_cmpuint(after.n_watches, ==, before.n_watches);
        for (unsigned i = 1; i < G_N_ELEMENTS(w); i++) {
                g_assert_false(w[i].done);
                cluster_acquire_cancel(w[i].handle);
                w[i].handle = NULL;
        }
        g_assert_cmpint(release_sync(f, &f->b, w[0].hold), ==, 0);
        for (unsigned i = 0; i < G_N_ELEMENTS(w); i++)
                acq_clear(&w[i]);
}

static void test_timeout(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, w = {};
        Req r = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = 500 * MSEC, .sender = ":1.w" };

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "slow", &excl, &h), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->b, "slow", &r, &w), ==, -ETIMEDOUT);
        g_assert_cmpuint(w.finished - w.started, >=, 500 * MSEC);
        g_test_message("%s after %" PRIu64 " ms", w.message, (w.finished - w.started) / 1000);
        /* Its key is gone: only the holder's is left. */
        g_assert_cmpint(count_keys(f, &f->b, "slow"), ==, 1);
        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, 0);
}

static void test_cancel_middle(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, w1 = {}, w2 = {};
        _cleanup_(counter_stop) KeyCounter k = {};
        Req r = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX };
        ClusterLocksStats before;

        ETCD_SKIP_WITHOUT_CLUSTER();
        counter_start(f, &k);

        g_assert_cmpint(acq_sync(f, &f->a, "mid", &excl, &h), ==, 0);
        r.sender = ":1.w1";
        acq_queue(f, &k, &f->b, "mid", &r, &w1);
        r.sender = ":1.w2";
        acq_queue(f, &k, &f->a, "mid", &r, &w2);

        /* The middle one leaves: its key goes, the last one re-targets its
         * watch to the holder and is not granted. */
        while (cluster_locks_get_stats(f->a.locks).n_watches < 1)
                g_assert_cmpint(sd_event_run(f->event, WAIT_USEC), >, 0);
        before = cluster_locks_get_stats(f->a.locks);
        cluster_acquire_cancel(w1.handle);
        w1.handle = NULL;
        test_run_until_count(f->event, &k.n_deleted, 1, WAIT_USEC);
        /* It read the resource again and watches the holder now. */
        while (cluster_locks_get_stats(f->a.locks).n_watches < before.n_watches + 1)
                g_assert_cmpint(sd_event_run(f->event, WAIT_USEC), >, 0);
        g_assert_cmpuint(cluster_locks_get_stats(f->a.locks).n_reads, ==, before.n_reads + 1);
        test_run_for(f->event, 300 * MSEC);
        g_assert_false(w2.done);
        g_assert_cmpint(count_keys(f, &f->a, "mid"), ==, 2);

        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, 0);
        test_run_until(f->event, &w2.done, WAIT_USEC);
        g_assert_cmpint(w2.error, ==, 0);
        g_assert_false(w1.done);
        g_assert_cmpint(release_sync(f, &f->a, w2.hold), ==, 0);
}

static void test_not_reentrant(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, again = {}, p = {}, viauid = {}, other = {};
        Req r = { .mode = LOCK_MODE_EXCLUSIVE, .sender = ":1.5", .timeout = UINT64_MAX };
        Req pers = { .mode = LOCK_MODE_SHARED, .scope = HOLD_SCOPE_PERSISTENT, .uid = 2000, .sender = ":1.6" };

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "re", &excl, &h), ==, 0);
        /* The same connection again: refused at once, even willing to wait. */
        g_assert_cmpint(acq_sync(f, &f->a, "re", &(Req) { .sender = ":1.42", .timeout = UINT64_MAX }, &again), ==,
                        -EALREADY);
        g_assert_true(again.has_blocker);
        g_assert_cmpuint(again.blocker.token, ==, cluster_hold_get_entry(h.hold)->token);
        g_assert_cmpuint(again.finished - again.started, <, 5 * SEC);
        g_assert_cmpint(count_keys(f, &f->a, "re"), ==, 1);

        /* Waiting counts too: a second request of a waiting caller. */
        {
                _cleanup_(counter_stop) KeyCounter k = {};
                _cleanup_(acq_clear) Acq w = {}, w2 = {};

                counter_start(f, &k);
                acq_queue(f, &k, &f->b, "re", &r, &w);
                g_assert_cmpint(acq_sync(f, &f->b, "re", &r, &w2), ==, -EALREADY);
                g_assert_cmpstr(w2.blocker.key, ==, cluster_acquire_get_key(w.handle));
                cluster_acquire_cancel(w.handle);
                w.handle = NULL;
        }

        /* A persistent hold belongs to its uid on this machine: another
         * connection of that uid is refused; the same uid on another host
         * is someone else. */
        g_assert_cmpint(acq_sync(f, &f->a, "re-p", &pers, &p), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->a, "re-p", &(Req) { .mode = LOCK_MODE_SHARED, .uid = 2000, .sender = ":1.77" },
                                 &viauid),
                        ==, -EALREADY);
        g_assert_cmpint(acq_sync(f, &f->b, "re-p", &(Req) { .mode = LOCK_MODE_SHARED, .uid = 2000, .sender = ":1.6" },
                                 &other),
                        ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, other.hold), ==, 0);
        g_assert_cmpint(release_sync(f, &f->a, p.hold), ==, 0);
}

/* Deletes key with a client on a loop of its own: the hosts' loop does
 * not run meanwhile, so they have not heard of it when this returns. */
static void delete_elsewhere(const char *key) {
        sd_event *e = NULL;
        EtcdClient *client = NULL;
        SyncResult r = {};

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        g_assert_cmpint(etcd_client_new(e, etcd_cluster_endpoints(cluster), 10 * SEC, &client), ==, 0);
        g_assert_cmpint(sync_delete(e, client, key, false, &r), ==, 0);
        g_assert_cmpint(r.count, ==, 1);
        sync_result_clear(&r);
        etcd_client_free(client);
        sd_event_unref(e);
}

/* Takes a new persistent hold on h, deletes its key by hand and waits
 * until h reports it: h's watch delivers in revision order, so every
 * deletion before it was seen by then (no sleep needed to show that
 * something was not reported). */
static void removed_marker(Fixture *f, Host *h, const char *resource) {
        _cleanup_(acq_clear) Acq m = {};
        g_autofree char *key = NULL;
        unsigned n = h->n_removed;

        g_assert_cmpint(acq_sync(f, h, resource, &(Req) { .scope = HOLD_SCOPE_PERSISTENT }, &m), ==, 0);
        key = g_strdup(cluster_hold_get_entry(m.hold)->key);
        delete_elsewhere(key);
        test_run_until_count(f->event, &h->n_removed, n + 1, WAIT_USEC);
        g_assert_cmpuint(h->n_removed, ==, n + 1);
        g_assert_cmpstr(h->removed_resources->pdata[n], ==, resource);
}

static unsigned count_holds(Host *h) {
        GPtrArray *holds = cluster_locks_get_holds(h->locks);
        unsigned n = holds->len;

        g_ptr_array_unref(holds);
        return n;
}

/* A handle whose key is gone (deleted by hand) and is released before its
 * host heard of it: the release answers -ENOENT and deletes nothing else
 * (compared on its create revision: the waiter behind keeps its key), and
 * hold_removed is not called for it (it was being released). */
static void test_stale_release(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, other = {};
        KeyCounter k = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "stale", &excl, &h), ==, 0);
        counter_start(f, &k);
        acq_queue(f, &k, &f->b, "stale", &(Req) { .sender = ":1.9", .timeout = UINT64_MAX }, &other);
        counter_stop(&k);

        delete_elsewhere(cluster_hold_get_entry(h.hold)->key);
        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, -ENOENT);
        test_run_until(f->event, &other.done, WAIT_USEC);
        g_assert_cmpint(other.error, ==, 0);
        g_assert_cmpint(count_keys(f, &f->a, "stale"), ==, 1);
        g_assert_cmpint(release_sync(f, &f->b, other.hold), ==, 0);

        removed_marker(f, &f->a, "stale-marker");
        g_assert_cmpuint(f->a.n_removed, ==, 1);
        g_assert_cmpuint(f->b.n_removed, ==, 0);
}

/* Host b breaks host a's connection hold as lockbusd's Break does (reads
 * the owner, adopts the entry, releases it): a is told, with the hold, and
 * forgets it; b is not told of its own release, and may lock. */
static void test_removed_by_break(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, again = {};
        _cleanup_(query_clear) Query q = {};
        ClusterHold *adopted = NULL;
        uint64_t token;

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "brk", &excl, &h), ==, 0);
        token = cluster_hold_get_entry(h.hold)->token;

        g_assert_cmpint(owner_sync(f, &f->b, "brk", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        g_assert_cmpint(cluster_locks_adopt(f->b.locks, query_entry(&q, 0), &adopted), ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, adopted), ==, 0);

        test_run_until_count(f->event, &f->a.n_removed, 1, WAIT_USEC);
        g_assert_cmpstr(f->a.removed_resources->pdata[0], ==, "brk");
        g_assert_cmpuint(GPOINTER_TO_SIZE(f->a.removed_tokens->pdata[0]), ==, token);
        g_assert_cmpuint(count_holds(&f->a), ==, 0);
        g_assert_cmpuint(f->a.n_lost, ==, 0);

        g_assert_cmpint(acq_sync(f, &f->b, "brk", &excl, &again), ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, again.hold), ==, 0);
        removed_marker(f, &f->b, "brk-marker");
        g_assert_cmpuint(f->b.n_removed, ==, 1);
        g_assert_cmpuint(f->a.n_removed, ==, 1);
}

/* An administrator deletes a's persistent hold and a's connection hold
 * (etcdctl del): a is told of each; the other host's waiter behind the
 * connection hold is granted. */
static void test_removed_by_hand(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq p = {}, conn = {}, w = {};
        Req pers = { .mode = LOCK_MODE_EXCLUSIVE, .scope = HOLD_SCOPE_PERSISTENT };
        KeyCounter k = {};
        uint64_t token;

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "hand-p", &pers, &p), ==, 0);
        token = cluster_hold_get_entry(p.hold)->token;
        g_assert_cmpint(sync_delete(f->event, f->b.etcd, cluster_hold_get_entry(p.hold)->key, false, &f->r), ==, 0);
        g_assert_cmpint(f->r.count, ==, 1);
        test_run_until_count(f->event, &f->a.n_removed, 1, WAIT_USEC);
        g_assert_cmpstr(f->a.removed_resources->pdata[0], ==, "hand-p");
        g_assert_cmpuint(GPOINTER_TO_SIZE(f->a.removed_tokens->pdata[0]), ==, token);
        g_assert_cmpuint(count_holds(&f->a), ==, 0);

        g_assert_cmpint(acq_sync(f, &f->a, "hand-c", &excl, &conn), ==, 0);
        counter_start(f, &k);
        acq_queue(f, &k, &f->b, "hand-c", &(Req) { .sender = ":1.9", .timeout = UINT64_MAX }, &w);
        counter_stop(&k);
        g_assert_cmpint(sync_delete(f->event, f->b.etcd, cluster_hold_get_entry(conn.hold)->key, false, &f->r),
                        ==, 0);
        test_run_until_count(f->event, &f->a.n_removed, 2, WAIT_USEC);
        g_assert_cmpstr(f->a.removed_resources->pdata[1], ==, "hand-c");
        test_run_until(f->event, &w.done, WAIT_USEC);
        g_assert_cmpint(w.error, ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, w.hold), ==, 0);
        g_assert_cmpuint(f->a.n_lost, ==, 0);
}

/* A waiting request whose key is deleted by hand fails at once with
 * -ENOLINK (nothing granted); the holder ahead is not disturbed. */
static void test_removed_waiting(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, w = {};
        KeyCounter k = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "wq", &excl, &h), ==, 0);
        counter_start(f, &k);
        acq_queue(f, &k, &f->b, "wq", &(Req) { .sender = ":1.9", .timeout = UINT64_MAX }, &w);
        counter_stop(&k);
        g_assert_cmpint(sync_delete(f->event, f->a.etcd, cluster_acquire_get_key(w.handle), false, &f->r), ==, 0);
        test_run_until(f->event, &w.done, WAIT_USEC);
        g_assert_cmpint(w.error, ==, -ENOLINK);
        g_assert_null(w.hold);
        g_assert_cmpuint(f->b.n_removed, ==, 0);
        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, 0);
        g_assert_cmpuint(f->a.n_removed, ==, 0);
}

/* An entry deleted after it was read but before the adopting instance
 * started watching: adopt reads the keys again and reports it. */
static void test_removed_before_adopt(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq p = {};
        _cleanup_(query_clear) Query q = {};
        ClusterHold *adopted = NULL;
        Host c = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "adopt", &(Req) { .scope = HOLD_SCOPE_PERSISTENT }, &p), ==, 0);
        g_assert_cmpint(owner_sync(f, &f->b, "adopt", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        g_assert_cmpint(sync_delete(f->event, f->b.etcd, query_entry(&q, 0)->key, false, &f->r), ==, 0);
        test_run_until_count(f->event, &f->a.n_removed, 1, WAIT_USEC);

        host_start(&c, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 5 * SEC);
        g_assert_cmpint(cluster_locks_adopt(c.locks, query_entry(&q, 0), &adopted), ==, 0);
        test_run_until_count(f->event, &c.n_removed, 1, WAIT_USEC);
        g_assert_cmpstr(c.removed_resources->pdata[0], ==, "adopt");
        g_assert_cmpuint(count_holds(&c), ==, 0);
        /* By a read (the first, if adopt came while it was under way). */
        g_assert_cmpuint(cluster_locks_get_stats(c.locks).n_prefix_reads, >=, 1);
        host_stop(&c);
}

/* What a deletes itself is not reported: releases (with and without a
 * callback), a refused try-lock, a timed out and a cancelled request. */
static void test_removed_not_own(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq c = {}, p = {}, blocker = {}, busy = {}, timeout = {}, cancelled = {};
        KeyCounter k = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "own-c", &excl, &c), ==, 0);
        g_assert_cmpint(release_sync(f, &f->a, c.hold), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->a, "own-p", &(Req) { .scope = HOLD_SCOPE_PERSISTENT }, &p), ==, 0);
        g_assert_cmpint(cluster_locks_release(f->a.locks, p.hold, NULL, NULL), ==, 0);

        g_assert_cmpint(acq_sync(f, &f->b, "own-w", &excl, &blocker), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->a, "own-w", &excl, &busy), ==, -EBUSY);
        g_assert_cmpint(acq_sync(f, &f->a, "own-w", &(Req) { .timeout = 200 * MSEC }, &timeout), ==, -ETIMEDOUT);
        counter_start(f, &k);
        acq_queue(f, &k, &f->a, "own-w", &(Req) { .sender = ":1.8", .timeout = UINT64_MAX }, &cancelled);
        counter_stop(&k);
        cluster_acquire_cancel(cancelled.handle);
        cancelled.handle = NULL;
        g_assert_cmpint(release_sync(f, &f->b, blocker.hold), ==, 0);

        removed_marker(f, &f->a, "own-marker");
        g_assert_cmpuint(f->a.n_removed, ==, 1);
        g_assert_cmpuint(f->b.n_removed, ==, 0);
        g_assert_cmpint(count_keys(f, &f->a, "own-w"), ==, 0);
        g_assert_cmpint(count_keys(f, &f->a, "own-p"), ==, 0);
}

/* A key under the resource whose value is not ours blocks (never a false
 * grant) and is named. */
static void test_unreadable_entry(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq q = {};
        g_autofree char *key = g_strdup_printf("%s/locks/junk/zzz", f->prefix);

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(sync_put(f->event, f->a.etcd, key, "not json", 0, &f->r), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->b, "junk", &(Req) { .mode = LOCK_MODE_SHARED }, &q), ==, -EBUSY);
        g_assert_nonnull(strstr(q.message, "unreadable"));
        g_assert_cmpint(count_keys(f, &f->a, "junk"), ==, 1);
        g_assert_cmpint(sync_delete(f->event, f->a.etcd, key, false, &f->r), ==, 0);
}

static void test_tokens_increase(Fixture *f, gconstpointer data) {
        uint64_t last = 0;

        ETCD_SKIP_WITHOUT_CLUSTER();

        for (unsigned i = 0; i < 6; i++) {
                _cleanup_(acq_clear) Acq q = {};
                Host *h = i % 2 ? &f->b : &f->a;
                Req r = excl;
                uint64_t token;

                r.scope = i % 3 == 0 ? HOLD_SCOPE_PERSISTENT : HOLD_SCOPE_CONNECTION;
                g_assert_cmpint(acq_sync(f, h, i % 2 ? "tok" : "tok2", &r, &q), ==, 0);
                token = cluster_hold_get_entry(q.hold)->token;
                g_assert_cmpuint(token, >, last);
                last = token;
                g_assert_cmpint(release_sync(f, h, q.hold), ==, 0);
        }
}

static void test_persistent_survives_crash(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq p = {}, conn = {}, w = {};
        _cleanup_(query_clear) Query q = {};
        Host c = {};
        Req pers = { .mode = LOCK_MODE_EXCLUSIVE, .scope = HOLD_SCOPE_PERSISTENT, .description = "nightly" };
        Req wait = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.b" };
        uint64_t crashed, token;

        ETCD_SKIP_WITHOUT_CLUSTER();

        host_start(&c, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 2 * SEC);
        g_assert_cmpint(acq_sync(f, &c, "backup", &pers, &p), ==, 0);
        g_assert_cmpint(cluster_hold_get_entry(p.hold)->lease, ==, 0);
        token = cluster_hold_get_entry(p.hold)->token;
        g_assert_cmpint(acq_sync(f, &c, "conn", &excl, &conn), ==, 0);
        g_assert_cmpint(cluster_hold_get_entry(conn.hold)->lease, ==, cluster_locks_get_lease(c.locks));

        acq_start(f, &f->b, "conn", &wait, &w);

        /* host-c dies without a word. */
        crashed = test_now_usec();
        host_stop(&c);

        test_run_until(f->event, &w.done, WAIT_USEC);
        g_assert_cmpint(w.error, ==, 0);
        g_test_message("connection hold of the dead host released after %" PRIu64 " ms",
                       (w.finished - crashed) / 1000);
        g_assert_cmpuint(w.finished - crashed, >=, 1 * SEC);

        /* The persistent hold is still there, with who and where. */
        g_assert_cmpint(owner_sync(f, &f->a, "backup", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        g_assert_cmpstr(query_entry(&q, 0)->hostname, ==, "host-c");
        g_assert_cmpstr(query_entry(&q, 0)->machine_id, ==, MACHINE_C);
        g_assert_cmpstr(query_entry(&q, 0)->description, ==, "nightly");
        g_assert_cmpint(query_entry(&q, 0)->scope, ==, HOLD_SCOPE_PERSISTENT);
        g_assert_cmpuint(query_entry(&q, 0)->token, ==, token);

        /* A daemon of host-c started again adopts and releases it. */
        {
                Host c2 = {};
                ClusterHold *hold = NULL;

                host_start(&c2, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 2 * SEC);
                g_assert_cmpint(cluster_locks_adopt(c2.locks, query_entry(&q, 0), &hold), ==, 0);
                g_assert_cmpint(release_sync(f, &c2, hold), ==, 0);
                host_stop(&c2);
        }
        g_assert_cmpint(count_keys(f, &f->a, "backup"), ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, w.hold), ==, 0);
}

typedef struct Moved {
        bool done;
        int error;
        ClusterHold *hold;
} Moved;

static void on_moved(ClusterLocks *c, int error, const char *error_message, ClusterHold *hold, void *userdata) {
        Moved *m = userdata;

        g_assert_false(m->done);
        m->done = true;
        m->error = error;
        m->hold = hold;
        if (error == 0)
                g_assert_nonnull(hold);
        else {
                g_assert_null(hold);
                g_assert_nonnull(error_message);
        }
}

static int move_sync(Fixture *f, Host *h, const ClusterEntry *e, Moved *m) {
        *m = (Moved) {};
        g_assert_cmpint(cluster_locks_adopt_onto_lease(h->locks, e, on_moved, m), ==, 0);
        g_assert_false(m->done);
        test_run_until(f->event, &m->done, WAIT_USEC);
        return m->error;
}

#define BUS_ID "0123456789abcdef0123456789abcdef"

/* A daemon of host-c started again moves a connection hold of the crashed
 * one onto its lease (its holder is still connected): same key, token and
 * place in the order (the other host's waiter still waits, also once the
 * old lease is gone); the value names the new instance and keeps the bus
 * ID. Its release serves the waiter. Moving an entry whose key is gone:
 * -ENOENT. */
static void test_adopt_onto_lease(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq conn = {}, w = {};
        _cleanup_(query_clear) Query q = {}, again = {};
        Req held = { .mode = LOCK_MODE_EXCLUSIVE, .scope = HOLD_SCOPE_CONNECTION, .sender = ":1.7",
                     .bus_id = BUS_ID };
        Req wait = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.b" };
        Host c = {}, c2 = {}, c3 = {};
        const ClusterEntry *e;
        KeyCounter k = {};
        Moved m = {};
        uint64_t token;

        ETCD_SKIP_WITHOUT_CLUSTER();

        host_start(&c, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 5 * SEC);
        g_assert_cmpint(acq_sync(f, &c, "mv", &held, &conn), ==, 0);
        token = cluster_hold_get_entry(conn.hold)->token;
        g_assert_cmpstr(cluster_hold_get_entry(conn.hold)->bus_id, ==, BUS_ID);
        counter_start(f, &k);
        acq_queue(f, &k, &f->b, "mv", &wait, &w);
        counter_stop(&k);

        /* host-c dies without a word; its entry, as the next daemon reads it. */
        host_stop(&c);
        g_assert_cmpint(owner_sync(f, &f->a, "mv", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        e = query_entry(&q, 0);
        g_assert_cmpuint(e->token, ==, token);
        g_assert_cmpstr(e->bus_id, ==, BUS_ID);
        g_assert_cmpstr(e->sender, ==, ":1.7");
        g_assert_cmpint(e->scope, ==, HOLD_SCOPE_CONNECTION);

        host_start(&c2, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 5 * SEC);
        g_assert_cmpint(move_sync(f, &c2, e, &m), ==, 0);
        g_assert_cmpstr(cluster_hold_get_entry(m.hold)->key, ==, e->key);
        g_assert_cmpuint(cluster_hold_get_entry(m.hold)->token, ==, token);
        g_assert_cmpint(cluster_hold_get_entry(m.hold)->lease, ==, cluster_locks_get_lease(c2.locks));
        g_assert_cmpstr(cluster_hold_get_entry(m.hold)->instance, ==, cluster_locks_get_instance(c2.locks));
        g_assert_cmpuint(count_holds(&c2), ==, 1);

        /* The old lease ends (as it would after its TTL): the key stays. */
        g_assert_cmpint(sync_lease_revoke(f->event, f->a.etcd, e->lease, &f->r), ==, 0);
        g_assert_cmpint(owner_sync(f, &f->a, "mv", &again), ==, 0);
        g_assert_cmpuint(again.entries->len, ==, 1);
        g_assert_cmpuint(query_entry(&again, 0)->token, ==, token);
        g_assert_cmpint(query_entry(&again, 0)->lease, ==, cluster_locks_get_lease(c2.locks));
        g_assert_cmpstr(query_entry(&again, 0)->instance, ==, cluster_locks_get_instance(c2.locks));
        g_assert_cmpstr(query_entry(&again, 0)->bus_id, ==, BUS_ID);
        g_assert_cmpstr(query_entry(&again, 0)->comm, ==, e->comm);
        g_assert_cmpuint(again.n_waiting, ==, 1);
        g_assert_cmpint(count_keys(f, &f->a, "mv"), ==, 2);
        g_assert_false(w.done);

        /* Released by its new owner: the waiter behind it is served. */
        g_assert_cmpint(release_sync(f, &c2, m.hold), ==, 0);
        test_run_until(f->event, &w.done, WAIT_USEC);
        g_assert_cmpint(w.error, ==, 0);
        g_assert_cmpuint(cluster_hold_get_entry(w.hold)->token, >, token);

        /* Moving it again: its key is gone. */
        host_start(&c3, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 5 * SEC);
        g_assert_cmpint(move_sync(f, &c3, e, &m), ==, -ENOENT);
        g_assert_cmpuint(count_holds(&c3), ==, 0);
        g_assert_cmpint(count_keys(f, &f->a, "mv"), ==, 1);

        g_assert_cmpint(release_sync(f, &f->b, w.hold), ==, 0);
        host_stop(&c3);
        host_stop(&c2);
}

static void on_stopped(ClusterLocks *c, int error, void *userdata) {
        Done *d = userdata;

        d->done = true;
        d->error = error;
}

/* A clean stop revokes the lease: the other host's waiter is granted at
 * once, not after the (long) TTL; persistent holds stay. */
static void test_stop_revokes(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq p = {}, conn = {}, w = {};
        _cleanup_(query_clear) Query q = {};
        Req wait = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.b" };
        Host c = {};
        Done d = {};
        uint64_t stopped;

        ETCD_SKIP_WITHOUT_CLUSTER();

        host_start(&c, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 60 * SEC);
        g_assert_cmpint(acq_sync(f, &c, "kept", &(Req) { .scope = HOLD_SCOPE_PERSISTENT }, &p), ==, 0);
        g_assert_cmpint(acq_sync(f, &c, "conn", &excl, &conn), ==, 0);
        acq_start(f, &f->b, "conn", &wait, &w);

        stopped = test_now_usec();
        g_assert_cmpint(cluster_locks_stop(c.locks, false, on_stopped, &d), ==, 0);
        test_run_until(f->event, &d.done, WAIT_USEC);
        g_assert_cmpint(d.error, ==, 0);
        test_run_until(f->event, &w.done, WAIT_USEC);
        g_assert_cmpint(w.error, ==, 0);
        g_assert_cmpuint(w.finished - stopped, <, 10 * SEC);
        host_stop(&c);

        g_assert_cmpint(owner_sync(f, &f->a, "kept", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        g_assert_cmpstr(query_entry(&q, 0)->hostname, ==, "host-c");
        g_assert_cmpint(release_sync(f, &f->b, w.hold), ==, 0);
}

/* A stop that keeps the lease (a restart): the connection hold's key stays
 * on it for the next instance, the waiting request's key is deleted, and
 * the answer comes once that is done. */
static void test_stop_keeps_lease(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq conn = {}, busy = {}, cw = {};
        _cleanup_(query_clear) Query q = {};
        Req wait = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.c" };
        Host c = {};
        Done d = {};
        int64_t lease;

        ETCD_SKIP_WITHOUT_CLUSTER();

        host_start(&c, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-c", 60 * SEC);
        lease = cluster_locks_get_lease(c.locks);
        g_assert_cmpint(acq_sync(f, &c, "conn", &excl, &conn), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->b, "busy", &excl, &busy), ==, 0);
        acq_start(f, &c, "busy", &wait, &cw);
        /* Waiting: its key is there and it watches b's. */
        while (cluster_locks_get_stats(c.locks).n_watches < 1)
                g_assert_cmpint(sd_event_run(f->event, WAIT_USEC), >, 0);
        g_assert_cmpint(count_keys(f, &f->a, "busy"), ==, 2);

        g_assert_cmpint(cluster_locks_stop(c.locks, true, on_stopped, &d), ==, 0);
        g_assert_cmpint(cluster_locks_stop(c.locks, true, on_stopped, &d), ==, -EINVAL);
        test_run_until(f->event, &d.done, WAIT_USEC);
        g_assert_cmpint(d.error, ==, 0);
        g_assert_false(cw.done);
        g_assert_cmpint(count_keys(f, &f->a, "busy"), ==, 1);
        g_assert_cmpint(owner_sync(f, &f->a, "conn", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        g_assert_cmpstr(query_entry(&q, 0)->hostname, ==, "host-c");
        g_assert_cmpint(query_entry(&q, 0)->lease, ==, lease);
        host_stop(&c);

        /* Its lease ends (here at once): so does the hold. */
        g_assert_cmpint(sync_lease_revoke(f->event, f->a.etcd, lease, &f->r), ==, 0);
        g_assert_cmpint(count_keys(f, &f->a, "conn"), ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, busy.hold), ==, 0);
}

static void test_persistent_ttl_refresh(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq p = {};
        Req pers = { .mode = LOCK_MODE_EXCLUSIVE, .scope = HOLD_SCOPE_PERSISTENT, .ttl = 30 * SEC };
        Done d = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "ttl", &pers, &p), ==, 0);
        g_assert_cmpint(cluster_hold_get_entry(p.hold)->lease, !=, 0);
        g_assert_cmpint(cluster_hold_get_entry(p.hold)->lease, !=, cluster_locks_get_lease(f->a.locks));
        g_assert_cmpuint(cluster_hold_get_entry(p.hold)->expires_usec, >, 0);

        g_assert_cmpint(cluster_locks_refresh(f->a.locks, p.hold, on_refreshed, &d), ==, 0);
        test_run_until(f->event, &d.done, WAIT_USEC);
        g_assert_cmpint(d.error, ==, 0);
        g_assert_cmpuint(d.expires, >=, cluster_hold_get_entry(p.hold)->since_usec + 30 * SEC);
        g_free(d.message);

        g_assert_cmpint(release_sync(f, &f->a, p.hold), ==, 0);
        g_assert_cmpint(count_keys(f, &f->a, "ttl"), ==, 0);
}

static void test_owner_list(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq x = {}, ya = {}, yb = {}, w = {};
        _cleanup_(query_clear) Query q = {};
        _cleanup_(counter_stop) KeyCounter k = {};
        Req shared = { .mode = LOCK_MODE_SHARED, .comm = "reader" };
        Req wait = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.w" };
        const char *weird = "a/b c/../é";

        ETCD_SKIP_WITHOUT_CLUSTER();
        counter_start(f, &k);

        g_assert_cmpint(acq_sync(f, &f->a, weird, &(Req) { .uid = 1000, .pid = 11, .comm = "writer" }, &x), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->a, "y", &shared, &ya), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->b, "y", &(Req) { .mode = LOCK_MODE_SHARED, .uid = 1001, .pid = 12 }, &yb), ==,
                        0);
        acq_queue(f, &k, &f->b, weird, &wait, &w);

        g_assert_cmpint(owner_sync(f, &f->b, weird, &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        g_assert_cmpuint(q.n_waiting, ==, 1);
        g_assert_cmpstr(query_entry(&q, 0)->resource, ==, weird);
        g_assert_cmpstr(query_entry(&q, 0)->hostname, ==, "host-a");
        g_assert_cmpstr(query_entry(&q, 0)->comm, ==, "writer");
        g_assert_cmpint(query_entry(&q, 0)->pid, ==, 11);

        g_assert_cmpint(owner_sync(f, &f->b, "nobody", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 0);

        g_assert_cmpint(list_sync(f, &f->a, &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 3);
        g_assert_cmpuint(q.n_waiting, ==, 1);
        /* Sorted by resource ("a/b…" < "y"), then token. */
        g_assert_cmpstr(query_entry(&q, 0)->resource, ==, weird);
        g_assert_cmpstr(query_entry(&q, 1)->resource, ==, "y");
        g_assert_cmpstr(query_entry(&q, 1)->hostname, ==, "host-a");
        g_assert_cmpstr(query_entry(&q, 1)->machine_id, ==, MACHINE_A);
        g_assert_cmpstr(query_entry(&q, 2)->resource, ==, "y");
        g_assert_cmpstr(query_entry(&q, 2)->hostname, ==, "host-b");
        g_assert_cmpstr(query_entry(&q, 2)->machine_id, ==, MACHINE_B);
        g_assert_cmpuint(query_entry(&q, 2)->uid, ==, 1001);
        g_assert_cmpuint(query_entry(&q, 1)->token, <, query_entry(&q, 2)->token);

        cluster_acquire_cancel(w.handle);
        w.handle = NULL;
}

static void test_escape(Fixture *f, gconstpointer data) {
        g_autofree char *a = cluster_resource_escape("a/b"), *b = cluster_resource_escape("a%2Fb"),
                        *c = cluster_resource_escape("x.y-z_0"), *d = cluster_resource_escape("é ");

        g_assert_cmpstr(a, ==, "a%2Fb");
        g_assert_cmpstr(b, ==, "a%252Fb");
        g_assert_cmpstr(c, ==, "x.y-z_0");
        g_assert_cmpstr(d, ==, "%C3%A9%20");
}

/* Someone revokes the instance lease: the next renewal finds it gone, the
 * holds on it are reported, a new lease comes, and acquire works again. */
static void test_lease_revoked(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq conn = {}, pers = {}, after = {};
        Host d = {};
        int64_t lease;

        ETCD_SKIP_WITHOUT_CLUSTER();

        host_start(&d, f->event, etcd_cluster_endpoints(cluster), f->prefix, MACHINE_C, "host-d", 3 * SEC);
        g_assert_cmpint(acq_sync(f, &d, "c", &excl, &conn), ==, 0);
        g_assert_cmpint(acq_sync(f, &d, "p", &(Req) { .scope = HOLD_SCOPE_PERSISTENT }, &pers), ==, 0);
        lease = cluster_locks_get_lease(d.locks);
        d.ready = false;

        g_assert_cmpint(sync_lease_revoke(f->event, f->a.etcd, lease, &f->r), ==, 0);
        test_run_until_count(f->event, &d.n_lost, 1, WAIT_USEC);
        /* Its keys went with it: each hold is told once, by whichever
         * etcd told first (the watch or the next renewal). */
        g_assert_cmpuint(d.n_lost_holds + d.n_removed, ==, 1);
        g_assert_cmpstr(d.n_removed ? d.removed_resources->pdata[0] : d.lost_resources->pdata[0], ==, "c");

        test_run_until(f->event, &d.ready, WAIT_USEC);
        g_assert_cmpuint(d.n_ready, ==, 2);
        g_assert_cmpint(cluster_locks_get_lease(d.locks), !=, lease);
        g_assert_cmpint(acq_sync(f, &d, "c", &excl, &after), ==, 0);
        g_assert_cmpint(cluster_hold_get_entry(after.hold)->lease, ==, cluster_locks_get_lease(d.locks));
        g_assert_cmpint(release_sync(f, &d, after.hold), ==, 0);
        g_assert_cmpint(release_sync(f, &d, pers.hold), ==, 0);
        host_stop(&d);
}

/* ---- a TCP proxy that can lose etcd's answers ------------------------------ */

typedef struct Proxy Proxy;

typedef struct ProxyPair {
        Proxy *proxy;
        int client_fd, upstream_fd;
        sd_event_source *client_io, *upstream_io;
} ProxyPair;

struct Proxy {
        sd_event *event;
        int listen_fd;
        sd_event_source *accept_io;
        struct sockaddr_in upstream;
        GPtrArray *pairs;               /* ProxyPair * */
        bool drop;                      /* answers are lost: both ends closed */
        unsigned n_dropped;
        bool refuse;                    /* new connections are closed at once */
        unsigned n_refused;
        char *url;
};

static void pair_free(ProxyPair *p) {
        sd_event_source_disable_unref(p->client_io);
        sd_event_source_disable_unref(p->upstream_io);
        close(p->client_fd);
        close(p->upstream_fd);
        g_free(p);
}

static void pair_close(ProxyPair *p) {
        g_ptr_array_remove(p->proxy->pairs, p);
}

static bool write_all(int fd, const char *data, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, data, n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return false;
                data += k;
                n -= (size_t) k;
        }
        return true;
}

static int on_pair_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        ProxyPair *p = userdata;
        bool from_upstream = fd == p->upstream_fd;
        char buf[65536];
        ssize_t k;

        k = read(fd, buf, sizeof buf);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (k <= 0) {
                pair_close(p);
                return 0;
        }
        if (from_upstream && p->proxy->drop) {
                /* etcd answered; the caller never hears it. */
                p->proxy->n_dropped++;
                pair_close(p);
                return 0;
        }
        if (!write_all(from_upstream ? p->client_fd : p->upstream_fd, buf, (size_t) k))
                pair_close(p);
        return 0;
}

static int on_proxy_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Proxy *x = userdata;
        ProxyPair *p;
        int cfd, ufd;

        cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0)
                return 0;
        if (x->refuse) {
                x->n_refused++;
                close(cfd);
                return 0;
        }
        ufd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        g_assert_cmpint(ufd, >=, 0);
        if (connect(ufd, (struct sockaddr *) &x->upstream, sizeof x->upstream) < 0) {
                close(ufd);
                close(cfd);
                return 0;
        }
        p = g_new0(ProxyPair, 1);
        p->proxy = x;
        p->client_fd = cfd;
        p->upstream_fd = ufd;
        g_assert_cmpint(sd_event_add_io(x->event, &p->client_io, cfd, EPOLLIN, on_pair_io, p), >=, 0);
        g_assert_cmpint(sd_event_add_io(x->event, &p->upstream_io, ufd, EPOLLIN, on_pair_io, p), >=, 0);
        g_ptr_array_add(x->pairs, p);
        return 0;
}

static void proxy_start(Proxy *x, sd_event *e, const char *upstream_url) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sa;
        const char *port = strrchr(upstream_url, ':');

        g_assert_nonnull(port);
        *x = (Proxy) {
                .event = e,
                .pairs = g_ptr_array_new_with_free_func((GDestroyNotify) pair_free),
                .upstream = {
                        .sin_family = AF_INET,
                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                        .sin_port = htons((uint16_t) atoi(port + 1)),
                },
        };
        x->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        g_assert_cmpint(x->listen_fd, >=, 0);
        g_assert_cmpint(bind(x->listen_fd, (struct sockaddr *) &sa, sizeof sa), ==, 0);
        g_assert_cmpint(listen(x->listen_fd, 16), ==, 0);
        g_assert_cmpint(getsockname(x->listen_fd, (struct sockaddr *) &sa, &len), ==, 0);
        x->url = g_strdup_printf("http://127.0.0.1:%u", ntohs(sa.sin_port));
        g_assert_cmpint(sd_event_add_io(e, &x->accept_io, x->listen_fd, EPOLLIN, on_proxy_accept, x), >=, 0);
}

/* Closes every connection, as a member that went away would. */
static void proxy_cut(Proxy *x) {
        g_ptr_array_set_size(x->pairs, 0);
}

static void proxy_stop(Proxy *x) {
        sd_event_source_disable_unref(x->accept_io);
        close(x->listen_fd);
        g_ptr_array_unref(x->pairs);
        g_free(x->url);
}

/* etcd applies the acquire's txn but its answer is lost: the caller gets an
 * error, never a grant, and the key it wrote is deleted once etcd answers
 * again. */
static void test_unknown_outcome(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq lost = {}, other = {};
        _cleanup_(counter_stop) KeyCounter k = {};
        Proxy x;
        Host p = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        proxy_start(&x, f->event, etcd_cluster_endpoint(cluster, 1));
        host_start(&p, f->event, (char *[]) { x.url, NULL }, f->prefix, MACHINE_C, "host-p", 30 * SEC);
        counter_start(f, &k);

        x.drop = true;
        acq_sync(f, &p, "uo", &excl, &lost);
        g_test_message("acquire whose answer was lost: %s", lost.message);
        g_assert_cmpint(lost.error, <, 0);
        g_assert_null(lost.hold);
        g_assert_cmpuint(x.n_dropped, >=, 1);
        /* etcd did write it. */
        test_run_until_count(f->event, &k.n_created, 1, WAIT_USEC);

        /* Answers come through again: the key goes (the instance lease is
         * still alive, so this is the background delete, not the TTL). */
        x.drop = false;
        test_run_until_count(f->event, &k.n_deleted, 1, WAIT_USEC);
        g_assert_cmpint(count_keys(f, &f->a, "uo"), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->b, "uo", &excl, &other), ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, other.hold), ==, 0);

        host_stop(&p);
        proxy_stop(&x);
}

/* Runs the loop until the instance watch of h was started more than n times. */
static void run_until_prefix_watches(Fixture *f, Host *h, uint64_t n) {
        uint64_t deadline = test_now_usec() + WAIT_USEC;

        while (cluster_locks_get_stats(h->locks).n_prefix_watches <= n) {
                g_assert_cmpuint(test_now_usec(), <, deadline);
                g_assert_cmpint(sd_event_run(f->event, 1 * SEC), >=, 0);
        }
}

/* Host p is cut off from etcd (its member's connections close, new ones
 * are refused) while host b breaks p's hold (adopt + release) and etcd is
 * compacted past that delete. When p reaches etcd again, its instance
 * watch from the revision after the last event it saw is refused as
 * compacted; p reads every key instead and reports the hold removed: the
 * delete is not missed although no watch can deliver it any more. */
static void test_removed_while_compacted(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, again = {};
        _cleanup_(query_clear) Query q = {};
        g_autofree char *filler = g_strdup_printf("%s/filler", f->prefix);
        g_autofree char *request = NULL;
        ClusterHold *adopted = NULL;
        ClusterLocksStats before;
        uint64_t token;
        Proxy x;
        Host p = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        proxy_start(&x, f->event, etcd_cluster_endpoint(cluster, 1));
        /* A TTL far beyond the case: the lease outlives the cut. */
        host_start(&p, f->event, (char *[]) { x.url, NULL }, f->prefix, MACHINE_C, "host-p", 60 * SEC);
        g_assert_cmpint(acq_sync(f, &p, "cmp", &excl, &h), ==, 0);
        token = cluster_hold_get_entry(h.hold)->token;
        /* p's watch runs and has seen everything up to here. */
        removed_marker(f, &p, "cmp-marker");
        before = cluster_locks_get_stats(p.locks);

        x.refuse = true;
        proxy_cut(&x);
        /* p noticed: its watch ended and the next one cannot connect. */
        run_until_prefix_watches(f, &p, before.n_prefix_watches);

        g_assert_cmpint(owner_sync(f, &f->b, "cmp", &q), ==, 0);
        g_assert_cmpuint(q.entries->len, ==, 1);
        g_assert_cmpuint(query_entry(&q, 0)->token, ==, token);
        g_assert_cmpint(cluster_locks_adopt(f->b.locks, query_entry(&q, 0), &adopted), ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, adopted), ==, 0);
        /* Writes after the delete, then compaction up to the last: the
         * revision p's watch must start from is gone. */
        g_assert_cmpint(sync_put(f->event, f->b.etcd, filler, "1", 0, &f->r), ==, 0);
        g_assert_cmpint(sync_put(f->event, f->b.etcd, filler, "2", 0, &f->r), ==, 0);
        request = g_strdup_printf("{\"revision\":\"%" PRIi64 "\",\"physical\":true}", f->r.revision);
        g_assert_cmpint(sync_call(f->event, f->b.etcd, "/v3/kv/compaction", request, &f->r), ==, 0);
        g_assert_cmpuint(p.n_removed, ==, 1);
        g_assert_cmpuint(x.n_refused, >=, 1);

        x.refuse = false;
        test_run_until_count(f->event, &p.n_removed, 2, WAIT_USEC);
        g_assert_cmpuint(p.n_removed, ==, 2);
        g_assert_cmpstr(p.removed_resources->pdata[1], ==, "cmp");
        g_assert_cmpuint(GPOINTER_TO_SIZE(p.removed_tokens->pdata[1]), ==, token);
        g_assert_cmpuint(count_holds(&p), ==, 0);
        g_assert_cmpuint(p.n_lost, ==, 0);
        /* By a read of every key (the compaction path), not by an event. */
        g_assert_cmpuint(cluster_locks_get_stats(p.locks).n_prefix_reads, >, before.n_prefix_reads);

        /* The watch runs again, from that read: a later delete is told. */
        removed_marker(f, &p, "cmp-marker");
        g_assert_cmpuint(p.n_removed, ==, 3);
        g_assert_cmpint(acq_sync(f, &f->b, "cmp", &excl, &again), ==, 0);
        g_assert_cmpint(release_sync(f, &f->b, again.hold), ==, 0);
        g_assert_cmpuint(f->a.n_removed, ==, 0);
        g_assert_cmpuint(f->b.n_removed, ==, 0);

        host_stop(&p);
        proxy_stop(&x);
}

/* Breaks the shared cluster: last of the shared ones. */
static void test_member_killed(Fixture *f, gconstpointer data) {
        _cleanup_(acq_clear) Acq h = {}, w = {}, again = {}, p = {};
        Req wait = { .mode = LOCK_MODE_EXCLUSIVE, .timeout = UINT64_MAX, .sender = ":1.w" };

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(acq_sync(f, &f->a, "k-p", &(Req) { .scope = HOLD_SCOPE_PERSISTENT }, &p), ==, 0);
        g_assert_cmpint(acq_sync(f, &f->a, "k", &excl, &h), ==, 0);
        acq_start(f, &f->b, "k", &wait, &w);
        /* The member both clients talk to (the first that answered). */
        etcd_cluster_kill_member(cluster, 0);

        g_assert_cmpint(release_sync(f, &f->a, h.hold), ==, 0);
        test_run_until(f->event, &w.done, WAIT_USEC);
        g_assert_cmpint(w.error, ==, 0);
        g_assert_cmpint(acq_sync(f, &f->a, "k", &excl, &again), ==, -EBUSY);
        g_assert_cmpint(release_sync(f, &f->b, w.hold), ==, 0);
        acq_clear(&again);
        g_assert_cmpint(acq_sync(f, &f->a, "k", &excl, &again), ==, 0);
        g_assert_cmpint(release_sync(f, &f->a, again.hold), ==, 0);
        /* The leases stayed. */
        g_assert_cmpuint(f->a.n_lost, ==, 0);
        g_assert_cmpuint(f->b.n_lost, ==, 0);

        /* The instance watch survived (started again on another member if
         * it was on the dead one): a deletion by hand is still told. */
        g_assert_cmpint(sync_delete(f->event, f->b.etcd, cluster_hold_get_entry(p.hold)->key, false, &f->r), ==, 0);
        test_run_until_count(f->event, &f->a.n_removed, 1, WAIT_USEC);
        g_assert_cmpstr(f->a.removed_resources->pdata[0], ==, "k-p");
        g_test_message("instance watch of a started %" PRIu64 " time(s)",
                       cluster_locks_get_stats(f->a.locks).n_prefix_watches);
        g_assert_cmpuint(f->a.n_removed, ==, 1);
        g_assert_cmpuint(f->b.n_removed, ==, 0);
}

/* A cluster of its own, killed entirely. */
static void test_lease_lost(Fixture *f, gconstpointer data) {
        g_autofree char *reason = NULL;
        EtcdCluster *own;
        _cleanup_(acq_clear) Acq conn = {}, pers = {}, down = {}, waiter = {};
        Host d = {};
        KeyCounter k = {};
        uint64_t killed;
        int r;

        ETCD_SKIP_WITHOUT_CLUSTER();
        own = etcd_cluster_start(3, &reason);
        g_assert_nonnull(own);

        host_start(&d, f->event, etcd_cluster_endpoints(own), f->prefix, MACHINE_C, "host-d", 2 * SEC);
        g_assert_cmpint(acq_sync(f, &d, "c", &excl, &conn), ==, 0);
        g_assert_cmpint(acq_sync(f, &d, "p", &(Req) { .scope = HOLD_SCOPE_PERSISTENT }, &pers), ==, 0);
        /* Someone waits behind the connection hold. */
        counter_start_on(f, &k, d.etcd);
        acq_queue(f, &k, &d, "c", &(Req) { .sender = ":1.9", .timeout = UINT64_MAX }, &waiter);
        counter_stop(&k);

        killed = test_now_usec();
        for (unsigned i = 0; i < 3; i++)
                etcd_cluster_kill_member(own, i);

        /* Right away (the lease is not known lost yet): an error, never a grant. */
        r = acq_sync(f, &d, "new", &excl, &down);
        g_test_message("acquire with etcd down: %s", down.message);
        g_assert_cmpint(r, <, 0);
        g_assert_null(down.hold);

        /* Lost within the TTL after the last renewal: the connection hold is
         * reported, the persistent one (no lease) is not. */
        while (d.n_lost == 0) {
                g_assert_cmpuint(test_now_usec() - killed, <, 10 * SEC);
                g_assert_cmpint(sd_event_run(f->event, SEC), >=, 0);
        }
        g_test_message("lease lost %" PRIu64 " ms after etcd went down", (d.lost_at - killed) / 1000);
        /* The TTL after the last renewal sent (before the kill), and scheduling slack. */
        g_assert_cmpuint(d.lost_at - killed, <=, 2 * SEC + 1 * SEC);
        g_assert_cmpuint(d.n_lost_holds, ==, 1);
        g_assert_cmpstr(d.lost_resources->pdata[0], ==, "c");
        g_assert_cmpint(cluster_locks_get_lease(d.locks), ==, 0);

        /* The waiter was told too (its watch ended, etcd could not be read,
         * or its lease went), and was never granted. */
        test_run_until(f->event, &waiter.done, WAIT_USEC);
        g_test_message("waiter: %s", waiter.message);
        g_assert_cmpint(waiter.error, <, 0);
        g_assert_null(waiter.hold);

        /* Without a lease: refused at once. */
        {
                ClusterRequest q = { .resource = "new", .sender = ":1.1", .mode = LOCK_MODE_EXCLUSIVE };
                Acq never = {};

                g_assert_cmpint(cluster_locks_acquire(d.locks, &q, on_acquired, &never, NULL), ==, -ENOTCONN);
        }
        {
                GPtrArray *holds = cluster_locks_get_holds(d.locks);

                /* Only the persistent hold is left. */
                g_assert_cmpuint(holds->len, ==, 1);
                g_ptr_array_unref(holds);
        }

        host_stop(&d);
        etcd_cluster_stop(own);
}

int main(int argc, char *argv[]) {
        cluster = etcd_test_init(&argc, &argv, 3);

#define ADD(path, func) g_test_add(path, Fixture, NULL, fixture_setup, func, fixture_teardown)
        ADD("/cluster/escape/keys", test_escape);
        ADD("/cluster/exclusive/blocks-other-host", test_exclusive_blocks_other_host);
        ADD("/cluster/shared/coexist", test_shared_coexist);
        ADD("/cluster/fifo/arrival-order", test_fifo);
        ADD("/cluster/shared/no-writer-starvation", test_no_writer_starvation);
        ADD("/cluster/shared/granted-together", test_shared_granted_together);
        ADD("/cluster/wait/no-herd", test_no_herd);
        ADD("/cluster/wait/timeout", test_timeout);
        ADD("/cluster/wait/cancel-middle", test_cancel_middle);
        ADD("/cluster/reentry/refused", test_not_reentrant);
        ADD("/cluster/tokens/increase", test_tokens_increase);
        ADD("/cluster/release/stale-handle", test_stale_release);
        ADD("/cluster/removed/by-break", test_removed_by_break);
        ADD("/cluster/removed/by-hand", test_removed_by_hand);
        ADD("/cluster/removed/not-own", test_removed_not_own);
        ADD("/cluster/removed/waiting-request", test_removed_waiting);
        ADD("/cluster/removed/before-adopt", test_removed_before_adopt);
        ADD("/cluster/exclusive/unreadable-entry", test_unreadable_entry);
        ADD("/cluster/persistent/survives-crash", test_persistent_survives_crash);
        ADD("/cluster/persistent/ttl-refresh", test_persistent_ttl_refresh);
        ADD("/cluster/connection/adopt-onto-lease", test_adopt_onto_lease);
        ADD("/cluster/stop/revokes", test_stop_revokes);
        ADD("/cluster/stop/keeps-lease", test_stop_keeps_lease);
        ADD("/cluster/query/owner-list", test_owner_list);
        ADD("/cluster/failure/lease-revoked", test_lease_revoked);
        ADD("/cluster/failure/unknown-outcome", test_unknown_outcome);
        ADD("/cluster/failure/removed-while-compacted", test_removed_while_compacted);
        ADD("/cluster/failure/member-killed", test_member_killed);
        ADD("/cluster/failure/lease-lost", test_lease_lost);

        return etcd_test_run();
}
