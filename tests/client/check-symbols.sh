#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The ABI of liblockbus: the SONAME is liblockbus.so.1 and the library
# exports exactly the functions of lockbus.h, each listed in lockbus.sym
# under LIBLOCKBUS_1 (nothing of the linked-in common/ code, e.g.
# lockbus_error_map).
#
# Usage: check-symbols.sh LIBRARY LOCKBUS.SYM LOCKBUS.H
set -eu

lib=$1 sym=$2 header=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

readelf -d "$lib" | grep -q 'Library soname: \[liblockbus\.so\.1\]' || {
        echo "SONAME of $lib is not liblockbus.so.1:" >&2
        readelf -d "$lib" | grep SONAME >&2
        exit 1
}

# Defined dynamic symbols with their version, minus the version node itself.
nm -D --defined-only "$lib" | awk '{ print $3 }' | grep -v '^LIBLOCKBUS_1$' | sort >"$tmp/exported"
grep -oE '^[[:space:]]+lockbus_[a-z0-9_]+;' "$sym" | tr -d ' \t;' | sed 's/$/@@LIBLOCKBUS_1/' | sort >"$tmp/listed"
grep -oE '\blockbus_[a-z0-9_]+\(' "$header" | tr -d '(' | sed 's/$/@@LIBLOCKBUS_1/' | sort -u >"$tmp/declared"

status=0
if ! diff -u "$tmp/listed" "$tmp/exported" >&2; then
        echo "Exported symbols differ from lockbus.sym (- listed, + exported)" >&2
        status=1
fi
if ! diff -u "$tmp/declared" "$tmp/listed" >&2; then
        echo "lockbus.sym differs from the functions of lockbus.h (- declared, + listed)" >&2
        status=1
fi
[ "$status" = 0 ] && echo "$(wc -l <"$tmp/exported") symbols, all in LIBLOCKBUS_1, all declared in lockbus.h"
exit $status
