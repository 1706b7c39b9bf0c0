"""Relay faults through the real chain, each ending in the right state.

A dropped connection, a relay that never answers and a certificate for
another host defer; throttle (421 4.7.0) and quota (550 5.4.5) replies
pause the whole relay and bounce nothing, and so does a refused AUTH; one
event makes one pause, which spoolctl shows and can clear.  The broken relays are the SMTP
client tests' scripted raw servers; the others their aiosmtpd relay.
"""
import asyncio
import json
import os

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki, raw_factory  # noqa: F401  (fixtures)

RCPTS = ["ada@example.org", "bob@example.net"]


def only_deferred(dl):
    return bool(dl) and all(d["state"] == "deferred" and d["attempts"] >= 1 for d in dl)


def test_drop_mid_data_defers(tmp_path, pki, raw_factory, make_chain):  # noqa: F811
    raw = raw_factory(after_354=lambda f: f.read(65536), tls=pki["good"])
    c, _ = make_chain(pc.relay_config(tmp_path, pki, raw.port, scheme="smtps", user=False),
                      relay=False)
    qid = c.send(RCPTS[:1], attachment=os.urandom(3 << 20))
    [d] = c.wait_deliveries(qid, only_deferred, timeout=120, what="deferred")
    assert d["last_reply"].startswith("lost connection with localhost[127.0.0.1]"), d
    assert c.show(qid)["state"] == "deferred"


def test_silent_relay_times_out_and_defers(tmp_path, pki, raw_factory, make_chain):  # noqa: F811
    raw = raw_factory(greet=False)
    cfg = pc.postern.merge(pc.relay_config(tmp_path, pki, raw.port, user=False),
                           {"relay": {"timeout": "2s"}})
    c, _ = make_chain(cfg, relay=False)
    qid = c.send(RCPTS)
    dl = c.wait_deliveries(qid, only_deferred, what="deferred")
    for d in dl:
        assert d["last_reply"] == (f"conversation with localhost[127.0.0.1]:{raw.port} timed out "
                                   "while receiving the initial server greeting"), d


def test_wrong_certificate_defers_and_sends_nothing(make_chain):
    c, relay = make_chain(cert="wrong")
    qid = c.send(RCPTS)
    dl = c.wait_deliveries(qid, only_deferred, what="deferred")
    for d in dl:
        assert "hostname mismatch" in d["last_reply"], d
    # Nothing after STARTTLS: no AUTH (the password), no MAIL, no message.
    assert relay.mechanisms == [] and relay.mails == 0 and relay.messages == []


def paused_then_sent(make_chain, reply):
    """One throttle or quota reply: the relay pauses, nothing bounces, all is sent."""
    c, relay = make_chain()
    relay.data_script[RCPTS[0]] = [reply]
    qid = c.send(RCPTS)
    dl = c.wait_deliveries(qid, lambda dl: any(d["state"] == "deferred" for d in dl),
                           what="a paused delivery")
    first = [d for d in dl if d["rcpt"] == RCPTS[0]][0]
    assert first["state"] == "deferred" and first["last_reply"] == reply
    dl = c.wait_state(qid, "done")
    assert {d["state"] for d in dl} == {"sent"}
    assert [len(relay.copies(r)) for r in RCPTS] == [1, 1]
    assert "paused until" in c.dispatch.log()
    # The pause held every delivery: nothing went to the relay for a while.
    [t0] = [t for t, _, r in relay.attempts if r == reply]
    later = [t for t, rcpts, _ in relay.attempts if t > t0 and OWNER not in rcpts]
    assert later and min(later) - t0 >= 0.8, (t0, later)
    assert c.stats()["deliveries"]["bounced"] == 0
    return c


def test_throttle_pauses_relay(make_chain):
    paused_then_sent(make_chain, "421 4.7.0 Try again later, closing connection.")


def test_quota_pauses_relay(make_chain):
    paused_then_sent(make_chain, "550 5.4.5 Daily user sending quota exceeded.")


QUOTA = "550 5.4.5 Daily user sending quota exceeded."


