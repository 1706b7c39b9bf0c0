"""Crash images of the spool taken under load hold every acknowledged message.

postern-ingest runs alone under load (smtp-source's 20 sessions when
Postfix's tools are installed, plus test_ingest_crash.py's checked clients,
which log every 250 with the queue id and the exact bytes).  At random
moments the daemon is frozen (SIGSTOP, then wait until the kernel reports
it stopped), data.mdb and lock.mdb are copied, and it is let go (SIGCONT);
~10 times.  Each copy must then open cleanly -- `mdb_stat` and a full
`mdb_dump` walk every database, `spoolctl --json list` and `stats` agree --
and hold every message whose 250 the clients had read BEFORE the freeze,
with its exact bytes (`spoolctl show ID --raw`).

What this models, honestly: the copy is read through the page cache, so it
is what the file holds at that instant for any process that opens it
next, which is exactly what a crash of the ingest process (kill -9, a
segfault, the OOM killer) at that instant leaves behind, with the writer
stopped anywhere: between two page writes of a commit, before or after its
meta page.  Nothing written but not yet on the platter is lost in that
case, because the page cache survives the process.  It does NOT model a
power loss or a kernel crash, which also lose every page not yet written
back: there the guarantee rests on LMDB's design -- a commit writes its
new pages (never over pages the last committed tree uses), fsyncs them,
then writes the older of its two meta pages and syncs that, so after a
power cut either the new meta page or the previous one names a complete
tree (LMDB has no checksum: it assumes one meta page write is not torn) --
together with the rule that the 250 is sent only after that fsync (SPEC §1,
ingest_commit.c).  Checking that needs a block device that drops unsynced
writes (dm-log-writes, a VM killed mid-run), which this test does not do.
The lock file copy is taken for completeness; LMDB rebuilds a lock file
that no live process holds, as after any crash.

POSTERN_SNAPSHOT_SEED=N repeats the random choices.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import chaoslib
from chaoslib import ctl

import postern  # noqa: E402  (tests/integration, on sys.path through chaoslib)
import test_ingest_crash as crash  # noqa: E402  (CheckedClients, SourceLoad)

SEED = int(os.environ.get("POSTERN_SNAPSHOT_SEED") or time.time_ns() % 1_000_000)
FREEZES = int(os.environ.get("POSTERN_SNAPSHOT_FREEZES") or 10)
CHECKED_CLIENTS = 3
SAMPLE = 10                 # exact bytes: each message in the first copy after its 250, and
                            # this many older ones again per copy (every copy: all ids, sizes)


def wait_stopped(pid, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = chaoslib.proc_stat(pid)
        if st is None:
            raise AssertionError(f"pid {pid} vanished while being frozen")
        if st[0] in ("T", "t"):
            return
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} not stopped {timeout}s after SIGSTOP")


def copy_spool(src, dst):
    dst.mkdir()
    for name in ("data.mdb", "lock.mdb"):
        shutil.copyfile(src / name, dst / name)


def writer_inside(snap):
    """Was the copy taken inside a write transaction?  LMDB 0.9's lock file
    (x86_64 glibc) holds the writer's robust mutex at offset 64; its lock
    word is the owner's thread id while held, 0 when free.  None: unknown."""
    lock = (snap / "lock.mdb").read_bytes()
    if len(lock) < 72 or int.from_bytes(lock[0:4], "little") != 0xBEEFC0DE:
        return None
    return int.from_bytes(lock[64:68], "little") != 0


def mdb_check(snap):
    """mdb_stat (environment, free list, every database) and a full mdb_dump walk."""
    out = []
    for argv in (["mdb_stat", "-e", "-f", "-a", str(snap)], ["mdb_dump", "-a", str(snap)]):
        p = subprocess.run(argv, capture_output=True, timeout=300)
        assert p.returncode == 0, f"{' '.join(argv)}: exit {p.returncode}: {p.stderr[-2000:]!r}"
        out.append(p.stdout)
    stat = out[0].decode(errors="replace")
    txn = next((l.split(":")[1].strip() for l in stat.splitlines()
                if "Last transaction ID" in l), "?")
    return txn, len(out[1])


