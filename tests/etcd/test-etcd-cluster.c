/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The etcd client against a real 3-member etcd 3.4 cluster, started once
 * for all cases (each case works below its own key prefix): every helper's
 * success and error paths, transactions as the lock backend will use them,
 * watches, failover past a dead endpoint, and calls cancelled or a client
 * freed while they are in flight. */

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "etcd-sync.h"
#include "etcd-test.h"
#include "etcd.h"

#define SEC G_USEC_PER_SEC

static EtcdCluster *cluster;

typedef struct Fixture {
        sd_event *event;
        EtcdClient *client;
        SyncResult r;
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer data) {
        if (!cluster)
                return;
        g_assert_cmpint(sd_event_new(&f->event), >=, 0);
        g_assert_cmpint(etcd_client_new(f->event, etcd_cluster_endpoints(cluster), 10 * SEC, &f->client), ==, 0);
}

static void fixture_teardown(Fixture *f, gconstpointer data) {
        sync_result_clear(&f->r);
        etcd_client_free(f->client);
        sd_event_unref(f->event);
}

static int64_t grant(Fixture *f, int64_t ttl) {
        g_assert_cmpint(sync_lease_grant(f->event, f->client, ttl, &f->r), ==, 0);
        g_assert_cmpint(f->r.lease_id, !=, 0);
        return f->r.lease_id;
}

static int64_t put(Fixture *f, const char *key, const char *value, int64_t lease) {
        if (sync_put(f->event, f->client, key, value, lease, &f->r) != 0)
                g_error("put %s: %s", key, f->r.message);
        g_assert_cmpint(f->r.revision, >, 0);
        return f->r.revision;
}

/* Number of keys found for key (exact). */
static size_t get(Fixture *f, const char *key) {
        g_assert_cmpint(sync_range(f->event, f->client, key, strlen(key), NULL, &f->r), ==, 0);
        return f->r.kvs->len;
}

/* ---- leases ----------------------------------------------------------------- */

static void test_lease_grant(Fixture *f, gconstpointer data) {
        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(sync_lease_grant(f->event, f->client, 30, &f->r), ==, 0);
        g_assert_cmpint(f->r.lease_id, !=, 0);
        g_assert_cmpint(f->r.ttl, ==, 30);

        /* Over etcd's maximum TTL: OUT_OF_RANGE. */
        g_assert_cmpint(sync_lease_grant(f->event, f->client, INT64_C(9000000001), &f->r), ==, -ERANGE);
        g_assert_nonnull(strstr(f->r.message, "too large lease TTL"));
}

static void test_lease_keepalive(Fixture *f, gconstpointer data) {
        int64_t lease;

        ETCD_SKIP_WITHOUT_CLUSTER();

        lease = grant(f, 20);
        g_assert_cmpint(sync_lease_keepalive(f->event, f->client, lease, &f->r), ==, 0);
        g_assert_cmpint(f->r.ttl, ==, 20);

        /* A lease that never existed: TTL 0 from etcd, -ENOENT here. */
        g_assert_cmpint(sync_lease_keepalive(f->event, f->client, INT64_C(0x1badcafe12345), &f->r), ==, -ENOENT);
        g_assert_nonnull(strstr(f->r.message, "not found"));
}

static void test_lease_revoke(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("held"), *other = test_key("unleased");
        int64_t lease, revision;

        ETCD_SKIP_WITHOUT_CLUSTER();

        lease = grant(f, 60);
        put(f, key, "v", lease);
        put(f, other, "w", 0);
        g_assert_cmpuint(get(f, key), ==, 1);
        g_assert_cmpint(sync_kv(&f->r, 0)->lease, ==, lease);
        revision = f->r.revision;

        g_assert_cmpint(sync_lease_revoke(f->event, f->client, lease, &f->r), ==, 0);
        /* The revocation deleted the key: a new revision. */
        g_assert_cmpint(f->r.revision, >, revision);

        /* Its key is gone with it; another key stays. */
        g_assert_cmpuint(get(f, key), ==, 0);
        g_assert_cmpuint(get(f, other), ==, 1);

        g_assert_cmpint(sync_lease_keepalive(f->event, f->client, lease, &f->r), ==, -ENOENT);
        g_assert_cmpint(sync_lease_revoke(f->event, f->client, lease, &f->r), ==, -ENOENT);
        g_assert_nonnull(strstr(f->r.message, "lease not found"));

        /* Nor can a key be put under it any more. */
        g_assert_cmpint(sync_put(f->event, f->client, key, "v", lease, &f->r), ==, -ENOENT);
}

/* ---- keys ------------------------------------------------------------------- */

