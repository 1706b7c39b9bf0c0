"""postern-api, the platform bridge, over real HTTP (urllib, http.client).

Each test runs the real postern-api on its own spool and port; keys are
made with `spoolctl api-key add`, as an operator would.  Where a message
must exist, the whole chain runs (chain.py) and the token it uses is
registered over HTTP.  docs/api.yaml is checked against what is served.
"""
import http.client
import json
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import chain as pc
import postern
from chain import OWNER, make_chain  # noqa: F401  (fixture)
from smtp_client_test import pki  # noqa: F401  (fixture)


def api_binary():
    return postern.binary("api/postern-api")


class Api(postern.Daemon):
    """postern-api on a config of its own (the spool of `sections`), with
    an admin, a tokens and a read key."""

    def __init__(self, workdir, sections=None, api=None, name="api"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = postern.free_port()
        self.keys_file = self.workdir / f"{name}-keys"
        base = sections or {"spool": {"dir": self.workdir / f"{name}-spool"}}
        self.sections = postern.merge(base, {"api": {
            "listen": f"127.0.0.1:{self.port}", "keys_file": self.keys_file, **(api or {})}})
        self.config_path = self.workdir / f"{name}.ini"
        postern.write_config(self.config_path, self.sections)
        self.keys = {scope: self.add_key(f"k-{scope}", scope)
                     for scope in ("admin", "tokens", "read")}
        super().__init__([api_binary(), "-c", self.config_path, "-f"],
                         self.workdir / f"{name}.log", r"daemon started")

    def add_key(self, name, scope):
        return postern.spoolctl(self.config_path, "api-key", "add", name,
                                scope).stdout.decode().strip()

    def spoolctl(self, *args, **kw):
        return postern.spoolctl(self.config_path, *args, **kw)

    scheme, ssl_context = "http", None

    def call(self, method, path, body=None, key="admin", raw=None, headers=None):
        """(status, decoded JSON or text, headers).  key: a scope of ours, a
        literal key, or None for no Authorization header."""
        h = dict(headers or {})
        if key:
            h["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        if data is not None:            # an iterator goes chunked (no Content-Length)
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(f"{self.scheme}://localhost:{self.port}{path}", data=data,
                                     method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60, context=self.ssl_context) as r:
                status, text, hdrs = r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as e:
            status, text, hdrs = e.code, e.read().decode(), e.headers
        ctype = hdrs.get("Content-Type", "")
        return status, json.loads(text) if ctype.startswith("application/json") else text, hdrs


@pytest.fixture
def make_api(tmp_path):
    apis = []

    def make(sections=None, api=None, start=True):
        a = Api(tmp_path, sections, api, name=f"api{len(apis)}")
        apis.append(a)
        return a.start() if start else a

    yield make
    problems = postern.stop_and_check(apis)
    for a in apis:
        for key in a.keys.values():
            if key in a.log():
                problems.append(f"{a.log_path.name}: an API key is in the log")
    if problems:
        pytest.fail("daemon problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def api(make_api):
    return make_api()


def tok(rcpts=("ada@example.org",), **kw):
    return {"from": OWNER, "recipients": list(rcpts), **kw}


def token_ids(a):
    return [t["id"] for t in postern.parse_json_lines(a.spoolctl("--json", "token", "list").stdout)]


# ---- authorisation -----------------------------------------------------------

def test_no_key_unknown_key_and_scopes(api):
    st, body, hdrs = api.call("GET", "/v1/messages", key=None)
    assert st == 401 and body["error"] == "unauthorized" and hdrs["WWW-Authenticate"] == "Bearer"
    st, body, _ = api.call("GET", "/v1/messages", key="not-a-key-of-ours-at-all")
    assert st == 401 and body["error"] == "unauthorized"
    st, body, _ = api.call("GET", "/v1/messages", key=None, headers={"Authorization": "Basic eDp5"})
    assert st == 401
    # Refused on its headers: the body is read but not kept, the answer still comes.
    st, body, _ = api.call("POST", "/v1/tokens", raw=b"x" * (4 << 20), key=None)
    assert st == 401 and body["error"] == "unauthorized"
    # read may read, not register; tokens may register, not steer messages.
    assert api.call("GET", "/v1/messages", key="read")[0] == 200
    st, body, _ = api.call("POST", "/v1/tokens", tok(), key="read")
    assert st == 403 and body["error"] == "forbidden" and "k-read" in body["message"]
    assert api.call("POST", "/v1/tokens", tok(), key="tokens")[0] == 201
    st, body, _ = api.call("POST", "/v1/messages/0000000000000001/hold", key="tokens")
    assert st == 403
    assert api.call("GET", "/metrics", key=None)[0] == 401
    # A load balancer has no key: /healthz needs none.
    st, body, _ = api.call("GET", "/healthz", key=None)
    assert st == 200 and body["status"] == "ok" and body["relay_paused"] is False


def test_keys_file_is_read_again_when_it_changes(api):
    new = api.add_key("late", "read")
    assert api.call("GET", "/v1/messages", key=new)[0] == 200
    assert "k-admin admin" in api.keys_file.read_text()
    assert new not in api.keys_file.read_text()          # only its hash is stored
    # Removing a key locks it out without a restart.
    api.keys_file.write_text("".join(l + "\n" for l in api.keys_file.read_text().splitlines()
                                     if not l.startswith("late ")))
    assert api.call("GET", "/v1/messages", key=new)[0] == 401
    # Removing the file shuts every key out.
    api.keys_file.unlink()
    assert api.call("GET", "/v1/messages")[0] == 401
    assert "is gone: no key is accepted" in api.log()


def test_unknown_path_and_method(api):
    st, body, _ = api.call("GET", "/v1/nothing")
    assert st == 404 and body["error"] == "not_found"
    st, body, hdrs = api.call("PATCH", "/v1/tokens")
    assert st == 405 and body["error"] == "method_not_allowed" and hdrs["Allow"] == "POST"
    st, _, hdrs = api.call("POST", "/v1/tokens/0123456789abcdef")
    assert st == 405 and set(hdrs["Allow"].split(", ")) == {"GET", "DELETE"}


# ---- tokens ------------------------------------------------------------------

def test_token_create_read_revoke(api):
    st, body, _ = api.call("POST", "/v1/tokens", tok(["Ada@Example.ORG", "bob@example.net"],
                                                    hide_sender=True, expires="7d"))
    assert st == 201 and len(body["token"]) >= 40 and body["nrcpt"] == 2
    tid = body["id"]
    st, got, _ = api.call("GET", f"/v1/tokens/{tid}", key="read")
    assert st == 200 and got["status"] == "active" and got["nrcpt"] == 2
    assert got["from"] == OWNER and got["hide_sender"] is True and got["message"] is None
    assert got["expires"] - got["created"] == 7 * 86400
    # The same record spoolctl sees (the same spool functions wrote it).
    shown = json.loads(api.spoolctl("--json", "token", "show", tid).stdout)
    assert shown["recipients"] == ["Ada@example.org", "bob@example.net"]
    assert api.spoolctl("token", "show", body["token"]).returncode == 0
    st, got, _ = api.call("DELETE", f"/v1/tokens/{tid}", key="tokens")
    assert st == 200 and got["status"] == "revoked"
    assert api.call("GET", f"/v1/tokens/{tid}")[1]["status"] == "revoked"
    assert "token %s: revoked" % tid in api.log()
    # Unknown ids, and a token text in the path, are not found.
    assert api.call("GET", "/v1/tokens/0000000000000000")[0] == 404
    assert api.call("DELETE", "/v1/tokens/0000000000000000")[0] == 404
    assert api.call("GET", f"/v1/tokens/{body['token']}")[0] == 404
    assert body["token"] not in api.log()            # a token in the path is not logged
    assert "GET /v1/tokens/?: 404" in api.log()


def test_batch_is_all_or_nothing(api):
    bad = [tok(), tok(["bob@example.net"]), tok(["not an address"])]
    st, body, _ = api.call("POST", "/v1/tokens", bad)
    assert st == 400 and body["error"] == "invalid" and body["message"].startswith("entry 2:")
    assert token_ids(api) == []
    chosen = "caller-chosen-token-0123456789"
    st, body, _ = api.call("POST", "/v1/tokens", [tok(), tok(token=chosen), tok()])
    assert st == 201 and len(body["tokens"]) == 3
    assert "token" not in body["tokens"][1] and all("token" in body["tokens"][i] for i in (0, 2))
    assert sorted(token_ids(api)) == sorted(t["id"] for t in body["tokens"])
    # The chosen token again, in a batch with a new one: 409, neither written.
    st, body, _ = api.call("POST", "/v1/tokens", [tok(["new@example.org"]), tok(token=chosen)])
    assert st == 409 and body["error"] == "conflict"
    assert len(token_ids(api)) == 3
    assert api.call("POST", "/v1/tokens", [])[0] == 400


def test_concurrent_registrations_are_each_all_or_nothing(api):
    """Registrations from many platform workers at once share commits;
    each is still answered only once written, and all or nothing: of two
    batches that choose the same token, one is 201 and the other 409 with
    neither of its tokens written.  The connections stay open for more."""
    chosen = "raced-token-0123456789abcdef"
    bodies = [tok([f"w{i}@example.org"]) for i in range(40)]
    bodies += [[tok([f"{w}@example.org"]), tok(token=chosen)] for w in ("x", "y")]
    headers = {"Authorization": f"Bearer {api.keys['tokens']}",
               "Content-Type": "application/json"}
    conns = [http.client.HTTPConnection("127.0.0.1", api.port, timeout=60) for _ in bodies]
    # Every request is sent before any answer is read: they arrive together.
    for c, body in zip(conns, bodies):
        c.request("POST", "/v1/tokens", body=json.dumps(body), headers=headers)
    answers = []
    for c in conns:
        r = c.getresponse()
        answers.append((r.status, json.loads(r.read())))
    assert [st for st, _ in answers[:40]] == [201] * 40, answers
    assert sorted(st for st, _ in answers[40:]) == [201, 409], answers[40:]
    lost = next(body for st, body in answers[40:] if st == 409)
    assert lost["error"] == "conflict" and lost["message"].startswith("entry 1: token ")
    won = next(body for st, body in answers[40:] if st == 201)["tokens"]
    ids = [body["id"] for _, body in answers[:40]] + [t["id"] for t in won]
    assert sorted(token_ids(api)) == sorted(ids)
    assert api.log().count(": registered, owner=") == 42
    for c in conns[:3]:
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200
        c.close()
    for c in conns[3:]:
        c.close()


def test_malformed_json_and_wrong_types_write_nothing(api):
    for raw in (b"{", b"", b"[1, 2", b"\xff\xfe", b"null", b"42", b"[" * 100000, b" \r\n",
                b'"x"{"from": "a"}', b"var x = {};",
                b'{"from": "[[[[", "recipients": ' + b"[" * 40 + b"]" * 40 + b"}"):
        st, body, _ = api.call("POST", "/v1/tokens", raw=raw)
        assert st == 400 and body["error"] in ("malformed_json", "invalid"), (raw, body)
    # A value after the first is refused before json-glib, which leaked it.
    for raw in (b'[]{"from": "a", "recipients": ["b@example.org"]}', b'{"a": 1} {"b": 2}'):
        st, body, _ = api.call("POST", "/v1/tokens", raw=raw)
        assert st == 400 and body["error"] == "malformed_json", (raw, body)
        assert "content after the JSON value" in body["message"], body
    for bad in ({"from": OWNER, "recipients": "ada@example.org"},
                {"from": 7, "recipients": ["ada@example.org"]},
                {"from": OWNER, "recipients": [1]},
                {"from": OWNER, "recipients": []},
                tok(hide_sender="yes"), tok(expires=[1]), tok(expires="yesterday"),
                tok(expires=1), tok(token="short"), tok(token=5)):
        st, body, _ = api.call("POST", "/v1/tokens", bad)
        assert st == 400 and body["error"] == "invalid" and body["message"], (bad, body)
    assert token_ids(api) == []
    st, body, _ = api.call("GET", "/v1/messages?limit=0")
    assert st == 400 and "limit" in body["message"]
    assert api.call("GET", "/v1/messages?state=lost")[0] == 400
    assert api.call("GET", "/v1/messages?after=xyz")[0] == 400
    assert api.call("GET", "/v1/messages/not-an-id")[0] == 404


def test_body_over_the_limit_is_413(make_api):
    a = make_api(api={"max_body": "64K"})
    big = json.dumps(tok([f"r{i}@example.org" for i in range(4000)])).encode()
    assert len(big) > 64 * 1024
    # Declared too long: refused on the headers, before the body is read.
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    conn.putrequest("POST", "/v1/tokens")
    conn.putheader("Authorization", f"Bearer {a.keys['admin']}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(9 << 20))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"] == "too_large"
    conn.close()
    # Chunked, with no length said: read to its end, kept only within the limit.
    st, body, _ = a.call("POST", "/v1/tokens", raw=iter([big[:40000], big[40000:]]),
                         headers={"Content-Type": "application/json"})
    assert st == 413 and body["error"] == "too_large"
    assert token_ids(a) == []
    assert a.call("GET", "/healthz")[0] == 200


def rss_kib(pid):
    return int(next(l.split()[1] for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if l.startswith("VmRSS:")))


def raw_request(a, data, timeout=30):
    """Send bytes as they are; the status line of the answer ("" if none)."""
    with socket.create_connection(("127.0.0.1", a.port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            # The server answered and closed before it read all: its answer may wait unread.
            if isinstance(e, socket.timeout):
                raise
        try:
            return s.recv(65536).decode(errors="replace").split("\r\n")[0]
        except ConnectionResetError:
            return ""


def test_hostile_bodies_paths_and_headers(api):
    """Bodies of 10 MB (declared or chunked), paths that %-decode to bytes
    that are not UTF-8, headers too large for libmicrohttpd's 32 KiB per
    connection, garbage instead of HTTP: each gets its refusal, never a
    crash, and a valid request is still answered."""
    ten = b'{"from": "x", "recipients": ["' + b"a" * (10 << 20) + b'"]}'
    # Declared: refused on the headers; the client may see the close while still sending.
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
    try:
        conn.request("POST", "/v1/tokens", body=ten, headers={
            "Authorization": f"Bearer {api.keys['admin']}", "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"] == "too_large"
    except (BrokenPipeError, ConnectionResetError):
        pass
    conn.close()
    # Chunked: read to its end (10 MB), not kept past [api] max_body (8M).
    st, body, _ = api.call("POST", "/v1/tokens",
                           raw=iter([ten[i:i + (1 << 20)] for i in range(0, len(ten), 1 << 20)]))
    assert st == 413 and body["error"] == "too_large"
    assert token_ids(api) == []
    # A path that is not UTF-8 once decoded: the error is still valid JSON (fuzz_api found it).
    for path in ("/v1/%FF%FE", "/v1/tokens/%C3%28", "/%00healthz"):
        st, body, _ = api.call("GET", path)
        assert st == 404 and body["error"] == "not_found", path
    # Keys that are no keys: huge, binary, empty, another scheme.
    for auth in ("Bearer " + "k" * 20000, "Bearer \u00ff\u00fe", "Bearer ", "Bearer",
                 "Digest x", "bearer " + api.keys["read"][:-1]):
        st, body, _ = api.call("GET", "/v1/messages", key=None, headers={"Authorization": auth})
        assert st == 401, auth
    # Headers past what a connection may hold, and garbage: an HTTP error, no crash.
    assert raw_request(api, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " +
                       b"b" * (64 << 10) + b"\r\n\r\n").split(" ")[1:2] in (["431"], ["413"], [])
    assert raw_request(api, b"\xff\x16\x03\x01 not http at all\r\n\r\n").startswith("HTTP/1.1 400")
    # A line that starts with a NUL: libmicrohttpd 0.9.75 (with suspend and
    # resume allowed, for the shared commit) keeps such a connection until
    # [api]'s 30 s idle timeout rather than answering; it holds one slot,
    # and everyone else is served meanwhile.
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as nul:
        nul.sendall(b"\x00\xff\x16\x03\x01 not http at all\r\n\r\n")
        nul.shutdown(socket.SHUT_WR)
        st, body, _ = api.call("GET", "/healthz")
        assert st == 200
    assert raw_request(api, b"GET /healthz HTTP/9.9\r\n\r\n").startswith("HTTP/1.1 505")
    st, body, _ = api.call("GET", "/healthz")
    assert st == 200 and api.running()


def test_10000_connections(make_api, monkeypatch):
    """10,000 connections to postern-api, half of them saying a few bytes
    of a request and stopping.  libmicrohttpd serves [api] max_connections
    (64) at once and leaves the rest in the listen queue; a connection
    that says nothing holds its place for at most 30 s.  Checked: no
    crash, memory bounded (RSS), a valid request answered while fewer
    than max_connections are held and as soon as a wave is let go.
    Opened in waves of up to 5,000: RLIMIT_NOFILE is raised to fit a wave
    (the hard limit here is usually 20,000 or more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wave = min(5000, hard - 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wave + 256), hard))
    # ASan keeps freed memory in a quarantine (256 MB): keep it small so RSS says what is held.
    monkeypatch.setenv("ASAN_OPTIONS", postern.os.environ.get("ASAN_OPTIONS", "") +
                       ":quarantine_size_mb=8")
    a = make_api()
    assert a.call("GET", "/healthz")[0] == 200
    base = rss_kib(a.pid)
    # During: 50 held idle, fewer than max_connections, and a request still goes through.
    held = [socket.create_connection(("127.0.0.1", a.port)) for _ in range(50)]
    t0 = time.monotonic()
    assert a.call("GET", "/healthz")[0] == 200 and time.monotonic() - t0 < 5
    for s in held:
        s.close()
    opened = 0
    while opened < 10000:
        socks = []
        for i in range(min(wave, 10000 - opened)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", a.port))
            socks.append(s)
        opened += len(socks)
        time.sleep(0.5)
        for i, s in enumerate(socks[::2]):
            try:
                # Not a NUL first: libmicrohttpd holds such a line to its idle
                # timeout even after the close (the hostile-input test shows it).
                s.send(b"GET /v1/tok" if i % 2 else b"\xff\x00garbage\r\n\r\n")
            except OSError:
                pass                    # not yet connected: still in the listen queue
        time.sleep(0.5)
        assert a.running(), "postern-api died under the connections"
        for s in socks:
            s.close()
        # After: answered once the wave is gone (within libmicrohttpd's 30 s idle timeout).
        t0 = time.monotonic()
        st, body, _ = a.call("GET", "/healthz")
        assert st == 200 and body["status"] == "ok" and time.monotonic() - t0 < 35
    grown = rss_kib(a.pid) - base
    print(f"10000 connections in waves of {wave}: RSS {base} KiB -> +{grown} KiB")
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
    st, body, _ = a.call("POST", "/v1/tokens", tok())
    assert st == 201


def test_5000_recipients_in_one_call(api):
    rcpts = [f"member{i}@example.org" for i in range(5000)]
    t0 = time.monotonic()
    st, body, _ = api.call("POST", "/v1/tokens", tok(rcpts))
    assert st == 201 and body["nrcpt"] == 5000, body
    assert time.monotonic() - t0 < 30
    assert api.call("GET", f"/v1/tokens/{body['id']}")[1]["nrcpt"] == 5000
    shown = json.loads(api.spoolctl("--json", "token", "show", body["id"]).stdout)
    assert shown["recipients"] == rcpts


def test_replace_recipients_while_unused(api):
    st, body, _ = api.call("POST", "/v1/tokens", tok(["ada@example.org"]))
    tid = body["id"]
    st, got, _ = api.call("PUT", f"/v1/tokens/{tid}/recipients",
                          {"recipients": ["x@example.org", "y@example.org", "x@example.org"]},
                          key="tokens")
    assert st == 200 and got["nrcpt"] == 2 and got["status"] == "active"
    shown = json.loads(api.spoolctl("--json", "token", "show", tid).stdout)
    assert shown["recipients"] == ["x@example.org", "y@example.org"]
    assert shown["created"] == got["created"]
    for bad in ({"recipients": ["nope"]}, {"recipients": []}, {"recipients": "x@example.org"},
                {"rcpts": []}):
        assert api.call("PUT", f"/v1/tokens/{tid}/recipients", bad)[0] == 400, bad
    assert api.call("GET", f"/v1/tokens/{tid}")[1]["nrcpt"] == 2
    assert api.call("PUT", "/v1/tokens/0000000000000000/recipients",
                    {"recipients": ["x@example.org"]})[0] == 404
    api.call("DELETE", f"/v1/tokens/{tid}")
    st, body, _ = api.call("PUT", f"/v1/tokens/{tid}/recipients", {"recipients": ["z@example.org"]})
    assert st == 409 and "revoked" in body["message"]


def test_https_with_tls_cert_and_key(make_api, pki):
    pem = Path(pki["ca"]).parent / "good.pem"          # the certificate, then its key
    a = make_api(api={"tls_cert": pem, "tls_key": pem})
    assert "daemon started: https" in a.log()
    a.scheme, a.ssl_context = "https", ssl.create_default_context(cafile=pki["ca"])
    st, body, _ = a.call("POST", "/v1/tokens", tok())
    assert st == 201 and body["token"]
    a.scheme, a.ssl_context = "http", None
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        a.call("GET", "/healthz")


# ---- metrics, health ---------------------------------------------------------

def test_metrics_are_the_text_of_spoolctl_metrics(api):
    api.call("POST", "/v1/tokens", [tok(), tok()])
    st, text, hdrs = api.call("GET", "/metrics", key="read")
    assert st == 200 and hdrs["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'postern_tokens{status="active"} 2' in text
    assert text == api.spoolctl("metrics").stdout.decode()


# ---- docs/api.yaml -----------------------------------------------------------

def api_yaml_operations():
    """(method, path) of every operation in docs/api.yaml (its paths: block)."""
    ops, path, in_paths = [], None, False
    for line in (postern.SOURCE / "docs" / "api.yaml").read_text().splitlines():
        if re.match(r"^\S", line):
            in_paths = line.startswith("paths:")
            continue
        if not in_paths:
            continue
        if m := re.match(r"^  (/\S*):\s*$", line):
            path = m.group(1)
        elif m := re.match(r"^    (get|put|post|delete|patch):\s*$", line):
            ops.append((m.group(1).upper(), path))
    return ops


def test_every_operation_in_api_yaml_is_served(api):
    ops = api_yaml_operations()
    assert len(ops) >= 11, ops
    for method, path in ops:
        url = re.sub(r"\{[^}]+\}", "0123456789abcdef", path)
        body = {} if method in ("POST", "PUT") else None
        st, resp, _ = api.call(method, url, body)
        assert st != 405, (method, path, resp)
        # A 404 may say the id is unknown, never that the endpoint is (a page
        # for people, /a/{code}, answers in HTML rather than JSON).
        if st == 404:
            said = resp["message"] if isinstance(resp, dict) else resp
            assert "no such endpoint" not in said, (method, path, resp)


# ---- through the whole chain -------------------------------------------------

def chain_api(make_chain, make_api, config=None):
    c, relay = make_chain(config)
    a = make_api(sections=c.ingest.sections)
    return c, relay, a


def send_with(c, token, subject="Restricted Message"):
    with c.ingest.client() as cl:
        cl.lhlo()
        return cl.send_message(pc.lego_message(token, subject=subject), sender=OWNER)


def test_token_from_http_used_by_a_real_message(make_chain, make_api):
    c, relay, a = chain_api(make_chain, make_api)
    rcpts = ["ada@example.org", "bob@example.net"]
    st, body, _ = a.call("POST", "/v1/tokens", tok(rcpts), key="tokens")
    assert st == 201
    qid = send_with(c, body["token"])
    c.wait_state(qid, "done")
    st, t, _ = a.call("GET", f"/v1/tokens/{body['id']}", key="read")
    assert t["status"] == "used" and t["message"] == qid and t["used"]
    st, m, _ = a.call("GET", f"/v1/messages/{qid}", key="read")
    assert st == 200 and m["id"] == qid and m["state"] == "done" and m["owner"] == OWNER
    assert m["counts"]["sent"] == 2 and m["counts"]["bounced"] == 0
    assert sorted(d["rcpt"] for d in m["deliveries"]) == sorted(rcpts)
    assert all(d["state"] == "sent" and d["last_reply"].startswith("250")
               for d in m["deliveries"])
    for r in rcpts:
        assert relay.copies(r)
    # Used: its recipients are history now; a done message cannot be steered.
    st, err, _ = a.call("PUT", f"/v1/tokens/{body['id']}/recipients",
                        {"recipients": ["late@example.org"]})
    assert st == 409 and "used" in err["message"]
    assert a.call("POST", f"/v1/messages/{qid}/hold")[0] == 409
    assert a.call("POST", f"/v1/messages/{qid}/release")[0] == 409
    assert a.call("POST", f"/v1/messages/{qid}/retry")[0] == 409
    assert a.call("GET", "/v1/messages/0000000000000001")[0] == 404
    # The list: by state, from a time, page by page.
    postern.wait_for(lambda: a.call("GET", "/v1/messages?state=done")[1]["messages"],
                     what="done messages")
    st, page, _ = a.call("GET", "/v1/messages?limit=1")
    ids = [page["messages"][0]["id"]]
    while page["next"]:
        st, page, _ = a.call("GET", f"/v1/messages?limit=1&after={page['next']}")
        ids += [m["id"] for m in page["messages"]]
    assert qid in ids and len(ids) == len(set(ids)) == len(postern.spoolctl_list(c.config_path))
    assert a.call("GET", f"/v1/messages?since={int(time.time()) + 3600}")[1]["messages"] == []
    listed = a.call("GET", "/v1/messages?state=done&since=0")[1]["messages"]
    assert qid in [m["id"] for m in listed]


def histogram(text, name):
    """A Prometheus histogram of text: [(le, cumulative count)] as printed, _sum, _count."""
    lines = text.splitlines()
    assert f"# TYPE {name} histogram" in lines
    buckets = [(m.group(1), int(m.group(2))) for m in
               (re.match(rf'^{name}_bucket{{le="([^"]+)"}} (\d+)$', l) for l in lines) if m]
    total = float(next(l.split()[1] for l in lines if l.startswith(f"{name}_sum ")))
    count = int(next(l.split()[1] for l in lines if l.startswith(f"{name}_count ")))
    return buckets, total, count


def test_latency_histograms(make_chain, make_api):
    """A message through the chain: the transform's histogram counts its
    verdict, the delivery histogram each delivery's result; buckets are
    cumulative, end at +Inf = _count; the same text from spoolctl metrics,
    and the same numbers after postern-api restarts (they are in the spool)."""
    c, relay, a = chain_api(make_chain, make_api)
    names = ("postern_transform_latency_seconds", "postern_delivery_latency_seconds")
    before = [histogram(a.call("GET", "/metrics", key="read")[1], n) for n in names]
    st, body, _ = a.call("POST", "/v1/tokens", tok(["ada@example.org", "bob@example.net"]))
    qid = send_with(c, body["token"])
    c.wait_state(qid, "done")
    # One verdict; three results: the two copies and the owner's notice (made ready, no verdict).
    postern.wait_for(lambda: histogram(a.call("GET", "/metrics", key="read")[1], names[1])[2]
                     >= before[1][2] + 3, what="the notice's result too")
    text = a.call("GET", "/metrics", key="read")[1]
    after = [histogram(text, n) for n in names]
    for (b_buckets, b_sum, b_count), (buckets, total, count), added in zip(before, after, (1, 3)):
        assert count == b_count + added and total > b_sum
        les = [le for le, _ in buckets]
        assert les[-1] == "+Inf" and buckets[-1][1] == count
        assert [float(le) for le in les[:-1]] == sorted(float(le) for le in les[:-1])
        assert all(x <= y for (_, x), (_, y) in zip(buckets, buckets[1:])), buckets
        assert les[0] == "0.005" and les[-2] == "600"
    ctl = c.spoolctl("metrics").stdout.decode()
    for n in names:
        assert histogram(ctl, n) == histogram(text, n)
    a.stop()
    a.start()
    assert [histogram(a.call("GET", "/metrics", key="read")[1], n) for n in names] == after


def test_suppressions_read_and_edited_by_the_platform(make_chain, make_api):
    """The platform's view of `spoolctl suppress`: PUT suppresses (once), a
    message then sends that address nothing, GET lists it as spoolctl does,
    DELETE lets copies go again; unknown lists and non-addresses refused."""
    c, relay, a = chain_api(make_chain, make_api)
    url = "/v1/suppressions/default/bob%40example.net"
    assert a.call("PUT", url, key="read")[0] == 403
    st, body, _ = a.call("PUT", url, key="tokens")
    assert st == 200 and body == {"list": "default", "address": "bob@example.net", "added": True}
    assert a.call("PUT", url, key="tokens")[1]["added"] is False
    assert a.call("PUT", "/v1/suppressions/nosuch/bob@example.net", key="tokens")[0] == 404
    assert a.call("PUT", "/v1/suppressions/default/not-an-address", key="tokens")[0] == 400
    assert a.call("PUT", "/v1/suppressions/default/b%FFob@example.net", key="tokens")[0] == 400
    st, listed, _ = a.call("GET", "/v1/suppressions?list=default", key="read")
    assert st == 200
    (rec,) = listed["suppressions"]
    assert rec["address"] == "bob@example.net" and rec["suppressed"] and rec["since"] > 0
    assert "api key" in rec["reason"]
    ctl = postern.parse_json_lines(postern.spoolctl(c.config_path, "--json", "suppress", "list").stdout)
    assert [r["address"] for r in ctl] == ["bob@example.net"]
    token = a.call("POST", "/v1/tokens", tok(["ada@example.org", "bob@example.net"]))[1]["token"]
    qid = send_with(c, token)
    c.wait_state(qid, "done")
    dl = {d["rcpt"]: d for d in a.call("GET", f"/v1/messages/{qid}")[1]["deliveries"]}
    assert dl["ada@example.org"]["state"] == "sent"
    assert dl["bob@example.net"]["state"] == "bounced"
    assert "suppressed" in dl["bob@example.net"]["last_reply"]
    assert not relay.copies("bob@example.net")
    st, body, _ = a.call("DELETE", url, key="tokens")
    assert st == 200 and body["removed"] is True
    assert a.call("DELETE", url, key="tokens")[0] == 404
    assert a.call("GET", "/v1/suppressions", key="read")[1]["suppressions"] == []


def integration_md_curl_blocks():
    """The ```sh blocks of docs/integration.md that call curl."""
    text = (postern.SOURCE / "docs" / "integration.md").read_text()
    return [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "curl " in b]


def test_integration_md_curl_examples_run(make_chain, make_api):
    """Every curl example of docs/integration.md, run as written by bash
    against the real daemon, with its made-up ids swapped for real ones:
    each must reach an endpoint that exists, with a key of the scope it
    needs and a body the API takes (200, 201, or 409 where the move does
    not apply to that message), never 400, 401, 403, 404 or 405."""
    c, relay, a = chain_api(make_chain, make_api)
    st, made, _ = a.call("POST", "/v1/tokens", tok(["ada@example.org"]), key="tokens")
    qid = send_with(c, made["token"])
    c.wait_state(qid, "done")
    blocks = integration_md_curl_blocks()
    assert len(blocks) >= 3
    script = "curl() { command curl -sS -o /dev/null -w '%{http_code}\\n' \"$@\"; }\n"
    for b in blocks:
        script += b.replace("8200b0739bf9b159", made["id"]).replace("0000019ab2c3d4e5", qid)
    env = dict(os.environ, API=f"http://127.0.0.1:{a.port}", LEGO_KEY=a.keys["tokens"],
               TOKENS_KEY=a.keys["tokens"], ADMIN_KEY=a.keys["admin"])
    env["AUTH"] = f"Authorization: Bearer {env['LEGO_KEY']}"
    p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                       timeout=120)
    statuses = p.stdout.split()
    calls = sum(line.startswith("curl ") for b in blocks for line in b.splitlines())
    assert p.returncode == 0 and len(statuses) == calls, (p.stdout, p.stderr)
    assert all(s in ("200", "201", "409") for s in statuses), statuses
    assert "201" in statuses


def test_hold_release_retry_a_deferred_message(make_chain, make_api):
    c, relay, a = chain_api(make_chain, make_api)
    rcpt = "slow@example.org"
    relay.data_script[rcpt] = ["451 4.3.0 try again later"] * 1000
    token = a.call("POST", "/v1/tokens", tok([rcpt]))[1]["token"]
    qid = send_with(c, token)
    c.wait_state(qid, "deferred")
    st, body, _ = a.call("POST", f"/v1/messages/{qid}/hold", key="admin")
    assert st == 200 and body["state"] == "hold"
    m = a.call("GET", f"/v1/messages/{qid}")[1]
    assert m["state"] == "hold" and "API" in m["reason"]
    assert a.call("POST", f"/v1/messages/{qid}/hold")[0] == 409
    st, body, _ = a.call("POST", f"/v1/messages/{qid}/release")
    assert st == 200 and body["state"] in ("deferred", "ready")
    # Released, the delivery may be leased for its next attempt, when retry
    # has nothing deferred to act on (409): ask again until it is deferred,
    # counting the attempts just before the retry that takes.
    before = 0

    def retry():
        nonlocal before
        before = len(relay.attempt_times(rcpt))
        return a.call("POST", f"/v1/messages/{qid}/retry")[0] == 200

    postern.wait_for(retry, timeout=30, what="a retry of the deferred delivery")
    postern.wait_for(lambda: len(relay.attempt_times(rcpt)) > before, timeout=30,
                     what="an attempt after retry")
    m = a.call("GET", f"/v1/messages/{qid}")[1]
    assert m["deliveries"][0]["last_reply"].startswith("451")
    assert a.call("GET", "/healthz", key=None)[1]["status"] == "ok"
    log = a.log()
    assert f"POST /v1/messages/{qid}/hold: 200, key k-admin" in log


def test_healthz_says_the_relay_is_paused(make_chain, make_api):
    c, relay, a = chain_api(make_chain, make_api)
    reply = "421 4.7.0 Try again later, closing connection."
    relay.data_script["ada@example.org"] = [reply]
    token = a.call("POST", "/v1/tokens", tok(["ada@example.org"]))[1]["token"]
    qid = send_with(c, token)
    seen = postern.wait_for(lambda: (lambda h: h if h["relay_paused"] else None)(
        a.call("GET", "/healthz", key=None)[1]), timeout=60, interval=0.02, what="a pause")
    assert seen["status"] == "ok" and seen["paused_until"] >= int(time.time()) - 1
    assert seen["pause_reason"] and "421" in seen["pause_reason"]
    c.wait_state(qid, "done")
    assert a.call("GET", "/healthz", key=None)[1]["relay_paused"] is False


# ---- postern run -------------------------------------------------------------

def postern_run(workdir, api):
    spool = Path(tempfile.mkdtemp(prefix="pst", dir="/tmp"))      # ipc paths: sun_path
    sections = {
        "spool": {"dir": spool},
        "ingest": {"listen": f"127.0.0.1:{postern.free_port()}"},
        "relay": {"url": f"maildir:{workdir}/outbox"},
        "workers": {"count": 1, "transforms": 1},
        "api": api,
    }
    cfg = workdir / f"run-{len(api)}.ini"
    postern.write_config(cfg, sections)
    return spool, cfg, postern.Daemon([postern.binary("tools/postern"), "-c", cfg, "run"],
                                      workdir / f"run-{len(api)}.log", r"started postern-sender")


def test_postern_run_starts_the_api_only_with_keys(tmp_path):
    port = postern.free_port()
    spool, cfg, run = postern_run(tmp_path, {"listen": f"127.0.0.1:{port}"})
    try:
        run.start()
        time.sleep(0.5)
        assert "postern-api" not in run.log()
    finally:
        run.stop()
        shutil.rmtree(spool, ignore_errors=True)
    keys = tmp_path / "keys"
    spool, cfg, run = postern_run(tmp_path, {"listen": f"127.0.0.1:{port}", "keys_file": keys})
    key = postern.spoolctl(cfg, "api-key", "add", "lego", "tokens").stdout.decode().strip()
    try:
        run.start()
        postern.wait_for(lambda: "postern-api" in run.log() and "daemon started" in run.log(),
                         what="postern-api started")

        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False
        postern.wait_for(healthy, timeout=30, what="/healthz")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tokens", method="POST",
                                     data=json.dumps(tok()).encode(),
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 201
    finally:
        rc = run.stop(timeout=60)
        shutil.rmtree(spool, ignore_errors=True)
    assert rc == 0, run.log_tail()
    assert "postern-api stopped" in run.log() and key not in run.log()


def test_config_check_names_api_problems(tmp_path):
    cfg = tmp_path / "bad.ini"
    postern.write_config(cfg, {"spool": {"dir": tmp_path / "spool"},
                               "api": {"listen": "127.0.0.1", "keys_file": tmp_path / "none",
                                       "tls_cert": tmp_path / "cert.pem"}})
    p = subprocess.run([str(api_binary()), "-c", str(cfg), "-f"], capture_output=True,
                       timeout=30)
    assert p.returncode == 2 and b"[api] listen" in p.stderr
    out = postern.spoolctl(cfg, "check", check=False).stdout.decode()
    for key in ("[api] listen", "[api] keys_file", "[api] tls_key"):
        assert key in out, out
