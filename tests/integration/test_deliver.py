"""Delivery through the real chain: ingest, dispatch, transform, sender.

The relay is aiosmtpd with STARTTLS and AUTH required and a certificate
from a test CA.  Each message carries a fresh token registered with
spoolctl; what the relay got is checked byte for byte against
`spoolctl show --outgoing` and with python3-dkim.
"""

import chain as pc
from chain import BOUNCES, OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)

RCPTS = ["ada@example.org", "bob@example.net", "cyd@example.com"]


def test_one_signed_copy_per_recipient(make_chain):
    c, relay = make_chain()
    qid = c.send(RCPTS)
    dl = c.wait_state(qid, "done")
    assert c.show(qid)["reason"] is None        # SPEC §6: reason only for refused/held
    assert sorted(d["rcpt"] for d in dl) == sorted(RCPTS)
    assert {d["state"] for d in dl} == {"sent"} and {d["attempts"] for d in dl} == {1}
    for d in dl:
        assert d["last_reply"].startswith("250 2.0.0")
    for rcpt in RCPTS:
        [(mail_from, rcpts, data)] = relay.copies(rcpt)
        assert mail_from == BOUNCES and rcpts == [rcpt]
        assert data == c.outgoing(qid, rcpt)
        assert c.dkim_ok(data), data[:600]
        assert f"To: {rcpt}".encode() in data or f"<{rcpt}>".encode() in data
    # The owner's notice (how many recipients) goes through the same spool.
    pc.postern.wait_for(lambda: relay.copies(OWNER), timeout=60, what="owner's notice")
    mail_from, _, data = relay.copies(OWNER)[0]
    assert mail_from == "<>" and c.dkim_ok(data)
    assert relay.mechanisms and set(relay.mechanisms) == {"PLAIN"}


def test_identical_copies_share_transactions(make_chain):
    rcpts = [f"r{i}@example.org" for i in range(5)]
    c, relay = make_chain({"rewrite": {"personalize": "false"},
                           "relay": {"max_rcpt_per_txn": "2"}})
    qid = c.send(rcpts)
    dl = c.wait_state(qid, "done")
    assert {d["state"] for d in dl} == {"sent"}
    txns = [m for m in relay.messages if OWNER not in m[3]]
    assert sorted(len(m[3]) for m in txns) == [1, 2, 2]
    assert sorted(r for m in txns for r in m[3]) == rcpts
    assert len({m[4] for m in txns}) == 1 and c.dkim_ok(txns[0][4])


def test_451_then_sent_with_growing_delays(make_chain):
    c, relay = make_chain()
    relay.data_script[RCPTS[0]] = ["451 4.3.0 try later"] * 3
    qid = c.send(RCPTS[:2])
    dl = c.wait_deliveries(qid, lambda dl: any(d["state"] == "deferred" for d in dl),
                           what="a deferred delivery")
    [d] = [d for d in dl if d["rcpt"] == RCPTS[0]]
    assert d["last_reply"] == "451 4.3.0 try later" and d["attempts"] == 1
    dl = c.wait_state(qid, "done")
    by = {d["rcpt"]: d for d in dl}
    assert by[RCPTS[0]]["state"] == "sent" and by[RCPTS[0]]["attempts"] == 4
    assert by[RCPTS[1]]["state"] == "sent" and by[RCPTS[1]]["attempts"] == 1
    assert len(relay.copies(RCPTS[0])) == 1 and len(relay.copies(RCPTS[1])) == 1
    # Backoff: 1 s, 2 s, 4 s (+-20%) between the four attempts, from the log.
    times = relay.attempt_times(RCPTS[0])
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 3, times
    assert 0.7 <= gaps[0] and gaps[0] < gaps[2] and gaps[2] >= 3.0, gaps


def test_550_bounces_and_owner_gets_a_notice(make_chain):
    c, relay = make_chain()
    relay.rcpt_replies[RCPTS[1]] = "550 5.1.1 <bob@example.net>: no such user"
    qid = c.send(RCPTS[:2])
    dl = c.wait_state(qid, "done")
    by = {d["rcpt"]: d for d in dl}
    assert by[RCPTS[1]]["state"] == "bounced" and by[RCPTS[1]]["attempts"] == 1
    assert by[RCPTS[1]]["last_reply"] == "550 5.1.1 <bob@example.net>: no such user"
    assert by[RCPTS[0]]["state"] == "sent"
    assert relay.copies(RCPTS[1]) == []

    # The owner gets a second notice naming the bounced recipient.
    def bounce_notice():
        return [m for m in relay.copies(OWNER) if RCPTS[1].encode() in m[2]]
    [(mail_from, _, data)] = pc.postern.wait_for(bounce_notice, timeout=60, what="bounce notice")
    assert mail_from == "<>" and c.dkim_ok(data)


def test_lifetime_expiry_bounces(make_chain):
    c, relay = make_chain({"retry": {"lifetime": "3s"}})
    relay.data_script[RCPTS[0]] = ["451 4.3.0 try later"] * 100
    qid = c.send(RCPTS[:1])
    [d] = c.wait_state(qid, "done", timeout=90)
    assert d["state"] == "bounced" and d["attempts"] >= 2
    assert d["last_reply"] == "451 4.3.0 try later"
    assert relay.copies(RCPTS[0]) == []


def test_maildir_relay_one_file_per_recipient(tmp_path, make_chain):
    box = tmp_path / "outbox"
    c, _ = make_chain({"relay": {"url": f"maildir:{box}"}}, relay=False)
    qid = c.send(RCPTS)
    dl = c.wait_state(qid, "done")
    assert {(d["state"], d["last_reply"]) for d in dl} == \
        {("sent", "250 2.0.0 delivered to maildir")}
    # The copies, byte for byte, and the owner's notice.
    pc.postern.wait_for(lambda: len(list((box / "new").iterdir())) == len(RCPTS) + 1,
                        what="four files")
    files = [p.read_bytes() for p in (box / "new").iterdir()]
    assert all(c.outgoing(qid, r) in files for r in RCPTS)
    assert all(c.dkim_ok(f) for f in files)


def test_results_before_the_job_ends_are_recorded(make_chain):
    """A personalised job's transactions report one by one, and the
    dispatcher may hold those results a little to record them together
    (RESULT_HOLD_MS, dispatch_main.c), or until the next round for any
    reason (a tick each second); not until the job ends: with the job's
    last copy stuck at the relay, the ones before it are sent in the
    spool, and nothing goes twice once the relay answers."""
    c, relay = make_chain()
    relay.hold = {RCPTS[-1]}
    qid = c.send(RCPTS)
    pc.postern.wait_for(lambda: relay.held, timeout=60, what="the last copy held at the relay")
    dl = c.wait_deliveries(qid, lambda dl: sum(d["state"] == "sent" for d in dl) == 2,
                           timeout=10, what="the copies before it recorded sent")
    assert {d["rcpt"]: d["state"] for d in dl} == {RCPTS[0]: "sent", RCPTS[1]: "sent",
                                                     RCPTS[2]: "leased"}
    relay.holding = False
    dl = c.wait_state(qid, "done")
    assert {d["state"] for d in dl} == {"sent"}
    assert all(len(relay.copies(r)) == 1 for r in RCPTS)