static void test_kv_put_range_bytes(Fixture *f, gconstpointer data) {
        g_autofree char *prefix = test_key("");
        /* Not text: NUL, 0xff, newline. */
        static const char suffix[] = { 'k', '\0', '\377', '\n' };
        static const char value[] = { '\0', 'v', '\377', '\0' };
        g_autofree char *key = g_malloc(strlen(prefix) + sizeof suffix);
        size_t key_size = strlen(prefix) + sizeof suffix;
        const SyncKeyValue *kv;
        int64_t created;

        ETCD_SKIP_WITHOUT_CLUSTER();

        memcpy(key, prefix, strlen(prefix));
        memcpy(key + strlen(prefix), suffix, sizeof suffix);

        g_assert_cmpint(sync_put_bytes(f->event, f->client, key, key_size, value, sizeof value, 0, &f->r), ==, 0);
        created = f->r.revision;
        g_assert_cmpint(sync_range(f->event, f->client, key, key_size, NULL, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 1);
        kv = sync_kv(&f->r, 0);
        g_assert_cmpmem(g_bytes_get_data(kv->key, NULL), g_bytes_get_size(kv->key) - 1, key, key_size);
        g_assert_cmpmem(g_bytes_get_data(kv->value, NULL), g_bytes_get_size(kv->value) - 1, value, sizeof value);
        g_assert_cmpint(kv->create_revision, ==, created);
        g_assert_cmpint(kv->mod_revision, ==, created);
        g_assert_cmpint(kv->version, ==, 1);
        g_assert_cmpint(kv->lease, ==, 0);
        g_assert_cmpint(f->r.count, ==, 1);

        /* Again, with an empty value: a new version, the same creation. */
        g_assert_cmpint(sync_put_bytes(f->event, f->client, key, key_size, "", 0, 0, &f->r), ==, 0);
        g_assert_cmpint(f->r.revision, >, created);
        g_assert_cmpint(sync_range(f->event, f->client, key, key_size, NULL, &f->r), ==, 0);
        kv = sync_kv(&f->r, 0);
        g_assert_cmpuint(g_bytes_get_size(kv->value), ==, 1);
        g_assert_cmpint(kv->create_revision, ==, created);
        g_assert_cmpint(kv->mod_revision, >, created);
        g_assert_cmpint(kv->version, ==, 2);

        /* A key nobody wrote. */
        g_assert_cmpint(sync_range(f->event, f->client, key, key_size - 1, NULL, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 0);
        g_assert_cmpint(f->r.count, ==, 0);
}

static void test_kv_put_unknown_lease(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k");

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(sync_put(f->event, f->client, key, "v", INT64_C(0x7eadbeef0001), &f->r), ==, -ENOENT);
        g_assert_nonnull(strstr(f->r.message, "lease not found"));
        g_assert_cmpuint(get(f, key), ==, 0);
}

static void test_kv_range_prefix(Fixture *f, gconstpointer data) {
        g_autofree char *prefix = test_key("q/");
        g_autofree char *a = test_key("q/a"), *b = test_key("q/b"), *c = test_key("q/c");
        g_autofree char *outside = test_key("q0"), *shorter = test_key("q");
        int64_t rev_a, rev_b, rev_c;

        ETCD_SKIP_WITHOUT_CLUSTER();

        /* Created in the order c, a, b; keys sort a, b, c. */
        rev_c = put(f, c, "3", 0);
        rev_a = put(f, a, "1", 0);
        rev_b = put(f, b, "2", 0);
        put(f, outside, "x", 0);
        put(f, shorter, "y", 0);

        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix), &(EtcdRangeOptions) { .prefix = true },
                                   &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 3);
        g_assert_cmpstr(sync_kv_key(&f->r, 0), ==, a);
        g_assert_cmpstr(sync_kv_key(&f->r, 1), ==, b);
        g_assert_cmpstr(sync_kv_key(&f->r, 2), ==, c);
        g_assert_cmpstr(sync_kv_value(&f->r, 2), ==, "3");
        g_assert_cmpint(f->r.count, ==, 3);
        g_assert_false(f->r.more);

        /* FIFO by creation: the first waiter, the last one. */
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .sort_target = ETCD_SORT_CREATE,
                                                         .sort_order = ETCD_SORT_ASCEND, .limit = 1 }, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 1);
        g_assert_cmpstr(sync_kv_key(&f->r, 0), ==, c);
        g_assert_true(f->r.more);
        g_assert_cmpint(f->r.count, ==, 3);

        /* A waiter's predecessor: the newest key created before it. */
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .sort_target = ETCD_SORT_CREATE,
                                                         .sort_order = ETCD_SORT_DESCEND, .limit = 1,
                                                         .max_create_revision = rev_b - 1 }, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 1);
        g_assert_cmpstr(sync_kv_key(&f->r, 0), ==, a);
        g_assert_cmpint(sync_kv(&f->r, 0)->create_revision, ==, rev_a);
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .sort_target = ETCD_SORT_CREATE,
                                                         .sort_order = ETCD_SORT_DESCEND, .limit = 1,
                                                         .max_create_revision = rev_c - 1 }, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 0);

        /* Keys only; count only. */
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .keys_only = true }, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 3);
        g_assert_cmpstr(sync_kv_value(&f->r, 0), ==, "");
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .count_only = true }, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 0);
        g_assert_cmpint(f->r.count, ==, 3);

        /* An old revision: before b existed. */
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .revision = rev_a }, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 2);
        g_assert_cmpstr(sync_kv_key(&f->r, 0), ==, a);
        g_assert_cmpstr(sync_kv_key(&f->r, 1), ==, c);

        /* A future revision: OUT_OF_RANGE. */
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .revision = rev_b + 1000000 }, &f->r), ==,
                        -ERANGE);
        g_assert_nonnull(strstr(f->r.message, "future revision"));
}

