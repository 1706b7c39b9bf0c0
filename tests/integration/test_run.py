"""The whole relay through `postern run`, not the daemons one by one.

One supervisor per test scenario, its children found through /proc
(tests/chaos/chaoslib.py's PosternRun); the relay is chain.py's aiosmtpd
(STARTTLS + AUTH required, a certificate from the test CA of
smtp_client_test.py), the DKIM keys come from `spoolctl dkim keygen` and
every copy is checked with python3-dkim.  Covered: delivery and the log
line per attempt (SPEC §5), the demo with no config file at all (SPEC §2,
in a network namespace of its own so that 127.0.0.1:8024 is ours), the
stop order (senders report before the dispatcher goes: nothing sent twice,
nothing lost) and the restart of a child killed with SIGKILL.
Run with Debian's /usr/bin/python3.
"""
import email.parser
import email.utils
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import dkim
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
import chaoslib  # noqa: E402
import chain  # noqa: E402
import postern  # noqa: E402
from smtp_client_test import pki  # noqa: E402,F401  (fixture)

OWNER = chain.OWNER
DEMO_PORT = 8024                        # SPEC §2: LMTP of the demo with no config


@pytest.fixture
def workdir():
    # ipc:// paths under the spool must fit in sun_path (108 bytes): pytest's are too long.
    d = Path(tempfile.mkdtemp(prefix="pst", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def dkim_keys(workdir):
    """An RSA and an Ed25519 key from `spoolctl dkim keygen`: ([dkim] keys, dnsfunc)."""
    cfg = workdir / "keygen.ini"
    postern.write_config(cfg, {"spool": {"dir": workdir / "spool"},
                               "dkim": {"domain": chain.DOMAIN}})
    keys, records = [], {}
    for kind in ("rsa", "ed25519"):
        selector, path = f"{kind}1", workdir / f"{kind}.pem"
        out = postern.spoolctl(cfg, "--json", "dkim", "keygen", "--type", kind,
                               "--out", path, "--selector", selector).stdout
        records[f"{selector}._domainkey.{chain.DOMAIN}".encode()] = \
            json.loads(out)["record"].encode()
        keys.append(f"{selector}:{path}")

    def dnsfunc(name, timeout=5):
        return records.get(name.rstrip(b"."))
    return ", ".join(keys), dnsfunc


def signatures_ok(data, dnsfunc):
    """Both signatures there (rsa-sha256 and ed25519-sha256), each verifying."""
    d = dkim.DKIM(data)
    heads = email.parser.BytesHeaderParser().parsebytes(data).get_all("DKIM-Signature", [])
    algos = sorted(re.search(r"a=([\w-]+)", re.sub(r"\s", "", h)).group(1) for h in heads)
    return algos == ["ed25519-sha256", "rsa-sha256"] and \
        all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(len(heads)))


class Run:
    """`postern run` with a relay, DKIM keys and tokens: what each test needs."""

    def __init__(self, workdir, pki, relay_delay=0, workers=None, lease="10s", extra=None):
        self.relay, self.relay_ctl = chain.start_relay(pki)
        self.relay.delay = relay_delay
        keys, self.dnsfunc = dkim_keys(workdir)
        self.port = postern.free_port()
        relay = chain.relay_config(workdir, pki, self.relay_ctl.port)["relay"]
        relay["url"] = f"smtp://127.0.0.1:{self.relay_ctl.port}"
        self.sup = chaoslib.PosternRun(workdir, postern.merge({
            "spool": {"dir": workdir / "spool"},
            "ingest": {"listen": f"127.0.0.1:{self.port}", "recipients": postern.RECIPIENT},
            "dkim": {"domain": chain.DOMAIN, "keys": keys},
            "rewrite": {"from": "Abakus <no-reply@abakus.no>"},
            "bounce": {"envelope_from": chain.BOUNCES},
            "relay": relay,
            "retry": {"initial": "1s", "max": "4s", "lease": lease},
            "workers": workers or {"transforms": 1, "count": 1, "slots": 2},
        }, extra or {}))
        self.config = self.sup.config_path

    def start(self):
        self.sup.start()
        return self

    def send(self, rcpts, subject="Restricted Message"):
        """A fresh token for rcpts, the fixture message with it over LMTP: the queue id."""
        args = ["token", "add", "--from", OWNER]
        for r in rcpts:
            args += ["--rcpt", r]
        token = chaoslib.ctl(self.config, *args).decode().strip()
        with postern.Client(("127.0.0.1", self.port)) as c:
            c.lhlo()
            return c.send_message(chain.lego_message(token, subject=subject), sender=OWNER)

    def stats(self):
        return json.loads(chaoslib.ctl(self.config, "--json", "stats"))

    def wait_all_ended(self, sent, timeout=60):
        """Every delivery ended, `sent` of them sent (notices included)."""
        def ended():
            dl = self.stats()["deliveries"]
            return dl["sent"] == sent and dl["sent"] + dl["bounced"] == sum(dl.values())
        postern.wait_for(ended, timeout=timeout, interval=0.2, what=f"{sent} deliveries sent")

    def stop(self):
        """SIGTERM to postern run: the problems (exit code, sanitizer reports)."""
        rc = self.sup.stop()
        problems = [] if rc == 0 else [f"postern run: exit {rc} at SIGTERM"]
        findings = self.sup.sanitizer_findings()
        return problems + ([f"sanitizer: {findings[:5]}"] if findings else [])

    def close(self):
        problems = self.stop()
        self.relay_ctl.stop()
        print(self.sup.log_tail())
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def make_run(workdir, pki):
    runs = []

    def make(**kw):
        runs.append(Run(workdir, pki, **kw))
        return runs[-1].start()
    yield make
    for r in runs:
        r.close()


def test_signed_copies_and_log_lines(make_run):
    run = make_run()
    rcpts = ["ada@example.org", "bob@example.net"]
    qid = run.send(rcpts)
    run.wait_all_ended(sent=len(rcpts) + 1)           # and the owner's notice
    for rcpt in rcpts:
        [(mail_from, to, data)] = run.relay.copies(rcpt)
        assert mail_from == chain.BOUNCES and to == [rcpt]
        assert signatures_ok(data, run.dnsfunc), data[:800]
    [(_, _, notice)] = run.relay.copies(OWNER)
    assert signatures_ok(notice, run.dnsfunc)
    assert set(run.relay.mechanisms) == {"PLAIN"}
    # SPEC §5, one line per attempt; children in the foreground log to stderr.
    for rcpt in rcpts:
        line = re.compile(
            rf"^{postern.LOG_STAMP}postern-dispatch\[\d+\]: {qid}: to=<{re.escape(rcpt)}>, "
            rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{run.relay_ctl.port}, delay=\d+\.\d, "
            r"attempts=1, dsn=2\.0\.0, status=sent \(250 2\.0\.0 OK queued as 1234\)$", re.M)
        assert len(line.findall(run.sup.log())) == 1, run.sup.log_tail(60)


def test_killed_children_are_restarted(make_run):
    run = make_run()
    victims = {}
    for pid, (kind, _) in run.sup.children().items():
        victims.setdefault(kind, pid)
    assert sorted(victims) == sorted(chaoslib.KINDS)
    for pid in victims.values():
        run.sup.kill9(pid)
    postern.wait_for(lambda: run.sup.all_up() and
                     not set(victims.values()) & set(run.sup.children()),
                     timeout=60, interval=0.2, what="every killed child running again")
    assert sorted(p for _, p in run.sup.kills_seen()) == sorted(victims.values())
    assert sorted(k for k, _ in run.sup.children().values()) == sorted(chaoslib.KINDS)
    run.send(["cyd@example.com"])
    run.wait_all_ended(sent=2)
    assert len(run.relay.copies("cyd@example.com")) == 1


def test_stop_lets_senders_report_before_the_dispatcher_goes(make_run):
    """SIGTERM while the relay holds transactions, then a restart: every
    copy at the sink once.  Stopped all at once, the senders' last results
    reached no dispatcher, their leases expired and those copies went twice."""
    run = make_run(relay_delay=2, workers={"transforms": 1, "count": 2, "slots": 1})
    rcpts = [[f"m{m}r{r}@example.org" for r in range(3)] for m in range(2)]
    copies = len(sum(rcpts, [])) + len(rcpts)          # and an owner's notice per message
    for group in rcpts:
        run.send(group)
    # Transactions in flight: MAIL, then 2 s in DATA.
    postern.wait_for(lambda: run.relay.mails >= 2, timeout=60, what="two transactions")
    problems = run.stop()
    assert not problems, problems
    log = run.sup.log()
    # Every worker gone before the dispatcher got its SIGTERM, and no lease left behind.
    assert max(log.index(f"postern-{w} stopped") for w in
               ("ingest", "transform#1", "sender#1", "sender#2")) \
        < log.index("passed SIGTERM to 1 dispatcher") < log.index("postern-dispatch stopped")
    assert run.stats()["deliveries"]["leased"] == 0
    at_stop = len(run.relay.messages)
    assert 1 <= at_stop < copies, at_stop              # some sent, not all

    run.start()
    run.wait_all_ended(sent=copies, timeout=90)
    for rcpt in sum(rcpts, []):
        assert len(run.relay.copies(rcpt)) == 1, rcpt
    assert len(run.relay.copies(OWNER)) == len(rcpts)


def test_demo_with_no_config_file(workdir):
    """SPEC §2: `postern run` alone in an empty folder: LMTP on
    127.0.0.1:8024, Maildir ./var/outbox.  The port is fixed, so the
    relay runs in a network namespace of its own, where 8024 is free."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.fail("needs root, unshare and nsenter: postern run listens on the fixed "
                    "127.0.0.1:8024 and gets a network namespace of its own for it")
    sup = chaoslib.PosternRun(workdir, {})            # its postern.ini is never read
    with open(sup.log_path, "ab") as log:
        sup.proc = subprocess.Popen(
            ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" run',
             str(postern.binary("tools/postern"))],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=chaoslib.sanitizer_env())
    try:
        sup.wait_all_up(90)
        # [workers] transforms = 0: a transform worker per CPU (as GLib counts them).
        kinds = [kind for kind, _ in sup.children().values()]
        assert kinds.count("transform") == len(os.sched_getaffinity(0)), kinds
        for pid in sup.children():           # no -c handed down either
            assert "-c" not in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        rcpts = ["ada@example.org", "bob@example.net"]
        token = subprocess.run(
            [str(postern.spoolctl_binary()), "token", "add", "--from", OWNER,
             "--rcpt", rcpts[0], "--rcpt", rcpts[1]], cwd=workdir, check=True,
            capture_output=True, env=chaoslib.sanitizer_env(leaks=False)).stdout.decode().strip()
        # The client joins the namespace: postern.Client, run there by nsenter.
        client = ("import sys; sys.path.insert(0, sys.argv[1]); import postern; "
                  "c = postern.Client(('127.0.0.1', int(sys.argv[2]))); c.lhlo(); "
                  "print(c.send_message(sys.stdin.buffer.read(), sender=sys.argv[3], "
                  "rcpts=('restricted@localhost',)))")
        sent = subprocess.run(
            ["nsenter", f"--net=/proc/{sup.proc.pid}/ns/net", sys.executable, "-c", client,
             str(Path(__file__).resolve().parent), str(DEMO_PORT), OWNER],
            input=chain.lego_message(token), capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr.decode()
        assert re.fullmatch(r"[0-9A-F]{16}\n", sent.stdout.decode())
        new = workdir / "var" / "outbox" / "new"
        # A copy per recipient, and the owner's notice.
        files = postern.wait_for(lambda: new.is_dir() and len(list(new.iterdir())) == 3 and
                                 list(new.iterdir()), timeout=60, what="three files")
        to = sorted(email.utils.parseaddr(
            email.parser.BytesHeaderParser().parsebytes(f.read_bytes())["To"])[1] for f in files)
        assert to == sorted(rcpts + [OWNER]), to
    finally:
        rc = sup.stop()
        print(sup.log_tail())
    assert rc == 0 and not sup.sanitizer_findings()


def test_one_click_links_are_served_without_api_keys(make_run, workdir):
    """[unsubscribe] one_click alone (no [api] keys_file, no [events] url):
    postern run starts postern-api all the same, or the links in every copy
    would lead nowhere."""
    secret = workdir / "bounce.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    secret.chmod(0o600)
    api = f"127.0.0.1:{postern.free_port()}"
    run = make_run(extra={"api": {"listen": api},
                          "bounce": {"secret_file": secret},
                          "unsubscribe": {"one_click": "true"},
                          "rewrite": {"unsubscribe_url": f"http://{api}"}})
    postern.wait_for(lambda: "postern-api" in run.sup.names().values(), timeout=30,
                     what="postern-api started")

    def page():
        try:
            urllib.request.urlopen(f"http://{api}/u/notacode", timeout=5)
        except urllib.error.HTTPError as e:
            return e.code == 404 and e.headers["Content-Type"].startswith("text/html")
        except OSError:
            return False
        return False
    postern.wait_for(page, timeout=30, what="the unsubscribe page's 404")
