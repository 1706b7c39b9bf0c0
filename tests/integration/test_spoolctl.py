"""spoolctl (SPEC §6) against real daemons over real sockets.

Messages go in over LMTP with smtplib; the chain (dispatch, transform,
sender workers, an aiosmtpd relay) is started as the delivery tests start
it.  Each command is checked for what it prints (the JSON shapes of §6),
what it changes in the spool, what the relay then gets, and its exit code:
0 ok, 1 not found, 2 usage error, 3 spool error (docs/man/spoolctl.8).
"""
import email
import email.policy
import json
import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from postern import RECIPIENT, wait_for
from smtp_client_test import pki  # noqa: F401  (fixture)

RCPTS = ["ada@example.org", "bob@example.net", "cyd@example.com"]
LIST_KEYS = {"id", "state", "arrival", "size", "sender", "recipients", "sent", "deferred",
             "bounced", "reason"}
DLV_KEYS = {"rcpt", "state", "attempts", "next_try", "last_reply"}
MSG_STATES = {"incoming", "ready", "deferred", "hold", "rejected", "done"}
DLV_STATES = {"ready", "leased", "deferred", "sent", "bounced"}
UNKNOWN_ID = "0000000000000001"


# ---- helpers ---------------------------------------------------------------

def lmtp_send(ingest, data: bytes, sender="sender@example.org"):
    """One message over LMTP (smtplib): the queue id from the 250 reply."""
    with smtplib.LMTP(ingest.host, ingest.port, timeout=30) as s:
        s.ehlo("client.test")           # LMTP: sends LHLO
        assert s.mail(sender)[0] == 250
        assert s.rcpt(RECIPIENT)[0] == 250
        code, text = s.data(data)
    m = postern.QUEUED_RE.match(f"{code} {text.decode()}")
    assert m, (code, text)
    return m.group(1)


def ctl(config, *args):
    """spoolctl -c config args: (exit code, stdout bytes, stderr text), sanitizer-clean."""
    p = postern.spoolctl(config, *args, check=False)
    err = p.stderr.decode(errors="replace")
    assert not postern.SANITIZER_RE.search(err), err
    return p.returncode, p.stdout, err


def ctl_json(config, *args):
    """spoolctl --json args that must succeed: the objects it printed, one a line."""
    rc, out, err = ctl(config, "--json", *args)
    assert rc == 0, (args, rc, err)
    return postern.parse_json_lines(out)


def ids(objs):
    return [o["id"] for o in objs]


def reader_active(spool_dir, pid):
    """True when process pid has a read transaction open on the spool.

    `mdb_stat -r` lists the reader slots; a slot not in a transaction shows
    "-" as its txnid.
    """
    # mdb_stat -r exits 1 once it has printed the table: read what it printed.
    out = subprocess.run(["mdb_stat", "-r", str(spool_dir)], capture_output=True,
                         text=True).stdout
    assert out.startswith("Reader Table Status"), out
    return any(f.isdigit() for line in out.splitlines()
               for f in [line.split()[-1]] if line.split()[0] == str(pid))


