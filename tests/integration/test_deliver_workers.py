"""Sender workers: sharing the load, dying, stopping, remote over CURVE; a
sender told a garbled SJOB by a dispatcher of the test's own (wire version 3).

The real chain (ingest, dispatch, transform, senders) and the aiosmtpd
relay of test_deliver.py.  A relay that holds one recipient's end of data
tells which worker is mid-transaction, so that it can be killed or stopped
right there.
"""
import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
import zmq

import chain as pc
from chain import make_chain  # noqa: F401  (fixture)
from postern import wait_for
from smtp_client_test import pki  # noqa: F401  (fixture)

RCPTS = ["ada@example.org", "bob@example.net", "cyd@example.com"]


def holder(c, relay, port_of_relay):
    """The sender daemon whose TCP connection the relay holds."""
    peer_port = relay.held[0][1]
    want = f"127.0.0.1:{peer_port}"
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            _, port = fields[1].split(":")
            rport = int(fields[2].split(":")[1], 16)
            if int(port, 16) == peer_port and rport == port_of_relay:
                inode = fields[9]
    assert inode, want
    for s in c.senders:
        for fd in os.listdir(f"/proc/{s.pid}/fd"):
            try:
                if os.readlink(f"/proc/{s.pid}/fd/{fd}") == f"socket:[{inode}]":
                    return s
            except OSError:
                pass
    raise AssertionError(f"no sender holds {want}")


def sender_names(c):
    return set(re.findall(r"worker (\w+) \(sender\) connected", c.dispatch.log()))


def test_four_workers_share_the_load_and_survive_kill9(make_chain):
    c, relay = make_chain({"retry": {"lease": "3s"}, "workers": {"slots": "1"}}, senders=4)
    relay.delay = 0.5
    relay.hold = {"slow@example.org"}
    port = int(c.ingest.sections["relay"]["url"].rsplit(":", 1)[1])
    qids = [c.send(["slow@example.org", "x1@example.org", "x2@example.org"])]
    wait_for(lambda: relay.held, timeout=60, what="the held transaction")
    qids += [c.send([f"m{i}a@example.org", f"m{i}b@example.org"]) for i in range(12)]
    victim = holder(c, relay, port)
    victim.kill9()
    relay.holding = False

    for qid in qids:
        assert {d["state"] for d in c.wait_state(qid, "done", timeout=120)} == {"sent"}
    # No delivery lost; a duplicate only for the transaction in flight at the kill.
    assert 1 <= len(relay.copies("slow@example.org")) <= 2
    for r in ["x1@example.org", "x2@example.org"] + [f"m{i}{x}@example.org"
                                                     for i in range(12) for x in "ab"]:
        assert len(relay.copies(r)) == 1, r
    log = c.dispatch.log()
    assert "to=<x1@example.org>, lease expired: back in the queue" in log
    names = sender_names(c)
    leased = set(re.findall(r"recipient\(s\) leased to worker (\w+)", log))
    assert len(names) == 4 and leased == names, (names, leased)


class ConnCounter:
    """A TCP proxy before the relay that counts the connections open at once."""

    def __init__(self, target):
        self.target, self.port = target, pc.postern.free_port()
        self.open = self.peak = self.total = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _client(self, reader, writer):
        self.open += 1
        self.total += 1
        self.peak = max(self.peak, self.open)
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(self._pipe(reader, w2), self._pipe(r2, writer))
        finally:
            self.open -= 1
            writer.close()

    @staticmethod
    async def _pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_max_connections_counts_idle_connections_across_workers(tmp_path, pki, make_chain):  # noqa: F811
    """[relay] max_connections bounds open connections, idle ones included,
    across all workers: 3 workers of 4 slots each share 2."""
    relay, ctl = pc.start_relay(pki)
    proxy = ConnCounter(ctl.port)
    cfg = pc.postern.merge(pc.relay_config(tmp_path, pki, proxy.port),
                           {"relay": {"max_connections": "2"}})
    try:
        c, _ = make_chain(cfg, senders=3, relay=False)
        relay.delay = 0.2
        qids = []
        for burst in range(3):
            qids += [c.send([f"b{burst}m{i}@example.org"]) for i in range(6)]
            time.sleep(1)
        for qid in qids:
            assert [d["state"] for d in c.wait_state(qid, "done", timeout=120)] == ["sent"]
        assert proxy.total >= 2 and proxy.peak <= 2, (proxy.peak, proxy.total)
    finally:
        proxy.stop()
        ctl.stop()


