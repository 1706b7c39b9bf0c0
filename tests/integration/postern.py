"""postern.py - helpers for the integration tests (and bench/lib).

Start and stop Postern daemons with a temporary config and spool, pick
free ports, talk LMTP/SMTP over raw sockets, and run spoolctl (parsing
its --json output).  Runs under Debian's /usr/bin/python3, stdlib only.

Binaries are found in $POSTERN_BUILD (set by meson test); without it,
in <source>/build-ingest, then <source>/build.
"""
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SOURCE = Path(os.environ.get("POSTERN_SOURCE", Path(__file__).resolve().parents[2]))
# The LEGO-format mails (a multipart/alternative text and a base64 token
# attachment) live with the unit tests' messages, so a clone alone has them.
FIXTURES = SOURCE / "tests" / "data" / "mime"
LEGO_FIXTURES = ("valid.eml", "no_token.eml", "no_message_id.eml")
RECIPIENT = "restricted@abakus.no"
QUEUED_RE = re.compile(r"^250 2\.0\.0 ([0-9A-F]{16}) queued$")
# What log.c writes before "program[pid]: " on stderr: "Mon DD HH:MM:SS host ".
LOG_STAMP = r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ )"
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer")


def build_dir():
    if os.environ.get("POSTERN_BUILD"):
        return Path(os.environ["POSTERN_BUILD"])
    for name in ("build-ingest", "build"):
        if (SOURCE / name / "ingest" / "postern-ingest").exists():
            return SOURCE / name
    return SOURCE / "build"


def binary(rel):
    return build_dir() / rel


def ingest_binary():
    return binary("ingest/postern-ingest")


def spoolctl_binary():
    return binary("tools/spoolctl")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def crlf(data: bytes) -> bytes:
    """Every line end as CRLF (what the spool stores for a bare-LF message)."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def dot_stuff(data: bytes) -> bytes:
    """The DATA transparency of RFC 5321 4.5.2 (input has CRLF line ends)."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def data_payload(message: bytes) -> bytes:
    """What a client sends after 354 for message (CRLF line ends)."""
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return dot_stuff(message) + b".\r\n"


def write_config(path, sections):
    """sections: {"group": {"key": value}}; None values are left out."""
    lines = []
    for group, keys in sections.items():
        lines.append(f"[{group}]")
        for k, v in keys.items():
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                v = ", ".join(str(x) for x in v)
            lines.append(f"{k} = {v}")
        lines.append("")
    Path(path).write_text("\n".join(lines))


def merge(base, over):
    out = {g: dict(k) for g, k in base.items()}
    for g, keys in (over or {}).items():
        out.setdefault(g, {}).update(keys)
    return out


