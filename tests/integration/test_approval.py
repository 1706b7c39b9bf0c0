"""Approval before sending (issue 11): a [list NAME] with approval holds each
accepted message until its moderator approves or discards it.

The whole chain (chain.py: ingest, dispatch, transform, a sender, an
aiosmtpd relay as the sink) plus postern-api (test_api.py) on one spool,
and the events receiver of test_events.py.  The moderator's notice is read
at the relay, its link followed with urllib as a browser would.
"""
import email
import hashlib
import hmac
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)
from test_api import make_api  # noqa: F401  (fixture)
from test_events import Receiver, events_config, of, receiver  # noqa: F401  (fixture)

LIST = "styret@abakus.no"
MODERATOR = "leder@abakus.no"
RCPTS = ("ada@example.org", "bob@example.net")
SECRET = b"approval-secret-of-the-test-0123456789"
LINK_RE = re.compile(r"(http://\S+/a/([0-9a-f]{40}))")


def stack(make_chain, make_api, tmp_path, receiver_url, expiry="7d", language="en"):
    """The chain with list styret (approval on) and postern-api serving its links."""
    secret = tmp_path / "approval-secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    port = postern.free_port()
    config = postern.merge(events_config(tmp_path, receiver_url), {
        "approval": {"secret_file": secret, "url": f"http://localhost:{port}/"},
        "list styret": {"address": LIST, "from": "Styret <styret@abakus.no>",
                        "approval": "on", "moderator": MODERATOR, "approval_expiry": expiry,
                        "language": language},
    })
    c, relay = make_chain(config)
    a = make_api(sections=c.ingest.sections, api={"listen": f"127.0.0.1:{port}"})
    a.port = port
    return c, relay, a


def send(c, subject="Til styret"):
    token = c.spoolctl("token", "add", "--from", OWNER, "--rcpt", RCPTS[0], "--rcpt", RCPTS[1],
                       "--list", "styret").stdout.decode().strip()
    with c.ingest.client() as cl:
        cl.lhlo()
        return cl.send_message(pc.lego_message(token, subject=subject), sender=OWNER,
                               rcpts=(LIST,))


def held(c, qid):
    c.wait_state(qid, "hold")
    m = c.show(qid)
    assert m["reason"] == "awaiting approval"
    return m


def moderator_notice(relay, qid):
    """The text of the moderator's notice about qid, read at the sink."""
    def find():
        for _, rcpts, data in relay.copies(MODERATOR):
            text = email.message_from_bytes(data).get_payload(decode=True).decode()
            if qid in text:
                return text
        return None
    return postern.wait_for(find, timeout=60, what=f"the moderator's notice about {qid}")


def moderator_link(relay, qid):
    """(URL, code) of the link in the moderator's notice about qid."""
    found = LINK_RE.search(moderator_notice(relay, qid))
    return found.group(1), found.group(2)


