/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode on an etcd cluster that serves https:// and wants client
 * certificates (cluster_test_init_tls()): two lockbusd given the CA, the
 * client certificate and its key lock across hosts as on plain HTTP.
 *
 * What fails (no client certificate, a wrong CA) is tested on the client
 * in tests/etcd/test-etcd-tls.c: a daemon that cannot reach etcd waits
 * longer at start than this harness waits for it. */

#include <string.h>
#include <unistd.h>

#include "cluster-test.h"

/* A lock taken on A blocks B, naming host A; once A lets go, B gets it
 * with a greater token. */
static void test_lock_across_hosts(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *message = NULL;
        uint64_t token_a, token_b;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();

        token_a = test_lock_ok(f->a.client, "db");
        g_assert_cmpuint(cluster_count_keys(f, "db"), ==, 1);

        message = g_strdup_printf("Resource 'db' already locked by uid %u (pid %d, %s) on host hostA",
                                  (unsigned) geteuid(), (int) getpid(), f->comm);
        r = test_lock(f->b.client, "db", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);

        test_unlock_ok(f->a.client, "db");
        token_b = test_acquire_ok(f->b.client, "db", NULL);
        g_assert_cmpuint(token_b, >, token_a);
}

int main(int argc, char *argv[]) {
        cluster_test_init_tls(&argc, &argv);

        cluster_test_add("/cluster/tls/lock-across-hosts", test_lock_across_hosts);

        return cluster_test_run();
}
