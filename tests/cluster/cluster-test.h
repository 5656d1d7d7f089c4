/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Cluster mode at the bus: two "hosts" sharing one etcd cluster.
 *
 * Each test program starts one real 3-member etcd 3.4 cluster on loopback
 * (tests/etcd/etcd-test.h) in cluster_test_init(); without etcd every case
 * skips with the reason. Each test case then gets, in the fixture:
 *
 *  - two private, system-like buses (tests/bus/bus-test.h), "host A" and
 *    "host B", each its own dbus-daemon, lock and runtime directories;
 *  - one lockbusd per bus, started directly (it owns io.lockbus1 when the
 *    case begins) with
 *      --backend=etcd --etcd-endpoints=<the members' URLs>
 *      --etcd-prefix=/lockbus-test/<test path> --etcd-lease-ttl=2
 *      --idle-timeout=0 [what the case adds]
 *    and LOCKBUS_MACHINE_ID / LOCKBUS_HOSTNAME of its host ("hostA",
 *    "hostB") in its environment (through env(1) in front of its command
 *    line; the bus's activation file says the same, so a daemon the bus
 *    activates again after a kill is the same host);
 *  - a root (the test's uid) connection to each bus, and an etcd client
 *    of the test's own on an sd-event loop, to see the lock keys.
 *
 * With cluster_test_init_tls() the etcd cluster serves https:// and wants
 * client certificates (etcd-test.h); both daemons then also get
 *      --etcd-cafile=<its CA> --etcd-certfile=<client certificate>
 *      --etcd-keyfile=<its key>
 * before what the case adds (so a case can override one), and the test's
 * own etcd client uses the same files.
 *
 * With cluster_test_init_auth() etcd's authentication is on (user root,
 * etcd-test.h); both daemons then also get
 *      --etcd-user=root --etcd-password-file=<its file>
 * and the test's own etcd client authenticates as root too.
 *
 * Cases never see each other's keys: each has its own prefix. The lease
 * TTL of 2 s is what a killed daemon's connection holds outlive it by.
 *
 * Ordering calls across hosts. On one host, a synchronous call after an
 * asynchronous Acquire on the same connection is answered after the
 * Acquire was decided (bus-test.h), but in cluster mode "decided" means
 * an etcd round trip the daemon makes after reading the call. So a test
 * that queues waiters on several hosts in a known order waits, after each
 * Acquire, until its key is in etcd (cluster_wait_keys(): a read, then a
 * watch from the read's revision; an event, never a sleep). This uses the
 * key layout of service/cluster-locks.h:
 *   <prefix>/locks/<escaped resource>/<machine-id>.<instance>.<seq>
 * (resources of these tests are [A-Za-z0-9_.-] only, escaped as
 * themselves).
 *
 * Cleanup, also on failure: the buses' guardians (bus-test.h) and the
 * cluster's reaper (etcd-test.h). */

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "bus-test.h"
#include "etcd-test.h"
#include "etcd.h"
#include "test-fdstore.h"

#define CLUSTER_LEASE_TTL_USEC (2U * G_USEC_PER_SEC)

#define CLUSTER_MACHINE_ID_A "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0"
#define CLUSTER_MACHINE_ID_B "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1"

typedef struct ClusterHost {
        const char *hostname;           /* LOCKBUS_HOSTNAME */
        const char *machine_id;         /* LOCKBUS_MACHINE_ID */
        TestBus *bus;
        sd_bus *client;                 /* the test's uid, on this host's bus */
} ClusterHost;

typedef struct ClusterFixture {
        EtcdCluster *etcd;              /* the program's cluster */
        char *prefix;                   /* /lockbus-test/<test path> */
        ClusterHost a, b;
        char *comm;                     /* this process's comm, as the daemons report it */
        sd_event *event;
        EtcdClient *etcd_client;        /* the test's own */
} ClusterFixture;

/* g_test_init(), then starts the program's etcd cluster (or notes why it
 * cannot: every case then skips). */
void cluster_test_init(int *argc, char ***argv);
/* The same with a TLS cluster, as above. */
void cluster_test_init_tls(int *argc, char ***argv);
/* The same with etcd's authentication on, as below. */
void cluster_test_init_auth(int *argc, char ***argv);
/* The files of the TLS cluster; NULL without one (or without etcd). */
const EtcdClusterTls *cluster_test_tls(void);
/* g_test_run(), then stops the cluster. */
int cluster_test_run(void);

/* True (after g_test_skip() with the reason) when there is no etcd. */
bool cluster_test_skip(void);
#define CLUSTER_SKIP_WITHOUT_ETCD()                     \
        do {                                            \
                if (cluster_test_skip())                \
                        return;                         \
        } while (false)

/* data: NULL, or a NULL-terminated array of arguments appended to both
 * daemons' command lines (a later option wins, e.g. --idle-timeout=1). */
void cluster_fixture_setup(ClusterFixture *f, gconstpointer data);
void cluster_fixture_teardown(ClusterFixture *f, gconstpointer data);
#define cluster_test_add(path, func) \
        g_test_add((path), ClusterFixture, NULL, cluster_fixture_setup, (func), cluster_fixture_teardown)
/* args: a static NULL-terminated array of strings. */
#define cluster_test_add_with_args(path, args, func) \
        g_test_add((path), ClusterFixture, (args), cluster_fixture_setup, (func), cluster_fixture_teardown)

/* Starts the host's lockbusd directly (as the fixture does) and returns
 * once it owns io.lockbus1; fails the test if it exits first. With a store
 * (test-fdstore.h), the daemon talks to it as to systemd's fd store and
 * gets the fds it holds. */
void cluster_host_start_daemon(ClusterFixture *f, ClusterHost *h);
void cluster_host_start_daemon_with_fdstore(ClusterFixture *f, ClusterHost *h, TestFdStore *store);

/* "<unique name of conn>@<hostname of h>": a hold of conn (a connection
 * to h's bus) as the daemon of the other host shows it. */
char *cluster_sender(ClusterHost *h, sd_bus *conn);

/* The lock keys of `resource` in etcd, now. */
unsigned cluster_count_keys(ClusterFixture *f, const char *resource);
/* Waits until `resource` has exactly n keys (granted or waiting) in etcd:
 * reads them, and while the count differs watches them from the read's
 * revision until something changes, then reads again. Fails the test after
 * TEST_TIMEOUT_USEC. */
void cluster_wait_keys(ClusterFixture *f, const char *resource, unsigned n);

/* Fails the test unless `holder` is h's process `pid` of the given uid,
 * comm, sender, token and scope. */
#define assert_holder(holder, uid, pid, comm, sender, token, scope)                             \
        cluster_assert_holder((holder), (uid), (pid), (comm), (sender), (token), (scope),       \
                              __FILE__, __LINE__, G_STRFUNC)
void cluster_assert_holder(const TestHolder *h, uid_t uid, pid_t pid, const char *comm, const char *sender,
                           uint64_t token, const char *scope, const char *file, int line, const char *func);
