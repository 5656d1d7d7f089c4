#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The lockbus benchmark, start to finish, as root on Debian 12: installs what
# is missing, builds a release build of its own, starts a private
# system-like dbus-daemon with the real bus policy, lockbusd, Redis,
# PostgreSQL and etcd on loopback/Unix sockets with their data in temporary
# directories, runs every case, stops everything it started, and writes
# bench/results/<date>.json, .md and .png. See bench/README.md.
#
#   bench/run.sh                  full run (~21 min): 4 s per case, 3 repetitions
#   bench/run.sh --quick          quick run (~1-2 min): 1 s, 1 repetition, smaller scale cases
#   bench/run.sh --duration=SEC --reps=N   other times
#
# Other options: --builddir=DIR (default build-bench), --results=DIR
# (default bench/results), --no-peers (lockbus only), --profile (also
# perf record lockbusd during the connection cycle, into <date>-profile.txt),
# --keep (leave the temporary directories for a look), --uid-base=UID (the
# 32 client users' first uid, default 61000, if those are taken).
# After the repetitions, the step "one CPU" runs a few 1-client cases with
# lockbusd, dbus-daemon, redis-server and the clients all pinned to CPU 0.
# With the peers, a second bus and lockbusd with --backend=etcd (on the
# peers' etcd) run the "-etcd" cases, handoff-etcd and etcdctl lock.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench"

quick=false
duration=""
reps=""
builddir="$root/build-bench"
results="$bench/results"
with_peers=true
profile=false
keep=false
uid_base=61000

usage() {
        sed -n '4,23s/^# \{0,1\}//p' "$0"
}

die() {
        echo "run.sh: $*" >&2
        exit 1
}

for arg in "$@"; do
        case "$arg" in
                --quick) quick=true ;;
                --duration=*) duration="${arg#*=}" ;;
                --reps=*) reps="${arg#*=}" ;;
                --builddir=*) builddir="$(realpath -m "${arg#*=}")" ;;
                --results=*) results="$(realpath -m "${arg#*=}")" ;;
                --no-peers) with_peers=false ;;
                --profile) profile=true ;;
                --keep) keep=true ;;
                --uid-base=*) uid_base="${arg#*=}" ;;
                -h|--help) usage; exit 0 ;;
                *) usage >&2; exit 2 ;;
        esac
done

if "$quick"; then
        duration="${duration:-1}"
        reps="${reps:-1}"
        warmup=0.2
        handoff_iterations=300
        handoff_etcd_iterations=50
        cold_iterations=5
        scale_holds=10000
        scale_waiters=1000
        cli_runs=10
        mode=quick
else
        duration="${duration:-4}"
        reps="${reps:-3}"
        warmup=0.5
        handoff_iterations=2000
        handoff_etcd_iterations=200
        cold_iterations=20
        scale_holds=100000
        scale_waiters=10000
        cli_runs=40
        mode=full
