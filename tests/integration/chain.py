"""chain.py - the whole Postern chain for the delivery tests (and bench/).

ingest + dispatch + transform + N sender workers on one temporary spool,
with a relay the test provides.  Tokens are registered with spoolctl,
messages go in over LMTP, states come out of `spoolctl --json`.

Runs under Debian's /usr/bin/python3 (python3-dkim, aiosmtpd, cryptography).
"""
import asyncio
import base64
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import postern

# The SMTP client's tests hold the relays (aiosmtpd with STARTTLS + AUTH, raw
# scripted servers) and the test CA; their module wants SMTP_TOOL at import,
# which only their own tests use.
os.environ.setdefault("SMTP_TOOL", "")
import smtp_client_test  # noqa: E402
from smtp_client_test import PASSWORD, USER  # noqa: E402

OWNER = "test@abakus.no"
DOMAIN = "abakus.no"
SELECTOR = "t1"
BOUNCES = "restricted-bounces@abakus.no"


def sender_binary():
    return postern.binary("sender/postern-sender")


def dispatch_binary():
    return postern.binary("dispatch/postern-dispatch")


def transform_binary():
    return postern.binary("transform/postern-transform")


def lego_message(token, subject="Restricted Message", sender=OWNER, attachment=b""):
    """valid.eml with its token part carrying `token` and a unique Message-ID."""
    data = (postern.FIXTURES / "valid.eml").read_bytes()
    data = data.replace(b"TEVHT1RPS0VOdGVzdF90b2tlbgo=",
                        base64.encodebytes(b"LEGOTOKEN" + token.encode() + b"\n").strip())
    data = data.replace(b"Subject: Restricted Message", b"Subject: " + subject.encode())
    data = data.replace(b"From: Postern Test <test@abakus.no>", f"From: <{sender}>".encode())
    data = re.sub(rb"Message-ID: <[^>]*>",
                  f"Message-ID: <{time.monotonic_ns()}@test.postern.example>".encode(), data)
    if attachment:
        boundary = b"--postern-valid-mixed"
        part = (boundary + b"\nContent-Type: application/octet-stream\n"
                b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(attachment))
        data = data.replace(boundary + b"--", part + boundary + b"--")
    return postern.crlf(data)


class Relay(smtp_client_test.Relay):
    """The SMTP client tests' relay, plus scripted replies per attempt.

    data_script: rcpt -> replies to the next end-of-data of a copy to rcpt.
    hold:        rcpts whose next end-of-data waits while `holding`; the
                 client's address goes to `held` (who is mid-transaction).
    delay:       seconds every end-of-data reply waits (a slow relay).
    """

    def __init__(self):
        super().__init__()
        self.data_script = {}
        self.hold, self.holding, self.held = set(), True, []
        self.delay = 0
        self.attempts = []          # (monotonic time, rcpts, reply) per end of data

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        if self.hold & set(envelope.rcpt_tos):
            self.hold -= set(envelope.rcpt_tos)
            self.held.append(session.peer)
            while self.holding:
                await asyncio.sleep(0.05)
        for r in envelope.rcpt_tos:
            if self.data_script.get(r):
                reply = self.data_script[r].pop(0)
                self.attempts.append((time.monotonic(), list(envelope.rcpt_tos), reply))
                return reply
        self.attempts.append((time.monotonic(), list(envelope.rcpt_tos), "250"))
        return await super().handle_DATA(server, session, envelope)

    def attempt_times(self, rcpt):
        return [t for t, rcpts, _ in self.attempts if rcpt in rcpts]

    def copies(self, rcpt):
        """(mail_from, rcpts, bytes) of every message accepted for rcpt."""
        return [(m[1], m[3], m[4]) for m in self.messages if rcpt in m[3]]


def start_relay(pki, cert="good"):
    """aiosmtpd on 127.0.0.1 with STARTTLS required and AUTH: (relay, controller)."""
    relay = Relay()
    ctl = Controller(relay, hostname="127.0.0.1", port=postern.free_port(), tls_context=pki[cert],
                     require_starttls=True, auth_required=True,
                     authenticator=relay.authenticate, server_hostname="mx.test")
    ctl.start()
    return relay, ctl


def relay_config(workdir, pki, port, scheme="smtp", user=True):
    """[relay] for a test relay on localhost:port, with the test CA and password."""
    cfg = {"url": f"{scheme}://localhost:{port}", "ca_file": pki["ca"], "tls": "require"}
    if user:
        pw = Path(workdir) / "relay-password"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        cfg.update(user=USER, password_file=pw)
    return {"relay": cfg}


