/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>

#include "etcd-sync.h"
#include "etcd-test.h"

#define READY_TIMEOUT_USEC (60U * G_USEC_PER_SEC)
/* capnslog (etcd 3.4's default logger) and zap say these once the member
 * published itself through raft, i.e. the cluster has a leader. */
#define READY_CAPNSLOG "ready to serve client requests"
#define READY_ZAP "serving client traffic"

typedef struct Member {
        unsigned index;
        char *name;
        char *client_url;
        char *peer_url;
        char *data_dir;
        pid_t pid;                      /* also its process group; 0 once reaped */
        int stderr_fd;                  /* the drain thread's; -1 at EOF */
        int log_fd;
        GString *line;                  /* the drain thread's unfinished line */
        bool ready;                     /* under the cluster's lock */
        bool exited;
} Member;

typedef struct TlsFiles {
        EtcdClusterTls paths;           /* points into the strings below */
        char *ca_file;
        char *server_cert_file;
        char *server_key_file;
        char *cert_file;
        char *key_file;
        char *other_ca_file;
} TlsFiles;

typedef struct AuthFiles {
        EtcdClusterAuth paths;          /* points into the strings below */
        char *password;
        char *password_file;
} AuthFiles;

struct EtcdCluster {
        char *dir;
        TlsFiles *tls;                  /* NULL: plain http:// */
        AuthFiles *auth;                /* NULL: etcd's authentication is off */
        unsigned n;
        Member *members;
        char **endpoints;
        int reaper_fd;                  /* write end: "pid N\n", "done\n" */
        pid_t reaper;
        GThread *drain;
        GMutex lock;
        GCond changed;
};

uint64_t test_now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * G_USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000U;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void rm_rf(const char *path) {
        (void) nftw(path, remove_entry, 16, FTW_PHYS | FTW_DEPTH);
}

/* The low end of the kernel's ephemeral port range, which outgoing
 * connections (every client of the tests) take their ports from. */
static unsigned ephemeral_port_low(void) {
        g_autofree char *contents = NULL;
        unsigned low = 32768;

        if (g_file_get_contents("/proc/sys/net/ipv4/ip_local_port_range", &contents, NULL, NULL))
                (void) sscanf(contents, "%u", &low);
        return low;
}

static bool port_is_free(unsigned port) {
        struct sockaddr_in sa = {
                .sin_family = AF_INET,
                .sin_port = htons((uint16_t) port),
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool free_port;

        g_assert_cmpint(fd, >=, 0);
        free_port = bind(fd, (struct sockaddr *) &sa, sizeof sa) >= 0;
        close(fd);
        return free_port;
}

/* n different free ports for etcd to take, at random below the ephemeral
 * range: a port the kernel handed out for port 0 and that was closed again
 * can be taken by any outgoing connection before etcd binds it (and with
 * several test programs starting clusters at once, that happened). */
static void pick_ports(unsigned n, unsigned *ret) {
        unsigned low = ephemeral_port_low(), base = 10000;

        g_assert_cmpuint(low, >, base + 1000);
        for (unsigned i = 0; i < n; i++) {
                bool taken;

                do {
                        ret[i] = (unsigned) g_random_int_range((gint32) base, (gint32) low);
                        taken = !port_is_free(ret[i]);
                        for (unsigned j = 0; j < i && !taken; j++)
                                taken = ret[j] == ret[i];
                } while (taken);
        }
}

char *test_dead_endpoint(void) {
        unsigned port;

        pick_ports(1, &port);
        return g_strdup_printf("http://127.0.0.1:%u", port);
}

/* ---- the reaper: cleans up when the test program dies ------------------ */

static void reaper_main(int fd, const char *dir) {
        GArray *pids = g_array_new(false, false, sizeof(pid_t));
        GString *in = g_string_new(NULL);
        char buf[256];
        ssize_t k;

        for (;;) {
                k = read(fd, buf, sizeof buf);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                g_string_append_len(in, buf, k);
        }

        /* A clean stop said "done" last: nothing to do. */
        if (g_str_has_suffix(in->str, "done\n"))
                _exit(EXIT_SUCCESS);

        for (char *p = in->str; (p = strstr(p, "pid ")); p += 4) {
                pid_t pid = (pid_t) strtol(p + 4, NULL, 10);

                if (pid > 0)
                        g_array_append_val(pids, pid);
        }
        for (unsigned i = 0; i < pids->len; i++)
                (void) kill(-g_array_index(pids, pid_t, i), SIGKILL);
        rm_rf(dir);
        _exit(EXIT_SUCCESS);
}

static void start_reaper(EtcdCluster *c) {
        int fds[2];
        pid_t pid;

        g_assert_cmpint(pipe2(fds, O_CLOEXEC), ==, 0);
        pid = fork();
        g_assert_cmpint(pid, >=, 0);
        if (pid == 0) {
                int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);

                /* Never write into the TAP stream, never keep it open. */
                if (null_fd >= 0) {
                        dup2(null_fd, STDIN_FILENO);
                        dup2(null_fd, STDOUT_FILENO);
                        dup2(null_fd, STDERR_FILENO);
                }
                close(fds[1]);
                /* Its own group: a kill of the test's group spares it. */
                (void) setpgid(0, 0);
                reaper_main(fds[0], c->dir);
        }
        close(fds[0]);
        c->reaper_fd = fds[1];
        c->reaper = pid;
}

