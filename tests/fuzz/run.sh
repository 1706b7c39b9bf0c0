#!/bin/bash
# tests/fuzz/run.sh [SECONDS [TARGET...]] - build the libFuzzer targets and
# run each for SECONDS (default 20) over a copy of its seed corpus.
#
# Builds build-fuzz/ (clang, ASan+UBSan, every library with
# -fsanitize=fuzzer-no-link) when it is missing, then runs the targets one
# after the other. New inputs and crash artifacts go to
# build-fuzz/fuzz-run/TARGET/, never into tests/fuzz/corpus/. Exits 1 when
# any target crashes, leaks, times out or gets a sanitizer report; prints one
# summary line per target. A long run: tests/fuzz/run.sh 600.
# FUZZ_BUILD_DIR overrides the build directory. FUZZ_SEED fixes libFuzzer's
# seed, so a short run mutates the same inputs in the same order each time
# (the CI run does this: what passed here passes there, and any crash it
# finds is one a developer can replay); long runs leave it random.
set -euo pipefail

secs=${1:-20}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
case "$build" in /*) ;; *) build=$root/$build ;; esac

if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in "$here"/fuzz_*.c; do
        t=$(basename "$f" .c)
        targets+=("$t")
    done
fi

# Largest input per target: the SMTP reply limit (64 KiB) must be reachable;
# MIME and DATA inputs stay small enough for many executions per second.
max_len() {
    case "$1" in
    fuzz_smtp_reply) echo 72000 ;;
    fuzz_mime | fuzz_lmtp_data | fuzz_dkim_canon) echo 16384 ;;
    *) echo 4096 ;;
    esac
}

if ! command -v clang >/dev/null ||
    ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
    echo "run.sh: clang with libFuzzer is missing (apt-get install clang libclang-rt-14-dev)" >&2
    exit 1
fi

if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" "$root" -Dfuzz=true -Dtests=false \
        -Db_sanitize=address,undefined -Db_lundef=false >"${TMPDIR:-/tmp}/postern-fuzz-setup.$$" 2>&1 || {
        cat "${TMPDIR:-/tmp}/postern-fuzz-setup.$$" >&2
        rm -f "${TMPDIR:-/tmp}/postern-fuzz-setup.$$"
        exit 1
    }
    rm -f "${TMPDIR:-/tmp}/postern-fuzz-setup.$$"
fi
ninja_targets=()
for t in "${targets[@]}"; do
    ninja_targets+=("tests/fuzz/$t")
done
ninja -C "$build" "${ninja_targets[@]}" >/dev/null || ninja -C "$build" "${ninja_targets[@]}"

# Any report is fatal; libFuzzer records the input that caused it.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:allocator_may_return_null=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:abort_on_error=0
export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp
export G_SLICE=always-malloc G_DEBUG=gc-friendly,fatal-criticals
unset G_MESSAGES_DEBUG

work=$build/fuzz-run
status=0
passed=0
failed=0
for t in "${targets[@]}"; do
    exe=$build/tests/fuzz/$t
    dir=$work/$t
    rm -rf "$dir"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    if [ -d "$here/corpus/$t" ]; then
        cp "$here/corpus/$t"/* "$dir/corpus/"
    fi
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")"
        -print_final_stats=1 -artifact_prefix="$dir/artifacts/")
    [ -f "$here/$t.dict" ] && args+=(-dict="$here/$t.dict")
    [ -n "${FUZZ_SEED:-}" ] && args+=(-seed="$FUZZ_SEED")
    rc=0
    "$exe" "${args[@]}" "$dir/corpus" >"$dir/log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$dir/log" | grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' | tail -1 || true)
    cov=$(echo "$last" | awk '{print $2}')
    ft=$(echo "$last" | awk '{print $4}')
    corp=$(echo "$last" | awk '{print $6}')
    verdict=ok
    # A UBSan report halts, but check the log too in case an option was lost.
    if [ $rc -ne 0 ] || grep -qE 'runtime error:|ERROR: (Address|Leak|Undefined)Sanitizer|ERROR: libFuzzer' "$dir/log"; then
        verdict="FAILED (exit $rc; log $dir/log)"
        status=1
        failed=$((failed + 1))
    else
        passed=$((passed + 1))
    fi
    printf '%-18s %ss  execs=%s  cov=%s  ft=%s  corpus=%s  %s\n' "$t" "$secs" "${execs:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$verdict"
    if [ $rc -ne 0 ]; then
        grep -E 'ERROR:|SUMMARY:|runtime error:|invariant failed|Test unit written|^    #[0-9] ' "$dir/log" |
            head -30 | sed 's/^/    /' >&2
        ls "$dir/artifacts" | sed "s|^|    artifact: $dir/artifacts/|" >&2
    fi
done
echo "fuzz: $passed passed, $failed failed"
exit $status
