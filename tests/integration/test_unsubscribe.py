"""One-click unsubscribe (RFC 8058; docs/design.md §9) through the whole chain.

With [unsubscribe] one_click every copy carries its recipient's own
List-Unsubscribe (an https link BASE/u/CODE and a mailto
unsubscribe+CODE@abakus.no) with List-Unsubscribe-Post, signed with the
copy (python3-dkim verifies it at the aiosmtpd relay).  postern-api serves
the link: POST unsubscribes (no key, no cookie, idempotent) and posts the
`unsubscribed` event to the platform (a real HTTP receiver); GET is a page
that writes nothing; a forged code is 404 and writes nothing.  The mailto
form arrives over LMTP (smtplib.LMTP) and is handled by the transform:
its short code (24 digits, so LOCAL+CODE fits RFC 5321's 64 octets for
any address) verifies for the envelope sender or the From: address;
ingest refuses a malformed code at RCPT, in LMTP and SMTP.
Later messages to the same list skip the address (its delivery says
`suppressed`); another list still sends to it.
"""
import base64
import email
import email.policy
import hashlib
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
# 60 bytes: a full code with it would make a 100-octet local part.
LONG = "firstname.middlename.lastname.department@mail.example.org.uk"


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
    # The mailto form has the short code: 24 digits, no address inside.
    [short] = MAILTO_RE.findall(lu)
    assert len(short) == 24 and short != code
    # It is no link code: a POST brings no address to check it against.
    assert post(a, f"/u/{short}")[0] == 404
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


def mailto_local_parts(data):
    return [m.split("@")[0] for m in re.findall(r"<mailto:([^>]+)>",
                                                 header_of(data, "List-Unsubscribe"))]


def lmtp_unsubscribe(c, sender, to, from_header=None):
    """Send an unsubscribe mail over LMTP; the refused recipients (smtplib's dict)."""
    msg = (f"From: <{from_header or sender}>\r\nTo: <{to}>\r\nSubject: unsubscribe\r\n"
           f"\r\nx\r\n").encode()
    lmtp = smtplib.LMTP(*c.ingest.addr)
    try:
        return lmtp.sendmail(sender, [to], msg)
    finally:
        lmtp.quit()


def unsubscribe_mails(c):
    """The unsubscribe mails' records, once every one is done."""
    done = [m for m in postern.parse_json_lines(c.spoolctl("--json", "list").stdout)
            if m["recipients"][0].startswith("unsubscribe+")]
    postern.wait_for(lambda: all(c.show(m["id"])["state"] == "done" for m in done),
                     what="unsubscribe mail done")
    return [c.show(m["id"]) for m in done]


def test_mailto_form_over_lmtp(unsub, receiver):
    c, relay, a = unsub
    qid = send_to(c, [ADA, BOB])
    c.wait_state(qid, "done")
    [code] = MAILTO_RE.findall(header_of(copy_to(relay, BOB), "List-Unsubscribe"))
    to = f"unsubscribe+{code}@abakus.no"

    assert lmtp_unsubscribe(c, BOB, to) == {}
    # A forged code of the right shape is accepted (ingest has no key), then dropped.
    forged = to.replace(code, code[:-2] + ("22" if code[-2:] != "22" else "33"))
    assert lmtp_unsubscribe(c, BOB, forged) == {}
    postern.wait_for(lambda: suppressed(c) == [("default", BOB)], what="bob unsubscribed")
    [ev] = receiver.wait(lambda evs: unsubscribed_events(receiver), what="unsubscribed event")
    assert ev["recipient"] == BOB and "mailto" in ev["reply"]
    reasons = sorted(m["reason"] for m in unsubscribe_mails(c))
    assert reasons == ["UNSUBSCRIBED", "UNSUBSCRIBE_BAD_CODE"]
    fcode = forged.split("+")[1].split("@")[0]
    assert (f"unsubscribe mail to <{forged}>: code {fcode} list=default verifies for none of "
            f"<{BOB}>, <{BOB}>: dropped") in c.transform.log()
    # Nothing was relayed for either.
    assert not [m for m in relay.messages if any(r.startswith("unsubscribe+") for r in m[3])]

    # The full code of a mailto form sent before short codes still works, from any sender.
    [full] = LINK_RE.findall(header_of(copy_to(relay, ADA), "List-Unsubscribe"))
    assert lmtp_unsubscribe(c, "someone@elsewhere.example", f"unsubscribe+{full}@abakus.no") == {}
    postern.wait_for(lambda: suppressed(c) == [("default", ADA), ("default", BOB)],
                     what="ada unsubscribed by her old code")

    qid2 = send_to(c, [BOB])
    [d] = c.wait_state(qid2, "done")
    assert d["state"] == "bounced" and "suppressed" in d["last_reply"]


