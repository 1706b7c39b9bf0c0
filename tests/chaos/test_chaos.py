"""kill -9 of any Postern process at random moments under load (SPEC §8).

The whole relay runs under `postern run` (ingest, dispatch, 2 transforms,
2 sender workers); the relay it delivers to is an aiosmtpd sink (STARTTLS +
AUTH, chain.py's) that records every copy it accepts, by recipient and the
message's Subject (our tag) and Message-ID.  N messages, each with its own
token and 3 recipients, go in over LMTP from a few client sessions at a
steady pace; the client behaves like Postfix: 421/452/connection errors
are retried (the same bytes again), and only a 250 counts as accepted.
Meanwhile a random child of `postern run` is killed with SIGKILL at random
moments; the supervisor restarts it.

At the end, once the spool is quiet (bounded wait):
  * every message that got a 250 reached every one of its token's
    recipients: zero lost;
  * duplicates (copies beyond the first per recipient and message) are
    counted, and must be few: at most what the kills of senders and of the
    dispatcher can leave in flight (leased deliveries whose result was not
    recorded): slots x max_rcpt_per_txn per sender kill, that times the
    number of senders per dispatcher kill.  SPEC §8 allows those;
  * no token sent twice (one outgoing Message-ID per message at the relay,
    at most one message per token with deliveries in the spool, every
    other one `rejected` TOKEN_USED);
  * `spoolctl stats` agrees with `spoolctl list`;
  * every daemon is running again, `postern run` stops cleanly, and its
    log holds no sanitizer report.

Seeded: the seed is printed; POSTERN_CHAOS_SEED=N repeats its choices (the
timing of a loaded machine is not repeatable).  POSTERN_CHAOS_LONG=1 runs
the long version (1000 messages, 100 kills); POSTERN_CHAOS_MESSAGES and
POSTERN_CHAOS_KILLS, POSTERN_CHAOS_GAP (mean seconds between kills) and
POSTERN_CHAOS_MIN_UPTIME override the numbers; POSTERN_CHAOS_KEEP=1 keeps the
work directory.  The long version takes about 20 minutes: run it with
`meson test -C build-san --setup=sanitize chaos` (timeout 600 s x 3) and
POSTERN_CHAOS_LONG=1 in the environment.
"""
import asyncio
import email.parser
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import chaoslib
from chaoslib import KINDS, PosternRun, ctl

import chain  # noqa: E402  (tests/integration, on sys.path through chaoslib)
import postern  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from smtp_client_test import pki  # noqa: E402,F401  (fixture)

SEED = int(os.environ.get("POSTERN_CHAOS_SEED") or time.time_ns() % 1_000_000)
LONG = os.environ.get("POSTERN_CHAOS_LONG", "") not in ("", "0")
MESSAGES = int(os.environ.get("POSTERN_CHAOS_MESSAGES") or (1000 if LONG else 60))
KILLS = int(os.environ.get("POSTERN_CHAOS_KILLS") or (100 if LONG else 12))
# A victim has run at least MIN_UPTIME seconds.  `postern run` doubles a
# child's restart delay (1 s ... 60 s) when it dies within 60 s of its start:
# the long version lets each victim run 61 s first, or after a few rounds
# every daemon would sit out a minute per kill and the test would measure
# the backoff, not the relay.  The short one accepts delays up to ~16 s.
MEAN_GAP = float(os.environ.get("POSTERN_CHAOS_GAP") or (10.0 if LONG else 4.5))
MIN_UPTIME = float(os.environ.get("POSTERN_CHAOS_MIN_UPTIME") or (61.0 if LONG else 2.0))
SESSIONS = 3                            # concurrent LMTP client sessions
TRANSFORMS, SENDERS, SLOTS, MAX_RCPT = 2, 2, 2, 3
LEASE = 10                              # [retry] lease, seconds
QUIET_TIMEOUT = 900 if LONG else 240    # the drain after the last kill
# A duplicate's first copy must lie within this window of a kill: before a
# sender kill by at most one slow transaction, after a dispatcher kill by
# at most its restart and the worker's reconnection.
DUP_BEFORE_KILL = 5.0
DUP_AFTER_DISPATCH_KILL = 15.0
OWNER = chain.OWNER


