"""Several relay accounts ([relay NAME]) through the real chain: jobs go to
the accounts in turn, each with its own AUTH user, on connections never
shared between accounts, each account within its own daily limit, rate
and connection budget.

The relay is one aiosmtpd with STARTTLS and AUTH that takes two users and
records, for every message it accepts, the user its session logged in as
and when, and for each user the sessions open at once.
"""
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import PASSWORD, USER, pki  # noqa: F401  (fixture)
from test_api import make_api  # noqa: F401  (fixture)
from test_events import events_config, metric, receiver  # noqa: F401  (fixture)

SECOND, SECOND_PASSWORD = "second-user", "an0ther pw"


class AccountsRelay(pc.Relay):
    """The chain's relay, taking USER and SECOND, noting who sent what."""

    def __init__(self):
        super().__init__()
        self.users = []             # the AUTH user of each message accepted
        self.user_times = []        # (monotonic time, AUTH user) of each message accepted
        self.rcpt_users = {}        # rcpt -> AUTH users of its copies
        self.mail_refused = {}      # AUTH user -> the reply to its MAIL FROM
        self.sessions = {}          # AUTH user -> sessions logged in and open now
        self.most_sessions = {}     # AUTH user -> the most open at once

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.mechanisms.append(mechanism)
        logins = {USER: PASSWORD, SECOND: SECOND_PASSWORD}
        ok = logins.get(auth_data.login.decode()) == auth_data.password.decode()
        session.postern_user = auth_data.login.decode() if ok else None
        if ok:
            user = session.postern_user
            self.sessions[user] = self.sessions.get(user, 0) + 1
            self.most_sessions[user] = max(self.most_sessions.get(user, 0), self.sessions[user])
        return AuthResult(success=ok, handled=False)

    def session_closed(self, session):
        user = getattr(session, "postern_user", None)
        if user:
            self.sessions[user] -= 1

    async def handle_MAIL(self, server, session, envelope, address, options):
        if session.postern_user in self.mail_refused:
            self.attempts.append((0, [], session.postern_user))
            return self.mail_refused[session.postern_user]
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            user = session.postern_user
            self.users.append(user)
            self.user_times.append((time.monotonic(), user))
            for r in envelope.rcpt_tos:
                self.rcpt_users.setdefault(r, []).append(user)
        return reply


class SessionSMTP(SMTP):
    """aiosmtpd's server, telling the relay when a session's connection ends."""

    def connection_lost(self, exc):
        if self.session is not None:
            self.event_handler.session_closed(self.session)
        super().connection_lost(exc)


class AccountsController(Controller):
    def factory(self):
        return SessionSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def accounts_relay(pki):  # noqa: F811
    relay = AccountsRelay()
    ctl = AccountsController(relay, hostname="127.0.0.1", port=postern.free_port(), tls_context=pki["good"],
                     require_starttls=True, auth_required=True,
                     authenticator=relay.authenticate, server_hostname="mx.test")
    ctl.start()
    yield relay, ctl.port
    ctl.stop()


def two_accounts(tmp_path, pki, port):  # noqa: F811
    """[relay] as USER and [relay second] as SECOND, both on the test relay."""
    cfg = pc.relay_config(tmp_path, pki, port)
    pw = Path(tmp_path) / "second-password"
    pw.write_text(SECOND_PASSWORD + "\n")
    pw.chmod(0o600)
    cfg["relay second"] = {"url": f"smtp://localhost:{port}", "ca_file": pki["ca"],
                           "user": SECOND, "password_file": pw}
    cfg["relay"]["max_rcpt_per_txn"] = "1"
    return cfg


def test_jobs_go_to_the_accounts_in_turn(make_chain, accounts_relay, pki, tmp_path):  # noqa: F811
    """20 copies (one a job) and the owner's notice: the two accounts carry
    10 and 11, each copy once, each under its own AUTH user."""
    relay, port = accounts_relay
    c, _ = make_chain(two_accounts(tmp_path, pki, port), relay=False)
    rcpts = [f"r{i:02}@example.org" for i in range(20)]
    qid = c.send(rcpts)
    dl = c.wait_state(qid, "done")
    assert {d["state"] for d in dl} == {"sent"}
    postern.wait_for(lambda: len(relay.users) == 21, timeout=60, what="owner's notice")
    assert sorted(relay.users.count(u) for u in (USER, SECOND)) == [10, 11], relay.users
    assert all(len(relay.rcpt_users[r]) == 1 for r in rcpts), relay.rcpt_users
    assert "for relay account second" in c.dispatch.log()
    assert "for relay account default" in c.dispatch.log()


