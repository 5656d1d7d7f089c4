/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The etcd client against a real etcd 3.4 member with authentication on
 * (user root, etcd-test.h): with the right password every kind of request
 * works, a watch too, and requests started together share one
 * authentication; when etcd drops the token (a change of the user's
 * password invalidates its tokens at once: deterministic, unlike waiting
 * for --auth-token-ttl) the next calls and watches authenticate once again
 * and succeed; a wrong password or user fails each request, naming the
 * user and the endpoint, never the password; without credentials etcd
 * refuses the requests (so authentication is really on). */

#include <errno.h>
#include <string.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "etcd-sync.h"
#include "etcd-test.h"
#include "etcd.h"

#define SEC G_USEC_PER_SEC
#define CALL_TIMEOUT_USEC (20U * SEC)

static EtcdCluster *cluster;

typedef SyncFixture Fixture;

static EtcdClient *client_new(Fixture *f, const char *user, const char *password) {
        EtcdClient *c = NULL;

        g_assert_cmpint(etcd_client_new(f->event, etcd_cluster_endpoints(cluster), CALL_TIMEOUT_USEC, &c), ==, 0);
        g_assert_cmpint(etcd_client_set_auth(c, user, password), ==, 0);
        return c;
}

static EtcdClient *root_client_new(Fixture *f) {
        const EtcdClusterAuth *auth = etcd_cluster_auth(cluster);

        g_assert_nonnull(auth);
        return client_new(f, auth->user, auth->password);
}

/* Every token of root is invalid from now on: etcd drops a user's tokens
 * when its password changes (here to the same one). */
static void invalidate_tokens(Fixture *f) {
        _cleanup_(etcd_client_freep) EtcdClient *admin = root_client_new(f);
        g_autofree char *request = NULL;

        request = g_strdup_printf("{\"name\":\"root\",\"password\":\"%s\"}", etcd_cluster_auth(cluster)->password);
        if (sync_call(f->event, admin, "/v3/auth/user/changepw", request, &f->r) != 0)
                g_error("changepw: %s", f->r.message);
}

typedef struct PutCounter {
        unsigned n_done;
        unsigned n_failed;
        char *first_error;
} PutCounter;

static void on_put(EtcdCall *call, int error, const char *error_message, int64_t revision, void *userdata) {
        PutCounter *p = userdata;

        if (error < 0) {
                if (!p->first_error)
                        p->first_error = g_strdup(error_message);
                p->n_failed++;
        }
        p->n_done++;
}

/* n puts and a watch started in one go (nothing runs in between), then
 * the loop until all answered and the watch is created. */
static void burst(Fixture *f, EtcdClient *c, const char *key, unsigned n, WatchRecorder *w) {
        PutCounter p = {};

        watch_recorder_start(w, c, key, NULL);
        for (unsigned i = 0; i < n; i++)
                g_assert_cmpint(etcd_put(c, key, strlen(key), "v", 1, 0, on_put, &p, NULL), ==, 0);
        test_run_until_count(f->event, &p.n_done, n, 2 * CALL_TIMEOUT_USEC);
        if (p.n_failed > 0)
                g_error("%u of %u puts failed: %s", p.n_failed, n, p.first_error);
        test_run_until(f->event, &w->created, 2 * CALL_TIMEOUT_USEC);
        g_free(p.first_error);
}

/* The right password: calls, a transaction, a lease and a watch work, on
 * one token fetched once for all of them. */
static void test_right_password(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k"), *lock = test_key("lock");
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        int64_t lease;

        ETCD_SKIP_WITHOUT_CLUSTER();

        c = root_client_new(f);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 0);

        /* A watch and puts started together wait for one authentication. */
        burst(f, c, key, 3, &w);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 1);

        if (sync_lease_grant(f->event, c, 30, &f->r) != 0)
                g_error("lease grant: %s", f->r.message);
        lease = f->r.lease_id;
        g_assert_cmpint(sync_put(f->event, c, key, "1", lease, &f->r), ==, 0);
        g_assert_cmpint(sync_range(f->event, c, key, strlen(key), NULL, &f->r), ==, 0);
        g_assert_cmpstr(sync_kv_value(&f->r, 0), ==, "1");
        g_assert_cmpint(etcd_txn_new_create_if_absent(lock, strlen(lock), "me", 2, lease, &t), ==, 0);
        g_assert_cmpint(sync_txn(f->event, c, t, &f->r), ==, 0);
        g_assert_true(f->r.succeeded);

        /* The watch (created before the put) sees it. */
        while (!strstr(w.log->str, "=1 ") && !w.ended)
                g_assert_cmpint(sd_event_run(f->event, 10 * SEC), >, 0);
        g_assert_cmpuint(w.n_errors, ==, 0);

        g_assert_cmpint(sync_lease_revoke(f->event, c, lease, &f->r), ==, 0);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 1);
}

/* Without credentials, etcd refuses: authentication is really on. */
static void test_no_credentials(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k");
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;

        ETCD_SKIP_WITHOUT_CLUSTER();

        c = client_new(f, NULL, NULL);
        g_assert_cmpint(sync_put(f->event, c, key, "1", 0, &f->r), ==, -EINVAL);
        g_assert_nonnull(strstr(f->r.message, "user name is empty"));
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 0);
}

/* etcd dropped the token: the next calls, and a watch started with them,
 * are refused once, authenticate again (once for all of them) and
 * succeed. A watch alone after the next drop does the same. */
