#!/usr/bin/env bash
# bench/ingest.sh - durable LMTP accepts/s of postern-ingest vs smtp-sink (SPEC §7).
#
#   bench/ingest.sh [BUILD_DIR]          (default: $POSTERN_BUILD, else ./build)
#
# Builds nothing.  For each of RUNS rounds, sends the same load with
#   smtp-source -L -s SESSIONS -m MESSAGES -l SIZE
# first into `smtp-sink -L` (no storage: the ceiling of this machine),
# then into postern-ingest with a fresh spool (every 250 after an fsync'd
# LMDB commit), then (as root) the same load over SMTP into a private
# Postfix smtpd that holds what it accepts (every 250 after its queue
# file's fsync), and prints the median rates and their ratios.
# Goal of SPEC §7: postern-ingest >= 50% of smtp-sink.
#
# Environment: RUNS (3), MESSAGES (5000), SESSIONS (20), SIZE (4096),
# POSTFIX (1 as root, else 0: the Postfix smtpd round),
# BENCH_TMP (a directory for the spools; default: mktemp -d under /var/tmp,
# on a real disk, so that fsync costs what it costs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

bench_use_build "${1:-}" ingest/postern-ingest
ingest_bin=$build/ingest/postern-ingest
spoolctl_bin=$build/tools/spoolctl
bench_need_postfix smtp-source smtp-sink

RUNS=${RUNS:-3}
MESSAGES=${MESSAGES:-5000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
RCPT=restricted@abakus.no
POSTFIX=${POSTFIX:-$([[ $(id -u) -eq 0 ]] && command -v postfix >/dev/null && echo 1 || echo 0)}

tmp=$(mktemp -d "${BENCH_TMP:-/var/tmp}/postern-bench-ingest.XXXXXX")
trap 'bench_cleanup; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

source_args=(-L -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@example.org -t "$RCPT")

# Time one smtp-source run against 127.0.0.1:$1; prints the seconds.
timed_source() {
    local port=$1 log=$2 t0 t1
    t0=$(bench_now)
    if ! smtp-source "${source_args[@]}" "127.0.0.1:$port" >"$log" 2>&1; then
        bench_die "smtp-source failed against port $port: $(tail -3 "$log")"
    fi
    t1=$(bench_now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

run_sink() {
    local round=$1 port secs
    port=$(bench_free_port)
    # shellcheck disable=SC2046
    bench_spawn "$tmp/sink-$round.log" smtp-sink -L $(bench_sink_user_args) "127.0.0.1:$port" 256
    local pid=$BENCH_PID
    bench_wait_port "$port" 30 || bench_die "smtp-sink did not start: $(cat "$tmp/sink-$round.log")"
    secs=$(timed_source "$port" "$tmp/source-sink-$round.log")
    bench_stop "$pid"
    echo "$secs"
}

run_ingest() {
    local round=$1 port secs dir=$tmp/ingest-$round
    mkdir -p "$dir"
    port=$(bench_free_port)
    bench_ingest_config "$dir" "$port" "$RCPT"
    bench_spawn "$dir/ingest.log" "$ingest_bin" -c "$dir/postern.ini" -f
    local pid=$BENCH_PID
    bench_wait_log "$dir/ingest.log" "daemon started" 30 "$pid" ||
        bench_die "postern-ingest did not start: $(tail -5 "$dir/ingest.log")"
    secs=$(timed_source "$port" "$tmp/source-ingest-$round.log")
    bench_stop "$pid"
    # Every message must really be in the spool.
    if [[ -x $spoolctl_bin ]]; then
        local stored
        stored=$("$spoolctl_bin" -c "$dir/postern.ini" --json stats |
                 /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"]["incoming"])')
        [[ $stored -eq $MESSAGES ]] || bench_die "round $round: $stored of $MESSAGES messages in the spool"
    fi
    rm -rf "$dir/spool"
    echo "$secs"
}

# The same load over SMTP into a private Postfix smtpd (bench/lib/postfix_accept.py).
run_postfix() {
    local round=$1 dir=$tmp/postfix-$round
    mkdir -p "$dir"
    chmod 755 "$tmp" "$dir"
    /usr/bin/python3 "$here/lib/postfix_accept.py" "$dir" "${source_args[@]:1}" ||
        bench_die "round $round: the Postfix smtpd round failed"
}

bench_log "postern-ingest vs smtp-sink: smtp-source ${source_args[*]}, $RUNS rounds"
bench_log "build: $build; spools under $tmp"
sink_rates=() ingest_rates=() postfix_rates=()
for ((round = 1; round <= RUNS; round++)); do
    s=$(run_sink "$round")
    i=$(run_ingest "$round")
    sr=$(bench_rate "$MESSAGES" "$s")
    ir=$(bench_rate "$MESSAGES" "$i")
    sink_rates+=("$sr")
    ingest_rates+=("$ir")
    line="round $round: smtp-sink $sr msgs/s (${s}s)  postern-ingest $ir msgs/s (${i}s)"
    if [[ $POSTFIX == 1 ]]; then
        p=$(run_postfix "$round")
        pr=$(bench_rate "$MESSAGES" "$p")
        postfix_rates+=("$pr")
        line="$line  postfix smtpd $pr msgs/s (${p}s)"
    fi
    bench_log "$line"
done

percent() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }
sink_med=$(bench_median "${sink_rates[@]}")
ingest_med=$(bench_median "${ingest_rates[@]}")
echo "smtp-sink median:      $sink_med msgs/s   (${sink_rates[*]})"
echo "postern-ingest median: $ingest_med msgs/s   (${ingest_rates[*]})"
if [[ $POSTFIX == 1 ]]; then
    postfix_med=$(bench_median "${postfix_rates[@]}")
    echo "postfix smtpd median:  $postfix_med msgs/s   (${postfix_rates[*]})"
    echo "postfix smtpd:         $(percent "$postfix_med" "$sink_med")% of smtp-sink"
    echo "postern-ingest:        $(awk -v a="$ingest_med" -v b="$postfix_med" 'BEGIN { printf "%.2f", a / b }')x postfix smtpd"
fi
echo "ratio:                 $(percent "$ingest_med" "$sink_med")% of smtp-sink (goal >= 50%)"