def test_pause_outlives_a_dispatcher_restart(make_chain):
    """The pause is in the spool: after a dispatcher restart, another message
    queued during the pause waits until it ends."""
    c, relay = make_chain({"retry": {"initial": "8s", "max": "8s"}})
    relay.data_script[RCPTS[0]] = [QUOTA]
    qid = c.send(RCPTS[:1])
    c.wait_deliveries(qid, lambda dl: dl and dl[0]["state"] == "deferred", what="the paused delivery")
    [t0] = [t for t, _, r in relay.attempts if r == QUOTA]
    c.dispatch.kill9()
    c.dispatch.start()
    other = c.send(RCPTS[1:2])
    assert [d["state"] for d in c.wait_state(other, "done", timeout=90)] == ["sent"]
    [t1] = relay.attempt_times(RCPTS[1])
    assert t1 - t0 >= 7, t1 - t0
    assert "(recorded before our start)" in c.dispatch.log()


def test_lasting_quota_bounces_after_lifetime(make_chain):
    """Paused deliveries still expire: a quota that never lifts bounces them
    once [retry] lifetime has passed, instead of keeping them forever."""
    c, relay = make_chain({"retry": {"lifetime": "4s"}})
    relay.data_script[RCPTS[0]] = [QUOTA] * 50
    qid = c.send(RCPTS[:1])
    [d] = c.wait_deliveries(qid, lambda dl: dl and dl[0]["state"] == "bounced", timeout=90,
                            what="bounced")
    assert d["attempts"] >= 2 and d["last_reply"] == QUOTA, d


def test_hanging_rset_costs_its_own_timeout(make_chain):
    """Each SMTP phase has its own timeout, [relay] timeout only caps them:
    an RSET that hangs costs 20 s (Postfix's smtp_rset_timeout), not 2m,
    then a new connection delivers the rest of the job."""
    c, relay = make_chain({"relay": {"timeout": "2m"}})
    hung = []

    async def rset(server, session, envelope):
        if not hung:
            hung.append(True)
            await asyncio.sleep(150)
        return "250 2.0.0 OK"
    relay.handle_RSET = rset
    # Personalised copies: one transaction each, on one connection, RSET between.
    qid = c.send(RCPTS)
    assert {d["state"] for d in c.wait_state(qid, "done", timeout=90)} == {"sent"}
    [t0], [t1] = relay.attempt_times(RCPTS[0]), relay.attempt_times(RCPTS[1])
    # Measured: 20-21 s; with every phase at [relay] timeout, aiosmtpd's own
    # 30 s cut came first.
    assert hung and 15 <= abs(t1 - t0) <= 27, abs(t1 - t0)


def test_rate_counts_messages_not_recipients(make_chain):
    """[relay] rate is messages per second towards the relay: identical
    copies for five recipients are one message, sent in one transaction,
    not five spread over five seconds."""
    rcpts = [f"r{i}@example.org" for i in range(5)]
    c, relay = make_chain({"relay": {"rate": "1"}, "rewrite": {"personalize": "false"}})
    qid = c.send(rcpts)
    assert {d["state"] for d in c.wait_state(qid, "done")} == {"sent"}
    [(_, got, _)] = relay.copies(rcpts[0])
    assert sorted(got) == rcpts


def relay_status(c):
    return json.loads(c.spoolctl("--json", "relay", "status").stdout)["relay"]


def pause_warnings(c):
    return [line for line in c.dispatch.log().splitlines()
            if "warning: relay" in line and "paused until" in line]


