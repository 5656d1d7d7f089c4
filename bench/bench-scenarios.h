/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The cases that are not a closed loop of one operation: each prints one
 * JSON line to `out` and returns 0 or a negative errno.
 *
 *   handoff       Unlock by A → grant to B, who waits (timeout for ever) on
 *                 another connection in another process: from just before
 *                 A's Unlock call to B's reply, CLOCK_MONOTONIC in both;
 *                 through the bus, or the direct socket if one is given,
 *                 or the bus of the etcd backend's lockbusd if given.
 *                 A also times a Ping right before each Unlock: one round
 *                 trip at the same moments, the yardstick.
 *   cold          first call (Acquire) with lockbusd not running: D-Bus
 *                 activation through the bus's service directory, to the
 *                 reply; and, for comparison, the first call of a new
 *                 connection with the daemon running.
 *   scale-holds   N connection holds from a few connections, on a freshly
 *                 started daemon: its RSS per hold (after the grants, and
 *                 after a restart that reloaded them), Acquire/Owner
 *                 latency at that size vs empty (with a Ping between the
 *                 calls, to tell the daemon from the machine's load), ListLocks, recovery after
 *                 kill -9 (re-activation until ListLocks answers with every
 *                 hold), release when the holders disconnect.
 *   scale-waiters N connections waiting on one resource: time to queue them
 *                 all, time to drain the queue (each unlocks when granted).
 *   peer-limit    how many distinct client connections (over n_uids users)
 *                 lockbusd serves at once on this bus: it tracks each with
 *                 a match rule, and dbus-daemon limits match rules per
 *                 connection (512 on a stock system bus).
 *
 * Everything talks to the bus in DBUS_SYSTEM_BUS_ADDRESS. */

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

typedef struct ScenarioConfig {
        unsigned iterations;            /* handoff, cold */
        unsigned count;                 /* scale-holds: holds; scale-waiters: waiters; peer-limit: connections */
        unsigned connections;           /* scale-holds: connections the holds come from */
        uid_t uid_base;                 /* handoff, peer-limit: clients run as uid_base + i (0: as invoked) */
        unsigned n_uids;                /* peer-limit: connections spread over uid_base … uid_base + n_uids - 1 */
        double timeout_s;               /* wait-name */
        const char *direct_socket;      /* handoff: through lockbusd's direct socket ("handoff-direct") */
        const char *etcd_bus;           /* handoff: on this bus, whose lockbusd has --backend=etcd ("handoff-etcd") */
} ScenarioConfig;

int scenario_handoff(const ScenarioConfig *config, FILE *out);
int scenario_cold(const ScenarioConfig *config, FILE *out);
int scenario_scale_holds(const ScenarioConfig *config, FILE *out);
int scenario_scale_waiters(const ScenarioConfig *config, FILE *out);
int scenario_peer_limit(const ScenarioConfig *config, FILE *out);

/* Helpers for bench/run.sh: wait until io.lockbus1 has an owner; print the
 * pid of its owner (nothing and -ENXIO if none). */
int scenario_wait_name(const ScenarioConfig *config, FILE *out);
int scenario_daemon_pid(const ScenarioConfig *config, FILE *out);
