#!/bin/sh
# postern.sh - install what is missing, build, and run the relay or the tests.
#
#   ./postern.sh run     build (release) and run `postern run` on the embedded defaults
#   ./postern.sh test    build with ASan+UBSan and run every test; last line "N passed, N failed"
#   ./postern.sh deps    only install the Debian packages
set -eu
cd "$(dirname "$0")"

PACKAGES="meson ninja-build pkg-config gcc libc6-dev liblmdb-dev lmdb-utils libzmq3-dev
libgmime-3.0-dev libglib2.0-dev libssl-dev openssl libjson-glib-dev libcmocka-dev
python3 python3-pytest python3-aiosmtpd python3-dkim python3-zmq postfix swaks ca-certificates
clang libclang-rt-14-dev"

deps() {
    missing=""
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "installing:$missing" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    # Postfix asks how to configure itself; "No configuration" is what tests want.
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
}

build() {
    dir=$1; shift
    [ -f "$dir/build.ninja" ] || meson setup "$dir" "$@"
    ninja -C "$dir"
}

# Count meson's per-test results: the closing line CI reads.
summary() {
    /usr/bin/python3 - "$1" <<'PY'
import json, sys
passed = failed = skipped = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"): passed += 1
    elif r == "SKIP": skipped += 1
    else: failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or not passed else 0)
PY
}

case "${1:-}" in
deps)
    deps ;;
run)
    deps
    build build --buildtype=release
    exec build/tools/postern run ;;
test)
    deps
    build build-san -Db_sanitize=address,undefined -Db_lundef=false
    shift
    status=0
    meson test -C build-san --setup=sanitize --print-errorlogs --num-processes 2 "$@" || status=$?
    summary build-san/meson-logs/testlog-sanitize.json || status=1
    exit $status ;;
*)
    echo "usage: $0 run|test|deps" >&2
    exit 2 ;;
esac
