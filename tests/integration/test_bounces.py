"""Bounce processing with [bounce] verp (docs/design.md, "Bounces and suppression").

The whole chain with an aiosmtpd relay: every copy goes out with its own
return path, restricted-bounces+CODE@abakus.no; a DSN sent back over LMTP
to that address makes the delivery bounced after it was sent, and the
owner hears of it; an auto-reply or a forged code changes nothing; a
suppressed address gets no copy.
"""
import re

import chain as pc
from chain import BOUNCES, OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)

ADA, BOB = "ada@example.org", "bob@example.net"
VERP_RE = re.compile(r"^restricted-bounces\+([0-9a-f]{40})@abakus\.no$")
BOUNCE_DIR = pc.postern.SOURCE / "tests" / "data" / "bounces"


def verp_chain(make_chain, tmp_path):
    secret = tmp_path / "bounce-secret"
    secret.write_text("a-test-secret-of-enough-bytes-0123456789\n")
    secret.chmod(0o600)
    return make_chain({"bounce": {"verp": "true", "secret_file": secret}})


def return_path(relay, rcpt):
    [(mail_from, rcpts, _)] = relay.copies(rcpt)
    assert rcpts == [rcpt] and VERP_RE.match(mail_from), mail_from
    return mail_from


def send_bounce(c, to, name, rcpt):
    """The corpus DSN `name`, about rcpt, over LMTP from <> to `to`: its queue id."""
    data = (BOUNCE_DIR / name).read_bytes().replace(b"nobody@example.org", rcpt.encode())
    with c.ingest.client() as lc:
        lc.lhlo()
        return lc.send_message(pc.postern.crlf(data), sender="", rcpts=(to,))


def by_rcpt(dl):
    return {d["rcpt"]: d for d in dl}


def test_late_bounce_makes_the_delivery_bounced(make_chain, tmp_path):
    c, relay = verp_chain(make_chain, tmp_path)
    qid = c.send([ADA, BOB])
    dl = by_rcpt(c.wait_state(qid, "done"))
    assert dl[ADA]["state"] == dl[BOB]["state"] == "sent"
    # One return path per copy, each naming its own delivery.
    assert return_path(relay, ADA) != return_path(relay, BOB)
    assert return_path(relay, ADA)[len("restricted-bounces+"):][:16] == qid.lower()

    bqid = send_bounce(c, return_path(relay, BOB), "rfc3464.eml", BOB)
    c.wait_state(bqid, "done")
    shown = c.show(bqid)
    assert shown["reason"] == "BOUNCE_HARD" and shown["kind"] == "bounce"
    dl = by_rcpt(c.wait_deliveries(qid, lambda dl: by_rcpt(dl)[BOB]["state"] == "bounced",
                                   what="bob bounced"))
    assert dl[ADA]["state"] == "sent"
    assert dl[BOB]["last_reply"].startswith("5.1.1 hard bounce (rfc3464)")

    # The owner hears of it as of an immediate bounce; the bounce itself sent nothing.
    def bounce_notice():
        return [m for m in relay.copies(OWNER) if BOB.encode() in m[2]]
    [(mail_from, _, data)] = pc.postern.wait_for(bounce_notice, timeout=60, what="bounce notice")
    assert mail_from == "<>" and c.dkim_ok(data)
    assert not relay.copies(return_path(relay, BOB))
    score = [r for r in pc.postern.parse_json_lines(
        c.spoolctl("--json", "suppress", "list").stdout) if r["address"] == BOB]
    assert score and score[0]["score"] == 1.0 and not score[0]["suppressed"]


def test_autoreply_and_forged_code_change_nothing(make_chain, tmp_path):
    c, relay = verp_chain(make_chain, tmp_path)
    qid = c.send([ADA])
    c.wait_state(qid, "done")
    to = return_path(relay, ADA)

    vqid = send_bounce(c, to, "vacation.eml", ADA)
    c.wait_state(vqid, "done")
    assert c.show(vqid)["reason"] == "BOUNCE_AUTOREPLY"

    # A soft bounce (delayed) changes no delivery; it counts half.
    sqid = send_bounce(c, to, "rfc3464_delayed.eml", ADA)
    c.wait_state(sqid, "done")
    assert c.show(sqid)["reason"] == "BOUNCE_SOFT"

    code = VERP_RE.match(to).group(1)
    forged = to.replace(code, code[:-1] + ("0" if code[-1] != "0" else "1"))
    fqid = send_bounce(c, forged, "rfc3464.eml", ADA)
    c.wait_state(fqid, "done")
    assert c.show(fqid)["reason"] == "BOUNCE_FORGED"
    assert "bad code: dropped" in c.transform.log()

    [d] = c.deliveries(qid)
    assert d["state"] == "sent"
    # Only the soft bounce counted towards a score.
    [row] = pc.postern.parse_json_lines(c.spoolctl("--json", "suppress", "list").stdout)
    assert row["address"] == ADA and row["score"] == 0.5 and row["soft"] == 1


def test_suppressed_address_gets_no_copy(make_chain, tmp_path):
    c, relay = verp_chain(make_chain, tmp_path)
    # Five hard bounces on five days, as `spoolctl suppress add` records them at once.
    c.spoolctl("suppress", "add", BOB)
    [row] = pc.postern.parse_json_lines(c.spoolctl("--json", "suppress", "list").stdout)
    assert row["address"] == BOB and row["suppressed"] and row["score"] >= 5

    qid = c.send([ADA, BOB])
    dl = by_rcpt(c.wait_state(qid, "done"))
    assert dl[ADA]["state"] == "sent"
    assert dl[BOB]["state"] == "bounced" and "suppressed" in dl[BOB]["last_reply"]
    assert relay.copies(BOB) == []

    # A message to the suppressed address alone ends at once.
    qid2 = c.send([BOB])
    [d] = c.wait_state(qid2, "done")
    assert d["state"] == "bounced" and relay.copies(BOB) == []

    # Taken off the list, it gets copies again.
    c.spoolctl("suppress", "remove", BOB)
    qid3 = c.send([BOB])
    [d] = c.wait_state(qid3, "done")
    assert d["state"] == "sent" and len(relay.copies(BOB)) == 1
