#!/usr/bin/env bash
# bench/api.sh - the platform bridge's speed and memory (issue 10).
#
#   bench/api.sh [BUILD_DIR]        (default: $POSTERN_BUILD, else ./build)
#
# Builds nothing: give it a release build.  Each of RUNS rounds measures,
# on fresh spools:
#   tokens  TOKENS tokens of one recipient each, POSTed to postern-api one
#           per request over keep-alive connections (bench/lib/
#           api_tokens.py): for each number C in CONNS, a slice of them
#           over C connections at once (each waits for its answer before
#           its next request; C=1 is one client alone, bounded by one
#           durable commit per request; more clients share commits).
#           Against `spoolctl token import` of all of them (one process,
#           one transaction): tokens/s, including spoolctl's start;
#   big     BIG_N tokens of BIG_RCPTS (5,000) recipients, one per request,
#           against one `spoolctl token import` of each: ms per token, the
#           round's median;
#   rss     postern-api's VmHWM (the kernel's peak RSS, /proc/PID/status)
#           after both loads;
#   claim   CLAIMS messages with a token go through postern-ingest, then
#           one postern-transform in pull mode ([token] claim_url) claims
#           each from bench/lib/claim_platform.py, which answers 200 at
#           once.  The figure is the transform's own "claim: ID: granted
#           in X ms" line: the time the mail waits on the claim, from
#           before its body is signed to the answer parsed (libcurl's
#           connection, the exchange, the parse).  p50 and p99 per round.
# The two sides of tokens and big take turns at going first, round by
# round.  Goals: >= 1,000 tokens/s; < 50 ms per 5,000-recipient token;
# claim p99 < 20 ms; VmHWM < 32 MiB.  The load average is printed with
# each round: the machine may be shared.
#
# Environment: RUNS (3), TOKENS (6000), CONNS ("1 16"), BIG_N (20), BIG_RCPTS
# (5000), CLAIMS (1000), BENCH_TMP (default /var/tmp, a real disk).  Exit 0 only
# if every goal is met.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

bench_use_build "${1:-}" api/postern-api ingest/postern-ingest dispatch/postern-dispatch transform/postern-transform tools/spoolctl

RUNS=${RUNS:-3}
TOKENS=${TOKENS:-6000}
read -r -a CONNS <<<"${CONNS:-1 16}"
BIG_N=${BIG_N:-20}
BIG_RCPTS=${BIG_RCPTS:-5000}
CLAIMS=${CLAIMS:-1000}
PY=/usr/bin/python3
spoolctl=$build/tools/spoolctl

tmp=$(mktemp -d "${BENCH_TMP:-/var/tmp}/postern-bench-api.XXXXXX")
trap 'bench_cleanup; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

loadavg() { cut -d' ' -f1 /proc/loadavg; }

# A config in $1 for a spool there; the rest of the lines from stdin.
write_config() {
    mkdir -p "$1/run"
    {
        printf '[spool]\ndir = %s/spool\nmap_size = 2G\n' "$1"
        cat
    } >"$1/postern.ini"
}