def test_sigterm_finishes_the_transaction_in_flight(make_chain):
    c, relay = make_chain()
    relay.hold = {RCPTS[0]}
    qid = c.send(RCPTS[:1])
    wait_for(lambda: relay.held, timeout=60, what="the held transaction")
    s = c.senders[0]
    s.proc.send_signal(signal.SIGTERM)
    # The owner's notice may be in hand too: "finishing 1 job(s) running" or 2.
    wait_for(lambda: re.search(r"stopping on signal: finishing [12] job\(s\) running", s.log()),
             what="stopping")
    assert s.proc.poll() is None
    relay.holding = False
    assert s.proc.wait(60) == 0
    [d] = c.deliveries(qid)
    assert (d["state"], d["attempts"]) == ("sent", 1)
    assert len(relay.copies(RCPTS[0])) == 1


def test_dispatcher_silent_then_restarted(make_chain):
    c, relay = make_chain()
    s = c.senders[0]
    c.dispatch.kill9()
    wait_for(lambda: "silent for 5s: HELLO again" in s.log(), timeout=30, what="silence noticed")
    c.dispatch.start()
    qid = c.send(RCPTS[:1])
    assert [d["state"] for d in c.wait_state(qid, "done")] == ["sent"]
    assert "is back" in s.log() and len(relay.copies(RCPTS[0])) == 1


def write_keypair(path, pair=None):
    public, secret = pair or zmq.curve_keypair()
    path.write_bytes(public + b"\n" + secret + b"\n")
    path.chmod(0o600)
    return public.decode()


def test_curve_worker_delivers_unknown_key_refused(tmp_path, make_chain):
    server = zmq.curve_keypair()
    files = {n: tmp_path / f"{n}.key" for n in ("dispatch", "transform", "good", "bad")}
    keys = {n: write_keypair(p, server if n == "dispatch" else None) for n, p in files.items()}
    allowed = tmp_path / "allowed_keys"
    allowed.write_text(f"{keys['transform']}\n{keys['good']}\n")
    endpoint = f"tcp://127.0.0.1:{pc.postern.free_port()}"

    def own(name):
        return {"workers": {"curve_secret_key_file": files[name]}}
    c, relay = make_chain(
        {"workers": {"dispatch": endpoint, "curve_server_public_key": keys["dispatch"]}},
        senders=0,
        own={"dispatch": {"workers": {"curve_secret_key_file": files["dispatch"],
                                      "curve_allowed_keys_file": allowed}},
             "transform": own("transform")})
    # Refused for good (ZeroMQ does not retry): the worker says why and exits.
    bad = c.add_sender(own("bad"))
    assert bad.proc.wait(30) == 1
    c.senders.remove(bad)
    assert f"refused worker with CURVE key {keys['bad']}" in c.dispatch.log()
    assert f"refused our CURVE key {keys['bad']}" in bad.log() and not bad.sanitizer_findings()
    # A wrong dispatcher key fails every handshake: said once, the worker waits.
    lost = c.add_sender({"workers": {"curve_secret_key_file": files["good"],
                                     "curve_server_public_key": keys["bad"]}})
    wait_for(lambda: "failed: is curve_server_public_key its public key?" in lost.log(),
             timeout=30, what="the handshake failure logged")
    c.add_sender(own("good"))
    qid = c.send(RCPTS)
    assert {d["state"] for d in c.wait_state(qid, "done")} == {"sent"}
    assert len(sender_names(c)) == 1
    assert all(len(relay.copies(r)) == 1 for r in RCPTS)
    assert files["bad"].read_text().split()[1] not in bad.log()     # its secret key


# ---- refused configurations: exit 2, one clear line ------------------------