def test_concurrent_quota_replies_make_one_pause(make_chain):
    """Two jobs in flight both meet the quota: the second reply, from a job
    leased before the pause began, neither pauses again nor doubles the
    pause.  The pause shows in stats, list, metrics and retry; `relay
    resume` clears it and the dispatcher delivers again."""
    a, b = RCPTS
    c, relay = make_chain({"retry": {"initial": "1m", "max": "1h"}})
    # The right password and certificate: check says so.
    [ok] = [l for l in c.spoolctl("check", check=False).stdout.decode().splitlines()
            if "[relay] url" in l]
    assert ok.startswith("ok: ") and "TLS (certificate verified)" in ok, ok
    assert "AUTH accepted" in ok, ok
    relay.data_script[a], relay.data_script[b] = [QUOTA], [QUOTA]
    relay.hold = {b}
    qb = c.send([b])
    postern.wait_for(lambda: relay.held, what="the copy to b mid-transaction")
    qa = c.send([a])
    c.wait_deliveries(qa, lambda dl: dl and dl[0]["state"] == "deferred", what="a paused")
    first = relay_status(c)
    assert first["paused"] and first["pauses"] == 1 and first["reason"] == QUOTA, first
    relay.holding = False
    c.wait_deliveries(qb, lambda dl: dl and dl[0]["state"] == "deferred", what="b deferred")
    st = relay_status(c)
    assert (st["pauses"], st["paused_until"]) == (1, first["paused_until"]), (first, st)
    assert len(pause_warnings(c)) == 1, pause_warnings(c)

    # Seen everywhere: stats, above list, metrics, and what retry says.
    stats = c.spoolctl("stats").stdout.decode()
    assert "relay:" in stats and "paused until" in stats and QUOTA in stats, stats
    assert c.stats()["relay"]["paused"] is True
    head = c.spoolctl("list").stdout.decode().splitlines()[0]
    assert head.startswith("relay ") and "paused until" in head, head
    metrics = c.spoolctl("metrics").stdout.decode()
    assert "postern_relay_paused 1" in metrics.splitlines(), metrics
    retry = c.spoolctl("retry", "--all").stdout.decode()
    assert "paused until" in retry and "relay resume" in retry, retry
    [r] = postern.parse_json_lines(c.spoolctl("--json", "retry", "--all").stdout)
    assert r["relay_paused_until"] == first["paused_until"], r

    # resume: cleared in the spool, noticed by the dispatcher, mail moves.
    out = c.spoolctl("relay", "resume").stdout.decode()
    assert "pause cleared" in out, out
    assert relay_status(c)["paused"] is False
    postern.wait_for(lambda: "pause cleared by spoolctl relay resume" in c.dispatch.log(),
                     timeout=10, what="the dispatcher noticing the resume")
    c.spoolctl("retry", "--all")
    for q in (qa, qb):
        assert [d["state"] for d in c.wait_state(q, "done", timeout=30)] == ["sent"]
    assert "postern_relay_paused 0" in c.spoolctl("metrics").stdout.decode().splitlines()
    assert "not paused" in c.spoolctl("relay", "status").stdout.decode()


def test_refused_auth_pauses_relay_and_check_says_why(tmp_path, make_chain):
    """A wrong relay password: the first 535 pauses the relay with one
    warning; copies are deferred, never bounced, and nothing is sent;
    `spoolctl check` names the relay and its reply."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    c, relay = make_chain({"relay": {"password_file": wrong},
                           "retry": {"initial": "1m", "max": "1h"}})
    q1, q2 = c.send(RCPTS[:1]), c.send(RCPTS[1:])
    [d] = c.wait_deliveries(q1, lambda dl: dl and dl[0]["state"] == "deferred", what="deferred")
    assert d["last_reply"].startswith("535 5.7.8"), d
    st = relay_status(c)
    assert st["paused"] and st["reason"].startswith("535 5.7.8"), st
    postern.wait_for(lambda: c.deliveries(q2) and c.deliveries(q2)[0]["state"] != "leased",
                     what="the second copy not in flight")
    assert c.deliveries(q2)[0]["state"] in ("ready", "deferred")
    warnings = pause_warnings(c)
    assert len(warnings) == 1 and "refused AUTH" in warnings[0] and "535" in warnings[0], warnings
    assert c.stats()["deliveries"]["bounced"] == 0 and relay.messages == []

    p = c.spoolctl("check", check=False)
    out = p.stdout.decode()
    assert p.returncode != 0, out
    [line] = [l for l in out.splitlines() if l.startswith("error: [relay] url")]
    assert line.startswith(f"error: [relay] url {c.ingest.sections['relay']['url']}: "), line
    assert "refused while authenticating: 535 5.7.8" in line, line
    assert "note: relay" in out and "paused until" in out, out


def test_check_verifies_the_relay_certificate(make_chain):
    """check does what a sender does: STARTTLS with verification (and only
    then AUTH); a certificate for another host is a problem."""
    c, relay = make_chain(cert="wrong")
    p = c.spoolctl("check", check=False)
    out = p.stdout.decode()
    assert p.returncode != 0, out
    [line] = [l for l in out.splitlines() if l.startswith("error: [relay] url")]
    assert "hostname mismatch" in line or "certificate verify failed" in line, line
    assert relay.mechanisms == []           # no password after a failed verification
