/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The etcd client while a real 3-member cluster loses members: the leader,
 * which the client talks to, is SIGKILLed and every call still succeeds on
 * the others (a watch on it ends with one error, a new one works); then
 * the rest go and a call fails within its timeout, naming each endpoint.
 * A cluster of its own: the cases here break it. */

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "etcd-sync.h"
#include "etcd-test.h"
#include "etcd.h"

#define SEC G_USEC_PER_SEC
#define CALL_TIMEOUT_USEC (5U * SEC)

static EtcdCluster *cluster;

typedef SyncFixture Fixture;

/* Asks each member who leads. */
static unsigned find_leader(Fixture *f) {
        for (unsigned i = 0; i < etcd_cluster_size(cluster); i++) {
                char *endpoints[] = { (char *) etcd_cluster_endpoint(cluster, i), NULL };
                _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
                JsonObject *o;
                const char *leader, *self;

                g_assert_cmpint(etcd_client_new(f->event, endpoints, 5 * SEC, &c), ==, 0);
                g_assert_cmpint(sync_call(f->event, c, "/v3/maintenance/status", "{}", &f->r), ==, 0);
                o = json_node_get_object(f->r.reply);
                leader = json_object_get_string_member(o, "leader");
                self = json_object_get_string_member(json_object_get_object_member(o, "header"), "member_id");
                if (leader && self && streq(leader, self))
                        return i;
        }
        g_error("no member says it leads");
}

static void test_kill_leader(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k"), *lock = test_key("lock");
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        _cleanup_(watch_recorder_clear) WatchRecorder before = {}, after = {};
        char *endpoints[4] = {};
        unsigned leader, n = 0;
        uint64_t start;
        int64_t lease;

        ETCD_SKIP_WITHOUT_CLUSTER();

        /* The leader first: the client talks to it until it dies. */
        leader = find_leader(f);
        endpoints[n++] = (char *) etcd_cluster_endpoint(cluster, leader);
        for (unsigned i = 0; i < 3; i++)
                if (i != leader)
                        endpoints[n++] = (char *) etcd_cluster_endpoint(cluster, i);
        g_assert_cmpint(etcd_client_new(f->event, endpoints, CALL_TIMEOUT_USEC, &c), ==, 0);

        g_assert_cmpint(sync_lease_grant(f->event, c, 30, &f->r), ==, 0);
        lease = f->r.lease_id;
        g_assert_cmpint(sync_put(f->event, c, key, "1", lease, &f->r), ==, 0);
        watch_recorder_start(&before, c, key, NULL);
        test_run_until(f->event, &before.created, 10 * SEC);
        g_assert_cmpstr(etcd_client_get_endpoint(c), ==, endpoints[0]);

        start = test_now_usec();
        etcd_cluster_kill_member(cluster, leader);

        /* Its watch ends, once, and says why. */
        test_run_until(f->event, &before.ended, 10 * SEC);
        g_test_message("watch on the killed leader ended after %" PRIu64 " ms: %s", (test_now_usec() - start) / 1000,
                       before.message);
        g_assert_cmpint(before.error, ==, -ECONNRESET);
        g_assert_nonnull(strstr(before.message, endpoints[0]));

        /* Every kind of call still succeeds, on another member, while the
         * two left elect a new leader. */
        start = test_now_usec();
        if (sync_lease_keepalive(f->event, c, lease, &f->r) != 0)
                g_error("keepalive after the leader died: %s", f->r.message);
        g_test_message("first call after the kill took %" PRIu64 " ms (election)", (test_now_usec() - start) / 1000);
        g_assert_cmpint(f->r.ttl, >, 0);
        g_assert_cmpstr(etcd_client_get_endpoint(c), !=, endpoints[0]);
        g_assert_cmpint(sync_put(f->event, c, key, "2", lease, &f->r), ==, 0);
        g_assert_cmpint(sync_range(f->event, c, key, strlen(key), NULL, &f->r), ==, 0);
        g_assert_cmpstr(sync_kv_value(&f->r, 0), ==, "2");
        g_assert_cmpint(etcd_txn_new_create_if_absent(lock, strlen(lock), "me", 2, lease, &t), ==, 0);
        g_assert_cmpint(sync_txn(f->event, c, t, &f->r), ==, 0);
        g_assert_true(f->r.succeeded);

        /* A new watch works on what is left. */
        watch_recorder_start(&after, c, key, NULL);
        test_run_until(f->event, &after.created, 10 * SEC);
        g_assert_cmpint(sync_put(f->event, c, key, "3", lease, &f->r), ==, 0);
        while (after.n_events < 1 && !after.ended)
                g_assert_cmpint(sd_event_run(f->event, 10 * SEC), >, 0);
        g_assert_cmpuint(after.n_errors, ==, 0);

        g_assert_cmpint(sync_lease_revoke(f->event, c, lease, &f->r), ==, 0);
        g_assert_cmpint(sync_range(f->event, c, lock, strlen(lock), NULL, &f->r), ==, 0);
        g_assert_cmpuint(f->r.kvs->len, ==, 0);
}

static void test_all_down(Fixture *f, gconstpointer data) {
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        uint64_t start, elapsed;

        ETCD_SKIP_WITHOUT_CLUSTER();

        g_assert_cmpint(etcd_client_new(f->event, etcd_cluster_endpoints(cluster), CALL_TIMEOUT_USEC, &c), ==, 0);
        for (unsigned i = 0; i < 3; i++)
                etcd_cluster_kill_member(cluster, i);

        start = test_now_usec();
        g_assert_cmpint(sync_range(f->event, c, "k", 1, NULL, &f->r), ==, -ECONNREFUSED);
        elapsed = test_now_usec() - start;
        g_assert_cmpuint(elapsed, <, CALL_TIMEOUT_USEC + SEC);
        for (unsigned i = 0; i < 3; i++)
                g_assert_nonnull(strstr(f->r.message, etcd_cluster_endpoint(cluster, i)));
        g_test_message("%s", f->r.message);

        /* Also the keepalive the backend would send, and a watch. */
        g_assert_cmpint(sync_lease_keepalive(f->event, c, 1, &f->r), ==, -ECONNREFUSED);
        {
                _cleanup_(watch_recorder_clear) WatchRecorder w = {};

                watch_recorder_start(&w, c, "k", NULL);
                test_run_until(f->event, &w.ended, CALL_TIMEOUT_USEC + SEC);
                g_assert_cmpint(w.error, ==, -ECONNREFUSED);
                g_assert_false(w.created);
        }
}

int main(int argc, char *argv[]) {
        cluster = etcd_test_init(&argc, &argv, 3);

        g_test_add("/etcd/failover/kill-leader", Fixture, NULL, sync_fixture_setup, test_kill_leader, sync_fixture_teardown);
        g_test_add("/etcd/failover/all-members-down", Fixture, NULL, sync_fixture_setup, test_all_down, sync_fixture_teardown);

        return etcd_test_run();
}
