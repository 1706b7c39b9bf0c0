#!/usr/bin/env bash
# bench/memory.sh - peak memory of every Postern process (SPEC §7: "every
# process under 64 MiB RSS at steady load; a 30 MiB message processed with
# peak RSS under 4x its size").
#
#   bench/memory.sh [BUILD_DIR]          (default: $POSTERN_BUILD, else ./build)
#
# Builds nothing: give it a release build.  Each figure runs the whole relay
# with `postern run` (postern, postern-ingest, postern-dispatch,
# postern-transform, WORKERS postern-sender) on a fresh spool, delivering
# to one local `smtp-sink` (discards), while bench/lib/memwatch.py samples
# /proc/PID/status of the whole process tree every 50 ms:
#   a  the ingest benchmark's load (bench/ingest.sh): smtp-source -L -s 20
#      -m 5000 -l 4096 into postern-ingest, then until the transform has
#      taken every message (no token: each is rejected, no notice);
#   b  the delivery load of bench/dispatch_scale.sh: a spool filled by
#      bench/spool_fill with DELIVER_N pending deliveries, until DELIVER_K
#      are sent;
#   c  one BIG_MIB (30) MiB message (multipart: text, token part, a base64
#      attachment) with a registered token, over LMTP, through transform
#      (personalised, DKIM-signed) and a sender worker to the sink, until its
#      delivery and the owner's notice are sent.
# Goal per process: VmHWM (the kernel's peak RSS) < 64 MiB in a and b,
# < 4 x BIG_MIB MiB in c.  VmHWM includes the pages of the LMDB map the
# process touched (RssFile: page cache, shared, reclaimable); the table
# shows the largest sampled RssAnon and RssFile beside it.
#
# Environment: MESSAGES (5000), SESSIONS (20), SIZE (4096), DELIVER_N
# (100000), DELIVER_K (20000), BIG_MIB (30), WORKERS (2), SLOTS (4),
# FIGURES ("a b c"), BENCH_TMP (/var/tmp).  Exit 0 only if every goal is met.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

bench_use_build "${1:-}" ingest/postern-ingest dispatch/postern-dispatch sender/postern-sender transform/postern-transform tools/spoolctl tools/postern bench/spool_fill
bench_need_postfix smtp-source smtp-sink

MESSAGES=${MESSAGES:-5000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
DELIVER_N=${DELIVER_N:-100000}
DELIVER_K=${DELIVER_K:-20000}
BIG_MIB=${BIG_MIB:-30}
WORKERS=${WORKERS:-2}
SLOTS=${SLOTS:-4}
FIGURES=${FIGURES:-a b c}
RCPT=restricted@abakus.no
PY=/usr/bin/python3

tmp=$(mktemp -d "${BENCH_TMP:-/var/tmp}/postern-bench-memory.XXXXXX")
chmod 755 "$tmp"
CHAIN_PID="" WATCH_PID="" WATCH_OUT=""
missed=0
results=()

# Stop the chain: the sampler first (its last pass is the figure), then
# `postern run` (it stops its children), then any child it left, by pid.
stop_chain() {
    [[ -n $WATCH_PID ]] && { bench_stop "$WATCH_PID" || true; }
    [[ -n $CHAIN_PID ]] && { bench_stop "$CHAIN_PID" || true; }
    if [[ -n $WATCH_OUT && -f $WATCH_OUT.pids ]]; then
        local pid
        while read -r pid; do
            if grep -qs "$build" "/proc/$pid/cmdline"; then
                kill -TERM "$pid" 2>/dev/null || true
                sleep 1
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$WATCH_OUT.pids"
    fi
    WATCH_PID="" CHAIN_PID=""
}
trap 'stop_chain || true; bench_cleanup || true; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

sink_port=$(bench_free_port)
# shellcheck disable=SC2046
bench_spawn "$tmp/sink.log" smtp-sink $(bench_sink_user_args) "127.0.0.1:$sink_port" 1024
bench_wait_port "$sink_port" 30 || bench_die "smtp-sink did not start: $(cat "$tmp/sink.log")"

# A fresh directory and config for figure $1; sets DIR, PORT.
setup() {
    DIR=$tmp/$1
    PORT=$(bench_free_port)
    mkdir -p "$DIR"
    cat >"$DIR/postern.ini" <<EOF
[spool]
dir = $DIR/spool
max_size = 64G
[ingest]
listen = 127.0.0.1:$PORT
recipients = $RCPT
max_connections = 1000
hostname = bench.test
[rewrite]
from = Abakus <no-reply@abakus.no>
unsubscribe_url = https://abakus.no/users/me/settings/notifications
[dkim]
domain = abakus.no
[relay]
url = smtp://127.0.0.1:$sink_port
tls = none
max_connections = $((WORKERS * SLOTS))
[bounce]
envelope_from = restricted-bounces@abakus.no
[workers]
dispatch = ipc://$DIR/spool/run/dispatch
hints = ipc://$DIR/spool/run/hints
count = $WORKERS
slots = $SLOTS
transforms = 1
EOF
}

start_chain() {
    bench_spawn "$DIR/postern.log" "$build/tools/postern" -c "$DIR/postern.ini" run
    CHAIN_PID=$BENCH_PID
    WATCH_OUT=$DIR/memwatch
    bench_spawn "$DIR/memwatch.log" "$PY" "$here/lib/memwatch.py" "$CHAIN_PID" "$WATCH_OUT" 0.05
    WATCH_PID=$BENCH_PID
    bench_wait_port "$PORT" 30 || bench_die "postern-ingest did not listen: $(tail -5 "$DIR/postern.log")"
    # Every sender worker connected to the dispatcher.
    local i
    for ((i = 0; i < 600; i++)); do
        (($(grep -c '(sender) connected' "$DIR/postern.log" || true) >= WORKERS)) && return 0
        sleep 0.05
    done
    bench_die "sender workers did not connect: $(tail -5 "$DIR/postern.log")"
}

count_sent() { grep -c 'status=sent' "$DIR/postern.log" 2>/dev/null || true; }

stat_json() { "$build/tools/spoolctl" -c "$DIR/postern.ini" --json stats; }

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds.
wait_for() {
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < deadline)) || bench_die "$what: not done in ${limit}s: $(tail -3 "$DIR/postern.log")"
        kill -0 "$CHAIN_PID" 2>/dev/null || bench_die "postern run died: $(tail -5 "$DIR/postern.log")"
        sleep 0.2
    done
}

