#!/usr/bin/env bash
# bench/sender_cpu.sh - the senders' CPU per delivery of two or more builds,
# in interleaved rounds of deliver.sh's Postern round (bench/lib/deliver.py:
# MESSAGES x RCPTS personalised copies made ready, then WORKERS senders
# deliver them to smtp-sink).  CPU time, not rates: it compares builds on
# a busy machine.  How: see bench/lib/sender_cpu.py.
#
#   bench/sender_cpu.sh BUILD_DIR BUILD_DIR...
#
# Builds nothing: give it release builds (e.g. one per commit, or copies of
# one build with another sender/postern-sender).
# Environment: RUNS (3), MESSAGES (500), RCPTS (10), SIZE (4096), WORKERS (1),
# BENCH_TMP (/var/tmp).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

(($# >= 2)) || bench_die "usage: bench/sender_cpu.sh BUILD_DIR BUILD_DIR..."
builds=()
for b in "$@"; do
    bench_use_build "$b" ingest/postern-ingest dispatch/postern-dispatch \
        sender/postern-sender transform/postern-transform tools/spoolctl
    builds+=("$build")
done
bench_need_postfix smtp-sink

exec /usr/bin/python3 "$here/lib/sender_cpu.py" "${builds[@]}"
