/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <string.h>

#include "cluster-test.h"
#include "etcd-sync.h"

#define ETCD_CALL_TIMEOUT_USEC (5U * G_USEC_PER_SEC)

static EtcdCluster *cluster;

void cluster_test_init(int *argc, char ***argv) {
        cluster = etcd_test_init(argc, argv, 3);
}

void cluster_test_init_tls(int *argc, char ***argv) {
        cluster = etcd_test_init_tls(argc, argv, 3);
}

void cluster_test_init_auth(int *argc, char ***argv) {
        cluster = etcd_test_init_auth(argc, argv, 3);
}

int cluster_test_run(void) {
        int r;

        r = etcd_test_run();
        cluster = NULL;
        return r;
}

const EtcdClusterTls *cluster_test_tls(void) {
        return cluster ? etcd_cluster_tls(cluster) : NULL;
}

bool cluster_test_skip(void) {
        return etcd_test_skip();
}

/* The daemon's environment additions, as an env(1) command line. */
static char **host_wrapper(const ClusterHost *h) {
        char **w = g_new0(char *, 4);

        w[0] = g_strdup("env");
        w[1] = g_strconcat("LOCKBUS_MACHINE_ID=", h->machine_id, NULL);
        w[2] = g_strconcat("LOCKBUS_HOSTNAME=", h->hostname, NULL);
        return w;
}

static void host_setup(ClusterFixture *f, ClusterHost *h, const char *hostname, const char *machine_id,
                       const char *const *more_args) {
        g_autofree char *endpoints = g_strjoinv(",", etcd_cluster_endpoints(f->etcd));
        g_autofree char *endpoints_arg = g_strconcat("--etcd-endpoints=", endpoints, NULL);
        g_autofree char *prefix_arg = g_strconcat("--etcd-prefix=", f->prefix, NULL);
        g_autofree char *ca_arg = NULL, *cert_arg = NULL, *key_arg = NULL, *services = NULL, *user_arg = NULL,
                *password_arg = NULL;
        const EtcdClusterTls *tls = etcd_cluster_tls(f->etcd);
        const EtcdClusterAuth *auth = etcd_cluster_auth(f->etcd);
        g_auto(GStrv) wrapper = NULL, argv = NULL, args = NULL;
        g_autoptr(GStrvBuilder) builder = g_strv_builder_new();

        g_strv_builder_add_many(builder, "--backend=etcd", endpoints_arg, prefix_arg, "--etcd-lease-ttl=2",
                                "--idle-timeout=0", NULL);
        if (tls) {
                ca_arg = g_strconcat("--etcd-cafile=", tls->ca_file, NULL);
                cert_arg = g_strconcat("--etcd-certfile=", tls->cert_file, NULL);
                key_arg = g_strconcat("--etcd-keyfile=", tls->key_file, NULL);
                g_strv_builder_add_many(builder, ca_arg, cert_arg, key_arg, NULL);
        }
        if (auth) {
                user_arg = g_strconcat("--etcd-user=", auth->user, NULL);
                password_arg = g_strconcat("--etcd-password-file=", auth->password_file, NULL);
                g_strv_builder_add_many(builder, user_arg, password_arg, NULL);
        }
        if (more_args)
                g_strv_builder_addv(builder, (const char **) more_args);
        args = g_strv_builder_end(builder);

        h->hostname = hostname;
        h->machine_id = machine_id;
        h->bus = test_bus_new_with_args((const char *const *) args);
        h->client = test_bus_connect(h->bus);

        /* The activation file starts the same host (nothing was activated
         * yet; ReloadConfig re-reads the service directory). */
        wrapper = host_wrapper(h);
        argv = test_lockbusd_argv((const char *const *) wrapper, test_getenv_required("LOCKBUS_DAEMON"),
                                  h->bus->lock_dir, h->bus->runtime_dir,
                                  (const char *const *) h->bus->extra_args);
        services = g_build_filename(h->bus->dir, "services", NULL);
        test_bus_write_activation_file(services, LOCKBUS_BUS_NAME, (const char *const *) argv);
        test_bus_reload_config(h->client);

        cluster_host_start_daemon(f, h);
}

void cluster_host_start_daemon(ClusterFixture *f, ClusterHost *h) {
        cluster_host_start_daemon_with_fdstore(f, h, NULL);
}

void cluster_host_start_daemon_with_fdstore(ClusterFixture *f, ClusterHost *h, TestFdStore *store) {
        g_auto(GStrv) wrapper = host_wrapper(h);
        int status = 0;

        if (store) {
                g_auto(GStrv) words = test_fdstore_wrapper(store, h->bus->pass_fds);
                char **both = g_new0(char *, g_strv_length(words) + g_strv_length(wrapper) + 1);
                guint n = 0;

                for (char **w = words; *w; w++)
                        both[n++] = g_strdup(*w);
                for (char **w = wrapper; *w; w++)
                        both[n++] = g_strdup(*w);
                g_strfreev(wrapper);
                wrapper = both;
        }

        if (!test_bus_try_start_daemon(h->bus, (const char *const *) wrapper, -1, &status)) {
                g_autofree char *st = test_format_wait_status(status);

                g_error("lockbusd of %s %s before taking " LOCKBUS_BUS_NAME " (see its output above)",
                        h->hostname, st);
        }
}