typedef struct Concurrent {
        unsigned n_done;
        GArray *revisions;
} Concurrent;

static void on_concurrent_put(EtcdCall *call, int error, const char *error_message, int64_t revision,
                              void *userdata) {
        Concurrent *c = userdata;

        g_assert_cmpint(error, ==, 0);
        c->n_done++;
        g_array_append_val(c->revisions, revision);
}

static void test_kv_revision_monotonic(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k");
        Concurrent many = { .revisions = g_array_new(false, false, sizeof(int64_t)) };
        g_autoptr(GHashTable) seen = g_hash_table_new(g_int64_hash, g_int64_equal);
        int64_t last = 0;

        ETCD_SKIP_WITHOUT_CLUSTER();

        for (unsigned i = 0; i < 20; i++) {
                g_autofree char *value = g_strdup_printf("%u", i);
                int64_t revision = put(f, key, value, 0);

                g_assert_cmpint(revision, >, last);
                last = revision;
        }
        g_assert_cmpuint(get(f, key), ==, 1);
        g_assert_cmpint(sync_kv(&f->r, 0)->mod_revision, ==, last);
        g_assert_cmpint(sync_kv(&f->r, 0)->version, ==, 20);
        g_assert_cmpint(f->r.revision, >=, last);

        /* Concurrent puts: each its own revision, all after the last. */
        for (unsigned i = 0; i < 10; i++) {
                g_autofree char *k = g_strdup_printf("%s-%u", key, i);

                g_assert_cmpint(etcd_put(f->client, k, strlen(k), "x", 1, 0, on_concurrent_put, &many, NULL), ==, 0);
        }
        test_run_until_count(f->event, &many.n_done, 10, 10 * SEC);
        for (unsigned i = 0; i < many.revisions->len; i++) {
                int64_t *revision = &g_array_index(many.revisions, int64_t, i);

                g_assert_cmpint(*revision, >, last);
                g_assert_false(g_hash_table_contains(seen, revision));
                g_hash_table_add(seen, revision);
        }
        g_array_unref(many.revisions);
}

