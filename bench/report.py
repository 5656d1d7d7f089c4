#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Turns the harness's JSON lines of one bench/run.sh run into its results:
OUT.json (everything, with the raw lines), OUT.md (the tables) and OUT.png
(throughput against client count, drawn by gnuplot).

Closed-loop figures are medians over the repetitions; a ratio is taken
within each repetition (e.g. a cycle against the Ping of the same
repetition and client count), then the median of those is reported, so
that a slow phase of a noisy machine hits both sides of a ratio.

    report.py --meta=META.json --raw=RAW.jsonl --out=bench/results/DATE
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

LABELS = {
    "ping": "Ping through the bus (floor; 1 call)",
    "conn-excl": "lockbus cycle, scope connection, exclusive",
    "conn-excl-nowait": "lockbus cycle, scope connection, exclusive, Unlock not waited for",
    "conn-shared": "lockbus cycle, scope connection, shared",
    "conn-shared-same": "lockbus cycle, scope connection, shared, one resource",
    "pers-excl": "lockbus cycle, scope persistent, exclusive",
    "pers-excl-nowait": "lockbus cycle, scope persistent, exclusive, Unlock not waited for",
    "pers-shared": "lockbus cycle, scope persistent, shared",
    "pers-shared-same": "lockbus cycle, scope persistent, shared, one resource",
    "contended": "lockbus cycle, one resource, waiting (queue)",
    "ping-direct": "Ping on the direct socket (floor of the direct path)",
    "conn-excl-direct": "lockbus cycle, scope connection, direct socket",
    "conn-excl-direct-nowait": "lockbus cycle, scope connection, direct socket, Unlock not waited for",
    "pers-excl-direct": "lockbus cycle, scope persistent, direct socket",
    "pers-excl-direct-nowait": "lockbus cycle, scope persistent, direct socket, Unlock not waited for",
    "flock": "flock(2) LOCK_EX + LOCK_UN",
    "redis": "Redis SET NX PX + DEL (Unix socket)",
    "redis-pipelined": "Redis SET NX PX + DEL, the DEL sent with the next SET (one round trip)",
    "postgres": "PostgreSQL pg_advisory_lock + unlock (Unix socket)",
    "etcd": "etcd lease grant + txn + delete (HTTP gateway)",
    "ping-etcd": "Ping through the etcd backend's bus (its floor; 1 call, no etcd)",
    "conn-excl-etcd": "lockbus cycle, etcd backend, scope connection, exclusive",
    "conn-excl-etcd-nowait": "lockbus cycle, etcd backend, scope connection, exclusive, Unlock not waited for",
    "pers-excl-etcd": "lockbus cycle, etcd backend, scope persistent, exclusive",
}
LOCKBUS_ORDER = ["ping", "conn-excl", "conn-excl-nowait", "conn-shared", "conn-shared-same", "pers-excl",
                 "pers-excl-nowait", "pers-shared", "pers-shared-same", "contended", "ping-direct",
                 "conn-excl-direct", "conn-excl-direct-nowait", "pers-excl-direct", "pers-excl-direct-nowait"]
PEER_ORDER = ["flock", "redis", "redis-pipelined", "postgres", "etcd"]
# Cluster mode: the same cycles on a second bus whose lockbusd runs with
# --backend=etcd (on the peers' etcd), with that bus's Ping as their floor.
# Each, with its directory-backend counterpart on the main bus.
ETCD_BACKEND_ORDER = ["ping-etcd", "conn-excl-etcd", "conn-excl-etcd-nowait", "pers-excl-etcd"]
DIRECTORY_OF = {"ping-etcd": "ping", "conn-excl-etcd": "conn-excl", "conn-excl-etcd-nowait": "conn-excl-nowait",
                "pers-excl-etcd": "pers-excl"}
# The floor each lockbus case is compared with.
FLOOR_OF = {c: ("ping-direct" if "-direct" in c else "ping") for c in LOCKBUS_ORDER}
FLOOR_OF.update({c: "ping-etcd" for c in ETCD_BACKEND_ORDER})
# Cycles of one round trip (the release not waited for): their floor is the
# Ping rate itself, not ÷ 2.
ONE_ROUND_TRIP = {"conn-excl-nowait", "pers-excl-nowait", "conn-excl-direct-nowait", "pers-excl-direct-nowait",
                  "redis-pipelined", "conn-excl-etcd-nowait"}
# The per-process CLI runs of cluster mode (hyperfine), in table order.
CLI_CLUSTER = [("etcdctl-lock", "`etcdctl lock bench/cli true` (etcd's own lock: session lease, lock, command, "
                "unlock)"),
               ("lockbusctl-run-etcd", "`lockbusctl run bench/cli -- true`, etcd backend's bus"),
               ("lockbusctl-run", "`lockbusctl run bench/cli -- true`, directory backend's bus")]
# The step "one CPU" of run.sh: lockbusd, dbus-daemon, redis-server and the
# client pinned to CPU 0, 1 client; its lines carry "tag": "one-cpu". Lines
# with any tag stay out of every other table and target. Each case here,
# with the peer cycle it is compared with.
ONE_CPU_TAG = "one-cpu"
ONE_CPU_ORDER = ["ping-direct", "conn-excl-direct", "conn-excl-direct-nowait", "ping", "conn-excl",
                 "redis", "redis-pipelined"]
ONE_CPU_VS = {"conn-excl-direct": ["redis"], "conn-excl-direct-nowait": ["redis", "redis-pipelined"],
              "conn-excl": ["redis"]}


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def fmt(v, digits=0, unit=""):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}{unit}".replace(",", " ")
    return f"{v:.{digits}f}{unit}"


def fmt_us(v):
    """A latency in µs: one decimal below 10 µs."""
    if v is None:
        return "–"
    return f"{v:.1f} µs" if v < 10 else fmt(v, 0, " µs")


def fmt_ratio(v):
    return "–" if v is None else f"{v:.2f}"


def load(path):
    lines = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as e:
                print(f"report.py: {path}:{n}: not JSON ({e}), skipped", file=sys.stderr)
    return lines


def closed_loop(raw):
    """(case, clients) → list of per-repetition records."""
    groups = {}
    for r in raw:
        if "clients" in r and r.get("case") in LABELS and "pair" not in r and "tag" not in r:
            groups.setdefault((r["case"], r["clients"]), []).append(r)
    return groups


def by_rep(records):
    return {r.get("rep"): r for r in records if "error" not in r and r.get("ops", 0) > 0}