static void reaper_say(EtcdCluster *c, const char *text) {
        size_t n = strlen(text);

        g_assert_cmpint(write(c->reaper_fd, text, n), ==, (ssize_t) n);
}

/* ---- the members' output ----------------------------------------------- */

static void member_scan(EtcdCluster *c, Member *m, const char *data, size_t size) {
        for (size_t i = 0; i < size; i++) {
                if (data[i] != '\n') {
                        if (m->line->len < 64 * 1024)
                                g_string_append_c(m->line, data[i]);
                        continue;
                }
                if (strstr(m->line->str, READY_CAPNSLOG) || strstr(m->line->str, READY_ZAP)) {
                        g_mutex_lock(&c->lock);
                        m->ready = true;
                        g_cond_broadcast(&c->changed);
                        g_mutex_unlock(&c->lock);
                }
                g_string_truncate(m->line, 0);
        }
}

/* Copies every member's stderr to its log until all are closed. */
static gpointer drain_thread(gpointer userdata) {
        EtcdCluster *c = userdata;
        g_autofree struct pollfd *pfds = g_new0(struct pollfd, c->n);
        char buf[16384];

        for (;;) {
                unsigned n_open = 0;

                for (unsigned i = 0; i < c->n; i++) {
                        pfds[i] = (struct pollfd) { .fd = c->members[i].stderr_fd, .events = POLLIN };
                        if (pfds[i].fd >= 0)
                                n_open++;
                }
                if (n_open == 0)
                        return NULL;

                if (poll(pfds, c->n, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        g_error("poll: %s", g_strerror(errno));
                }

                for (unsigned i = 0; i < c->n; i++) {
                        Member *m = &c->members[i];
                        ssize_t k;

                        if (pfds[i].fd < 0 || pfds[i].revents == 0)
                                continue;
                        k = read(m->stderr_fd, buf, sizeof buf);
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k <= 0) {
                                close(m->stderr_fd);
                                g_mutex_lock(&c->lock);
                                m->stderr_fd = -1;
                                m->exited = true;
                                g_cond_broadcast(&c->changed);
                                g_mutex_unlock(&c->lock);
                                continue;
                        }
                        if (write(m->log_fd, buf, (size_t) k) < 0) {
                                /* The log is for humans; the scan is what counts. */
                        }
                        member_scan(c, m, buf, (size_t) k);
                }
        }
}

static void dump_logs(EtcdCluster *c) {
        for (unsigned i = 0; i < c->n; i++) {
                g_autofree char *path = g_strdup_printf("%s/%s.log", c->dir, c->members[i].name);
                g_autofree char *text = NULL;
                size_t len = 0;

                if (!g_file_get_contents(path, &text, &len, NULL))
                        continue;
                fprintf(stderr, "---- %s (last 4 KiB) ----\n%s\n", path, text + (len > 4096 ? len - 4096 : 0));
        }
}