def run_sender(tmp_path, sections):
    path = tmp_path / "sender.ini"
    pc.postern.write_config(path, pc.postern.merge({"spool": {"dir": tmp_path / "spool"}},
                                                   sections))
    p = subprocess.run([str(pc.sender_binary()), "-c", str(path), "-f"], capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stderr


def loose_file(tmp_path, name, text, mode=0o644):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("case", ["tcp_without_curve", "password_readable", "key_readable",
                                  "user_without_password", "bad_key_file"])
def test_refused_configuration(tmp_path, case):
    relay = {"url": "smtp://localhost:2525", "tls": "require"}
    workers = {"dispatch": "ipc:///tmp/nobody-listens"}
    if case == "tcp_without_curve":
        workers = {"dispatch": "tcp://127.0.0.1:1"}
        why = "tcp:// needs CURVE"
    elif case == "password_readable":
        relay.update(user="u", password_file=loose_file(tmp_path, "pw", "secret-pw\n"))
        why = f"password_file {tmp_path}/pw: readable by group or others"
    elif case == "key_readable":
        key = tmp_path / "k"
        write_keypair(key)
        key.chmod(0o640)
        workers = {"dispatch": "tcp://127.0.0.1:1", "curve_secret_key_file": key,
                   "curve_server_public_key": zmq.curve_keypair()[0].decode()}
        why = f"curve_secret_key_file {key}: readable by group or others"
    elif case == "user_without_password":
        relay.update(user="u")
        why = "[relay] user: is set but password_file is not"
    else:
        workers = {"dispatch": "tcp://127.0.0.1:1",
                   "curve_secret_key_file": loose_file(tmp_path, "k", "nonsense\n", 0o600),
                   "curve_server_public_key": zmq.curve_keypair()[0].decode()}
        why = "expected two Z85 lines"
    rc, err = run_sender(tmp_path, {"relay": relay, "workers": workers})
    assert rc == 2 and why in err, err
    assert len(err.strip().splitlines()) == 1 and "secret-pw" not in err


def test_dispatcher_refuses_a_readable_curve_key(tmp_path):
    """The dispatcher's CURVE secret key file must be its owner's alone, as
    the workers' are: one line naming the file, and no start."""
    key = tmp_path / "dispatch.key"
    write_keypair(key)
    key.chmod(0o640)
    allowed = loose_file(tmp_path, "allowed", zmq.curve_keypair()[0].decode() + "\n")
    path = tmp_path / "dispatch.ini"
    pc.postern.write_config(path, {
        "spool": {"dir": tmp_path / "spool"},
        "workers": {"dispatch": f"tcp://127.0.0.1:{pc.postern.free_port()}",
                    "hints": f"ipc://{tmp_path}/h", "curve_secret_key_file": key,
                    "curve_allowed_keys_file": allowed}})
    p = subprocess.run([str(pc.dispatch_binary()), "-c", str(path), "-f"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    assert f"curve_secret_key_file {key}: readable by group or others" in p.stderr, p.stderr
    assert key.read_text().split()[1] not in p.stderr


# ---- the wire: a dispatcher of our own, over the real socket ----------------

def sjob_payload(lease, msg, rcpt, body=b"Subject: x\r\n\r\nx\r\n"):
    """SJOB of wire version 3 (common/wire_job.c): one recipient, no header block."""
    def s(b):
        return struct.pack(">I", len(b)) + b
    return (bytes([3, 1]) + struct.pack(">QQI", lease, msg, 1) + s(b"") + s(b"default")
            + s(body) + struct.pack(">IB", 0, 0) + s(rcpt))


NOT_STARTED = 8                                     # SMTP_ERROR_NOT_STARTED (sender/smtp.h)


def sdone_parse(p):
    """(version, credit, lease, msg, [(idx, code, error)]) of an SDONE."""
    version, credit, lease, msg, n = struct.unpack_from(">BIQQI", p)
    off = 25
    off += 4 + struct.unpack_from(">I", p, off)[0]          # account
    results = []
    for _ in range(n):
        idx, code, error, _seconds = struct.unpack_from(">IHId", p, off)
        off += 18
        for _field in range(3):                             # status, text, relay
            off += 4 + struct.unpack_from(">I", p, off)[0]
        results.append((idx, code, error))
    assert off == len(p)
    return version, credit, lease, msg, results


def own_dispatcher(tmp_path, relay_port=None, sections=None):
    """A ROUTER of ours and a sender (1 slot) connected to it, its HELLO read
    and one relay connection granted: (router, sender, identity, the jobs
    its HELLO says it takes).  The relay is relay_port, else a closed port:
    a delivery fails without a reply."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/dispatch"
    router.bind(endpoint)
    path = tmp_path / "sender.ini"
    port = relay_port or pc.postern.free_port()
    pc.postern.write_config(path, pc.postern.merge(
        {"spool": {"dir": tmp_path / "spool"},
         "relay": {"url": f"smtp://127.0.0.1:{port}", "tls": "none"},
         "workers": {"dispatch": endpoint, "slots": 1}}, sections or {}))
    sender = pc.postern.Daemon([pc.sender_binary(), "-c", path, "-f"], tmp_path / "sender.log",
                               r"daemon started").start()
    assert router.poll(10000)
    ident, cmd, hello = router.recv_multipart()
    assert cmd == b"HELLO" and hello.startswith(b"sender\0")
    assert struct.unpack("<I", hello[-5:-1])[0] == 3          # (suu): the wire version
    router.send_multipart([ident, b"CONNMAX", struct.pack("<I", 1)])
    return router, sender, ident, struct.unpack("<I", hello[-9:-5])[0]


def next_command(router, want, timeout=30):
    """The payload of the next `want` from the worker (other commands are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        assert router.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"no {want}"
        _, cmd, payload = router.recv_multipart()
        if cmd == want:
            return payload


def test_sender_refuses_a_garbled_sjob_and_takes_the_next(tmp_path):
    """A sender told a cut-short SJOB says why in its log and stays; the next
    good one gets its SDONE (the relay is closed: a failure without a reply)."""
    router, sender, ident, _ = own_dispatcher(tmp_path)
    try:
        good = sjob_payload(7, 9, b"ada@example.org")
        router.send_multipart([ident, b"SJOB", good[:-3]])
        wait_for(lambda: "malformed SJOB from the dispatcher: ignored (SJOB of" in sender.log(),
                 what="the refusal in the log")
        assert "cut short" in sender.log()
        router.send_multipart([ident, b"SJOB", good])
        version, credit, lease, msg, results = sdone_parse(next_command(router, b"SDONE"))
        assert (version, credit, lease, msg) == (3, 1, 7, 9)
        assert len(results) == 1 and results[0][0] == 0 and results[0][1] == 0
        assert results[0][2] != 0
        assert sender.running()
    finally:
        problems = pc.postern.stop_and_check([sender])
        router.close()
    assert not problems, problems


def test_stopping_sender_runs_a_job_sent_before_its_hello_was_read(tmp_path):
    """SIGTERM to an idle sender: it says HELLO with no free slot, and a job
    the dispatcher leased before reading that HELLO may still be on its way.
    The sender takes it, gives it back unstarted, and only then leaves; one
    that left at once left the job to wait out its lease
    (SENDER_STOP_GRACE_MS)."""
    router, sender, ident, _ = own_dispatcher(tmp_path)
    try:
        sender.proc.send_signal(signal.SIGTERM)
        hello = next_command(router, b"HELLO", timeout=10)
        assert struct.unpack("<I", hello[-9:-5])[0] == 0          # (suu): no free slot
        # A dispatcher busy in a commit: the job comes a while after the
        # HELLO (well inside the grace; a sender that left at once is gone).
        time.sleep(0.2)
        router.send_multipart([ident, b"SJOB", sjob_payload(8, 10, b"bob@example.net")])
        version, credit, lease, msg, results = sdone_parse(next_command(router, b"SDONE"))
        # Given back unstarted, so that a worker not stopping takes it now.
        assert (lease, msg, credit) == (8, 10, 0)
        assert results == [(0, 0, NOT_STARTED)]
        assert sender.proc.wait(20) == 0
    finally:
        problems = pc.postern.stop_and_check([sender])
        router.close()
    assert not problems, problems


def test_sender_queues_jobs_and_gives_back_one_that_waited_half_its_lease(tmp_path):
    """A sender of one slot takes eight jobs (WIRE_JOBS_PER_SLOT): one runs,
    the rest wait behind it.  One that waited half of [retry] lease is
    given back unstarted: the dispatcher may lease its deliveries again
    when the lease runs out, and a copy sent then could be the second."""
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen(8)                                 # accepts, never greets
    router, sender, ident, free = own_dispatcher(
        tmp_path, relay.getsockname()[1],
        {"relay": {"timeout": "3s"}, "retry": {"lease": "4s"}})
    try:
        assert free == 8
        router.send_multipart([ident, b"SJOB", sjob_payload(1, 10, b"a@example.net")])
        router.send_multipart([ident, b"SJOB", sjob_payload(2, 11, b"b@example.net")])
        done = {}
        while len(done) < 2:
            version, credit, lease, msg, results = sdone_parse(next_command(router, b"SDONE"))
            done[lease] = (credit, results)
        # The first ran and timed out at the relay; the second waited 3 s > 2 s.
        assert done[1][0] == 1 and done[1][1][0][2] not in (0, NOT_STARTED), done
        assert done[2] == (1, [(0, 0, NOT_STARTED)]), done
        assert "job 2: 1 recipient(s) given back, not started: waited" in sender.log()
        assert sender.running()
    finally:
        problems = pc.postern.stop_and_check([sender])
        router.close()
        relay.close()
    assert not problems, problems
