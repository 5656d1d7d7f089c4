#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The whole test suite: installs the dependencies, configures a build
# directory, builds, runs `meson test` and prints, as the last line,
#
#   N passed, N failed, N skipped
#
#   scripts/test.sh [BUILDDIR]      (default: build-test)
#
# What is counted: the TAP subtests of every test program (each g_test
# case is one), read from the TAP stream meson keeps in
# BUILDDIR/meson-logs/testlog.json; a test program that speaks no TAP counts
# as one test. "ok" passes, "ok # SKIP" is skipped, "not ok" fails,
# "not ok # TODO" (g_test_incomplete) is skipped, "ok # TODO" fails (as
# meson's UNEXPECTEDPASS). A program that fails as a whole (crash, timeout,
# bad exit status) without a failing subtest adds one failure.
#
# Exits non-zero if anything failed, if nothing passed, or if the build
# failed (then the last line is "0 passed, 1 failed").
#
# Environment: WERROR=false turns off -Dwerror=true (on by default, as in CI);
# MESON_TEST_ARGS adds arguments to `meson test` (e.g. "--suite unit").
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

builddir="${1:-build-test}"
werror="${WERROR:-true}"

build_failed() {
        echo "test.sh: $*" >&2
        echo "0 passed, 1 failed"
        exit 1
}

if ! "$repo/scripts/install-deps.sh"; then
        build_failed "installing the dependencies failed"
fi

python=/usr/bin/python3
[[ -x "$python" ]] || python=python3

# Configure (or reconfigure, so that the options below always apply).
setup_args=(setup "-Dwerror=$werror" "-Dtests=true")
if [[ -f "$builddir/meson-private/coredata.dat" ]]; then
        setup_args+=(--reconfigure)
elif [[ -d "$builddir/meson-private" ]]; then
        # Left over from a setup that failed half-way.
        rm -rf "$builddir/meson-private"
fi
echo "\$ meson ${setup_args[*]} $builddir"
meson "${setup_args[@]}" "$builddir" || build_failed "meson setup failed"

echo "\$ meson compile -C $builddir"
meson compile -C "$builddir" || build_failed "meson compile failed"

# A stale log from an earlier run must not be counted.
testlog="$builddir/meson-logs/testlog.json"
rm -f "$testlog"

read -r -a extra_args <<<"${MESON_TEST_ARGS:-}"
echo "\$ meson test -C $builddir --print-errorlogs ${extra_args[*]}"
meson_rc=0
meson test -C "$builddir" --print-errorlogs "${extra_args[@]}" || meson_rc=$?

[[ -f "$testlog" ]] || build_failed "meson test wrote no $testlog (exit status $meson_rc)"

# Count, print the per-program summary and, last, the totals.
summary_rc=0
"$python" - "$testlog" "$meson_rc" <<'EOF' || summary_rc=$?
import json
import re
import sys

testlog, meson_rc = sys.argv[1], int(sys.argv[2])

GOOD = {"OK", "EXPECTEDFAIL"}
TAP_RESULT = re.compile(r"^(not ok|ok)\b(.*)$")
DIRECTIVE = re.compile(r"#\s*(SKIP|TODO)\b", re.IGNORECASE)

def main():
    passed = failed = skipped = 0
    programs = {"ok": 0, "failed": 0, "skipped": 0}
    failed_names = []

    with open(testlog, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            test = json.loads(line)
            name, result = test["name"], test["result"]

            sub_passed = sub_failed = sub_skipped = 0
            is_tap = False
            for out in (test.get("stdout") or "").splitlines():
                m = TAP_RESULT.match(out)
                if not m:
                    continue
                is_tap = True
                ok = m.group(1) == "ok"
                d = DIRECTIVE.search(m.group(2))
                directive = d.group(1).upper() if d else None
                if directive == "SKIP":
                    sub_skipped += 1
                elif directive == "TODO":
                    if ok:
                        sub_failed += 1
                    else:
                        sub_skipped += 1
                elif ok:
                    sub_passed += 1
                else:
                    sub_failed += 1

            if not is_tap:
                if result in GOOD:
                    sub_passed = 1
                elif result == "SKIP":
                    sub_skipped = 1
                else:
                    sub_failed = 1
            elif result not in GOOD and result != "SKIP" and sub_failed == 0:
                # Crashed, timed out or exited badly after its last subtest.
                sub_failed = 1

            passed += sub_passed
            failed += sub_failed
            skipped += sub_skipped
            if sub_failed:
                programs["failed"] += 1
                failed_names.append(f"{name} ({result})")
            elif result == "SKIP":
                programs["skipped"] += 1
            else:
                programs["ok"] += 1

    if meson_rc != 0 and failed == 0:
        # meson test failed for a reason no test result shows.
        failed = 1
        failed_names.append(f"meson test (exit status {meson_rc})")

    total = sum(programs.values())
    print()
    print(f"test programs: {total} run, {programs['ok']} ok, "
          f"{programs['failed']} failed, {programs['skipped']} skipped")
    for n in failed_names:
        print(f"failed: {n}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed == 0 else 0

try:
    sys.exit(main())
except Exception:  # a broken log: say so, exit 3 (test.sh prints the count)
    import traceback
    traceback.print_exc()
    sys.exit(3)
EOF

if ((summary_rc != 0 && summary_rc != 1)); then
        # The parser itself broke: still end on a count.
        echo "0 passed, 1 failed"
        exit 1
fi
exit "$summary_rc"
