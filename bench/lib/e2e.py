"""e2e.py - the end-to-end benchmark behind bench/e2e.sh (issue 12, SPEC §7).

The whole job, both ways, in one run, to one local smtp-sink:

  postern   MESSAGES messages over one LMTP session, each with its own
            token (registered beforehand with `spoolctl token import`, the
            platform's part) for RCPTS recipients; the clock runs from the
            first MAIL until every copy is sent: ingest, TRANSFORMS
            transform workers (one per CPU, as `postern run` starts them;
            personalised: one copy and one RSA-2048 signature per
            recipient), dispatch, SENDERS sender workers.  The owner's
            notice per message is a delivery too: waited for, not counted.
  postfix   a private Postfix 3.7 with OpenDKIM as its milter (RSA-2048,
            relaxed/relaxed, From oversigned) takes the same messages over
            one SMTP session, one transaction to the RCPTS recipients each,
            and relays them through relayhost; the clock runs from the first
            MAIL until its log shows every recipient sent.

Both sign with the same key and selector.  Each round runs both and gives
their ratio, so a busy machine weighs on both alike.  Then once:

  sample    SAMPLE messages each way to an aiosmtpd sink in this process:
            every copy must carry an rsa-sha256 DKIM-Signature that
            python3-dkim verifies against the key's record.  A comparison
            with a side that did not sign would be no comparison.
  big       RUNS times one message to BIG recipients (one_to_many.py),
            RSA-2048: from the LMTP 250 to every copy signed and committed,
            and to the last copy sent.

Run as root (Postfix), with Debian's /usr/bin/python3.
"""
import base64
import os
import smtplib
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "tests" / "integration"),
                str(HERE.parents[1] / "tests" / "interop")]

import dkim  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

import chain  # noqa: E402
import deliver as D  # noqa: E402
import postern  # noqa: E402
from one_to_many import one_to_many  # noqa: E402
from postfix_instance import PostfixInstance  # noqa: E402

RUNS = int(os.environ.get("RUNS", 3))
MESSAGES = int(os.environ.get("MESSAGES", 500))
RCPTS = int(os.environ.get("RCPTS", 10))
SIZE = int(os.environ.get("SIZE", 4096))
SENDERS = int(os.environ.get("SENDERS", 4))
# As `postern run` starts them ([workers] transforms = 0): one per CPU.
TRANSFORMS = int(os.environ.get("TRANSFORMS", 0)) or len(os.sched_getaffinity(0))
SAMPLE = int(os.environ.get("SAMPLE", 5))
BIG = int(os.environ.get("BIG", 5000))
TMP = D.TMP
log = D.log


def rsa_key():
    """An RSA-2048 key file (0600) for both signers, and its DKIM record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = TMP / "dkim-rsa2048.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def rsa_config(key):
    """The chain's settings to sign with key alone."""
    return {"dkim": {"keys": f"{chain.SELECTOR}:{key}"}}


