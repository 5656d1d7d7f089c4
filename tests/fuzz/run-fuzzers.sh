#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Runs every libFuzzer target of tests/fuzz for a bounded time: configures
# (or reuses) a clang build with -Dfuzzers=true, builds the fuzz-TARGET
# binaries and runs each on a scratch copy of corpus/TARGET/ plus
# regressions/TARGET/ (the committed corpus is never written).
#
#   tests/fuzz/run-fuzzers.sh [BUILDDIR]        (default: build-fuzz)
#
# Environment:
#   FUZZ_SECONDS   per target (default 30): -max_total_time
#   FUZZ_RSS_MB    per target (default 2048): -rss_limit_mb
#   FUZZ_TARGETS   space-separated subset (default: every fuzz-*.c)
#   FUZZ_ARGS      more libFuzzer arguments, e.g. "-jobs=2 -workers=2"
#   FUZZ_CC        the compiler for a new BUILDDIR (default clang)
#   WERROR         false turns off -Dwerror=true
#
# A crash, leak, sanitizer report, timeout or OOM fails the target: the
# report is shown, the input is printed in hex and kept in
# BUILDDIR/fuzz-artifacts/TARGET/; add it to tests/fuzz/regressions/TARGET/
# and it runs in every build from then on (meson test --suite fuzz). Reproduce
# with BUILDDIR/tests/fuzz/fuzz-TARGET FILE.
#
# Ends on "fuzzers: N passed, N failed"; exits non-zero if any target
# failed or could not be built.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

builddir="${1:-build-fuzz}"
seconds="${FUZZ_SECONDS:-30}"
rss_mb="${FUZZ_RSS_MB:-2048}"
werror="${WERROR:-true}"
read -r -a extra_args <<<"${FUZZ_ARGS:-}"

fuzz_dir="$repo/tests/fuzz"

setup_failed() {
        echo "run-fuzzers.sh: $*" >&2
        echo "fuzzers: 0 passed, 1 failed"
        exit 1
}

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
        read -r -a targets <<<"$FUZZ_TARGETS"
else
        targets=()
        for f in "$fuzz_dir"/fuzz-*.c; do
                t="$(basename "$f" .c)"
                t="${t#fuzz-}"
                [[ "$t" == main ]] || targets+=("$t")
        done
fi
((${#targets[@]} > 0)) || setup_failed "no fuzz targets"

fuzz_cc="${FUZZ_CC:-clang}"
command -v "${fuzz_cc%% *}" >/dev/null || setup_failed "no $fuzz_cc: the fuzzers need clang (and libclang-rt-14-dev)"

setup_args=(setup "-Dwerror=$werror" -Dtests=true -Dfuzzers=true)
if [[ -f "$builddir/meson-private/coredata.dat" ]]; then
        setup_args+=(--reconfigure)
elif [[ -d "$builddir/meson-private" ]]; then
        rm -rf "$builddir/meson-private"
fi
echo "\$ CC=$fuzz_cc meson ${setup_args[*]} $builddir"
CC="$fuzz_cc" meson "${setup_args[@]}" "$builddir" || setup_failed "meson setup failed"

compile_targets=()
for t in "${targets[@]}"; do
        compile_targets+=("fuzz-$t")
done
echo "\$ meson compile -C $builddir ${compile_targets[*]}"
meson compile -C "$builddir" "${compile_targets[@]}" || setup_failed "meson compile failed"

# The hold-file target writes a scratch store: keep it off the disk.
if [[ -z "${TMPDIR:-}" && -d /dev/shm && -w /dev/shm ]]; then
        export TMPDIR=/dev/shm
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/lockbus-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
# A GLib critical (API misuse) is a bug: abort. Warnings are only logged.
export G_DEBUG="${G_DEBUG:-fatal-criticals}"

hexdump_file() {
        if command -v xxd >/dev/null; then
                xxd "$1"
        else
                od -A x -t x1z -v "$1"
        fi
}

passed=0
failed=0
for t in "${targets[@]}"; do
        bin="$builddir/tests/fuzz/fuzz-$t"
        corpus="$work/$t/corpus"
        artifacts="$work/$t/artifacts"
        log="$work/$t/log"
        mkdir -p "$corpus" "$artifacts"

        for d in "$fuzz_dir/corpus/$t" "$fuzz_dir/regressions/$t"; do
                [[ -d "$d" ]] || continue
                find "$d" -maxdepth 1 -type f ! -name '.*' -exec cp -t "$corpus" {} +
        done

        args=(-max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=25
              -print_final_stats=1 -artifact_prefix="$artifacts/")
        [[ -f "$fuzz_dir/$t.dict" ]] && args+=(-dict="$fuzz_dir/$t.dict")
        args+=("${extra_args[@]}")

        echo "\$ fuzz-$t ${args[*]} CORPUS ($(find "$corpus" -type f | wc -l) seeds)"
        rc=0
        # Scratch files of the target (a crash leaves them) go with $work.
        TMPDIR="$work/$t" "$bin" "${args[@]}" "$corpus" >"$log" 2>&1 || rc=$?

        shopt -s nullglob
        found=("$artifacts"/*)
        shopt -u nullglob

        if ((rc == 0 && ${#found[@]} == 0)); then
                grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$log" | tail -n 2 || true
                echo "fuzz-$t: ok"
                passed=$((passed + 1))
                continue
        fi

        failed=$((failed + 1))
        echo "fuzz-$t: FAILED (exit status $rc); the end of its output:"
        tail -n 60 "$log"
        keep="$builddir/fuzz-artifacts/$t"
        mkdir -p "$keep"
        for a in "${found[@]}"; do
                cp "$a" "$keep/"
                echo
                echo "fuzz-$t: input $(basename "$a") ($(stat -c %s "$a") bytes), kept as $keep/$(basename "$a"):"
                hexdump_file "$a"
                echo "Add it as tests/fuzz/regressions/$t/NAME; reproduce with $bin $keep/$(basename "$a")"
        done
done

echo "fuzzers: $passed passed, $failed failed"
((failed == 0))
