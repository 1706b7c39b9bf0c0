"""Outcome events ([events] url): the outbox in the spool, posted by postern-api.

A real receiver (http.server in a thread) stands for the web platform; the
whole chain runs (chain.py) with postern-api (test_api.Api) on the same
config.  Checked: accepted and done events with a valid HMAC, a rejected
token and a bounce, the relay paused and resumed, the Prometheus counters,
a backlog kept while the endpoint is down and delivered in order
once it is up, 500s and garbage answers retried, and nothing lost across
kill -9 of postern-api (repeats allowed, with the same event id); and
`postern run` starting postern-api for [events] url alone.
"""
import hashlib
import hmac
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)
from test_api import make_api  # noqa: F401  (fixture)

SECRET = b"shared-secret-of-the-platform-0123456789"


class Receiver(postern.HttpPeer):
    """The platform's webhook: records every POST; `script` answers the next
    ones ("500", "garbage", "slow"; "hang": no answer until `released` is
    set, then the connection is closed unanswered), then 200."""

    def __init__(self, port=None, ssl_context=None):
        super().__init__(port, ssl_context)
        self.posts = []                 # (headers dict, body bytes, status answered)
        self.arrived = []               # event ids, as each POST arrives
        self.script = []
        self.released = threading.Event()

    def on_post(self, handler, body):
        with self.lock:
            self.arrived.append(handler.headers["X-Postern-Event-Id"])
            what = self.script.pop(0) if self.script else "200"
        if what == "garbage":
            with self.lock:
                self.posts.append((dict(handler.headers), body, "garbage"))
            handler.wfile.write(b"\x00\x01 this is no HTTP at all\r\n\r\n")
            handler.close_connection = True
            return
        if what == "hang":
            self.released.wait(60)
            handler.close_connection = True
            return
        if what == "slow":
            time.sleep(1.5)
            what = "200"
        with self.lock:
            self.posts.append((dict(handler.headers), body, int(what)))
        handler.send_response(int(what))
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}/hooks/postern"

    def delivered(self):
        """The events answered 200, decoded, in the order they came."""
        with self.lock:
            return [json.loads(b) for h, b, st in self.posts if st == 200]

    def wait(self, pred, timeout=60, what="events"):
        return postern.wait_for(lambda: pred(self.delivered()), timeout=timeout, interval=0.1,
                                what=what)


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def events_config(tmp_path, url, max_backoff="2s"):
    secret = tmp_path / "events-secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    return {"events": {"url": url, "secret_file": secret, "max_backoff": max_backoff,
                       "timeout": "5s"}}


def chain_with_events(make_chain, make_api, tmp_path, url, **kw):
    c, relay = make_chain(events_config(tmp_path, url, **kw))
    a = make_api(sections=c.ingest.sections)
    return c, relay, a


def send(c, token, sender=OWNER):
    with c.ingest.client() as cl:
        cl.lhlo()
        return cl.send_message(pc.lego_message(token, sender=sender), sender=sender)


def of(events, qid, kind=None):
    return [e for e in events if e.get("message") == qid and (kind is None or e["type"] == kind)]


def metric(text, name):
    return int(next(l.split()[-1] for l in text.splitlines() if l.startswith(name + " ")))


def outbox(c):
    return json.loads(c.spoolctl("--json", "events").stdout)


