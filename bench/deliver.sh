#!/usr/bin/env bash
# bench/deliver.sh - delivery recipients/s to a local smtp-sink with 1, 2 and
# 4 postern-sender workers, against a private Postfix relaying the same
# load to the same sink in the same run; and the latency from the LMTP 250
# to the sink at light load (SPEC §7).  How: see bench/lib/deliver.py.
#
#   bench/deliver.sh [BUILD_DIR]          (default: $POSTERN_BUILD, else ./build)
#
# Builds nothing: give it a release build.  Needs root (Postfix).
# Environment: RUNS (3), MESSAGES (500), RCPTS (10 per message), SIZE (4096),
# LATENCY (200 messages), WORKERS ("1 2 4"), SLOTS ([workers] slots, 8),
# BENCH_TMP (/var/tmp).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

bench_use_build "${1:-}" ingest/postern-ingest dispatch/postern-dispatch sender/postern-sender transform/postern-transform tools/spoolctl
bench_need_postfix smtp-sink smtp-source postfix postsuper
[[ $(id -u) -eq 0 ]] || bench_die "run as root: the private Postfix instance needs it"

POSTERN_BUILD=$build exec /usr/bin/python3 "$here/lib/deliver.py"
