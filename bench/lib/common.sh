# bench/lib/common.sh - shell helpers shared by the benchmarks (source it).
#
# Every process a benchmark starts is recorded by pid and stopped by pid
# on exit (bench_cleanup); nothing is ever killed by name.

BENCH_PIDS=()

bench_log() { printf '%s\n' "$*" >&2; }
bench_die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# A TCP port on 127.0.0.1 that nothing listens on right now.
# The release build to measure: $1, else $POSTERN_BUILD, else ./build, as
# an absolute path in $build; the programs named after it must be built.
bench_use_build() {
    local given=${1:-${POSTERN_BUILD:-build}}
    shift
    build=$(cd "$given" 2>/dev/null && pwd) || bench_die "no build directory $given"
    local bin
    for bin in "$@"; do
        [[ -x $build/$bin ]] || bench_die "$build/$bin is not built"
    done
}

# Postfix's tools (smtp-sink, smtp-source, postfix ...) the script runs.
bench_need_postfix() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || bench_die "$tool (postfix) is missing"
    done
}

bench_free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait until something accepts connections on 127.0.0.1:$1 (up to $2 s).
bench_wait_port() {
    local port=$1 limit=${2:-30} i
    for ((i = 0; i < limit * 20; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# Wait until file $1 holds a line matching regex $2 (up to $3 s) while pid $4 lives.
bench_wait_log() {
    local file=$1 re=$2 limit=${3:-30} pid=$4 i
    for ((i = 0; i < limit * 20; i++)); do
        grep -Eq -- "$re" "$file" 2>/dev/null && return 0
        [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null && return 1
        sleep 0.05
    done
    return 1
}

# Start a command in the background with its output in a log; sets BENCH_PID.
bench_spawn() {
    local log=$1; shift
    "$@" >"$log" 2>&1 &
    BENCH_PID=$!
    BENCH_PIDS+=("$BENCH_PID")
}

# Stop one pid we started: SIGTERM, wait up to 10 s, then SIGKILL.
bench_stop() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        bench_stop "$pid"
    done
    BENCH_PIDS=()
}

# DIR/postern.ini for postern-ingest alone: its spool in DIR, listening on
# 127.0.0.1:PORT for RCPT (bench/ingest.sh and bench/ingest_cpu.sh).
bench_ingest_config() {
    cat >"$1/postern.ini" <<EOF
[spool]
dir = $1/spool
[ingest]
listen = 127.0.0.1:$2
recipients = $3
max_connections = 1000
hostname = bench.test
[workers]
hints = ipc://$1/spool/run/hints
EOF
}

bench_now() { date +%s.%N; }

# Median of the numbers given as arguments.
bench_median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        if (NR == 0) exit 1;
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# messages seconds -> rate with one decimal
bench_rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'; }

# smtp-sink as root must drop privileges.
bench_sink_user_args() {
    if [[ $(id -u) -eq 0 ]]; then
        echo "-u nobody"
    fi
}
