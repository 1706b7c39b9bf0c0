"""Pull mode ([token] claim_url): the platform decides each token.

A real platform (http.server in a thread) answers the transform's claims;
the whole chain runs (chain.py).  Checked: a 200 sends copies to exactly
the recipients answered, each of 404/409/403/410 rejects with its reason,
the platform down then up leaves the message incoming (with why and when)
and then sends it, nothing lost; every claim's HMAC is checked by the
server and no claim carries the token in clear.
"""
import hashlib
import hmac
import json
import re
import time

import pytest

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)

SECRET = b"claim-secret-of-the-platform-0123456789"


class Platform(postern.HttpPeer):
    """The claim endpoint: checks each POST's signature, records it, and
    answers with `answer(claim) -> (status, body dict or None)`."""

    def __init__(self, port=None, ssl_context=None, keep_alive=False):
        super().__init__(port, ssl_context, keep_alive)
        self.claims = []                # (headers, raw body, decoded body)
        self.ports = []                 # the client's port of each claim: its connection
        self.close_next = False         # answer the next claim with Connection: close
        self.bad_signatures = 0
        self.answer = lambda claim: (404, None)

    def on_post(self, handler, raw):
        want = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(handler.headers.get("X-Postern-Signature", ""), want):
            with self.lock:
                self.bad_signatures += 1
            status, body = 401, {"error": "bad signature"}
        else:
            claim = json.loads(raw)
            with self.lock:
                self.claims.append((dict(handler.headers), raw, claim))
                self.ports.append(handler.client_address[1])
            status, body = self.answer(claim)
        data = json.dumps(body).encode() if body is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if self.close_next:
            self.close_next = False
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}/postern/claim"


@pytest.fixture
def platform():
    p = Platform().start()
    yield p
    p.stop()


def claim_chain(make_chain, tmp_path, url, extra=None):
    secret = tmp_path / "claim-secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    c, relay = make_chain(postern.merge(
        {"token": {"claim_url": url, "claim_secret_file": secret,
                   "claim_timeout": "3s", "claim_max_backoff": "2s"}}, extra or {}))
    return c, relay


def send(c, token, subject="Restricted Message", sender=OWNER):
    with c.ingest.client() as cl:
        cl.lhlo()
        return cl.send_message(pc.lego_message(token, subject=subject, sender=sender),
                               sender=sender)