def blocked_writing(config, *args):
    """Start spoolctl with a pipe nobody reads, wait until it blocks writing.

    What it would print must be larger than the pipe buffer (64 KiB).
    """
    p = subprocess.Popen([str(postern.spoolctl_binary()), "-c", str(config), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def blocked():
        assert p.poll() is None, "spoolctl exited: its output fits in the pipe"
        with open(f"/proc/{p.pid}/wchan") as f:
            return "pipe_write" in f.read()
    wait_for(blocked, timeout=30, what="spoolctl blocked on a full pipe")
    return p


def assert_no_pinned_reader(spool_dir, p, expected: bytes):
    """While p blocks on stdout it holds no read transaction; then it prints expected."""
    try:
        assert not reader_active(spool_dir, p.pid), "read transaction held while writing"
    finally:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert not postern.SANITIZER_RE.search(err.decode(errors="replace"))
    assert out == expected


def message_of(size, subject="big"):
    """A message of about size bytes (lines of 70 octets)."""
    return postern.message(subject=subject, body=("x" * 68 + "\r\n") * (size // 70))


# ---- list, stats --------------------------------------------------------------

def test_list_filters_and_json_shape(ingest, need_spoolctl):
    cfg = ingest.config_path
    data_a = postern.message("a", sender="alice@example.org")
    a = lmtp_send(ingest, data_a, sender="alice@example.org")
    time.sleep(4.2)
    b = lmtp_send(ingest, postern.message("b"), sender="bob@example.org")
    c = lmtp_send(ingest, postern.message("c"), sender="alice@example.org")
    # Arrivals are in seconds; b and c stay younger than 2 s for about 2 s.
    sent = time.monotonic()
    older = ctl_json(cfg, "list", "--older-than", "2s")
    older_alice = ctl_json(cfg, "list", "--sender", "alice@example.org", "--older-than", "2s")
    assert time.monotonic() - sent < 1.5, "too slow to tell 2 s apart"
    assert ids(older) == [a] and ids(older_alice) == [a]
    assert ctl_json(cfg, "hold", b) == [{"held": 1}]

    objs = ctl_json(cfg, "list")
    assert ids(objs) == [a, b, c]           # oldest first
    for o in objs:
        assert LIST_KEYS <= set(o), o
        assert o["recipients"] == [RECIPIENT]
        assert (o["sent"], o["deferred"], o["bounced"]) == (0, 0, 0)
    oa, ob, oc = objs
    assert oa["state"] == "incoming" and oa["sender"] == "alice@example.org"
    assert oa["size"] == len(data_a) and oa["reason"] is None
    assert abs(oa["arrival"] - time.time()) < 60 and ob["arrival"] - oa["arrival"] >= 4
    assert ob["state"] == "hold" and ob["reason"] == "held by operator"

    assert ids(ctl_json(cfg, "list", "--state", "hold")) == [b]
    assert ids(ctl_json(cfg, "list", "--state", "incoming")) == [a, c]
    assert ids(ctl_json(cfg, "list", "--state", "done")) == []
    assert ids(ctl_json(cfg, "list", "--sender", "ALICE@example.org")) == [a, c]
    assert ids(ctl_json(cfg, "list", "--sender", "nobody@example.org")) == []
    assert ids(ctl_json(cfg, "list", "--limit", "2")) == [a, b]
    assert ids(ctl_json(cfg, "list", "--state", "incoming", "--limit", "1")) == [a]
    assert ids(ctl_json(cfg, "list", "--state", "incoming", "--sender", "alice@example.org",
                        "--limit", "1")) == [a]
    assert ids(ctl_json(cfg, "list", "--older-than", "1h")) == []
    # --json after the command is the same.
    rc, out, _ = ctl(cfg, "list", "--state", "hold", "--json")
    assert rc == 0 and ids(postern.parse_json_lines(out)) == [b]

    # The table: a heading, then one row per message in the same order.
    rc, out, _ = ctl(cfg, "list")
    lines = out.decode().splitlines()
    assert rc == 0 and lines[0].split()[:4] == ["ID", "ARRIVAL", "SIZE", "STATE"]
    assert [l.split()[0] for l in lines[1:]] == [a, b, c]
    assert lines[2].split()[4] == "hold" and "<bob@example.org>" in lines[2]


def test_stats_json_shape(ingest, need_spoolctl):
    cfg = ingest.config_path
    empty = ctl_json(cfg, "stats")
    assert len(empty) == 1 and set(empty[0]) >= {"messages", "deliveries", "oldest_age",
                                                "spool_bytes", "tokens"}
    assert set(empty[0]["messages"]) == MSG_STATES
    assert set(empty[0]["deliveries"]) == DLV_STATES
    assert empty[0]["oldest_age"] == 0 and set(empty[0]["tokens"]) == {"active", "used"}

    lmtp_send(ingest, postern.message("one"))
    held = lmtp_send(ingest, postern.message("two"))
    ctl_json(cfg, "hold", held)
    ctl(cfg, "token", "add", "--from", OWNER, "--rcpt", "x@example.org")
    time.sleep(1.1)
    [st] = ctl_json(cfg, "stats")
    assert st["messages"] == {"incoming": 1, "ready": 0, "deferred": 0, "hold": 1,
                              "rejected": 0, "done": 0}
    assert st["deliveries"] == dict.fromkeys(DLV_STATES, 0)
    assert st["tokens"] == {"active": 1, "used": 0}
    assert 1 <= st["oldest_age"] < 60
    assert st["spool_bytes"] == (ingest.spool_dir / "data.mdb").stat().st_size > 0

    rc, out, _ = ctl(cfg, "stats")
    assert rc == 0 and "incoming=1" in out.decode() and "hold=1" in out.decode()


# ---- show -------------------------------------------------------------------------

def test_show_views(make_chain):
    c, relay = make_chain()
    cfg = c.config_path
    data = pc.lego_message(c.token(*RCPTS[:2]))
    qid = lmtp_send(c.ingest, data, sender=OWNER)
    c.wait_state(qid, "done")

    [m] = ctl_json(cfg, "show", qid)
    assert m["id"] == qid and m["state"] == "done" and m["sender"] == OWNER
    assert m["recipients"] == [RECIPIENT] and m["reason"] is None and m["size"] == len(data)
    assert len(m["history"]) >= 2 and "done" in m["history"][-1], m["history"]
    rc, out, _ = ctl(cfg, "show", qid)
    text = out.decode()
    assert rc == 0 and f"id:         {qid}\n" in text and "state:      done" in text
    assert f"sender:     <{OWNER}>" in text and f"recipient:  <{RECIPIENT}>" in text

    # --raw --unmasked: the bytes as received (--raw alone masks the token).
    rc, raw, _ = ctl(cfg, "show", qid, "--raw", "--unmasked")
    assert rc == 0 and raw == data
    rc, raw, _ = ctl(cfg, "show", qid, "--raw")
    assert rc == 0 and raw != data and b"[token " in token_part(raw)

    # --outgoing: the bytes the relay got, per recipient; the first by default.
    for r in RCPTS[:2]:
        [(_, rcpts, sent)] = relay.copies(r)
        assert rcpts == [r]
        assert ctl(cfg, "show", qid, "--outgoing", "--rcpt", r)[1] == sent
    rc, first, _ = ctl(cfg, "show", qid, "--outgoing")
    assert rc == 0 and first == relay.copies(RCPTS[0])[0][2]
    rc, out, err = ctl(cfg, "show", qid, "--outgoing", "--rcpt", "nobody@example.org")
    assert (rc, out) == (1, b"") and "no delivery to nobody@example.org" in err

    # --deliveries: one object per recipient, in recipient order.
    dl = ctl_json(cfg, "show", qid, "--deliveries")
    assert [d["rcpt"] for d in dl] == RCPTS[:2]
    for d in dl:
        assert DLV_KEYS <= set(d), d
        assert d["state"] == "sent" and d["attempts"] == 1
        assert isinstance(d["next_try"], int) and d["last_reply"].startswith("250 2.0.0")
    rc, out, _ = ctl(cfg, "show", qid, "--deliveries")
    lines = out.decode().splitlines()
    assert rc == 0 and lines[0].split()[:3] == ["RECIPIENT", "STATE", "TRY"]
    assert [l.split()[:3] for l in lines[1:]] == [[r, "sent", "1"] for r in RCPTS[:2]]


def token_part(raw: bytes) -> bytes:
    """The decoded content of the message's token part (its first LEGOTOKEN part)."""
    for part in email.message_from_bytes(raw, policy=email.policy.default).walk():
        if not part.is_multipart():
            content = part.get_payload(decode=True) or b""
            if content.startswith(b"LEGOTOKEN"):
                return content
    return b""


def test_show_raw_masks_a_live_token(make_chain):
    """Issue 9 item 4: a message rejected for SENDER_MISMATCH keeps a token
    that still works; `show --raw` prints it as "[token ID]", ID as `token
    list` shows it, in the base64 part and in a copy in the Subject;
    --unmasked prints the bytes as received, and says so in the log."""
    c, relay = make_chain()
    cfg = c.config_path
    token = c.token(*RCPTS[:1])
    data = pc.lego_message(token, subject=f"Fwd: {token}", sender="thief@evil.example")
    qid = lmtp_send(c.ingest, data, sender="thief@evil.example")
    c.wait_state(qid, "rejected")
    assert c.show(qid)["reason"] == "SENDER_MISMATCH"
    [tk] = ctl_json(cfg, "token", "list")
    assert tk["status"] == "active"                 # the token would still work

    rc, masked, err = ctl(cfg, "show", qid, "--raw")
    assert rc == 0, err
    assert token.encode() not in masked
    assert token_part(masked).strip() == f"LEGOTOKEN[token {tk['id']}]".encode()
    assert f"Subject: Fwd: [token {tk['id']}]".encode() in masked
    # Nothing else changed: the rest of the message is as received.
    before, after = data.split(b"TEVHT1RPS0VO", 1)[0], masked.split(b"TEVHT1RPS0VO", 1)[0]
    assert before.replace(token.encode(), f"[token {tk['id']}]".encode()) == after
    assert masked.endswith(data[data.rindex(b"\r\n--"):])

    rc, raw, err = ctl(cfg, "show", qid, "--raw", "--unmasked")
    assert rc == 0 and raw == data
    assert re.search(rf"spoolctl\[\d+\]: {qid}: raw message shown with its token", err), err
    assert ctl(cfg, "show", qid, "--unmasked")[0] == 2         # only with --raw


def test_show_raw_holds_no_reader_while_writing(ingest, need_spoolctl):
    """`show --raw | less`: a blocked stdout must not keep the read transaction."""
    data = message_of(400_000)
    qid = lmtp_send(ingest, data)
    p = blocked_writing(ingest.config_path, "show", qid, "--raw")
    assert_no_pinned_reader(ingest.spool_dir, p, data)


def test_show_outgoing_holds_no_reader_while_writing(make_chain):
    c, relay = make_chain()
    qid = c.send(RCPTS[:1], attachment=bytes(range(256)) * 1200)
    c.wait_state(qid, "done")
    [(_, _, sent)] = relay.copies(RCPTS[0])
    assert len(sent) > 300_000
    p = blocked_writing(c.config_path, "show", qid, "--outgoing")
    assert_no_pinned_reader(c.ingest.spool_dir, p, sent)


def test_token_list_holds_no_reader_while_writing(ingest, need_spoolctl, tmp_path):
    batch = [{"from": OWNER, "recipients": [f"r{i}@example.org"]} for i in range(1500)]
    (tmp_path / "tokens.json").write_text(json.dumps(batch))
    rc, out, err = ctl(ingest.config_path, "token", "import", tmp_path / "tokens.json")
    assert rc == 0 and len(out.splitlines()) == 1500, err
    rc, listing, _ = ctl(ingest.config_path, "token", "list")
    assert rc == 0 and len(listing.splitlines()) == 1501 and len(listing) > 70_000
    p = blocked_writing(ingest.config_path, "token", "list")
    assert_no_pinned_reader(ingest.spool_dir, p, listing)


# ---- hold, release, retry ------------------------------------------------------------

def ready_with_deliveries(c, qid, n):
    return c.wait_deliveries(qid, lambda dl: len(dl) == n and {d["state"] for d in dl} == {"ready"},
                             what=f"{n} ready deliveries")


def test_hold_stops_deliveries_until_release(make_chain):
    # No sender worker yet: the deliveries wait as ready until one starts.
    c, relay = make_chain(senders=0)
    cfg = c.config_path
    qid = c.send(RCPTS[:2])
    ready_with_deliveries(c, qid, 2)
    assert ctl_json(cfg, "hold", qid) == [{"held": 1}]
    assert ctl_json(cfg, "hold", qid) == [{"held": 0}]        # already held
    m = c.show(qid)
    assert m["state"] == "hold" and m["reason"] == "held by operator"
    assert [d["held"] for d in c.deliveries(qid)] == [True, True]

    c.add_sender()
    # The owner's notice is not held: once it is out, the sender was working.
    wait_for(lambda: relay.copies(OWNER), timeout=60, what="the owner's notice")
    time.sleep(3)                       # three dispatcher rescans
    assert [relay.copies(r) for r in RCPTS[:2]] == [[], []]
    dl = c.deliveries(qid)
    assert [(d["state"], d["attempts"]) for d in dl] == [("ready", 0), ("ready", 0)]
    assert c.show(qid)["state"] == "hold"

    assert ctl_json(cfg, "release", qid) == [{"released": 1}]
    dl = c.wait_state(qid, "done")
    assert [(d["state"], d["attempts"], d["held"]) for d in dl] == [("sent", 1, False)] * 2
    assert [len(relay.copies(r)) for r in RCPTS[:2]] == [1, 1]
    assert c.show(qid)["reason"] is None


def test_hold_all_and_release_all(make_chain):
    c, relay = make_chain(senders=0)
    cfg = c.config_path
    q1 = c.send(RCPTS[:1])
    q2 = c.send(RCPTS[1:3])
    ready_with_deliveries(c, q1, 1)
    ready_with_deliveries(c, q2, 2)
    # The owner's notices are transformed too before anything is held.
    wait_for(lambda: all(o["state"] == "ready" for o in ctl_json(cfg, "list")),
             timeout=60, what="every message ready")
    live = [o["id"] for o in ctl_json(cfg, "list") if o["state"] in ("incoming", "ready")]
    assert {q1, q2} <= set(live)
    assert ctl_json(cfg, "hold", "--all") == [{"held": len(live)}]
    assert ids(ctl_json(cfg, "list", "--state", "hold")) == sorted(live)

    c.add_sender()
    time.sleep(3)
    assert relay.messages == []
    assert c.stats()["deliveries"]["sent"] == 0

    assert ctl_json(cfg, "release", "--all") == [{"released": len(live)}]
    c.wait_state(q1, "done")
    c.wait_state(q2, "done")
    assert [len(relay.copies(r)) for r in RCPTS] == [1, 1, 1]
    assert ctl_json(cfg, "list", "--state", "hold") == []


def wait_deferred(c, qid):
    """The one delivery of qid deferred after its first attempt, due in about an hour."""
    [d] = c.wait_deliveries(qid, lambda dl: dl and dl[0]["state"] == "deferred",
                            what="a deferred delivery")
    assert d["attempts"] == 1 and d["last_reply"] == "451 4.3.0 try later"
    # [retry] initial = 1h with SPEC §5's ±20% jitter: at least 48 minutes.
    assert d["next_try"] - time.time() > 0.8 * 3600 - 60, d
    return d


def test_retry_makes_deferred_due_now(make_chain):
    c, relay = make_chain({"retry": {"initial": "1h", "max": "2h"}})
    cfg = c.config_path
    for r in RCPTS:
        relay.data_script[r] = ["451 4.3.0 try later"]
    q1 = c.send(RCPTS[:1])
    wait_deferred(c, q1)
    time.sleep(2.5)                     # the schedule alone does not try again
    assert c.deliveries(q1)[0]["attempts"] == 1 and relay.copies(RCPTS[0]) == []

    assert ctl_json(cfg, "retry", q1) == [{"retried": 1}]
    [d] = c.wait_state(q1, "done")
    assert (d["state"], d["attempts"]) == ("sent", 2)
    assert len(relay.copies(RCPTS[0])) == 1
    assert ctl_json(cfg, "retry", q1) == [{"retried": 0}]     # nothing deferred left

    q2, q3 = c.send(RCPTS[1:2]), c.send(RCPTS[2:3])
    wait_deferred(c, q2)
    wait_deferred(c, q3)
    assert ctl_json(cfg, "retry", "--all") == [{"retried": 2}]
    for q in (q2, q3):
        [d] = c.wait_state(q, "done")
        assert (d["state"], d["attempts"]) == ("sent", 2)
    assert [len(relay.copies(r)) for r in RCPTS] == [1, 1, 1]


@pytest.mark.skipif(Path("/dev/log").is_socket(), reason="a syslog daemon takes the lines here")
def test_actions_logged_to_stderr_without_syslog(ingest, need_spoolctl):
    """Issue 9 item 12: with no syslog daemon (no /dev/log socket) spoolctl's
    changes went nowhere; now they go to stderr, stamped like syslog."""
    qid = lmtp_send(ingest, postern.message("logged"))
    rc, out, err = ctl(ingest.config_path, "hold", qid)
    assert rc == 0 and out == b"held: 1 message(s)\n", err
    assert re.search(rf"^{postern.LOG_STAMP}spoolctl\[\d+\]: {qid}: state=hold", err, re.M), err
    rc, out, err = ctl(ingest.config_path, "--json", "list")  # reads log nothing
    assert rc == 0 and err == "", err


# ---- delete, purge -------------------------------------------------------------------

def test_delete_id_and_state(ingest, need_spoolctl):
    cfg = ingest.config_path
    a, b, c = (lmtp_send(ingest, postern.message(s)) for s in "abc")
    ctl_json(cfg, "hold", b)
    assert ctl_json(cfg, "delete", a) == [{"deleted": 1}]
    assert ctl(cfg, "show", a)[0] == 1
    assert ctl(cfg, "show", a, "--raw")[:2] == (1, b"")
    assert ctl(cfg, "delete", a)[0] == 1
    assert ids(ctl_json(cfg, "list")) == [b, c]

    assert ctl_json(cfg, "delete", "--state", "incoming") == [{"deleted": 1}]
    assert ids(ctl_json(cfg, "list")) == [b]
    assert ctl_json(cfg, "delete", "--state", "incoming") == [{"deleted": 0}]
    [st] = ctl_json(cfg, "stats")
    assert st["messages"]["incoming"] == 0 and st["messages"]["hold"] == 1

    rc, out, _ = ctl(cfg, "delete", "--state", "hold")
    assert rc == 0 and out == b"deleted: 1 message(s)\n"
    assert ctl_json(cfg, "list") == []


def test_purge_removes_only_ended_messages(make_chain):
    c, relay = make_chain({"retry": {"initial": "1h", "max": "2h"}})
    cfg = c.config_path
    relay.data_script[RCPTS[1]] = ["451 4.3.0 try later"]
    done = c.send(RCPTS[:1])
    deferred = c.send(RCPTS[1:2])
    rejected = lmtp_send(c.ingest, pc.lego_message("no-such-token-0123456789"), sender=OWNER)
    c.wait_state(done, "done")
    c.wait_state(deferred, "deferred")
    c.wait_state(rejected, "rejected")
    # The owner's notices are mail too: wait until nothing but `deferred` is live.
    wait_for(lambda: [o["id"] for o in ctl_json(cfg, "list")
                      if o["state"] not in ("done", "rejected")] == [deferred],
             timeout=60, what="only the deferred message live")
    ended = [o["id"] for o in ctl_json(cfg, "list") if o["id"] != deferred]
    assert {done, rejected} <= set(ended)

    assert ctl_json(cfg, "purge", "--older-than", "1h") == [{"purged": 0}]
    time.sleep(2.2)
    assert ctl_json(cfg, "purge", "--older-than", "1s") == [{"purged": len(ended)}]
    assert ids(ctl_json(cfg, "list")) == [deferred]
    for q in (done, rejected):
        assert ctl(cfg, "show", q)[0] == 1
    assert c.show(deferred)["state"] == "deferred"
    [st] = ctl_json(cfg, "stats")
    assert st["messages"]["done"] == 0 and st["messages"]["rejected"] == 0
    assert st["deliveries"] == {"ready": 0, "leased": 0, "deferred": 1, "sent": 0, "bounced": 0}


def test_delete_and_purge_work_on_a_full_spool(make_ingest, need_spoolctl):
    """Fill the spool until ingest answers 452: delete (and purge) must
    still work, as docs/operations.md section 8 tells the operator; the
    warning names the spool, what is full and the remedy; ingest then
    accepts mail again."""
    d = make_ingest({"spool": {"map_size": "1M", "max_size": "2M"}})
    cfg = d.config_path
    body = ("y" * 78 + "\r\n") * 1000           # 80 KB
    stored, reply = [], None
    with d.client() as c:
        c.lhlo()
        # Large messages until one is refused, then small ones into the last pages.
        for lines in (1000, 10):
            for i in range(1000):
                _, replies = c.transaction("sender@example.org", [RECIPIENT],
                                           postern.message(f"fill {i}", body=body[:80 * lines]))
                if not replies[0].startswith("250"):
                    reply = replies[0]
                    break
                stored.append(postern.QUEUED_RE.match(replies[0]).group(1))
            assert reply == "452 4.3.1 Insufficient system storage", (reply, stored)
    assert len(stored) > 5

    # The remedy works: one message, then a whole state, then purge.
    assert ctl_json(cfg, "delete", stored[0]) == [{"deleted": 1}]
    assert ctl_json(cfg, "purge", "--older-than", "1s") == [{"purged": 0}]
    assert ctl_json(cfg, "delete", "--state", "incoming") == [{"deleted": len(stored) - 1}]
    assert ctl_json(cfg, "list") == []
    with d.client() as c:
        c.lhlo()
        assert c.send_message(postern.message("after", body=body))
    warning = [l for l in d.log().splitlines() if "spool full" in l][-1]
    assert str(d.spool_dir) in warning and "max_size" in warning, warning
    assert "spoolctl purge" in warning, warning


# ---- exit codes -----------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["show", UNKNOWN_ID], ["show", UNKNOWN_ID, "--raw"], ["show", UNKNOWN_ID, "--outgoing"],
    ["show", UNKNOWN_ID, "--deliveries"], ["hold", UNKNOWN_ID], ["release", UNKNOWN_ID],
    ["retry", UNKNOWN_ID], ["delete", UNKNOWN_ID], ["token", "show", "ffffffffffffffff"],
    ["token", "revoke", "ffffffffffffffff"],
])
def test_exit_1_not_found(ingest, need_spoolctl, args):
    lmtp_send(ingest, postern.message("present"))
    rc, out, err = ctl(ingest.config_path, *args)
    assert (rc, out) == (1, b""), err
    assert err.startswith("spoolctl: ")


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["show"], ["show", "12345"], ["show", "not-a-queue-id-at"],
    ["show", UNKNOWN_ID, "--raw", "--deliveries"], ["show", UNKNOWN_ID, "--rcpt", "a@b"],
    ["show", UNKNOWN_ID, "--bogus"], ["list", "--state", "stuck"], ["list", "--older-than", "soon"],
    ["list", "--limit", "many"], ["list", "extra"], ["hold"], ["hold", UNKNOWN_ID, "--all"],
    ["release"], ["retry", "--all", UNKNOWN_ID], ["delete"], ["delete", "--state", "gone"],
    ["delete", UNKNOWN_ID, "--state", "done"], ["purge"], ["purge", "--older-than", "later"],
    ["list", "--limit", "-1"], ["stats", "extra"], ["stats", "--bogus"],
    ["relay"], ["relay", "pause"], ["relay", "status", "extra"],
])
def test_exit_2_usage(ingest, need_spoolctl, args):
    qid = lmtp_send(ingest, postern.message("kept"))
    rc, out, err = ctl(ingest.config_path, *args)
    assert (rc, out) == (2, b""), err
    assert err.strip()
    # A usage error changes nothing.
    assert [(o["id"], o["state"]) for o in ctl_json(ingest.config_path, "list")] == \
        [(qid, "incoming")]