static void test_kv_delete(Fixture *f, gconstpointer data) {
        g_autofree char *prefix = test_key("d/");
        g_autofree char *a = test_key("d/a"), *b = test_key("d/b"), *c = test_key("d/c");
        int64_t revision;

        ETCD_SKIP_WITHOUT_CLUSTER();

        put(f, a, "1", 0);
        put(f, b, "2", 0);
        revision = put(f, c, "3", 0);

        g_assert_cmpint(sync_delete(f->event, f->client, a, false, &f->r), ==, 0);
        g_assert_cmpint(f->r.count, ==, 1);
        g_assert_cmpint(f->r.revision, >, revision);
        g_assert_cmpuint(get(f, a), ==, 0);

        /* Nothing to delete: no error, nothing deleted. */
        g_assert_cmpint(sync_delete(f->event, f->client, a, false, &f->r), ==, 0);
        g_assert_cmpint(f->r.count, ==, 0);

        g_assert_cmpint(sync_delete(f->event, f->client, prefix, true, &f->r), ==, 0);
        g_assert_cmpint(f->r.count, ==, 2);
        g_assert_cmpint(sync_range(f->event, f->client, prefix, strlen(prefix), &(EtcdRangeOptions) { .prefix = true },
                                   &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 0);
}

/* ---- transactions ---------------------------------------------------------- */

static void test_txn_create_if_absent(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("lock");
        _cleanup_(etcd_txn_freep) EtcdTxn *first = NULL, *second = NULL;
        int64_t l1, l2, created;

        ETCD_SKIP_WITHOUT_CLUSTER();

        l1 = grant(f, 60);
        l2 = grant(f, 60);

        g_assert_cmpint(etcd_txn_new_create_if_absent(key, strlen(key), "holder-1", 8, l1, &first), ==, 0);
        g_assert_cmpint(sync_txn(f->event, f->client, first, &f->r), ==, 0);
        g_assert_true(f->r.succeeded);
        g_assert_cmpuint(f->r.op_types->len, ==, 1);
        g_assert_cmpint(g_array_index(f->r.op_types, EtcdOpType, 0), ==, ETCD_OP_PUT);
        created = f->r.revision;

        /* The second loses and learns who holds it. */
        g_assert_cmpint(etcd_txn_new_create_if_absent(key, strlen(key), "holder-2", 8, l2, &second), ==, 0);
        g_assert_cmpint(sync_txn(f->event, f->client, second, &f->r), ==, 0);
        g_assert_false(f->r.succeeded);
        g_assert_cmpuint(f->r.op_types->len, ==, 1);
        g_assert_cmpint(g_array_index(f->r.op_types, EtcdOpType, 0), ==, ETCD_OP_RANGE);
        g_assert_cmpuint(f->r.kvs->len, ==, 1);
        g_assert_cmpstr(sync_kv_value(&f->r, 0), ==, "holder-1");
        g_assert_cmpint(sync_kv(&f->r, 0)->lease, ==, l1);
        g_assert_cmpint(sync_kv(&f->r, 0)->create_revision, ==, created);
        g_assert_cmpint(sync_kv(&f->r, 0)->mod_revision, ==, created);
        g_assert_cmpint(f->r.revision, ==, created);

        /* The first builder again (a retried request): it loses too, and
         * the holder it finds is itself (its lease). */
        g_assert_cmpint(sync_txn(f->event, f->client, first, &f->r), ==, 0);
        g_assert_false(f->r.succeeded);
        g_assert_cmpint(sync_kv(&f->r, 0)->lease, ==, l1);

        /* Once the holder's lease is revoked, the key is free again. */
        g_assert_cmpint(sync_lease_revoke(f->event, f->client, l1, &f->r), ==, 0);
        g_assert_cmpint(sync_txn(f->event, f->client, second, &f->r), ==, 0);
        g_assert_true(f->r.succeeded);
        g_assert_cmpint(f->r.revision, >, created);

        /* A create under a lease that does not exist: the txn fails whole. */
        g_assert_cmpint(sync_lease_revoke(f->event, f->client, l2, &f->r), ==, 0);
        g_assert_cmpint(sync_txn(f->event, f->client, second, &f->r), ==, -ENOENT);
}

static void test_txn_delete_if_mod_revision(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("lock");
        _cleanup_(etcd_txn_freep) EtcdTxn *stale = NULL, *current = NULL;
        int64_t revision;

        ETCD_SKIP_WITHOUT_CLUSTER();

        revision = put(f, key, "v1", 0);
        put(f, key, "v2", 0);
        revision = f->r.revision;

        /* A holder that was replaced must not delete its successor's key. */
        g_assert_cmpint(etcd_txn_new_delete_if_mod_revision(key, strlen(key), revision - 1, &stale), ==, 0);
        g_assert_cmpint(sync_txn(f->event, f->client, stale, &f->r), ==, 0);
        g_assert_false(f->r.succeeded);
        g_assert_cmpuint(f->r.op_types->len, ==, 0);
        g_assert_cmpuint(get(f, key), ==, 1);

        g_assert_cmpint(etcd_txn_new_delete_if_mod_revision(key, strlen(key), revision, &current), ==, 0);
        g_assert_cmpint(sync_txn(f->event, f->client, current, &f->r), ==, 0);
        g_assert_true(f->r.succeeded);
        g_assert_cmpuint(f->r.op_types->len, ==, 1);
        g_assert_cmpint(g_array_index(f->r.op_types, EtcdOpType, 0), ==, ETCD_OP_DELETE);
        g_assert_cmpint(f->r.count, ==, 1);
        g_assert_cmpint(f->r.revision, >, revision);
        g_assert_cmpuint(get(f, key), ==, 0);

        /* Gone: the compare fails (mod_revision is 0 now). */
        g_assert_cmpint(sync_txn(f->event, f->client, current, &f->r), ==, 0);
        g_assert_false(f->r.succeeded);

        g_assert_cmpint(etcd_txn_new_delete_if_mod_revision(key, strlen(key), 0, &stale), ==, -EINVAL);
}

static void test_txn_builder(Fixture *f, gconstpointer data) {
        g_autofree char *a = test_key("a"), *b = test_key("b"), *prefix = test_key("");
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        int64_t lease, revision;

        ETCD_SKIP_WITHOUT_CLUSTER();

        lease = grant(f, 60);
        revision = put(f, a, "1", lease);

        /* All compares must hold: a's version 1, its lease, b absent. */
        g_assert_cmpint(etcd_txn_new(&t), ==, 0);
        g_assert_cmpint(etcd_txn_compare(t, a, strlen(a), ETCD_COMPARE_VERSION, ETCD_COMPARE_EQUAL, 1), ==, 0);
        g_assert_cmpint(etcd_txn_compare(t, a, strlen(a), ETCD_COMPARE_LEASE, ETCD_COMPARE_EQUAL, lease), ==, 0);
        g_assert_cmpint(etcd_txn_compare(t, a, strlen(a), ETCD_COMPARE_MOD, ETCD_COMPARE_LESS, revision + 1), ==, 0);
        g_assert_cmpint(etcd_txn_compare(t, b, strlen(b), ETCD_COMPARE_CREATE, ETCD_COMPARE_EQUAL, 0), ==, 0);
        g_assert_cmpint(etcd_txn_put(t, ETCD_TXN_SUCCESS, b, strlen(b), "2", 1, 0), ==, 0);
        g_assert_cmpint(etcd_txn_range(t, ETCD_TXN_SUCCESS, prefix, strlen(prefix), true), ==, 0);
        g_assert_cmpint(etcd_txn_delete(t, ETCD_TXN_FAILURE, prefix, strlen(prefix), true), ==, 0);
        g_assert_cmpint(etcd_txn_compare(t, a, strlen(a), (EtcdCompareTarget) 42, ETCD_COMPARE_EQUAL, 0), ==, -EINVAL);
        g_assert_cmpint(etcd_txn_put(t, (EtcdTxnBranch) 7, b, strlen(b), "2", 1, 0), ==, -EINVAL);

        g_assert_cmpint(sync_txn(f->event, f->client, t, &f->r), ==, 0);
        g_assert_true(f->r.succeeded);
        g_assert_cmpuint(f->r.op_types->len, ==, 2);
        g_assert_cmpint(g_array_index(f->r.op_types, EtcdOpType, 0), ==, ETCD_OP_PUT);
        g_assert_cmpint(g_array_index(f->r.op_types, EtcdOpType, 1), ==, ETCD_OP_RANGE);
        /* The range inside the txn sees the put before it. */
        g_assert_cmpuint(f->r.kvs->len, ==, 2);
        g_assert_cmpstr(sync_kv_key(&f->r, 0), ==, a);
        g_assert_cmpstr(sync_kv_key(&f->r, 1), ==, b);

        /* Again: b exists now, so the failure branch deletes both. */
        g_assert_cmpint(sync_txn(f->event, f->client, t, &f->r), ==, 0);
        g_assert_false(f->r.succeeded);
        g_assert_cmpuint(f->r.op_types->len, ==, 1);
        g_assert_cmpint(g_array_index(f->r.op_types, EtcdOpType, 0), ==, ETCD_OP_DELETE);
        g_assert_cmpint(f->r.count, ==, 2);
}

/* ---- the generic call ------------------------------------------------------- */

static void test_call_generic(Fixture *f, gconstpointer data) {
        JsonObject *o;

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(sync_call(f->event, f->client, "/v3/maintenance/status", "{}", &f->r), ==, 0);
        o = json_node_get_object(f->r.reply);
        g_assert_true(g_str_has_prefix(json_object_get_string_member(o, "version"), "3."));
        g_assert_true(json_object_has_member(o, "header"));

        /* etcd's own errors: INVALID_ARGUMENT. */
        g_assert_cmpint(sync_call(f->event, f->client, "/v3/kv/range", "{\"key\":\"!!!\"}", &f->r), ==, -EINVAL);
        g_assert_nonnull(strstr(f->r.message, "illegal base64"));

        /* A path the gateway does not know. */
        g_assert_cmpint(sync_call(f->event, f->client, "/v3/nope", "{}", &f->r), ==, -EBADMSG);
        g_assert_nonnull(strstr(f->r.message, "404"));
}

/* A call that may call back until it is cancelled (or its client freed),
 * never after. */
typedef struct Tracked {
        EtcdCall *call;
        bool answered;
        bool dead;
} Tracked;

static void on_tracked_range(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                             void *userdata) {
        Tracked *t = userdata;

        if (t->dead)
                g_error("callback of a cancelled call or freed client: %d %s", error, strempty(error_message));
        g_assert_cmpint(error, ==, 0);
        g_assert_false(t->answered);
        t->answered = true;
}

static void on_tracked_revision(EtcdCall *call, int error, const char *error_message, int64_t revision,
                                void *userdata) {
        on_tracked_range(call, error, error_message, NULL, userdata);
}

static void on_dead_event(EtcdWatch *w, const EtcdEvent *event, void *userdata) {
        const bool *freed = userdata;

        g_assert_false(*freed);
}

static void on_dead_error(EtcdWatch *w, int error, const char *error_message, void *userdata) {
        g_error("error on a watch: %s", error_message);
}

static void test_call_cancel(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k");
        unsigned n_cancelled = 0;

        ETCD_SKIP_WITHOUT_CLUSTER();

        put(f, key, "v", 0);

        /* Cancelled at once, after one loop iteration, and after a few:
         * some on the wire, some answered but not yet dispatched, some
         * already called back (those are not cancelled). */
        for (unsigned round = 0; round < 4; round++) {
                Tracked calls[8] = {};

                for (unsigned i = 0; i < G_N_ELEMENTS(calls); i++)
                        g_assert_cmpint(etcd_range(f->client, key, strlen(key), NULL, on_tracked_range, &calls[i],
                                                   &calls[i].call), ==, 0);
                for (unsigned i = 0; i < round * 2; i++)
                        g_assert_cmpint(sd_event_run(f->event, 100 * 1000), >=, 0);
                for (unsigned i = 0; i < G_N_ELEMENTS(calls); i++)
                        if (!calls[i].answered) {
                                etcd_call_cancel(calls[i].call);
                                calls[i].dead = true;
                                n_cancelled++;
                        }

                /* The client serves on; the next call's answer comes after
                 * any the cancelled ones could have had. */
                g_assert_cmpuint(get(f, key), ==, 1);
                g_assert_cmpuint(get(f, key), ==, 1);
        }
        etcd_call_cancel(NULL);
        g_assert_cmpuint(n_cancelled, >=, 8);
}

static void test_call_free_in_flight(Fixture *f, gconstpointer data) {
        static const EtcdWatchCallbacks callbacks = {
                .event = on_dead_event,
                .error = on_dead_error,
        };
        g_autofree char *key = test_key("k");
        EtcdWatch *w;

        ETCD_SKIP_WITHOUT_CLUSTER();

        put(f, key, "v", 0);
        for (unsigned round = 0; round < 4; round++) {
                Tracked calls[20] = {};
                bool freed = false;
                EtcdClient *c = NULL;

                g_assert_cmpint(etcd_client_new(f->event, etcd_cluster_endpoints(cluster), 10 * SEC, &c), ==, 0);
                for (unsigned i = 0; i < G_N_ELEMENTS(calls); i += 2) {
                        g_assert_cmpint(etcd_range(c, key, strlen(key), NULL, on_tracked_range, &calls[i], NULL),
                                        ==, 0);
                        g_assert_cmpint(etcd_put(c, key, strlen(key), "w", 1, 0, on_tracked_revision, &calls[i + 1],
                                                 NULL), ==, 0);
                }
                g_assert_cmpint(etcd_watch(c, key, strlen(key), &(EtcdWatchOptions) { .start_revision = 1 }, &callbacks,
                                           &freed, &w), ==, 0);
                for (unsigned i = 0; i < round * 3; i++)
                        g_assert_cmpint(sd_event_run(f->event, 100 * 1000), >=, 0);
                etcd_client_free(c);
                freed = true;
                for (unsigned i = 0; i < G_N_ELEMENTS(calls); i++)
                        calls[i].dead = true;

                /* The loop goes on with another client. */
                g_assert_cmpuint(get(f, key), ==, 1);
                g_assert_cmpuint(get(f, key), ==, 1);
        }
}

/* ---- watches ---------------------------------------------------------------- */

static void test_watch_in_order(Fixture *f, gconstpointer data) {
        g_autofree char *prefix = test_key("w/");
        g_autofree char *k1 = test_key("w/1"), *k2 = test_key("w/2"), *other = test_key("x");
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        g_autofree char *expected = NULL;
        int64_t start;

        ETCD_SKIP_WITHOUT_CLUSTER();

        /* History first, then the watch replays it from start. */
        start = put(f, k1, "a", 0);
        put(f, k2, "b", 0);
        put(f, other, "not watched", 0);
        put(f, k1, "c", 0);
        g_assert_cmpint(sync_delete(f->event, f->client, k1, false, &f->r), ==, 0);

        watch_recorder_start(&w, f->client, prefix, &(EtcdWatchOptions) { .prefix = true, .start_revision = start,
                                                                           .prev_kv = true });
        test_run_until(f->event, &w.created, 10 * SEC);
        while (w.n_events < 4 && !w.ended)
                g_assert_cmpint(sd_event_run(f->event, 10 * SEC), >, 0);

        /* Live ones follow. */
        g_assert_cmpint(sync_delete(f->event, f->client, k2, false, &f->r), ==, 0);
        while (w.n_events < 5 && !w.ended)
                g_assert_cmpint(sd_event_run(f->event, 10 * SEC), >, 0);
        g_assert_false(w.ended);

        expected = g_strdup_printf("PUT:%s=a PUT:%s=b PUT:%s=c<prev=a> DELETE:%s<prev=c> DELETE:%s<prev=b> ", k1, k2,
                                   k1, k1, k2);
        g_assert_cmpstr(w.log->str, ==, expected);
        g_assert_cmpint(g_array_index(w.revisions, int64_t, 0), ==, start);
        for (unsigned i = 1; i < w.revisions->len; i++)
                g_assert_cmpint(g_array_index(w.revisions, int64_t, i), >, g_array_index(w.revisions, int64_t, i - 1));
        g_assert_cmpint(g_array_index(w.revisions, int64_t, 4), ==, f->r.revision);
}

static void test_watch_from_now(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k");
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        g_autofree char *expected = NULL;

        ETCD_SKIP_WITHOUT_CLUSTER();

        put(f, key, "before", 0);
        watch_recorder_start(&w, f->client, key, NULL);
        test_run_until(f->event, &w.created, 10 * SEC);
        g_assert_cmpint(w.created_revision, >=, f->r.revision);

        put(f, key, "after", 0);
        g_assert_cmpint(sync_delete(f->event, f->client, key, false, &f->r), ==, 0);
        test_run_until_count(f->event, &w.n_events, 2, 10 * SEC);
        expected = g_strdup_printf("PUT:%s=after DELETE:%s ", key, key);
        g_assert_cmpstr(w.log->str, ==, expected);
}

/* A watch of deletes only sees no puts, also in the history it replays. */
static void test_watch_deletes_only(Fixture *f, gconstpointer data) {
        g_autofree char *prefix = test_key("d/");
        g_autofree char *k1 = test_key("d/1"), *k2 = test_key("d/2");
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        g_autofree char *expected = NULL;
        int64_t start;

        ETCD_SKIP_WITHOUT_CLUSTER();

        start = put(f, k1, "a", 0);
        g_assert_cmpint(sync_delete(f->event, f->client, k1, false, &f->r), ==, 0);
        watch_recorder_start(&w, f->client, prefix, &(EtcdWatchOptions) { .prefix = true, .start_revision = start,
                                                                           .deletes_only = true });
        test_run_until(f->event, &w.created, 10 * SEC);

        put(f, k2, "b", 0);
        put(f, k2, "c", 0);
        g_assert_cmpint(sync_delete(f->event, f->client, k2, false, &f->r), ==, 0);
        test_run_until_count(f->event, &w.n_events, 2, 10 * SEC);
        expected = g_strdup_printf("DELETE:%s DELETE:%s ", k1, k2);
        g_assert_cmpstr(w.log->str, ==, expected);
        g_assert_cmpint(g_array_index(w.revisions, int64_t, 1), ==, f->r.revision);
}

static void test_watch_cancel(Fixture *f, gconstpointer data) {
        g_autofree char *prefix = test_key("");
        _cleanup_(watch_recorder_clear) WatchRecorder cancelled = {}, control = {}, dropped = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        watch_recorder_start(&cancelled, f->client, prefix, &(EtcdWatchOptions) { .prefix = true });
        cancelled.cancel_after_first = true;
        watch_recorder_start(&control, f->client, prefix, &(EtcdWatchOptions) { .prefix = true });
        /* Cancelled before it was even created. */
        watch_recorder_start(&dropped, f->client, prefix, &(EtcdWatchOptions) { .prefix = true });
        etcd_watch_cancel(dropped.watch);
        dropped.watch = NULL;
        test_run_until(f->event, &control.created, 10 * SEC);
        test_run_until(f->event, &cancelled.created, 10 * SEC);

        for (unsigned i = 0; i < 5; i++) {
                g_autofree char *key = g_strdup_printf("%s%u", prefix, i);

                put(f, key, "v", 0);
        }
        /* The control watch saw every put: the cancelled one would have too. */
        test_run_until_count(f->event, &control.n_events, 5, 10 * SEC);

        g_assert_cmpuint(cancelled.n_events, ==, 1);
        g_assert_cmpuint(cancelled.n_errors, ==, 0);
        g_assert_false(dropped.created);
        g_assert_cmpuint(dropped.n_events + dropped.n_errors, ==, 0);
        g_assert_cmpuint(control.n_errors, ==, 0);
}

/* ---- failover --------------------------------------------------------------- */

static void test_failover_dead_first(Fixture *f, gconstpointer data) {
        g_autofree char *dead = test_dead_endpoint();
        g_autofree char *key = test_key("k");
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        char *endpoints[] = { dead, NULL, NULL };
        EtcdClient *c = NULL;

        ETCD_SKIP_WITHOUT_CLUSTER();

        endpoints[1] = (char *) etcd_cluster_endpoint(cluster, 1);
        g_assert_cmpint(etcd_client_new(f->event, endpoints, 5 * SEC, &c), ==, 0);
        g_assert_cmpstr(etcd_client_get_endpoint(c), ==, dead);
        g_assert_cmpint(sync_put(f->event, c, key, "v", 0, &f->r), ==, 0);
        g_assert_cmpstr(etcd_client_get_endpoint(c), ==, endpoints[1]);
        etcd_client_free(c);

        /* A watch fails over the same way before etcd created it. */
        g_assert_cmpint(etcd_client_new(f->event, endpoints, 5 * SEC, &c), ==, 0);
        watch_recorder_start(&w, c, key, &(EtcdWatchOptions) { .start_revision = f->r.revision });
        while (w.n_events < 1 && !w.ended)
                g_assert_cmpint(sd_event_run(f->event, 10 * SEC), >, 0);
        g_assert_true(w.created);
        g_assert_cmpuint(w.n_events, ==, 1);
        g_assert_cmpstr(etcd_client_get_endpoint(c), ==, endpoints[1]);
        watch_recorder_clear(&w);
        etcd_client_free(c);
}

/* ---- compaction: last, it drops history the other cases read ------------- */

static void test_compacted(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k");
        g_autofree char *request = NULL;
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        int64_t old, now;

        ETCD_SKIP_WITHOUT_CLUSTER();

        old = put(f, key, "1", 0);
        now = put(f, key, "2", 0);
        request = g_strdup_printf("{\"revision\":\"%" PRIi64 "\",\"physical\":true}", now);
        g_assert_cmpint(sync_call(f->event, f->client, "/v3/kv/compaction", request, &f->r), ==, 0);

        g_assert_cmpint(sync_range(f->event, f->client, key, strlen(key), &(EtcdRangeOptions) { .revision = old },
                                   &f->r), ==, -ERANGE);
        g_assert_nonnull(strstr(f->r.message, "compacted"));

        /* A watch from before the compaction ends with -ERANGE, once. */
        watch_recorder_start(&w, f->client, key, &(EtcdWatchOptions) { .start_revision = old });
        test_run_until(f->event, &w.ended, 10 * SEC);
        g_assert_cmpint(w.error, ==, -ERANGE);
        g_assert_nonnull(strstr(w.message, "compacted"));
        g_assert_cmpuint(w.n_events, ==, 0);
}

int main(int argc, char *argv[]) {
        cluster = etcd_test_init(&argc, &argv, 3);

#define ADD(path, func) g_test_add(path, Fixture, NULL, fixture_setup, func, fixture_teardown)
        ADD("/etcd/lease/grant", test_lease_grant);
        ADD("/etcd/lease/keepalive", test_lease_keepalive);
        ADD("/etcd/lease/revoke-deletes-keys", test_lease_revoke);
        ADD("/etcd/kv/put-range-bytes", test_kv_put_range_bytes);
        ADD("/etcd/kv/put-unknown-lease", test_kv_put_unknown_lease);
        ADD("/etcd/kv/range-prefix", test_kv_range_prefix);
        ADD("/etcd/kv/revision-monotonic", test_kv_revision_monotonic);
        ADD("/etcd/kv/delete", test_kv_delete);
        ADD("/etcd/txn/create-if-absent", test_txn_create_if_absent);
        ADD("/etcd/txn/delete-if-mod-revision", test_txn_delete_if_mod_revision);
        ADD("/etcd/txn/builder", test_txn_builder);
        ADD("/etcd/call/generic", test_call_generic);
        ADD("/etcd/call/cancel-in-flight", test_call_cancel);
        ADD("/etcd/call/free-client-in-flight", test_call_free_in_flight);
        ADD("/etcd/watch/put-delete-in-order", test_watch_in_order);
        ADD("/etcd/watch/from-now", test_watch_from_now);
        ADD("/etcd/watch/deletes-only", test_watch_deletes_only);
        ADD("/etcd/watch/cancel-stops-callbacks", test_watch_cancel);
        ADD("/etcd/failover/dead-first-endpoint", test_failover_dead_first);
        ADD("/etcd/compaction/range-and-watch", test_compacted);

        return etcd_test_run();
}