class Chain:
    """The four kinds of daemon on one spool, configured as the test wants."""

    def __init__(self, workdir, config=None, own=None, transforms=1):
        """config: for every daemon; own: {"dispatch"|"transform": overrides} in own files;
        transforms: how many transform workers (self.transform is the first)."""
        self.workdir = Path(workdir)
        # ipc:// paths must fit in sun_path (108 bytes): pytest's are too long.
        self.rundir = Path(tempfile.mkdtemp(prefix="pst", dir="/tmp"))
        self.dkim_key = self.workdir / "dkim-ed25519.pem"
        self.dkim_record = self._dkim_key(self.dkim_key)
        self.ingest = postern.Ingest(self.workdir, name="ingest", config=postern.merge({
            "ingest": {"recipients": postern.RECIPIENT},
            "workers": {"dispatch": f"ipc://{self.rundir}/dispatch",
                        "hints": f"ipc://{self.rundir}/hints"},
            "dkim": {"domain": DOMAIN, "keys": f"{SELECTOR}:{self.dkim_key}"},
            "rewrite": {"from": "Abakus <no-reply@abakus.no>"},
            "bounce": {"envelope_from": BOUNCES},
            "relay": {"timeout": "10s"},
            "retry": {"initial": "1s", "max": "4s", "lease": "30s"},
        }, config))
        self.config_path = self.ingest.config_path
        own = own or {}
        self.dispatch = postern.Daemon(
            [dispatch_binary(), "-c", self.config_for("dispatch", own.get("dispatch")), "-f"],
            self.workdir / "dispatch.log", r"daemon started")
        self.transforms = [postern.Daemon(
            [transform_binary(), "-c", self.config_for("transform", own.get("transform")), "-f"],
            self.workdir / f"transform{i or ''}.log", r"daemon started") for i in range(transforms)]
        self.transform = self.transforms[0]
        self.senders = []

    def config_for(self, name, overrides):
        """The common config file, or one of its own with overrides."""
        if not overrides:
            return self.config_path
        path = self.workdir / f"{name}.ini"
        postern.write_config(path, postern.merge(self.ingest.sections, overrides))
        return path

    @staticmethod
    def _dkim_key(path):
        key = ed25519.Ed25519PrivateKey.generate()
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)

    def daemons(self):
        return [self.ingest, self.dispatch, *self.transforms, *self.senders]

    def start(self, senders=1):
        self.ingest.start()
        self.dispatch.start()
        for t in self.transforms:
            t.start()
        for _ in range(senders):
            self.add_sender()
        return self

    def add_sender(self, config=None):
        """Start a sender worker; config overrides go into its own file."""
        name = f"sender{len(self.senders)}"
        s = postern.Daemon([sender_binary(), "-c", self.config_for(name, config), "-f"],
                           self.workdir / f"{name}.log", r"daemon started")
        self.senders.append(s)
        return s.start()

    def stop(self):
        """Stop everything; returns the problems found (exit codes, sanitizer reports)."""
        problems = postern.stop_and_check(list(reversed(self.daemons())), tail=150)
        shutil.rmtree(self.rundir, ignore_errors=True)
        return problems

    # ---- spool ----------------------------------------------------------

    def spoolctl(self, *args, **kw):
        return postern.spoolctl(self.config_path, *args, **kw)

    def token(self, *rcpts, owner=OWNER):
        args = ["token", "add", "--from", owner]
        for r in rcpts:
            args += ["--rcpt", r]
        return self.spoolctl(*args).stdout.decode().strip()

    def send(self, rcpts, subject="Restricted Message", **kw):
        """Register a token for rcpts, send a message with it: the queue id."""
        token = self.token(*rcpts)
        with self.ingest.client() as c:
            c.lhlo()
            return c.send_message(lego_message(token, subject=subject, **kw), sender=OWNER)

    def show(self, qid):
        return postern.spoolctl_show(self.config_path, qid)

    def deliveries(self, qid):
        return postern.parse_json_lines(
            self.spoolctl("--json", "show", qid, "--deliveries").stdout)

    def outgoing(self, qid, rcpt):
        return self.spoolctl("show", qid, "--outgoing", "--rcpt", rcpt).stdout

    def stats(self):
        return postern.json_stats(self.config_path)

    def wait_state(self, qid, states, timeout=60):
        """Wait until message qid is in one of states; returns its deliveries."""
        states = (states,) if isinstance(states, str) else states
        postern.wait_for(lambda: self.show(qid)["state"] in states, timeout=timeout,
                         interval=0.2, what=f"{qid} in {states}")
        return self.deliveries(qid)

    def wait_deliveries(self, qid, pred, timeout=60, what="deliveries"):
        """Wait until pred(deliveries) holds; returns the deliveries."""
        last = []

        def check():
            last[:] = self.deliveries(qid)
            return pred(last)
        try:
            postern.wait_for(check, timeout=timeout, interval=0.2, what=what)
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {json.dumps(last)}") from None
        return last

    # ---- DKIM -----------------------------------------------------------

    def dnsfunc(self, name, timeout=5):
        if name.rstrip(b".") == f"{SELECTOR}._domainkey.{DOMAIN}".encode():
            return self.dkim_record
        return None

    def dkim_ok(self, data: bytes):
        return dkim.verify(data, dnsfunc=self.dnsfunc)


@pytest.fixture
def make_chain(tmp_path, pki):
    """make_chain(config, senders=1, relay=True, own=None, cert="good") -> (Chain, Relay|None).

    With relay, an aiosmtpd relay is started and [relay] points at it.
    Teardown stops everything and fails the test on a daemon's non-zero
    exit at SIGTERM or a sanitizer report in any daemon's log.
    """
    chains, relays = [], []

    def make(config=None, senders=1, relay=True, own=None, cert="good"):
        r = None
        cfg = config or {}
        if relay:
            r, ctl = start_relay(pki, cert)
            relays.append(ctl)
            cfg = postern.merge(relay_config(tmp_path, pki, ctl.port), cfg)
        c = Chain(tmp_path, cfg, own=own)
        chains.append(c)
        c.start(senders=senders)
        return c, r

    yield make
    problems = []
    for c in chains:
        problems += c.stop()
    for ctl in relays:
        ctl.stop()
    if problems:
        pytest.fail("daemon problems:\n" + "\n".join(problems), pytrace=False)