def test_accepted_and_done_signed(make_chain, make_api, tmp_path, receiver):
    c, relay, a = chain_with_events(make_chain, make_api, tmp_path, receiver.url)
    rcpts = ["ada@example.org", "bob@example.net"]
    token = c.token(*rcpts)
    qid = send(c, token)
    receiver.wait(lambda ev: of(ev, qid, "message.done"), what="done event")
    acc, done = of(receiver.delivered(), qid)
    assert acc["type"] == "message.accepted" and acc["recipients"] == 2
    assert acc["sender"] == OWNER and len(acc["token"]) == 16
    tokens = postern.parse_json_lines(c.spoolctl("--json", "token", "list").stdout)
    assert acc["token"] in [t["id"] for t in tokens]
    assert done["type"] == "message.done" and done["sent"] == 2 and done["bounced"] == 0
    assert int(acc["id"], 16) < int(done["id"], 16)
    # Every POST is signed: HMAC-SHA256 of the body as sent, with the shared secret.
    for headers, body, _ in receiver.posts:
        want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Postern-Signature"], want)
        ev = json.loads(body)
        assert headers["X-Postern-Event-Id"] == ev["id"]
        assert headers["X-Postern-Event"] == ev["type"]
        assert headers["Content-Type"] == "application/json"
    # Removed only after the 2xx: the outbox empties.
    postern.wait_for(lambda: outbox(c)["count"] == 0, what="an empty outbox")
    a.wait_log(f"event {acc['id']} message.accepted: delivered, status=200")
    c.transform.wait_log(f"{qid}: event {acc['id']} message.accepted queued")


def test_rejected_token_and_bounce(make_chain, make_api, tmp_path, receiver):
    c, relay, a = chain_with_events(make_chain, make_api, tmp_path, receiver.url)
    qid = send(c, "not-a-registered-token-0123456789")
    receiver.wait(lambda ev: of(ev, qid), what="rejected event")
    (rej,) = of(receiver.delivered(), qid)
    assert rej["type"] == "message.rejected" and rej["reason"] == "TOKEN_INVALID"
    # A 5xx bounces: the address and the reply, then done with the count.
    relay.data_script["gone@example.org"] = ["550 5.1.1 no such user"]
    qid = send(c, c.token("gone@example.org", "ada@example.org"))
    receiver.wait(lambda ev: of(ev, qid, "message.done"), what="done event")
    evs = of(receiver.delivered(), qid)
    assert [e["type"] for e in evs] == ["message.accepted", "delivery.bounced", "message.done"]
    assert evs[1]["recipient"] == "gone@example.org" and evs[1]["reply"].startswith("550")
    assert evs[2]["sent"] == 1 and evs[2]["bounced"] == 1
    # The same facts as Prometheus counters; GET /metrics is spoolctl metrics.
    text = c.spoolctl("metrics").stdout.decode()
    assert "postern_messages_received_total 2\n" in text
    assert 'postern_messages_rejected_total{reason="TOKEN_INVALID"} 1\n' in text
    assert 'postern_messages_rejected_total{reason="TOKEN_USED"} 0\n' in text
    # Notices are deliveries too: the rejection's and the bounce report's may be sent by now.
    assert metric(text, 'postern_delivery_results_total{result="sent"}') >= 1
    assert 'postern_delivery_results_total{result="bounced"} 1\n' in text
    assert "# TYPE postern_messages_received_total counter" in text
    # The same text from both readers once no notice is in flight between them.
    def same():
        mine = c.spoolctl("metrics").stdout.decode().split("postern_spool_bytes")[0]
        st, served, _ = a.call("GET", "/metrics", key="read")
        return st == 200 and served.split("postern_spool_bytes")[0] == mine
    postern.wait_for(same, timeout=30, interval=0.5, what="GET /metrics = spoolctl metrics")


def test_relay_paused_and_resumed(make_chain, make_api, tmp_path, receiver):
    cfg = postern.merge(events_config(tmp_path, receiver.url),
                        {"retry": {"initial": "60s", "max": "120s"}})
    c, relay = make_chain(cfg)
    a = make_api(sections=c.ingest.sections)
    reply = "421 4.7.0 Try again later, closing connection."
    relay.data_script["ada@example.org"] = [reply]
    qid = send(c, c.token("ada@example.org"))
    receiver.wait(lambda ev: [e for e in ev if e["type"] == "relay.paused"], what="paused event")
    (paused,) = [e for e in receiver.delivered() if e["type"] == "relay.paused"]
    assert "421" in paused["reason"] and paused["until"] >= paused["time"] + 50
    # The operator ends it early: the platform hears that too.
    c.spoolctl("relay", "resume")
    receiver.wait(lambda ev: [e for e in ev if e["type"] == "relay.resumed"], what="resumed")
    c.spoolctl("retry", "--all")
    receiver.wait(lambda ev: of(ev, qid, "message.done"), timeout=60, what="done event")
    types = [e["type"] for e in receiver.delivered()]
    assert types.index("message.accepted") < types.index("relay.paused") < \
        types.index("relay.resumed") < types.index("message.done")
    text = c.spoolctl("metrics").stdout.decode()
    assert metric(text, 'postern_delivery_results_total{result="deferred"}') >= 1