static void test_token_invalidated(Fixture *f, gconstpointer data) {
        g_autofree char *key = test_key("k");
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        _cleanup_(watch_recorder_clear) WatchRecorder w1 = {}, w2 = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        c = root_client_new(f);
        g_assert_cmpint(sync_put(f->event, c, key, "1", 0, &f->r), ==, 0);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 1);

        invalidate_tokens(f);
        burst(f, c, key, 4, &w1);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 2);
        g_assert_cmpuint(w1.n_errors, ==, 0);

        invalidate_tokens(f);
        watch_recorder_start(&w2, c, key, NULL);
        test_run_until(f->event, &w2.created, 2 * CALL_TIMEOUT_USEC);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 2 + 1);

        /* Both watches go on without a token: what etcd checks is the
         * creation. */
        g_assert_cmpint(sync_put(f->event, c, key, "2", 0, &f->r), ==, 0);
        while ((!strstr(w1.log->str, "=2 ") || !strstr(w2.log->str, "=2 ")) && !w1.ended && !w2.ended)
                g_assert_cmpint(sd_event_run(f->event, 10 * SEC), >, 0);
        g_assert_cmpuint(w1.n_errors + w2.n_errors, ==, 0);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 3);
}

/* A message of a failed authentication: says who and where, never the
 * password. */
static void assert_auth_failure(const char *message, const char *user, const char *password) {
        g_assert_nonnull(message);
        g_test_message("%s", message);
        if (!strstr(message, etcd_cluster_endpoint(cluster, 0)))
                g_error("'%s' does not name the endpoint", message);
        if (!strstr(message, user))
                g_error("'%s' does not name the user %s", message, user);
        if (strstr(message, password))
                g_error("'%s' shows the password", message);
}

/* A wrong password (or user): every request fails, -EACCES, saying so. */
static void test_wrong_password(Fixture *f, gconstpointer data) {
        static const char *const wrong = "not-the-password-4711";
        g_autofree char *key = test_key("k"), *expected_user = g_strdup("user 'root'");
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL, *nobody = NULL;
        _cleanup_(watch_recorder_clear) WatchRecorder w = {};
        PutCounter p = {};

        ETCD_SKIP_WITHOUT_CLUSTER();

        c = client_new(f, "root", wrong);
        /* A call and a watch started together. */
        watch_recorder_start(&w, c, key, NULL);
        g_assert_cmpint(etcd_put(c, key, strlen(key), "v", 1, 0, on_put, &p, NULL), ==, 0);
        test_run_until_count(f->event, &p.n_done, 1, 2 * CALL_TIMEOUT_USEC);
        test_run_until(f->event, &w.ended, 2 * CALL_TIMEOUT_USEC);
        g_assert_cmpuint(p.n_failed, ==, 1);
        assert_auth_failure(p.first_error, expected_user, wrong);
        g_assert_nonnull(strstr(p.first_error, "authentication failed"));
        g_assert_false(w.created);
        g_assert_cmpint(w.error, ==, -EACCES);
        assert_auth_failure(w.message, expected_user, wrong);
        g_free(p.first_error);

        /* A later call tries again (the password may have been fixed in
         * etcd meanwhile), and fails the same way. */
        g_assert_cmpint(sync_range(f->event, c, key, strlen(key), NULL, &f->r), ==, -EACCES);
        assert_auth_failure(f->r.message, expected_user, wrong);
        g_assert_cmpuint(etcd_client_get_n_authentications(c), ==, 0);

        /* A user etcd does not know. */
        nobody = client_new(f, "nobody", etcd_cluster_auth(cluster)->password);
        g_assert_cmpint(sync_range(f->event, nobody, key, strlen(key), NULL, &f->r), ==, -EACCES);
        assert_auth_failure(f->r.message, "user 'nobody'", etcd_cluster_auth(cluster)->password);
}

/* A user needs a password, a password its user. */
static void test_set_auth_invalid(Fixture *f, gconstpointer data) {
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        char *endpoints[] = { (char *) "http://127.0.0.1:2379", NULL };

        g_assert_cmpint(etcd_client_new(f->event, endpoints, 0, &c), ==, 0);
        g_assert_cmpint(etcd_client_set_auth(c, "root", NULL), ==, -EINVAL);
        g_assert_cmpint(etcd_client_set_auth(c, NULL, "pw"), ==, -EINVAL);
        g_assert_cmpint(etcd_client_set_auth(c, "", "pw"), ==, -EINVAL);
        g_assert_cmpint(etcd_client_set_auth(c, "root", "pw"), ==, 0);
        g_assert_cmpint(etcd_client_set_auth(c, NULL, NULL), ==, 0);
        g_assert_cmpint(etcd_client_set_auth(NULL, NULL, NULL), ==, -EINVAL);
}

#define add(path, func) g_test_add((path), Fixture, NULL, sync_fixture_setup, (func), sync_fixture_teardown)

int main(int argc, char *argv[]) {
        cluster = etcd_test_init_auth(&argc, &argv, 1);

        add("/etcd/auth/right-password", test_right_password);
        add("/etcd/auth/no-credentials", test_no_credentials);
        add("/etcd/auth/token-invalidated", test_token_invalidated);
        add("/etcd/auth/wrong-password", test_wrong_password);
        add("/etcd/auth/set-auth-invalid", test_set_auth_invalid);

        return etcd_test_run();
}