/* ---- TLS files -------------------------------------------------------------- */

/* The extensions of each kind of certificate, for openssl -extensions. */
#define OPENSSL_CONFIG                                                  \
        "[req]\n"                                                       \
        "distinguished_name = dn\n"                                     \
        "[dn]\n"                                                        \
        "[ca]\n"                                                        \
        "basicConstraints = critical, CA:TRUE\n"                        \
        "keyUsage = critical, keyCertSign, cRLSign\n"                   \
        "subjectKeyIdentifier = hash\n"                                 \
        "[server]\n"                                                    \
        "basicConstraints = critical, CA:FALSE\n"                       \
        "keyUsage = critical, digitalSignature, keyEncipherment\n"      \
        "extendedKeyUsage = serverAuth, clientAuth\n"                   \
        "subjectAltName = IP:127.0.0.1\n"                               \
        "[client]\n"                                                    \
        "basicConstraints = critical, CA:FALSE\n"                       \
        "keyUsage = critical, digitalSignature, keyEncipherment\n"      \
        "extendedKeyUsage = clientAuth\n"

/* Runs openssl with args in dir; aborts with its output if it fails. */
static void run_openssl(const char *openssl, const char *dir, const char *const *args) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new();
        g_autofree char *out = NULL, *err = NULL;
        g_autoptr(GError) error = NULL;
        int status = 0;

        g_ptr_array_add(argv, (char *) openssl);
        for (const char *const *a = args; *a; a++)
                g_ptr_array_add(argv, (char *) *a);
        g_ptr_array_add(argv, NULL);

        /* Its output is captured: the TAP stream is ours. */
        if (!g_spawn_sync(dir, (char **) argv->pdata, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out, &err, &status,
                          &error))
                g_error("Failed to run %s: %s", openssl, error->message);
        if (!g_spawn_check_wait_status(status, &error))
                g_error("openssl %s in %s failed (%s):\n%s%s", args[0], dir, error->message, out, err);
}

/* A new P-256 key NAME-key.pem and a certificate NAME.pem in dir with the
 * extensions of section `kind`, self-signed if ca is NULL, else signed by
 * ca (ca.pem, ca-key.pem in dir). */
