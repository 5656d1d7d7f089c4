#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The lockbus demo: installs the dependencies, builds, starts lockbusd on a
# bus and shows locking with busctl, checking every outcome.
#
#   scripts/demo.sh [--keep] [--private-bus] [--builddir=DIR]
#
#   --keep          leave the bus and the daemon running at the end, and print
#                   how to talk to them and the script that stops them
#   --private-bus   never use the host's system bus, always a private one
#   --builddir=DIR  meson build directory (default: build)
#
# Which bus:
#   - If a system bus answers and nobody owns (or can activate) io.lockbus1
#     there, the demo installs the bus policy dbus/io.lockbus1.conf as
#     /etc/dbus-1/system.d/io.lockbus1.conf, asks the bus to reload its
#     configuration, and starts the built lockbusd --system with its state in
#     /var/lib/lockbus-demo and /run/lockbus-demo. At the end it stops the
#     daemon, removes (or restores) the policy file, reloads the bus again and
#     removes the two directories. This needs root.
#   - Otherwise it starts a private, system-like dbus-daemon (the system
#     bus's default policy plus the project's own io.lockbus1.conf) in a
#     temporary directory, and lets D-Bus activation start lockbusd from the
#     build tree on the first call, with its state in that directory.
#     Without root, a demo-only policy lets the current user own the name.
#
# Whatever it starts or changes is undone at exit by the script "stop" it
# writes into its temporary directory (with --keep: run it yourself).
# The calls as another user run under setpriv as uid/gid 65534 (nobody);
# without root they are skipped. Exits non-zero if any outcome differs from
# the expected one (a refused call must fail with the right error name).
set -euo pipefail

keep=false
private_only=false
builddir=build

usage() {
        sed -n '7,12s/^# \{0,1\}//p' "$0"
}

for arg in "$@"; do
        case "$arg" in
                --keep) keep=true ;;
                --private-bus) private_only=true ;;
                --builddir=*) builddir="${arg#--builddir=}" ;;
                -h|--help) usage; exit 0 ;;
                *) echo "demo.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
        esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

readonly bus_name=io.lockbus1
readonly object_path=/io/lockbus1
readonly interface=io.lockbus1.Manager
readonly other_uid=65534

# ---------------------------------------------------------------- helpers

say() {
        printf '\n== %s\n' "$*"
}

die() {
        printf 'demo.sh: %s\n' "$*" >&2
        exit 1
}

# Shell-quotes a command for display, only where needed.
quote_cmd() {
        local out="" a
        for a in "$@"; do
                if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
                        out+=" $a"
                else
                        out+=" '${a//\'/\'\\\'\'}'"
                fi
        done
        printf '%s' "${out# }"
}

failures=0
steps=0
last_output=""

# note TEXT: what the next commands show, as a shell comment.
note() {
        printf '\n# %s\n' "$*" | fold -s -w 78 | sed -e 's/ *$//' -e '2,$s/^\([^#]\)/# \1/'
}

# expect_ok CMD...: echoes CMD, runs it, prints its output; it must succeed.
expect_ok() {
        local rc=0
        steps=$((steps + 1))
        printf '$ %s\n' "$(quote_cmd "$@")"
        last_output="$("$@" 2>&1)" || rc=$?
        [[ -z "$last_output" ]] || printf '%s\n' "$last_output"
        if ((rc != 0)); then
                printf '   ✗ expected success, got exit status %d\n' "$rc"
                failures=$((failures + 1))
                return 1
        fi
        return 0
}