def http(method, url, form=None):
    """(status, text) of a request as a browser makes it."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def approval_code(key, qid):
    """A code as common/bounce_code.c makes it: id, index 0xa99, 64 bits of HMAC."""
    msg = int(qid, 16)
    label = b"postern-verp-1\0"
    mac = hmac.new(key, label + msg.to_bytes(8, "big") + (0xa99).to_bytes(4, "big"),
                   hashlib.sha256).digest()[:8]
    return f"{msg:016x}{0xa99:08x}{mac.hex()}"


def test_held_then_approved_through_the_link(make_chain, make_api, tmp_path, receiver):
    c, relay, a = stack(make_chain, make_api, tmp_path, receiver.url)
    qid = send(c)
    held(c, qid)
    # Copies exist but wait; the moderator, not the owner, gets the notice.
    assert sorted(d["rcpt"] for d in c.deliveries(qid)) == sorted(RCPTS)
    text = moderator_notice(relay, qid)
    assert "A message to the list styret@abakus.no waits for your approval." in text
    assert f"From:      {OWNER}" in text and "Copies:    2" in text
    url, code = moderator_link(relay, qid)
    assert url == f"http://localhost:{a.port}/a/{code}"
    assert not relay.copies(RCPTS[0]) and not relay.copies(OWNER)
    # The code is the documented one: the secret's key for "postern approval v1".
    key = hmac.new(SECRET, b"postern approval v1", hashlib.sha256).digest()
    assert code == approval_code(key, qid)

    # GET shows the buttons and decides nothing, however often it is fetched.
    for _ in range(3):
        st, page = http("GET", url)
        assert st == 200 and 'value="approve"' in page and 'value="discard"' in page
    assert c.show(qid)["state"] == "hold"
    assert http("POST", url, {"action": "maybe"})[0] == 400
    assert http("POST", url, {})[0] == 400
    assert c.show(qid)["state"] == "hold"

    st, page = http("POST", url, {"action": "approve"})
    assert st == 200 and "approved" in page
    c.wait_state(qid, "done")
    for r in RCPTS:
        assert len(relay.copies(r)) == 1
    # Decided once: a second decision is refused and changes nothing.
    st, page = http("POST", url, {"action": "discard"})
    assert st == 409 and "approved" in page
    assert c.show(qid)["state"] == "done"
    assert http("GET", url)[1].count("approved") == 1

    receiver.wait(lambda ev: of(ev, qid, "message.done"), what="done event")
    types = [e["type"] for e in of(receiver.delivered(), qid)]
    assert types == ["message.accepted", "message.held", "message.approved", "message.done"]
    h = of(receiver.delivered(), qid, "message.held")[0]
    assert h["reason"] == "awaiting approval" and len(h["token"]) == 16
    assert f"{qid}: approved by link" in a.log()


def test_discarded_with_spoolctl(make_chain, make_api, tmp_path, receiver):
    c, relay, a = stack(make_chain, make_api, tmp_path, receiver.url, language="nb")
    qid = send(c)
    held(c, qid)
    # The list's language: the Norwegian notice.
    text = moderator_notice(relay, qid)
    assert "En melding til listen styret@abakus.no venter på din godkjenning." in text
    assert f"Fra:       {OWNER}" in text and "Kopier:    2" in text
    url, _ = moderator_link(relay, qid)
    st, page = http("GET", url)
    assert st == 200 and '<html lang="nb">' in page and ">Godkjenn: send den<" in page
    # Release is not approval: even --all leaves it waiting.
    assert b'"released": 0' in c.spoolctl("--json", "release", "--all").stdout
    assert c.show(qid)["state"] == "hold"
    r = c.spoolctl("--json", "discard", qid)
    assert b'"discarded": 1' in r.stdout
    assert f"{qid}: discarded by spoolctl".encode() in r.stderr
    m = c.show(qid)
    assert m["state"] == "rejected" and m["reason"] == "APPROVAL_DISCARDED"
    assert c.deliveries(qid) == []
    # Nothing more to approve: the link says so, spoolctl changes nothing.
    st, page = http("POST", url, {"action": "approve"})
    assert st == 409 and "Meldingen ble forkastet: ingen kopi ble sendt." in page
    assert b'"approved": 0' in c.spoolctl("--json", "approve", qid).stdout
    receiver.wait(lambda ev: of(ev, qid, "message.discarded"), what="discarded event")
    d = of(receiver.delivered(), qid, "message.discarded")[0]
    assert d["reason"] == "APPROVAL_DISCARDED"
    # The dispatcher never leased a copy: the relay got only the notice.
    time.sleep(2)
    assert not relay.copies(RCPTS[0]) and not relay.copies(RCPTS[1])


def test_platform_approves_and_discards_over_the_api(make_chain, make_api, tmp_path, receiver):
    c, relay, a = stack(make_chain, make_api, tmp_path, receiver.url)
    q1, q2 = send(c, "one"), send(c, "two")
    held(c, q1)
    held(c, q2)
    assert a.call("POST", f"/v1/messages/{q1}/approve", key="read")[0] == 403
    st, body, _ = a.call("POST", f"/v1/messages/{q1}/approve", key="tokens")
    assert st == 200 and body["state"] in ("ready", "deferred", "done")
    st, body, _ = a.call("POST", f"/v1/messages/{q2}/discard", key="tokens")
    assert st == 200 and body["state"] == "rejected"
    st, err, _ = a.call("POST", f"/v1/messages/{q2}/approve", key="tokens")
    assert st == 409 and "APPROVAL_DISCARDED" in err["message"]
    assert a.call("POST", "/v1/messages/0000000000000001/discard", key="tokens")[0] == 404
    c.wait_state(q1, "done")
    assert len(relay.copies(RCPTS[0])) == 1
    assert c.show(q2)["state"] == "rejected"
    assert f"{q1}: approved by api key k-tokens" in a.log()


def test_every_recipient_suppressed_asks_nobody(make_chain, make_api, tmp_path, receiver):
    """Nothing to send, nothing to approve: the message ends done, no
    moderator's notice (another message's notice shows the relay works)."""
    c, relay, a = stack(make_chain, make_api, tmp_path, receiver.url)
    for r in RCPTS:
        c.spoolctl("suppress", "add", "--list", "styret", r)
    qid = send(c, "to nobody")
    c.wait_state(qid, "done")
    c.transform.wait_log(f"{qid}: every recipient suppressed: no approval asked")
    for r in RCPTS:
        c.spoolctl("suppress", "remove", "--list", "styret", r)
    other = send(c, "to someone")
    held(c, other)
    moderator_notice(relay, other)
    assert not any(qid in email.message_from_bytes(data).get_payload(decode=True).decode()
                   for _, _, data in relay.copies(MODERATOR))


def test_forged_or_damaged_code_changes_nothing(make_chain, make_api, tmp_path, receiver):
    c, relay, a = stack(make_chain, make_api, tmp_path, receiver.url)
    qid = send(c)
    held(c, qid)
    url, code = moderator_link(relay, qid)
    base = url[: -len(code)]
    flipped = code[:-1] + ("0" if code[-1] != "0" else "1")
    key = hmac.new(SECRET, b"postern approval v1", hashlib.sha256).digest()
    forged = [
        flipped,                                   # one digit of the MAC
        code[:39],                                 # cut short
        code + "0",                                # too long
        "z" + code[1:],                            # not hex
        approval_code(SECRET, qid),                # a VERP-style code under the raw secret
        approval_code(key, f"{int(qid, 16) + 1:016X}")[:24] + code[24:],  # another message
    ]
    for bad in forged:
        for method, form in (("GET", None), ("POST", {"action": "approve"}),
                             ("POST", {"action": "discard"})):
            st, page = http(method, base + bad, form)
            assert st == 404, (bad, method, st)
            assert "not valid" in page
    m = c.show(qid)
    assert m["state"] == "hold" and m["reason"] == "awaiting approval"
    assert not relay.copies(RCPTS[0])
    # The real code still works after all that.
    assert http("POST", url, {"action": "discard"})[0] == 200
    assert c.show(qid)["state"] == "rejected"


def test_expiry_discards(make_chain, make_api, tmp_path, receiver):
    c, relay, a = stack(make_chain, make_api, tmp_path, receiver.url, expiry="2s")
    qid = send(c)
    c.wait_state(qid, "rejected", timeout=60)
    m = c.show(qid)
    assert m["reason"] == "APPROVAL_EXPIRED"
    assert c.deliveries(qid) == []
    c.dispatch.wait_log(f"{qid}: discarded by expiry")
    receiver.wait(lambda ev: of(ev, qid, "message.discarded"), what="discarded event")
    assert of(receiver.delivered(), qid, "message.discarded")[0]["reason"] == "APPROVAL_EXPIRED"
    url, _ = moderator_link(relay, qid)
    st, page = http("GET", url)
    assert st == 200 and "Nobody decided in time" in page
    assert not relay.copies(RCPTS[0])


@pytest.mark.parametrize("keys, problem", [
    ({"approval": "on"}, "approval needs a moderator address"),
    ({"approval": "on", "moderator": "not an address"}, "is not local@domain"),
    ({"moderator": MODERATOR}, "is set but approval is not"),
    ({"approval": "on", "moderator": MODERATOR, "approval_expiry": "0"},
     "approval_expiry: must be more than 0"),
    ({"approval": "maybe"}, "bad boolean"),
])
def test_config_check(tmp_path, keys, problem):
    path = tmp_path / "p.ini"
    postern.write_config(path, {"spool": {"dir": tmp_path / "spool"},
                                "list styret": {"address": LIST, **keys}})
    r = postern.spoolctl(path, "check", check=False)
    assert r.returncode == 2
    assert problem in (r.stdout + r.stderr).decode()


def test_config_check_wants_a_secret(tmp_path):
    path = tmp_path / "p.ini"
    postern.write_config(path, {"spool": {"dir": tmp_path / "spool"},
                                "list styret": {"address": LIST, "approval": "on",
                                                "moderator": MODERATOR}})
    r = postern.spoolctl(path, "check", check=False)
    assert r.returncode == 2
    assert "[approval] secret_file: must be set" in r.stdout.decode()