def summarize(groups):
    rows = []
    for (case, clients), records in groups.items():
        ok = by_rep(records)
        row = {
            "case": case,
            "description": LABELS[case],
            "clients": clients,
            "reps": len(ok),
            "ops_per_sec": median([r["ops_per_sec"] for r in ok.values()]),
            "ops_per_sec_reps": [round(r["ops_per_sec"], 1) for r in sorted(ok.values(), key=lambda r: r["rep"])],
            "lat_p50_us": median([r.get("lat_p50_us") for r in ok.values()]),
            "lat_p99_us": median([r.get("lat_p99_us") for r in ok.values()]),
            "lockbusd_cpu_us_per_op": median([r.get("lockbusd_cpu_us_per_op") for r in ok.values()]),
            "dbus_daemon_cpu_us_per_op": median([r.get("dbus_daemon_cpu_us_per_op") for r in ok.values()]),
            "etcd_cpu_us_per_op": median([r.get("etcd_cpu_us_per_op") for r in ok.values()]),
            "fairness_max_min": median([r.get("fairness_max_min") for r in ok.values()]),
            "errors": [r["error"] for r in records if "error" in r],
        }
        floor = FLOOR_OF.get(case) or ("ping" if case in PEER_ORDER else None)
        calls = 1 if case in ONE_ROUND_TRIP else 2
        if floor and floor != case and (floor, clients) in groups:
            floor_reps = by_rep(groups[(floor, clients)])
            ratios = [ok[k]["ops_per_sec"] / (floor_reps[k]["ops_per_sec"] / calls)
                      for k in ok if k in floor_reps and floor_reps[k]["ops_per_sec"] > 0]
            row["ratio_to_floor"] = median(ratios)
            row["floor"] = floor
            row["floor_divided_by"] = calls
        rows.append(row)
    order = {c: i for i, c in enumerate(LOCKBUS_ORDER + PEER_ORDER + ETCD_BACKEND_ORDER)}
    rows.sort(key=lambda r: (order.get(r["case"], 99), r["clients"]))
    return rows


def paired(raw):
    """Interleaved runs: (case, pair, clients) → medians and the ratio,
    taken per repetition. Against a Ping the ratio is to Ping ÷ 2 (a cycle
    is two calls)."""
    groups = {}
    for r in raw:
        if ("pair" in r and "tag" not in r and "error" not in r and r.get("ops", 0) > 0
                and r.get("pair_ops", 0) > 0):
            groups.setdefault((r["case"], r["pair"], r["clients"]), []).append(r)
    rows = []
    for (case, pair, clients), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        halve = pair.startswith("ping")
        ratios = [r["ops_per_sec"] / (r["pair_ops_per_sec"] / (2 if halve else 1)) for r in recs]
        rows.append({
            "case": case, "pair": pair, "clients": clients, "reps": len(recs),
            "ops_per_sec": median([r["ops_per_sec"] for r in recs]),
            "pair_ops_per_sec": median([r["pair_ops_per_sec"] for r in recs]),
            "lat_p50_us": median([r["lat_p50_us"] for r in recs]),
            "pair_lat_p50_us": median([r["pair_lat_p50_us"] for r in recs]),
            "ratio": median(ratios),
            "ratio_reps": [round(x, 3) for x in ratios],
            "ratio_is_to_half": halve,
        })
    return rows


def find_pair(prows, case, pair, clients):
    for r in prows:
        if r["case"] == case and r["pair"] == pair and r["clients"] == clients:
            return r
    return None


def find(rows, case, clients):
    for r in rows:
        if r["case"] == case and r["clients"] == clients:
            return r
    return None


def rep_ratio(groups, num, den, clients, den_clients=None, den_half=False):
    """Median over repetitions of num/den (den halved for a floor)."""
    a = by_rep(groups.get((num, clients), []))
    b = by_rep(groups.get((den, den_clients or clients), []))
    ratios = []
    for k in a:
        if k in b and b[k]["ops_per_sec"] > 0:
            ratios.append(a[k]["ops_per_sec"] / (b[k]["ops_per_sec"] / (2 if den_half else 1)))
    return median(ratios)


def scenario(raw, case):
    return [r for r in raw if r.get("case") == case and "tag" not in r]


def one_cpu(raw):
    """The lines of the step "one CPU" (1 client, all on CPU 0): one row per
    case with its medians, the CPU time of one operation (1e6 ÷ ops/s: one
    CPU did all the work) and its ratio to the peer cycles of ONE_CPU_VS,
    taken per repetition."""
    groups = {}
    for r in raw:
        if r.get("tag") == ONE_CPU_TAG and r.get("case") in LABELS and "pair" not in r:
            groups.setdefault(r["case"], []).append(r)
    rows = []
    for case in ONE_CPU_ORDER + sorted(set(groups) - set(ONE_CPU_ORDER)):
        if case not in groups:
            continue
        ok = by_rep(groups[case])
        ops = median([r["ops_per_sec"] for r in ok.values()])
        row = {
            "case": case,
            "description": LABELS[case],
            "clients": 1,
            "reps": len(ok),
            "ops_per_sec": ops,
            "ops_per_sec_reps": [round(r["ops_per_sec"], 1) for r in sorted(ok.values(), key=lambda r: r["rep"])],
            "lat_p50_us": median([r.get("lat_p50_us") for r in ok.values()]),
            "lat_p99_us": median([r.get("lat_p99_us") for r in ok.values()]),
            "cpu_us_per_op": 1e6 / ops if ops else None,
            "lockbusd_cpu_us_per_op": median([r.get("lockbusd_cpu_us_per_op") for r in ok.values()]),
            "dbus_daemon_cpu_us_per_op": median([r.get("dbus_daemon_cpu_us_per_op") for r in ok.values()]),
            "errors": [r["error"] for r in groups[case] if "error" in r],
            "ratio_to": {},
        }
        for other in ONE_CPU_VS.get(case, []):
            theirs = by_rep(groups.get(other, []))
            ratios = [ok[k]["ops_per_sec"] / theirs[k]["ops_per_sec"] for k in ok if k in theirs]
            if ratios:
                row["ratio_to"][other] = median(ratios)
        rows.append(row)
    return rows


def find_one_cpu(orows, case):
    return next((r for r in orows if r["case"] == case), None)


def scenario_medians(records, keys):
    ok = [r for r in records if "error" not in r]
    return {k: median([r.get(k) for r in ok]) for k in keys} | {
        "reps": len(ok), "errors": [r["error"] for r in records if "error" in r]}


