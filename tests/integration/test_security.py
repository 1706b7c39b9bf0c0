"""The claims of docs/security.md that a test can check.

Each test names the claim it backs.  The chain is the real one (ingest,
dispatch, transform, sender, an aiosmtpd relay with STARTTLS and AUTH).
"""
import os
import re
import subprocess
import time
from pathlib import Path

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import PASSWORD, pki  # noqa: F401  (fixture)

RCPTS = ["ada@example.org", "bob@example.net"]


def all_logs(c):
    return "\n".join(d.log() for d in c.daemons())


def test_secrets_never_logged_or_shown(make_chain):
    """Claim S4: tokens, the relay password and DKIM private keys appear in
    no log line and no spoolctl output; the spool keeps only token hashes."""
    c, relay = make_chain()
    token = c.token(*RCPTS)
    with c.ingest.client() as cl:
        cl.lhlo()
        qid = cl.send_message(pc.lego_message(token), sender=OWNER)
    c.wait_state(qid, "done")
    pc.postern.wait_for(lambda: relay.copies(OWNER), timeout=60, what="owner's notice")

    outputs = [c.spoolctl(*args).stdout.decode(errors="replace") for args in (
        ["list"], ["--json", "list"], ["show", qid], ["--json", "show", qid],
        ["show", qid, "--deliveries"], ["token", "list"], ["--json", "token", "list"],
        ["stats"], ["metrics"])]
    key_body = "".join(l for l in c.dkim_key.read_text().splitlines() if not l.startswith("-"))
    haystack = all_logs(c) + "\n".join(outputs)
    assert token not in haystack
    assert PASSWORD not in haystack
    assert key_body[:40] not in haystack
    # Nor do the copies sent out carry it: the token part was removed.
    for rcpt in RCPTS:
        [(_, _, data)] = relay.copies(rcpt)
        assert token.encode() not in data and b"LEGOTOKEN" not in data
    # The spool file holds the SHA-256 of the token, not the token.
    data_mdb = (c.ingest.spool_dir / "data.mdb").read_bytes()
    raw = c.spoolctl("show", qid, "--raw", "--unmasked").stdout
    assert token.encode() not in data_mdb.replace(raw, b"")


def test_copies_go_only_to_registered_recipients(make_chain):
    """Claim S1 (no open relay): recipients come from the token's
    registration only; To/Cc/Bcc in the message reach nobody."""
    c, relay = make_chain()
    token = c.token(*RCPTS)
    msg = pc.lego_message(token).replace(
        b"To: restricted@abakus.no",
        b"To: restricted@abakus.no, eve@evil.example\r\nCc: mallory@evil.example\r\n"
        b"Bcc: trudy@evil.example")
    with c.ingest.client() as cl:
        cl.lhlo()
        qid = cl.send_message(msg, sender=OWNER)
    dl = c.wait_state(qid, "done")
    assert sorted(d["rcpt"] for d in dl) == sorted(RCPTS)
    for evil in ("eve@evil.example", "mallory@evil.example", "trudy@evil.example"):
        assert not relay.copies(evil)
    with c.ingest.client() as cl:
        cl.lhlo()
        cl.cmd(f"MAIL FROM:<{OWNER}>")
        assert cl.cmd("RCPT TO:<eve@evil.example>").startswith("550 5.1.1")


def test_token_is_bound_to_its_sender(make_chain):
    """Claim S2: a token works only for the envelope sender it was
    registered for; a stranger's attempt neither sends nor burns it."""
    c, relay = make_chain()
    token = c.token(*RCPTS)
    with c.ingest.client() as cl:
        cl.lhlo()
        bad = cl.send_message(pc.lego_message(token, sender="thief@evil.example"),
                              sender="thief@evil.example")
    c.wait_state(bad, "rejected")
    assert c.show(bad)["reason"] == "SENDER_MISMATCH"
    with c.ingest.client() as cl:
        cl.lhlo()
        good = cl.send_message(pc.lego_message(token), sender=OWNER)
    c.wait_state(good, "done")
    for rcpt in RCPTS:
        assert len(relay.copies(rcpt)) == 1
    # No notice to the thief: it owns no token (no backscatter).
    assert not relay.copies("thief@evil.example")
    assert token not in all_logs(c)                      # S4 on the refusal path too


def test_guessed_token_is_refused_quietly(make_chain):
    """Claim S3: a guessed token is TOKEN_INVALID; nobody is told."""
    c, relay = make_chain()
    c.token(*RCPTS)
    guess = "A" * 43
    with c.ingest.client() as cl:
        cl.lhlo()
        qid = cl.send_message(pc.lego_message(guess, sender="guesser@evil.example"),
                              sender="guesser@evil.example")
    c.wait_state(qid, "rejected")
    assert c.show(qid)["reason"] == "TOKEN_INVALID"      # a token, but not a known one
    time.sleep(1)
    assert not relay.messages
    assert guess not in all_logs(c)                      # S4 on the refusal path too


def test_world_readable_dkim_key_is_refused(tmp_path):
    """Claim S5: a key file readable by group or others is refused, naming it."""
    key = tmp_path / "loose.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    key.chmod(0o644)
    cfg = tmp_path / "t.ini"
    postern.write_config(cfg, {
        "spool": {"dir": tmp_path / "spool"},
        "dkim": {"domain": "abakus.no", "keys": f"s1:{key}"},
        "workers": {"dispatch": f"ipc://{tmp_path}/d", "hints": f"ipc://{tmp_path}/h"}})
    p = subprocess.run([str(pc.transform_binary()), "-c", str(cfg), "-f"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    assert str(key) in p.stderr and re.search(r"group|others|0644|mode", p.stderr), p.stderr


def test_tcp_dispatch_requires_curve(tmp_path):
    """Claim S6: ZeroMQ over TCP only with CURVE: a dispatcher told to
    listen on tcp:// without keys refuses to start."""
    cfg = tmp_path / "d.ini"
    postern.write_config(cfg, {
        "spool": {"dir": tmp_path / "spool"},
        "workers": {"dispatch": f"tcp://127.0.0.1:{postern.free_port()}",
                    "hints": f"ipc://{tmp_path}/h"}})
    p = subprocess.run([str(pc.dispatch_binary()), "-c", str(cfg), "-f"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    assert "CURVE" in p.stderr, p.stderr