# expect_error ERROR-NAME CMD...: echoes the busctl command CMD, runs it; it
# must fail with the D-Bus error ERROR-NAME. busctl prints only the error's
# message, so the name is read from sd-bus's debug log of the reply
# (SYSTEMD_LOG_LEVEL=debug), which is not shown.
expect_error() {
        local want="$1" rc=0 stdout got
        shift
        steps=$((steps + 1))
        printf '$ %s\n' "$(quote_cmd "$@")"
        stdout="$(SYSTEMD_LOG_LEVEL=debug "$@" 2>"$work/stderr")" || rc=$?
        [[ -z "$stdout" ]] || printf '%s\n' "$stdout"
        last_output="$(grep -v -E '^(Bus |sd-bus|Sent message|Got message)' "$work/stderr" || true)"
        [[ -z "$last_output" ]] || printf '%s\n' "$last_output"
        got="$(sed -n 's/^Got message type=error .* error-name=\([^ ]*\) error-message=.*/\1/p' "$work/stderr" | tail -n 1)"
        if ((rc == 0)); then
                printf '   ✗ expected %s, but the call succeeded\n' "$want"
                failures=$((failures + 1))
                return 1
        fi
        if [[ "$got" != "$want" ]]; then
                printf '   ✗ expected %s, got %s\n' "$want" "${got:-no D-Bus error}"
                failures=$((failures + 1))
                return 1
        fi
        printf '   → %s, as expected\n' "$got"
        return 0
}

# not_as_expected WHAT: one more expectation on what was seen did not hold.
not_as_expected() {
        printf '   ✗ expected %s\n' "$1"
        failures=$((failures + 1))
}

is_root() {
        ((EUID == 0))
}

# The commands, spelled out so that what is echoed is what runs.
call=(busctl call "$bus_name" "$object_path" "$interface")
as_other=(setpriv --reuid="$other_uid" --regid="$other_uid" --clear-groups)

# ---------------------------------------------------------------- cleanup
#
# Everything the demo starts or changes is written down, as it happens, in
# the script $work/stop; at exit the demo runs it, unless --keep, and then
# tells how to run it later.

work=""                 # temporary directory (always)
mode=""                 # "system" or "private"
bus_address=""
bus_pid=""              # private dbus-daemon (our child)
daemon_pid=""           # lockbusd, when we started it ourselves (system bus)
lock_dir=""
runtime_dir=""
policy_installed=""     # path of the policy file we put into /etc
policy_backup=""        # what was there before, if anything

write_stop_script() {
        {
                echo '#!/usr/bin/env bash'
                echo '# Written by scripts/demo.sh: stops what the demo started, undoes what it'
                echo '# changed and removes its temporary directory.'
                echo 'set -u'
                local v
                for v in work mode bus_address bus_pid daemon_pid lock_dir runtime_dir \
                         policy_installed policy_backup; do
                        printf '%s=%q\n' "$v" "${!v}"
                done
                cat <<'EOF'

# Is PID still running with WORD in its command line? (PIDs are reused.)
is_ours() {
        [[ -n "$1" ]] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -qF -- "$2"
}

# SIGTERM, then wait until lockbusd lets go of its lock directory (it holds
# an exclusive flock on it while it runs), SIGKILL after 10 s.
stop_lockbusd() {
        kill -TERM "$1" 2>/dev/null || return 0
        [[ ! -d "$lock_dir" ]] || timeout 10 flock "$lock_dir" true 2>/dev/null
        ! is_ours "$1" lockbusd || kill -KILL "$1" 2>/dev/null
}

if [[ "$mode" == private && -n "$bus_address" ]]; then
        # lockbusd was activated by the bus (and may have exited on idle and
        # been activated again since): ask the bus who it is now.
        pid="$(DBUS_SYSTEM_BUS_ADDRESS="$bus_address" busctl call org.freedesktop.DBus \
                /org/freedesktop/DBus org.freedesktop.DBus GetConnectionUnixProcessID s io.lockbus1 \
                2>/dev/null | sed -n 's/^u //p')"
        ! is_ours "$pid" lockbusd || stop_lockbusd "$pid"
fi
! is_ours "$daemon_pid" lockbusd || stop_lockbusd "$daemon_pid"
! is_ours "$bus_pid" "$work/bus.conf" || kill -TERM "$bus_pid"

if [[ -n "$policy_installed" ]]; then
        if [[ -n "$policy_backup" ]]; then
                mv -f "$policy_backup" "$policy_installed"
        else
                rm -f "$policy_installed"
        fi
        busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null
fi
[[ "$mode" != system ]] || rm -rf "$lock_dir" "$runtime_dir"
rm -rf "$work"
EOF
        } >"$work/stop.new"
        chmod 0755 "$work/stop.new"
        mv -f "$work/stop.new" "$work/stop"
}