@pytest.mark.parametrize("args, named", [
    (["token", "add", "--from", OWNER, "--rcpt", "not an address"], '"not an address"'),
    (["token", "add", "--from", OWNER, "--rcpt", "x@example.org", "--rcpt", "nobody@"],
     '"nobody@"'),
    (["token", "add", "--from", "nobody", "--rcpt", "x@example.org"], '"nobody"'),
])
def test_token_bad_address_exit_2(ingest, need_spoolctl, args, named):
    # The spool's own checks (spool_token_prepare): bad input is 2, not "spool error" 3.
    rc, out, err = ctl(ingest.config_path, *args)
    assert (rc, out) == (2, b""), err
    assert err.startswith("spoolctl: ") and "address" in err and named in err, err
    assert ctl_json(ingest.config_path, "stats")[0]["tokens"] == {"active": 0, "used": 0}


def test_token_import_bad_address_exit_2(tmp_path, ingest, need_spoolctl):
    batch = [{"from": OWNER, "recipients": ["x@example.org"]},
             {"from": OWNER, "recipients": ["y@example.org", "no-at-sign"]}]
    (tmp_path / "tokens.json").write_text(json.dumps(batch))
    rc, out, err = ctl(ingest.config_path, "token", "import", tmp_path / "tokens.json")
    assert (rc, out) == (2, b""), err
    assert "entry 1" in err and '"no-at-sign"' in err, err
    # All or none: the good first entry is not registered either.
    assert ctl_json(ingest.config_path, "stats")[0]["tokens"] == {"active": 0, "used": 0}