def start_opendkim(key):
    """OpenDKIM signing for chain.DOMAIN with key, as a milter on a UNIX socket.

    A UNIX socket as Debian's package sets it up: on a loopback TCP socket
    every message waited about 100 ms in the milter conversation (a
    Nagle / delayed-ACK stall), which made Postfix look ten times slower
    than it is (100 ms against 10-30 ms a message over one SMTP session).
    """
    sock = TMP / "opendkim.sock"
    conf = TMP / "opendkim.conf"
    conf.write_text(f"""\
Syslog no
Socket local:{sock}
UMask 000
PidFile {TMP}/opendkim.pid
Mode s
Domain {chain.DOMAIN}
Selector {chain.SELECTOR}
KeyFile {key}
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
OversignHeaders From
RequireSafeKeys false
""")
    proc = subprocess.Popen(["opendkim", "-f", "-x", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(TMP / "opendkim.log", "wb"))
    postern.wait_for(lambda: sock.exists() or proc.poll() is not None, timeout=30,
                     what="opendkim")
    if proc.poll() is not None:
        raise RuntimeError(f"opendkim exited: {(TMP / 'opendkim.log').read_text()}")
    return proc, f"unix:{sock}"


def messages(rcpt_lists, toks):
    """The test message per token, padded to about SIZE bytes."""
    pad = os.urandom(max(SIZE - 1500, 0) * 3 // 4)
    return [chain.lego_message(t, subject=r[0], attachment=pad) for t, r in zip(toks, rcpt_lists)]


def rcpt_lists(tag, n):
    return [[f"{tag}{i}-{j}@sink.test" for j in range(RCPTS)] for i in range(n)]


def tree_cpu(root):
    """CPU seconds of process root and every process under it (those alive,
    and those reaped, in their parents' cutime and cstime)."""
    stats = {}
    for d in Path("/proc").iterdir():
        try:
            stats[int(d.name)] = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (ValueError, OSError):
            continue
    todo, ticks = [root], 0
    while todo:
        pid = todo.pop()
        f = stats.get(pid)
        if f:
            ticks += sum(int(x) for x in f[11:15])
        todo += [p for p, g in stats.items() if int(g[1]) == pid]
    return ticks / os.sysconf("SC_CLK_TCK")


def postern_send(sink_port, key, name, n):
    """A chain relaying to sink_port: n messages in; (seconds until every copy
    is sent, CPU seconds of every daemon meanwhile)."""
    c = D.make_chain(name, sink_port, rsa_config(key), TRANSFORMS)
    try:
        for _ in range(SENDERS):
            c.add_sender()
        lists = rcpt_lists("p", n)
        msgs = messages(lists, D.tokens(c, lists))
        time.sleep(2.5)   # the dispatcher's 2 s connection grace after its start
        daemons = [[c.ingest], c.transforms, [c.dispatch], c.senders]
        cpu0 = [D.cpu_seconds(*d) for d in daemons]
        t0 = time.monotonic()
        with c.ingest.client() as cl:
            cl.lhlo()
            for m in msgs:
                cl.send_message(m, sender=chain.OWNER)
        total = n * (RCPTS + 1)
        postern.wait_for(lambda: D.deliveries(c)["sent"] == total, timeout=900, interval=0.05,
                         what="every copy sent")
        secs = time.monotonic() - t0
        cpu = [D.cpu_seconds(*d) - c0 for d, c0 in zip(daemons, cpu0)]
        log(f"  postern: {n * RCPTS} copies (+{n} notices) in {secs:.2f} s; CPU s: ingest "
            f"{cpu[0]:.2f}, transform {cpu[1]:.2f}, dispatch {cpu[2]:.2f}, "
            f"senders {cpu[3]:.2f}")
        return secs, sum(cpu)
    finally:
        D.stop(c)


def postfix_send(sink_port, milter, name, n):
    """A Postfix with milter (opendkim process, socket) relaying to sink_port:
    n messages in; (seconds until all are sent, CPU seconds of Postfix's
    processes and OpenDKIM meanwhile)."""
    dkim_proc, socket = milter
    pf = PostfixInstance(TMP / name, postern.free_port(), relayhost=f"[127.0.0.1]:{sink_port}",
                         name=f"postfix-bench-{name}",
                         extra={"smtpd_milters": socket,
                                "milter_default_action": "tempfail",
                                "message_size_limit": "0"})
    pf.start()
    try:
        lists = rcpt_lists("f", n)
        msgs = messages(lists, [f"pf{i}" for i in range(n)])
        master = int((pf.queue_dir / "pid" / "master.pid").read_text())
        cpu0 = tree_cpu(master), tree_cpu(dkim_proc.pid)
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.test") as s:
            for m, rcpts in zip(msgs, lists):
                s.sendmail(chain.OWNER, rcpts, m)
        # Its log, not its queue: polling `postqueue -j` runs showq, whose
        # CPU would count as Postfix's.
        postern.wait_for(lambda: pf.log().count("status=sent") >= n * RCPTS, timeout=900,
                         interval=0.05, what=f"{n * RCPTS} status=sent in Postfix's log")
        secs = time.monotonic() - t0
        cpu = tree_cpu(master) - cpu0[0], tree_cpu(dkim_proc.pid) - cpu0[1]
        if pf.queue():
            raise RuntimeError(f"{name}: every recipient sent but the queue is not empty")
        log(f"  postfix + opendkim: {n * RCPTS} recipients in {secs:.2f} s; CPU s: postfix "
            f"{cpu[0]:.2f}, opendkim {cpu[1]:.2f}")
        return secs, sum(cpu)
    finally:
        pf.stop()


class Capture:
    """aiosmtpd handler keeping (recipients, bytes) of every transaction."""

    def __init__(self):
        self.copies = []

    async def handle_DATA(self, server, session, envelope):
        self.copies.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"


def verify(copies, record):
    """Recipients whose copy has a verified rsa-sha256 signature, and the failures."""
    def dns(name, timeout=5):
        return record if name.rstrip(b".") == \
            f"{chain.SELECTOR}._domainkey.{chain.DOMAIN}".encode() else None
    good, bad = 0, []
    for rcpts, data in copies:
        if b"a=rsa-sha256" in data and dkim.verify(data, dnsfunc=dns):
            good += len(rcpts)
        else:
            bad.append(rcpts)
    return good, bad


def sample(key, record, milter):
    """SAMPLE messages each way to a capturing sink: every copy must verify."""
    cap = Capture()
    ctl = Controller(cap, hostname="127.0.0.1", port=postern.free_port(),
                     server_hostname="sink.test")
    ctl.start()
    try:
        postern_send(ctl.port, key, "sample-postern", SAMPLE)
        ours = [x for x in cap.copies if x[0][0].startswith("p")]
        postfix_send(ctl.port, milter, "sample-postfix", SAMPLE)
        theirs = [x for x in cap.copies if x[0][0].startswith("f")]
    finally:
        ctl.stop()
    results = {}
    for side, copies in (("postern", ours), ("postfix+opendkim", theirs)):
        good, bad = verify(copies, record)
        if bad or good != SAMPLE * RCPTS:
            raise RuntimeError(f"{side}: {good} of {SAMPLE * RCPTS} recipients with a verified "
                               f"RSA signature; failed: {bad[:5]}")
        results[side] = good
    return results


def load():
    return open("/proc/loadavg").read().split()[0]


def main():
    log(f"e2e: {MESSAGES} messages x {RCPTS} recipients, ~{SIZE} bytes, RSA-2048, {RUNS} "
        f"rounds; postern with {TRANSFORMS} transforms and {SENDERS} senders vs "
        f"Postfix + OpenDKIM; under {TMP}; load {load()}")
    key, record = rsa_key()
    milter = start_opendkim(key)
    sink, sink_port = D.spawn_sink()
    ours, theirs, ratios, loads = [], [], [], [load()]
    cpu_ours, cpu_theirs = [], []
    try:
        verified = sample(key, record, milter)
        for rnd in range(1, RUNS + 1):
            secs, cpu = postern_send(sink_port, key, f"postern-{rnd}", MESSAGES)
            ours.append(MESSAGES * RCPTS / secs)
            cpu_ours.append(1000 * cpu / (MESSAGES * RCPTS))
            secs, cpu = postfix_send(sink_port, milter, f"postfix-{rnd}", MESSAGES)
            theirs.append(MESSAGES * RCPTS / secs)
            cpu_theirs.append(1000 * cpu / (MESSAGES * RCPTS))
            ratios.append(ours[-1] / theirs[-1])
            loads.append(load())
            log(f"round {rnd}: postern {ours[-1]:.0f}/s, postfix+opendkim {theirs[-1]:.0f}/s, "
                f"{ratios[-1]:.2f}x; load {loads[-1]}")
        big = []
        for rnd in range(1, RUNS + 1):
            secs, signed, cpu, tcpu = one_to_many(BIG, SENDERS, sink_port, f"big-{rnd}",
                                                  rsa_config(key), TRANSFORMS)
            big.append(secs)
            log(f"big {rnd}: {BIG} recipients, 250 -> every copy signed {signed:.2f} s, "
                f"-> last copy sent {secs:.2f} s, "
                f"CPU s: transform {tcpu:.2f}, dispatcher {cpu:.2f}; load {load()}")
    finally:
        sink.terminate()
        sink.wait()
        milter[0].terminate()
        milter[0].wait()

    def runs(xs, fmt="{:.0f}"):
        return " ".join(fmt.format(x) for x in xs)
    print(f"verified at the sink (python3-dkim, rsa-sha256): postern {verified['postern']}, "
          f"postfix+opendkim {verified['postfix+opendkim']} recipients of {SAMPLE * RCPTS} each")
    print(f"postern signed+delivered:   {statistics.median(ours):7.0f} recipients/s   "
          f"({runs(ours)})")
    print(f"postfix+opendkim relayed:   {statistics.median(theirs):7.0f} recipients/s   "
          f"({runs(theirs)})")
    print(f"ratio per round: {runs(ratios, '{:.2f}')}; median {statistics.median(ratios):.2f}x "
          f"(goal >= 2x)")
    print(f"CPU-s per 1000 recipients: postern {statistics.median(cpu_ours):.2f} "
          f"({runs(cpu_ours, '{:.2f}')}), postfix+opendkim {statistics.median(cpu_theirs):.2f} "
          f"({runs(cpu_theirs, '{:.2f}')})")
    print(f"one message to {BIG} recipients, 250 -> last copy: median "
          f"{statistics.median(big):.2f} s ({runs(big, '{:.2f}')}) (goal <= 3 s)")
    print(f"load average (1 min) at start and after each round: {' '.join(loads)}")


if __name__ == "__main__":
    try:
        main()
    finally:
        subprocess.run(["rm", "-rf", str(TMP)])
