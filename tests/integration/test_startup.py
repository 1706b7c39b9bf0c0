"""Start-up refusals (issue 9 items 5, 6, 7): what cannot work must not start.

* A config that cannot work: `postern run` and each daemon exit 2 with one
  line naming the file, the key and the problem, before anything listens;
  `spoolctl check` reports the same problem.
* A listen address already in use is a permanent start error: ingest
  exits 3, `postern run` stops everything and exits 3 instead of
  restarting ingest forever.
* A spool others may write is refused; a second `postern run` on one
  spool is refused while the first holds the lock.
Run with Debian's /usr/bin/python3.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
import chaoslib  # noqa: E402
import postern  # noqa: E402

DAEMONS = ["ingest/postern-ingest", "dispatch/postern-dispatch",
           "transform/postern-transform", "sender/postern-sender"]


@pytest.fixture
def workdir():
    # ipc:// paths under the spool must fit in sun_path (108 bytes): pytest's are too long.
    d = Path(tempfile.mkdtemp(prefix="pst", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def base_config(workdir, port=None):
    return {
        "spool": {"dir": workdir / "spool"},
        "ingest": {"listen": f"127.0.0.1:{port or postern.free_port()}",
                   "recipients": postern.RECIPIENT},
        "relay": {"url": f"maildir:{workdir / 'outbox'}"},
        "workers": {"transforms": 1, "count": 1, "slots": 1},
    }


def run(argv, timeout=60):
    """(exit status, stdout, stderr).  A program still running after timeout
    (what these refusals fixed: `postern run` restarting a daemon forever)
    is killed with its children, and its status is "hung"."""
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=chaoslib.sanitizer_env(leaks=False),
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = "hung"
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def postern_run(config, timeout=60):
    return run([postern.binary("tools/postern"), "-c", config, "run"], timeout=timeout)


# Each: the config change, the line the refusal must print (after "FILE:LINE: ").
BAD = {
    "lease_zero": ({"retry": {"lease": "0"}}, "[retry] lease: must be more than 0"),
    "url_typo": ({"relay": {"url": "smtp//relay.example"}}, "[relay] url: relay url"),
    "ingest_max_connections_zero": ({"ingest": {"max_connections": "0"}},
                                    "[ingest] max_connections: must be more than 0"),
    "slots_zero": ({"workers": {"slots": "0"}}, "[workers] slots: must be more than 0"),
    "ingest_timeout_zero": ({"ingest": {"timeout": "0"}}, "[ingest] timeout: must be more than 0"),
    "relay_timeout_zero": ({"relay": {"timeout": "0"}}, "[relay] timeout: must be more than 0"),
    "lifetime_zero": ({"retry": {"lifetime": "0"}}, "[retry] lifetime: must be more than 0"),
    "map_size_zero": ({"spool": {"map_size": "0"}}, "[spool] map_size: must be more than 0"),
    "port_out_of_range": ({"ingest": {"listen": "127.0.0.1:99999"}},
                          "[ingest] listen: \"127.0.0.1:99999\": port"),
    "rate_nan": ({"relay": {"rate": "nan"}}, "[relay] rate: not a finite number"),
    "tls_none_with_user": ({"relay": {"url": "smtp://relay.example", "tls": "none",
                                      "user": "u", "password_file": "/etc/hostname"}},
                           "[relay] tls: none with a user"),
    "dkim_key_missing": ({"dkim": {"keys": "sel1:/nonexistent/sel1.pem"}},
                         "[dkim] keys: /nonexistent/sel1.pem: No such file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_refused_config(workdir, case):
    over, why = BAD[case]
    config = workdir / "postern.ini"
    postern.write_config(config, postern.merge(base_config(workdir), over))
    started = time.monotonic()
    rc, out, err = postern_run(config)
    assert rc == 2 and why in err and str(config) in err, (rc, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "started postern-" not in err and time.monotonic() - started < 30
    # Each daemon refuses the same file the same way, before it listens.
    for daemon in DAEMONS:
        rc, out, err = run([postern.binary(daemon), "-c", config, "-f"], timeout=30)
        assert rc == 2 and why in err, (daemon, rc, err)
    # spoolctl check names the same problem among its findings.
    rc, out, err = run([postern.spoolctl_binary(), "-c", config, "check"])
    assert rc != 0 and f"error: {config}" in out and why in out, (rc, out, err)


def test_duplicated_section(workdir):
    config = workdir / "postern.ini"
    postern.write_config(config, base_config(workdir))
    with open(config, "a") as f:
        f.write("[relay]\nrate = 1\n")
    rc, out, err = postern_run(config)
    assert rc == 2 and "[relay]: section appears twice" in err, (rc, err)


def test_listen_address_in_use(workdir):
    """Issue 9 item 6: ingest cannot bind; `postern run` stops and says why, once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = workdir / "postern.ini"
        postern.write_config(config, base_config(workdir, port))
        rc, out, err = postern_run(config, timeout=120)
    assert rc == 3, (rc, err)
    assert "postern-ingest" in err and "Address already in use" in err, err
    assert "cannot start" in err and "restarting postern-ingest" not in err, err


def test_world_writable_spool(workdir):
    """Issue 9 item 7: a spool others may write (directory or data file) is refused."""
    config = workdir / "postern.ini"
    postern.write_config(config, base_config(workdir))
    spool = workdir / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    rc, out, err = postern_run(config)
    assert rc == 2 and f"[spool] dir: {spool}: mode 0777 lets anyone write it" in err, (rc, err)
    os.chmod(spool, 0o750)
    data = spool / "data.mdb"
    data.touch()
    os.chmod(data, 0o666)
    rc, out, err = postern_run(config)
    assert rc == 2 and f"[spool] dir: {data}: mode 0666 lets anyone write it" in err, (rc, err)
    rc, out, err = run([postern.binary("dispatch/postern-dispatch"), "-c", config, "-f"])
    assert rc == 2 and "mode 0666" in err, err


def test_two_runs_one_spool(workdir):
    """Issue 9 item 7: the second `postern run` on a spool is refused, the first goes on."""
    first = chaoslib.PosternRun(workdir, base_config(workdir)).start()
    try:
        second = workdir / "second.ini"
        postern.write_config(second, base_config(workdir))
        rc, out, err = postern_run(second)
        assert rc == 3, (rc, err)
        assert f"in use by another postern run (pid {first.proc.pid}" in err, err
        assert first.alive()
    finally:
        assert first.stop() == 0