void cluster_fixture_setup(ClusterFixture *f, gconstpointer data) {
        if (!cluster)
                return;

        f->etcd = cluster;
        f->prefix = g_strconcat("/lockbus-test", g_test_get_path(), NULL);
        f->comm = test_get_comm();
        g_assert_cmpint(sd_event_new(&f->event), >=, 0);
        g_assert_cmpint(etcd_client_new(f->event, etcd_cluster_endpoints(f->etcd), ETCD_CALL_TIMEOUT_USEC,
                                        &f->etcd_client), ==, 0);
        if (etcd_cluster_tls(f->etcd)) {
                const EtcdClusterTls *tls = etcd_cluster_tls(f->etcd);

                g_assert_cmpint(etcd_client_set_tls(f->etcd_client, &(EtcdTlsOptions) {
                                .ca_file = tls->ca_file,
                                .cert_file = tls->cert_file,
                                .key_file = tls->key_file,
                        }), ==, 0);
        }
        if (etcd_cluster_auth(f->etcd)) {
                const EtcdClusterAuth *auth = etcd_cluster_auth(f->etcd);

                g_assert_cmpint(etcd_client_set_auth(f->etcd_client, auth->user, auth->password), ==, 0);
        }

        host_setup(f, &f->a, "hostA", CLUSTER_MACHINE_ID_A, data);
        host_setup(f, &f->b, "hostB", CLUSTER_MACHINE_ID_B, data);
}

static void host_teardown(ClusterHost *h) {
        if (h->client)
                sd_bus_flush_close_unref(h->client);
        test_bus_free(h->bus);
        *h = (ClusterHost) {};
}

void cluster_fixture_teardown(ClusterFixture *f, gconstpointer data) {
        host_teardown(&f->a);
        host_teardown(&f->b);
        etcd_client_free(f->etcd_client);
        sd_event_unref(f->event);
        g_free(f->prefix);
        g_free(f->comm);
}

char *cluster_sender(ClusterHost *h, sd_bus *conn) {
        return g_strconcat(test_unique_name(conn), "@", h->hostname, NULL);
}

/* ---- the keys in etcd ------------------------------------------------------ */

static char *resource_key_prefix(ClusterFixture *f, const char *resource) {
        for (const char *p = resource; *p; p++)
                g_assert_true(g_ascii_isalnum(*p) || strchr("_.-", *p));
        return g_strconcat(f->prefix, "/locks/", resource, "/", NULL);
}

static unsigned count_keys_at(ClusterFixture *f, const char *prefix, int64_t *ret_revision) {
        SyncResult r = {};
        unsigned n;

        g_assert_cmpint(sync_range(f->event, f->etcd_client, prefix, strlen(prefix),
                                   &(EtcdRangeOptions) { .prefix = true, .count_only = true }, &r), ==, 0);
        if (r.error < 0)
                g_error("Failed to read the keys %s* from etcd: %s", prefix, r.message);
        n = (unsigned) r.count;
        *ret_revision = r.revision;
        sync_result_clear(&r);
        return n;
}

unsigned cluster_count_keys(ClusterFixture *f, const char *resource) {
        g_autofree char *prefix = resource_key_prefix(f, resource);
        int64_t revision;

        return count_keys_at(f, prefix, &revision);
}

typedef struct KeyWatch {
        bool changed;
        int error;
        char *message;
} KeyWatch;

static void on_key_event(EtcdWatch *w, const EtcdEvent *event, void *userdata) {
        KeyWatch *k = userdata;

        k->changed = true;
}

static void on_key_watch_error(EtcdWatch *w, int error, const char *error_message, void *userdata) {
        KeyWatch *k = userdata;

        k->changed = true;
        k->error = error;
        k->message = g_strdup(error_message);
}

void cluster_wait_keys(ClusterFixture *f, const char *resource, unsigned n) {
        static const EtcdWatchCallbacks callbacks = {
                .event = on_key_event,
                .error = on_key_watch_error,
        };
        g_autofree char *prefix = resource_key_prefix(f, resource);
        uint64_t deadline = test_now_usec() + TEST_TIMEOUT_USEC;

        for (;;) {
                KeyWatch k = {};
                EtcdWatch *w = NULL;
                int64_t revision;
                unsigned count;

                count = count_keys_at(f, prefix, &revision);
                if (count == n)
                        return;
                if (test_now_usec() >= deadline)
                        g_error("'%s' has %u keys in etcd, not %u", resource, count, n);

                g_assert_cmpint(etcd_watch(f->etcd_client, prefix, strlen(prefix),
                                           &(EtcdWatchOptions) { .prefix = true, .start_revision = revision + 1 },
                                           &callbacks, &k, &w), ==, 0);
                while (!k.changed) {
                        uint64_t now = test_now_usec();

                        if (now >= deadline)
                                g_error("'%s' stayed at %u keys in etcd, not %u", resource, count, n);
                        g_assert_cmpint(sd_event_run(f->event, deadline - now), >=, 0);
                }
                /* A watch that ended (e.g. its member was killed) is freed
                 * already; the next read tells what happened meanwhile. */
                if (k.error < 0)
                        g_test_message("The watch of %s* ended: %s", prefix, k.message);
                else
                        etcd_watch_cancel(w);
                g_free(k.message);
        }
}

/* ---- checks ------------------------------------------------------------------- */

void cluster_assert_holder(const TestHolder *h, uid_t uid, pid_t pid, const char *comm, const char *sender,
                           uint64_t token, const char *scope, const char *file, int line, const char *func) {
        g_autofree char *want = g_strdup_printf("uid %u pid %d comm %s sender %s token %" PRIu64 " scope %s",
                                                (unsigned) uid, (int) pid, comm, sender, token, scope);
        g_autofree char *got = g_strdup_printf("uid %u pid %u comm %s sender %s token %" PRIu64 " scope %s",
                                               (unsigned) h->uid, h->pid, h->comm, h->sender, h->token, h->scope);
        g_autofree char *msg = NULL;

        if (g_str_equal(want, got))
                return;
        msg = g_strdup_printf("holder: expected \"%s\", got \"%s\"", want, got);
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}