fi
[[ "$duration" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--duration= needs seconds, got '$duration'"
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps= needs a positive integer, got '$reps'"
[[ "$uid_base" =~ ^[1-9][0-9]*$ ]] && ((uid_base >= 1000 && uid_base < 4294967000)) ||
        die "--uid-base= needs a uid of 1000 or more, got '$uid_base'"
((EUID == 0)) || die "run me as root: clients run as other uids, PostgreSQL as its own user, and missing packages are installed"

# The cases of the closed loop, in the order of one repetition: for each
# client count, the floor right before the lockbus cycles, then the peers.
client_counts=(1 8 32)
# The "-nowait" cycles release with lockbus_unlock_nowait() (one round trip
# per cycle); redis-pipelined is their counterpart (the DEL goes out with
# the next SET).
lockbus_cases=(ping conn-excl conn-excl-nowait pers-excl pers-excl-nowait conn-shared pers-shared
               conn-shared-same pers-shared-same contended
               ping-direct conn-excl-direct conn-excl-direct-nowait pers-excl-direct pers-excl-direct-nowait)
peer_cases=(flock redis redis-pipelined postgres etcd)
# Cluster mode: the same client code on a second bus whose lockbusd decides
# every lock in etcd (the peers' etcd), at these client counts (slow: each
# cycle is several etcd writes, each fsynced by etcd).
etcd_backend_cases=(ping-etcd conn-excl-etcd conn-excl-etcd-nowait pers-excl-etcd)
etcd_backend_client_counts=(1 8)

stamp="$(date -u +%Y-%m-%d)"
"$quick" && stamp="$stamp-quick"
started_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
t_begin=$SECONDS

step() {
        printf '\n== %s (%ds)\n' "$*" "$((SECONDS - t_begin))"
}

# --- Packages ----------------------------------------------------------------

step "packages"
"$root/scripts/install-deps.sh"

# What each is for: the peers (redis-server, postgresql, etcd-server; etcdctl
# from etcd-client checks etcd is up), their client libraries for the
# harness, gnuplot-nox for the plot, hyperfine for the CLI case.
bench_packages=(redis-server redis-tools postgresql etcd-server etcd-client gnuplot-nox
                libhiredis-dev libpq-dev libcurl4-openssl-dev hyperfine python3 procps)
missing=()
for p in "${bench_packages[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
        [[ "$status" == ii* ]] || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt_log="$(mktemp)"
        if ! { apt-get -q -y -o Dpkg::Use-Pty=0 update &&
               apt-get -q -y -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false install "${missing[@]}"; } \
               >"$apt_log" 2>&1; then
                cat "$apt_log" >&2
                rm -f "$apt_log"
                die "apt-get install ${missing[*]} failed"
        fi
        rm -f "$apt_log"
fi
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[[ -x "$pg_bin/initdb" ]] || die "PostgreSQL's initdb not found under /usr/lib/postgresql"

# --- Build ---------------------------------------------------------------------

step "build (release, $builddir)"
if [[ ! -f "$builddir/build.ninja" ]]; then
        meson setup "$builddir" "$root" --buildtype=release -Dtests=false >"/tmp/lockbus-bench-setup.log" 2>&1 ||
                { cat /tmp/lockbus-bench-setup.log >&2; die "meson setup failed"; }
else
        meson configure "$builddir" -Dbuildtype=release -Dtests=false >/dev/null
fi
meson compile -C "$builddir" >/dev/null || { meson compile -C "$builddir"; die "build failed"; }
harness_build="$builddir/harness"
if [[ ! -f "$harness_build/build.ninja" ]]; then
        PKG_CONFIG_PATH="$builddir/meson-uninstalled" \
                meson setup "$harness_build" "$bench" --buildtype=release \
                -Dlockbus_rpath="$builddir/client" >"/tmp/lockbus-bench-setup.log" 2>&1 ||
                { cat /tmp/lockbus-bench-setup.log >&2; die "meson setup of the harness failed"; }
fi
PKG_CONFIG_PATH="$builddir/meson-uninstalled" meson compile -C "$harness_build" >/dev/null ||
        { meson compile -C "$harness_build"; die "build of the harness failed"; }
lockbusd="$builddir/service/lockbusd"
lockbusctl="$builddir/client/lockbusctl"
harness="$harness_build/lockbus-bench"
[[ -x "$lockbusd" && -x "$lockbusctl" && -x "$harness" ]] || die "build products missing"

# --- Client users --------------------------------------------------------------

# Each lockbus client process is a user of its own, as callers of a system
# service are (and persistent holds belong to a uid, so shared persistent
# holds of one resource need several). dbus-daemon refuses uids without a
# passwd entry, so: system users lockbus-bench-00 … -31 (uids 61000 …
# 61031, or from --uid-base=), made here and removed at the end.
n_users=32
bench_user_comment="lockbus benchmark client (bench/run.sh)"

remove_bench_users() {
        local name comment
        while IFS=: read -r name _ _ _ comment _; do
                [[ "$name" == lockbus-bench-* && "$comment" == "$bench_user_comment" ]] || continue
                userdel "$name" >/dev/null 2>&1 || true
        done < <(getent passwd)
}

make_bench_users() {
        local i uid name owner
        for ((i = 0; i < n_users; i++)); do
                uid=$((uid_base + i))
                name="$(printf 'lockbus-bench-%02d' "$i")"
                owner="$(getent passwd "$uid" | cut -d: -f1 || true)"
                [[ -z "$owner" || "$owner" == "$name" ]] || die "uid $uid is taken by '$owner'; the benchmark needs uids $uid_base-$((uid_base + n_users - 1))"
                [[ -n "$owner" ]] && continue
                # (-K: uids this high are fine for system users here.)
                useradd --system --uid "$uid" --user-group --no-create-home --home-dir /nonexistent \
                        --shell /usr/sbin/nologin --comment "$bench_user_comment" \
                        -K SYS_UID_MAX=$((uid_base + n_users)) -K SYS_GID_MAX=$((uid_base + n_users)) "$name" ||
                        die "useradd $name failed"
        done
}

# --- Temporary directories and cleanup -----------------------------------------

# Lock directories and the peers' data on the real disk; lockbusd's runtime
# directory (connection holds) and the logs on tmpfs, as /run would be.
work="$(mktemp -d /var/tmp/lockbus-bench.XXXXXX)"
rt="$(mktemp -d /dev/shm/lockbus-bench.XXXXXX)"
chmod 0755 "$work" "$rt"
raw="$work/raw.jsonl"
: >"$raw"

pids=()                 # background processes we started
bus_addresses=()        # the private buses (lockbusd there is stopped by pid)
pg_data=""

cleanup() {
        local rc=$? addr pid
        set +e
        for addr in "${bus_addresses[@]}"; do
                pid="$(DBUS_SYSTEM_BUS_ADDRESS="$addr" timeout 5 "$harness" daemon-pid 2>/dev/null)"
                [[ "$pid" =~ ^[0-9]+$ ]] && kill "$pid" 2>/dev/null
        done
        if [[ -n "$pg_data" && -f "$pg_data/postmaster.pid" ]]; then
                runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1
        fi
        for pid in "${pids[@]}"; do
                kill "$pid" 2>/dev/null
        done
        for pid in "${pids[@]}"; do
                wait "$pid" 2>/dev/null
        done
        remove_bench_users
        if "$keep"; then
                echo "kept: $work $rt"
        else
                rm -rf "$work" "$rt"
        fi
        exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
make_bench_users

# --- The buses and lockbusd ------------------------------------------------------

# start_bus NAME [LIMITS]: a private, system-like dbus-daemon (TESTING.md §1)
# whose policy includes the real dbus/io.lockbus1.conf and whose activation
# file starts the built lockbusd; sets bus_address. LIMITS (optional) are
# <limit> elements (the waiters case needs more connections than a stock
# system bus allows).
start_bus() {
        local name="$1" limits="${2:-}"
        local dir="$work/$name"

        mkdir -p "$dir/system.d" "$dir/services" "$work/$name-lock" "$rt/$name-run"
        chmod 0755 "$dir" "$dir/system.d" "$dir/services"
        cp "$root/dbus/io.lockbus1.conf" "$dir/system.d/"
        cat >"$dir/services/io.lockbus1.service" <<EOF
[D-BUS Service]
Name=io.lockbus1
Exec=$lockbusd --system --idle-timeout=0 --lock-directory=$work/$name-lock --runtime-directory=$rt/$name-run
EOF
        cat >"$dir/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$dir/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <servicedir>$dir/services</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
$limits
  <includedir>$dir/system.d</includedir>
</busconfig>
EOF
        # dbus-daemon writes its address on fd 3 once it listens; activated
        # lockbusd instances log to its stderr.
        mkfifo "$dir/address"
        (ulimit -n "$(ulimit -Hn)" && exec dbus-daemon --config-file="$dir/bus.conf" --nofork --print-address=3 \
                3>"$dir/address" </dev/null >>"$rt/$name-bus.log" 2>&1) &
        pids+=($!)
        bus_address=""
        read -r -t 30 bus_address <>"$dir/address" || true
        [[ -n "$bus_address" ]] || { cat "$rt/$name-bus.log" >&2; die "dbus-daemon ($name) did not start"; }
        bus_addresses+=("$bus_address")
        bus_pid=$!
}

# start_lockbusd NAME [ARGS...]: lockbusd directly (not activated), never
# exiting on idle, with ARGS added; sets lockbusd_pid.
start_lockbusd() {
        local name="$1"
        shift

        "$lockbusd" --system --idle-timeout=0 --lock-directory="$work/$name-lock" \
                --runtime-directory="$rt/$name-run" "$@" </dev/null >>"$rt/$name-lockbusd.log" 2>&1 &
        lockbusd_pid=$!
        pids+=("$lockbusd_pid")
        "$harness" wait-name --timeout=10 || { cat "$rt/$name-lockbusd.log" >&2; die "lockbusd ($name) did not start"; }
}

step "private bus and lockbusd"
start_bus main
main_bus="$bus_address"
main_bus_pid="$bus_pid"
export DBUS_SYSTEM_BUS_ADDRESS="$main_bus"
start_lockbusd main
echo "bus $main_bus (dbus-daemon pid $main_bus_pid), lockbusd pid $lockbusd_pid"
echo "lock directory $work/main-lock (disk), runtime directory $rt/main-run (tmpfs)"
direct_socket="$rt/main-run/.direct.sock"
if [[ -S "$direct_socket" ]]; then
        echo "direct socket $direct_socket"
else
        echo "lockbusd has no direct socket ($direct_socket): the -direct cases are skipped"
        direct_socket=""
fi

# --- The peers --------------------------------------------------------------------

redis_socket=""
redis_pid=""
pg_conninfo=""
etcd_url=""
etcd_pid=""

free_port() {
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {    # wait_for SECONDS CMD...: until CMD succeeds
        local deadline=$((SECONDS + $1))
        shift
        until "$@" >/dev/null 2>&1; do
                ((SECONDS < deadline)) || return 1
                sleep 0.05
        done
}

if "$with_peers"; then
        step "peers"
        # Redis: no TCP, no persistence (like a connection hold: gone on restart).
        mkdir -p "$work/redis"
        redis-server --port 0 --unixsocket "$work/redis/redis.sock" --unixsocketperm 700 \
                --save '' --appendonly no --dir "$work/redis" --daemonize no \
                --logfile "$work/redis/redis.log" </dev/null >/dev/null 2>&1 &
        redis_pid=$!
        pids+=("$redis_pid")
        wait_for 10 redis-cli -s "$work/redis/redis.sock" ping || die "redis-server did not start"
        redis_socket="$work/redis/redis.sock"
        echo "redis $(redis-server --version | grep -o 'v=[^ ]*') at $redis_socket"

        # PostgreSQL: initdb refuses root, so as the postgres user; trust
        # authentication on a Unix socket in its own directory, no TCP.
        install -d -o postgres -g postgres -m 0755 "$work/pg"
        pg_data="$work/pg/data"
        runuser -u postgres -- "$pg_bin/initdb" -D "$pg_data" -U bench --auth=trust -E UTF8 \
                >"$work/pg/initdb.log" 2>&1 || { cat "$work/pg/initdb.log" >&2; die "initdb failed"; }
        runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -l "$work/pg/postgres.log" -w -t 60 \
                -o "-k $work/pg -c listen_addresses= -p 5432" start >/dev/null ||
                { cat "$work/pg/postgres.log" >&2; die "PostgreSQL did not start"; }
        pg_conninfo="host=$work/pg port=5432 dbname=postgres user=bench"
        psql "$pg_conninfo" -Atc 'SELECT 1' >/dev/null || die "cannot connect to PostgreSQL"
        echo "postgresql $("$pg_bin/postgres" --version | awk '{ print $3 }') at $work/pg"

        # etcd: one member on 127.0.0.1, random free ports.
        etcd_client_port="$(free_port)"
        etcd_peer_port="$(free_port)"
        etcd_url="http://127.0.0.1:$etcd_client_port"
        etcd --name bench --data-dir "$work/etcd" \
                --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
                --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
                --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
                --initial-cluster "bench=http://127.0.0.1:$etcd_peer_port" \
                --logger=zap --log-level=error </dev/null >"$work/etcd.log" 2>&1 &
        etcd_pid=$!
        pids+=("$etcd_pid")
        wait_for 30 env ETCDCTL_API=3 etcdctl --endpoints="$etcd_url" endpoint health ||
                { cat "$work/etcd.log" >&2; die "etcd did not start"; }
        echo "etcd $(etcd --version | sed -n 's/^etcd Version: //p') at $etcd_url"
fi

# --- Cluster mode: a second bus, its lockbusd deciding in etcd ---------------

# A second private bus (its own lock and runtime directories) whose
# lockbusd runs with --backend=etcd on the peers' etcd, under its own key
# prefix. No activation file there: a daemon that dies stays dead, and the
# cases after it fail, rather than a directory-backend daemon taking over.
# JOURNAL_STREAM makes its log lines carry their level ("<4>" a warning),
# so that check_cluster_log can pick its warnings and errors out of the
# grants and releases. Its clients never take a direct socket (the cases
# set LOCKBUS_DIRECT_SOCKET empty and check they went through the bus).
cluster_bus=""
cluster_bus_pid=""
cluster_lockbusd_pid=""
cluster_problems="$work/cluster-problems.log"
if [[ -n "$etcd_url" ]]; then
        step "cluster mode: second bus, lockbusd --backend=etcd"
        start_bus cluster
        cluster_bus="$bus_address"
        cluster_bus_pid="$bus_pid"
        rm -f "$work/cluster/services/io.lockbus1.service"
        JOURNAL_STREAM=bench DBUS_SYSTEM_BUS_ADDRESS="$cluster_bus" start_lockbusd cluster \
                --backend=etcd --etcd-endpoints="$etcd_url" --etcd-prefix=/lockbus-bench
        cluster_lockbusd_pid="$lockbusd_pid"
        echo "bus $cluster_bus (dbus-daemon pid $cluster_bus_pid), lockbusd --backend=etcd pid $cluster_lockbusd_pid," \
                "etcd $etcd_url, prefix /lockbus-bench"
        sed 's/^<[0-9]>//; s/^/  lockbusd: /' "$rt/cluster-lockbusd.log"
        : >"$rt/cluster-lockbusd.log"
else
        step "cluster mode"
        echo "skipped: no etcd peer (--no-peers); the -etcd cases, handoff-etcd and etcdctl lock are not run"
fi

# check_cluster_log WHAT: the etcd-backend lockbusd's warnings and errors
# (level 0-5) and refused locks (none is expected: each client locks its
# own resource) since the last call, with the two lines before each, go to
# $cluster_problems, the terminal and $raw ("etcd-backend-log"), labelled
# WHAT; a daemon that is gone is said so; then its log (every grant and
# release) is emptied, keeping tmpfs small.
check_cluster_log() {
        local what="$1" lines
        [[ -n "$cluster_bus" ]] || return 0
        lines="$(grep -a -B2 -E '^<[0-5]>|Refused lock' "$rt/cluster-lockbusd.log" || true)"
        if ! kill -0 "$cluster_lockbusd_pid" 2>/dev/null; then
                lines+="${lines:+$'\n'}(lockbusd --backend=etcd, pid $cluster_lockbusd_pid, has exited; its last lines:)"
                lines+=$'\n'"$(tail -n 20 "$rt/cluster-lockbusd.log")"
        fi
        if [[ -n "$lines" ]]; then
                { echo "== $what"; echo "$lines"; } >>"$cluster_problems"
                # For the report (the first 50 lines of the step).
                python3 -c 'import json, sys; l = sys.stdin.read().splitlines(); print(json.dumps({"case": "etcd-backend-log", "during": sys.argv[1], "count": len(l), "lines": l[:50]}))' \
                        "$what" <<<"$lines" >>"$raw"
                echo "  lockbusd --backend=etcd during $what:" >&2
                sed 's/^/    /' <<<"$lines" | head -n 20 >&2
        fi
        : >"$rt/cluster-lockbusd.log"
        : >"$rt/cluster-bus.log"
}

mkdir -p "$work/flock"

# The step "one CPU" pins lockbusd, dbus-daemon, redis-server and the
# clients to CPU 0 (see there); it needs taskset and a second CPU.
if ! command -v taskset >/dev/null; then
        one_cpu="skipped: taskset not found"
elif (($(nproc) < 2)); then
        one_cpu="skipped: one CPU only"
else
        one_cpu="lockbusd, the main dbus-daemon, redis-server (all threads) and the harness with its clients pinned to CPU 0 (taskset), 1 client, lines tagged one-cpu"
fi

# --- Meta data ----------------------------------------------------------------------

git_commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git_dirty="$(git -C "$root" status --porcelain -- service client common dbus 2>/dev/null | head -c1)"
cat >"$work/meta.json" <<EOF
{
  "date": "$started_at",
  "mode": "$mode",
  "duration_s": $duration,
  "warmup_s": $warmup,
  "reps": $reps,
  "client_counts": [$(IFS=,; echo "${client_counts[*]}")],
  "git_commit": "$git_commit",
  "git_dirty": $([[ -n "$git_dirty" ]] && echo true || echo false),
  "kernel": "$(uname -r)",
  "cpu": "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)",
  "nproc": $(nproc),
  "mem_gib": $(awk '/^MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo),
  "pinned": false,
  "one_cpu": "$one_cpu",
  "loadavg_start": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "clients_as": "users lockbus-bench-NN (uids $uid_base + i), one per client process; peers' clients as root",
  "direct_socket": $([[ -n "$direct_socket" ]] && echo true || echo false),
  "etcd_backend": "$([[ -n "$cluster_bus" ]] && echo "a second private bus (same policy and limits) with lockbusd --backend=etcd --etcd-endpoints=$etcd_url --etcd-prefix=/lockbus-bench --idle-timeout=0 (default lease TTL), the peers' etcd; its clients through that bus (no direct socket)" || echo "skipped: no etcd peer")",
  "etcd_backend_client_counts": [$(IFS=,; echo "${etcd_backend_client_counts[*]}")],
  "bus": "dbus-daemon $(dbus-daemon --version | sed -n '1s/.* //p') (private, system-like, stock limits)",
  "dbus_broker": "skipped: dbus-broker needs systemd (journald) to run, which these machines lack as PID 1 (TESTING.md section 6)",
  "lock_directory_fs": "$(stat -f -c %T "$work")",
  "runtime_directory_fs": "$(stat -f -c %T "$rt")",
  "peers": {
    "redis": "$(redis-server --version 2>/dev/null | grep -o 'v=[^ ]*' | cut -c3- || true)",
    "postgresql": "$("$pg_bin/postgres" --version 2>/dev/null | awk '{ print $3 }' || true)",
    "etcd": "$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p' || true)"
  }
}
EOF

# --- The closed loop ------------------------------------------------------------------

# run_case CASE CLIENTS REP [ARGS...]: one line into $raw (a line with
# "error" if the harness could not print one). The harness runs under
# ${harness_prefix[@]} (taskset in the step "one CPU"), and its lines get
# "tag": $run_tag if that is set.
harness_prefix=()
run_tag=""
run_case() {
        local bench_case="$1" clients="$2" rep="$3" watch=() line
        shift 3
        local owner_pid etcd_backend=false
        [[ "$bench_case" == *-etcd || "$bench_case" == *-etcd-* ]] && etcd_backend=true
        if "$etcd_backend"; then
                # The lockbusd that decides in etcd, its bus, and etcd itself.
                watch+=("--watch=lockbusd:$cluster_lockbusd_pid" "--watch=dbus_daemon:$cluster_bus_pid")
        else
                owner_pid="$("$harness" daemon-pid 2>/dev/null || true)"
                [[ "$owner_pid" =~ ^[0-9]+$ ]] && watch+=("--watch=lockbusd:$owner_pid")
                watch+=("--watch=dbus_daemon:$main_bus_pid")
        fi
        [[ -n "$etcd_pid" && ( "$bench_case" == etcd || "$etcd_backend" == true ) ]] && watch+=("--watch=etcd:$etcd_pid")
        if line="$("${harness_prefix[@]}" "$harness" run "$bench_case" --clients="$clients" --duration="$duration" \
                        --warmup="$warmup" --rep="$rep" ${run_tag:+--tag="$run_tag"} "${watch[@]}" \
                        --flock-dir="$work/flock" --uid-base="$uid_base" \
                        ${direct_socket:+--direct-socket="$direct_socket"} \
                        ${redis_socket:+--redis-socket="$redis_socket"} \
                        ${pg_conninfo:+--postgres="$pg_conninfo"} \
                        ${etcd_url:+--etcd-url="$etcd_url"} ${cluster_bus:+--etcd-bus="$cluster_bus"} \
                        "$@")" && [[ -n "$line" ]]; then
                echo "$line" >>"$raw"
        else
                [[ -n "$line" ]] && echo "$line" >>"$raw" ||
                        printf '{"case": "%s", "clients": %s, "rep": %s, "error": "the harness failed"%s}\n' \
                                "$bench_case" "$clients" "$rep" "${run_tag:+, \"tag\": \"$run_tag\"}" >>"$raw"
        fi
        # The daemons log every grant and release; keep tmpfs small.
        : >"$rt/main-lockbusd.log"
        : >"$rt/main-bus.log"
        "$etcd_backend" && check_cluster_log "$bench_case, $clients client(s), repetition $rep"
        return 0
}

run_scenario() {        # run_scenario COMMAND ARGS...: one line into $raw, echoed
        local line
        line="$("$harness" "$@" --uid-base="$uid_base" --uids="$n_users")" || true
        if [[ -n "$line" ]]; then
                echo "$line" >>"$raw"
                echo "  $line"
        else
                printf '{"case": "%s", "error": "the harness failed"}\n' "$1" >>"$raw"
                echo "  $1 failed" >&2
        fi
        # Keep the daemons' logs of the scenarios (for a look with --keep).
        cat "$rt/main-lockbusd.log" "$rt/main-bus.log" >>"$work/scenarios.log" 2>/dev/null || true
        : >"$rt/main-lockbusd.log"
        : >"$rt/main-bus.log"
}

cases=("${lockbus_cases[@]}")
"$with_peers" && cases+=("${peer_cases[@]}") || cases+=(flock)
for ((rep = 1; rep <= reps; rep++)); do
        for clients in "${client_counts[@]}"; do
                step "repetition $rep/$reps, $clients client(s)"
                for bench_case in "${cases[@]}"; do
                        # One resource shared by one client is the own-resource case.
                        [[ "$clients" == 1 && "$bench_case" =~ -same$|^contended$ ]] && continue
                        [[ -z "$direct_socket" && "$bench_case" =~ -direct(-nowait)?$ ]] && continue
                        run_case "$bench_case" "$clients" "$rep"
                done
                # Cluster mode, right after the etcd peer at the same count.
                if [[ -n "$cluster_bus" && " ${etcd_backend_client_counts[*]} " == *" $clients "* ]]; then
                        for bench_case in "${etcd_backend_cases[@]}"; do
                                run_case "$bench_case" "$clients" "$rep"
                        done
                fi
        done
        # The ratios of the targets, measured interleaved: both cases run by
        # the same clients, switching every 100 ms, so that a busy moment of
        # the machine hits both. A lockbus case and a peer's pair as well
        # (each client holds a connection to both).
        step "repetition $rep/$reps: paired cases (ratios)"
        run_case conn-excl 1 "$rep" --pair=ping
        run_case conn-excl 8 "$rep" --pair=ping
        run_case pers-excl 8 "$rep" --pair=conn-excl
        run_case pers-excl-nowait 8 "$rep" --pair=conn-excl-nowait
        if [[ -n "$direct_socket" ]]; then
                run_case conn-excl-direct 1 "$rep" --pair=ping-direct
                run_case conn-excl-direct 8 "$rep" --pair=ping-direct
                if [[ -n "$redis_socket" ]]; then
                        for clients in 1 8; do
                                run_case conn-excl-direct "$clients" "$rep" --pair=redis
                                run_case conn-excl-direct-nowait "$clients" "$rep" --pair=redis
                        done
                fi
        fi
        # Cluster mode against raw etcd (etcd's fsync times wander a lot).
        if [[ -n "$cluster_bus" ]]; then
                run_case conn-excl-etcd 1 "$rep" --pair=etcd
                run_case conn-excl-etcd 8 "$rep" --pair=etcd
        fi
        step "repetition $rep/$reps: handoff"
        run_scenario handoff --iterations="$handoff_iterations"
        [[ -n "$direct_socket" ]] && run_scenario handoff --iterations="$handoff_iterations" --direct-socket="$direct_socket"
        if [[ -n "$cluster_bus" ]]; then
                run_scenario handoff --iterations="$handoff_etcd_iterations" --etcd-bus="$cluster_bus"
                check_cluster_log "handoff-etcd, repetition $rep"
        fi
done

# --- All on one CPU ---------------------------------------------------------------------

# At 1 client the latency depends on where the scheduler puts the client and
# the server: on a VM a wakeup on the other vCPU costs tens of µs, one on the
# same CPU a few, and a run lands on one or the other by chance (Redis often
# on one CPU, lockbus less often). With everything on CPU 0 there is no
# cross-CPU wakeup, and ops/s is the inverse of the whole CPU time of one
# operation (client + server + bus): what an operation costs. PostgreSQL is
# left out (it forks a backend per connection), as are the disk-bound
# persistent cycles. The lines are tagged one-cpu: report.py keeps them out
# of every other table and target.
step "one CPU: lockbusd, dbus-daemon, redis-server and the clients on CPU 0, 1 client"
if [[ "$one_cpu" == skipped:* ]]; then
        echo "$one_cpu; the step is skipped"
else
        one_cpu_all="0-$(($(nproc) - 1))"
        one_cpu_pids=()
        pid="$("$harness" daemon-pid 2>/dev/null || true)"
        [[ "$pid" =~ ^[0-9]+$ ]] && one_cpu_pids+=("$pid")
        one_cpu_pids+=("$main_bus_pid")
        [[ -n "$redis_pid" ]] && one_cpu_pids+=("$redis_pid")
        for pid in "${one_cpu_pids[@]}"; do
                taskset -a -pc 0 "$pid" >/dev/null || die "taskset -a -pc 0 $pid failed"
        done
        echo "pinned to CPU 0: lockbusd, dbus-daemon${redis_pid:+, redis-server} (pids ${one_cpu_pids[*]}) and the harness"
        one_cpu_cases=(ping conn-excl)
        [[ -n "$direct_socket" ]] && one_cpu_cases+=(ping-direct conn-excl-direct conn-excl-direct-nowait)
        [[ -n "$redis_socket" ]] && one_cpu_cases+=(redis redis-pipelined)
        harness_prefix=(taskset -c 0)
        run_tag=one-cpu
        for ((rep = 1; rep <= reps; rep++)); do
                for bench_case in "${one_cpu_cases[@]}"; do
                        run_case "$bench_case" 1 "$rep"
                done
        done
        harness_prefix=()
        run_tag=""
        for pid in "${one_cpu_pids[@]}"; do
                taskset -a -pc "$one_cpu_all" "$pid" >/dev/null || die "taskset -a -pc $one_cpu_all $pid failed"
        done
        echo "affinity restored to CPUs $one_cpu_all"
fi

# --- CLI: lockbusctl lock + unlock vs two busctl calls ----------------------------------

step "CLI"
busctl_pair="busctl call io.lockbus1 /io/lockbus1 io.lockbus1.Manager Lock s bench/cli >/dev/null && busctl call io.lockbus1 /io/lockbus1 io.lockbus1.Manager Unlock s bench/cli"
lockbusctl_pair="LOCKBUS_DIRECT_SOCKET= $lockbusctl lock bench/cli >/dev/null && LOCKBUS_DIRECT_SOCKET= $lockbusctl unlock bench/cli"
cli_commands=(-n lockbusctl "$lockbusctl_pair" -n busctl "$busctl_pair")
if [[ -n "$direct_socket" ]]; then
        direct_pair="LOCKBUS_DIRECT_SOCKET=$direct_socket $lockbusctl lock bench/cli >/dev/null && LOCKBUS_DIRECT_SOCKET=$direct_socket $lockbusctl unlock bench/cli"
        cli_commands+=(-n lockbusctl-direct "$direct_pair")
fi
# Cluster mode, one process each: etcdctl lock (session lease, lock, the
# command, unlock) vs lockbusctl run on the etcd backend's bus vs on the
# directory backend's; both lockbusctl through their bus (no direct socket).
if [[ -n "$cluster_bus" ]]; then
        cli_commands+=(-n etcdctl-lock "ETCDCTL_API=3 etcdctl --endpoints=$etcd_url lock bench/cli true"
                       -n lockbusctl-run-etcd "DBUS_SYSTEM_BUS_ADDRESS=$cluster_bus LOCKBUS_DIRECT_SOCKET= $lockbusctl run bench/cli -- true"
                       -n lockbusctl-run "LOCKBUS_DIRECT_SOCKET= $lockbusctl run bench/cli -- true")
fi
if command -v hyperfine >/dev/null; then
        hyperfine --style=basic --warmup=3 --runs="$cli_runs" --export-json="$work/cli.json" \
                "${cli_commands[@]}" >"$work/hyperfine.log" 2>&1 ||
                { cat "$work/hyperfine.log" >&2; die "hyperfine failed"; }
        python3 - "$work/cli.json" >>"$raw" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(json.dumps({"case": "cli", "tool": r["command"], "runs": len(r["times"]),
                      "median_ms": r["median"] * 1e3, "mean_ms": r["mean"] * 1e3,
                      "stddev_ms": r["stddev"] * 1e3, "timer": "hyperfine"}))
EOF
else
        # Our own loop: the same pairs through the same shell.
        for ((k = 0; k < ${#cli_commands[@]}; k += 3)); do
                tool="${cli_commands[k + 1]}"
                cmd="${cli_commands[k + 2]}"
                times=()
                for ((i = 0; i < cli_runs + 3; i++)); do
                        t0="$(date +%s%N)"
                        sh -c "$cmd"
                        t1="$(date +%s%N)"
                        ((i >= 3)) && times+=("$((t1 - t0))")
                done
                python3 -c 'import json, statistics, sys; t = [int(x) / 1e6 for x in sys.argv[2:]]; print(json.dumps({"case": "cli", "tool": sys.argv[1], "runs": len(t), "median_ms": statistics.median(t), "mean_ms": statistics.mean(t), "stddev_ms": statistics.pstdev(t), "timer": "shell loop (no hyperfine)"}))' \
                        "$tool" "${times[@]}" >>"$raw"
        done
fi
grep '"case": "cli"' "$raw" | sed 's/^/  /'
check_cluster_log "CLI"

# --- How many clients at once -------------------------------------------------------------

step "distinct clients lockbusd serves at once (stock bus limits)"
run_scenario peer-limit --count=600

# --- Cold start (activation) ----------------------------------------------------------------

step "cold start through D-Bus activation"
run_scenario cold --iterations="$cold_iterations"

# --- Profile (optional) ------------------------------------------------------------------------

if "$profile" && command -v perf >/dev/null; then
        step "profile: perf record of lockbusd, conn-excl with 8 clients"
        pid="$("$harness" daemon-pid)"
        perf record -F 4999 -g -p "$pid" -o "$work/perf.data" -- sleep "$(python3 -c "print($warmup + $duration + 0.5)")" \
                >/dev/null 2>&1 &
        perf_pid=$!
        run_case conn-excl 8 0
        wait "$perf_pid" || true
        mkdir -p "$results"
        {
                echo "# perf record -F 4999 -g of lockbusd during conn-excl, 8 clients ($(date -u +%FT%TZ))"
                perf report -i "$work/perf.data" --stdio --no-children -g none --sort=dso 2>/dev/null
                perf report -i "$work/perf.data" --stdio --no-children -g none --sort=dso,symbol \
                        --percent-limit=0.3 2>/dev/null
        } >"$results/$stamp-profile.txt" || true
        echo "  $results/$stamp-profile.txt"
        # The profiled run is not a result.
        sed -i '/"rep": 0,/d' "$raw"
fi

# --- Scale ---------------------------------------------------------------------------------

step "scale: $scale_holds held locks"
run_scenario scale-holds --count="$scale_holds" --connections=4

# Many waiters need many connections: more than a stock system bus allows
# (2048 in all, 256 per uid, 512 match rules on lockbusd's connection), so
# this case gets a bus of its own with the session bus's limits.
step "scale: $scale_waiters waiters on one resource (bus with raised limits)"
start_bus waiters '  <limit name="max_completed_connections">100000</limit>
  <limit name="max_incomplete_connections">10000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>'
DBUS_SYSTEM_BUS_ADDRESS="$bus_address" start_lockbusd waiters
DBUS_SYSTEM_BUS_ADDRESS="$bus_address" run_scenario scale-waiters --count="$scale_waiters"

# --- Report ---------------------------------------------------------------------------------

step "report"
mkdir -p "$results"
python3 "$bench/report.py" --meta="$work/meta.json" --raw="$raw" --out="$results/$stamp"
echo
echo "results: $results/$stamp.json $results/$stamp.md $results/$stamp.png ($((SECONDS - t_begin)) s)"
