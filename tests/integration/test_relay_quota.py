"""[relay] daily_limit through the real chain: what goes past the limit
waits for the rolling window (never a quota error from the relay), and the
wait shows in spoolctl stats, the metrics, an outcome event and a log line.

The window is `[relay] daily_window`, 12 s here instead of 24 h: buckets of
0.5 s, so the test sees the window move.
"""
import postern
from chain import make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)
from test_api import make_api  # noqa: F401  (fixture)
from test_events import events_config, metric, receiver  # noqa: F401  (fixture)

WINDOW = 12


def test_daily_limit_waits_for_the_window(make_chain, make_api, tmp_path, receiver):  # noqa: F811
    """A limit of 20 with 50 personalised copies and the owner's notice:
    20 go, 31 wait, visibly; 20 more once the window has moved past the
    first ones, never sooner; then the last 11."""
    c, relay = make_chain(postern.merge(events_config(tmp_path, receiver.url), {
        "relay": {"daily_limit": "20", "daily_window": f"{WINDOW}s"}}))
    make_api(sections=c.ingest.sections)
    rcpts = [f"r{i:02}@example.org" for i in range(50)]
    qid = c.send(rcpts)

    postern.wait_for(lambda: len(relay.attempts) >= 20, timeout=60, what="20 copies")
    postern.wait_for(lambda: c.stats()["quota"]["waiting"], timeout=10, what="quota waiting")
    # Seen everywhere while the rest waits: stats, metrics, the log, an event.
    st = c.stats()
    assert st["quota"]["used"] == 20 and st["quota"]["limit"] == 20, st
    # 30 copies and the owner's notice: notices go through the relay too.
    assert st["deliveries"]["ready"] == 31, st
    text = c.spoolctl("stats").stdout.decode()
    assert "20 of 20 recipients" in text and "waiting until" in text, text
    metrics = c.spoolctl("metrics").stdout.decode()
    assert metric(metrics, "postern_relay_quota_waiting") == 1, metrics
    assert metric(metrics, "postern_relay_quota_used") == 20, metrics
    c.dispatch.wait_log("daily limit of 20 recipients reached")     # logged after that commit
    receiver.wait(lambda evs: any(e["type"] == "relay.quota_wait" for e in evs),
                  what="relay.quota_wait event")
    [ev] = [e for e in receiver.delivered() if e["type"] == "relay.quota_wait"][:1]
    assert ev["until"] >= st["quota"]["waiting_until"] - 1 and "20" in ev["reason"], ev
    assert len(relay.attempts) == 20, relay.attempts
    assert c.show(qid)["state"] in ("ready", "deferred")

    # The window moves: the rest goes, 20 at a time, none before its time.
    dl = c.wait_state(qid, "done", timeout=3 * WINDOW + 30)
    assert {d["state"] for d in dl} == {"sent"}
    times = sorted(t for t, _, _ in relay.attempts)
    assert len(times) == 51
    assert times[20] - times[0] >= WINDOW - 1, times
    assert times[40] - times[20] >= WINDOW - 1, times
    assert "daily limit: leasing again" in c.dispatch.log()
    assert not c.stats()["quota"]["waiting"]