def assert_no_clear_token(p, token):
    for headers, raw, claim in p.claims:
        assert token.encode() not in raw
        assert all(token not in v for v in headers.values())
        assert claim["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()


def test_granted_sends_to_exactly_those(make_chain, tmp_path, platform):
    c, relay = claim_chain(make_chain, tmp_path, platform.url)
    rcpts = ["ada@example.org", "Bob@Example.net"]
    platform.answer = lambda claim: (200, {"recipients": rcpts + ["ada@EXAMPLE.org"],
                                           "hide_sender": False})
    token = "claimed-token-never-registered-0123456789"
    qid = send(c, token, subject="Claimed")
    dl = c.wait_deliveries(qid, lambda dl: dl and all(d["state"] == "sent" for d in dl),
                           what="copies sent")
    assert sorted(d["rcpt"] for d in dl) == ["Bob@example.net", "ada@example.org"]
    assert relay.copies("ada@example.org") and relay.copies("Bob@example.net")
    # The owner's notice is a message of its own: it may reach the relay after the copies.
    postern.wait_for(lambda: len(relay.messages) >= len(dl) + 1, what="the owner's notice")
    assert len(relay.messages) == len(dl) + 1          # the copies and the owner's notice
    ((headers, raw, claim),) = platform.claims
    assert claim["queue_id"] == qid and claim["sender"] == OWNER
    assert claim["subject"] == "Claimed" and claim["message_id"].endswith("@test.postern.example")
    assert headers["X-Postern-Queue-Id"] == qid
    assert platform.bad_signatures == 0
    assert_no_clear_token(platform, token)
    # No token in the spool, and none was made: the platform keeps it.
    assert c.spoolctl("--json", "token", "list").stdout.strip() == b""
    assert token not in c.transform.log() and token not in c.ingest.log()


def test_claims_keep_one_connection(make_chain, tmp_path):
    """The transform keeps its connection to the platform from one claim to
    the next (no handshake per mail), opens another once the platform
    closed it, and logs each claim with its duration."""
    p = Platform(keep_alive=True).start()
    try:
        c, relay = claim_chain(make_chain, tmp_path, p.url)
        p.answer = lambda claim: (200, {"recipients": ["ada@example.org"]})
        qids = []
        for i in range(4):
            p.close_next = i == 2
            qids.append(send(c, f"kept-connection-token-{i}-0123456789"))
            postern.wait_for(lambda: len(p.claims) == i + 1, what=f"claim {i + 1}")
        for qid in qids:
            c.wait_deliveries(qid, lambda dl: dl and dl[0]["state"] == "sent", what="copy sent")
        assert p.ports[0] == p.ports[1] == p.ports[2] != p.ports[3], p.ports
        for qid in qids:
            assert re.search(rf"claim: {qid}: granted in [0-9]+\.[0-9]{{2}} ms", c.transform.log())
    finally:
        p.stop()


@pytest.mark.parametrize("status,reason", [(404, "TOKEN_INVALID"), (409, "TOKEN_USED"),
                                           (403, "SENDER_MISMATCH"), (410, "TOKEN_EXPIRED")])
def test_refusals(make_chain, tmp_path, platform, status, reason):
    c, relay = claim_chain(make_chain, tmp_path, platform.url)
    platform.answer = lambda claim: (status, {"error": reason.lower()})
    token = "refused-token-0123456789abcdef"
    qid = send(c, token)
    c.wait_state(qid, "rejected")
    m = c.show(qid)
    assert m["reason"] == reason
    assert c.deliveries(qid) == []
    assert platform.bad_signatures == 0 and len(platform.claims) == 1
    assert_no_clear_token(platform, token)
    # 409 and 410 say the sender owns the token: it is told why (today's notice).
    notices = [n for n in postern.spoolctl_list(c.config_path) if n["sender"] == ""]
    if reason in ("TOKEN_USED", "TOKEN_EXPIRED"):
        postern.wait_for(lambda: [n for n in postern.spoolctl_list(c.config_path)
                                  if n["sender"] == ""], what="rejection notice")
    else:
        assert notices == []


def test_https_needs_the_claim_ca_file(make_chain, tmp_path):
    """[token] claim_ca_file: without it the platform's self-signed
    certificate fails the claim (the message waits, the log names the URL
    and the TLS error); with it the claim is granted and the copy sent."""
    cert, ctx = postern.self_signed(tmp_path)
    p = Platform(ssl_context=ctx).start()
    p.answer = lambda claim: (200, {"recipients": ["ada@example.org"]})
    try:
        # A claim may take its whole timeout on a loaded machine: give it 15 s.
        c, relay = claim_chain(make_chain, tmp_path, p.url, {"token": {"claim_timeout": "15s"}})
        qid = send(c, "tls-token-0123456789abcdef")
        postern.wait_for(lambda: "certificate" in (c.show(qid).get("reason") or ""),
                         timeout=90, interval=0.5, what="a claim refused on the certificate")
        assert c.show(qid)["state"] == "incoming"
        line = next(l for l in c.transform.log().splitlines()
                    if "logged again only when it answers" in l)
        # The outage is logged once, with the URL; each try with the queue id and the TLS error.
        assert f"claim: {p.url}: " in line, line
        assert any(f"{qid}: token=" in l and "claim: " in l and "certificate" in l
                   for l in c.transform.log().splitlines())
        assert p.claims == []
        # The transform again, with the CA file: the waiting message is claimed and sent.
        c.transform.stop()
        c.transform = postern.Daemon(
            [pc.transform_binary(), "-c",
             c.config_for("transform", {"token": {"claim_ca_file": cert}}), "-f"],
            c.workdir / "transform-ca.log", r"daemon started").start()
        dl = c.wait_deliveries(qid, lambda dl: dl and all(x["state"] == "sent" for x in dl),
                               timeout=90, what="sent after a claim over https")
        assert [x["rcpt"] for x in dl] == ["ada@example.org"] and len(p.claims) == 1
    finally:
        p.stop()


def test_platform_down_then_up(make_chain, tmp_path):
    down = Platform()                                   # its port, nobody listening yet
    c, relay = claim_chain(make_chain, tmp_path, down.url)
    token = "waiting-token-0123456789abcdef"
    qids = [send(c, token, subject=f"wait {i}") for i in range(3)]

    def waiting():
        ms = {m["id"]: m for m in postern.spoolctl_list(c.config_path)}
        return all(q in ms and ms[q]["state"] == "incoming" and
                   "claim: " in (ms[q].get("reason") or "") for q in qids)
    postern.wait_for(waiting, timeout=30, interval=0.2, what="messages waiting with a reason")
    m = c.show(qids[0])
    assert m["state"] == "incoming" and "next try at" in m["reason"]
    assert c.stats()["messages"]["incoming"] == 3
    postern.wait_for(lambda: "logged again only when it answers" in c.transform.log(),
                     what="the outage warning")
    # Some retries later, still one warning.
    postern.wait_for(lambda: c.transform.log().count(", next try at ") >= 6, timeout=30,
                     what="retries")
    assert c.transform.log().count("logged again only when it answers") == 1
    # Up: every message is claimed and sent, none lost, none rejected.
    down.answer = lambda claim: (200, {"recipients": [f"r-{claim['queue_id']}@example.org"]})
    down.start()
    try:
        for q in qids:
            dl = c.wait_deliveries(q, lambda dl: dl and all(d["state"] == "sent" for d in dl),
                                   timeout=30, what=f"{q} sent")
            assert [d["rcpt"] for d in dl] == [f"r-{q}@example.org"]
        assert "answers again" in c.transform.log()
        assert {claim["queue_id"] for _, _, claim in down.claims} == set(qids)
        assert down.bad_signatures == 0
        assert_no_clear_token(down, token)
    finally:
        down.stop()


def test_malformed_and_5xx_wait(make_chain, tmp_path, platform):
    """Neither a 5xx nor a 200 we cannot use rejects: the message waits, then goes."""
    c, relay = claim_chain(make_chain, tmp_path, platform.url)
    script = [(500, {"error": "db down"}), (200, {"recipients": "ada@example.org"}),
              (200, {"recipients": ["not an address"]})]

    def answer(claim):
        with platform.lock:
            return script.pop(0) if script else (200, {"recipients": ["ada@example.org"]})
    platform.answer = answer
    qid = send(c, "flaky-token-0123456789abcdef")
    c.wait_deliveries(qid, lambda dl: dl and all(d["state"] == "sent" for d in dl),
                      timeout=40, what="sent after the platform recovers")
    assert len(platform.claims) == 4
    assert {claim["queue_id"] for _, _, claim in platform.claims} == {qid}
    log = c.transform.log()
    assert "status 500" in log and "malformed answer" in log


def test_claimed_again_after_a_crash(make_chain, tmp_path, platform):
    """kill -9 of the transform while the platform answers: the lease runs
    out, the same queue id is claimed again, and the copies go out once."""
    c, relay = claim_chain(make_chain, tmp_path, platform.url, {"retry": {"lease": "6s"}})
    answered = {}

    def answer(claim):
        # The platform's side of the contract: a repeated queue_id gets the same answer.
        with platform.lock:
            first = claim["queue_id"] not in answered
            answered.setdefault(claim["queue_id"], (200, {"recipients": ["ada@example.org"]}))
        if first:
            time.sleep(2)                               # the transform dies meanwhile
        return answered[claim["queue_id"]]
    platform.answer = answer
    qid = send(c, "crash-token-0123456789abcdef")
    postern.wait_for(lambda: platform.claims, what="the first claim")
    c.transform.kill9()
    c.transform.start()
    dl = c.wait_deliveries(qid, lambda dl: dl and all(d["state"] == "sent" for d in dl),
                           timeout=40, what="sent after the restart")
    assert [d["rcpt"] for d in dl] == ["ada@example.org"]
    assert [claim["queue_id"] for _, _, claim in platform.claims] == [qid, qid]
    assert len(relay.copies("ada@example.org")) == 1