def test_mailto_long_address_fits_64_octets(unsub, receiver):
    """A 60-byte address, on the default list and on styret: LOCAL+CODE within 64 octets."""
    c, relay, a = unsub
    c.wait_state(send_to(c, [LONG]), "done")
    c.wait_state(send_to(c, [LONG], STYRET, "--list", "styret"), "done")
    copies = postern.wait_for(lambda: len(relay.copies(LONG)) == 2 and relay.copies(LONG),
                              what="two copies")
    locals_ = [lp for (_, _, data) in copies for lp in mailto_local_parts(data)]
    assert len(locals_) == 2 and all(len(lp) <= 64 for lp in locals_), locals_
    # The https link keeps the full code, address and all.
    assert all(len(LINK_RE.findall(header_of(data, "List-Unsubscribe"))[0]) > 100
               for (_, _, data) in copies)

    # Each copy's mailto form unsubscribes the address from its own list.
    codes = [MAILTO_RE.findall(header_of(data, "List-Unsubscribe"))[0] for (_, _, data) in copies]
    for code in codes:
        assert lmtp_unsubscribe(c, LONG, f"unsubscribe+{code}@abakus.no") == {}
    postern.wait_for(lambda: sorted(suppressed(c)) == [("default", LONG), ("styret", LONG)],
                     what="unsubscribed from both lists")
    evs = receiver.wait(lambda evs: len(unsubscribed_events(receiver)) == 2
                        and unsubscribed_events(receiver), what="two unsubscribed events")
    assert sorted(e["list"] for e in evs) == ["default", "styret"]
    assert all(e["recipient"] == LONG for e in evs)


def test_mailto_sender_or_from_must_verify(unsub, receiver):
    """A forwarder's envelope with ada's From: works; neither ada: nothing written, logged."""
    c, relay, a = unsub
    c.wait_state(send_to(c, [ADA, BOB]), "done")
    [ada] = MAILTO_RE.findall(header_of(copy_to(relay, ADA), "List-Unsubscribe"))
    [bob] = MAILTO_RE.findall(header_of(copy_to(relay, BOB), "List-Unsubscribe"))

    assert lmtp_unsubscribe(c, "srs0=ab12=example.org=ada@forwarder.example",
                            f"unsubscribe+{ada}@abakus.no", from_header=ADA) == {}
    postern.wait_for(lambda: suppressed(c) == [("default", ADA)], what="ada unsubscribed")
    # Bob's code, sent by mallory as mallory: bob stays.
    assert lmtp_unsubscribe(c, "mallory@example.net", f"unsubscribe+{bob}@abakus.no") == {}
    mails = postern.wait_for(lambda: len(unsubscribe_mails(c)) == 2 and unsubscribe_mails(c),
                             what="both mails done")
    assert sorted(m["reason"] for m in mails) == ["UNSUBSCRIBED", "UNSUBSCRIBE_BAD_CODE"]
    assert suppressed(c) == [("default", ADA)]
    assert (f"code {bob} list=default verifies for none of <mallory@example.net>, "
            f"<mallory@example.net>: dropped") in c.transform.log()
    # The event reaches the platform's receiver on its own time (the webhook).
    [ev] = receiver.wait(lambda evs: unsubscribed_events(receiver), what="unsubscribed event")
    assert ev["recipient"] == ADA


def short_code(version, list_name, mac=bytes(10)):
    """A code of the short form's shape, made here (no key: its MAC is not ours)."""
    raw = bytes([version]) + hashlib.sha256(list_name.encode()).digest()[:4] + mac
    return base64.b32encode(raw).decode().lower().rstrip("=")


@pytest.mark.parametrize("proto", ["LMTP", "SMTP"])
def test_mailto_malformed_code_refused_at_rcpt(unsub, proto):
    c, relay, a = unsub
    good = short_code(2, "styret")
    cases = {
        "abc1": "bad base32",                       # 1 is not a base32 digit
        good[:16]: "bad length",                    # 10 whole bytes: neither form
        short_code(3, "styret"): "unknown version",
        short_code(2, "nosuch"): "unknown list",
    }
    cl = smtplib.LMTP(*c.ingest.addr) if proto == "LMTP" else smtplib.SMTP(*c.ingest.addr)
    try:
        cl.ehlo_or_helo_if_needed()
        assert cl.mail(BOB)[0] == 250
        for code, why in cases.items():
            st, text = cl.rcpt(f"unsubscribe+{code}@abakus.no")
            assert st == 550 and text.decode().startswith("5.1.1"), (code, st, text)
            assert f"bad unsubscribe code: {why}" in text.decode(), (code, text)
        # A well-formed code is accepted: only the transform can check its MAC.
        assert cl.rcpt(f"unsubscribe+{good}@abakus.no")[0] == 250
    finally:
        cl.quit()
    assert (f"<unsubscribe+{short_code(2, 'nosuch')}@abakus.no>: bad unsubscribe code: "
            f"unknown list; from=<{BOB}>") in c.ingest.log()


def test_mailto_code_of_a_list_since_removed(unsub):
    """Ingest still knew the list; the transform no longer does: dropped, logged, not written."""
    c, relay, a = unsub
    c.wait_state(send_to(c, [ADA], STYRET, "--list", "styret"), "done")
    [code] = MAILTO_RE.findall(header_of(copy_to(relay, ADA), "List-Unsubscribe"))
    c.transform.stop()
    path = c.workdir / "transform-without-styret.ini"
    postern.write_config(path, {g: k for g, k in c.ingest.sections.items() if g != "list styret"})
    c.transform.argv[c.transform.argv.index("-c") + 1] = str(path)
    c.transform.start()

    assert lmtp_unsubscribe(c, ADA, f"unsubscribe+{code}@abakus.no") == {}
    [m] = unsubscribe_mails(c)
    assert m["reason"] == "UNSUBSCRIBE_BAD_CODE"
    assert suppressed(c, "--list", "styret") == []
    assert (f"unsubscribe mail to <unsubscribe+{code}@abakus.no> from <{ADA}>: bad code: "
            f"unknown list: dropped") in c.transform.log()