# report FIGURE LIMIT_MIB: one row per process, GOAL MET/MISSED for the figure.
report() {
    local fig=$1 limit=$2 ok=1 pid name hwm anon file verdict
    [[ -s $WATCH_OUT ]] || bench_die "figure $fig: no memory samples"
    while read -r pid name hwm anon file; do
        verdict=ok
        if ((hwm >= limit * 1024)); then
            verdict=OVER
            ok=0
        fi
        results+=("$(printf '%-3s %-20s %8.1f %8.1f %8.1f  < %3d  %s' "$fig" "$name" \
                     "$(bc -l <<<"$hwm/1024")" "$(bc -l <<<"$anon/1024")" \
                     "$(bc -l <<<"$file/1024")" "$limit" "$verdict")")
    done <"$WATCH_OUT"
    if ((ok)); then
        results+=("figure $fig: every process under $limit MiB: GOAL MET")
    else
        results+=("figure $fig: a process reached $limit MiB or more: GOAL MISSED")
        missed=1
    fi
}

incoming_zero() {
    [[ $(stat_json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["messages"]["incoming"])') == 0 ]]
}

figure_a() {
    setup a
    start_chain
    bench_log "a: smtp-source -L -s $SESSIONS -m $MESSAGES -l $SIZE into postern-ingest"
    if ! smtp-source -L -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@example.org -t "$RCPT" \
            "127.0.0.1:$PORT" >"$DIR/source.log" 2>&1; then
        bench_die "smtp-source failed: $(tail -3 "$DIR/source.log")"
    fi
    wait_for 300 "transform of $MESSAGES messages" incoming_zero
    stop_chain
    report a 64
}

sent_at_least() { (($(count_sent) >= $1)); }

figure_b() {
    setup b
    local out
    out=$("$build/bench/spool_fill" "$DIR/spool" "$DELIVER_N" 1 4096 2>"$DIR/fill.log") ||
        bench_die "spool_fill failed: $(tail -3 "$DIR/fill.log")"
    bench_log "b: $out; until $DELIVER_K are sent"
    start_chain
    wait_for 600 "$DELIVER_K deliveries" sent_at_least "$DELIVER_K"
    stop_chain
    report b 64
}

figure_c() {
    setup c
    start_chain
    local token
    token=$("$build/tools/spoolctl" -c "$DIR/postern.ini" token add --from owner@example.org \
            --rcpt big@sink.test) || bench_die "spoolctl token add failed"
    bench_log "c: one $BIG_MIB MiB message over LMTP"
    "$PY" - "$PORT" "$token" "$BIG_MIB" "$RCPT" <<'EOF' || bench_die "sending the big message failed"
import base64, os, smtplib, sys
port, token, mib, rcpt = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
head = ("From: Owner <owner@example.org>\r\nTo: " + rcpt + "\r\nSubject: big\r\n"
        "Message-ID: <big@example.org>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n"
        "--b0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHere is the file.\r\n"
        "--b0\r\nContent-Type: text/plain\r\n\r\nLEGOTOKEN" + token + "\r\n"
        "--b0\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=\"big.bin\"\r\n\r\n").encode()
tail = b"--b0--\r\n"
room = mib * 1024 * 1024 - len(head) - len(tail)
raw = os.urandom(room // 78 * 57)   # 76 base64 characters + CRLF per 57 bytes
b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
msg = head + b64 + tail
lmtp = smtplib.LMTP("127.0.0.1", port)
result = lmtp.sendmail("owner@example.org", [rcpt], msg)
lmtp.quit()
print(f"sent {len(msg)} bytes", file=sys.stderr)
if result:
    sys.exit(f"refused: {result}")
EOF
    # Its delivery, and the owner's notice ("1 recipient").
    wait_for 600 "the big message's delivery and notice" sent_at_least 2
    stop_chain
    local rejected
    rejected=$(grep -c 'state=rejected\|state=hold' "$DIR/postern.log" || true)
    ((rejected == 0)) || bench_die "figure c: the big message was rejected or held: $(grep -m1 'state=rejected\|state=hold' "$DIR/postern.log")"
    report c $((4 * BIG_MIB))
}

bench_log "memory: build $build; runs under $tmp"
for f in $FIGURES; do
    "figure_$f"
done

printf '%-3s %-20s %8s %8s %8s  %s\n' fig process "VmHWM" "anonMax" "fileMax" "(MiB) goal"
printf '%s\n' "${results[@]}"
exit "$missed"
