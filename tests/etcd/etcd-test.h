/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the etcd tests share: a real etcd cluster of N members on 127.0.0.1
 * (Debian's etcd 3.4), one per test program for its cases to share, and
 * running an sd-event loop until something happened.
 *
 * The cluster lives in a g_dir_make_tmp() directory; each member runs in a
 * process group of its own with its stderr read by a thread of the test,
 * which copies it to DIR/mN.log and wakes etcd_cluster_start() when the
 * member says it is ready to serve clients (an event, not a sleep). A
 * reaper process forked at start kills every member's group and removes
 * the directory when the test program ends in any way (a failed assertion
 * aborts it); etcd_cluster_stop() does the same in order.
 *
 * A TLS cluster (etcd_cluster_start_tls()) serves https:// client URLs
 * with --client-cert-auth: at start a CA, a server certificate for
 * IP:127.0.0.1 (signed by that CA, also good as the members' own client
 * certificate, which etcd's gateway presents to the gRPC server) and a
 * client certificate are made with openssl(1) in DIR/tls, as is a second
 * CA that signed nothing here (to see verification fail). The peer URLs
 * stay http://.
 *
 * A cluster with authentication (etcd_cluster_start_auth()) is a plain one
 * on which, once it serves clients, user "root" (role root) is added with
 * a password made at start and authentication is enabled, through the
 * JSON gateway (as etcdctl's user add, user grant-role and auth enable);
 * the password is also in DIR/root.password, with a trailing newline. */

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <systemd/sd-event.h>

typedef struct EtcdCluster EtcdCluster;

/* Starts n members and waits until every one serves clients. Returns NULL
 * and a reason to skip (g_free()) if the etcd binary is missing; any other
 * failure aborts the program with the members' logs on stderr. */
EtcdCluster *etcd_cluster_start(unsigned n, char **ret_skip_reason);
void etcd_cluster_stop(EtcdCluster *c);

/* As etcd_cluster_start(), with TLS as above; also skips if openssl is
 * missing. */
EtcdCluster *etcd_cluster_start_tls(unsigned n, char **ret_skip_reason);

/* The PEM files of a TLS cluster (absolute paths), or NULL for a plain one. */
typedef struct EtcdClusterTls {
        const char *ca_file;            /* the CA of the members' and the client's certificates */
        const char *cert_file;          /* a client certificate etcd accepts */
        const char *key_file;           /* its key */
        const char *other_ca_file;      /* a CA that signed nothing here */
} EtcdClusterTls;
const EtcdClusterTls *etcd_cluster_tls(EtcdCluster *c);

/* As etcd_cluster_start(), with authentication as above. */
EtcdCluster *etcd_cluster_start_auth(unsigned n, char **ret_skip_reason);

/* The credentials of a cluster with authentication, or NULL. */
typedef struct EtcdClusterAuth {
        const char *user;               /* "root" */
        const char *password;
        const char *password_file;      /* absolute; the password and "\n" */
} EtcdClusterAuth;
const EtcdClusterAuth *etcd_cluster_auth(EtcdCluster *c);

/* A NULL-terminated list of the members' client URLs (borrowed). */
char **etcd_cluster_endpoints(EtcdCluster *c);
const char *etcd_cluster_endpoint(EtcdCluster *c, unsigned i);
unsigned etcd_cluster_size(EtcdCluster *c);

/* SIGKILLs member i's process group and reaps it. */
void etcd_cluster_kill_member(EtcdCluster *c, unsigned i);

/* SIGSTOPs member i's process group and returns once the member stopped:
 * it keeps its sockets (the kernel still accepts connections and takes
 * requests) but answers nothing, and the clients cannot tell it from a
 * slow member, until etcd_cluster_resume_member() SIGCONTs it and returns
 * once it runs again. A paused member is still killed at the end. */
void etcd_cluster_pause_member(EtcdCluster *c, unsigned i);
void etcd_cluster_resume_member(EtcdCluster *c, unsigned i);

/* "http://127.0.0.1:PORT" where nothing listens (a port the kernel gave
 * out and that was closed again). */
char *test_dead_endpoint(void);

/* The cluster a test program shares among its cases. etcd_test_init()
 * calls g_test_init() and starts n members; without the etcd binary it
 * returns NULL and etcd_test_skip() skips each case with the reason.
 * etcd_test_run() runs the cases (g_test_run()) and stops the cluster. */
EtcdCluster *etcd_test_init(int *argc, char ***argv, unsigned n);
/* The same with a TLS cluster (etcd_cluster_start_tls()). */
EtcdCluster *etcd_test_init_tls(int *argc, char ***argv, unsigned n);
/* The same with authentication (etcd_cluster_start_auth()). */
EtcdCluster *etcd_test_init_auth(int *argc, char ***argv, unsigned n);
int etcd_test_run(void);
/* True (after g_test_skip() with the reason) when there is no cluster. */
bool etcd_test_skip(void);
#define ETCD_SKIP_WITHOUT_CLUSTER()                     \
        do {                                            \
                if (etcd_test_skip())                   \
                        return;                         \
        } while (false)

/* Runs the loop until *flag is true; fails the test after timeout_usec. */
void test_run_until(sd_event *e, const bool *flag, uint64_t timeout_usec);
/* The same until *counter reaches n. */
void test_run_until_count(sd_event *e, const unsigned *counter, unsigned n, uint64_t timeout_usec);
/* Runs the loop for usec (to show that nothing more happens). */
void test_run_for(sd_event *e, uint64_t usec);

uint64_t test_now_usec(void);

/* A key below this test's own prefix "/lockbus-test/<test path>/" so
 * cases sharing a cluster never see each other's keys (g_free()). */
char *test_key(const char *suffix);
