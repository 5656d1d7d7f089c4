#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Installs what lockbus needs to build, test and run its demo on Debian 12
# (bookworm), as root. Idempotent: it asks dpkg which packages are installed
# and runs apt-get (update, then install) only when some are missing. Quiet
# unless something fails; then it prints apt-get's output and exits non-zero.
#
#   scripts/install-deps.sh            install what is missing
#   scripts/install-deps.sh --check    only tell what is missing (exit 1 if any)
set -euo pipefail

# What each package is for:
#   meson ninja-build gcc pkg-config   the build
#   libsystemd-dev libglib2.0-dev      sd-bus/sd-event, GLib (g_test, GKeyFile)
#   dbus-daemon                        the private buses of the tests and demo
#   dbus-bin                           dbus-send & co. (debugging, tests)
#   libglib2.0-bin                     gdbus (the demo waits for a name with it)
#   systemd                            /usr/bin/busctl (Debian ships it there),
#                                      systemd-analyze (tests/systemd)
#   scdoc                              the man page
#   util-linux                         setpriv (calls as another UID)
#   python3                            parsing meson's testlog.json, tests/systemd
#   python3-dbusmock                   the polkitd mock of tests/polkit
#   clang libclang-rt-14-dev           the libFuzzer targets of tests/fuzz
#   valgrind                           the torture test under memcheck
#                                      (run-fuzzers.sh; CI's fuzz pass); gcc
#                                      brings ASan/UBSan for the sanitizer pass
#   libcurl4-openssl-dev               the etcd client's HTTP (libcurl multi)
#   libjson-glib-dev                   the etcd client's JSON
#   etcd-server                        the etcd clusters of tests/etcd
#   etcd-client                        etcdctl (debugging the test clusters)
#   openssl                            the certificates of the TLS etcd clusters
#                                      (tests/etcd/etcd-test.c)
packages=(
        meson
        ninja-build
        gcc
        pkg-config
        libsystemd-dev
        libglib2.0-dev
        dbus-daemon
        dbus-bin
        libglib2.0-bin
        systemd
        scdoc
        util-linux
        python3
        python3-dbusmock
        clang
        libclang-rt-14-dev
        valgrind
        libcurl4-openssl-dev
        libjson-glib-dev
        etcd-server
        etcd-client
        openssl
)

check_only=false
case "${1:-}" in
        --check) check_only=true ;;
        "") ;;
        -h|--help)
                sed -n '4,10s/^# \{0,1\}//p' "$0"
                exit 0 ;;
        *)
                echo "install-deps.sh: unknown argument '$1'" >&2
                exit 2 ;;
esac

is_installed() {
        local status
        status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" || return 1
        [[ "$status" == ii* ]]
}

missing=()
for p in "${packages[@]}"; do
        is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
        exit 0
fi

if "$check_only"; then
        echo "missing packages: ${missing[*]}"
        exit 1
fi

if ((EUID != 0)); then
        echo "install-deps.sh: missing packages (${missing[*]}); run me as root" >&2
        exit 1
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false)

if ! apt-get "${apt_opts[@]}" update >"$log" 2>&1; then
        cat "$log" >&2
        echo "install-deps.sh: apt-get update failed" >&2
        exit 1
fi
if ! apt-get "${apt_opts[@]}" install "${missing[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        echo "install-deps.sh: apt-get install ${missing[*]} failed" >&2
        exit 1
fi

# Trust, but verify: the tools the scripts call must now be there.
for tool in meson ninja gcc clang pkg-config dbus-daemon busctl gdbus scdoc setpriv flock python3 openssl; do
        if ! command -v "$tool" >/dev/null; then
                echo "install-deps.sh: '$tool' still missing after installing ${missing[*]}" >&2
                exit 1
        fi
done