def targets_table(rows, groups, prows, raw, handoff, scale, cold, cli, orows):
    t = []

    def add(name, measured, holds, detail=""):
        t.append({"target": name, "measured": measured, "holds": holds, "detail": detail})

    # Ratios from the interleaved runs where there are some, else from the
    # separate runs of the same repetition.
    for c in (1, 8):
        p = find_pair(prows, "conn-excl", "ping", c)
        ratio = p["ratio"] if p else rep_ratio(groups, "conn-excl", "ping", c, den_half=True)
        how = (f"{p['ops_per_sec']:.0f} cycles/s vs {p['pair_ops_per_sec']:.0f} Pings/s, interleaved"
               if p else "separate runs")
        add(f"connection cycle ≥ 0.9 × (Ping rate ÷ 2), {c} client{'s' if c > 1 else ''}",
            None if ratio is None else f"{ratio:.2f} × ({how})", None if ratio is None else ratio >= 0.9)
    p = find_pair(prows, "pers-excl", "conn-excl", 8)
    ratio = p["ratio"] if p else rep_ratio(groups, "pers-excl", "conn-excl", 8)
    how = f"{p['ops_per_sec']:.0f} vs {p['pair_ops_per_sec']:.0f} cycles/s, interleaved" if p else "separate runs"
    add("persistent cycle ≥ 0.5 × connection cycle, 8 clients",
        None if ratio is None else f"{ratio:.2f} × ({how})", None if ratio is None else ratio >= 0.5)

    def cycle_ratio(case, other, clients):
        """case ÷ other in cycles/s: interleaved if paired, else from the
        separate runs of the same repetition; (ratio, how) or (None, None)."""
        p = find_pair(prows, case, other, clients)
        if p:
            return p["ratio"], f"{p['ops_per_sec']:.0f} vs {p['pair_ops_per_sec']:.0f} cycles/s, interleaved"
        ratio = rep_ratio(groups, case, other, clients)
        a, b = find(rows, case, clients), find(rows, other, clients)
        if ratio is None or not a or not b:
            return None, None
        return ratio, f"{a['ops_per_sec']:.0f} vs {b['ops_per_sec']:.0f} cycles/s, separate runs"

    ratio, how = cycle_ratio("pers-excl-nowait", "conn-excl-nowait", 8)
    add("persistent cycle ≥ 0.5 × connection cycle, 8 clients, Unlock not waited for (the -nowait cycles)",
        None if ratio is None else f"{ratio:.2f} × ({how})", None if ratio is None else ratio >= 0.5)
    # The direct socket against Redis (SET NX PX + DEL, each waited for): the
    # plain cycle (two round trips, like Redis's) and the nowait cycle (one);
    # redis-pipelined, one round trip too, is the like-for-like peer of the
    # latter, shown but not the target.
    for c in (1, 8):
        n = f"{c} client{'s' if c > 1 else ''}"
        ratio, how = cycle_ratio("conn-excl-direct", "redis", c)
        add(f"direct-socket cycle ≥ Redis cycle, {n} (Unlock waited for)",
            None if ratio is None else f"{ratio:.2f} × ({how})", None if ratio is None else ratio >= 1.0)
        ratio, how = cycle_ratio("conn-excl-direct-nowait", "redis", c)
        like, like_how = cycle_ratio("conn-excl-direct-nowait", "redis-pipelined", c)
        like_text = ("" if like is None else
                     f"; like for like, against redis-pipelined (one round trip too): {like:.2f} × ({like_how})")
        add(f"direct-socket cycle ≥ Redis cycle, {n} (Unlock not waited for)",
            None if ratio is None else f"{ratio:.2f} × ({how}){like_text}",
            None if ratio is None else ratio >= 1.0)
    # The same, all on one CPU (the step "one CPU"): no cross-CPU wakeups, so
    # the ratio is that of the CPU time one cycle costs, client and server
    # together. The plain cycle against redis, the nowait cycle against its
    # like, redis-pipelined.
    for case, other, how in (("conn-excl-direct", "redis", "Unlock waited for, vs redis"),
                             ("conn-excl-direct-nowait", "redis-pipelined",
                              "Unlock not waited for, vs redis-pipelined")):
        a, b = find_one_cpu(orows, case), find_one_cpu(orows, other)
        ratio = a["ratio_to"].get(other) if a else None
        add(f"direct-socket cycle ≥ Redis cycle, all on one CPU, 1 client ({how})",
            None if ratio is None or not b else
            f"{ratio:.2f} × ({a['ops_per_sec']:.0f} vs {b['ops_per_sec']:.0f} cycles/s, pinned to CPU 0; "
            f"{a['cpu_us_per_op']:.1f} vs {b['cpu_us_per_op']:.1f} µs of CPU per cycle)",
            None if ratio is None else ratio >= 1.0)
    # The handoff against the Ping its waiter makes at the same moments.
    ping1 = find(rows, "ping", 1)
    if handoff.get("handoff_p50_us") is not None and handoff.get("ping_p50_us"):
        ratio = handoff.get("ratio_to_ping") or handoff["handoff_p50_us"] / handoff["ping_p50_us"]
        add("handoff p50 ≤ 1.5 × one bus round trip (Ping p50)",
            f"{handoff['handoff_p50_us']:.0f} µs = {ratio:.2f} × {handoff['ping_p50_us']:.0f} µs", ratio <= 1.5)
    elif handoff.get("handoff_p50_us") is not None and ping1 and ping1["lat_p50_us"]:
        ratio = handoff["handoff_p50_us"] / ping1["lat_p50_us"]
        add("handoff p50 ≤ 1.5 × one bus round trip (Ping p50)",
            f"{handoff['handoff_p50_us']:.0f} µs = {ratio:.2f} × {ping1['lat_p50_us']:.0f} µs", ratio <= 1.5)
    else:
        add("handoff p50 ≤ 1.5 × one bus round trip (Ping p50)", None, None)
    n = scale.get("holds")
    label = f"{n:,}".replace(",", " ") if n else "N"
    per = scale.get("rss_per_hold_bytes")
    add(f"{label} held locks: ≤ 1 KiB RSS per lock", None if per is None else f"{per:.0f} B",
        None if per is None else per <= 1024)
    rec = scale.get("recovery_ms")
    ok_rows = scale.get("recovered_rows") is not None and n is not None and scale.get("recovered_rows", 0) >= n
    add(f"{label} held locks: recovery ≤ 2 s (kill -9 → ListLocks answers)",
        None if rec is None else f"{rec / 1000:.2f} s ({scale.get('recovered_rows', 0):,} holds back)".replace(",", " "),
        None if rec is None else (rec <= 2000 and ok_rows))
    a0, a1 = scale.get("acquire_empty_p50_us"), scale.get("acquire_full_p50_us")
    p0, p1 = scale.get("ping_empty_p50_us"), scale.get("ping_full_p50_us")
    if a0 and a1 and p0 and p1:
        # Against the Ping taken between the same calls: the machine's load
        # may change between the two probes; the daemon's share is what counts.
        r0, r1 = a0 / p0, a1 / p1
        add(f"{label} held locks: Acquire latency within 10 % of empty (p50, ÷ Ping p50 at the time)",
            f"{a1:.0f} µs vs {a0:.0f} µs; ÷ Ping: {r1:.2f} vs {r0:.2f} ({(r1 / r0 - 1) * 100:+.0f} %)",
            r1 <= 1.10 * r0)
    elif a0 and a1:
        add(f"{label} held locks: Acquire latency within 10 % of empty (p50)",
            f"{a1:.0f} µs vs {a0:.0f} µs ({(a1 / a0 - 1) * 100:+.0f} %)", a1 <= 1.10 * a0)
    else:
        add(f"{label} held locks: Acquire latency within 10 % of empty (p50)", None, None)
    c50 = cold.get("cold_p50_us")
    add("cold activation ≤ 20 ms (median)", None if c50 is None else f"{c50 / 1000:.1f} ms",
        None if c50 is None else c50 <= 20000)
    lb, bc = cli.get("lockbusctl"), cli.get("busctl")
    if lb and bc:
        ratio = lb["median_ms"] / bc["median_ms"]
        add("lockbusctl lock+unlock ≤ 1.2 × two busctl calls",
            f"{lb['median_ms']:.1f} ms vs {bc['median_ms']:.1f} ms = {ratio:.2f} ×", ratio <= 1.2)
    else:
        add("lockbusctl lock+unlock ≤ 1.2 × two busctl calls", None, None)
    return t