class Daemon:
    """One postern process with a log file; restartable, killable."""

    def __init__(self, argv, log_path, ready_re, env=None):
        self.argv = argv
        self.log_path = Path(log_path)
        self.ready_re = re.compile(ready_re)
        self.env = env
        self.proc = None
        self.runs = 0
        self.exit_codes = []

    def start(self, timeout=30):
        self.runs += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"==== start #{self.runs}: {' '.join(map(str, self.argv))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([str(a) for a in self.argv], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            if self.ready_re.search(text):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode} at start:\n"
                                   + self.log_tail())
            time.sleep(0.02)
        raise RuntimeError(f"{self.argv[0]} not ready after {timeout}s:\n" + self.log_tail())

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=20):
        """SIGTERM, wait; SIGKILL if it hangs.  Returns the exit code."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._note(f"==== did not stop in {timeout}s: killed\n")
                self.exit_codes.append("hung")
                self.proc = None
                return "hung"
        rc = self.proc.returncode
        self.exit_codes.append(rc)
        self._note(f"==== exit {rc}\n")
        self.proc = None
        return rc

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()            # SIGKILL
            self.proc.wait()
            self._note("==== killed with SIGKILL\n")
        self.exit_codes.append("SIGKILL")
        self.proc = None

    def _note(self, text):
        with open(self.log_path, "ab") as log:
            log.write(text.encode())

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle, timeout=30):
        """Wait until the log holds needle.  A line that a daemon writes after
        a commit (spool_txn_log) lands a moment after the state that
        spoolctl already shows: a test that saw the state waits for the line."""
        wait_for(lambda: needle in self.log(), timeout=timeout,
                 what=f"{needle!r} in {self.log_path.name}")

    def log_tail(self, lines=200):
        return "\n".join(self.log().splitlines()[-lines:])

    def sanitizer_findings(self):
        return [l for l in self.log().splitlines() if SANITIZER_RE.search(l)]


def stop_and_check(daemons, tail=200):
    """Stop daemons, print their logs; the problems: a non-zero exit at
    SIGTERM or a sanitizer report in a log."""
    problems = []
    for d in daemons:
        rc = d.stop()
        print(f"----- {d.log_path.name} (exit codes {d.exit_codes}) -----")
        print(d.log_tail(tail))
        if rc not in (None, 0):
            problems.append(f"{d.log_path.name}: exit {rc} at SIGTERM")
        findings = d.sanitizer_findings()
        if findings:
            problems.append(f"{d.log_path.name}: sanitizer: {findings[:5]}")
    return problems


class Ingest(Daemon):
    """postern-ingest with its own temp spool, config and TCP port."""

    def __init__(self, workdir, config=None, name="ingest", unix_socket=False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spool_dir = self.workdir / f"{name}-spool"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.unix_path = self.workdir / f"{name}.sock" if unix_socket else None
        listen = [f"127.0.0.1:{self.port}"]
        if self.unix_path:
            listen.append(f"unix:{self.unix_path}")
        base = {
            "spool": {"dir": self.spool_dir},
            "ingest": {"listen": listen, "recipients": RECIPIENT,
                       "hostname": "ingest.test", "timeout": "5m"},
            # Nothing listens here: a missing dispatcher must not matter.
            "workers": {"hints": f"ipc://{self.workdir}/{name}-nobody-listens",
                        "dispatch": f"ipc://{self.workdir}/{name}-dispatch"},
        }
        self.sections = merge(base, config)
        self.config_path = self.workdir / f"{name}.ini"
        write_config(self.config_path, self.sections)
        super().__init__([ingest_binary(), "-c", self.config_path, "-f"],
                         self.workdir / f"{name}.log", r"daemon started")

    def start(self, timeout=30):
        # The port was free when picked; another process may take it in
        # between.  Pick a new one when bind fails.
        for attempt in range(5):
            try:
                return super().start(timeout)
            except RuntimeError as e:
                if "Address already in use" not in str(e) or attempt == 4:
                    raise
                self.port = free_port()
                self.sections["ingest"]["listen"] = [f"127.0.0.1:{self.port}"] + (
                    [f"unix:{self.unix_path}"] if self.unix_path else [])
                write_config(self.config_path, self.sections)

    @property
    def addr(self):
        return (self.host, self.port)

    def client(self, timeout=30, greet=True, **kw):
        return Client(self.addr, timeout=timeout, greet=greet, **kw)

    def spoolctl(self, *args, **kw):
        return spoolctl(self.config_path, *args, **kw)

    def list(self, *args):
        return spoolctl_list(self.config_path, *args)

    def show(self, qid):
        return spoolctl_show(self.config_path, qid)

    def raw(self, qid):
        return spoolctl_raw(self.config_path, qid)


# ---- spoolctl -------------------------------------------------------------

class SpoolctlError(RuntimeError):
    pass


def spoolctl(config, *args, check=True, timeout=60):
    """Run spoolctl -c config args...; returns the CompletedProcess (bytes)."""
    exe = spoolctl_binary()
    if not exe.exists():
        raise SpoolctlError(f"{exe} is not built")
    p = subprocess.run([str(exe), "-c", str(config), *map(str, args)], capture_output=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise SpoolctlError(f"spoolctl {' '.join(map(str, args))}: exit {p.returncode}\n"
                            f"stdout: {p.stdout[-2000:]!r}\nstderr: {p.stderr[-2000:]!r}")
    return p


def parse_json_lines(data: bytes):
    return [json.loads(l) for l in data.decode().splitlines() if l.strip()]


def spoolctl_list(config, *args):
    """list --json: one object per message."""
    return parse_json_lines(spoolctl(config, "--json", "list", *args).stdout)


def spoolctl_show(config, qid):
    out = spoolctl(config, "--json", "show", qid).stdout.decode()
    try:
        return json.loads(out)
    except json.JSONDecodeError:        # one object per line: the first is the message
        return json.loads(out.splitlines()[0])


def json_stats(config):
    return json.loads(spoolctl(config, "--json", "stats").stdout)


def spoolctl_raw(config, qid) -> bytes:
    """The stored bytes exactly: --unmasked, or a token part would be masked."""
    return spoolctl(config, "show", qid, "--raw", "--unmasked").stdout


# ---- a raw LMTP/SMTP client ---------------------------------------------

class ProtocolError(Exception):
    pass


class Client:
    """Plain socket client: send bytes, read replies (multi-line aware)."""

    def __init__(self, addr, timeout=30, greet=True, unix_path=None):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(unix_path))
        else:
            self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode(errors="replace")

    def reply(self):
        """One reply: (code, [text lines]); the last line has a space after the code."""
        lines = []
        while True:
            line = self._line()
            if len(line) < 3 or not line[:3].isdigit():
                raise ProtocolError(f"bad reply line {line!r}")
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return int(line[:3]), lines
            if line[3] != "-":
                raise ProtocolError(f"bad reply line {line!r}")

    def line(self):
        """One reply as its (last) line of text."""
        return self.reply()[1][-1]

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.line()

    def closed_by_peer(self, wait=10):
        """True when the server closed the connection (EOF) within wait s."""
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def lhlo(self, name="client.test", verb="LHLO"):
        code, lines = self.reply_to(f"{verb} {name}")
        if code != 250:
            raise ProtocolError(f"{verb}: {lines}")
        return lines

    def reply_to(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def transaction(self, sender, rcpts, message: bytes, lmtp=True, raw_payload=None):
        """MAIL, RCPTs, DATA one by one.  Returns (rcpt_replies, data_replies).

        data_replies: one per accepted recipient (LMTP) or one (SMTP); [] when
        DATA itself was refused (then the data reply is data_replies' 0th).
        """
        r = self.cmd(f"MAIL FROM:<{sender}>")
        if not r.startswith("250"):
            raise ProtocolError(f"MAIL: {r}")
        rcpt_replies = [self.cmd(f"RCPT TO:<{a}>") for a in rcpts]
        accepted = sum(1 for r in rcpt_replies if r.startswith("250"))
        r = self.cmd("DATA")
        if not r.startswith("354"):
            return rcpt_replies, [r]
        self.send(raw_payload if raw_payload is not None else data_payload(message))
        n = accepted if lmtp else 1
        return rcpt_replies, [self.line() for _ in range(n)]

    def send_message(self, message: bytes, sender="sender@example.org", rcpts=(RECIPIENT,),
                     lmtp=True, raw_payload=None):
        """One transaction that must succeed: returns the queue id."""
        _, replies = self.transaction(sender, rcpts, message, lmtp=lmtp, raw_payload=raw_payload)
        ids = set()
        for r in replies:
            m = QUEUED_RE.match(r)
            if not m:
                raise ProtocolError(f"after DATA: {replies}")
            ids.add(m.group(1))
        if len(ids) != 1:
            raise ProtocolError(f"after DATA: {replies}")
        return ids.pop()


def queue_id_of(reply: str):
    m = QUEUED_RE.match(reply)
    return m.group(1) if m else None


def wait_for(pred, timeout=30, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def message(subject="test", body="Hello.\r\n", extra_headers=(), message_id=True, sender="sender@example.org"):
    """A small well-formed message (CRLF)."""
    h = [f"From: <{sender}>", f"To: <{RECIPIENT}>", f"Subject: {subject}",
         "Date: Tue, 24 Nov 2026 10:00:00 +0000"]
    if message_id:
        h.append(f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@example.org>")
    h.extend(extra_headers)
    return ("\r\n".join(h) + "\r\n\r\n").encode() + (body.encode() if isinstance(body, str) else body)


def self_signed(directory, name="platform"):
    """A self-signed certificate for 127.0.0.1 and localhost, made with the
    openssl CLI as an operator would: (cert path, server-side SSLContext).
    The certificate is its own CA: it is the CA file a client needs."""
    import ssl
    cert, key = Path(directory) / f"{name}.crt", Path(directory) / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return cert, ctx


class HttpPeer:
    """A real HTTP server in the test standing for the web platform (the
    claim endpoint, the events webhook): each POST goes to
    `on_post(handler, body)` in the server's thread; `lock` guards what a
    subclass records.  With ssl_context (server side) it speaks HTTPS.
    keep_alive: HTTP/1.1, a connection serves request after request
    (on_post must then send Content-Length)."""

    def __init__(self, port=None, ssl_context=None, keep_alive=False):
        self.port = port or free_port()
        self.keep_alive = keep_alive
        self.lock = threading.Lock()
        self.server = None
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context else "http"

    def on_post(self, handler, body):
        raise NotImplementedError

    def start(self):
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if peer.keep_alive else "HTTP/1.0"
            # Head and body are two writes: without this the body waits for a delayed ACK.
            disable_nagle_algorithm = True

            def do_POST(self):
                peer.on_post(self, self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.ssl_context:
            # The handshake in the handler's thread, not in accept(): a client
            # that fails it (an unknown CA) must not hold up the next one.
            self.server.socket = self.ssl_context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

