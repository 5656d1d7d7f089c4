#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The torture test with every lockbusd generation under valgrind memcheck:
#
#   tests/torture/run-valgrind.sh [BUILDDIR] [lockbus-torture OPTIONS...]
#
# BUILDDIR defaults to build; the default run is the short one of
# `meson test` (25 s, 8 clients, 4 resources, 6 client kills, 2 lockbusd
# kills). Each generation writes its own log (VALGRIND_LOG_DIR, default a
# new temp dir). The generations killed with SIGKILL report errors as they
# happen; the last one is stopped with SIGTERM, so it also reports leaks.
# Fails if the torture test fails, if any generation reported a memcheck
# error, or if the last one lost memory definitely. Prints each log's
# ERROR SUMMARY and LEAK SUMMARY (as TAP comments: meson runs this as the
# test torture-valgrind; without valgrind it reports itself skipped). The
# logs are removed after a clean run unless VALGRIND_LOG_DIR was given.
set -euo pipefail

builddir="${1:-build}"
shift || true
torture="$builddir/tests/torture/lockbus-torture"
[[ -x "$torture" ]] || { echo "run-valgrind.sh: $torture not built" >&2; exit 2; }
if ! command -v valgrind >/dev/null; then
        # TAP, for meson test: skipped.
        echo "1..0 # SKIP valgrind is not installed (apt-get install valgrind)"
        exit 0
fi

if [[ -n "${VALGRIND_LOG_DIR:-}" ]]; then
        logdir="$VALGRIND_LOG_DIR"
        mkdir -p "$logdir"
else
        logdir="$(mktemp -d /tmp/lockbus-valgrind-XXXXXX)"
fi

export LOCKBUS_DAEMON_WRAPPER="valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 --log-file=$logdir/lockbusd.%p.log"

if [[ $# -eq 0 ]]; then
        set -- --duration=25s --clients=8 --resources=4 --client-kills=6 --daemon-kills=2
fi

rc=0
"$torture" "$@" || rc=$?

errors=0
for log in "$logdir"/lockbusd.*.log; do
        [[ -e "$log" ]] || continue
        echo "# --- $(basename "$log")"
        # Error lines: "==PID== Invalid read …", "Conditional jump …", etc.
        n=$(grep -cE '^==[0-9]+== (Invalid|Conditional jump|Use of uninitialised|Syscall param|Mismatched|Source and destination overlap|Argument .* of function)' "$log" || true)
        if grep -q 'ERROR SUMMARY' "$log"; then
                grep -E 'ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|All heap blocks were freed' "$log" | sed 's/^/# /'
                s=$(sed -nE 's/.*ERROR SUMMARY: ([0-9]+) errors.*/\1/p' "$log" | tail -1)
                n=$((n > s ? n : s))
        else
                echo "# (killed with SIGKILL: no summary) $n errors reported"
        fi
        errors=$((errors + n))
done
echo "# memcheck errors in all generations: $errors"

if [[ $rc -ne 0 || $errors -ne 0 ]]; then
        echo "# kept $logdir"
        exit 1
fi
[[ -n "${VALGRIND_LOG_DIR:-}" ]] || rm -rf "$logdir"