def test_token_import_one_json_value(tmp_path, ingest, need_spoolctl):
    """A second value after the array (json-glib leaked it) is refused, naming the byte."""
    one = json.dumps([{"from": OWNER, "recipients": ["x@example.org"]}])
    (tmp_path / "tokens.json").write_text(one + "\n" + one)
    rc, out, err = ctl(ingest.config_path, "token", "import", tmp_path / "tokens.json")
    assert (rc, out) == (2, b""), err
    assert f"content after the JSON value (byte {len(one) + 1})" in err, err
    assert ctl_json(ingest.config_path, "stats")[0]["tokens"] == {"active": 0, "used": 0}


def test_exit_0_and_3(tmp_path, ingest, need_spoolctl):
    qid = lmtp_send(ingest, postern.message("ok"))
    for args in (["stats"], ["list"], ["show", qid], ["release", qid], ["retry", "--all"],
                 ["token", "list"]):
        assert ctl(ingest.config_path, *args)[0] == 0, args
    # A spool that cannot be opened (its folder is a file): 3, not "usage".
    broken = tmp_path / "broken.ini"
    (tmp_path / "not-a-dir").write_text("")
    postern.write_config(broken, {"spool": {"dir": tmp_path / "not-a-dir"}})
    for args in (["stats"], ["list"], ["show", qid]):
        rc, out, err = ctl(broken, *args)
        assert (rc, out) == (3, b""), (args, err)
        assert "not-a-dir" in err