cleanup() {
        local rc=$?
        set +e
        if "$keep" && [[ -n "$mode" ]]; then
                print_keep_instructions
                return
        fi
        if ((rc != 0)) && [[ -n "$work" && -s "$work/daemon.log" ]]; then
                printf '\n== lockbusd and bus log (%s)\n' "$work/daemon.log"
                tail -n 40 "$work/daemon.log"
        fi
        if [[ -x "$work/stop" ]]; then
                "$work/stop"
        fi
        # Reap our children (the bus, or lockbusd on the system bus).
        [[ -z "$bus_pid" ]] || wait "$bus_pid" 2>/dev/null
        [[ -z "$daemon_pid" ]] || wait "$daemon_pid" 2>/dev/null
        [[ -z "$work" ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

print_keep_instructions() {
        say "Left running (--keep)"
        if [[ "$mode" == private ]]; then
                cat <<EOF
A private, system-like bus (dbus-daemon, pid $bus_pid); lockbusd is activated
on demand and exits when idle. Talk to it:
    export DBUS_SYSTEM_BUS_ADDRESS='$bus_address'
    busctl call $bus_name $object_path $interface ListLocks
EOF
        else
                cat <<EOF
lockbusd (pid $daemon_pid) on the system bus (policy: /etc/dbus-1/system.d/io.lockbus1.conf).
Talk to it:
    busctl call $bus_name $object_path $interface ListLocks
EOF
        fi
        cat <<EOF
State: $lock_dir (persistent holds, tokens), $runtime_dir (connection holds).
Log: $work/daemon.log
Stop it and undo the demo's changes:
    $work/stop
EOF
}

work="$(mktemp -d "${TMPDIR:-/tmp}/lockbus-demo.XXXXXX")"
# Other users must reach the bus socket inside it (mktemp -d gives 0700).
chmod 0755 "$work"

# ---------------------------------------------------------------- 1. deps

say "Dependencies (scripts/install-deps.sh)"
if ! "$repo/scripts/install-deps.sh" --check >/dev/null; then
        is_root || die "packages are missing and installing them needs root: $("$repo/scripts/install-deps.sh" --check)"
        "$repo/scripts/install-deps.sh"
fi
echo "all installed"

# ---------------------------------------------------------------- 2. build

say "Build ($builddir)"
if [[ ! -f "$builddir/build.ninja" ]]; then
        setup_args=(setup "$builddir")
        [[ ! -d "$builddir/meson-private" ]] || setup_args=(setup --reconfigure "$builddir")
        echo "\$ meson ${setup_args[*]}"
        if ! meson "${setup_args[@]}" >"$work/build.log" 2>&1; then
                cat "$work/build.log"
                die "meson setup failed"
        fi
fi
echo "\$ meson compile -C $builddir"
if ! meson compile -C "$builddir" >"$work/build.log" 2>&1; then
        cat "$work/build.log"
        die "meson compile failed"
fi
# Absolute: the activation file runs it from elsewhere.
lockbusd="$(cd "$builddir" && pwd)/service/lockbusd"
[[ -x "$lockbusd" ]] || die "$lockbusd was not built"
echo "built $lockbusd ($("$lockbusd" --version))"

# ---------------------------------------------------------------- 3. bus

system_bus_usable() {
        local reply
        "$private_only" && return 1
        # Do not reach for a bus given by the environment: only the real one.
        [[ -z "${DBUS_SYSTEM_BUS_ADDRESS:-}" ]] || return 1
        [[ -S /run/dbus/system_bus_socket ]] || return 1
        busctl --timeout=5 call org.freedesktop.DBus /org/freedesktop/DBus \
                org.freedesktop.DBus GetId >/dev/null 2>&1 || return 1
        if ! is_root; then
                echo "a system bus runs, but using it needs root: using a private bus"
                return 1
        fi
        reply="$(busctl call org.freedesktop.DBus /org/freedesktop/DBus \
                org.freedesktop.DBus NameHasOwner s "$bus_name")" || return 1
        if [[ "$reply" != "b false" ]]; then
                echo "$bus_name already has an owner on the system bus: using a private bus"
                return 1
        fi
        reply="$(busctl call org.freedesktop.DBus /org/freedesktop/DBus \
                org.freedesktop.DBus ListActivatableNames)" || return 1
        if [[ "$reply" == *"\"$bus_name\""* ]]; then
                echo "$bus_name is installed (activatable) on the system bus: using a private bus"
                return 1
        fi
        return 0
}

start_on_system_bus() {
        local policy=/etc/dbus-1/system.d/io.lockbus1.conf
        mode=system
        lock_dir=/var/lib/lockbus-demo
        runtime_dir=/run/lockbus-demo
        write_stop_script

        say "Starting lockbusd on the system bus"
        if ! cmp -s "$repo/dbus/io.lockbus1.conf" "$policy"; then
                if [[ -e "$policy" ]]; then
                        policy_backup="$work/io.lockbus1.conf.orig"
                        cp -p "$policy" "$policy_backup"
                fi
                echo "installing the bus policy: $policy (removed at the end)"
                # shellcheck disable=SC2034 # read by write_stop_script (${!v})
                policy_installed="$policy"
                write_stop_script
                install -D -m 0644 "$repo/dbus/io.lockbus1.conf" "$policy"
                echo "\$ busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig"
                busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig
        fi
        # Leftovers of an earlier demo would change the outcomes.
        rm -rf "$lock_dir" "$runtime_dir"
        echo "state: $lock_dir and $runtime_dir (removed at the end)"
        # Nothing would activate it again after an idle exit: no idle exit.
        local args=(--system --lock-directory="$lock_dir" --runtime-directory="$runtime_dir")
        if "$lockbusd" --help | grep -q -e --idle-timeout; then
                args+=(--idle-timeout=0)
        fi
        echo "\$ $lockbusd ${args[*]} &"
        "$lockbusd" "${args[@]}" </dev/null >"$work/daemon.log" 2>&1 &
        daemon_pid=$!
        write_stop_script
        # Wait for the name, not for a fixed time.
        if ! gdbus wait --system --timeout 10 "$bus_name"; then
                die "lockbusd did not take $bus_name on the system bus"
        fi
}

start_private_bus() {
        mode=private
        lock_dir="$work/lib"
        runtime_dir="$work/run"
        write_stop_script

        say "Starting a private, system-like bus"
        mkdir -p "$work/system.d" "$work/services"
        cp "$repo/dbus/io.lockbus1.conf" "$work/system.d/"
        if ! is_root; then
                # The real policy lets only root own the name; the daemon runs
                # as the bus's user, so let that user own it on this bus.
                cat >"$work/system.d/demo-owner.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="$(id -un)">
    <allow own="$bus_name"/>
  </policy>
</busconfig>
EOF
                echo "not root: $work/system.d/demo-owner.conf lets $(id -un) own $bus_name"
        fi
        # The host's default system-bus policy, then the project's own.
        cat >"$work/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$work/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <servicedir>$work/services</servicedir>
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
  </policy>
  <includedir>$work/system.d</includedir>
</busconfig>
EOF
        # Activation: the first call to io.lockbus1 starts the built daemon.
        cat >"$work/services/io.lockbus1.service" <<EOF
[D-BUS Service]
Name=$bus_name
Exec='$lockbusd' --system '--lock-directory=$lock_dir' '--runtime-directory=$runtime_dir'
EOF
        echo "bus config: $work/bus.conf (policy: $work/system.d/io.lockbus1.conf)"
        echo "activation: $work/services/io.lockbus1.service"
        echo "state: $lock_dir and $runtime_dir"

        # dbus-daemon writes its address on fd 3 once it listens: read it
        # through a FIFO (EOF there if it fails to start).
        mkfifo "$work/address"
        dbus-daemon --config-file="$work/bus.conf" --nofork --print-address=3 \
                3>"$work/address" </dev/null >"$work/daemon.log" 2>&1 &
        bus_pid=$!
        write_stop_script
        read -r -t 30 bus_address <"$work/address" || true
        [[ -n "$bus_address" ]] || die "dbus-daemon did not start"
        write_stop_script
        export DBUS_SYSTEM_BUS_ADDRESS="$bus_address"
        echo "\$ export DBUS_SYSTEM_BUS_ADDRESS=$bus_address"
}

if system_bus_usable; then
        start_on_system_bus
else
        start_private_bus
fi

# ---------------------------------------------------------------- 4. locks

say "Locking with busctl"

note "Ask for the daemon's version and lock directory (on the private bus this first call activates it)."
expect_ok busctl get-property "$bus_name" "$object_path" "$interface" Version LockDirectory LockCount \
        || die "lockbusd does not answer"

note "Lock a resource: an exclusive, persistent lock. The reply is its fencing token."
first_token=""
if expect_ok "${call[@]}" Lock s db; then
        first_token="${last_output#t }"
        [[ "$last_output" =~ ^t\ [0-9]+$ ]] || not_as_expected "a token (t N)"
fi

if is_root; then
        note "Another user (nobody, uid $other_uid) cannot take it; the error names the holder."
        if expect_error io.lockbus1.Error.AlreadyLocked "${as_other[@]}" "${call[@]}" Lock s db; then
                [[ "$last_output" == *"uid 0"* ]] || not_as_expected "the message to name the holder (uid 0)"
        fi
        note "Or it waits, here at most 0.5 s (the option timeout, in µs), and gives up."
        expect_error io.lockbus1.Error.Timeout "${as_other[@]}" "${call[@]}" Acquire 'sa{sv}' db 1 timeout t 500000 || true
else
        note "Not root: the calls as another user are skipped."
fi

note "Who holds it, and every hold there is."
if expect_ok "${call[@]}" Owner s db; then
        [[ "$last_output" == "sa(uusstttss) \"exclusive\" 1 $EUID "* ]] || not_as_expected "an exclusive hold of uid $EUID"
fi
expect_ok "${call[@]}" ListLocks || true

if is_root; then
        note "Another user cannot unlock it."
        expect_error io.lockbus1.Error.NotOwner "${as_other[@]}" "${call[@]}" Unlock s db || true
fi

note "The owner unlocks it; a second Unlock finds nothing to release."
expect_ok "${call[@]}" Unlock s db || true
expect_error io.lockbus1.Error.NotLocked "${call[@]}" Unlock s db || true

note "Acquire takes options. Its default scope is \"connection\": the hold ends when the caller's bus connection closes, here as soon as busctl exits. Tokens only grow."
if expect_ok "${call[@]}" Acquire 'sa{sv}' db 2 mode s shared description s "nightly backup"; then
        token="${last_output#t }"
        [[ "$token" =~ ^[0-9]+$ && "$first_token" =~ ^[0-9]+$ && "$token" -gt "$first_token" ]] \
                || not_as_expected "a token greater than the first one ($first_token)"
fi
expect_error io.lockbus1.Error.NotLocked "${call[@]}" Owner s db || true

if is_root; then
        note "Shared holds that outlive the call (scope persistent), of two users at once; each releases its own."
        expect_ok "${call[@]}" Acquire 'sa{sv}' db 3 mode s shared scope s persistent description s "nightly backup" || true
        expect_ok "${as_other[@]}" "${call[@]}" Acquire 'sa{sv}' db 3 mode s shared scope s persistent description s "report" || true
        if expect_ok "${call[@]}" Owner s db; then
                [[ "$last_output" == 'sa(uusstttss) "shared" 2 '* ]] || not_as_expected "a shared lock with two holders"
        fi
        expect_ok "${as_other[@]}" "${call[@]}" Unlock s db || true
        expect_ok "${call[@]}" Unlock s db || true
fi

note "Nothing is left locked."
if expect_ok "${call[@]}" ListLocks; then
        [[ "$last_output" == "a(ssuusstttss) 0" ]] || not_as_expected "no locks left"
fi

# ---------------------------------------------------------------- 5. result

echo
if ((failures > 0)); then
        echo "demo: $failures of $steps steps did not behave as expected"
        exit 1
fi
echo "demo: all $steps steps behaved as expected"
