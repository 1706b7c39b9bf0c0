#!/usr/bin/env bash
# bench/e2e.sh - the whole job end to end (issue 12): LMTP in to signed
# copies at a local smtp-sink, MESSAGES messages x RCPTS recipients, each
# message with its own token, personalised, DKIM RSA-2048; against a
# private Postfix with OpenDKIM (milter, RSA-2048) relaying the same
# messages to the same sink in the same run (one transaction of RCPTS
# recipients per message).  Recipients/s for both and their ratio per
# round (goal >= 2x), a sample of copies from both verified at a sink with
# python3-dkim, and one message to BIG recipients: from the LMTP 250 to the
# last copy (goal <= 3 s).  How: see bench/lib/e2e.py.
#
#   bench/e2e.sh [BUILD_DIR]          (default: $POSTERN_BUILD, else ./build)
#
# Builds nothing: give it a release build.  Needs root (Postfix) and
# OpenDKIM, which the project's package list leaves out: no test needs it.
# Environment: RUNS (3), MESSAGES (500), RCPTS (10 per message), SIZE (4096),
# TRANSFORMS (0: one postern-transform per CPU, as postern run starts them),
# SENDERS (4 postern-sender workers), SAMPLE (5 messages verified each way),
# BIG (5000), BENCH_TMP (/var/tmp).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/common.sh"

bench_use_build "${1:-}" ingest/postern-ingest dispatch/postern-dispatch sender/postern-sender transform/postern-transform tools/spoolctl
bench_need_postfix smtp-sink postfix postqueue
command -v opendkim >/dev/null ||
    bench_die "opendkim is missing: apt-get install opendkim (the signer of the Postfix side)"
[[ $(id -u) -eq 0 ]] || bench_die "run as root: the private Postfix instance needs it"

POSTERN_BUILD=$build exec /usr/bin/python3 "$here/lib/e2e.py"