def write_plot(rows, meta, out):
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("report.py: gnuplot not found, no plot", file=sys.stderr)
        return None
    series = [
        ("ping", "Ping ÷ 2 (bus floor)", 0.5, "dt 2 lw 2 lc rgb '#888888' pt 6"),
        ("conn-excl", "lockbus, connection scope", 1, "lw 3 lc rgb '#1f77b4' pt 7"),
        ("conn-excl-nowait", "lockbus, connection, nowait", 1, "dt 4 lw 3 lc rgb '#1f77b4' pt 7"),
        ("pers-excl", "lockbus, persistent scope", 1, "lw 3 lc rgb '#2ca02c' pt 5"),
        ("pers-excl-nowait", "lockbus, persistent, nowait", 1, "dt 4 lw 3 lc rgb '#2ca02c' pt 5"),
        ("ping-direct", "Ping ÷ 2 (direct floor)", 0.5, "dt 2 lw 2 lc rgb '#9ecae1' pt 6"),
        ("conn-excl-direct", "lockbus direct, connection", 1, "lw 2 lc rgb '#6baed6' pt 7"),
        ("conn-excl-direct-nowait", "lockbus direct, connection, nowait", 1, "dt 4 lw 2 lc rgb '#6baed6' pt 7"),
        ("pers-excl-direct", "lockbus direct, persistent", 1, "lw 2 lc rgb '#74c476' pt 5"),
        ("pers-excl-direct-nowait", "lockbus direct, persistent, nowait", 1, "dt 4 lw 2 lc rgb '#74c476' pt 5"),
        ("redis", "Redis SET NX PX + DEL", 1, "lw 2 lc rgb '#d62728' pt 9"),
        ("redis-pipelined", "Redis pipelined (DEL with next SET)", 1, "dt 4 lw 2 lc rgb '#d62728' pt 9"),
        ("postgres", "PostgreSQL advisory lock", 1, "lw 2 lc rgb '#9467bd' pt 11"),
        ("etcd", "etcd lease + txn + delete", 1, "lw 2 lc rgb '#8c564b' pt 13"),
        ("conn-excl-etcd", "lockbus, etcd backend, connection", 1, "lw 3 lc rgb '#e377c2' pt 13"),
        ("conn-excl-etcd-nowait", "lockbus, etcd backend, connection, nowait", 1, "dt 4 lw 3 lc rgb '#e377c2' pt 13"),
        ("pers-excl-etcd", "lockbus, etcd backend, persistent", 1, "lw 3 lc rgb '#bcbd22' pt 12"),
        ("flock", "flock(2)", 1, "lw 2 lc rgb '#ff7f0e' pt 3"),
    ]
    clients = sorted({r["clients"] for r in rows})
    present = [s for s in series if any(find(rows, s[0], c) and find(rows, s[0], c)["ops_per_sec"] for c in clients)]
    if not present:
        return None
    dat = out + ".plot.dat"
    with open(dat, "w") as f:
        f.write("# clients " + " ".join(s[0] for s in present) + "\n")
        for c in clients:
            vals = []
            for case, _, scale, _ in present:
                r = find(rows, case, c)
                vals.append(f"{r['ops_per_sec'] * scale:.1f}" if r and r["ops_per_sec"] else "NaN")
            f.write(f"{c} " + " ".join(vals) + "\n")
    title = (f"lockbus vs floor vs peers — {meta.get('date', '')[:10]}, commit {meta.get('git_commit', '?')}"
             f"{' (dirty)' if meta.get('git_dirty') else ''}, {meta.get('nproc', '?')} vCPU, "
             f"median of {meta.get('reps', '?')} × {meta.get('duration_s', '?')} s")
    plots = []
    for i, (case, label, _, style) in enumerate(present):
        plots.append(f"'{dat}' using 1:{i + 2} with linespoints title '{label}' {style} ps 1.3")
    script = f"""
set terminal pngcairo size 1200,760 enhanced font 'DejaVu Sans,11'
set output '{out}.png'
set title "{title}" font ',12'
set xlabel 'client processes (closed loop)'
set ylabel 'lock+unlock cycles per second (log scale)'
set logscale x 2
set logscale y 10
set xtics ({', '.join(str(c) for c in clients)})
set xrange [{clients[0] * 0.8}:{clients[-1] * 1.25}]
set format y '10^{{%L}}'
set grid xtics ytics mytics lc rgb '#dddddd'
set key outside right center box opaque Left reverse font ',10' spacing 1.2
set datafile missing 'NaN'
plot {', '.join(plots)}
"""
    subprocess.run([gnuplot], input=script, text=True, check=True)
    os.unlink(dat)
    return out + ".png"


