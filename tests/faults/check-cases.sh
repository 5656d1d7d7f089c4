#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# meson.build registers each case of a fault test program as a test of its
# own (so one failing case does not hide the others). This checks that the
# program's cases (PROGRAM -l) are exactly the ones meson.build lists.
#
# Usage: check-cases.sh PROGRAM CASE...
set -eu

program=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$program" -l | grep '^/' | sort >"$tmp/program"
for c in "$@"; do
        echo "$c"
done | sort >"$tmp/meson"

if ! cmp -s "$tmp/program" "$tmp/meson"; then
        echo "The cases of $program (<) and those tests/faults/meson.build registers (>) differ:" >&2
        diff "$tmp/program" "$tmp/meson" >&2 || true
        exit 1
fi
