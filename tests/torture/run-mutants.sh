#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Checks the checker: builds lockbusd with one deliberate bug at a time (out
# of tree, in a copy of the sources) and runs a short torture run against
# each; every run must fail.
#
#   tests/torture/run-mutants.sh [BUILDDIR]     (default: build)
#
# BUILDDIR must have lockbus-torture built. Prints one line per mutant with
# the first violation found; exits non-zero if a mutant was not caught.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
builddir="$(cd "${1:-build}" && pwd)"
torture="$builddir/tests/torture/lockbus-torture"
[[ -x "$torture" ]] || { echo "run-mutants.sh: $torture not built" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "run-mutants.sh: needs root" >&2; exit 2; }

work="$(mktemp -d /tmp/lockbus-mutants-XXXXXX)"
trap 'rm -rf "$work"' EXIT

missed=0

# mutant NAME FILE ORIGINAL REPLACEMENT: one text replacement in a copy.
mutant() {
        local name="$1" file="$2" from="$3" to="$4" src="$work/$1" out first kept

        mkdir -p "$src"
        (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$src")
        python3 - "$src/$file" "$from" "$to" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if old not in text:
    sys.exit(f"{path}: '{old}' not found")
open(path, "w").write(text.replace(old, new, 1))
EOF
        meson setup "$src/b" "$src" -Dtests=false >/dev/null
        ninja -C "$src/b" service/lockbusd >/dev/null

        out="$(LOCKBUS_DAEMON="$src/b/service/lockbusd" "$torture" --duration=10s --client-kills=3 \
                --daemon-kills=2 --torture-seed=1 2>/dev/null || true)"
        first="$(grep -m1 '^# violation: ' <<<"$out" || true)"
        if grep -q '^ok 1' <<<"$out" || [[ -z "$first" ]]; then
                echo "MISSED $name"
                missed=$((missed + 1))
        else
                echo "caught $name: ${first#\# violation: }"
        fi
        # The run directory, kept because the run failed.
        kept="$(sed -nE 's/^# kept (\/tmp\/lockbus-torture-[A-Za-z0-9]+) .*/\1/p' <<<"$out")"
        [[ -z "$kept" ]] || rm -rf "$kept"
        rm -rf "$src"
}

# Waiters queued at the head: LIFO.
mutant lifo service/lock-table.c \
        'g_queue_push_tail_link(&r->waiters' 'g_queue_push_head_link(&r->waiters'
# A request that fits is granted although others wait.
mutant barge service/lock-table.c \
        'if (v != LOCK_VERDICT_GRANT || g_queue_is_empty(&r->waiters))' 'if (true)'
# Shared and exclusive compatible.
mutant overlap service/lock-table.c \
        'return held == LOCK_MODE_EXCLUSIVE || wanted == LOCK_MODE_EXCLUSIVE;' \
        'return held == LOCK_MODE_EXCLUSIVE && wanted == LOCK_MODE_EXCLUSIVE;'
# Tokens restart above the highest hold loaded, not above the reservation.
mutant tokens service/tokens.c 't->last = MAX(reservation, floor);' 't->last = floor;'
# Connection holds never taken back at start.
mutant noconn service/manager.c \
        'drop = "its connection is gone";' 'drop = "its connection is gone"; else drop = "mutant";'

exit $((missed > 0))
