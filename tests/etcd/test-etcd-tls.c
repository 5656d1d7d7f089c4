/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The etcd client against a real etcd 3.4 member that serves https:// and
 * wants a client certificate (--client-cert-auth), its certificates made
 * by openssl at start (etcd-test.h): with the right CA, certificate and
 * key every kind of request works, a watch too; without a client
 * certificate, with a CA that did not sign the member's certificate, with
 * only the system's CA store, or with a CA file that is not there, each
 * call fails at once, naming the endpoint and libcurl's reason. */

#include <errno.h>
#include <string.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "etcd-sync.h"
#include "etcd-test.h"
#include "etcd.h"

#define SEC G_USEC_PER_SEC
/* Far more than a refusal takes: a failure must not be a timeout. */
#define CALL_TIMEOUT_USEC (20U * SEC)

static EtcdCluster *cluster;

typedef SyncFixture Fixture;

static EtcdClient *client_new(Fixture *f, const EtcdTlsOptions *tls) {
        EtcdClient *c = NULL;

        g_assert_cmpint(etcd_client_new(f->event, etcd_cluster_endpoints(cluster), CALL_TIMEOUT_USEC, &c), ==, 0);
        g_assert_cmpint(etcd_client_set_tls(c, tls), ==, 0);
        return c;
}

/* A read that must fail with `error`, soon, its message naming the
 * endpoint and containing `reason` (libcurl's words). */
static void assert_refused(Fixture *f, EtcdClient *c, int error, const char *reason) {
        const char *endpoint = etcd_cluster_endpoint(cluster, 0);
        uint64_t start = test_now_usec();

        g_assert_cmpint(sync_range(f->event, c, "k", 1, NULL, &f->r), ==, error);
        g_test_message("%s", f->r.message);
        g_assert_cmpuint(test_now_usec() - start, <, CALL_TIMEOUT_USEC / 2);
        g_assert_nonnull(f->r.message);
        if (!strstr(f->r.message, endpoint))
                g_error("'%s' does not name the endpoint %s", f->r.message, endpoint);
        if (!strstr(f->r.message, reason))
                g_error("'%s' does not say '%s'", f->r.message, reason);
}

/* CA, certificate and key: calls, a transaction and a watch work. */
static void test_client_certificate(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k"), *lock = test_key("lock");
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        const EtcdClusterTls *tls;
        int64_t lease;

        ETCD_SKIP_WITHOUT_CLUSTER();
        tls = etcd_cluster_tls(cluster);
        g_assert_nonnull(tls);
        g_assert_true(g_str_has_prefix(etcd_cluster_endpoint(cluster, 0), "https://"));

        c = client_new(f, &(EtcdTlsOptions) {
                .ca_file = tls->ca_file,
                .cert_file = tls->cert_file,
                .key_file = tls->key_file,
        });
        if (sync_lease_grant(f->event, c, 30, &f->r) != 0)
                g_error("lease grant over TLS: %s", f->r.message);
        lease = f->r.lease_id;

        watch_recorder_start(&w, c, key, NULL);
        test_run_until(f->event, &w.created, 10 * SEC);

        g_assert_cmpint(sync_put(f->event, c, key, "1", lease, &f->r), ==, 0);
        g_assert_cmpint(sync_range(f->event, c, key, strlen(key), NULL, &f->r), ==, 0);
        g_assert_cmpstr(sync_kv_value(&f->r, 0), ==, "1");
        g_assert_cmpint(etcd_txn_new_create_if_absent(lock, strlen(lock), "me", 2, lease, &t), ==, 0);
        g_assert_cmpint(sync_txn(f->event, c, t, &f->r), ==, 0);
        g_assert_true(f->r.succeeded);

        while (w.n_events < 1 && !w.ended)
                g_assert_cmpint(sd_event_run(f->event, 10 * SEC), >, 0);
        g_assert_cmpuint(w.n_errors, ==, 0);
        g_assert_nonnull(strstr(w.log->str, "PUT:"));

        g_assert_cmpint(sync_lease_revoke(f->event, c, lease, &f->r), ==, 0);
}

