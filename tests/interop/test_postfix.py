"""Real Postfix in front of Postern (issue: Proof under fire, item 1).

A private Postfix instance routes the restricted domain to Postern over
LMTP exactly as packaging/postfix/ documents (transport map entry
`lmtp:[127.0.0.1]:PORT`) and relays everything else to an aiosmtpd sink;
Postern (`postern run`) relays its signed copies to the same sink.
"""
import base64
import email
import os
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))
import postern  # noqa: E402
from postfix_instance import PostfixInstance  # noqa: E402

DOMAIN = "abakus.no"
RESTRICTED = "restricted@abakus.no"
SENDER = "test@example.org"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix needs root")


class Sink:
    """aiosmtpd server keeping every envelope it accepts."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 OK stored"

    def wait(self, predicate, timeout=90, what="messages"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in list(self.messages) if predicate(m)]
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"sink: no {what} after {timeout}s; got {[m[:2] for m in self.messages]}")


@pytest.fixture
def sink():
    handler = Sink()
    port = postern.free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port)
    ctl.start()
    handler.port = port
    yield handler
    ctl.stop()


def documented_transport(lmtp_port):
    """packaging/postfix/transport as an operator installs it, but for the
    port, plus nobody@abakus.no routed the same way: Postern refuses it
    (550 5.1.1), which Postfix must turn into a bounce."""
    table = {}
    text = (Path(postern.SOURCE) / "packaging" / "postfix" / "transport").read_text()
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split()
            table[key] = value.replace(":8024", f":{lmtp_port}")
    assert table, "packaging/postfix/transport routes nothing"
    table["nobody@abakus.no"] = f"lmtp:[127.0.0.1]:{lmtp_port}"
    return table


def dkim_record(config, key_path, key_type):
    out = postern.spoolctl(config, "dkim", "keygen", "--type", key_type, "--out", key_path).stdout
    return out.decode().strip()


@pytest.fixture
def relay_chain(tmp_path, sink):
    """postern run + private Postfix in front of it, both relaying to sink."""
    lmtp_port, smtpd_port = postern.free_port(), postern.free_port()
    config = tmp_path / "postern.ini"
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    sections = {
        "spool": {"dir": tmp_path / "spool"},
        "ingest": {"listen": f"127.0.0.1:{lmtp_port}", "recipients": RESTRICTED},
        "rewrite": {"from": "Abakus <no-reply@abakus.no>",
                    "unsubscribe_url": "https://abakus.no/unsubscribe"},
        "dkim": {"domain": DOMAIN, "keys": f"interop:{keys / 'ed.pem'}"},
        "relay": {"url": f"smtp://127.0.0.1:{sink.port}", "tls": "none"},
        "retry": {"initial": "1s", "max": "2s", "lease": "10s"},
        "bounce": {"envelope_from": "restricted-bounces@abakus.no"},
        "workers": {"count": 1, "transforms": 1},
    }
    postern.write_config(config, sections)
    record = dkim_record(config, keys / "ed.pem", "ed25519")
    run = postern.Daemon([postern.binary("tools/postern"), "-c", config, "run"],
                         tmp_path / "postern.log", r"started postern-sender#1")
    run.start()
    postfix = PostfixInstance(tmp_path / "postfix", smtpd_port,
                              relayhost=f"[127.0.0.1]:{sink.port}",
                              transport=documented_transport(lmtp_port),
                              relay_domains=[DOMAIN], name="postfix-interop")
    postfix.start()
    chain = type("Chain", (), {})()
    chain.config, chain.postfix, chain.run, chain.sink = config, postfix, run, sink
    chain.txt = record.split('"')[1] if '"' in record else record.split(None, 2)[-1]
    chain.tmp = tmp_path
    yield chain
    maillog = postfix.log()
    postfix.stop()
    rc = run.stop(timeout=60)
    print("----- postern run log -----\n" + run.log_tail(300))
    print("----- postfix maillog -----\n" + maillog[-20000:])
    assert not run.sanitizer_findings(), run.sanitizer_findings()[:5]
    assert rc == 0, f"postern run exited {rc}"


def message_with_token(token, subject="Interop"):
    msg = EmailMessage()
    msg["From"] = f"Tester <{SENDER}>"
    msg["To"] = RESTRICTED
    msg["Subject"] = subject
    msg.set_content("Hello from the interop test.\n")
    msg.add_attachment(f"LEGOTOKEN{token}\n".encode(), maintype="text", subtype="plain",
                       filename="token.txt")
    return msg.as_bytes()


def swaks(port, to, data_path, sender=SENDER):
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", sender, "--to", to,
                        "--data", str(data_path), "--timeout", "30"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def verify(content, txt):
    def dnsfunc(name, timeout=5):
        return txt.encode()
    return dkim.verify(content, dnsfunc=dnsfunc)


def test_signed_copies_through_postfix(relay_chain):
    rcpts = ["one@example.org", "two@example.org"]
    token = postern.spoolctl(relay_chain.config, "token", "add", "--from", SENDER,
                             *sum((["--rcpt", r] for r in rcpts), [])).stdout.decode().strip()
    data = relay_chain.tmp / "msg.eml"
    data.write_bytes(message_with_token(token))
    swaks(relay_chain.postfix.port, RESTRICTED, data)

    for r in rcpts:
        (got,) = relay_chain.sink.wait(lambda m, r=r: m[1] == [r], what=f"copy for {r}")
        assert got[0] == "restricted-bounces@abakus.no"
        content = got[2].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert verify(content, relay_chain.txt), content[:2000]
        parsed = email.message_from_bytes(content)
        assert parsed["From"] == "Abakus <no-reply@abakus.no>"
        assert parsed["To"] == r
        assert b"LEGOTOKEN" not in content
        assert token.encode() not in content
    # Postfix logged the LMTP delivery to Postern as sent.
    assert f"relay=127.0.0.1[127.0.0.1]" in relay_chain.postfix.log()


def test_rejected_recipient_bounces_in_postfix(relay_chain):
    data = relay_chain.tmp / "msg.eml"
    data.write_bytes(message_with_token("whatever"))
    swaks(relay_chain.postfix.port, "nobody@abakus.no", data)
    (bounce,) = relay_chain.sink.wait(lambda m: m[1] == [SENDER] and m[0] in ("", "<>"),
                                      what="Postfix bounce to the sender")
    text = bounce[2].decode(errors="replace")
    assert "5.1.1" in text and "nobody@abakus.no" in text


def test_postfix_defers_while_postern_is_down(relay_chain):
    rcpts = ["late@example.org"]
    token = postern.spoolctl(relay_chain.config, "token", "add", "--from", SENDER,
                             "--rcpt", rcpts[0]).stdout.decode().strip()
    relay_chain.run.stop(timeout=60)
    data = relay_chain.tmp / "msg.eml"
    data.write_bytes(message_with_token(token, "Deferred"))
    swaks(relay_chain.postfix.port, RESTRICTED, data)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        queue = relay_chain.postfix.queue()
        reasons = [r.get("delay_reason", "") for q in queue for r in q.get("recipients", [])]
        if any("refused" in r or "connect" in r for r in reasons):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"Postfix did not defer: {relay_chain.postfix.queue()}")
    assert not relay_chain.sink.messages

    relay_chain.run.start()
    relay_chain.postfix.flush()
    relay_chain.sink.wait(lambda m: m[1] == rcpts, timeout=120, what="copy after restart")
    assert not relay_chain.postfix.queue()
