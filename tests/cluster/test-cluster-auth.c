/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode on an etcd cluster with user and password authentication
 * (cluster_test_init_auth()): two lockbusd given the user and its password
 * file lock across hosts as without authentication, and go on doing so
 * after etcd dropped every token of the user (a change of its password, to
 * the same one): each daemon authenticates again and retries.
 *
 * A wrong password and the token's expiry are tested on the client in
 * tests/etcd/test-etcd-auth.c: a daemon that cannot authenticate waits
 * longer at start than this harness waits for it. */

#include <string.h>
#include <unistd.h>

#include "cluster-test.h"
#include "etcd-sync.h"

/* A lock taken on A blocks B, naming host A; once A lets go, B gets it
 * with a greater token. */
static void lock_across_hosts(ClusterFixture *f, const char *resource) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *message = NULL;
        uint64_t token_a, token_b;
        int r;

        token_a = test_lock_ok(f->a.client, resource);
        g_assert_cmpuint(cluster_count_keys(f, resource), ==, 1);

        message = g_strdup_printf("Resource '%s' already locked by uid %u (pid %d, %s) on host hostA", resource,
                                  (unsigned) geteuid(), (int) getpid(), f->comm);
        r = test_lock(f->b.client, resource, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);

        test_unlock_ok(f->a.client, resource);
        token_b = test_acquire_ok(f->b.client, resource, NULL);
        g_assert_cmpuint(token_b, >, token_a);
}

static void test_lock_across_hosts(ClusterFixture *f, gconstpointer data) {
        CLUSTER_SKIP_WITHOUT_ETCD();

        lock_across_hosts(f, "db");
}

/* etcd drops every token of root; the daemons' next requests are refused
 * once, authenticate again and succeed. */
static void test_tokens_dropped(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sync_result_clear) SyncResult r = {};
        g_autofree char *request = NULL;

        CLUSTER_SKIP_WITHOUT_ETCD();

        lock_across_hosts(f, "before");

        request = g_strdup_printf("{\"name\":\"root\",\"password\":\"%s\"}", etcd_cluster_auth(f->etcd)->password);
        if (sync_call(f->event, f->etcd_client, "/v3/auth/user/changepw", request, &r) != 0)
                g_error("changepw: %s", r.message);

        lock_across_hosts(f, "after");
}

int main(int argc, char *argv[]) {
        cluster_test_init_auth(&argc, &argv);

        cluster_test_add("/cluster/auth/lock-across-hosts", test_lock_across_hosts);
        cluster_test_add("/cluster/auth/tokens-dropped", test_tokens_dropped);

        return cluster_test_run();
}
