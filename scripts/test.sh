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
# Two more passes, on by default when CI=true, each in a build directory of
# its own beside BUILDDIR:
#   - SANITIZE=1: BUILDDIR-sanitize, built with -Db_sanitize=address,undefined,
#     runs the whole suite again but the e2e suite (which installs into a
#     container) with ASan (leaks included) and UBSan fatal. The daemons the
#     tests start inherit that environment; a sanitizer report anywhere in a
#     test's output (e.g. from a lockbusd that the bus activated) fails that
#     test even if its cases passed.
#   - FUZZ=1: BUILDDIR-fuzz, a clang build with -Dfuzzers=true, runs each
#     libFuzzer target of tests/fuzz for FUZZ_SECONDS (default 30) through
#     tests/fuzz/run-fuzzers.sh; each target counts as one test.
# The last line sums every pass; it fails if any pass failed.
#
# Environment: WERROR=false turns off -Dwerror=true (on by default, as in CI);
# MESON_TEST_ARGS adds arguments to `meson test` (e.g. "--suite unit") in
# both meson passes, SANITIZE_TEST_ARGS to the sanitizer pass only (e.g.
# "--no-suite torture"); SANITIZE=0/1, FUZZ=0/1 and FUZZ_SECONDS as above.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

builddir="${1:-build-test}"
werror="${WERROR:-true}"
if [[ "${CI:-}" == true ]]; then
        sanitize="${SANITIZE:-1}"
        fuzz="${FUZZ:-1}"
else
        sanitize="${SANITIZE:-0}"
        fuzz="${FUZZ:-0}"
fi

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

# Configures (or reconfigures, so that the options always apply) and builds
# BUILDDIR with the given meson options.
configure_and_build() {
        local dir="$1"
        shift
        local setup_args=(setup "-Dwerror=$werror" "-Dtests=true" "$@")

        if [[ -f "$dir/meson-private/coredata.dat" ]]; then
                setup_args+=(--reconfigure)
        elif [[ -d "$dir/meson-private" ]]; then
                # Left over from a setup that failed half-way.
                rm -rf "$dir/meson-private"
        fi
        echo "\$ meson ${setup_args[*]} $dir"
        meson "${setup_args[@]}" "$dir" || return 1

        echo "\$ meson compile -C $dir"
        meson compile -C "$dir" || return 1
}

read -r -a extra_args <<<"${MESON_TEST_ARGS:-}"
read -r -a sanitize_args <<<"${SANITIZE_TEST_ARGS:-}"

# Runs meson test in BUILDDIR with more arguments; sets meson_rc. A stale
# log from an earlier run must not be counted.
run_meson_test() {
        local dir="$1"
        shift

        rm -f "$dir/meson-logs/testlog.json"
        echo "\$ meson test -C $dir --print-errorlogs ${extra_args[*]} $*"
        meson_rc=0
        meson test -C "$dir" --print-errorlogs "${extra_args[@]}" "$@" || meson_rc=$?
}

# What the summary counts: "meson:LABEL:RC:SCAN:TESTLOG" (SCAN=1: a
# sanitizer report in a test's output fails it) and
# "count:LABEL:PASSED:FAILED:WHAT".
passes=()

configure_and_build "$builddir" || build_failed "building $builddir failed"
run_meson_test "$builddir"
testlog="$builddir/meson-logs/testlog.json"
[[ -f "$testlog" ]] || build_failed "meson test wrote no $testlog (exit status $meson_rc)"
passes+=("meson::$meson_rc:0:$testlog")

if [[ "$sanitize" == 1 ]]; then
        sanitize_dir="$builddir-sanitize"
        echo
        echo "=== The suite under AddressSanitizer and UndefinedBehaviorSanitizer ($sanitize_dir, without e2e)"
        if configure_and_build "$sanitize_dir" -Db_sanitize=address,undefined; then
                # abort_on_error: a report kills the process (the daemon
                # vanishes from the bus, the test fails); G_SLICE: every
                # GLib allocation is a malloc() that LeakSanitizer sees;
                # LOCKBUS_SANITIZE tells a test that measures memory or runs
                # valgrind that it cannot here.
                ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:print_summary=1" \
                UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1" \
                G_SLICE=always-malloc LOCKBUS_SANITIZE=address,undefined \
                        run_meson_test "$sanitize_dir" --no-suite e2e --timeout-multiplier 3 "${sanitize_args[@]}"
                if [[ -f "$sanitize_dir/meson-logs/testlog.json" ]]; then
                        passes+=("meson:sanitize:$meson_rc:1:$sanitize_dir/meson-logs/testlog.json")
                else
                        passes+=("count:sanitize:0:1:meson test wrote no testlog.json (exit status $meson_rc)")
                fi
        else
                passes+=("count:sanitize:0:1:building $sanitize_dir failed")
        fi