def test_backlog_kept_while_down_then_in_order(make_chain, make_api, tmp_path):
    port = postern.free_port()
    r = Receiver(port)
    c, relay, a = chain_with_events(make_chain, make_api, tmp_path, r.url)
    qids = [send(c, c.token("ada@example.org")) for _ in range(3)]
    for q in qids:
        c.wait_state(q, "done")
    postern.wait_for(lambda: outbox(c)["failures"] >= 3, timeout=30, what="failed tries")
    box = outbox(c)
    assert box["count"] == 6 and box["oldest"] > 0 and box["next_try"] >= int(time.time()) - 1
    assert "Connection refused" in box["error"] or "connect" in box["error"].lower()
    text = c.spoolctl("events").stdout.decode()
    assert "waiting: 6" in text and "next try:" in text
    # Logged once per outage, not per try.
    assert a.log().count("retrying with backoff") == 1
    r.start()
    try:
        r.wait(lambda ev: len(ev) == 6, timeout=30, what="the backlog")
        ev = r.delivered()
        ids = [int(e["id"], 16) for e in ev]
        assert ids == sorted(ids)
        for q in qids:
            assert [e["type"] for e in of(ev, q)] == ["message.accepted", "message.done"]
        assert "answers again after" in a.log()
        postern.wait_for(lambda: outbox(c)["count"] == 0, what="an empty outbox")
        assert outbox(c)["failures"] == 0 and outbox(c)["error"] is None
    finally:
        r.stop()


def test_https_needs_the_ca_file(make_chain, make_api, tmp_path):
    """[events] ca_file: the platform's self-signed certificate is refused
    without it (logged with the URL and the TLS error, the event kept in
    the outbox) and trusted with it."""
    cert, ctx = postern.self_signed(tmp_path)
    r = Receiver(ssl_context=ctx).start()
    try:
        # One POST may take its whole timeout on a loaded machine: give it 30 s.
        c, relay = make_chain(postern.merge(events_config(tmp_path, r.url),
                                            {"events": {"timeout": "30s"}}))
        a = make_api(sections=c.ingest.sections)
        qid = send(c, c.token("ada@example.org"))
        c.wait_state(qid, "done")
        postern.wait_for(lambda: outbox(c)["count"] == 2 and
                         "certificate" in (outbox(c)["error"] or ""), timeout=90, interval=0.5,
                         what="both events kept, refused on the certificate")
        line = next(l for l in a.log().splitlines() if "retrying with backoff" in l)
        assert f"events: {r.url}: " in line and "certificate" in line, line
        assert r.delivered() == []
        a.stop()
        b = make_api(sections=postern.merge(c.ingest.sections, {"events": {"ca_file": cert}}))
        r.wait(lambda ev: len(ev) == 2, timeout=90, what="both events over https")
        assert [e["type"] for e in of(r.delivered(), qid)] == ["message.accepted",
                                                                "message.done"]
        postern.wait_for(lambda: outbox(c)["count"] == 0, what="an empty outbox")
        assert f"events: posting to {r.url}, CA file {cert}" in b.log()
    finally:
        r.stop()


