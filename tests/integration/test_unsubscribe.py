"""One-click unsubscribe (RFC 8058; docs/design.md §9) through the whole chain.

With [unsubscribe] one_click every copy carries its recipient's own
List-Unsubscribe (an https link BASE/u/CODE and a mailto
unsubscribe+CODE@abakus.no) with List-Unsubscribe-Post, signed with the
copy (python3-dkim verifies it at the aiosmtpd relay).  postern-api serves
the link: POST unsubscribes (no key, no cookie, idempotent) and posts the
`unsubscribed` event to the platform (a real HTTP receiver); GET is a page
that writes nothing; a forged code is 404 and writes nothing.  The mailto
form arrives over LMTP (smtplib.LMTP) and is handled by the transform.
Later messages to the same list skip the address (its delivery says
`suppressed`); another list still sends to it.
"""
import email
import email.policy
import re
import smtplib
import urllib.error
import urllib.request

import pytest

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)
from test_api import make_api  # noqa: F401  (fixture)
from test_events import Receiver, events_config

ADA, BOB = "ada@example.org", "bob@example.net"
BASE = "https://lists.abakus.no"
UNSUB = "unsubscribe@abakus.no"
STYRET = "styret@abakus.no"
LINK_RE = re.compile(r"<https://lists\.abakus\.no/u/([a-z2-7]+)>")
MAILTO_RE = re.compile(r"<mailto:unsubscribe\+([a-z2-7]+)@abakus\.no>")


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def unsub(make_chain, make_api, receiver, tmp_path):
    """(chain, relay, api) with one-click on, events to receiver, and a list styret."""
    secret = tmp_path / "bounce-secret"
    secret.write_text("a-test-secret-of-enough-bytes-0123456789\n")
    secret.chmod(0o600)
    config = postern.merge(events_config(tmp_path, receiver.url), {
        "bounce": {"secret_file": secret},
        "unsubscribe": {"one_click": "true", "address": UNSUB},
        "rewrite": {"unsubscribe_url": BASE},
        "list styret": {"address": STYRET},
    })
    c, relay = make_chain(config)
    return c, relay, make_api(sections=c.ingest.sections)


def header_of(data, name):
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return " ".join((msg[name] or "").split())


def copy_to(relay, rcpt):
    [(_, _, data)] = postern.wait_for(lambda: relay.copies(rcpt), what=f"copy to {rcpt}")
    return data


