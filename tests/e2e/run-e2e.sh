#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# End-to-end test of lockbus in a real, booted systemd: a Debian bookworm
# root booted with systemd-nspawn, lockbus installed in it with
# `meson install --destdir` from a build configured with --prefix=/usr, then
# checked from the outside with nsenter. The same checks run twice: with
# dbus-daemon and with dbus-broker as the system bus. TAP on stdout.
#
#   run-e2e.sh SOURCE_ROOT E2E_BUILD_DIR
#
# SOURCE_ROOT is the project's source tree; E2E_BUILD_DIR is where the
# --prefix=/usr build lives (made on first use, kept for the next run).
#
# The root file system is made once with debootstrap (~45 s) and cached in
# $LOCKBUS_E2E_CACHE (default /var/cache/lockbus-e2e) under a name that
# hashes the package list; every run boots a fresh copy of it and removes
# the copy at the end. The mirror is the URIs: line of
# /etc/apt/sources.list.d/debian.sources ($LOCKBUS_E2E_MIRROR overrides it).
#
# Skipped as a whole ("1..0 # SKIP reason") when not root, when
# LOCKBUS_SKIP_E2E=1, or when the tools or the root cannot be had (offline,
# no mirror). Never runs the host's /lib/systemd/systemd: systemd runs only
# as PID 1 of the container.
set -uo pipefail

source_root="${1:?usage: run-e2e.sh SOURCE_ROOT E2E_BUILD_DIR}"
e2e_build="${2:?usage: run-e2e.sh SOURCE_ROOT E2E_BUILD_DIR}"
source_root="$(cd "$source_root" && pwd)"
here="$source_root/tests/e2e"

cache="${LOCKBUS_E2E_CACHE:-/var/cache/lockbus-e2e}"
suite=bookworm
# What the container needs: systemd as PID 1, both bus brokers, polkitd
# (with libpam-systemd for logind), python3-dbus for the clients that keep
# a connection or an fd open, libglib2.0-0 for lockbusd; setpriv and
# useradd come with minbase.
packages=systemd,systemd-sysv,dbus,dbus-broker,libpam-systemd,polkitd,gpgv,libglib2.0-0,libcurl4,libjson-glib-1.0-0,python3,python3-dbus

# TAP goes to fd 3; everything else (tool output) to stderr.
exec 3>&1 1>&2

n_tests=0
n_failed=0
current_log=/dev/null

tap() { echo "$*" >&3; }
note() { local l; while IFS= read -r l; do tap "# $l"; done <<<"$*"; }
skip_all() {
        tap "1..0 # SKIP $*"
        exit 0
}

# ---------------------------------------------------------------- host

[[ "${LOCKBUS_SKIP_E2E:-0}" == 1 ]] && skip_all "LOCKBUS_SKIP_E2E=1"
((EUID == 0)) || skip_all "needs root (debootstrap, systemd-nspawn)"
[[ -d /run/systemd/system ]] && note "the host runs systemd; the container is still booted with --register=no"

apt_install() {
        local log
        log="$(mktemp)"
        export DEBIAN_FRONTEND=noninteractive
        local opts=(-q -y -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false)
        if apt-get "${opts[@]}" install "$@" >"$log" 2>&1 ||
           { apt-get "${opts[@]}" update >>"$log" 2>&1 && apt-get "${opts[@]}" install "$@" >>"$log" 2>&1; }; then
                rm -f "$log"
                return 0
        fi
        cat "$log" >&2
        rm -f "$log"
        return 1
}

# The e2e-only tools, by the package that has them (not in install-deps.sh:
# only this test needs them).
declare -A tool_package=(
        [systemd-nspawn]=systemd-container
        [debootstrap]=debootstrap
        [wget]=wget
        [pgrep]=procps
        [nsenter]=util-linux
)
missing=()
for tool in "${!tool_package[@]}"; do
        command -v "$tool" >/dev/null || missing+=("${tool_package[$tool]}")