static void make_certificate(const char *openssl, const char *dir, const char *name, const char *kind,
                             const char *subject, const char *ca) {
        g_autofree char *key = g_strconcat(name, "-key.pem", NULL), *cert = g_strconcat(name, ".pem", NULL),
                *csr = g_strconcat(name, ".csr", NULL), *ca_cert = NULL, *ca_key = NULL;

        if (!ca) {
                run_openssl(openssl, dir, (const char *const[]) {
                        "req", "-x509", "-config", "openssl.cnf", "-extensions", kind,
                        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", subject, NULL });
                return;
        }

        ca_cert = g_strconcat(ca, ".pem", NULL);
        ca_key = g_strconcat(ca, "-key.pem", NULL);
        run_openssl(openssl, dir, (const char *const[]) {
                "req", "-new", "-config", "openssl.cnf",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", csr, "-subj", subject, NULL });
        run_openssl(openssl, dir, (const char *const[]) {
                "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
                "-days", "2", "-extfile", "openssl.cnf", "-extensions", kind, "-out", cert, NULL });
}

static TlsFiles *tls_files_make(const char *openssl, const char *cluster_dir) {
        g_autofree char *dir = g_build_filename(cluster_dir, "tls", NULL), *config = NULL;
        g_autoptr(GError) error = NULL;
        TlsFiles *t;

        g_assert_cmpint(mkdir(dir, 0700), ==, 0);
        config = g_build_filename(dir, "openssl.cnf", NULL);
        if (!g_file_set_contents(config, OPENSSL_CONFIG, -1, &error))
                g_error("Failed to write %s: %s", config, error->message);

        make_certificate(openssl, dir, "ca", "ca", "/CN=lockbus test CA", NULL);
        make_certificate(openssl, dir, "server", "server", "/CN=127.0.0.1", "ca");
        make_certificate(openssl, dir, "client", "client", "/CN=lockbus test client", "ca");
        make_certificate(openssl, dir, "other-ca", "ca", "/CN=lockbus test CA that signed nothing", NULL);

        t = g_new0(TlsFiles, 1);
        t->ca_file = g_build_filename(dir, "ca.pem", NULL);
        t->server_cert_file = g_build_filename(dir, "server.pem", NULL);
        t->server_key_file = g_build_filename(dir, "server-key.pem", NULL);
        t->cert_file = g_build_filename(dir, "client.pem", NULL);
        t->key_file = g_build_filename(dir, "client-key.pem", NULL);
        t->other_ca_file = g_build_filename(dir, "other-ca.pem", NULL);
        t->paths = (EtcdClusterTls) {
                .ca_file = t->ca_file,
                .cert_file = t->cert_file,
                .key_file = t->key_file,
                .other_ca_file = t->other_ca_file,
        };
        return t;
}

static void tls_files_free(TlsFiles *t) {
        if (!t)
                return;
        g_free(t->ca_file);
        g_free(t->server_cert_file);
        g_free(t->server_key_file);
        g_free(t->cert_file);
        g_free(t->key_file);
        g_free(t->other_ca_file);
        g_free(t);
}

/* ---- start and stop ----------------------------------------------------- */

static char *find_etcd(void) {
        const char *env = g_getenv("LOCKBUS_TEST_ETCD");

        if (env && *env)
                return g_strdup(env);
        return g_find_program_in_path("etcd");
}

static void member_spawn(EtcdCluster *c, Member *m, const char *etcd, const char *initial_cluster, char **envp) {
        g_autofree char *log_path = g_strdup_printf("%s/%s.log", c->dir, m->name);
        g_autofree char *token = g_strdup_printf("lockbus-test-%d", (int) getpid());
        g_autofree char *say = NULL;
        const char *argv[] = {
                etcd,
                "--name", m->name,
                "--data-dir", m->data_dir,
                "--listen-client-urls", m->client_url,
                "--advertise-client-urls", m->client_url,
                "--listen-peer-urls", m->peer_url,
                "--initial-advertise-peer-urls", m->peer_url,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--heartbeat-interval", "50",
                "--election-timeout", "500",
                /* The TLS options, or the end. */
                NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL,
        };
        int fds[2];
        pid_t pid;

        if (c->tls) {
                size_t i = G_N_ELEMENTS(argv) - 9;

                g_assert_null(argv[i]);
                argv[i++] = "--cert-file";
                argv[i++] = c->tls->server_cert_file;
                argv[i++] = "--key-file";
                argv[i++] = c->tls->server_key_file;
                argv[i++] = "--trusted-ca-file";
                argv[i++] = c->tls->ca_file;
                argv[i++] = "--client-cert-auth";
        }

        m->log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        g_assert_cmpint(m->log_fd, >=, 0);
        g_assert_cmpint(pipe2(fds, O_CLOEXEC), ==, 0);

        pid = fork();
        g_assert_cmpint(pid, >=, 0);
        if (pid == 0) {
                /* Only async-signal-safe calls from here on. */
                int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);

                (void) setpgid(0, 0);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 || dup2(fds[1], STDOUT_FILENO) < 0 ||
                    dup2(fds[1], STDERR_FILENO) < 0)
                        _exit(127);
                execve(etcd, (char **) argv, envp);
                _exit(127);
        }
        /* Also here: no window in which the member has no group of its own. */
        (void) setpgid(pid, pid);
        close(fds[1]);
        m->stderr_fd = fds[0];
        m->pid = pid;

        say = g_strdup_printf("pid %d\n", (int) pid);
        reaper_say(c, say);
}

/* One request of the setup that must succeed. */
static void auth_setup_call(sd_event *e, EtcdClient *client, const char *path, const char *json) {
        _cleanup_(sync_result_clear) SyncResult r = {};

        if (sync_call(e, client, path, json, &r) != 0)
                g_error("Failed to enable etcd's authentication: POST %s: %s", path, r.message);
}

/* As etcdctl's "user add root", "user grant-role root root", "auth enable",
 * through the gateway, then the password file for the daemon. */
static AuthFiles *auth_enable(EtcdCluster *c) {
        _cleanup_(etcd_client_freep) EtcdClient *client = NULL;
        g_autoptr(GError) error = NULL;
        g_autofree char *add = NULL, *contents = NULL;
        AuthFiles *a = g_new0(AuthFiles, 1);
        sd_event *e = NULL;

        a->password = g_strdup_printf("pw-%08x%08x", g_random_int(), g_random_int());
        a->password_file = g_build_filename(c->dir, "root.password", NULL);
        a->paths = (EtcdClusterAuth) {
                .user = "root",
                .password = a->password,
                .password_file = a->password_file,
        };

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        g_assert_cmpint(etcd_client_new(e, c->endpoints, 0, &client), ==, 0);
        add = g_strdup_printf("{\"name\":\"root\",\"password\":\"%s\"}", a->password);
        auth_setup_call(e, client, "/v3/auth/user/add", add);
        auth_setup_call(e, client, "/v3/auth/user/grant", "{\"user\":\"root\",\"role\":\"root\"}");
        auth_setup_call(e, client, "/v3/auth/enable", "{}");
        client = etcd_client_free(client);
        sd_event_unref(e);

        /* As `echo PASSWORD > FILE` writes it. */
        contents = g_strconcat(a->password, "\n", NULL);
        if (!g_file_set_contents(a->password_file, contents, -1, &error))
                g_error("Failed to write %s: %s", a->password_file, error->message);
        return a;
}

static void auth_files_free(AuthFiles *a) {
        if (!a)
                return;
        g_free(a->password);
        g_free(a->password_file);
        g_free(a);
}

static EtcdCluster *cluster_start(unsigned n, bool tls, bool auth, char **ret_skip_reason) {
        g_autofree char *etcd = find_etcd(), *openssl = NULL;
        g_autoptr(GError) error = NULL;
        g_auto(GStrv) environ_list = NULL;
        g_autoptr(GPtrArray) envp = NULL;
        g_autoptr(GString) initial_cluster = g_string_new(NULL);
        g_autofree unsigned *ports = g_new0(unsigned, 2 * n);
        EtcdCluster *c;
        gint64 started, deadline;

        if (!etcd || access(etcd, X_OK) < 0) {
                *ret_skip_reason = g_strdup("etcd not found (install etcd-server, or set LOCKBUS_TEST_ETCD)");
                return NULL;
        }
        if (tls) {
                openssl = g_find_program_in_path("openssl");
                if (!openssl) {
                        *ret_skip_reason = g_strdup("openssl not found (install openssl)");
                        return NULL;
                }
        }

        c = g_new0(EtcdCluster, 1);
        c->n = n;
        c->members = g_new0(Member, n);
        g_mutex_init(&c->lock);
        g_cond_init(&c->changed);
        c->dir = g_dir_make_tmp("lockbus-etcd-XXXXXX", &error);
        g_assert_no_error(error);
        start_reaper(c);
        if (tls)
                c->tls = tls_files_make(openssl, c->dir);

        pick_ports(2 * n, ports);
        c->endpoints = g_new0(char *, n + 1);
        for (unsigned i = 0; i < n; i++) {
                Member *m = &c->members[i];

                m->index = i;
                m->name = g_strdup_printf("m%u", i);
                m->client_url = g_strdup_printf("%s://127.0.0.1:%u", tls ? "https" : "http", ports[2 * i]);
                m->peer_url = g_strdup_printf("http://127.0.0.1:%u", ports[2 * i + 1]);
                m->data_dir = g_strdup_printf("%s/%s", c->dir, m->name);
                m->stderr_fd = -1;
                m->log_fd = -1;
                m->line = g_string_new(NULL);
                c->endpoints[i] = g_strdup(m->client_url);
                g_string_append_printf(initial_cluster, "%s%s=%s", i > 0 ? "," : "", m->name, m->peer_url);
        }

        /* The members' environment: ours without ETCD_* settings. */
        environ_list = g_get_environ();
        envp = g_ptr_array_new();
        for (char **e = environ_list; *e; e++)
                if (!g_str_has_prefix(*e, "ETCD_"))
                        g_ptr_array_add(envp, *e);
        g_ptr_array_add(envp, NULL);

        started = g_get_monotonic_time();
        for (unsigned i = 0; i < n; i++)
                member_spawn(c, &c->members[i], etcd, initial_cluster->str, (char **) envp->pdata);
        c->drain = g_thread_new("etcd-drain", drain_thread, c);

        deadline = started + READY_TIMEOUT_USEC;
        g_mutex_lock(&c->lock);
        for (;;) {
                unsigned n_ready = 0, n_exited = 0;

                for (unsigned i = 0; i < n; i++) {
                        n_ready += c->members[i].ready;
                        n_exited += c->members[i].exited && !c->members[i].ready;
                }
                if (n_ready == n)
                        break;
                if (n_exited > 0 || !g_cond_wait_until(&c->changed, &c->lock, deadline)) {
                        g_mutex_unlock(&c->lock);
                        dump_logs(c);
                        g_error("etcd cluster in %s not ready: %u of %u members ready, %u exited", c->dir,
                                n_ready, n, n_exited);
                }
        }
        g_mutex_unlock(&c->lock);

        if (auth)
                c->auth = auth_enable(c);

        g_test_message("etcd cluster of %u members%s ready in %" G_GINT64_FORMAT " ms (%s)", n,
                       tls ? " with TLS" : auth ? " with authentication" : "",
                       (g_get_monotonic_time() - started) / 1000, c->dir);
        return c;
}

EtcdCluster *etcd_cluster_start(unsigned n, char **ret_skip_reason) {
        return cluster_start(n, false, false, ret_skip_reason);
}

EtcdCluster *etcd_cluster_start_tls(unsigned n, char **ret_skip_reason) {
        return cluster_start(n, true, false, ret_skip_reason);
}

EtcdCluster *etcd_cluster_start_auth(unsigned n, char **ret_skip_reason) {
        return cluster_start(n, false, true, ret_skip_reason);
}

const EtcdClusterAuth *etcd_cluster_auth(EtcdCluster *c) {
        return c->auth ? &c->auth->paths : NULL;
}

const EtcdClusterTls *etcd_cluster_tls(EtcdCluster *c) {
        return c->tls ? &c->tls->paths : NULL;
}

void etcd_cluster_kill_member(EtcdCluster *c, unsigned i) {
        Member *m = &c->members[i];

        if (m->pid <= 0)
                return;
        (void) kill(-m->pid, SIGKILL);
        (void) waitpid(m->pid, NULL, 0);
        m->pid = 0;
}

/* Sends sig to member i's group, then waits until its process is stopped
 * (WUNTRACED) or runs again (WCONTINUED), as asked. */
static void signal_member_and_wait(EtcdCluster *c, unsigned i, int sig, int options) {
        Member *m = &c->members[i];
        int status;
        pid_t pid;

        g_assert_cmpint(m->pid, >, 0);
        g_assert_cmpint(kill(-m->pid, sig), ==, 0);
        do
                pid = waitpid(m->pid, &status, options);
        while (pid < 0 && errno == EINTR);
        g_assert_cmpint(pid, ==, m->pid);
        if (options == WUNTRACED)
                g_assert_true(WIFSTOPPED(status));
        else
                g_assert_true(WIFCONTINUED(status));
}

void etcd_cluster_pause_member(EtcdCluster *c, unsigned i) {
        signal_member_and_wait(c, i, SIGSTOP, WUNTRACED);
}

void etcd_cluster_resume_member(EtcdCluster *c, unsigned i) {
        signal_member_and_wait(c, i, SIGCONT, WCONTINUED);
}

void etcd_cluster_stop(EtcdCluster *c) {
        if (!c)
                return;

        for (unsigned i = 0; i < c->n; i++)
                etcd_cluster_kill_member(c, i);
        /* All stderr pipes are at EOF now (the members' groups are gone). */
        g_thread_join(c->drain);

        rm_rf(c->dir);
        reaper_say(c, "done\n");
        close(c->reaper_fd);
        (void) waitpid(c->reaper, NULL, 0);

        for (unsigned i = 0; i < c->n; i++) {
                Member *m = &c->members[i];

                if (m->log_fd >= 0)
                        close(m->log_fd);
                g_string_free(m->line, true);
                g_free(m->name);
                g_free(m->client_url);
                g_free(m->peer_url);
                g_free(m->data_dir);
        }
        g_free(c->members);
        g_strfreev(c->endpoints);
        tls_files_free(c->tls);
        auth_files_free(c->auth);
        g_mutex_clear(&c->lock);
        g_cond_clear(&c->changed);
        g_free(c->dir);
        g_free(c);
}

char **etcd_cluster_endpoints(EtcdCluster *c) {
        return c->endpoints;
}

const char *etcd_cluster_endpoint(EtcdCluster *c, unsigned i) {
        g_assert_cmpuint(i, <, c->n);
        return c->endpoints[i];
}

unsigned etcd_cluster_size(EtcdCluster *c) {
        return c->n;
}

/* ---- the program's cluster ---------------------------------------------------- */

static EtcdCluster *shared_cluster;
static char *shared_skip_reason;

EtcdCluster *etcd_test_init(int *argc, char ***argv, unsigned n) {
        g_test_init(argc, argv, NULL);
        shared_cluster = etcd_cluster_start(n, &shared_skip_reason);
        return shared_cluster;
}

EtcdCluster *etcd_test_init_tls(int *argc, char ***argv, unsigned n) {
        g_test_init(argc, argv, NULL);
        shared_cluster = etcd_cluster_start_tls(n, &shared_skip_reason);
        return shared_cluster;
}

EtcdCluster *etcd_test_init_auth(int *argc, char ***argv, unsigned n) {
        g_test_init(argc, argv, NULL);
        shared_cluster = etcd_cluster_start_auth(n, &shared_skip_reason);
        return shared_cluster;
}

int etcd_test_run(void) {
        int r;

        r = g_test_run();
        etcd_cluster_stop(shared_cluster);
        shared_cluster = NULL;
        g_clear_pointer(&shared_skip_reason, g_free);
        return r;
}

bool etcd_test_skip(void) {
        if (shared_cluster)
                return false;
        g_test_skip(shared_skip_reason);
        return true;
}

/* ---- the loop -------------------------------------------------------------- */

/* Runs e until done(data); fails the test after timeout_usec. */
static void run_until(sd_event *e, bool (*done)(const void *data), const void *data, uint64_t timeout_usec) {
        uint64_t deadline = test_now_usec() + timeout_usec;

        while (!done(data)) {
                uint64_t now = test_now_usec();
                int r;

                if (now >= deadline)
                        g_error("nothing happened within %" G_GUINT64_FORMAT " ms", timeout_usec / 1000U);
                r = sd_event_run(e, deadline - now);
                g_assert_cmpint(r, >=, 0);
        }
}

static bool flag_is_set(const void *data) {
        return *(const bool *) data;
}

void test_run_until(sd_event *e, const bool *flag, uint64_t timeout_usec) {
        run_until(e, flag_is_set, flag, timeout_usec);
}

typedef struct CountTarget {
        const unsigned *counter;
        unsigned n;
} CountTarget;

static bool count_reached(const void *data) {
        const CountTarget *t = data;

        return *t->counter >= t->n;
}

void test_run_until_count(sd_event *e, const unsigned *counter, unsigned n, uint64_t timeout_usec) {
        run_until(e, count_reached, &(CountTarget) { .counter = counter, .n = n }, timeout_usec);
}

void test_run_for(sd_event *e, uint64_t usec) {
        uint64_t deadline = test_now_usec() + usec;

        for (;;) {
                uint64_t now = test_now_usec();

                if (now >= deadline)
                        return;
                g_assert_cmpint(sd_event_run(e, deadline - now), >=, 0);
        }
}

char *test_key(const char *suffix) {
        return g_strdup_printf("/lockbus-test%s/%s", g_test_get_path(), suffix);
}
