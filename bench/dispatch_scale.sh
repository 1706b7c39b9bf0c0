#!/usr/bin/env bash
# bench/dispatch_scale.sh - is the dispatcher's cost per delivery flat from
# 1k to 1M pending deliveries? (SPEC §7: "1 million pending deliveries,
# dispatch cost per delivery flat")
#
#   bench/dispatch_scale.sh [BUILD_DIR]     (default: $POSTERN_BUILD, else ./build)
#
# Builds nothing: give it a release build.  For each size N in SIZES, fills
# a fresh spool with bench/spool_fill (N/RCPTS notice messages of RCPTS
# ready deliveries each, 4 KiB signed-looking copies: no transform
# needed; RCPTS 1 is the worst case, a job and a transaction for every
# delivery; PERSONAL=1 gives each delivery a header block of its own and
# a transaction of its own, as personalised copies have), then
# per round: starts postern-dispatch, reads its CPU time (schedstat of
# /proc/PID/stat, every thread), starts WORKERS postern-sender workers
# (SLOTS slots each, [relay] max_connections = WORKERS*SLOTS) delivering to
# one local `smtp-sink` (discards), and stops the clock once K deliveries
# (all of them if N <= K) are recorded sent.  Prints per size the median
# deliveries/s and dispatcher CPU microseconds per delivery.  A round
# consumes K deliveries; the spool is filled again when fewer than 90% of
# N would be left pending.
# Goal: median CPU per delivery at the largest size <= FLAT x the smallest.
#
# Environment: SIZES ("1000 100000 1000000", pending deliveries), K (20000),
# RUNS (3), RCPTS (1), PERSONAL (0), WORKERS (2), SLOTS (8, as [workers]
# slots), FLAT (1.3), ROUND_LIMIT (seconds per round, 300),
# BENCH_TMP (/var/tmp: spools on the real disk, where fsync costs what it costs).
# AB=PATH: another postern-dispatch binary (a build from before a change);
# each round then runs it too, on the same spool right after, and both are
# reported: on a shared machine, interleaved rounds are the fair comparison.
# Exit 0 only if the goal is met.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

bench_use_build "${1:-}" bench/spool_fill dispatch/postern-dispatch sender/postern-sender
bench_need_postfix smtp-sink

SIZES=${SIZES:-1000 100000 1000000}
K=${K:-20000}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-2}
SLOTS=${SLOTS:-8}
RCPTS=${RCPTS:-1}
PERSONAL=${PERSONAL:-0}
FLAT=${FLAT:-1.3}
ROUND_LIMIT=${ROUND_LIMIT:-300}
AB=${AB:-}
[[ -z $AB || -x $AB ]] || bench_die "AB=$AB is not an executable"

tmp=$(mktemp -d "${BENCH_TMP:-/var/tmp}/postern-bench-scale.XXXXXX")
trap 'bench_cleanup || true; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# utime + stime of a process, all its threads, in clock ticks.
# CPU nanoseconds of a process, all its threads (/proc/PID/task/*/schedstat:
# utime+stime of /proc/PID/stat counts 10 ms ticks, a quarter of what a
# 1k-pending round measures).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%d", s }'; }

count_sent() { grep -c 'status=sent' "$1" 2>/dev/null || true; }

sink_port=$(bench_free_port)
# shellcheck disable=SC2046
bench_spawn "$tmp/sink.log" smtp-sink $(bench_sink_user_args) "127.0.0.1:$sink_port" 1024
bench_wait_port "$sink_port" 30 || bench_die "smtp-sink did not start: $(cat "$tmp/sink.log")"

write_config() {
    local dir=$1
    cat >"$dir/postern.ini" <<EOF
[spool]
dir = $dir/spool
max_size = 64G
[relay]
url = smtp://127.0.0.1:$sink_port
tls = none
max_connections = $((WORKERS * SLOTS))
[workers]
dispatch = ipc://$dir/spool/run/dispatch
hints = ipc://$dir/spool/run/hints
slots = $SLOTS
EOF
}

fill() {
    local n=$1 dir=$2 out
    rm -rf "$dir"
    mkdir -p "$dir"
    write_config "$dir"
    out=$("$build/bench/spool_fill" "$dir/spool" "$((n / RCPTS))" "$RCPTS" 4096 5000 "$PERSONAL" 2>"$dir/fill.log") ||
        bench_die "spool_fill failed: $(tail -3 "$dir/fill.log")"
    bench_log "  fill: $out"
}

