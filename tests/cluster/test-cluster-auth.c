/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode on an etcd cluster with user and password authentication
 * (cluster_test_init_auth()): two lockbusd given the user and its password
 * file lock across hosts as without authentication, and go on doing so
 * after etcd dropped every token of the user (a change of its password, to
 * the same one): each daemon authenticates again and retries.
 *
 * A daemon given a wrong password serves at once (it does not wait for
 * etcd at start once etcd turned it away), and each lock fails with
 * Storage, saying why, never showing the password. The token's expiry is
 * tested on the client in tests/etcd/test-etcd-auth.c. */

#include <inttypes.h>
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

/* B locks and lets go (A is not needed). */
static void lock_across_hosts_from_b(ClusterFixture *f, const char *resource) {
        uint64_t token = test_lock_ok(f->b.client, resource);

        g_assert_cmpuint(token, >, 0);
        test_unlock_ok(f->b.client, resource);
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

/* Host A's lockbusd started again with a wrong password. */
static void test_wrong_password(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *path = g_build_filename(f->a.bus->dir, "wrong.password", NULL);
        g_autofree char *arg = g_strconcat("--etcd-password-file=", path, NULL);
        g_autoptr(GStrvBuilder) args = g_strv_builder_new();
        uint64_t started;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();

        g_assert_true(g_file_set_contents(path, "not-the-password-42\n", -1, NULL));
        test_bus_kill_daemon(f->a.bus);
        /* A later option wins. */
        g_strv_builder_addv(args, (const char **) f->a.bus->extra_args);
        g_strv_builder_add(args, arg);
        g_strfreev(f->a.bus->extra_args);
        f->a.bus->extra_args = g_strv_builder_end(args);

        started = test_now_monotonic();
        cluster_host_start_daemon(f, &f->a);
        g_test_message("served %" PRIu64 " ms after its start", (test_now_monotonic() - started) / 1000U);

        r = test_lock(f->a.client, "db", NULL, &error);
        g_test_message("Lock with a wrong password: %s: %s", strempty(error.name), strempty(error.message));
        assert_call_error(r, &error, LOCKBUS_ERROR_STORAGE, NULL);
        g_assert_nonnull(strstr(error.message, "authenticate"));
        g_assert_nonnull(strstr(error.message, "'root'"));
        g_assert_null(strstr(error.message, "not-the-password-42"));

        /* B, with the right one, is not affected. */
        lock_across_hosts_from_b(f, "db");
}

int main(int argc, char *argv[]) {
        cluster_test_init_auth(&argc, &argv);

        cluster_test_add("/cluster/auth/lock-across-hosts", test_lock_across_hosts);
        cluster_test_add("/cluster/auth/tokens-dropped", test_tokens_dropped);
        cluster_test_add("/cluster/auth/wrong-password", test_wrong_password);

        return cluster_test_run();
}
