"""The SMTP client (sender/smtp_client.c) against real servers.

aiosmtpd plays the relay (STARTTLS or TLS, AUTH required, certificates from
a CA made here); a few raw socket scripts play the broken relays aiosmtpd
cannot (hang, drop mid-DATA, no STARTTLS). The C side is smtp_tool, whose
output lines are parsed here. Run with Debian's /usr/bin/python3.
"""
import datetime
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOOL = os.environ["SMTP_TOOL"]
USER, PASSWORD = "relayuser", "se cret:pw"
RCPTS = ["a@rcpt.test", "b@rcpt.test", "c@rcpt.test"]

# Lines that need dot-stuffing, one of them where the two data parts meet.
BODY = (b"From: sender@origin.test\r\nTo: list@origin.test\r\nSubject: dots\r\n\r\n"
        b"first line\r\n.hidden starts with a dot\r\n..two dots\r\n.\r\n"
        b"after a lone dot\r\n" + b"x" * 900 + b"\r\n"
        + "\u00fctf-8 body\r\n".encode() + b"last\r\n")
SPLIT = BODY.index(b".hidden")


# ---- certificates ----------------------------------------------------------

def _cert(subject, issuer, key, issuer_key, san=None, ca=False):
    now = datetime.datetime.utcnow()
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path, *objs):
    with open(path, "wb") as f:
        for o in objs:
            if isinstance(o, x509.Certificate):
                f.write(o.public_bytes(serialization.Encoding.PEM))
            else:
                f.write(o.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Postern Test CA", "Postern Test CA", ca_key, ca_key, ca=True)
    out = {"ca": _write(d / "ca.pem", ca)}
    for name, san in (("good", [x509.DNSName("localhost"),
                                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                      ("wrong", [x509.DNSName("wrong.example")])):
        key = ec.generate_private_key(ec.SECP256R1())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(_write(d / f"{name}.pem",
                                   _cert(name, "Postern Test CA", key, ca_key, san), key))
        out[name] = ctx
    return out


# ---- servers ---------------------------------------------------------------

class Relay:
    """aiosmtpd handler that records what it got and answers as told."""

    def __init__(self):
        self.messages = []          # (peer, mail_from, mail_options, rcpts, bytes)
        self.mechanisms = []
        self.mails = 0
        self.rsets = 0
        self.pipelining = True
        self.rcpt_replies = {}      # address -> reply
        self.mail_reply = None
        self.data_reply = None
        self.rcpt_replies_from = 1  # rcpt_replies apply from this MAIL on
        self.data_replies = {}      # MAIL count -> reply at the end of data
        self.peers = []             # the connection of each MAIL

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.mechanisms.append(mechanism)
        ok = (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=ok, handled=False)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.mails += 1
        self.peers.append(session.peer)
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        if address in self.rcpt_replies and self.mails >= self.rcpt_replies_from:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server, session, envelope):
        self.rsets += 1
        return "250 2.0.0 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply or self.mails in self.data_replies:
            return self.data_reply or self.data_replies[self.mails]
        self.messages.append((session.peer, envelope.mail_from, list(envelope.mail_options),
                              list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK queued as 1234"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def relay_factory(pki):
    started = []

    def start(cert="good", implicit_tls=False, **kw):
        relay = Relay()
        tls = {"ssl_context": pki[cert], "auth_require_tls": False} if implicit_tls \
            else {"tls_context": pki[cert], "require_starttls": True}
        params = dict(tls, auth_required=True, authenticator=relay.authenticate,
                      server_hostname="mx.test")
        params.update(kw)
        ctl = Controller(relay, hostname="127.0.0.1", port=_free_port(), **params)
        ctl.start()
        started.append(ctl)
        return relay, ctl.port

    yield start
    for ctl in started:
        ctl.stop()


class RawServer:
    """Plain-text SMTP server driven by a script, recording every byte."""

    def __init__(self, ehlo=(b"250-raw.test", b"250 PIPELINING"), greet=True,
                 replies=None, after_354=None, tls=None):
        self.ehlo, self.greet, self.tls = ehlo, greet, tls
        self.replies, self.after_354 = replies or {}, after_354
        self.received = bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn, conn.makefile("rb") as f:
                self._dialog(conn, f)
        except OSError:
            pass

    def _dialog(self, conn, f):
        if not self.greet:
            f.read()                    # until the client gives up
            return
        conn.sendall(b"220 raw.test ESMTP\r\n")
        for line in f:
            self.received += line
            verb = line[:4].upper().decode(errors="replace")
            if verb == "EHLO":
                conn.sendall(b"\r\n".join(self.ehlo) + b"\r\n")
            elif verb == "QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                reply = self.replies.get(verb, b"354 go ahead" if verb == "DATA" else b"250 OK")
                conn.sendall(reply + b"\r\n")
                if reply.startswith(b"354"):
                    self.after_354(f)
                    return                  # and close the connection

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def raw_factory():
    servers = []

    def start(**kw):
        servers.append(RawServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# ---- the tool --------------------------------------------------------------

RCPT_LINE = re.compile(r"rcpt (\S+) code=(\d+) status=(\S*) error=(\S+) phase=(\S+) "
                       r"verdict=(\S+) relay=(\S+) text=(.*)")


@pytest.fixture
def message(tmp_path):
    def write(data=BODY):
        path = tmp_path / "message.eml"
        path.write_bytes(data)
        return str(path)
    return write


def run_tool(url, data, *args, tls="require", rcpts=RCPTS, timeout=5000, check_ok=True):
    cmd = [TOOL, "--url", url, "--tls", tls, "--data", data, "--from", "bounces@origin.test",
           "--timeout", str(timeout), *args]
    for r in rcpts:
        cmd += ["--to", r]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    assert p.returncode == 0, p.stderr
    txns = []
    for line in p.stdout.splitlines():
        if line.startswith("txn "):
            _, _, _, ret, _, error = line.split(" ", 5)
            txns.append({"ret": int(ret), "error": error, "rcpts": {}})
        elif line.startswith("client connected="):
            txns[-1]["connected"] = line.endswith("=1")
        else:
            m = RCPT_LINE.fullmatch(line)
            assert m, line
            txns[-1]["rcpts"][m[1]] = dict(zip(
                ("code", "status", "error", "phase", "verdict", "relay", "text"),
                (int(m[2]), *m.groups()[2:])))
    assert txns, p.stdout
    return txns


def auth_args(pki, mech="plain", password=PASSWORD):
    return ["--user", USER, "--password", password, "--auth", mech, "--ca-file", pki["ca"],
            "--split", str(SPLIT)]


# ---- tests -----------------------------------------------------------------

def test_starttls_auth_plain_three_recipients(pki, relay_factory, message):
    relay, port = relay_factory()
    [t] = run_tool(f"smtp://localhost:{port}", message(), *auth_args(pki))
    assert t["ret"] == 3 and t["error"] == "none"
    for r in RCPTS:
        res = t["rcpts"][r]
        assert (res["code"], res["status"], res["verdict"], res["phase"]) == \
            (250, "2.0.0", "sent", "dot")
        assert res["relay"] == f"localhost[127.0.0.1]:{port}"
        assert res["text"] == "OK queued as 1234"
    assert relay.mechanisms == ["PLAIN"]
    [(peer, mail_from, options, rcpts, data)] = relay.messages
    assert mail_from == "bounces@origin.test" and rcpts == RCPTS
    assert f"SIZE={len(BODY)}" in options
    assert data == BODY


def test_auth_login(pki, relay_factory, message):
    relay, port = relay_factory()
    [t] = run_tool(f"smtp://localhost:{port}", message(), *auth_args(pki, "login"))
    assert t["ret"] == 3
    assert relay.mechanisms == ["LOGIN"]
    assert relay.messages[0][4] == BODY


def test_wrong_password_pauses(pki, relay_factory, message):
    """A refused AUTH is the relay's fault, not the copy's: it pauses the
    relay (the dispatcher then defers every copy until the pause ends)."""
    relay, port = relay_factory()
    [t] = run_tool(f"smtp://localhost:{port}", message(),
                   *auth_args(pki, password="wrong"))
    assert t["ret"] == -1 and t["error"].startswith("session")
    for res in t["rcpts"].values():
        assert (res["code"], res["status"], res["error"], res["phase"], res["verdict"]) == \
            (535, "5.7.8", "session", "auth", "paused")
    assert relay.mails == 0
    assert "wrong" not in t["error"]


@pytest.mark.parametrize("pipelining", [True, False])
def test_one_recipient_rejected(pki, relay_factory, message, pipelining):
    relay, port = relay_factory()
    relay.pipelining = pipelining
    relay.rcpt_replies["b@rcpt.test"] = "550 5.1.1 <b@rcpt.test>: Recipient address rejected"
    [t] = run_tool(f"smtp://localhost:{port}", message(), *auth_args(pki))
    assert t["ret"] == 2
    bad = t["rcpts"]["b@rcpt.test"]
    assert (bad["code"], bad["status"], bad["phase"], bad["verdict"]) == \
        (550, "5.1.1", "rcpt", "bounced")
    assert bad["text"] == "<b@rcpt.test>: Recipient address rejected"
    for r in ("a@rcpt.test", "c@rcpt.test"):
        assert t["rcpts"][r]["verdict"] == "sent"
    [(_, _, _, rcpts, data)] = relay.messages
    assert rcpts == ["a@rcpt.test", "c@rcpt.test"] and data == BODY


def test_451_after_data_defers(pki, relay_factory, message):
    relay, port = relay_factory()
    relay.data_reply = "451 4.3.0 Mail server temporarily rejected message"
    [t] = run_tool(f"smtp://localhost:{port}", message(), *auth_args(pki))
    assert t["ret"] == 0 and t["error"] == "none"
    for res in t["rcpts"].values():
        assert (res["code"], res["status"], res["phase"], res["verdict"]) == \
            (451, "4.3.0", "dot", "deferred")


def test_451_to_data_command_defers(raw_factory, message):
    raw = raw_factory(replies={"DATA": b"451 4.3.0 not now"})
    [t] = run_tool(f"smtp://127.0.0.1:{raw.port}", message(), tls="none")
    for res in t["rcpts"].values():
        assert (res["code"], res["phase"], res["verdict"]) == (451, "data", "deferred")


def test_quota_reply_pauses(pki, relay_factory, message):
    relay, port = relay_factory()
    relay.mail_reply = "550 5.4.5 Daily user sending quota exceeded."
    [t] = run_tool(f"smtp://localhost:{port}", message(), *auth_args(pki))
    for res in t["rcpts"].values():
        assert (res["code"], res["status"], res["phase"], res["verdict"]) == \
            (550, "5.4.5", "mail", "paused")


@pytest.mark.parametrize("cert,ca,why", [("wrong", True, "verification failed: hostname mismatch"),
                                         ("good", False, "verification failed: unable to get local issuer")])
def test_bad_certificate_is_tls_failure(pki, relay_factory, message, cert, ca, why):
    relay, port = relay_factory(cert=cert)
    args = auth_args(pki)
    if not ca:
        args = args[:args.index("--ca-file")] + args[args.index("--ca-file") + 2:]
    [t] = run_tool(f"smtp://localhost:{port}", message(), *args)
    assert t["ret"] == -1 and t["error"].startswith("tls")
    assert why in t["error"]
    for res in t["rcpts"].values():
        assert (res["code"], res["status"], res["error"], res["phase"], res["verdict"]) == \
            (0, "4.7.5", "tls", "tls", "deferred")
    assert relay.mails == 0 and relay.mechanisms == []


def test_require_without_starttls_sends_nothing(raw_factory, message):
    raw = raw_factory(ehlo=(b"250-raw.test", b"250-PIPELINING", b"250 AUTH PLAIN LOGIN"))
    [t] = run_tool(f"smtp://127.0.0.1:{raw.port}", message(), "--user", USER,
                   "--password", PASSWORD)
    assert t["ret"] == -1 and t["error"].startswith("tls")
    assert "not offered" in t["error"]
    for res in t["rcpts"].values():
        assert (res["error"], res["verdict"]) == ("tls", "deferred")
    time.sleep(0.2)
    assert bytes(raw.received) == b"EHLO client.test\r\n"


def test_plaintext_after_starttls_reply_is_refused(raw_factory, message):
    raw = raw_factory(ehlo=(b"250-raw.test", b"250 STARTTLS"),
                      replies={"STAR": b"220 go ahead\r\n250 injected"})
    [t] = run_tool(f"smtp://127.0.0.1:{raw.port}", message())
    assert t["ret"] == -1 and t["error"].startswith("protocol")
    assert "after its STARTTLS reply" in t["error"]
    assert b"MAIL" not in raw.received


def test_opportunistic_without_starttls_delivers(relay_factory, message):
    relay, port = relay_factory(tls_context=None, require_starttls=False, auth_required=False)
    [t] = run_tool(f"smtp://127.0.0.1:{port}", message(), tls="opportunistic")
    assert t["ret"] == 3 and relay.messages[0][4] == BODY


def test_silent_server_times_out(raw_factory, message):
    raw = raw_factory(greet=False)
    start = time.monotonic()
    [t] = run_tool(f"smtp://127.0.0.1:{raw.port}", message(), tls="none", timeout=1000)
    assert time.monotonic() - start < 10
    assert t["ret"] == -1 and t["error"].startswith("timeout")
    for res in t["rcpts"].values():
        assert (res["error"], res["phase"], res["status"], res["verdict"]) == \
            ("timeout", "greeting", "4.4.2", "deferred")


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_drop_mid_data_is_lost_connection(pki, raw_factory, message, scheme):
    raw = raw_factory(after_354=lambda f: f.read(65536),
                      tls=pki["good"] if scheme == "smtps" else None)
    big = BODY + b"y" * 76 + b"\r\n" + (b"z" * 998 + b"\r\n") * 8000
    [t] = run_tool(f"{scheme}://localhost:{raw.port}", message(big), "--ca-file", pki["ca"],
                   tls="none" if scheme == "smtp" else "require")
    assert t["ret"] == -1 and t["error"].startswith("lost")
    for res in t["rcpts"].values():
        assert (res["error"], res["phase"], res["status"], res["verdict"]) == \
            ("lost", "body", "4.4.2", "deferred")


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_drop_after_end_of_data_may_duplicate(pki, raw_factory, message, scheme):
    def read_to_dot(f):
        while f.readline() not in (b".\r\n", b""):
            pass
    raw = raw_factory(after_354=read_to_dot, tls=pki["good"] if scheme == "smtps" else None)
    [t] = run_tool(f"{scheme}://localhost:{raw.port}", message(), "--ca-file", pki["ca"],
                   tls="none" if scheme == "smtp" else "require")
    assert t["error"].startswith("lost") and "more than once" in t["error"]
    assert {r["phase"] for r in t["rcpts"].values()} == {"dot"}


def test_two_transactions_share_a_connection(pki, relay_factory, message):
    relay, port = relay_factory()
    txns = run_tool(f"smtp://localhost:{port}", message(), "--repeat", "2", *auth_args(pki))
    assert [t["ret"] for t in txns] == [3, 3]
    assert len(relay.messages) == 2 and relay.messages[0][0] == relay.messages[1][0]
    assert relay.rsets == 1 and relay.mechanisms == ["PLAIN"]


# ---- transactions sent ahead (RFC 2920: commands after the message content)

@pytest.mark.parametrize("pipelining", [True, False])
def test_transactions_sent_ahead(pki, relay_factory, message, pipelining):
    """--ahead announces each next transaction, and one more after the last.
    With PIPELINING its RSET, MAIL, RCPTs and DATA go with the end of data
    before it; the one never run costs the connection (no reuse, no QUIT
    into the DATA the relay accepted, no message). Without, as before."""
    relay, port = relay_factory()
    relay.pipelining = pipelining
    txns = run_tool(f"smtp://localhost:{port}", message(), "--repeat", "3", "--ahead",
                    *auth_args(pki))
    assert [t["ret"] for t in txns] == [3, 3, 3]
    assert [m[4] for m in relay.messages] == [BODY] * 3
    assert len(set(relay.peers)) == 1
    assert (relay.mails, relay.rsets, txns[-1]["connected"]) == \
        ((4, 3, False) if pipelining else (3, 2, True))


def test_rcpt_rejected_in_a_group_sent_ahead(pki, relay_factory, message):
    relay, port = relay_factory()
    relay.rcpt_replies = {RCPTS[1]: "550 5.1.1 no such user"}
    relay.rcpt_replies_from = 2
    txns = run_tool(f"smtp://localhost:{port}", message(), "--repeat", "2", "--ahead",
                    *auth_args(pki))
    assert [t["ret"] for t in txns] == [3, 2]
    res = txns[1]["rcpts"][RCPTS[1]]
    assert (res["code"], res["status"], res["phase"], res["verdict"]) == \
        (550, "5.1.1", "rcpt", "bounced")
    assert {txns[1]["rcpts"][r]["code"] for r in (RCPTS[0], RCPTS[2])} == {250}
    assert [m[3] for m in relay.messages] == [RCPTS, [RCPTS[0], RCPTS[2]]]
    assert len(set(relay.peers)) == 1


def test_421_at_end_of_data_with_a_transaction_sent_ahead(pki, relay_factory, message):
    """The commands that went ahead die with the connection; the next
    transaction runs whole on a new one."""
    relay, port = relay_factory()
    relay.data_replies = {1: "421 4.3.2 closing"}
    txns = run_tool(f"smtp://localhost:{port}", message(), "--repeat", "2", "--ahead",
                    *auth_args(pki))
    assert txns[0]["ret"] == 0
    assert {(r["code"], r["status"]) for r in txns[0]["rcpts"].values()} == {(421, "4.3.2")}
    assert txns[1]["ret"] == 3
    [(peer, _, _, rcpts, data)] = relay.messages
    assert peer == relay.peers[-1] != relay.peers[0] and rcpts == RCPTS and data == BODY


def test_reconnects_when_server_closed(pki, relay_factory, message):
    relay, port = relay_factory(timeout=1)
    txns = run_tool(f"smtp://localhost:{port}", message(), "--repeat", "2", "--pause", "2000",
                    *auth_args(pki))
    assert [t["ret"] for t in txns] == [3, 3]
    assert len(relay.messages) == 2 and relay.messages[0][0] != relay.messages[1][0]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtps(pki, relay_factory, message):
    relay, port = relay_factory(implicit_tls=True)
    [t] = run_tool(f"smtps://localhost:{port}", message(), *auth_args(pki))
    assert t["ret"] == 3 and relay.messages[0][4] == BODY


def test_missing_final_crlf_is_added(pki, relay_factory, message):
    relay, port = relay_factory()
    [t] = run_tool(f"smtp://localhost:{port}", message(BODY + b".no newline"),
                   *auth_args(pki))
    assert t["ret"] == 3 and relay.messages[0][4] == BODY + b".no newline\r\n"


def test_maildir(tmp_path, message):
    box = tmp_path / "outbox"
    for _ in range(2):
        p = subprocess.run([TOOL, "--url", f"maildir:{box}", "--data", message()],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout == "maildir ok\n", p.stderr
    files = sorted((box / "new").iterdir())
    assert len(files) == 2 and files[0].name != files[1].name
    assert all(f.read_bytes() == BODY for f in files)
    assert list((box / "tmp").iterdir()) == [] and (box / "cur").is_dir()
    assert oct((box / "new").stat().st_mode & 0o777) == "0o700"