def test_a_worker_without_the_account_defers(make_chain, accounts_relay, pki, tmp_path):  # noqa: F811
    """A sender whose config lacks [relay second] defers that account's
    jobs (never delivers them as another account); once a worker that has
    it joins, they go."""
    relay, port = accounts_relay
    c, _ = make_chain(two_accounts(tmp_path, pki, port), relay=False, senders=0)
    sections = postern.merge(c.ingest.sections, {})
    del sections["relay second"]
    path = Path(tmp_path) / "lone.ini"
    postern.write_config(path, sections)
    lone = postern.Daemon([pc.sender_binary(), "-c", str(path), "-f"],
                          Path(tmp_path) / "lone.log", r"daemon started")
    c.senders.append(lone)
    lone.start()
    qid = c.send(["x1@example.org", "x2@example.org"])
    dl = c.wait_deliveries(qid, lambda dl: any(d["state"] == "deferred" for d in dl),
                           what="a deferred delivery")
    [d] = [d for d in dl if d["state"] == "deferred"]
    assert 'no relay account "second"' in d["last_reply"], d
    assert set(relay.users) <= {USER}, relay.users
    assert 'no relay account "second"' in lone.log()
    c.add_sender()
    dl = c.wait_state(qid, "done")
    assert {d["state"] for d in dl} == {"sent"}


def test_a_421_pauses_only_its_account(make_chain, accounts_relay, pki, tmp_path):  # noqa: F811
    """SECOND's MAIL gets 421: SECOND pauses (its own record, its own log
    line, its own line in relay status), the default account carries
    every copy meanwhile (the one refused goes again at once, through the
    default account, not after the pause); resume --account clears SECOND
    alone."""
    relay, port = accounts_relay
    relay.mail_refused[SECOND] = "421 4.7.0 Try again later, closing connection."
    c, _ = make_chain(postern.merge(two_accounts(tmp_path, pki, port),
                                    {"retry": {"initial": "30s", "max": "60s"}}), relay=False)
    rcpts = [f"p{i:02}@example.org" for i in range(8)]
    qid = c.send(rcpts)
    dl = c.wait_state(qid, "done", timeout=25)
    assert {d["state"] for d in dl} == {"sent"}
    assert set(relay.users) == {USER}, relay.users
    assert relay.attempts and any(a[2] == SECOND for a in relay.attempts)
    log = c.dispatch.log()
    assert "account second paused until" in log and "421 4.7.0" in log, log
    assert "account default paused" not in log
    status = c.spoolctl("relay", "status").stdout.decode()
    [dflt, second] = status.splitlines()
    assert "account default: not paused" in dflt, status
    assert "account second: paused until" in second and "421 4.7.0" in second, status
    js = postern.parse_json_lines(c.spoolctl("--json", "relay", "status",
                                             "--account", "second").stdout)[0]
    assert js["relay"]["paused"] and [a["account"] for a in js["accounts"]] == ["second"], js
    assert c.spoolctl("relay", "status", "--account", "nosuch", check=False).returncode == 2
    # stats and metrics: the default unlabelled, as before; SECOND labelled.
    st = c.stats()
    assert not st["relay"]["paused"] and st["relay_accounts"]["second"]["paused"], st
    text = c.spoolctl("stats").stdout.decode()
    assert "account second: paused until" in text and "account default: not paused" in text
    metrics = c.spoolctl("metrics").stdout.decode().splitlines()
    assert "postern_relay_paused 0" in metrics, metrics
    assert 'postern_relay_paused{account="second"} 1' in metrics, metrics
    assert 'postern_relay_pauses{account="second"} 1' in metrics, metrics
    out = c.spoolctl("relay", "resume", "--account", "default").stdout.decode()
    assert "account default: not paused" in out, out
    out = c.spoolctl("relay", "resume", "--account", "second").stdout.decode()
    assert "account second: pause cleared" in out, out
    status = c.spoolctl("relay", "status").stdout.decode()
    assert "paused until" not in status, status
    metrics = c.spoolctl("metrics").stdout.decode().splitlines()
    assert 'postern_relay_paused{account="second"} 0' in metrics, metrics
    postern.wait_for(lambda: "account second resumed" in c.dispatch.log(), timeout=10,
                     what="the dispatcher's resume line")


WINDOW = 12     # daily_window: buckets of 0.5 s, so the test sees the window move