/* The right CA but no client certificate: etcd refuses the handshake. */
static void test_no_client_certificate(Fixture *f, gconstpointer data) {
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        c = client_new(f, &(EtcdTlsOptions) { .ca_file = etcd_cluster_tls(cluster)->ca_file });
        /* etcd's alert, as OpenSSL names it: "bad certificate" (TLS 1.2)
         * or "certificate required" (TLS 1.3). */
        assert_refused(f, c, -ECONNRESET, "alert");
        g_assert_nonnull(strstr(f->r.message, "certificate"));

        /* A watch fails the same way, before etcd could create it. */
        watch_recorder_start(&w, c, "k", NULL);
        test_run_until(f->event, &w.ended, CALL_TIMEOUT_USEC);
        g_assert_false(w.created);
        g_assert_cmpint(w.error, <, 0);
        g_assert_nonnull(strstr(w.message, etcd_cluster_endpoint(cluster, 0)));
}

/* A CA that did not sign the member's certificate: we refuse it, even
 * with a client certificate etcd would take. */
static void test_wrong_ca(Fixture *f, gconstpointer data) {
        const EtcdClusterTls *tls;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;

        ETCD_SKIP_WITHOUT_CLUSTER();
        tls = etcd_cluster_tls(cluster);

        c = client_new(f, &(EtcdTlsOptions) {
                .ca_file = tls->other_ca_file,
                .cert_file = tls->cert_file,
                .key_file = tls->key_file,
        });
        assert_refused(f, c, -EPROTO, "SSL certificate problem");
}

/* Without a CA file, the system's store: it does not know the test CA, so
 * verification (never turned off) fails. */
static void test_system_store(Fixture *f, gconstpointer data) {
        const EtcdClusterTls *tls;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;

        ETCD_SKIP_WITHOUT_CLUSTER();
        tls = etcd_cluster_tls(cluster);

        c = client_new(f, &(EtcdTlsOptions) { .cert_file = tls->cert_file, .key_file = tls->key_file });
        assert_refused(f, c, -EPROTO, "SSL certificate problem");
}

/* A CA file that went away after the start: each call names it. */
static void test_missing_ca_file(Fixture *f, gconstpointer data) {
        g_autofree char *missing = NULL;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;

        ETCD_SKIP_WITHOUT_CLUSTER();

        missing = g_strconcat(etcd_cluster_tls(cluster)->ca_file, ".missing", NULL);
        c = client_new(f, &(EtcdTlsOptions) { .ca_file = missing });
        assert_refused(f, c, -EPROTO, missing);
}

/* A certificate without its key, or a key without its certificate. */
static void test_set_tls_invalid(Fixture *f, gconstpointer data) {
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        char *endpoints[] = { (char *) "https://127.0.0.1:2379", NULL };

        g_assert_cmpint(etcd_client_new(f->event, endpoints, 0, &c), ==, 0);
        g_assert_cmpint(etcd_client_set_tls(c, &(EtcdTlsOptions) { .cert_file = "/c.pem" }), ==, -EINVAL);
        g_assert_cmpint(etcd_client_set_tls(c, &(EtcdTlsOptions) { .key_file = "/k.pem" }), ==, -EINVAL);
        g_assert_cmpint(etcd_client_set_tls(c, &(EtcdTlsOptions) { .cert_file = "/c.pem", .key_file = "/k.pem" }),
                        ==, 0);
        g_assert_cmpint(etcd_client_set_tls(c, NULL), ==, 0);
        g_assert_cmpint(etcd_client_set_tls(NULL, NULL), ==, -EINVAL);
}

#define add(path, func) g_test_add((path), Fixture, NULL, sync_fixture_setup, (func), sync_fixture_teardown)

int main(int argc, char *argv[]) {
        cluster = etcd_test_init_tls(&argc, &argv, 1);

        add("/etcd/tls/client-certificate", test_client_certificate);
        add("/etcd/tls/no-client-certificate", test_no_client_certificate);
        add("/etcd/tls/wrong-ca", test_wrong_ca);
        add("/etcd/tls/system-store", test_system_store);
        add("/etcd/tls/missing-ca-file", test_missing_ca_file);
        add("/etcd/tls/set-tls-invalid", test_set_tls_invalid);

        return etcd_test_run();
}