def test_crash_images_hold_every_acknowledged_message():
    print(f"seed {SEED} (POSTERN_SNAPSHOT_SEED={SEED} to repeat), {FREEZES} freezes")
    assert shutil.which("mdb_stat") and shutil.which("mdb_dump"), "lmdb-utils missing"
    rnd = random.Random(SEED)
    crash.SEED = SEED                   # the checked clients' own random choices
    workdir = Path(tempfile.mkdtemp(prefix="pstsnap", dir="/tmp"))
    d = postern.Ingest(workdir, name="ingest")
    d.env = chaoslib.sanitizer_env()
    snaps = []                          # (dir, {qid: bytes} acknowledged before the freeze)
    inside = []                         # per copy: taken inside a write transaction?
    load = clients = None
    ok = False
    chaoslib.raise_on_sigterm()
    try:
        d.start()
        if shutil.which("smtp-source"):
            load = crash.SourceLoad(d, workdir)
            load.start()
        clients = crash.CheckedClients(d, CHECKED_CLIENTS)
        clients.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        for i in range(FREEZES):
            time.sleep(rnd.uniform(0.1, 0.8))
            with clients.lock:
                before = dict(clients.acked)    # every 250 read before the SIGSTOP below
            os.kill(d.pid, signal.SIGSTOP)
            try:
                wait_stopped(d.pid)
                snap = workdir / f"snap{i:02d}"
                copy_spool(d.spool_dir, snap)
            finally:
                os.kill(d.pid, signal.SIGCONT)
            snaps.append((snap, before))
            inside.append(writer_inside(snap))
        t_frozen = time.monotonic() - t0
        assert clients.join(), "checked clients did not stop"
        if load:
            load.join()
        assert clients.refusals == [], clients.refusals[:10]
        assert d.stop() == 0, "postern-ingest did not stop cleanly after the freezes"

        print(f"load: {clients.attempts} checked messages sent, {len(clients.acked)} "
              f"acknowledged; smtp-source runs {load.runs if load else 0}; "
              f"{FREEZES} freezes in {t_frozen:.1f}s, {inside.count(True)} of them inside a write "
              f"transaction (the writer's lock held in lock.mdb)")
        t1 = time.monotonic()
        checked_bytes = 0
        compared = set()
        for snap, before in snaps:
            tc = time.monotonic()
            txn, dumped = mdb_check(snap)
            t_mdb = time.monotonic() - tc
            cfg = snap / "spool.ini"
            postern.write_config(cfg, postern.merge(d.sections, {"spool": {"dir": snap}}))
            listed = {m["id"]: m for m in postern.parse_json_lines(ctl(cfg, "--json", "list"))}
            t_list = time.monotonic() - tc - t_mdb
            stats = json.loads(ctl(cfg, "--json", "stats"))
            assert stats["messages"]["incoming"] == len(listed) == sum(stats["messages"].values()), \
                f"{snap.name}: stats {stats['messages']} but {len(listed)} listed"
            missing = sorted(set(before) - set(listed))
            assert missing == [], (f"{snap.name}: {len(missing)} message(s) acknowledged before "
                                   f"the freeze are not in the copy: {missing[:10]}")
            for qid, msg in before.items():
                assert listed[qid]["size"] == len(msg), f"{snap.name}: {qid} size"
            newest = [q for q in before if q not in compared]
            older = sorted(compared)
            pick = newest + rnd.sample(older, min(SAMPLE, len(older)))
            compared.update(newest)

            def raw(qid, cfg=cfg):
                return qid, ctl(cfg, "show", qid, "--raw", "--unmasked")
            with ThreadPoolExecutor(max_workers=4) as pool:
                for qid, stored in pool.map(raw, pick):
                    assert stored == before[qid], f"{snap.name}: {qid}: stored bytes differ"
            checked_bytes += len(pick)
            print(f"  {snap.name}: txn {txn}{' (mid-commit)' if writer_inside(snap) else ''}, {len(listed)} messages in the copy, "
                  f"{len(before)} acknowledged before the freeze (all present), "
                  f"{len(listed) - len(before)} more (load, or committed and not yet "
                  f"acknowledged), {len(pick)} compared byte for byte, dump {dumped} bytes; "
                  f"{t_mdb:.1f}s lmdb-utils, {t_list:.1f}s list, {time.monotonic() - tc:.1f}s in all")
        print(f"checked {len(snaps)} copies in {time.monotonic() - t1:.1f}s "
              f"({checked_bytes} exact-byte comparisons)")
        assert len(snaps) == FREEZES
        assert len(snaps[-1][1]) >= 20, "too little traffic to prove anything"
        ok = True
    except chaoslib.Terminated:
        d.kill9()
        raise
    finally:
        if d.running():
            try:
                os.kill(d.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if clients:
            clients.join()
        if load:
            load.join()
        rc = d.stop()
        findings = d.sanitizer_findings()
        print(f"----- {d.log_path.name} (exit codes {d.exit_codes}) -----")
        print(d.log_tail(100 if ok else 400))
        if os.environ.get("POSTERN_CHAOS_KEEP"):
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert findings == [], f"sanitizer reports: {findings[:10]}"
    assert rc in (None, 0), f"postern-ingest exit {rc}"