def test_each_account_has_its_own_daily_limit(make_chain, make_api, accounts_relay, pki,  # noqa: F811
                                              tmp_path, receiver):  # noqa: F811
    """daily_limit 10, [relay second] taking [relay]'s as its own: 30 copies
    and the owner's notice go 10 through each user, the other 11 wait,
    visibly per account (log, stats, metrics, /healthz, the event naming
    the account); they go when the window moves, never more than 10 a
    window for either user."""
    relay, port = accounts_relay
    cfg = postern.merge(two_accounts(tmp_path, pki, port), events_config(tmp_path, receiver.url))
    cfg["relay"].update(daily_limit="10", daily_window=f"{WINDOW}s")
    c, _ = make_chain(cfg, relay=False)
    api = make_api(sections=c.ingest.sections)
    qid = c.send([f"q{i:02}@example.org" for i in range(30)])

    postern.wait_for(lambda: len(relay.users) >= 20, timeout=60, what="20 copies")
    postern.wait_for(lambda: c.stats()["quota"]["waiting"] and
                     c.stats()["quota_accounts"]["second"]["waiting"], timeout=10,
                     what="both accounts waiting")
    assert sorted(relay.users.count(u) for u in (USER, SECOND)) == [10, 10], relay.users
    st = c.stats()
    assert st["quota"]["used"] == 10 and st["quota"]["limit"] == 10, st
    assert st["quota_accounts"]["second"]["used"] == 10, st
    assert st["deliveries"]["ready"] == 11, st
    text = c.spoolctl("stats").stdout.decode()
    assert "account second: 10 of 10 recipients" in text and "waiting until" in text, text
    metrics = c.spoolctl("metrics").stdout.decode()
    assert metric(metrics, "postern_relay_quota_waiting") == 1, metrics
    assert metric(metrics, 'postern_relay_quota_used{account="second"}') == 10, metrics
    assert metric(metrics, 'postern_relay_quota_waiting{account="second"}') == 1, metrics
    # Logged after the commit that the stats above read: wait for the lines.
    c.dispatch.wait_log("account second: daily limit of 10 recipients reached")
    c.dispatch.wait_log("account default: daily limit of 10 recipients reached")
    status, body, _ = api.call("GET", "/healthz", key=None)
    assert status == 200 and [a["account"] for a in body["accounts"]] == ["default", "second"]
    assert all(a["quota"]["waiting"] and a["quota"]["used"] == 10 for a in body["accounts"]), body
    receiver.wait(lambda evs: any("relay account second" in (e.get("reason") or "")
                                  for e in evs if e["type"] == "relay.quota_wait"),
                  what="relay.quota_wait event of account second")
    assert len(relay.users) == 20

    # The window moves: the rest goes, within each user's own limit.
    dl = c.wait_state(qid, "done", timeout=3 * WINDOW + 30)
    assert {d["state"] for d in dl} == {"sent"}
    postern.wait_for(lambda: len(relay.users) == 31, timeout=3 * WINDOW, what="owner's notice")
    for user in (USER, SECOND):
        times = [t for t, u in relay.user_times if u == user]
        assert all(times[k + 10] - times[k] >= WINDOW - 1 for k in range(len(times) - 10)), times
    assert "account second: daily limit: leasing again" in c.dispatch.log()


def test_max_connections_of_one_account(make_chain, accounts_relay, pki, tmp_path):  # noqa: F811
    """[relay second] max_connections 1 beside [relay]'s 4, with a slow
    relay: SECOND never has two sessions open at once, while the default
    account has several; every copy goes."""
    relay, port = accounts_relay
    relay.delay = 0.3
    cfg = two_accounts(tmp_path, pki, port)
    cfg["relay"]["max_connections"] = "4"
    cfg["relay second"]["max_connections"] = "1"
    c, _ = make_chain(cfg, relay=False)
    qid = c.send([f"c{i:02}@example.org" for i in range(24)])
    dl = c.wait_state(qid, "done", timeout=90)
    assert {d["state"] for d in dl} == {"sent"}
    assert relay.users.count(SECOND) >= 2, relay.users
    assert relay.most_sessions[SECOND] == 1, relay.most_sessions
    assert relay.most_sessions[USER] > 1, relay.most_sessions


def test_rate_of_one_account(make_chain, accounts_relay, pki, tmp_path):  # noqa: F811
    """[relay second] rate 2 (messages a second), [relay] none, on a slow
    relay: SECOND's copies are spread at 2 a second at most (one second's
    burst aside) while the default account carries more."""
    relay, port = accounts_relay
    relay.delay = 0.2
    cfg = two_accounts(tmp_path, pki, port)
    cfg["relay"]["max_connections"] = "2"
    cfg["relay second"]["rate"] = "2"
    c, _ = make_chain(cfg, relay=False)
    qid = c.send([f"t{i:02}@example.org" for i in range(40)])
    dl = c.wait_state(qid, "done", timeout=60)
    assert {d["state"] for d in dl} == {"sent"}
    # 7 copies take 2.5 s at 2 a second after a burst of 2; the relay sees
    # them up to a connection's setup (TLS, AUTH) sooner or later.
    times = sorted(t for t, u in relay.user_times if u == SECOND)
    assert len(times) >= 7, relay.users
    assert all(times[k + 6] - times[k] >= 1.5 for k in range(len(times) - 6)), times
    assert relay.users.count(USER) > len(times), relay.users