def test_500_and_garbage_are_retried(make_chain, make_api, tmp_path, receiver):
    receiver.script = ["500", "garbage", "503"]
    c, relay, a = chain_with_events(make_chain, make_api, tmp_path, receiver.url)
    qid = send(c, c.token("ada@example.org"))
    receiver.wait(lambda ev: of(ev, qid, "message.done"), timeout=60, what="done event")
    tried = [(json.loads(b)["id"] if st != "garbage" else h["X-Postern-Event-Id"], st)
             for h, b, st in receiver.posts]
    first = tried[0][0]
    assert tried[:4] == [(first, 500), (first, "garbage"), (first, 503), (first, 200)]
    assert [e["type"] for e in receiver.delivered()] == ["message.accepted", "message.done"]
    assert a.log().count("retrying with backoff") == 1


def test_kill9_of_the_api_loses_nothing(make_chain, make_api, tmp_path, receiver):
    c, relay, a = chain_with_events(make_chain, make_api, tmp_path, receiver.url)
    # The first POST gets no answer until after the kill, however slow the
    # machine: it is in flight when postern-api dies.
    receiver.script = ["hang"]
    qids = [send(c, c.token("ada@example.org")) for _ in range(3)]
    for q in qids:
        c.wait_state(q, "done")
    postern.wait_for(lambda: receiver.arrived or None, timeout=30, what="a first POST")
    a.kill9()
    in_flight = receiver.arrived[0]
    receiver.released.set()
    time.sleep(2)
    a.start()
    receiver.wait(lambda ev: len({e["id"] for e in ev}) == 6, timeout=60, what="every event")
    ev = receiver.delivered()
    for q in qids:
        assert {e["type"] for e in of(ev, q)} == {"message.accepted", "message.done"}
    # A repeat is the same event: same id, same body.
    by_id = {}
    for h, b, st in receiver.posts:
        by_id.setdefault(json.loads(b)["id"], set()).add(b)
    assert all(len(bodies) == 1 for bodies in by_id.values())
    # The one in flight at the kill had no 2xx heard: it came again.
    assert receiver.arrived.count(in_flight) >= 2
    postern.wait_for(lambda: outbox(c)["count"] == 0, what="an empty outbox")


def test_no_outbox_without_url(make_chain):
    c, relay = make_chain()
    qid = c.send(["ada@example.org"])
    c.wait_state(qid, "done")
    assert outbox(c)["count"] == 0
    assert "message.accepted" not in c.transform.log()
    assert "message.done" not in c.dispatch.log()


def test_postern_run_posts_events_without_api_keys(tmp_path, receiver):
    """postern run starts postern-api for [events] url alone (no [api] keys_file)."""
    spool = Path(tempfile.mkdtemp(prefix="pst", dir="/tmp"))      # ipc paths: sun_path
    listen = f"127.0.0.1:{postern.free_port()}"
    sections = postern.merge({
        "spool": {"dir": spool},
        "ingest": {"listen": listen, "recipients": postern.RECIPIENT},
        "relay": {"url": f"maildir:{tmp_path}/outbox"},
        "workers": {"count": 1, "transforms": 1},
        "api": {"listen": f"127.0.0.1:{postern.free_port()}"},
    }, events_config(tmp_path, receiver.url))
    cfg = tmp_path / "run.ini"
    postern.write_config(cfg, sections)
    run = postern.Daemon([postern.binary("tools/postern"), "-c", cfg, "run"],
                         tmp_path / "run.log", r"started postern-sender")
    try:
        run.start()
        token = postern.spoolctl(cfg, "token", "add", "--from", OWNER, "--rcpt",
                                 "ada@example.org").stdout.decode().strip()
        host, port = listen.split(":")
        with postern.Client((host, int(port))) as cl:
            cl.lhlo()
            qid = cl.send_message(pc.lego_message(token), sender=OWNER)
        receiver.wait(lambda ev: of(ev, qid, "message.done"), what="done event")
        assert [e["type"] for e in of(receiver.delivered(), qid)] == ["message.accepted",
                                                                     "message.done"]
    finally:
        rc = run.stop(timeout=60)
        shutil.rmtree(spool, ignore_errors=True)
    assert rc == 0, run.log_tail()
    assert "postern-api stopped" in run.log()