done
if ((${#missing[@]})); then
        apt_install "${missing[@]}" || skip_all "could not install ${missing[*]} (offline?)"
fi
for tool in "${!tool_package[@]}" flock systemctl meson; do
        command -v "$tool" >/dev/null || skip_all "'$tool' is missing"
done

mirror="${LOCKBUS_E2E_MIRROR:-}"
if [[ -z "$mirror" && -r /etc/apt/sources.list.d/debian.sources ]]; then
        mirror="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
fi
if [[ -z "$mirror" && -r /etc/apt/sources.list ]]; then
        mirror="$(awk '$1 == "deb" && $3 == "'"$suite"'" { print $2; exit }' /etc/apt/sources.list)"
fi
[[ -n "$mirror" ]] || skip_all "no Debian mirror (no URIs: line in /etc/apt/sources.list.d/debian.sources)"

# ------------------------------------------------------- the cached root

key="$(printf '%s\n' "v1" "$suite" minbase "$packages" | sha256sum | cut -c1-16)"
cached_root="$cache/rootfs-$key"

build_root() {
        local tmp rc=0

        mkdir -p "$cache" || return 1
        exec {lock_fd}>"$cache/.lock"
        flock "$lock_fd"
        if [[ ! -d "$cached_root" ]]; then
                # Left over from an interrupted build (we hold the lock).
                rm -rf --one-file-system "$cache"/build.*
                tmp="$(mktemp -d "$cache/build.XXXXXX")"
                echo "debootstrap $suite from $mirror into $tmp (packages: $packages)"
                timeout 600 debootstrap --variant=minbase --include="$packages" \
                        "$suite" "$tmp/root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || rc=$?
                if ((rc == 0)); then
                        mv "$tmp/root" "$cached_root" || rc=$?
                else
                        tail -n 20 "$tmp/debootstrap.log" >&2
                        root_error="$(grep -E '^E: ' "$tmp/debootstrap.log" | tail -n 1)"
                fi
                rm -rf --one-file-system "$tmp"
        fi
        exec {lock_fd}>&-
        return "$rc"
}

root_error=""
start=$SECONDS
if [[ -d "$cached_root" ]]; then
        root_note="cached root $cached_root"
elif ! timeout 30 wget -q -O /dev/null "$mirror/dists/$suite/Release"; then
        skip_all "the mirror $mirror is not reachable (no $suite Release file within 30 s)"
elif build_root; then
        root_note="built $cached_root with debootstrap in $((SECONDS - start)) s"
else
        skip_all "could not debootstrap $suite from $mirror: ${root_error:-see stderr}"
fi

# ------------------------------------------------------------ TAP helpers

ok() {
        n_tests=$((n_tests + 1))
        tap "ok $n_tests - $*"
}
not_ok() {
        n_tests=$((n_tests + 1))
        n_failed=$((n_failed + 1))
        tap "not ok $n_tests - $*"
}
skip() {
        n_tests=$((n_tests + 1))
        tap "ok $n_tests - $1 # SKIP $2"
}

# check NAME FUNCTION ARGS...: runs the function in this shell (so it may
# set variables for later checks) with its output in a log, shown on failure.
check() {
        local name="$1"
        shift
        current_log="$run_dir/check-$((n_tests + 1)).log"
        if "$@" >"$current_log" 2>&1; then
                ok "$name"
        else
                not_ok "$name"
                note "$(cat "$current_log")"
                show_journal
        fi
}

fail() {
        echo "FAIL: $*"
        return 1
}

expect_eq() {
        [[ "$1" == "$2" ]] || fail "$3: expected '$2', got '$1'"
}

# --------------------------------------------------- build and install

stage=""
run_dir=""
nspawn_pid=""
pid1=""
machine=""
clients=()

cleanup_container() {
        local i

        for i in "${clients[@]}"; do
                kill -TERM "$i" 2>/dev/null
        done
        clients=()
        if [[ -n "$nspawn_pid" ]]; then
                # The first SIGTERM asks the container to halt (~2 s).
                kill -TERM "$nspawn_pid" 2>/dev/null
                for ((i = 0; i < 300; i++)); do
                        kill -0 "$nspawn_pid" 2>/dev/null || break
                        sleep 0.1
                done
                if kill -0 "$nspawn_pid" 2>/dev/null; then
                        echo "systemd-nspawn $nspawn_pid did not stop, killing it"
                        kill -KILL "$nspawn_pid" 2>/dev/null
                fi
                wait "$nspawn_pid" 2>/dev/null
                nspawn_pid=""
        fi
        pid1=""
        if [[ -n "$machine" ]]; then
                # nspawn leaves this behind when it cannot register; remove
                # only what is ours (others may run containers here).
                rm -rf /run/systemd/nspawn/propagate/"$machine"
                rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn 2>/dev/null
                machine=""
        fi
}

cleanup() {
        cleanup_container
        wait 2>/dev/null
        if [[ -n "$run_dir" && -d "$run_dir" ]]; then
                rm -rf --one-file-system "$run_dir"
        fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

run_dir="$(mktemp -d /var/tmp/lockbus-e2e.XXXXXX)"
stage="$run_dir/stage"

install_build() {
        echo "\$ meson setup --prefix=/usr $e2e_build"
        if [[ ! -f "$e2e_build/meson-private/coredata.dat" ]]; then
                rm -rf "$e2e_build"
                meson setup --prefix=/usr -Dtests=false -Dman=disabled "$e2e_build" "$source_root" ||
                        fail "meson setup --prefix=/usr failed" || return 1
        fi
        meson compile -C "$e2e_build" || fail "meson compile failed" || return 1
        meson install -C "$e2e_build" --destdir "$stage" --no-rebuild --quiet ||
                fail "meson install --destdir failed" || return 1
        [[ -x "$stage/usr/libexec/lockbusd" ]] || fail "no /usr/libexec/lockbusd in $stage" || return 1
        [[ -f "$stage/usr/lib/systemd/system/lockbusd.service" ]] ||
                fail "no lockbusd.service in /usr/lib/systemd/system" || return 1
        (cd "$stage" && find . -type f | sort)
}

note "$root_note"
check "build with --prefix=/usr and meson install --destdir" install_build
if ((n_failed)); then
        tap "1..$n_tests"
        exit 1
fi

# ------------------------------------------------------------ container

# Runs a command inside the container as root, with a clean environment.
cin() {
        nsenter -t "$pid1" -a env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"
}

# as USER COMMAND...: the same as another user, with that user's groups.
as() {
        local user="$1"
        shift
        cin setpriv --reuid="$user" --regid="$user" --init-groups "$@"
}

busctl_lockbus() {
        local user="$1"
        shift
        as "$user" busctl call io.lockbus1 /io/lockbus1 io.lockbus1.Manager "$@"
}

# client USER call METHOD RESOURCE: "ok FIELDS..." or "error NAME MESSAGE".
client() {
        local user="$1"
        shift
        as "$user" lockbus-e2e-client "$@"
}

show_journal() {
        [[ -n "$pid1" ]] || return 0
        note "journal (lockbusd, polkit, bus), last 40 lines:"
        note "$(cin journalctl --no-pager -n 40 -o short-monotonic -u lockbusd.service -u polkit.service \
                -u dbus.service -u dbus-broker.service 2>&1)"
}

prepare_root() {
        local bus="$1" root="$2"

        echo "\$ cp -a $cached_root $root"
        cp -a --reflink=auto "$cached_root" "$root" || return 1
        cp -a "$stage/." "$root/" || return 1
        install -m 0755 "$here/e2e-client.py" "$root/usr/local/bin/lockbus-e2e-client" || return 1

        # Installing dbus-broker on Debian makes it dbus.service (Alias=);
        # disabling it gives dbus.service back to dbus-daemon.
        if [[ "$bus" == dbus-broker ]]; then
                systemctl --root="$root" --quiet enable dbus-broker.service || return 1
        else
                systemctl --root="$root" --quiet disable dbus-broker.service || return 1
        fi

        # Members of group lockbreakers may break locks, nobody else.
        mkdir -p "$root/etc/polkit-1/rules.d"
        cat >"$root/etc/polkit-1/rules.d/50-lockbus-e2e.rules" <<'EOF'
polkit.addRule(function(action, subject) {
        if (action.id == "io.lockbus1.break" && subject.isInGroup("lockbreakers"))
                return polkit.Result.YES;
});
EOF
        chmod 0644 "$root/etc/polkit-1/rules.d/50-lockbus-e2e.rules"
        # A fresh machine-id per boot, as on first boot.
        : >"$root/etc/machine-id"
}

boot() {
        local bus="$1" root="$2" i state

        machine="lockbus-e2e-${bus#dbus-}-$$"
        echo "\$ systemd-nspawn -D $root -b -M $machine"
        systemd-nspawn -q -D "$root" -b --console=pipe --register=no --keep-unit --private-network \
                -M "$machine" </dev/null >"$run_dir/console-$bus.log" 2>&1 &
        nspawn_pid=$!

        # The container's PID 1 is nspawn's child.
        for ((i = 0; i < 100; i++)); do
                pid1="$(pgrep -P "$nspawn_pid" | head -n 1)"
                [[ -n "$pid1" ]] && awk '/^NSpid:/ { exit !($NF == 1) }' "/proc/$pid1/status" 2>/dev/null && break
                pid1=""
                kill -0 "$nspawn_pid" 2>/dev/null || break
                sleep 0.1
        done
        if [[ -z "$pid1" ]]; then
                cat "$run_dir/console-$bus.log"
                fail "no container PID 1 below systemd-nspawn ($nspawn_pid)"
                return 1
        fi

        # systemctl cannot connect before systemd's private socket exists.
        for ((i = 0; i < 100; i++)); do
                state="$(timeout 60 nsenter -t "$pid1" -a systemctl is-system-running --wait 2>/dev/null)"
                [[ "$state" == running || "$state" == degraded ]] && break
                kill -0 "$nspawn_pid" 2>/dev/null || break
                sleep 0.1
        done
        echo "system state: $state"
        if [[ "$state" == degraded ]]; then
                note "$bus: the container booted degraded; failed units:"
                note "$(cin systemctl --failed --no-legend --plain)"
                # Ours must not be among them.
                if cin systemctl --failed --no-legend --plain | grep -E 'dbus|polkit|lockbus'; then
                        fail "a unit lockbus needs failed"
                        return 1
                fi
        fi
        [[ "$state" == running || "$state" == degraded ]] ||
                { cat "$run_dir/console-$bus.log"; fail "system did not reach running: '$state'"; }
}

setup_users() {
        cin systemd-sysusers || return 1
        cin systemd-tmpfiles --create /usr/lib/tmpfiles.d/lockbus.conf || return 1
        cin useradd -m alice || return 1
        cin useradd -m bob || return 1
        cin groupadd lockbreakers || return 1
        cin usermod -a -G lockbreakers bob || return 1
        lockbus_uid="$(cin id -u lockbus)" || fail "no user lockbus after systemd-sysusers" || return 1
        alice_uid="$(cin id -u alice)"
        bob_uid="$(cin id -u bob)"
        echo "lockbus=$lockbus_uid alice=$alice_uid bob=$bob_uid"
}

# ------------------------------------------------------------- checks

check_bus() {
        local bus="$1" id main comm

        id="$(cin systemctl show -p Id --value dbus.service)"
        main="$(cin systemctl show -p MainPID --value dbus.service)"
        comm="$(cin cat "/proc/$main/comm")"
        echo "dbus.service is $id, main process $main ($comm)"
        if [[ "$bus" == dbus-broker ]]; then
                expect_eq "$id" dbus-broker.service "dbus.service alias" || return 1
                [[ "$comm" == dbus-broker* ]] || fail "main process of dbus.service is '$comm'"
        else
                expect_eq "$id" dbus.service "dbus.service" || return 1
                expect_eq "$comm" dbus-daemon "main process of dbus.service"
        fi
}

main_pid() {
        cin systemctl show -p MainPID --value lockbusd.service
}

check_activation() {
        local state reply

        state="$(cin systemctl is-active lockbusd.service)"
        expect_eq "$state" inactive "lockbusd before the first call" || return 1
        reply="$(busctl_lockbus alice Lock s e2e-activation)" || fail "Lock as alice failed" || return 1
        echo "Lock as alice: $reply"
        [[ "$reply" =~ ^t\ [1-9][0-9]*$ ]] || fail "Lock answered '$reply', not a token" || return 1
        state="$(cin systemctl is-active lockbusd.service)"
        expect_eq "$state" active "lockbusd after the call"
}

check_hardening() {
        local pid status uid_map

        pid="$(main_pid)"
        [[ "$pid" -gt 0 ]] || fail "no MainPID" || return 1
        status="$(cin cat "/proc/$pid/status")" || return 1
        grep -E '^(Name|Uid|Gid|CapEff|NoNewPrivs|Seccomp):' <<<"$status"
        grep -qE "^Uid:\s+$lockbus_uid\s+$lockbus_uid\s+$lockbus_uid\s+$lockbus_uid$" <<<"$status" ||
                fail "not running as lockbus ($lockbus_uid)" || return 1
        grep -qE '^NoNewPrivs:\s+1$' <<<"$status" || fail "NoNewPrivs is not 1" || return 1
        grep -qE '^Seccomp:\s+2$' <<<"$status" || fail "Seccomp is not 2 (filter)" || return 1
        grep -qE '^CapEff:\s+0+$' <<<"$status" || fail "has effective capabilities" || return 1
        # PrivateUsers=yes: a user namespace that maps only root and lockbus.
        uid_map="$(cin cat "/proc/$pid/uid_map")"
        echo "uid_map: $uid_map"
        grep -qE "^\s*0\s+0\s+4294967295\s*$" <<<"$uid_map" && fail "not in a private user namespace"
        return 0
}

check_exposure() {
        local out
        out="$(cin systemd-analyze security --no-pager lockbusd.service 2>&1)"
        grep 'Overall exposure' <<<"$out"
        cin systemd-analyze security --no-pager --threshold=10 lockbusd.service >/dev/null 2>&1 ||
                fail "exposure above 1.0 in the booted system"
}

# owner_fields RESOURCE: sets owner=(ok MODE UID PID COMM SENDER TOKEN SINCE EXPIRES SCOPE DESC)
owner_of() {
        local line
        line="$(client root call Owner "$1")" || return 1
        echo "Owner $1: $line"
        read -r -a owner <<<"$line"
}

# A client that stays connected: start_client NAME USER MODE RESOURCE;
# its first line ("TOKEN PID UNIQUE-NAME") lands in ${NAME}_reply.
start_client() {
        local name="$1" user="$2" mode="$3" resource="$4" in out w r line
        in="$run_dir/$name.in"
        out="$run_dir/$name.out"
        rm -f "$in" "$out"
        mkfifo "$in" "$out" || return 1
        client "$user" "$mode" "$resource" <"$in" >"$out" &
        clients+=($!)
        printf -v "${name}_job" %s "$!"
        exec {w}>"$in"
        exec {r}<"$out"
        printf -v "${name}_w" %s "$w"
        printf -v "${name}_r" %s "$r"
        read -r -t 30 -u "$r" line || fail "$mode client of $user answered nothing" || return 1
        printf -v "${name}_reply" %s "$line"
        echo "$mode $resource as $user: $line"
}

# stop_client NAME: ends its stdin (it exits) and closes our pipe ends.
stop_client() {
        local name="$1" var fd
        var="${name}_w"
        fd="${!var:-}"
        [[ -n "$fd" ]] && exec {fd}>&-
        printf -v "$var" %s ""
        var="${name}_job"
        [[ -n "${!var:-}" ]] && wait "${!var}" 2>/dev/null
        var="${name}_r"
        fd="${!var:-}"
        [[ -n "$fd" ]] && exec {fd}<&-
        printf -v "$var" %s ""
        return 0
}

# The clients must not outlive a failed check: they would keep lockbusd
# from going idle.
check_connection_hold() {
        local rc=0
        connection_hold || rc=$?
        stop_client conn
        return "$rc"
}

connection_hold() {
        local token pid sender reply
        start_client conn alice hold-connection e2e-conn || return 1
        read -r token pid sender <<<"$conn_reply"
        owner_of e2e-conn || return 1
        expect_eq "${owner[0]}/${owner[2]}/${owner[6]}/${owner[9]}" "ok/$alice_uid/$token/connection" \
                "Owner (ok/uid/token/scope)" || return 1
        expect_eq "${owner[5]}" "$sender" "sender" || return 1

        # The client dies (SIGKILL, no goodbye): its hold goes with its
        # connection, so bob's waiting request is granted.
        cin sh -c 'kill -KILL "$1"' sh "$pid" || return 1
        wait "$conn_job" 2>/dev/null
        reply="$(busctl_lockbus bob Acquire 'sa{sv}' e2e-conn 2 scope s persistent timeout t 20000000)" ||
                fail "bob's waiting Acquire was not granted after alice's client died" || return 1
        echo "Acquire as bob: $reply"
        owner_of e2e-conn || return 1
        expect_eq "${owner[0]}/${owner[2]}/${owner[9]}" "ok/$bob_uid/persistent" "Owner after the kill" || return 1
        stop_client conn
        busctl_lockbus bob Unlock s e2e-conn || return 1
        owner_of e2e-conn || return 1
        expect_eq "${owner[0]} ${owner[1]}" "error io.lockbus1.Error.NotLocked" "Owner after Unlock"
}

check_fd_restart() {
        local token pid sender old new
        start_client fdc alice hold-fd e2e-fd || return 1
        read -r token pid sender <<<"$fdc_reply"
        fd_token="$token"
        old="$(main_pid)"
        cin systemctl restart lockbusd.service || fail "systemctl restart lockbusd failed" || return 1
        new="$(main_pid)"
        echo "lockbusd restarted: pid $old -> $new"
        [[ "$new" -gt 0 && "$new" != "$old" ]] || fail "lockbusd was not restarted" || return 1
        cin journalctl --no-pager -o cat -u lockbusd.service _PID="$new" | grep -E "Restored 'e2e-fd'|Dropping hold on 'e2e-fd'"
        owner_of e2e-fd || return 1
        expect_eq "${owner[0]}/${owner[2]}/${owner[6]}/${owner[9]}" "ok/$alice_uid/$token/fd" \
                "Owner after restart (ok/uid/token/scope)"
}

check_fd_close() {
        local rc=0
        fd_close || rc=$?
        stop_client fdc
        return "$rc"
}

fd_close() {
        local line reply
        [[ -n "${fdc_w:-}" ]] || fail "no fd client (the previous check failed)" || return 1
        owner_of e2e-fd || return 1
        expect_eq "${owner[0]}/${owner[9]}" "ok/fd" "Owner before the close" || return 1
        echo close >&"$fdc_w"
        read -r -t 30 -u "$fdc_r" line || fail "the fd client did not close" || return 1
        expect_eq "$line" closed "fd client" || return 1
        # Still connected: only the fd tells the daemon to let go.
        reply="$(busctl_lockbus bob Acquire 'sa{sv}' e2e-fd 2 scope s persistent timeout t 20000000)" ||
                fail "bob's waiting Acquire was not granted after the fd was closed" || return 1
        echo "Acquire as bob: $reply"
        kill -0 "$fdc_job" 2>/dev/null || fail "the fd client is gone: not a test of the fd" || return 1
        stop_client fdc
        owner_of e2e-fd || return 1
        expect_eq "${owner[0]}/${owner[2]}/${owner[9]}" "ok/$bob_uid/persistent" "Owner after the close" || return 1
        busctl_lockbus bob Unlock s e2e-fd
}

check_break_denied() {
        local reply
        busctl_lockbus alice Lock s e2e-break || return 1
        reply="$(client alice call Break e2e-break)"
        echo "Break as alice: $reply"
        [[ "$reply" == "error org.freedesktop.DBus.Error.AccessDenied "* ]] ||
                fail "alice's Break was not denied with AccessDenied" || return 1
        # Denied by polkit's answer (auth_admin_keep, no agent), not because
        # asking polkit failed (lockbusd then adds "(polkit: ERROR)").
        [[ "$reply" != *"(polkit:"* ]] || fail "polkit was not asked successfully" || return 1
        owner_of e2e-break || return 1
        expect_eq "${owner[0]}/${owner[2]}" "ok/$alice_uid" "Owner after the refused Break"
}

check_break_allowed() {
        local reply
        reply="$(client bob call Break e2e-break)"
        echo "Break as bob: $reply"
        expect_eq "$reply" ok "bob's Break (group lockbreakers, polkit rule)" || return 1
        owner_of e2e-break || return 1
        expect_eq "${owner[0]} ${owner[1]}" "error io.lockbus1.Error.NotLocked" "Owner after Break"
}

check_idle_exit() {
        local pid reply i state result
        mkdir -p "$root/etc/systemd/system/lockbusd.service.d"
        printf '[Service]\nExecStart=\nExecStart=/usr/libexec/lockbusd --system --idle-timeout=2\n' \
                >"$root/etc/systemd/system/lockbusd.service.d/test.conf"
        cin systemctl daemon-reload || return 1
        cin systemctl stop lockbusd.service || return 1

        reply="$(busctl_lockbus alice Lock s e2e-persist)" || fail "Lock as alice failed" || return 1
        persist_token="${reply#t }"
        echo "Lock e2e-persist as alice: $reply"
        pid="$(main_pid)"
        [[ "$pid" -gt 0 ]] || fail "lockbusd was not activated" || return 1

        # Blocks on a pidfd until the daemon exits by itself.
        reply="$(cin lockbus-e2e-client wait-exit "$pid" 30)"
        expect_eq "$reply" exited "lockbusd (pid $pid) within 30 s" || return 1
        # Then systemd notices; a bounded poll of its view (0.2 s steps).
        for ((i = 0; i < 50; i++)); do
                state="$(cin systemctl show -p ActiveState --value lockbusd.service)"
                [[ "$state" == inactive || "$state" == failed ]] && break
                sleep 0.2
        done
        result="$(cin systemctl show -p Result --value lockbusd.service)"
        cin journalctl --no-pager -o cat -u lockbusd.service _PID="$pid" | tail -n 3
        cin journalctl --no-pager -o cat -u lockbusd.service _PID="$pid" | grep -q '^Idle: released io.lockbus1' ||
                fail "lockbusd $pid did not log its idle exit" || return 1
        expect_eq "$state/$result" inactive/success "ActiveState/Result after the idle exit"
}

check_reactivation() {
        local state
        [[ -n "${persist_token:-}" ]] || fail "no persistent hold (the previous check failed)" || return 1
        state="$(cin systemctl is-active lockbusd.service)"
        expect_eq "$state" inactive "lockbusd before the call" || return 1
        owner_of e2e-persist || return 1
        expect_eq "${owner[0]}/${owner[2]}/${owner[6]}/${owner[9]}" "ok/$alice_uid/$persist_token/persistent" \
                "Owner after re-activation (ok/uid/token/scope)" || return 1
        state="$(cin systemctl is-active lockbusd.service)"
        expect_eq "$state" active "lockbusd after the call"
}

check_journal() {
        local errors
        errors="$(cin journalctl --no-pager -o cat -p err -u lockbusd.service)"
        [[ -z "$errors" ]] || fail "errors in lockbusd's journal: $errors"
}

# The checks of one booted container, in order: description, function.
bus_checks=(
        "dbus.service is this bus"                                               check_bus
        "alice's Lock activates lockbusd.service on demand"                      check_activation
        "lockbusd runs as lockbus, NoNewPrivs, seccomp, no caps, own userns"     check_hardening
        "systemd-analyze security exposure <= 1.0 in the booted system"          check_exposure
        "a connection hold dies with its client"                                 check_connection_hold
        "an fd hold survives systemctl restart (fd store), same token"           check_fd_restart
        "the fd hold is released when its fd is closed"                          check_fd_close
        "Break by alice (not in lockbreakers) is AccessDenied"                   check_break_denied
        "Break by bob (in lockbreakers) is allowed by polkitd"                   check_break_allowed
        "lockbusd exits on idle (inactive, Result=success)"                      check_idle_exit
        "re-activation keeps alice's persistent hold and token"                  check_reactivation
        "no errors in lockbusd's journal"                                        check_journal
)

run_bus() {
        local bus="$1" start=$SECONDS before i name

        root="$run_dir/root-$bus"
        lockbus_uid="" alice_uid="" bob_uid="" fd_token="" persist_token="" fdc_w="" fdc_r=""

        before=$n_failed
        check "$bus: a fresh copy of the root, lockbus installed" prepare_root "$bus" "$root"
        ((n_failed == before)) && check "$bus: boots with systemd-nspawn to running" boot "$bus" "$root"
        ((n_failed == before)) && check "$bus: users (lockbus from sysusers.d, alice, bob in lockbreakers)" setup_users

        for ((i = 0; i < ${#bus_checks[@]}; i += 2)); do
                name="$bus: ${bus_checks[i]}"
                if ((n_failed > before)) && [[ -z "$pid1" ]]; then
                        skip "$name" "the container did not come up"
                else
                        check "$name" "${bus_checks[i + 1]}" "$bus"
                fi
        done

        stop_client conn
        stop_client fdc
        cleanup_container
        rm -rf --one-file-system "$root"
        note "$bus: $((SECONDS - start)) s"
}

for bus in dbus-daemon dbus-broker; do
        run_bus "$bus"
done

tap "1..$n_tests"
((n_failed == 0))