class SinkRelay(chain.Relay):
    """chain.py's relay, recording when each copy was accepted.

    The copy is recorded (as a relay that queued it) before the 250 goes
    out, and the 250 waits `after` seconds: a kill in that window leaves
    a delivered copy whose result Postern never saw (a true duplicate).
    """

    def __init__(self, after=0.3):
        super().__init__()
        self.after = after
        self.accepted = []          # (monotonic time, rcpts, bytes)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.accepted.append((time.monotonic(), list(envelope.rcpt_tos),
                                  envelope.original_content))
            await asyncio.sleep(self.after)
        return reply


class Load:
    """SESSIONS client threads sending the messages at a steady pace."""

    def __init__(self, addr, messages, duration, seed):
        self.addr = addr
        self.messages = messages    # [(tag, bytes)]
        self.interval = duration / max(len(messages), 1)
        self.seed = seed
        self.lock = threading.Lock()
        self.next = 0
        self.acked = defaultdict(list)      # tag -> queue ids with a 250
        self.attempts = Counter()           # tag -> transactions tried
        self.unknown = Counter()            # tag -> data sent, no final reply (cut)
        self.replies = Counter()            # "421", "452", "conn", ... retried
        self.failures = []                  # permanent refusals, give-ups
        self.t0 = None
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(SESSIONS)]

    def start(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        return not any(t.is_alive() for t in self.threads)

    def take(self):
        with self.lock:
            if self.next >= len(self.messages):
                return None
            i = self.next
            self.next += 1
        return i

    def run(self, idx):
        rnd = random.Random(self.seed * 1000 + idx)
        conn = None
        while (i := self.take()) is not None:
            wait = self.t0 + i * self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            tag, data = self.messages[i]
            conn = self.send(conn, tag, data, rnd)
        if conn:
            try:
                conn.cmd("QUIT")
            except (OSError, postern.ProtocolError):
                pass
            conn.close()

    def send(self, conn, tag, data, rnd):
        """One message until a 250 (retrying as an MTA would); returns the connection."""
        give_up = time.monotonic() + QUIET_TIMEOUT
        while time.monotonic() < give_up:
            stage = "connect"
            try:
                if conn is None:
                    conn = postern.Client(self.addr, timeout=60)
                    code = int(conn.greeting[1][-1][:3])
                    if code != 220:
                        raise postern.ProtocolError(f"{code} greeting")
                    conn.lhlo("chaos.test")
                self.attempts[tag] += 1
                stage = "MAIL"
                r = conn.cmd(f"MAIL FROM:<{OWNER}>")
                if r.startswith("250"):
                    stage = "RCPT"
                    r = conn.cmd(f"RCPT TO:<{postern.RECIPIENT}>")
                if r.startswith("250"):
                    stage = "DATA"
                    r = conn.cmd("DATA")
                if r.startswith("354"):
                    stage = "end of data"
                    conn.send(postern.data_payload(data))
                    try:
                        r = conn.line()
                    except (OSError, postern.ProtocolError):
                        with self.lock:
                            self.unknown[tag] += 1
                        raise
                    qid = postern.queue_id_of(r)
                    if qid:
                        with self.lock:
                            self.acked[tag].append(qid)
                        return conn
                if r[:1] == "5":
                    with self.lock:
                        self.failures.append(f"{tag}: {stage}: {r}")
                    try:
                        conn.cmd("RSET")
                    except (OSError, postern.ProtocolError):
                        conn.close()
                        conn = None
                    return conn
                with self.lock:
                    self.replies[r[:3]] += 1
                conn.close()            # 4xx: try again on a new connection
                conn = None
            except (OSError, postern.ProtocolError, ValueError, IndexError):
                with self.lock:
                    self.replies[f"conn@{stage}"] += 1
                if conn:
                    conn.close()
                conn = None
            time.sleep(rnd.uniform(0.3, 1.0))
        with self.lock:
            self.failures.append(f"{tag}: gave up after {QUIET_TIMEOUT}s of retries")
        return conn


class Killer:
    """Kill a random child of `postern run` with SIGKILL, KILLS times."""

    def __init__(self, run, kills, mean_gap, seed):
        self.run, self.kills, self.mean_gap = run, kills, mean_gap
        self.rnd = random.Random(seed)
        self.stop = threading.Event()
        self.done = []              # (time, kind, name, pid)
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while len(self.done) < self.kills and not self.stop.is_set():
            if self.stop.wait(self.rnd.uniform(0.2 * self.mean_gap, 1.8 * self.mean_gap)):
                return
            kinds = list(KINDS)
            self.rnd.shuffle(kinds)
            # Kinds in random order; the first with a live, settled process.
            for _ in range(int(30 / 0.2)):
                for kind in kinds:
                    pids = self.run.victims(kind, MIN_UPTIME)
                    if pids:
                        pid = self.rnd.choice(pids)
                        try:
                            name = self.run.kill9(pid)
                        except ProcessLookupError:
                            continue
                        self.done.append((time.monotonic(), kind, name, pid))
                        break
                else:
                    if self.stop.wait(0.2):
                        return
                    continue
                break


def header(data, name):
    h = email.parser.BytesHeaderParser().parsebytes(data)
    v = h.get(name)
    return str(v).strip() if v is not None else None


def config(workdir, certs, relay_port, port):
    dkim_key = workdir / "dkim-ed25519.pem"
    chain.Chain._dkim_key(dkim_key)
    relay = chain.relay_config(workdir, certs, relay_port)
    relay["relay"].update({"timeout": "10s", "max_rcpt_per_txn": MAX_RCPT,
                           "max_connections": 10})
    return postern.merge({
        "spool": {"dir": workdir / "spool"},
        "ingest": {"listen": f"127.0.0.1:{port}", "recipients": postern.RECIPIENT,
                   "hostname": "chaos.test", "timeout": "2m"},
        "dkim": {"domain": chain.DOMAIN, "keys": f"{chain.SELECTOR}:{dkim_key}"},
        "rewrite": {"from": "Abakus <no-reply@abakus.no>"},
        "bounce": {"envelope_from": chain.BOUNCES},
        "retry": {"initial": "1s", "max": "4s", "lease": f"{LEASE}s", "lifetime": "1d"},
        "workers": {"count": SENDERS, "transforms": TRANSFORMS, "slots": SLOTS},
    }, relay)


def wait_quiet(cfg, timeout):
    """Until no message or delivery is waiting for anything; returns stats."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = json.loads(ctl(cfg, "--json", "stats"))
        m, d = last["messages"], last["deliveries"]
        if not any(m.get(s, 0) for s in ("incoming", "ready", "deferred", "hold")) and \
                not any(d.get(s, 0) for s in ("ready", "leased", "deferred")):
            return last
        time.sleep(1.0)
    raise TimeoutError(f"spool not quiet after {timeout}s: {json.dumps(last)}")


def test_kill9_any_process_under_load(pki):  # noqa: F811  (the fixture)
    print(f"seed {SEED} (POSTERN_CHAOS_SEED={SEED} to repeat); "
          f"{MESSAGES} messages, {KILLS} kills{' (long)' if LONG else ''}")
    rnd = random.Random(SEED)
    workdir = Path(tempfile.mkdtemp(prefix="pstchaos", dir="/tmp"))   # short ipc paths
    relay = SinkRelay()
    ctl_relay = Controller(relay, hostname="127.0.0.1", port=postern.free_port(),
                           tls_context=pki["good"], require_starttls=True, auth_required=True,
                           authenticator=relay.authenticate, server_hostname="mx.test")
    ctl_relay.start()
    port = postern.free_port()
    run = PosternRun(workdir, config(workdir, pki, ctl_relay.port, port))
    ok = False
    t_begin = time.monotonic()
    chaoslib.raise_on_sigterm()
    try:
        run.start()
        t_up = time.monotonic()

        # N tokens, 3 recipients each, registered in one call.
        rcpts = {}
        specs = []
        for i in range(MESSAGES):
            tag = f"chaos-{SEED}-{i:05d}"
            rcpts[tag] = [f"m{i}a@example.org", f"m{i}b@example.net", f"m{i}c@example.com"]
            specs.append({"from": OWNER, "recipients": rcpts[tag]})
        imp = workdir / "tokens.json"
        imp.write_text(json.dumps(specs))
        tokens = ctl(run.config_path, "token", "import", imp).decode().split()
        assert len(tokens) == MESSAGES, tokens[:3]
        token_of = dict(zip(rcpts, tokens))
        messages = [(tag, chain.lego_message(token_of[tag], subject=tag, sender=OWNER))
                    for tag in rcpts]

        duration = KILLS * MEAN_GAP
        load = Load(("127.0.0.1", port), messages, duration, SEED)
        killer = Killer(run, KILLS, MEAN_GAP, rnd.randrange(1 << 30))
        t_load = time.monotonic()
        load.start()
        killer.thread.start()
        killer.thread.join(duration * 3 + 120)
        killer.stop.set()
        t_kills_done = time.monotonic()
        assert load.join(QUIET_TIMEOUT + 60), "the LMTP clients did not finish"
        t_sent = time.monotonic()
        run.wait_all_up(120)            # every daemon came back (backoff is at most 60 s)
        stats = wait_quiet(run.config_path, QUIET_TIMEOUT)
        t_quiet = time.monotonic()
        assert run.all_up(), "a daemon died after the kills stopped"

        # ---- what the relay got ---------------------------------------------
        copies = defaultdict(list)      # (rcpt, tag) -> [(time, message-id)]
        msgids = defaultdict(set)       # tag -> outgoing Message-IDs
        others = 0                      # notices to the owner
        for t, to, data in list(relay.accepted):
            tag = header(data, "Subject")
            if tag not in rcpts:
                others += 1
                continue
            mid = header(data, "Message-ID")
            msgids[tag].add(mid)
            for r in to:
                copies[(r, tag)].append((t, mid))
        acked = {tag for tag in rcpts if load.acked[tag]}
        lost = [(tag, r) for tag in sorted(acked) for r in rcpts[tag] if not copies[(r, tag)]]
        strays = [k for k in copies if k[0] not in rcpts[k[1]]]
        dups = {k: len(v) - 1 for k, v in copies.items() if len(v) > 1}
        n_dups = sum(dups.values())
        twice = {tag: sorted(ids) for tag, ids in msgids.items() if len(ids) > 1}
        delivered_unacked = sorted({tag for (_, tag) in copies} - acked)

        # ---- what the spool says --------------------------------------------
        listed = postern.parse_json_lines(ctl(run.config_path, "--json", "list"))
        stats = json.loads(ctl(run.config_path, "--json", "stats"))
        mine = [m for m in listed if m["recipients"] == [postern.RECIPIENT]]

        def tag_of(m):
            return m["id"], header(ctl(run.config_path, "show", m["id"], "--raw"), "Subject")
        with ThreadPoolExecutor(max_workers=4) as pool:
            spool_tag = dict(pool.map(tag_of, mine))
        by_tag = defaultdict(list)
        for m in mine:
            by_tag[spool_tag[m["id"]]].append(m)
        problems = []
        for tag in sorted(acked):
            ids = {m["id"] for m in by_tag[tag]}
            missing = [q for q in load.acked[tag] if q not in ids]
            if missing:
                problems.append(f"{tag}: acknowledged {missing} not in the spool")
        for tag, ms in sorted(by_tag.items()):
            sending = [m for m in ms if m["deliveries"]]
            if len(sending) > 1:
                problems.append(f"{tag}: token used by {[m['id'] for m in sending]}")
            for m in sending:
                if (m["state"], m["sent"], m["deliveries"]) != ("done", 3, 3):
                    problems.append(f"{tag}: {m}")
            for m in ms:
                if not m["deliveries"] and (m["state"], m["reason"]) != ("rejected", "TOKEN_USED"):
                    problems.append(f"{tag}: no deliveries: {m}")
        tok = {t["id"]: t for t in postern.parse_json_lines(ctl(run.config_path, "--json",
                                                                "token", "list"))}
        for tag, token in token_of.items():
            t = tok.get(hashlib.sha256(token.encode()).hexdigest()[:16])
            sending = [m["id"] for m in by_tag.get(tag, []) if m["deliveries"]]
            if t is None:
                problems.append(f"{tag}: token not listed")
            elif sending and (t["status"], t.get("message")) != ("used", sending[0]):
                problems.append(f"{tag}: token {t} but sent by {sending}")
            elif not sending and t["status"] != "active":
                problems.append(f"{tag}: token {t['status']} but no message sent with it")

        # spoolctl stats against spoolctl list
        states = Counter(m["state"] for m in listed)
        for s, n in stats["messages"].items():
            if n != states.get(s, 0):
                problems.append(f"stats messages.{s} = {n}, list has {states.get(s, 0)}")
        for s in set(states) - set(stats["messages"]):
            problems.append(f"list has {states[s]} {s} messages, stats has no such key")
        dsum = {k: sum(m[k] for m in listed) for k in ("sent", "deferred", "bounced", "deliveries")}
        dst = stats["deliveries"]
        for k in ("sent", "deferred", "bounced"):
            if dst.get(k, 0) != dsum[k]:
                problems.append(f"stats deliveries.{k} = {dst.get(k)}, list sums {dsum[k]}")
        if sum(dst.values()) != dsum["deliveries"]:
            problems.append(f"stats deliveries total {sum(dst.values())}, list sums "
                            f"{dsum['deliveries']}")
        used = sum(1 for t in tok.values() if t["status"] == "used")
        if stats["tokens"].get("used") != used:
            problems.append(f"stats tokens.used = {stats['tokens'].get('used')}, list has {used}")

        # ---- the bound on duplicates ------------------------------------------
        by_kind = Counter(k for _, k, _, _ in killer.done)
        inflight_bound = (by_kind["sender"] * SLOTS * MAX_RCPT
                          + by_kind["dispatch"] * SENDERS * SLOTS * MAX_RCPT)
        simple_bound = len(killer.done) * MAX_RCPT
        kill_times = [(t, k) for t, k, _, _ in killer.done if k in ("sender", "dispatch")]
        seen = run.kills_seen()

        print(f"---- summary (seed {SEED}) ----")
        print(f"messages: {MESSAGES}, acknowledged {len(acked)}, "
              f"resent {sum(1 for t in rcpts if load.attempts[t] > 1)}, "
              f"cut after DATA {sum(load.unknown.values())}, delivered without a 250 "
              f"{len(delivered_unacked)}, refusals/give-ups {len(load.failures)}")
        print(f"client retries: {dict(load.replies)}")
        print(f"kills: {len(killer.done)} {dict(by_kind)} (supervisor saw {len(seen)}), "
              f"max restart backoff {run.max_backoff()}s")
        for t, kind, name, pid in killer.done:
            print(f"  {t - t_load:7.1f}s  {name} (pid {pid})")
        print(f"relay: {len(relay.accepted)} copies accepted ({others} notices), "
              f"{sum(1 for k in copies)} (recipient, message) pairs, lost {len(lost)}, "
              f"duplicates {n_dups} on {len(dups)} pairs; bound in flight {inflight_bound}, "
              f"kills x max_rcpt_per_txn {simple_bound}")
        for (r, tag), n in sorted(dups.items()):
            first = copies[(r, tag)][0][0]
            near = min(kill_times, key=lambda k: abs(k[0] - first), default=None)
            print(f"  dup x{n} {tag} to {r}: first copy at {first - t_load:.1f}s, nearest "
                  f"sender/dispatch kill {'%+.1fs (%s)' % (near[0] - first, near[1]) if near else 'none'}")
        print(f"spool: {len(listed)} messages {dict(states)}, deliveries {dst}, "
              f"tokens {stats['tokens']}")
        print(f"time: startup {t_up - t_begin:.1f}s, load+kills {t_kills_done - t_load:.1f}s, "
              f"last 250 {t_sent - t_load:.1f}s, quiet {t_quiet - t_load:.1f}s, "
              f"total {time.monotonic() - t_begin:.1f}s")

        assert len(killer.done) == KILLS, f"only {len(killer.done)} kills"
        assert sorted(seen) == sorted((n, p) for _, _, n, p in killer.done), \
            "the supervisor's log does not show every kill"
        assert load.failures == [], load.failures[:10]
        assert len(acked) == MESSAGES
        assert lost == [], f"{len(lost)} acknowledged (message, recipient) lost: {lost[:10]}"
        assert strays == [], strays[:10]
        assert twice == {}, f"a token sent twice (two outgoing Message-IDs): {twice}"
        assert problems == [], "\n".join(problems[:30])
        assert n_dups == 0 or kill_times, "duplicates without a sender/dispatch kill"
        # Each duplicate must come from a transaction in flight at a kill:
        # its first copy reached the relay shortly before a sender was
        # killed (the result died with it), or while a killed dispatcher
        # was away (the worker's result found no lease holder).
        stray_dups = [(r, tag, copies[(r, tag)][0][0] - t_load) for (r, tag) in dups
                      if not any(-DUP_BEFORE_KILL <= copies[(r, tag)][0][0] - t
                                 <= (DUP_AFTER_DISPATCH_KILL if k == "dispatch" else 1.0)
                                 for t, k in kill_times)]
        assert stray_dups == [], f"duplicates not in flight at any kill: {stray_dups[:10]}"
        assert n_dups <= inflight_bound, f"{n_dups} duplicates > {inflight_bound} in flight"
        ok = True
    except chaoslib.Terminated:
        run.kill_all()
        raise
    finally:
        rc = run.stop()
        ctl_relay.stop()
        findings = run.sanitizer_findings()
        print(f"----- postern run log ({run.log_path}), exit {rc} -----")
        print(run.log_tail(400 if ok else 1500))
        keep = os.environ.get("POSTERN_CHAOS_KEEP")
        if keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert findings == [], f"sanitizer reports: {findings[:10]}"
    assert rc == 0, f"postern run exit {rc} at SIGTERM"
