/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The closed-loop cases: what one client process does, once per
 * operation, against lockbusd or a peer (flock(2), Redis, PostgreSQL,
 * etcd). The driver (bench-driver.h) runs N of them as separate processes.
 *
 * One operation is one lock+unlock cycle (two round trips for every
 * service), or one call for "ping", the floor: org.freedesktop.DBus.Peer.Ping
 * to lockbusd through the same bus and client code. The "-nowait" lockbus
 * cases and "redis-pipelined" wait for the lock only: the release is not
 * waited for (lockbus_unlock_nowait(); Redis's DEL goes out with the next
 * cycle's SET), one round trip per cycle. Each client locks its
 * own resource unless the case says "same" (one resource for all) or
 * "contended" (one resource, exclusive, waiting for ever: a queue).
 *
 * lockbus cases go through the bus (dbus-daemon) unless their name ends in
 * "-direct": then liblockbus talks to lockbusd's direct socket, peer to
 * peer ($LOCKBUS_DIRECT_SOCKET); each path has its own Ping floor. Every
 * case checks it got the path it asked for. Cases whose name has "-etcd"
 * are the same client code on a second bus (targets->etcd_bus), whose
 * lockbusd runs with --backend=etcd (cluster mode: every lock decided in
 * etcd), always through that bus (no direct socket), with its own Ping
 * floor. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <lockbus.h>

typedef struct BenchCase BenchCase;

/* Where the peers are; set from the command line. */
typedef struct BenchTargets {
        const char *flock_directory;    /* flock: one file per client in here */
        const char *redis_socket;       /* Unix socket path */
        const char *postgres_conninfo;  /* libpq connection string (Unix socket) */
        const char *etcd_url;           /* http://127.0.0.1:PORT (the v3 JSON gateway) */
        const char *direct_socket;      /* lockbusd's direct socket, for the "-direct" cases */
        const char *etcd_bus;           /* the bus of the lockbusd with --backend=etcd, for the "-etcd" cases */
        uid_t uid_base;                 /* lockbus clients run as uid_base + index; 0: as invoked */
} BenchTargets;

typedef struct BenchClient {
        const BenchCase *bench_case;
        const BenchTargets *targets;
        unsigned index;                 /* 0 … n_clients-1 */
        unsigned n_clients;
        void *state;                    /* the case's, from setup() */
        char error[256];                /* why setup() or op() failed */
} BenchClient;

struct BenchCase {
        const char *name;
        const char *description;
        bool is_lockbus;                /* talks to lockbusd: runs as targets->uid_base + index */
        bool direct;                    /* through lockbusd's direct socket, not the bus */
        bool etcd_backend;              /* through targets->etcd_bus, to the lockbusd that decides in etcd */
        int (*setup)(BenchClient *c);   /* connect; 0 or a negative errno (c->error says why) */
        int (*op)(BenchClient *c);      /* one operation; 0 or a negative errno */
        void (*teardown)(BenchClient *c);

        /* The parameters of the lockbus cases. */
        lockbus_mode mode;
        lockbus_scope scope;
        bool same_resource;             /* every client locks the one resource */
        uint64_t timeout_usec;          /* of Acquire: 0 fail at once, LOCKBUS_WAIT_FOREVER queue */
        bool unlock_nowait;             /* release with lockbus_unlock_nowait(): the cycle waits for Acquire only */
};

const BenchCase *bench_case_find(const char *name);
void bench_cases_list(FILE *f);

/* printf into c->error; returns r (a negative errno) for "return bench_client_fail(…)". */
int bench_client_fail(BenchClient *c, int r, const char *format, ...) __attribute__((format(printf, 3, 4)));