# One round on the spool in $dir: sets ROUND to "rate cpu_us_per_delivery sent".
# (Not in a subshell: the EXIT trap must know every pid it started.)
round() {
    local dir=$1 want=$2 bin=${3:-$build/dispatch/postern-dispatch}
    local log=$dir/dispatch.$RANDOM.log d c0 c1 t0 t1 sent deadline orphans
    local pids=()
    bench_spawn "$log" "$bin" -c "$dir/postern.ini" -f
    d=$BENCH_PID
    bench_wait_log "$log" "daemon started" 30 "$d" || bench_die "postern-dispatch did not start: $(tail -5 "$log")"
    c0=$(cpu_ns "$d")
    t0=$(bench_now)
    for ((w = 1; w <= WORKERS; w++)); do
        bench_spawn "$dir/sender-$w.log" "$build/sender/postern-sender" -c "$dir/postern.ini" -f
        pids+=("$BENCH_PID")
    done
    deadline=$((SECONDS + ROUND_LIMIT))
    while :; do
        sent=$(count_sent "$log")
        ((sent >= want)) && break
        kill -0 "$d" 2>/dev/null || bench_die "postern-dispatch died: $(tail -5 "$log")"
        ((SECONDS < deadline)) || bench_die "only $sent of $want deliveries in ${ROUND_LIMIT}s"
        sleep 0.1
    done
    c1=$(cpu_ns "$d")
    t1=$(bench_now)
    sent=$(count_sent "$log")
    for pid in "${pids[@]}"; do bench_stop "$pid" || true; done
    bench_stop "$d" || true
    # Jobs the last round's dispatcher sent as its senders stopped hold
    # connections until their leases run out ([retry] lease): say so, the
    # round then had fewer connections and smaller commits.
    orphans=$(sed -n 's/.*relay connections: \([0-9]*\) job(s) leased before our start.*/\1/p' "$log")
    if [[ ${orphans:-0} -gt 0 ]]; then
        bench_log "  (this round began with $orphans lease(s) of the last one holding connections)"
    fi
    ROUND=$(awk -v n="$sent" -v a="$t0" -v b="$t1" -v c="$((c1 - c0))" \
        'BEGIN { printf "%.1f %.1f %d", n / (b - a), c / 1e3 / n, n }')
}

bench_log "dispatch scale: sizes $SIZES, K=$K, $RUNS rounds, $RCPTS recipient(s) a message (personalised: $PERSONAL), $WORKERS workers x $SLOTS slots -> smtp-sink"
bench_log "build: $build; spools under $tmp"
declare -A rate_med cpu_med
first="" last=""
for n in $SIZES; do
    dir=$tmp/n$n
    want=$((n < K ? n : K))
    left=0
    rates=() cpus=() ab_cpus=()
    for ((r = 1; r <= RUNS; r++)); do
        if ((left < n * 9 / 10)); then
            fill "$n" "$dir"
            left=$n
        fi
        round "$dir" "$want"
        read -r rate cpu sent <<<"$ROUND"
        left=$((left - sent))
        rates+=("$rate")
        cpus+=("$cpu")
        bench_log "  N=$n round $r: $sent delivered, $rate deliveries/s," \
            "dispatcher $cpu us CPU per delivery (load $(cut -d' ' -f1 /proc/loadavg))"
        [[ -n $AB ]] || continue
        # The other binary on what is left: refill first if too little is.
        if ((left < n * 9 / 10)); then
            fill "$n" "$dir"
            left=$n
        fi
        round "$dir" "$want" "$AB"
        read -r rate cpu sent <<<"$ROUND"
        left=$((left - sent))
        ab_cpus+=("$cpu")
        bench_log "  N=$n round $r, AB: $sent delivered, $rate deliveries/s," \
            "dispatcher $cpu us CPU per delivery (load $(cut -d' ' -f1 /proc/loadavg))"
    done
    rate_med[$n]=$(bench_median "${rates[@]}")
    cpu_med[$n]=$(bench_median "${cpus[@]}")
    [[ -z $AB ]] || bench_log "N=$n median dispatcher CPU us/delivery:" \
        "$build ${cpu_med[$n]}, AB $(bench_median "${ab_cpus[@]}")"
    rm -rf "$dir"
    [[ -n $first ]] || first=$n
    last=$n
done

printf '%-10s %-8s %-16s %-22s\n' "pending" "K" "deliveries/s" "dispatch CPU us/dlv"
for n in $SIZES; do
    printf '%-10s %-8s %-16s %-22s\n' "$n" "$((n < K ? n : K))" "${rate_med[$n]}" "${cpu_med[$n]}"
done
ratio=$(awk -v a="${cpu_med[$last]}" -v b="${cpu_med[$first]}" 'BEGIN { printf "%.2f", a / b }')
if awk -v r="$ratio" -v f="$FLAT" 'BEGIN { exit !(r <= f) }'; then
    echo "dispatch CPU per delivery at $last / at $first = $ratio (goal <= $FLAT): GOAL MET"
else
    echo "dispatch CPU per delivery at $last / at $first = $ratio (goal <= $FLAT): GOAL MISSED"
    exit 1
fi