def post(a, path, body=b"List-Unsubscribe=One-Click", method="POST"):
    """(status, text) of a request with no key and no cookie, as a mail provider sends it."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{a.port}{path}", data=body if method == "POST" else None,
        method=method, headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def suppressed(c, *args):
    return [(r["list"], r["address"]) for r in postern.parse_json_lines(
        c.spoolctl("--json", "suppress", "list", *args).stdout) if r["suppressed"]]


def unsubscribed_events(receiver):
    return [e for e in receiver.delivered() if e["type"] == "unsubscribed"]


def send_to(c, rcpts, to=postern.RECIPIENT, *extra):
    token = c.spoolctl("token", "add", "--from", OWNER, *extra,
                       *[a for r in rcpts for a in ("--rcpt", r)]).stdout.decode().strip()
    with c.ingest.client() as cl:
        cl.lhlo()
        return cl.send_message(pc.lego_message(token), sender=OWNER, rcpts=(to,))


def test_one_click_link_signed_posted_and_idempotent(unsub, receiver):
    c, relay, a = unsub
    qid = send_to(c, [ADA, BOB])
    c.wait_state(qid, "done")
    ada, bob = copy_to(relay, ADA), copy_to(relay, BOB)
    # Each copy its own links, covered by its DKIM signature.
    assert c.dkim_ok(ada) and c.dkim_ok(bob)
    lu = header_of(ada, "List-Unsubscribe")
    [code] = LINK_RE.findall(lu)
    assert MAILTO_RE.findall(lu) == [code]
    assert header_of(ada, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert LINK_RE.findall(header_of(bob, "List-Unsubscribe")) != [code]
    sig = header_of(ada, "DKIM-Signature")
    assert "list-unsubscribe:list-unsubscribe-post" in sig.replace(" ", "").lower()

    # GET is a page with a button; it writes nothing (link scanners fetch GETs).
    st, page = post(a, f"/u/{code}", method="GET")
    assert st == 200 and 'method="post"' in page and ADA in page
    assert suppressed(c) == []

    st, page = post(a, f"/u/{code}")
    assert st == 200 and "no more mail" in page
    assert suppressed(c) == [("default", ADA)]
    [ev] = receiver.wait(lambda evs: unsubscribed_events(receiver), what="unsubscribed event")
    assert ev["recipient"] == ADA and ev["list"] == "default" and "one-click" in ev["reply"]
    assert f"suppress: <{ADA}> list=default suppressed: unsubscribed (one-click)" in a.log()

    # Again: the same answer, no second record or event.
    st, _ = post(a, f"/u/{code}")
    assert st == 200
    assert suppressed(c) == [("default", ADA)]
    assert "unsubscribed already" in a.log()

    # The next message to the list skips ada: its delivery says suppressed.
    qid2 = send_to(c, [ADA, BOB])
    dl = {d["rcpt"]: d for d in c.wait_state(qid2, "done")}
    assert dl[ADA]["state"] == "bounced" and "suppressed" in dl[ADA]["last_reply"]
    assert dl[BOB]["state"] == "sent"
    assert len(relay.copies(ADA)) == 1 and len(relay.copies(BOB)) == 2
    assert len(unsubscribed_events(receiver)) == 1

    # Another list still sends to her: suppression is per list.
    qid3 = send_to(c, [ADA], STYRET, "--list", "styret")
    [d] = c.wait_state(qid3, "done")
    assert d["state"] == "sent" and len(relay.copies(ADA)) == 2
    assert suppressed(c, "--list", "styret") == []

    # spoolctl edits one list at a time; an unknown list is a usage error.
    c.spoolctl("suppress", "add", "--list", "styret", BOB)
    assert suppressed(c, "--list", "styret") == [("styret", BOB)]
    assert suppressed(c) == [("default", ADA), ("styret", BOB)]
    c.spoolctl("suppress", "remove", ADA)
    assert suppressed(c) == [("styret", BOB)]
    assert c.spoolctl("suppress", "list", "--list", "nosuch", check=False).returncode == 2


def test_forged_or_damaged_code_is_404_and_writes_nothing(unsub, receiver):
    c, relay, a = unsub
    qid = send_to(c, [ADA])
    c.wait_state(qid, "done")
    [code] = LINK_RE.findall(header_of(copy_to(relay, ADA), "List-Unsubscribe"))
    damaged = code[:-3] + ("aaa" if code[-3:] != "aaa" else "bbb")
    for bad in (damaged, code[:-1], "x" * 40, code + "a"):
        for method in ("POST", "GET"):
            st, page = post(a, f"/u/{bad}", method=method)
            assert st == 404 and "not valid" in page, (bad, method, st)
    assert suppressed(c) == []
    assert "unsubscribe: POST /u/: bad code" in a.log()
    # Another kind of code made with the same secret is no unsubscribe code.
    assert post(a, "/u/" + "0" * 40)[0] == 404
    assert unsubscribed_events(receiver) == []


def test_mailto_form_over_lmtp(unsub, receiver):
    c, relay, a = unsub
    qid = send_to(c, [ADA, BOB])
    c.wait_state(qid, "done")
    [code] = MAILTO_RE.findall(header_of(copy_to(relay, BOB), "List-Unsubscribe"))
    to = f"unsubscribe+{code}@abakus.no"
    msg = (f"From: <{BOB}>\r\nTo: <{to}>\r\nSubject: unsubscribe\r\n\r\nx\r\n").encode()

    lmtp = smtplib.LMTP(*c.ingest.addr)
    try:
        assert lmtp.sendmail(BOB, [to], msg) == {}
        # A forged code is accepted (ingest cannot tell), then dropped by the transform.
        forged = to.replace(code, code[:-2] + ("22" if code[-2:] != "22" else "33"))
        assert lmtp.sendmail(BOB, [forged], msg) == {}
    finally:
        lmtp.quit()
    postern.wait_for(lambda: suppressed(c) == [("default", BOB)], what="bob unsubscribed")
    [ev] = receiver.wait(lambda evs: unsubscribed_events(receiver), what="unsubscribed event")
    assert ev["recipient"] == BOB and "mailto" in ev["reply"]
    done = [m for m in postern.parse_json_lines(c.spoolctl("--json", "list").stdout)
            if m["recipients"][0].startswith("unsubscribe+")]
    postern.wait_for(lambda: all(c.show(m["id"])["state"] == "done" for m in done),
                     what="unsubscribe mail done")
    reasons = sorted(c.show(m["id"])["reason"] for m in done)
    assert reasons == ["UNSUBSCRIBED", "UNSUBSCRIBE_BAD_CODE"]
    assert "unsubscribe mail to" in c.transform.log() and "bad code: dropped" in c.transform.log()
    # Nothing was relayed for either.
    assert not [m for m in relay.messages if any(r.startswith("unsubscribe+") for r in m[3])]

    qid2 = send_to(c, [BOB])
    [d] = c.wait_state(qid2, "done")
    assert d["state"] == "bounced" and "suppressed" in d["last_reply"]
