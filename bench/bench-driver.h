/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The closed-loop driver: runs one case with N clients, each a separate
 * process (forked, then dropped to its own uid for lockbus cases), each
 * doing one operation after the other as fast as answers come back.
 *
 *   1. fork N clients; each connects (setup) and reports ready;
 *   2. when all are ready, the parent sets a common start (now + a little)
 *      and end on CLOCK_MONOTONIC and lets them go at once;
 *   3. operations that start in [start + warmup, end) are counted and their
 *      latency goes into the client's histogram;
 *   4. each client sends its count and histogram back through a pipe; the
 *      parent merges them and prints one JSON line.
 *
 * Throughput is the sum of counted operations ÷ the measured window; the
 * latency percentiles are over every counted operation of every client;
 * fairness is the spread of per-client counts (max ÷ min). While the
 * clients run, the parent samples the CPU time of the watched processes at
 * the start and the end of the window: "<name>_cpu_us_per_op".
 *
 * Paired (config->pair): each client also connects for a second case and
 * all of them switch between the two in slices (the main case first), so
 * both see the same moments of a noisy machine; each gets half the window.
 * Their ratio is what a target compares ("pair_ops_per_sec", "pair_lat_*").
 * The two cases keep their own state and connection, so a lockbus case can
 * be paired with a peer's (the peer's client connects before the process
 * drops to its lockbus uid). */

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "bench-clients.h"

/* A process whose CPU time over the measured window is reported per
 * operation (lockbusd, dbus-daemon). */
typedef struct WatchedProcess {
        const char *name;
        pid_t pid;
} WatchedProcess;

#define DRIVER_WATCH_MAX 4

typedef struct DriverConfig {
        unsigned n_clients;
        uint64_t warmup_ns;
        uint64_t duration_ns;           /* measured, after the warmup */
        unsigned rep;                   /* passed through to the output */
        WatchedProcess watch[DRIVER_WATCH_MAX];
        unsigned n_watch;
        const BenchCase *pair;          /* NULL, or a second case interleaved with the first */
        uint64_t slice_ns;              /* paired: how long each case runs before the other's turn */
} DriverConfig;

/* Runs the case and prints its JSON line to out. Returns 0 if every client
 * finished without error (the line says "error" otherwise), else a
 * negative errno. */
int driver_run(const BenchCase *bc, const BenchTargets *targets, const DriverConfig *config, FILE *out);
