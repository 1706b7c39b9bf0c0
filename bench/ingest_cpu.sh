#!/usr/bin/env bash
# bench/ingest_cpu.sh - postern-ingest's CPU per accepted message, A/B.
#
#   bench/ingest_cpu.sh INGEST_BIN [INGEST_BIN ...]
#
# Wall-clock rates on a shared machine move with the others' load; CPU
# per message does much less, and instruction counts not at all.  For each
# of RUNS rounds, each binary in turn (interleaved A, B, A, B ...) gets a
# fresh spool and the load of bench/ingest.sh (smtp-source -L, SESSIONS
# sessions, MESSAGES messages of SIZE bytes); the figure is the daemon's
# utime+stime (both threads, /proc/PID/stat) from "daemon started" to the
# end of the load, divided by MESSAGES.  Prints the median per binary.
#
# CALLGRIND=1: instead, one round per binary under valgrind's callgrind,
# counters zeroed once the daemon has started (callgrind_control -z) and
# dumped after the load: instructions per message, and the profile in
# $OUT/callgrind.out.N (callgrind_annotate it).  Repeatable whatever the load.
#
# Environment: RUNS (5), MESSAGES (2000), SESSIONS (20), SIZE (4096),
# CALLGRIND (0), OUT (a directory to keep the callgrind files; default: none).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

bench_need_postfix smtp-source
[[ $# -ge 1 ]] || bench_die "usage: bench/ingest_cpu.sh INGEST_BIN [INGEST_BIN ...]"
for bin in "$@"; do
    [[ -x $bin ]] || bench_die "$bin is not an executable"
done

RUNS=${RUNS:-5}
MESSAGES=${MESSAGES:-2000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
CALLGRIND=${CALLGRIND:-0}
RCPT=restricted@abakus.no
clk_tck=$(getconf CLK_TCK)

tmp=$(mktemp -d "${BENCH_TMP:-/var/tmp}/postern-bench-ingest-cpu.XXXXXX")
trap 'bench_cleanup; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# "utime stime" of pid $1, in clock ticks (fields 14 and 15; the comm may hold spaces).
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"
}

# One round: binary $1, tag $2; prints µs of CPU (or instructions) per message.
run_one() {
    local bin=$1 tag=$2 dir=$tmp/$2 port pid t0 t1
    rm -rf "$dir"
    mkdir -p "$dir"
    port=$(bench_free_port)
    bench_ingest_config "$dir" "$port" "$RCPT"
    if [[ $CALLGRIND == 1 ]]; then
        bench_spawn "$dir/ingest.log" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
            "$bin" -c "$dir/postern.ini" -f
    else
        bench_spawn "$dir/ingest.log" "$bin" -c "$dir/postern.ini" -f
    fi
    pid=$BENCH_PID
    bench_wait_log "$dir/ingest.log" "daemon started" 120 "$pid" ||
        bench_die "$bin did not start: $(tail -5 "$dir/ingest.log")"
    if [[ $CALLGRIND == 1 ]]; then
        callgrind_control -z "$pid" >/dev/null 2>&1
    else
        t0=$(cpu_ticks "$pid")
    fi
    smtp-source -L -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@example.org -t "$RCPT" \
        "127.0.0.1:$port" >"$dir/source.log" 2>&1 || bench_die "smtp-source failed: $(tail -3 "$dir/source.log")"
    if [[ $CALLGRIND == 1 ]]; then
        callgrind_control -d "$pid" >/dev/null 2>&1
        bench_stop "$pid"
        local dumps=("$dir"/callgrind.out.*) dump
        dump=${dumps[0]}
        if [[ -n ${OUT:-} ]]; then
            mkdir -p "$OUT"
            cp "$dump" "$OUT/callgrind.out.$tag"
        fi
        awk -v n="$MESSAGES" '/^(summary|totals):/ { ir = $2 } END { printf "%.0f\n", ir / n }' "$dump"
    else
        t1=$(cpu_ticks "$pid")
        bench_stop "$pid"
        # total, then user (the user share is the daemon's own code; the rest is the kernel's)
        awk -v a="$t0" -v b="$t1" -v hz="$clk_tck" -v n="$MESSAGES" 'BEGIN {
            split(a, x, " "); split(b, y, " "); k = 1e6 / hz / n
            printf "%.1f %.1f\n", (y[1] + y[2] - x[1] - x[2]) * k, (y[1] - x[1]) * k }'
    fi
}

unit=$([[ $CALLGRIND == 1 ]] && echo "instructions/msg" || echo "CPU us/msg")
[[ $CALLGRIND == 1 ]] && RUNS=1
bench_log "postern-ingest $unit: smtp-source -L -s $SESSIONS -m $MESSAGES -l $SIZE, $RUNS round(s), load: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A total user
for ((round = 1; round <= RUNS; round++)); do
    line="round $round:"
    for ((b = 1; b <= $#; b++)); do
        read -r t u < <(run_one "${!b}" "$b-$round")
        total[$b]="${total[$b]:-} $t"
        user[$b]="${user[$b]:-} ${u:-}"
        line="$line  [$b] $t${u:+ (user $u)}"
    done
    bench_log "$line"
done
for ((b = 1; b <= $#; b++)); do
    # shellcheck disable=SC2086
    echo "[$b] ${!b}: median $(bench_median ${total[$b]}) $unit  (${total[$b]# })"
    if [[ $CALLGRIND != 1 ]]; then
        # shellcheck disable=SC2086
        echo "[$b]   of which user: median $(bench_median ${user[$b]}) us/msg  (${user[$b]# })"
    fi
done
bench_log "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
