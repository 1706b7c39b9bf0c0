"""Transform under races and crashes (SPEC §1, §4.2, §8).

A token sends once even when two messages carry it at the same time, to
two workers; a worker killed with SIGKILL in the middle of a batch loses
nothing and does nothing twice; SIGTERM lets the job in hand finish.
Uses the Stack of test_transform.py.
"""
import os
import re
import signal
import threading
import time

import pytest

import postern
from postern import wait_for
from test_transform import (CONTENT, OWNER, dkim_results, keys, make_stack,  # noqa: F401
                            with_token)


def rcpts(n, tag="r"):
    return [f"{tag}{i}@example.org" for i in range(n)]


def send_together(stack, messages):
    """Each message on its own LMTP session, DATA ended at the same moment."""
    clients = []
    for raw in messages:
        c = stack.ingest.client()
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{OWNER}>").startswith("250")
        assert c.cmd("RCPT TO:<restricted@abakus.no>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        clients.append(c)
    payloads = [postern.data_payload(raw) for raw in messages]
    threads = [threading.Thread(target=c.send, args=(p,)) for c, p in zip(clients, payloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [postern.queue_id_of(c.line()) for c in clients]
    for c in clients:
        c.close()
    assert all(ids)
    return ids


def test_same_token_at_once(make_stack, keys):
    """Two workers plan the same token at once: one commit wins, the other
    plans again and is rejected TOKEN_USED.  Many recipients make the
    signing (the plan) long, so the two plans overlap."""
    s = make_stack(keys, transforms=2)
    outcomes, tokens = [], []
    for round_ in range(3):
        token = s.token(rcpts(60, f"x{round_}-"))
        tokens.append(token)
        ids = send_together(s, [with_token(f"race {round_} {i}", CONTENT["plain_7bit"], token)
                                for i in range(2)])
        states = {q: s.wait(q, "ready", "rejected") for q in ids}
        ready = [q for q, m in states.items() if m["state"] == "ready"]
        rejected = [q for q, m in states.items() if m["state"] == "rejected"]
        assert len(ready) == 1 and len(rejected) == 1, states
        assert states[rejected[0]]["reason"] == "TOKEN_USED"
        assert len(s.deliveries(ready[0])) == 60 and s.deliveries(rejected[0]) == []
        info = s.token_info(token)
        assert info["status"] == "used" and info["message"] == ready[0]
        outcomes.append(ready[0])
    # The race did happen: a worker found the token used at its commit and planned again.
    logs = "".join(t.log() for t in s.transforms)
    assert re.search(r"token [0-9a-f]{16} is now TOKEN_USED", logs), "the plans never overlapped"
    # Logs name tokens by their hash prefix only (docs/security.md S4).
    assert not [t for t in tokens if t in logs]


def test_stale_worker_commit_is_fenced(make_stack, keys):
    """A worker frozen past its lease (SIGSTOP) wakes up and commits: the
    spool refuses the commit (the lease was given to another worker, who
    did the job), so the message is transformed once and its token used once."""
    s = make_stack(keys, config={"retry": {"lease": "2s"}}, transforms=2)
    token = s.token(rcpts(400, "f"))
    qid = s.send(with_token("fenced", CONTENT["plain_7bit"], token))
    started = wait_for(lambda: [t for t in s.transforms if f"{qid}: transform job" in t.log()],
                       interval=0.002, what="job start")
    frozen = started[0]
    time.sleep(0.3)                 # into the plan (400 copies to sign), past the job's load
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        if f"{qid}: state=ready" in frozen.log():
            pytest.skip("the job was done before the freeze: nothing to fence")
        other = next(t for t in s.transforms if t is not frozen)
        # Frozen inside its commit (a slow machine: the plan was done within
        # the 0.3 s), the worker holds LMDB's one writer lock and every
        # writer waits for it, the dispatcher too: nothing can take the
        # lease, so there is no stale commit to refuse.
        try:
            wait_for(lambda: f"{qid}: transform leased to worker" in
                     s.dispatch.log().split(f"{qid}: transform leased to worker", 1)[1],
                     timeout=15, what="the expired lease leased again")
        except TimeoutError:
            pytest.skip("frozen inside its commit (the writer lock is held): nothing to fence")
        wait_for(lambda: f"{qid}: state=ready" in other.log(), timeout=60,
                 what="the other worker takes the expired lease and commits")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_for(lambda: "job dropped" in frozen.log(), timeout=60, what="the stale commit refused")
    # Refused at the commit, which found the other worker's result.
    assert re.search(rf"{qid}: lease \w+ is not ours any more \(state ready", frozen.log())
    assert f"{qid}: state=ready" not in frozen.log()
    assert s.show(qid)["state"] == "ready" and len(s.deliveries(qid)) == 400
    info = s.token_info(token)
    assert info["status"] == "used" and info["message"] == qid
    assert [n_["ref"] for n_ in s.notices()] == [qid]                 # one success notice


def test_kill9_mid_batch(make_stack, keys):
    """SIGKILL while a batch is being transformed, then restart: every message
    transformed once, every token used once, one success notice each."""
    s = make_stack(keys, config={"retry": {"lease": "3s"}})
    n = 16
    tokens = [s.token(rcpts(10, f"k{i}-")) for i in range(n)]
    with s.ingest.client() as c:
        c.lhlo()
        ids = [c.send_message(with_token(f"batch {i}", CONTENT["plain_7bit"], t), sender=OWNER)
               for i, t in enumerate(tokens)]
    worker = s.transforms[0]
    wait_for(lambda: "state=ready" in worker.log(), interval=0.005, what="first commit")
    worker.kill9()
    assert postern.json_stats(s.config)["messages"]["incoming"] > 0, "the batch was over"
    worker.start()

    # One listing for all: every message ready with its 10 deliveries, every token used by it.
    def all_ready():
        msgs = {m["id"]: m for m in s.messages()}
        return msgs if all(msgs[q]["state"] == "ready" for q in ids) else None
    msgs = wait_for(all_ready, timeout=90, interval=0.5, what="every message ready")
    assert all(msgs[q]["deliveries"] == 10 for q in ids)
    used_by = {t["message"] for t in postern.parse_json_lines(
        s.spoolctl("--json", "token", "list").stdout)}
    assert used_by == set(ids)
    assert sorted(n_["ref"] for n_ in s.notices()) == sorted(ids)      # exactly one each
    stats = postern.json_stats(s.config)
    assert stats["deliveries"]["ready"] + stats["deliveries"]["leased"] == n * 10 + n
    assert stats["tokens"]["used"] == n and stats["messages"]["incoming"] == 0
    assert worker.exit_codes[0] == "SIGKILL"


def test_sigterm_finishes_the_job_in_hand(make_stack, keys):
    s = make_stack(keys)
    token = s.token(rcpts(300, "t"))
    qid = s.send(with_token("long job", CONTENT["plain_7bit"], token))
    worker = s.transforms[0]
    wait_for(lambda: f"{qid}: transform job" in worker.log(), interval=0.002, what="job start")
    assert worker.stop() == 0
    log = worker.log()
    assert log.index(f"{qid}: state=ready") < log.index("stopping on signal")
    assert s.show(qid)["state"] == "ready" and len(s.deliveries(qid)) == 300
    assert dkim_results(s.outgoing(qid, "t299@example.org"), keys) == [True, True]
