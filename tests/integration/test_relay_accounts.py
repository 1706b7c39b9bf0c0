"""Several relay accounts ([relay NAME]) through the real chain: jobs go to
the accounts in turn, each with its own AUTH user, on connections never
shared between accounts.

The relay is one aiosmtpd with STARTTLS and AUTH that takes two users and
records, for every message it accepts, the user its session logged in as.
"""
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import PASSWORD, USER, pki  # noqa: F401  (fixture)

SECOND, SECOND_PASSWORD = "second-user", "an0ther pw"


class AccountsRelay(pc.Relay):
    """The chain's relay, taking USER and SECOND, noting who sent what."""

    def __init__(self):
        super().__init__()
        self.users = []             # the AUTH user of each message accepted
        self.rcpt_users = {}        # rcpt -> AUTH users of its copies
        self.mail_refused = {}      # AUTH user -> the reply to its MAIL FROM

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.mechanisms.append(mechanism)
        logins = {USER: PASSWORD, SECOND: SECOND_PASSWORD}
        ok = logins.get(auth_data.login.decode()) == auth_data.password.decode()
        session.postern_user = auth_data.login.decode() if ok else None
        return AuthResult(success=ok, handled=False)

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
            for r in envelope.rcpt_tos:
                self.rcpt_users.setdefault(r, []).append(user)
        return reply


@pytest.fixture
def accounts_relay(pki):  # noqa: F811
    relay = AccountsRelay()
    ctl = Controller(relay, hostname="127.0.0.1", port=postern.free_port(), tls_context=pki["good"],
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