fi

if [[ "$fuzz" == 1 ]]; then
        fuzz_dir="$builddir-fuzz"
        fuzz_log="$(mktemp)"
        echo
        echo "=== The fuzzers, ${FUZZ_SECONDS:-30} s each ($fuzz_dir)"
        fuzz_rc=0
        WERROR="$werror" "$repo/tests/fuzz/run-fuzzers.sh" "$fuzz_dir" 2>&1 | tee "$fuzz_log" || fuzz_rc=$?
        fuzz_counts="$(sed -n 's/^fuzzers: \([0-9]*\) passed, \([0-9]*\) failed$/\1:\2/p' "$fuzz_log" | tail -n 1)"
        rm -f "$fuzz_log"
        if [[ -z "$fuzz_counts" ]]; then
                fuzz_counts="0:1"
        elif ((fuzz_rc != 0)) && [[ "${fuzz_counts#*:}" == 0 ]]; then
                fuzz_counts="${fuzz_counts%:*}:1"
        fi
        passes+=("count:fuzzers:${fuzz_counts}:tests/fuzz/run-fuzzers.sh")
fi

# Count, print the per-program summary and, last, the totals.
summary_rc=0
"$python" - "${passes[@]}" <<'EOF' || summary_rc=$?
import json
import re
import sys

GOOD = {"OK", "EXPECTEDFAIL"}
TAP_RESULT = re.compile(r"^(not ok|ok)\b(.*)$")
DIRECTIVE = re.compile(r"#\s*(SKIP|TODO)\b", re.IGNORECASE)
# What ASan, LSan and UBSan print when they find something.
SANITIZER_REPORT = re.compile(
    r"ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|"
    r"SUMMARY: (Address|UndefinedBehavior)Sanitizer|: runtime error: ")

def sanitizer_report(test):
    """The first sanitizer report in the test's output (up to its SUMMARY
    line, at most 60 lines), or None."""
    for key in ("stdout", "stderr"):
        lines = (test.get(key) or "").splitlines()
        for i, out in enumerate(lines):
            if SANITIZER_REPORT.search(out):
                report = []
                for out in lines[i:i + 60]:
                    report.append(out)
                    if out.startswith("SUMMARY: "):
                        break
                return report
    return None

def count_meson(label, testlog, meson_rc, scan, failed_names):
    """Counts one meson test run; returns (passed, failed, skipped)."""
    passed = failed = skipped = 0
    programs = {"ok": 0, "failed": 0, "skipped": 0}
    prefix = f"{label}: " if label else ""

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

            report = sanitizer_report(test) if scan else None
            if report:
                # Also from a process the test did not wait for, e.g. a
                # lockbusd activated by the bus: its output is the test's.
                print(f"\n{prefix}{name}: sanitizer report in its output:")
                print("\n".join(report))
                if sub_failed == 0:
                    sub_failed = 1
                result = f"{result}, sanitizer report"

            passed += sub_passed
            failed += sub_failed
            skipped += sub_skipped
            if sub_failed:
                programs["failed"] += 1
                failed_names.append(f"{prefix}{name} ({result})")
            elif test["result"] == "SKIP":
                programs["skipped"] += 1
            else:
                programs["ok"] += 1

    if meson_rc != 0 and failed == 0:
        # meson test failed for a reason no test result shows.
        failed = 1
        failed_names.append(f"{prefix}meson test (exit status {meson_rc})")

    total = sum(programs.values())
    print(f"test programs{' (' + label + ')' if label else ''}: {total} run, "
          f"{programs['ok']} ok, {programs['failed']} failed, "
          f"{programs['skipped']} skipped")
    return passed, failed, skipped

def main():
    passed = failed = skipped = 0
    failed_names = []

    print()
    for spec in sys.argv[1:]:
        kind, rest = spec.split(":", 1)
        if kind == "meson":
            label, rc, scan, testlog = rest.split(":", 3)
            p, f, s = count_meson(label, testlog, int(rc), scan == "1", failed_names)
        else:
            label, p, f, what = rest.split(":", 3)
            p, f, s = int(p), int(f), 0
            print(f"{label}: {p + f} run, {p} ok, {f} failed ({what})")
            if f:
                failed_names.append(f"{label}: {what}")
        passed += p
        failed += f
        skipped += s

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
