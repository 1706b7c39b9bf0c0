#!/bin/sh
# postern.sh - install what is missing, build, and run the relay or the tests.
#
#   ./postern.sh run     build (release) and run `postern run` on the embedded defaults
#   ./postern.sh test    build with ASan+UBSan and run every test; last line "N passed, N failed"
#   ./postern.sh deps    only install the Debian packages
set -eu
cd "$(dirname "$0")"

# The one list of Debian packages (.ci/run installs through `deps` too).
PACKAGES=$(sed 's/#.*//' packaging/debian-packages.txt)

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

# The closing line CI reads: "N passed, N failed", counting the cases
# inside each meson test (pytest, cmocka and fuzz targets print their own
# tallies). A meson test that failed without a tally of failures (a crash,
# a timeout, a sanitizer report at exit) counts as one failure more.
summary() {
    /usr/bin/python3 - "$1" <<'PY'
import json, re, sys

def tally(out, err):
    """(passed, failed) from a test's own summary, or None."""
    m = re.findall(r"^=*\s*(.*?) in [0-9.]+s\b", out, re.M)       # pytest
    if m:
        line = m[-1]
        num = lambda w: sum(int(n) for n in re.findall(r"(\d+) " + w, line))
        return num("passed"), num("failed") + num("errors?")
    # cmocka: its closing lines go to stderr whatever CMOCKA_MESSAGE_OUTPUT says
    p = re.findall(r"^\[  PASSED  \] (\d+) test", out + err, re.M)
    f = re.findall(r"^\[  FAILED  \] (\d+) test", out + err, re.M)
    if p or f:
        return sum(map(int, p)), sum(map(int, f))
    m = re.findall(r"^fuzz: (\d+) passed, (\d+) failed", out, re.M)  # tests/fuzz/run.sh
    if m:
        return int(m[-1][0]), int(m[-1][1])
    return None

passed = failed = skipped = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    ok = r["result"] in ("OK", "EXPECTEDFAIL")
    if r["result"] == "SKIP":
        skipped += 1
        continue
    t = tally(r.get("stdout") or "", r.get("stderr") or "") or ((1, 0) if ok else (0, 1))
    passed += t[0]
    failed += t[1] + (0 if ok or t[1] else 1)
if skipped:
    print(f"{skipped} meson tests skipped")
print(f"{passed} passed, {failed} failed")
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
    if ! build build-san -Db_sanitize=address,undefined -Db_lundef=false; then
        echo "0 passed, 1 failed"           # the build itself
        exit 1
    fi
    shift
    status=0
    meson test -C build-san --setup=sanitize --print-errorlogs --num-processes 2 "$@" || status=$?
    summary build-san/meson-logs/testlog-sanitize.json || status=1
    exit $status ;;
*)
    echo "usage: $0 run|test|deps" >&2
    exit 2 ;;
esac