def one_cpu_markdown(w, meta, rows, groups, orows):
    w("## All on one CPU (pinned)")
    w("")
    if not orows:
        w(f"Not measured ({meta.get('one_cpu') or 'no lines tagged one-cpu'}).")
        w("")
        return
    w("lockbusd, the bus's dbus-daemon, redis-server (all their threads) and the client pinned to CPU 0 "
      "with taskset, 1 client, the same cases otherwise; run after the repetitions above, "
      f"{orows[0]['reps']} × {meta.get('duration_s')} s, medians. With a single CPU doing all the work, "
      "ops/s is the inverse of the whole CPU time of one operation, client and server (and bus) together: "
      "*CPU/op* = 10⁶ ÷ ops/s, an upper bound (whatever else ran on CPU 0 counts too). Pings are one "
      "call, not ÷ 2. *vs Redis* is the cycle rate ÷ Redis's, per repetition, median.")
    w("")
    w("| case | ops/s | p50 | p99 | CPU/op | of which lockbusd | vs redis | vs redis-pipelined | reps |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in orows:
        err = f" ⚠ {r['errors'][0]}" if r["errors"] else ""
        lb = fmt(r["lockbusd_cpu_us_per_op"], 1, " µs") if r["case"] not in PEER_ORDER else "–"
        w(f"| {r['case']}{err} | {fmt(r['ops_per_sec'])} | {fmt_us(r['lat_p50_us'])} | {fmt_us(r['lat_p99_us'])} | "
          f"{fmt(r['cpu_us_per_op'], 1, ' µs')} | {lb} | {fmt_ratio(r['ratio_to'].get('redis'))} | "
          f"{fmt_ratio(r['ratio_to'].get('redis-pipelined'))} | {r['reps']} |")
    w("")

    def compare(case):
        u, p = find(rows, case, 1), find_one_cpu(orows, case)
        if not u or not p or not u["ops_per_sec"] or not p["ops_per_sec"]:
            return None
        reps = [x.get("lat_p50_us") for x in sorted(by_rep(groups.get((case, 1), [])).values(),
                                                     key=lambda x: x["rep"])]
        per_rep = ("; per repetition " + ", ".join(fmt_us(x) for x in reps)) if len(reps) > 1 else ""
        return (f"{fmt(u['ops_per_sec'])}/s (p50 {fmt_us(u['lat_p50_us'])}{per_rep}) unpinned and "
                f"{fmt(p['ops_per_sec'])}/s (p50 {fmt_us(p['lat_p50_us'])}) pinned")

    facts = []
    for case, what in (("ping-direct", "a Ping on the direct socket"), ("ping", "a Ping through the bus"),
                       ("redis", "a Redis cycle")):
        c = compare(case)
        if c:
            facts.append(f"{what} did {c}")
    w("Why: at 1 client every operation is a wakeup of the server, then of the client, and the time of that "
      "wakeup depends on where the scheduler has put the two. On this VM a wakeup on the other vCPU costs "
      "tens of µs (the idle vCPU has to be woken), one on the same CPU a few µs; an unpinned 1-client run "
      "lands on one or the other by chance and stays there, so its latency is bimodal from run to run, and "
      "Redis (one process, one connection) lands on one CPU with its client more often than lockbus does. "
      "The unpinned 1-client comparisons with the peers therefore mostly measure placement luck. "
      + (f"In this run, {'; '.join(facts)}. " if facts else "")
      + "Pinned, nothing crosses CPUs and no one waits for a CPU to wake: the figures are what an operation "
      "costs, which is the fair comparison of lockbus with Redis at 1 client (at 8 and 32 clients both CPUs "
      "are busy and placement matters much less).")
    w("")


def cluster_rows(rows, groups):
    """Cluster mode: per client count of the etcd cases, each etcd-backend
    case with its directory-backend counterpart and the etcd peer, and the
    ratios to them (per repetition, median)."""
    out = []
    counts = sorted({r["clients"] for r in rows if r["case"] in ETCD_BACKEND_ORDER})
    for c in counts:
        for case in ETCD_BACKEND_ORDER[1:] + ["conn-excl", "conn-excl-nowait", "pers-excl", "etcd"]:
            r = find(rows, case, c)
            if not r:
                continue
            row = {"case": case, "clients": c, "ops_per_sec": r["ops_per_sec"], "lat_p50_us": r["lat_p50_us"],
                   "lat_p99_us": r["lat_p99_us"], "lockbusd_cpu_us_per_op": r["lockbusd_cpu_us_per_op"],
                   "etcd_cpu_us_per_op": r.get("etcd_cpu_us_per_op"), "errors": r["errors"], "reps": r["reps"]}
            if case in DIRECTORY_OF:
                row["ratio_to_directory"] = rep_ratio(groups, case, DIRECTORY_OF[case], c)
            if case != "etcd":
                row["ratio_to_etcd_peer"] = rep_ratio(groups, case, "etcd", c)
            out.append(row)
    return out


def cluster_markdown(w, meta, rows, groups, prows, cli, handoffs, cluster_log):
    w("## Cluster mode (etcd backend)")
    w("")
    crows = cluster_rows(rows, groups)
    etcd_cli = [(t, what, cli[t]) for t, what in CLI_CLUSTER if t in cli]
    if not crows and not etcd_cli:
        w(f"Not measured ({meta.get('etcd_backend') or 'no etcd backend lines'}).")
        w("")
        return
    w(f"lockbusd on {meta.get('etcd_backend', 'a second bus with --backend=etcd')}. Every Acquire is a txn "
      "(put on the daemon's lease + read of the resource's keys) and every Unlock a delete, each a write etcd "
      "fsyncs; a persistent grant is one more put (the hold moves off the daemon's lease). The etcd peer row is "
      "the raw etcd cycle of the main table (lease grant + txn + delete over the JSON gateway, no lockbusd). "
      "*÷ directory* is the cycle rate ÷ the same cycle on the directory backend (the main bus's lockbusd), "
      "*÷ etcd peer* ÷ the raw etcd cycle, both per repetition, median. CPU/op: the daemon's CPU time over the "
      "window ÷ cycles (lockbusd: the one serving the row's bus).")
    w("")
    if crows:
        w("| case | clients | ops/s | p50 | p99 | ÷ directory | ÷ etcd peer | lockbusd CPU/op | etcd CPU/op | reps |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        errors = []
        for r in crows:
            err = ""
            if r["errors"]:
                errors.append(f"`{r['case']}`, {r['clients']} client{'s' if r['clients'] > 1 else ''}: "
                              f"{r['errors'][0]}")
                err = f" ⚠ error {len(errors)}"
            label = {"conn-excl-etcd": "etcd backend, connection", "conn-excl-etcd-nowait": "etcd backend, connection, nowait",
                     "pers-excl-etcd": "etcd backend, persistent", "conn-excl": "directory backend, connection",
                     "conn-excl-nowait": "directory backend, connection, nowait",
                     "pers-excl": "directory backend, persistent (durable on disk)",
                     "etcd": "etcd peer: lease + txn + delete"}[r["case"]]
            w(f"| {label} (`{r['case']}`){err} | {r['clients']} | {fmt(r['ops_per_sec'])} | {fmt_us(r['lat_p50_us'])} | "
              f"{fmt_us(r['lat_p99_us'])} | {fmt_ratio(r.get('ratio_to_directory'))} | "
              f"{fmt_ratio(r.get('ratio_to_etcd_peer'))} | "
              f"{fmt(r['lockbusd_cpu_us_per_op'], 1, ' µs') if r['case'] != 'etcd' else '–'} | "
              f"{fmt(r['etcd_cpu_us_per_op'], 1, ' µs')} | {r['reps']} |")
        w("")
        for k, e in enumerate(errors, 1):
            w(f"- ⚠ error {k}: {e}")
        for c in sorted({r["clients"] for r in crows}):
            p = find_pair(prows, "conn-excl-etcd", "etcd", c)
            if p:
                w(f"- Interleaved with the etcd peer (`conn-excl-etcd --pair=etcd`), {c} client{'s' if c > 1 else ''}: "
                  f"{fmt(p['ops_per_sec'])} vs {fmt(p['pair_ops_per_sec'])} cycles/s, ratio {fmt_ratio(p['ratio'])} "
                  f"(per repetition {', '.join(f'{x:.2f}' for x in p['ratio_reps'])}); p50 {fmt_us(p['lat_p50_us'])} "
                  f"vs {fmt_us(p['pair_lat_p50_us'])}.")
        for c in sorted({r["clients"] for r in crows}):
            p = find(rows, "ping-etcd", c)
            q = find(rows, "ping", c)
            if p and q:
                w(f"- Ping (no etcd involved), {c} client{'s' if c > 1 else ''}: {fmt(p['ops_per_sec'])}/s to the etcd "
                  f"backend's lockbusd (p50 {fmt_us(p['lat_p50_us'])}), {fmt(q['ops_per_sec'])}/s to the main one "
                  f"(p50 {fmt_us(q['lat_p50_us'])}).")
        w("")
    h = handoffs.get("handoff-etcd")
    if h and h.get("handoff_p50_us") is not None:
        d = handoffs.get("handoff", {})
        w(f"Handoff (Unlock by A → grant to waiting B, {h.get('reps')} × {h.get('iterations') or '?'}): "
          f"p50 {fmt_us(h['handoff_p50_us'])}, p99 {fmt_us(h['handoff_p99_us'])} on the etcd backend "
          f"(A's Unlock reply {fmt_us(h['unlock_p50_us'])}, A's Ping {fmt_us(h.get('ping_p50_us'))}); "
          f"directory backend p50 {fmt_us(d.get('handoff_p50_us'))}.")
        w("")
    if etcd_cli:
        base = cli.get("etcdctl-lock")
        w("Per process (hyperfine, like the CLI step): take a lock, run `true`, release, exit. Both lockbusctl "
          "through their bus (`LOCKBUS_DIRECT_SOCKET=` empty).")
        w("")
        w("| command | median | mean ± sd | ÷ etcdctl lock | runs |")
        w("| --- | ---: | ---: | ---: | ---: |")
        for tool, what, c in etcd_cli:
            ratio = c["median_ms"] / base["median_ms"] if base and base["median_ms"] else None
            w(f"| {what} | {c['median_ms']:.1f} ms | {c['mean_ms']:.1f} ± {c['stddev_ms']:.1f} ms | "
              f"{fmt_ratio(ratio)} | {c['runs']} |")
        w("")
    if cluster_log:
        n = sum(len(x.get("lines", [])) for x in cluster_log)
        w(f"**The etcd backend's lockbusd logged {n} line(s) of warnings, errors or refused locks** (level ≤ "
          "notice, or `Refused lock`, with the two lines before each; the first lines of each step):")
        w("")
        w("```")
        for x in cluster_log:
            w(f"== {x.get('during')}" + (f" ({x['count']} lines)" if x.get("count") else ""))
            for line in x.get("lines", [])[:8]:
                w(line)
        w("```")
    else:
        w("The etcd backend's lockbusd logged no warning, error or refused lock during these runs.")
    w("")


def markdown(meta, rows, groups, prows, handoffs, contended, scale, waiters, cold, cli, peers, targets, png,
             orows, cluster_log):
    md = []
    w = md.append
    w(f"# lockbus benchmark, {meta.get('date', '')}")
    w("")
    w(f"Mode {meta.get('mode')}: each closed-loop case {meta.get('warmup_s')} s warm-up + "
      f"{meta.get('duration_s')} s measured, {meta.get('reps')} repetitions, medians. "
      f"Commit {meta.get('git_commit')}{' with uncommitted changes to the daemon or library' if meta.get('git_dirty') else ''}, "
      f"release build. {meta.get('nproc')} vCPU ({meta.get('cpu')}), {meta.get('mem_gib')} GiB, "
      f"kernel {meta.get('kernel')}. Processes not pinned (no taskset) except in \"All on one CPU\"; the machine is shared "
      f"(load average {meta.get('loadavg_start', '?')} at the start, {meta.get('loadavg_end', '?')} at the end, "
      f"on {meta.get('nproc')} vCPUs): compare within this run, by ratios.")
    w("")
    w(f"Bus: {meta.get('bus')}; dbus-broker {meta.get('dbus_broker')}. lockbusd started directly "
      f"(`--idle-timeout=0`), lock directory on {meta.get('lock_directory_fs')} (disk), runtime directory on "
      f"{meta.get('runtime_directory_fs')}. lockbus clients: {meta.get('clients_as')}. "
      f"Peers: Redis {meta['peers'].get('redis')}, PostgreSQL {meta['peers'].get('postgresql')}, "
      f"etcd {meta['peers'].get('etcd')}, each on loopback or a Unix socket with its data in a temporary directory.")
    w("")
    if png:
        w(f"![throughput against client count]({os.path.basename(png)})")
        w("")

    clients = sorted({r["clients"] for r in rows})
    w("## lockbus vs floor vs peers")
    w("")
    w("One operation = one lock + unlock cycle (two round trips); the floor is the Ping rate ÷ 2 "
      "(a cycle is two calls). The *nowait* rows wait for the lock only: the Unlock goes out with "
      "`lockbus_unlock_nowait()` and is not answered (one round trip per cycle; the connection's next "
      "Acquire sees the release). Redis pipelined is their counterpart: the DEL is sent with the next "
      "cycle's SET NX, both replies read (one round trip). ops/s at each client count; latency of one "
      "cycle at 1 client.")
    w("")
    head = "| | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in clients) + " | p50 @1 | p99 @1 |"
    w(head)
    w("|" + " --- |" * (len(clients) + 3))
    main = [("ping", "Ping ÷ 2 — the bus floor", 0.5), ("conn-excl", "lockbus, scope connection", 1),
            ("conn-excl-nowait", "lockbus, scope connection, nowait", 1),
            ("pers-excl", "lockbus, scope persistent (durable)", 1),
            ("pers-excl-nowait", "lockbus, scope persistent (durable), nowait", 1),
            ("ping-direct", "Ping ÷ 2 — the direct-socket floor", 0.5),
            ("conn-excl-direct", "lockbus direct socket, scope connection", 1),
            ("conn-excl-direct-nowait", "lockbus direct socket, scope connection, nowait", 1),
            ("pers-excl-direct", "lockbus direct socket, scope persistent", 1),
            ("pers-excl-direct-nowait", "lockbus direct socket, scope persistent, nowait", 1),
            ("flock", "flock(2) on an open fd", 1), ("redis", "Redis SET NX PX + DEL", 1),
            ("redis-pipelined", "Redis SET NX PX + DEL, pipelined (DEL with the next SET)", 1),
            ("postgres", "PostgreSQL advisory lock + unlock", 1), ("etcd", "etcd lease + txn + delete (durable)", 1),
            ("conn-excl-etcd", "lockbus, etcd backend, scope connection (decided in etcd)", 1),
            ("conn-excl-etcd-nowait", "lockbus, etcd backend, scope connection, nowait", 1),
            ("pers-excl-etcd", "lockbus, etcd backend, scope persistent (durable in etcd)", 1)]
    for case, label, scale_f in main:
        if not any(find(rows, case, c) for c in clients):
            continue
        cells = []
        for c in clients:
            r = find(rows, case, c)
            cells.append(fmt(r["ops_per_sec"] * scale_f if r and r["ops_per_sec"] else None))
        r1 = find(rows, case, 1)
        p50 = r1["lat_p50_us"] * (2 if scale_f == 0.5 else 1) if r1 and r1["lat_p50_us"] else None
        p99 = r1["lat_p99_us"] * (2 if scale_f == 0.5 else 1) if r1 and r1["lat_p99_us"] else None
        w(f"| {label} | " + " | ".join(cells) + f" | {fmt_us(p50)} | {fmt_us(p99)} |")
    w("")
    w("(For the floors, ops/s are Ping calls ÷ 2 and latency two Pings, i.e. what a cycle would cost "
      "if lockbusd did nothing. The etcd backend rows: the same client code on a second bus whose lockbusd "
      "decides every lock in etcd, the etcd above; see \"Cluster mode\".)")
    w("")

    w("## Every closed-loop case")
    w("")
    w("| case | clients | ops/s | p50 | p99 | × floor | lockbusd CPU/op | dbus-daemon CPU/op | fairness max/min | reps |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        err = f" ⚠ {r['errors'][0]}" if r["errors"] else ""
        w(f"| {r['case']}{err} | {r['clients']} | {fmt(r['ops_per_sec'])} | {fmt_us(r['lat_p50_us'])} | "
          f"{fmt_us(r['lat_p99_us'])} | {fmt_ratio(r.get('ratio_to_floor'))} | "
          f"{fmt(r['lockbusd_cpu_us_per_op'], 1, ' µs') if r['case'] not in PEER_ORDER else '–'} | "
          f"{fmt(r['dbus_daemon_cpu_us_per_op'], 1, ' µs') if r['case'] not in PEER_ORDER else '–'} | "
          f"{fmt_ratio(r['fairness_max_min'])} | {r['reps']} |")
    w("")
    w("× floor: ops/s ÷ (Ping ops/s ÷ 2) at the same client count, per repetition, median (the direct "
      "cases against the direct Ping; the peers against the bus Ping). The one-round-trip cycles "
      "(the -nowait cases, redis-pipelined) against the Ping rate itself, not ÷ 2. CPU/op: CPU time "
      "of the daemon (all threads) during the measured window ÷ operations. fairness: most ÷ fewest "
      "operations of one client.")
    w("")

    if prows:
        w("## Ratios, interleaved")
        w("")
        w("The same client processes run both cases, switching every 100 ms (all clients at once), so that a "
          "busy moment of the machine hits both; each case gets half of the window. Each case has its own "
          "connection (a lockbus case against Redis: one to lockbusd and one to Redis per client). Against a "
          "Ping the ratio is to the Ping rate ÷ 2. Median of the per-repetition ratios.")
        w("")
        w("| case | against | clients | ops/s | its ops/s | ratio | p50 | its p50 | ratio per repetition |")
        w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for p in prows:
            w(f"| {p['case']} | {p['pair']}{' ÷ 2' if p['ratio_is_to_half'] else ''} | {p['clients']} | "
              f"{fmt(p['ops_per_sec'])} | {fmt(p['pair_ops_per_sec'])} | {fmt_ratio(p['ratio'])} | "
              f"{fmt_us(p['lat_p50_us'])} | {fmt_us(p['pair_lat_p50_us'])} | "
              f"{', '.join(f'{x:.2f}' for x in p['ratio_reps'])} |")
        w("")

    one_cpu_markdown(w, meta, rows, groups, orows)
    cluster_markdown(w, meta, rows, groups, prows, cli, handoffs, cluster_log)

    w("## Handoff, contention, scale, start, CLI")
    w("")
    w("| figure | value |")
    w("| --- | --- |")
    for name, h in handoffs.items():
        if h.get("handoff_p50_us") is not None:
            ping = (f"; A's Ping at the same moments: {fmt_us(h['ping_p50_us'])}, "
                    f"handoff ÷ Ping {fmt_ratio(h.get('ratio_to_ping'))}") if h.get("ping_p50_us") else ""
            w(f"| {name}: Unlock by A → grant to waiting B (p50 / p99, {h.get('reps')} × "
              f"{h.get('iterations') or '?'} handoffs) | {fmt_us(h['handoff_p50_us'])} / "
              f"{fmt_us(h['handoff_p99_us'])} (A's Unlock reply: {fmt_us(h['unlock_p50_us'])}{ping}) |")
    for r in contended:
        w(f"| contended: {r['clients']} clients on one resource, waiting | {fmt(r['ops_per_sec'])} cycles/s, "
          f"p50 {fmt_us(r['lat_p50_us'])}, p99 {fmt_us(r['lat_p99_us'])}, "
          f"fairness max/min {fmt_ratio(r['fairness_max_min'])} |")
    if scale:
        n = scale.get("holds")
        w(f"| {n:,} connection holds from {scale.get('connections')} connections: fill | "
          f"{fmt(scale.get('fill_s'), 2, ' s')} ({fmt(scale.get('fill_per_sec'))} grants/s, pipelined) |".replace(",", " ", 1))
        w(f"| daemon RSS empty → full (per hold) | {fmt(scale.get('rss_empty_kib'))} KiB → "
          f"{fmt(scale.get('rss_full_kib'))} KiB ({fmt(scale.get('rss_per_hold_bytes'))} B per hold) |")
        w(f"| Acquire p50 / p99, empty → full | {fmt_us(scale.get('acquire_empty_p50_us'))} / "
          f"{fmt_us(scale.get('acquire_empty_p99_us'))} → {fmt_us(scale.get('acquire_full_p50_us'))} / "
          f"{fmt_us(scale.get('acquire_full_p99_us'))} |")
        if scale.get("ping_empty_p50_us"):
            w(f"| Ping p50 between those calls, empty → full (the machine's speed then) | "
              f"{fmt_us(scale.get('ping_empty_p50_us'))} → {fmt_us(scale.get('ping_full_p50_us'))} |")
        w(f"| Owner p50 / p99, empty → full | {fmt_us(scale.get('owner_empty_p50_us'))} / "
          f"{fmt_us(scale.get('owner_empty_p99_us'))} → {fmt_us(scale.get('owner_full_p50_us'))} / "
          f"{fmt_us(scale.get('owner_full_p99_us'))} |")
        w(f"| ListLocks of every hold | {fmt(scale.get('list_ms'), 0, ' ms')} ({fmt(scale.get('list_rows'))} rows) |")
        w(f"| kill -9, then activation until ListLocks answers | {fmt(scale.get('recovery_ms'), 0, ' ms')} "
          f"({fmt(scale.get('recovered_rows'))} holds back; RSS then {fmt(scale.get('rss_recovered_kib'))} KiB) |")
        w(f"| Acquire p50 after recovery | {fmt_us(scale.get('acquire_recovered_p50_us'))} |")
        w(f"| holders disconnect → every hold released | {fmt(scale.get('release_ms'), 0, ' ms')} |")
        if scale.get("errors"):
            w(f"| scale-holds error | {scale['errors'][0]} |")
    if waiters:
        w(f"| {waiters.get('waiters'):,} waiters on one resource (own bus, raised limits): connect | "
          f"{fmt(waiters.get('connect_s'), 2, ' s')} |".replace(",", " ", 1))
        w(f"| … time to queue them all (WaiterCount reached) | {fmt(waiters.get('queue_s'), 2, ' s')} "
          f"({fmt(waiters.get('queue_per_sec'))}/s) |")
        w(f"| … time to drain (each unlocks when granted) | {fmt(waiters.get('drain_s'), 2, ' s')} "
          f"({fmt(waiters.get('drain_per_sec'))} handoffs/s) |")
        if waiters.get("errors"):
            w(f"| scale-waiters error | {waiters['errors'][0]} |")
    if peers:
        if peers.get("failed"):
            w(f"| distinct client connections served at once on a stock system bus | "
              f"{peers.get('granted')} of {peers.get('connections')}; connection #{peers.get('first_failure_index', 0) + 1} "
              f"failed: {peers.get('first_failure', '')} |")
        else:
            w(f"| distinct client connections served at once on a stock system bus | "
              f"all {peers.get('granted')} of {peers.get('connections')} |")
    if cold:
        w(f"| cold start: first Acquire with lockbusd not running (D-Bus activation), median / max of "
          f"{cold.get('iterations')} | {fmt(cold.get('cold_p50_us', 0) / 1000 if cold.get('cold_p50_us') else None, 1, ' ms')} / "
          f"{fmt(cold.get('cold_max_us', 0) / 1000 if cold.get('cold_max_us') else None, 1, ' ms')} |")
        w(f"| first Acquire of a new connection, lockbusd running (median) | "
          f"{fmt_us(cold.get('first_call_running_p50_us'))} |")
    for tool, c in cli.items():
        if tool in dict(CLI_CLUSTER):
            continue        # in "Cluster mode"
        what = {"lockbusctl": "`lockbusctl lock` + `lockbusctl unlock` (2 processes, through the bus)",
                "busctl": "two `busctl call`s (Lock, Unlock)",
                "lockbusctl-direct": "`lockbusctl lock` + `unlock` through the direct socket"}.get(tool, tool)
        w(f"| {what}, median of {c['runs']} ({c['timer']}) | {c['median_ms']:.1f} ms |")
    w("")

    w("## Targets")
    w("")
    w("| target | measured | holds |")
    w("| --- | --- | --- |")
    for t in targets:
        holds = "–" if t["holds"] is None else ("yes" if t["holds"] else "**no**")
        w(f"| {t['target']} | {t['measured'] or 'not measured'} | {holds} |")
    w("")
    return "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True, help="path without extension")
    args = ap.parse_args()

    with open(args.meta) as f:
        meta = json.load(f)
    try:
        with open("/proc/loadavg") as f:
            meta.setdefault("loadavg_end", " ".join(f.read().split()[:3]))
    except OSError:
        pass
    raw = load(args.raw)
    groups = closed_loop(raw)
    rows = summarize(groups)

    handoff_keys = ["handoff_p50_us", "handoff_p99_us", "handoff_mean_us", "unlock_p50_us", "unlock_p99_us",
                    "ping_p50_us", "ping_p99_us", "iterations"]
    handoffs = {}
    for name in ("handoff", "handoff-direct", "handoff-etcd"):
        recs = scenario(raw, name)
        if recs:
            handoffs[name] = scenario_medians(recs, handoff_keys)
            handoffs[name]["ratio_to_ping"] = median([r["handoff_p50_us"] / r["ping_p50_us"] for r in recs
                                                      if "error" not in r and r.get("ping_p50_us")])
    scale_recs = scenario(raw, "scale-holds")
    scale = scale_recs[-1] if scale_recs else {}
    if scale:
        scale = dict(scale, errors=[scale["error"]] if "error" in scale else [])
    waiter_recs = scenario(raw, "scale-waiters")
    waiters = dict(waiter_recs[-1], errors=[waiter_recs[-1]["error"]] if "error" in waiter_recs[-1] else []) \
        if waiter_recs else {}
    cold_recs = scenario(raw, "cold")
    cold = cold_recs[-1] if cold_recs else {}
    peer_recs = scenario(raw, "peer-limit")
    peers = peer_recs[-1] if peer_recs else {}
    cli = {r["tool"]: r for r in scenario(raw, "cli")}
    contended = [r for r in rows if r["case"] == "contended"]

    prows = paired(raw)
    orows = one_cpu(raw)
    targets = targets_table(rows, groups, prows, raw, handoffs.get("handoff", {}), scale, cold, cli, orows)
    png = write_plot(rows, meta, args.out)
    cluster_log = scenario(raw, "etcd-backend-log")
    md = markdown(meta, rows, groups, prows, handoffs, contended, scale, waiters, cold, cli, peers, targets, png,
                  orows, cluster_log)

    result = {
        "meta": meta,
        "closed_loop": rows,
        "paired": prows,
        "one_cpu": orows,
        "cluster": {"closed_loop": cluster_rows(rows, groups),
                    "cli": {t: cli[t] for t, _ in CLI_CLUSTER if t in cli},
                    "handoff": handoffs.get("handoff-etcd", {}),
                    "daemon_log": cluster_log},
        "handoff": handoffs,
        "scale_holds": scale,
        "scale_waiters": waiters,
        "peer_limit": peers,
        "cold": cold,
        "cli": cli,
        "targets": targets,
        "raw": raw,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