# Seconds taken by a command (its output discarded, its log lines kept in $tmp/timed.log).
timed() {
    local t0 t1
    t0=$(bench_now)
    "$@" >/dev/null 2>>"$tmp/timed.log"
    t1=$(bench_now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'
}

# postern-api's side: sets A_SECS (seconds of each slice of small tokens, one per CONNS),
# A_MS (median ms of the big), A_HWM (KiB).
# No subshell around the functions that start daemons: bench_cleanup must know their pids.
api_side() {
    local dir=$1 data=$2 port key out ms
    port=$(bench_free_port)
    write_config "$dir" <<EOF
[ingest]
recipients = restricted@abakus.no
[api]
listen = 127.0.0.1:$port
keys_file = $dir/api-keys
EOF
    key=$("$spoolctl" -c "$dir/postern.ini" api-key add bench tokens 2>>"$dir/spoolctl.log")
    bench_spawn "$dir/api.log" "$build/api/postern-api" -c "$dir/postern.ini" -f
    local pid=$BENCH_PID
    bench_wait_log "$dir/api.log" "daemon started" 30 "$pid" ||
        bench_die "postern-api did not start: $(tail -3 "$dir/api.log")"
    out=$("$PY" "$here/lib/api_tokens.py" post "$data" "$port" "$key" "${CONNS[@]}") ||
        bench_die "api_tokens.py post failed: $(tail -3 "$dir/api.log")"
    A_HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    bench_stop "$pid"
    read -r -a ms <<<"$out"
    A_SECS=("${ms[@]:0:${#CONNS[@]}}")
    A_MS=$(bench_median "${ms[@]:${#CONNS[@]}}")
}

# spoolctl's side: sets I_SECS and I_MS.
import_side() {
    local dir=$1 data=$2 f ms=()
    write_config "$dir" <<EOF
[ingest]
recipients = restricted@abakus.no
EOF
    I_SECS=$(timed "$spoolctl" -c "$dir/postern.ini" token import "$data/small.json")
    for f in "$data"/big-*.json; do
        ms+=("$(awk -v s="$(timed "$spoolctl" -c "$dir/postern.ini" token import "$f")" \
                 'BEGIN { printf "%.2f", 1000 * s }')")
    done
    I_MS=$(bench_median "${ms[@]}")
}

# One round of tokens and big, the sides taking turns at going first.
token_round() {
    local round=$1 dir=$tmp/tokens-$1
    mkdir -p "$dir/data"
    "$PY" "$here/lib/api_tokens.py" prepare "$dir/data" "$round" "$TOKENS" "$BIG_RCPTS" "$BIG_N"
    if ((round % 2)); then
        api_side "$dir/api" "$dir/data"
        import_side "$dir/import" "$dir/data"
    else
        import_side "$dir/import" "$dir/data"
        api_side "$dir/api" "$dir/data"
    fi
    rm -rf "$dir"
}

# The p-th percentile (nearest rank) of the numbers on stdin.
percentile() {
    sort -g | awk -v p="$1" '{ a[NR] = $1 } END {
        if (NR == 0) exit 1; r = int((p * NR + 99) / 100); print a[r < 1 ? 1 : r] }'
}

# One round of claims: sets C_P50, C_P99, C_MAX (ms).
claim_round() {
    local round=$1 dir=$tmp/claim-$1 port pport ptimes pids=() pid n
    port=$(bench_free_port)
    pport=$(bench_free_port)
    write_config "$dir" <<EOF
[ingest]
listen = 127.0.0.1:$port
recipients = restricted@abakus.no
[token]
claim_url = http://127.0.0.1:$pport/postern/claim
claim_secret_file = $dir/claim-secret
[dkim]
domain = abakus.no
keys = bench:$dir/key.pem
[rewrite]
from = Abakus <no-reply@abakus.no>
unsubscribe_url = https://abakus.no/users/me/settings/notifications
[relay]
url = maildir:$dir/outbox
[workers]
dispatch = ipc://$dir/run/dispatch
hints = ipc://$dir/run/hints
EOF
    (umask 077 && echo "claim-secret-of-the-bench-platform" >"$dir/claim-secret")
    "$spoolctl" -c "$dir/postern.ini" dkim keygen --type ed25519 --out "$dir/key.pem" \
        --selector bench >/dev/null
    "$PY" "$here/lib/token_mail.py" prepare "$dir" "$CLAIMS" 1 4096

    bench_spawn "$dir/platform.log" "$PY" "$here/lib/claim_platform.py" "$pport" r0@example.org
    pids+=("$BENCH_PID")
    bench_wait_port "$pport" 30 || bench_die "claim_platform.py did not listen"
    bench_spawn "$dir/ingest.log" "$build/ingest/postern-ingest" -c "$dir/postern.ini" -f
    pids+=("$BENCH_PID")
    bench_wait_log "$dir/ingest.log" "daemon started" 30 "$BENCH_PID" || bench_die "ingest did not start"
    "$PY" "$here/lib/token_mail.py" send "$dir/messages" "$port"
    bench_spawn "$dir/transform.log" "$build/transform/postern-transform" -c "$dir/postern.ini" -f
    pids+=("$BENCH_PID")
    bench_wait_log "$dir/transform.log" "daemon started" 30 "$BENCH_PID" ||
        bench_die "postern-transform did not start: $(tail -3 "$dir/transform.log")"
    bench_spawn "$dir/dispatch.log" "$build/dispatch/postern-dispatch" -c "$dir/postern.ini" -f
    pids+=("$BENCH_PID")
    until "$spoolctl" -c "$dir/postern.ini" --json stats | grep -q '"incoming":0[,}]'; do
        sleep 0.2
    done
    for pid in "${pids[@]}"; do
        bench_stop "$pid"
    done
    ptimes=$dir/claim-ms
    sed -n 's/.*claim: [0-9A-Fa-f]*: granted in \([0-9.]*\) ms.*/\1/p' "$dir/transform.log" >"$ptimes"
    n=$(wc -l <"$ptimes")
    ((n == CLAIMS)) || bench_die "claim round $round: $n of $CLAIMS claims granted: " \
        "$(grep -m1 'claim:' "$dir/transform.log")"
    C_P50=$(percentile 50 <"$ptimes") C_P99=$(percentile 99 <"$ptimes")
    C_MAX=$(percentile 100 <"$ptimes")
    rm -rf "$dir"
}

