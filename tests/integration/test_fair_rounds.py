"""Fair dispatcher rounds: a big send does not hold back what is queued
behind it.  With one relay connection, a 2,000-recipient send goes out
in 20 transactions, one job at a time; the owner's notice and a
one-recipient message queued after it each take their turn in the next
round instead of waiting for its last transaction (dispatch_deliver.c).
"""
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)

BIG = [f"m{i:04}@example.org" for i in range(2000)]
SMALL = "small@example.net"


def test_small_and_notice_go_before_the_big_send_ends(make_chain):  # noqa: F811
    c, relay = make_chain({"relay": {"max_connections": "1"},
                           "rewrite": {"personalize": "false"}})
    relay.delay = 0.25                  # each transaction: 20 of them take 5 s or more
    big = c.send(BIG)
    postern.wait_for(lambda: any(BIG[0] in r or BIG[-1] in r for _, r, _ in relay.attempts),
                     timeout=120, what="the big send under way")
    small = c.send([SMALL])
    c.wait_state(small, "done", timeout=120)
    c.wait_state(big, "done", timeout=180)

    big_times = [t for t, rcpts, _ in relay.attempts if set(rcpts) & set(BIG)]
    assert len(big_times) == 20, len(big_times)
    [small_at] = relay.attempt_times(SMALL)
    notices = relay.attempt_times(OWNER)
    assert len(notices) == 2, notices
    # Both went while the big one still had transactions to make.
    assert small_at < big_times[-2], (small_at, big_times)
    assert min(notices) < big_times[-2], (notices, big_times)