bench_log "postern-api: $TOKENS tokens of 1 recipient, $BIG_N of $BIG_RCPTS recipients," \
          "$CLAIMS claims; $RUNS rounds; build $build"
declare -A apis=()
imps=() abigs=() ibigs=() hwms=() p50s=() p99s=() loads=()
for ((round = 1; round <= RUNS; round++)); do
    load=$(loadavg)
    token_round "$round"
    claim_round "$round"
    ar="" per=$((TOKENS / ${#CONNS[@]}))
    for k in "${!CONNS[@]}"; do
        rate=$(bench_rate "$per" "${A_SECS[$k]}")
        apis[${CONNS[$k]}]+="$rate "
        ar+="$rate tokens/s over ${CONNS[$k]} connection(s), "
    done
    ir=$(bench_rate "$TOKENS" "$I_SECS")
    imps+=("$ir") abigs+=("$A_MS") ibigs+=("$I_MS") hwms+=("$A_HWM")
    p50s+=("$C_P50") p99s+=("$C_P99") loads+=("$load")
    bench_log "round $round (load $load): API ${ar%, }; import $ir tokens/s;" \
              "$BIG_RCPTS recipients: API $A_MS ms, import $I_MS ms; postern-api VmHWM" \
              "$((A_HWM / 1024)) MiB; claim p50 $C_P50 ms, p99 $C_P99 ms, max $C_MAX ms"
done

ir=$(bench_median "${imps[@]}")
abig=$(bench_median "${abigs[@]}") ibig=$(bench_median "${ibigs[@]}")
hwm=$(printf '%s\n' "${hwms[@]}" | sort -g | tail -1)
p50=$(bench_median "${p50s[@]}") p99=$(bench_median "${p99s[@]}")
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "NOT met"; fi; }
# The goal is the platform's: its workers at once, the last number of CONNS.
c=${CONNS[-1]}
# shellcheck disable=SC2086
ar=$(bench_median ${apis[$c]})
v1=$(verdict "$ar >= 1000") v2=$(verdict "$abig < 50") v3=$(verdict "$p99 < 20")
v4=$(verdict "$hwm < 32 * 1024")
missed=0
[[ "$v1$v2$v3$v4" != *NOT* ]] || missed=1
for k in "${CONNS[@]}"; do
    # shellcheck disable=SC2086
    echo "tokens, 1 recipient, one per request over $k connection(s): API" \
         "$(bench_median ${apis[$k]}) tokens/s"
done
echo "spoolctl token import of the same tokens: $ir tokens/s; API over $c connections /" \
     "import = $(awk -v a="$ar" -v b="$ir" 'BEGIN { printf "%.2f", a / b }'); goal >= 1000: $v1"
echo "token of $BIG_RCPTS recipients: API $abig ms, spoolctl token import $ibig ms; goal < 50 ms: $v2"
echo "claim round trip (transform's view): p50 $p50 ms, p99 $p99 ms; goal p99 < 20 ms: $v3"
echo "postern-api VmHWM: $(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }') MiB (largest" \
     "of the rounds); goal < 32 MiB: $v4"
echo "load average at the rounds' starts: ${loads[*]}"
exit "$missed"
