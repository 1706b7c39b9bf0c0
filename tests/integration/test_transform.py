"""Transform (SPEC §4, §6): postern-ingest + postern-dispatch + postern-transform
for real, over real sockets; results read back with spoolctl.

Messages go in over LMTP; spoolctl `show ID --outgoing --rcpt A` gives the
exact bytes a recipient gets, which are checked for what the rewrite must
keep and drop, the footer, the decoded parts, and DKIM with python3-dkim
(both an RSA and an Ed25519 key configured, DNS served from what
`spoolctl dkim keygen` printed).  The Stack class is shared with
test_transform_race.py.
"""
import base64
import email
import email.policy
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import dkim
import pytest

import postern
from postern import Daemon, wait_for

DOMAIN = "abakus.no"
OWNER = "test@abakus.no"
FROM = "Abakus <no-reply@abakus.no>"
UNSUB = "https://abakus.no/users/me/settings/notifications"
# Non-ASCII on purpose: the footer part must be encoded, not sent raw.
FOOTER_INI = "--\\nSendt av {sender} gjennom Abakus – «begrenset adresse».\\nAvmeld: {unsubscribe_url}"
FOOTER_LINE = "Sendt av test@abakus.no gjennom Abakus – «begrenset adresse»."
RCPTS = ["anna@example.org", "Bob@Example.ORG", "carl@example.net"]
KEPT = {"subject", "mime-version", "content-type", "content-transfer-encoding",
        "content-disposition"}
ADDED = {"dkim-signature", "to", "from", "sender", "reply-to", "date", "message-id",
         "list-unsubscribe", "list-unsubscribe-post"}


# ---- the stack under test ------------------------------------------------

def spoolctl_keygen(config, kind, path, selector):
    p = postern.spoolctl(config, "--json", "dkim", "keygen", "--type", kind, "--out", path,
                         "--selector", selector)
    return json.loads(p.stdout)


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """One RSA and one Ed25519 key, and their DNS records, for every stack."""
    d = tmp_path_factory.mktemp("dkim")
    cfg = d / "keygen.ini"
    postern.write_config(cfg, {"spool": {"dir": d / "spool"}, "dkim": {"domain": DOMAIN}})
    out = {}
    for sel, kind in (("rsa2026", "rsa"), ("ed2026", "ed25519")):
        out[sel] = spoolctl_keygen(cfg, kind, d / f"{sel}.pem", sel)
    return out


def dns_for(keys):
    records = {f"{k['selector']}._domainkey.{DOMAIN}".encode(): k["record"].encode()
               for k in keys.values()}

    def dnsfunc(name, timeout=5):
        return records.get(name.rstrip(b"."))
    return dnsfunc


def dkim_results(data, keys):
    """verify() of every DKIM-Signature in the message, top down (a broken one: False)."""
    def verify(i):
        try:
            return dkim.DKIM(data).verify(idx=i, dnsfunc=dns_for(keys))
        except dkim.DKIMException:
            return False
    return [verify(i) for i in range(len(re.findall(rb"^DKIM-Signature:", data, re.M | re.I)))]


class Stack:
    """postern-ingest, postern-dispatch and K postern-transform on one config.

    The ipc:// sockets live in a short /tmp directory (unix socket paths
    are limited to 107 bytes; pytest's tmp paths can be longer)."""

    def __init__(self, tmp, keys=None, config=None, transforms=1, relay_port=None):
        self.tmp = Path(tmp)
        self.run = Path(tempfile.mkdtemp(prefix="ptf", dir="/tmp"))
        self.seen = {}                  # id -> show of a null-sender message
        base = {
            "token": {"prefix": "LEGOTOKEN"},
            "rewrite": {"from": FROM, "unsubscribe_url": UNSUB, "footer": FOOTER_INI},
            "dkim": {"domain": DOMAIN},
            "workers": {"dispatch": f"ipc://{self.run}/dispatch", "hints": f"ipc://{self.run}/hints"},
            "relay": {"url": f"maildir:{self.tmp}/outbox"},
            # These tests make many rejection notices to OWNER within the
            # hour; test_notice_abuse.py tests the limit.
            "notice": {"max_per_hour": 0},
        }
        if keys:
            base["dkim"]["keys"] = ", ".join(f"{k['selector']}:{k['file']}" for k in keys.values())
        if relay_port:
            base["relay"] = {"url": f"smtp://127.0.0.1:{relay_port}", "tls": "none"}
        self.ingest = postern.Ingest(self.tmp, config=postern.merge(base, config), name="ingest")
        self.config = self.ingest.config_path
        argv = lambda exe: [postern.binary(exe), "-c", self.config, "-f"]
        self.dispatch = Daemon(argv("dispatch/postern-dispatch"), self.tmp / "dispatch.log",
                               r"daemon started")
        self.transforms = [Daemon(argv("transform/postern-transform"),
                                  self.tmp / f"transform{i}.log", r"daemon started")
                           for i in range(transforms)]
        self.sender = Daemon(argv("sender/postern-sender"), self.tmp / "sender.log",
                             r"daemon started") if relay_port else None
        self.daemons = [self.ingest, self.dispatch, *self.transforms] + \
            ([self.sender] if self.sender else [])

    def start(self):
        for d in self.daemons:
            d.start()
        return self

    def stop(self):
        """Stop everything; returns the problems found in the logs."""
        problems = []
        for d in reversed(self.daemons):
            rc = d.stop()
            print(f"----- {d.log_path.name} (exit codes {d.exit_codes}) -----")
            print(d.log_tail(200))
            if rc not in (None, 0):
                problems.append(f"{d.log_path.name}: exit {rc} at SIGTERM")
            if d.sanitizer_findings():
                problems.append(f"{d.log_path.name}: sanitizer: {d.sanitizer_findings()[:5]}")
        shutil.rmtree(self.run, ignore_errors=True)
        return problems

    # -- spool
    def spoolctl(self, *args, **kw):
        return postern.spoolctl(self.config, *args, **kw)

    def show(self, qid):
        return postern.spoolctl_show(self.config, qid)

    def messages(self):
        return postern.spoolctl_list(self.config)

    def deliveries(self, qid):
        return postern.parse_json_lines(self.spoolctl("--json", "show", qid, "--deliveries").stdout)

    def outgoing(self, qid, rcpt=None):
        return self.spoolctl("show", qid, "--outgoing", *(["--rcpt", rcpt] if rcpt else [])).stdout

    def token(self, rcpts=RCPTS, sender=OWNER, *extra):
        args = ["token", "add", "--from", sender, *extra]
        for r in rcpts:
            args += ["--rcpt", r]
        return self.spoolctl(*args).stdout.decode().strip()

    def token_info(self, token):
        # "--": a token may start with "-".
        return json.loads(self.spoolctl("--json", "token", "show", "--", token).stdout)

    def notices(self, ref=None):
        """Notices (kind notice) in the spool, about ref if given.  A notice's
        kind and ref never change: each is shown once and remembered."""
        for m in self.messages():
            if m["sender"] == "" and m["id"] not in self.seen:
                shown = self.show(m["id"])
                if shown["kind"] in ("notice", "mail"):
                    self.seen[m["id"]] = shown
        return [n for n in self.seen.values()
                if n["kind"] == "notice" and (ref is None or n["ref"] == ref)]

    # -- mail
    def send(self, raw, sender=OWNER):
        with self.ingest.client() as c:
            c.lhlo()
            return c.send_message(raw, sender=sender)

    def wait(self, qid, *states, timeout=30):
        states = states or ("ready",)
        return wait_for(lambda: (lambda s: s if s["state"] in states else None)(self.show(qid)),
                        timeout=timeout, what=f"{qid} in {states}")


@pytest.fixture
def make_stack(tmp_path):
    stacks = []

    def make(*args, start=True, **kw):
        s = Stack(tmp_path / f"stack{len(stacks)}", *args, **kw)
        stacks.append(s)
        return s.start() if start else s

    yield make
    problems = [p for s in stacks for p in s.stop()]
    if problems:
        pytest.fail("daemon problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, keys):
    """One stack shared by the tests of this module that need no special config."""
    s = Stack(tmp_path_factory.mktemp("shared"), keys).start()
    yield s
    problems = s.stop()
    assert not problems, "daemon problems:\n" + "\n".join(problems)


# ---- messages -------------------------------------------------------------

def b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def token_part(token):
    """The token as Lego's web form attaches it: a base64 text file."""
    return ('Content-Type: text/plain; charset=US-ASCII; name="token.txt"\r\n'
            'Content-Disposition: attachment; filename="token.txt"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + b64(f"LEGOTOKEN{token}\n".encode()) + "\r\n")


def multipart(subtype, parts, boundary):
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n' + body


def envelope(subject, body_entity, message_id=True, extra=""):
    """A message: the usual client headers, then a MIME entity (its own headers first)."""
    h = (f"Return-Path: <{OWNER}>\r\nReceived: from client.example by mx.abakus.no; "
         "Tue, 24 Nov 2026 10:00:00 +0000\r\n"
         f"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=x; b=AAAA\r\n"
         f"From: Test <{OWNER}>\r\nTo: restricted@abakus.no\r\nCc: someone@example.org\r\n"
         f"Subject: {subject}\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
         "X-Mailer: pytest\r\nMIME-Version: 1.0\r\n")
    if message_id:
        h += f"Message-ID: <{subject.replace(' ', '-')}.{time.monotonic_ns()}@client.example>\r\n"
    # Lone surrogates stand for raw 8-bit bytes (Latin-1 text, garbage).
    return (h + extra + body_entity).encode("utf-8", "surrogateescape")


def with_token(subject, content, token, **kw):
    return envelope(subject, multipart("mixed", [content, token_part(token)], "outer-b0undary"), **kw)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + bytes(range(255, -1, -1)) * 8 + b"\n%%EOF\n"

CONTENT = {
    "plain_7bit": "Content-Type: text/plain; charset=us-ascii\r\n\r\nHello there.\r\nSecond line.\r\n",
    "base64_utf8": "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                   + b64("Blåbærsyltetøy på skiva.\nLinje to – med tankestrek.\n".encode()) + "\r\n",
    "quoted_printable": "Content-Type: text/plain; charset=utf-8\r\n"
                        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                        "Bl=C3=A5b=C3=A6r og en veldig lang linje som m=C3=A5 brytes med myk linje=\r\n"
                        "skift for at den skal bli kortere enn 76 tegn.\r\nSlutt =3D ferdig.\r\n",
    "html_only": "Content-Type: text/html; charset=utf-8\r\n\r\n"
                 "<html><body><p>Hei <b>alle</b>!</p></body></html>\r\n",
    "iso_8859_1": "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                  "Bl\udce5b\udce6rsyltet\udcf8y, s\udce6rlig godt.\r\n",
    "format_flowed": "Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes\r\n\r\n"
                     "This paragraph is flowed and goes on \r\nover two lines.\r\n\r\n> quoted \r\n> text\r\n",
}


def nested_message(token, subject="nested"):
    """mixed[alternative[plain, related[html, png]], pdf, mixed[token]]: the token
    deep down, its emptied parent removed with it."""
    related = multipart("related", [
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "<p>Bilde: <img src=3D\"cid:img1\"></p>\r\n",
        "Content-Type: image/png\r\nContent-ID: <img1>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64(PNG) + "\r\n"], "rel-b0undary")
    alt = multipart("alternative", [
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nBilde: [img1]\r\n",
        related], "alt-b0undary")
    pdf = ('Content-Type: application/pdf; name="a.pdf"\r\nContent-Disposition: attachment; '
           'filename="a.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + b64(PDF) + "\r\n")
    inner = multipart("mixed", [token_part(token)], "inner-b0undary")
    return envelope(subject, multipart("mixed", [alt, pdf, inner], "outer-b0undary"))


def fixture_with(token):
    """valid.eml (LEGO's format) with its token swapped for a registered one (spoolctl
    refuses tokens under 16 characters, so `test_token` cannot be registered)."""
    raw = postern.crlf((postern.FIXTURES / "valid.eml").read_bytes())
    old = base64.b64encode(b"LEGOTOKENtest_token\n")
    assert old in raw
    return raw.replace(old, base64.b64encode(f"LEGOTOKEN{token}\n".encode()))


# ---- checks on an outgoing copy --------------------------------------------

def parse(data):
    return email.message_from_bytes(data, policy=email.policy.compat32)


def leaves(msg):
    return [p for p in msg.walk() if not p.is_multipart()]


def decoded(part):
    return part.get_payload(decode=True)


def unfold(value):
    """A header value unfolded (RFC 5322 §2.2.3): folds may be added to send it."""
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def text_of(part):
    """Decoded text of a text part in its own charset, LF line ends."""
    return decoded(part).decode(part.get_content_charset() or "ascii").replace("\r\n", "\n")


def footer_lines(footer_ini=FOOTER_INI):
    """The footer as configured, filled in, one string per line."""
    text = footer_ini.replace("\\n", "\n").format(sender=OWNER, unsubscribe_url=UNSUB)
    # Blanks at line ends go, but for the signature separator's.
    return [l if l == "-- " else l.rstrip(" ") for l in text.rstrip().split("\n")]


def with_footer(text, ctype, flowed, lines):
    """text with the footer appended in place as SPEC §4.4 has it: after a
    blank line in plain text (space-stuffed when flowed, RFC 3676 §4.4), as
    an HTML block before </body> in HTML."""
    if ctype == "text/html":
        esc = ["".join(f"&#{ord(c)};" if ord(c) > 126 or c in "<>&\"'" else c for c in l)
               for l in lines]
        block = "<div>" + "<br>\n".join(esc) + "</div>\n"
        at = text.lower().rfind("</body>")
        at = len(text) if at < 0 else at
        head = text[:at] + ("\n" if at and not text[:at].endswith("\n") else "")
        return head + block + text[at:]
    stuff = lambda l: " " + l if flowed and (l[:1] in (" ", ">") or l.startswith("From ")) else l
    sep = "" if not text else "\n" if text.endswith("\n") else "\n\n"
    return text + sep + "".join(stuff(l) + "\n" for l in lines)


def check_copy(data, rcpt, keys, original, token, placed=("part",), footer_ini=FOOTER_INI):
    """Everything SPEC §4 says about one outgoing copy.  placed: where the
    footer must be, "part" for a part of its own, else the content type of
    each text it was appended to in place."""
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF in the copy"
    assert re.search(rb"\r(?!\n)", data) is None and b"\0" not in data, "bare CR or NUL"
    assert max(len(l) for l in data.split(b"\r\n")) <= 998
    assert b"LEGOTOKEN" not in data and token.encode() not in data
    assert base64.b64encode(b"LEGOTOKEN")[:8] not in data
    out, orig = parse(data), parse(original)
    names = [k.lower() for k in out.keys()]
    assert set(names) <= KEPT | ADDED, f"unexpected headers {set(names) - KEPT - ADDED}"
    assert ADDED <= set(names)
    assert names.count("dkim-signature") == len(keys) and names.count("to") == 1
    assert names.count("from") == 1
    assert out["To"] == rcpt and out["From"] == FROM and out["Reply-To"] == OWNER
    assert unfold(out["Subject"]) == unfold(orig["Subject"])
    assert out["Message-ID"].endswith(f"@{DOMAIN}>") and out["Message-ID"] != orig["Message-ID"]
    assert out["List-Unsubscribe"] == f"<{UNSUB}>"
    assert out["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert dkim_results(data, keys) == [True] * len(keys)

    # Every part but the token's comes out decoded byte for byte as it went
    # in, in the same order, or, where the footer went in place, as the same
    # text in the same charset with the footer appended.  A footer part of
    # its own is UTF-8.
    lines = footer_lines(footer_ini)
    want = [p for p in leaves(orig) if b"LEGOTOKEN" not in (decoded(p) or b"")]
    got = leaves(out)
    parts = [p for p in got if p.get_content_type() == "text/plain"
             and p.get_content_charset() == "utf-8" and text_of(p) == "\n".join(lines) + "\n"]
    got = [p for p in got if all(p is not f for f in parts)]
    assert len(got) == len(want)
    where = ["part"] * len(parts)
    for o, w in zip(got, want):
        if decoded(o) == decoded(w):
            continue
        ctype = o.get_content_type()
        assert ctype == w.get_content_type() and o.get_content_charset() == w.get_content_charset()
        flowed = (o.get_param("format") or "").lower() == "flowed"
        assert text_of(o) == with_footer(text_of(w), ctype, flowed, lines)
        where.append(ctype)
    assert sorted(where) == sorted(placed)
    return out


# ---- tests: content ---------------------------------------------------------

# Where the footer goes once the token's part is gone and the mixed parent,
# left with one part, is that part: in place where the text's charset holds
# the footer (which has "–", not in Latin-1 or ASCII), else in a part of its own.
PLACED = {"plain_7bit": ["part"], "base64_utf8": ["text/plain"], "quoted_printable": ["text/plain"],
          "html_only": ["part"], "iso_8859_1": ["part"], "format_flowed": ["text/plain"]}


@pytest.mark.parametrize("case", sorted(CONTENT))
def test_content_case(stack, keys, case):
    token = stack.token()
    raw = with_token(case.replace("_", " "), CONTENT[case], token)
    qid = stack.send(raw)
    m = stack.wait(qid)
    assert m["reason"] is None
    dl = stack.deliveries(qid)
    assert [d["rcpt"] for d in dl] == ["anna@example.org", "Bob@example.org", "carl@example.net"]
    assert all(d["state"] in ("ready", "leased") for d in dl)
    for d in dl:
        out = check_copy(stack.outgoing(qid, d["rcpt"]), d["rcpt"], keys, raw, token, PLACED[case])
        # The original entity is the body now, or the first part next to the footer.
        first = out if PLACED[case] != ["part"] else out.get_payload(0)
        assert first.get_content_type() == parse(raw).get_payload(0).get_content_type()


def test_nested_multipart(stack, keys):
    token = stack.token()
    raw = nested_message(token)
    qid = stack.send(raw)
    stack.wait(qid)
    out = check_copy(stack.outgoing(qid), "anna@example.org", keys, raw, token)
    types = [p.get_content_type() for p in out.walk()]
    # The emptied inner multipart/mixed went with its token part.
    assert types.count("multipart/mixed") == 1
    assert "multipart/related" in types and "application/pdf" in types


def test_no_message_id(stack, keys):
    token = stack.token()
    raw = with_token("no id", CONTENT["plain_7bit"], token, message_id=False)
    qid = stack.send(raw)
    stack.wait(qid)
    out = check_copy(stack.outgoing(qid), "anna@example.org", keys, raw, token)
    assert stack.show(qid)["message_id"] == out["Message-ID"].strip("<>")


def test_lego_fixture(stack, keys):
    """valid.eml: multipart/alternative and the token as a base64 attachment."""
    token = stack.token()
    raw = fixture_with(token)
    qid = stack.send(raw)
    stack.wait(qid)
    for rcpt in ("anna@example.org", "Bob@example.org", "carl@example.net"):
        out = check_copy(stack.outgoing(qid, rcpt), rcpt, keys, raw, token, ["text/plain", "text/html"])
        assert 'filename="token"' not in out.as_string()
        assert "application/octet-stream" not in [p.get_content_type() for p in out.walk()]
        # The alternative the token sat next to is the whole message again.
        assert out.get_content_type() == "multipart/alternative"
    assert stack.show(qid)["owner"] == OWNER


# A footer Latin-1 can hold, with a signature separator and lines that
# format=flowed must space-stuff.
LATIN1_FOOTER_INI = "-- \\nFrom {sender} gjennom Abakus, «begrenset adresse».\\n> Avmeld: {unsubscribe_url}"


def test_footer_in_place(make_stack, keys):
    s = make_stack(keys, config={"rewrite": {"footer": LATIN1_FOOTER_INI}})
    alternative = multipart("alternative", [
        "Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\n"
        "Hei alle, dette er en flytende \r\nlinje.\r\n",
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "<html><body><p>Hei <b>alle</b> =E2=80=93 bl=C3=A5b=C3=A6r</p></body></html>\r\n"],
        "alt-b0undary")
    cases = {
        # Latin-1 in quoted-printable: kept, re-encoded, the footer fits.
        "latin1": ("Content-Type: text/plain; charset=iso-8859-1\r\n"
                   "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                   "Bl=E5b=E6rsyltet=F8y, s=E6rlig godt.\r\nAndre linje.\r\n",
                   ["text/plain"], "text/plain"),
        "alternative": (alternative, ["text/plain", "text/html"], "multipart/alternative"),
    }
    for name, (entity, placed, top) in cases.items():
        token = s.token()
        raw = with_token(name, entity, token)   # the mixed parent keeps one part
        qid = s.send(raw)
        s.wait(qid)
        out = check_copy(s.outgoing(qid), "anna@example.org", keys, raw, token, placed,
                         LATIN1_FOOTER_INI)
        assert out.get_content_type() == top, name
        if name == "latin1":
            assert out.get_content_charset() == "iso-8859-1"
            assert out["Content-Transfer-Encoding"] == "quoted-printable"
            assert text_of(out).startswith("Blåbærsyltetøy, særlig godt.\nAndre linje.\n\n-- \n")
        else:
            plain, html = out.get_payload()
            assert text_of(plain).endswith("\n\n-- \n From test@abakus.no gjennom Abakus, "
                                           "«begrenset adresse».\n > Avmeld: " + UNSUB + "\n")
            assert text_of(html).endswith("&#187;.<br>\n&#62; Avmeld: " + UNSUB +
                                          "</div>\n</body></html>\n")


def test_unsendable_bytes_reencoded(stack, keys):
    """NUL and bare CR in an 8bit part, a Subject of 1,500 octets, raw
    Latin-1 in a Subject: each goes out in a form a relay takes."""
    token = stack.token()
    words = " ".join(f"ord{i}" for i in range(250))
    body = ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "nul\x00byte and a bare\rCR\r\n")
    raw = with_token(words, body, token)
    qid = stack.send(raw)
    stack.wait(qid)
    out = check_copy(stack.outgoing(qid), "anna@example.org", keys, raw, token, ["text/plain"])
    assert out["Content-Transfer-Encoding"] == "quoted-printable"
    assert unfold(out["Subject"]) == words and "\n" in out["Subject"]

    token = stack.token()
    raw = with_token("Sm\udce5 bl\udce5b\udce6r", CONTENT["plain_7bit"], token)
    qid = stack.send(raw)
    stack.wait(qid)
    data = stack.outgoing(qid)
    assert b"\xe5" not in data.split(b"\r\n\r\n")[0]
    subject = email.header.make_header(email.header.decode_header(parse(data)["Subject"]))
    assert str(subject) == "Små blåbær"
    assert dkim_results(data, keys) == [True, True]


def test_lego_fixtures_as_they_are(stack):
    """Unchanged: test_token is not registered (too short to register), and
    the two others carry no token at all."""
    expect = {"valid.eml": "TOKEN_INVALID", "no_token.eml": "TOKEN_NOT_FOUND",
              "no_message_id.eml": "TOKEN_NOT_FOUND"}
    for name, reason in expect.items():
        qid = stack.send(postern.crlf((postern.FIXTURES / name).read_bytes()),
                         sender="stranger@example.com")
        assert stack.wait(qid, "rejected")["reason"] == reason, name
        assert stack.notices(ref=qid) == []        # a stranger: no notice


def test_personal_copies_share_one_body(stack, keys):
    """Each recipient's bytes = own signatures + own To: + the one common copy."""
    token = stack.token()
    qid = stack.send(with_token("shared body", CONTENT["plain_7bit"], token))
    stack.wait(qid)
    copies = [stack.outgoing(qid, r) for r in ("anna@example.org", "carl@example.net")]
    tails = [c[c.index(b"\r\nTo: ") + 2:].split(b"\r\n", 1)[1] for c in copies]
    assert tails[0] == tails[1]
    assert stack.outgoing(qid) == copies[0]             # default: the first recipient


def test_tampered_copy_fails(stack, keys):
    token = stack.token()
    qid = stack.send(with_token("tamper", CONTENT["plain_7bit"], token))
    stack.wait(qid)
    good = stack.outgoing(qid, "anna@example.org")
    other = stack.outgoing(qid, "carl@example.net")
    assert dkim_results(good, keys) == [True, True]
    assert dkim_results(good.replace(b"Second line.", b"Second lime."), keys) == [False, False]
    assert dkim_results(good.replace(b"To: anna@example.org", b"To: eve@example.org"), keys) == [False, False]
    # Anna's signatures do not vouch for Carl's To:.
    sig_end = good.index(b"\r\nTo: ") + 2
    swapped = good[:sig_end] + other[other.index(b"\r\nTo: ") + 2:]
    assert dkim_results(swapped, keys) == [False, False]


# ---- tests: token verdicts and notices ---------------------------------------

def test_sender_compared_without_case(stack):
    # LEGO registers alice@abakus.no; her mail client says Alice@Abakus.NO.
    # Recipients once each, whatever their case (the first spelling is kept).
    token = stack.token(RCPTS + ["BOB@example.org", "Anna@Example.org"], "alice@abakus.no")
    qid = stack.send(with_token("case", CONTENT["plain_7bit"], token), sender="Alice@Abakus.NO")
    assert stack.wait(qid)["state"] == "ready"
    assert [d["rcpt"] for d in stack.deliveries(qid)] == ["anna@example.org", "Bob@example.org",
                                                          "carl@example.net"]
    # Used now: the owner in any case is told (token_from compares as the binding does).
    again = stack.send(with_token("again", CONTENT["plain_7bit"], token), sender="ALICE@abakus.no")
    assert stack.wait(again, "rejected")["reason"] == "TOKEN_USED"
    (n,) = wait_for(lambda: stack.notices(ref=again), what="rejection notice")
    assert b"alice@abakus.no" in stack.outgoing(n["id"]).lower()
    token2 = stack.token()
    qid2 = stack.send(with_token("case", CONTENT["plain_7bit"], token2), sender="Test@abakus.no")
    assert stack.wait(qid2)["state"] == "ready"
    # Another address is still another sender.
    token3 = stack.token()
    qid3 = stack.send(with_token("case", CONTENT["plain_7bit"], token3),
                      sender="test2@abakus.no")
    assert stack.wait(qid3, "rejected")["reason"] == "SENDER_MISMATCH"


def test_each_rejection_reason(stack):
    used = stack.token()
    first = stack.send(with_token("first", CONTENT["plain_7bit"], used))
    stack.wait(first)
    expired = stack.token(RCPTS, OWNER, "--expires", "1s")
    revoked = stack.token()
    stack.spoolctl("token", "revoke", "--", revoked)
    other = stack.token(sender="someone.else@abakus.no")
    time.sleep(1.1)
    cases = {
        "TOKEN_NOT_FOUND": envelope("none", CONTENT["plain_7bit"]),
        "TOKEN_INVALID": with_token("unknown", CONTENT["plain_7bit"], "x" * 43),
        "TOKEN_USED": with_token("again", CONTENT["plain_7bit"], used),
        "TOKEN_EXPIRED": with_token("late", CONTENT["plain_7bit"], expired),
        "SENDER_MISMATCH": with_token("not yours", CONTENT["plain_7bit"], other),
    }
    ids = {reason: stack.send(raw) for reason, raw in cases.items()}
    ids["TOKEN_INVALID (revoked)"] = stack.send(with_token("revoked", CONTENT["plain_7bit"], revoked))
    for reason, qid in ids.items():
        m = stack.wait(qid, "rejected")
        assert m["reason"] == reason.split()[0]
        assert stack.deliveries(qid) == []
        # The sender owns tokens: it is told why, once.
        (n,) = wait_for(lambda: stack.notices(ref=qid), what=f"notice about {qid}")
        assert n["recipients"] == [OWNER] and n["state"] == "ready"
    info = stack.token_info(used)
    assert info["status"] == "used"


def test_rejection_notice(stack, keys):
    qid = stack.send(envelope("Hei på deg", CONTENT["plain_7bit"]))
    stack.wait(qid, "rejected")
    (n,) = wait_for(lambda: stack.notices(ref=qid), what="notice")
    data = stack.outgoing(n["id"])
    msg = parse(data)
    assert msg["To"] == OWNER and msg["From"] == FROM
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].endswith(f"@{DOMAIN}>") and msg["Date"]
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    text = decoded(msg).decode("utf-8")
    assert "TOKEN_NOT_FOUND" in text and qid in text and "Hei på deg" in text
    assert str(email.header.make_header(email.header.decode_header(msg["Subject"]))) == \
        "Not sent: Hei på deg"
    assert dkim_results(data, keys) == [True, True]
    assert [d["rcpt"] for d in stack.deliveries(n["id"])] == [OWNER]


def test_no_backscatter(stack):
    """No failure notice to a stranger, the null sender, or automatic mail."""
    dsn = envelope("Undelivered Mail", multipart("report", [
        "Content-Type: text/plain\r\n\r\nIt bounced.\r\n",
        "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n"],
        "dsn-b0undary").replace("report;", 'report; report-type="delivery-status";'))
    cases = [
        (envelope("stranger", CONTENT["plain_7bit"]), "stranger@example.com"),
        (envelope("null sender", CONTENT["plain_7bit"]), ""),
        (envelope("auto", CONTENT["plain_7bit"], extra="Auto-Submitted: auto-replied\r\n"), OWNER),
        (envelope("bulk", CONTENT["plain_7bit"], extra="Precedence: bulk\r\n"), OWNER),
        (dsn, OWNER),
    ]
    ids = [stack.send(raw, sender=s) for raw, s in cases]
    for qid in ids:
        stack.wait(qid, "rejected")
    # A control message from the same owner does get its notice; by then the others would have too.
    ctl = stack.send(envelope("control", CONTENT["plain_7bit"]))
    stack.wait(ctl, "rejected")
    wait_for(lambda: stack.notices(ref=ctl), what="control notice")
    for qid in ids:
        assert stack.notices(ref=qid) == [], qid


def test_success_notice(stack, keys):
    token = stack.token(["one@example.org", "two@example.org", "ONE@EXAMPLE.ORG", "one@Example.org"])
    qid = stack.send(with_token("Møte i kveld", CONTENT["plain_7bit"], token))
    stack.wait(qid)
    # Registered recipients are kept once each (the whole address compared without case).
    assert [d["rcpt"] for d in stack.deliveries(qid)] == ["one@example.org", "two@example.org"]
    (n,) = wait_for(lambda: stack.notices(ref=qid), what="success notice")
    data = stack.outgoing(n["id"])
    msg = parse(data)
    assert msg["To"] == OWNER and msg["Auto-Submitted"] == "auto-replied"
    assert "2 recipients" in decoded(msg).decode("utf-8")
    assert dkim_results(data, keys) == [True, True]
    info = stack.token_info(token)
    assert info["status"] == "used" and info["message"] == qid


def test_unparseable_goes_to_hold_and_the_next_flows(stack):
    bad = [b"", b"\x00\x01\x02 not a header line\r\n\xff\xfe\r\n", b"no colon here\r\n\r\nbody\r\n"]
    ids = [stack.send(raw) for raw in bad]
    token = stack.token()
    after = stack.send(with_token("after", CONTENT["plain_7bit"], token))
    stack.wait(after)
    for qid in ids:
        m = stack.wait(qid, "hold")
        assert m["reason"].startswith("MIME: not a message"), m
    # A header and nothing else is a message, only without a token.
    qid = stack.send(b"\r\n\r\n")
    assert stack.wait(qid, "rejected")["reason"] == "TOKEN_NOT_FOUND"


def test_hostile_but_parseable(stack, keys):
    """NUL bytes, 8-bit headers, a 5000-octet line: transformed, never a crash."""
    token = stack.token()
    body = ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "nul\x00byte\r\n" + "x" * 5000 + "\r\nend\r\n")
    qid = stack.send(with_token("Sm\udce6rt \udcff", body, token))
    stack.wait(qid)
    assert dkim_results(stack.outgoing(qid), keys) == [True, True]


def test_long_line_reencoded(stack):
    token = stack.token()
    body = ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + "x" * 5000 + "\r\n")
    qid = stack.send(with_token("long line", body, token))
    stack.wait(qid)
    assert max(len(l) for l in stack.outgoing(qid).split(b"\r\n")) <= 998


# ---- tests: configuration variants -------------------------------------------

def test_personalize_false(make_stack, keys):
    s = make_stack(keys, config={"rewrite": {"personalize": "false"}})
    token = s.token()
    raw = with_token("shared", CONTENT["plain_7bit"], token)
    qid = s.send(raw)
    s.wait(qid)
    copies = {r: s.outgoing(qid, r) for r in ("anna@example.org", "Bob@example.org", "carl@example.net")}
    assert len(set(copies.values())) == 1              # one copy, no header block
    data = copies["anna@example.org"]
    assert parse(data)["To"] == "undisclosed-recipients:;"
    assert dkim_results(data, keys) == [True, True]


def test_hidden_sender(make_stack, keys):
    s = make_stack(keys, config={"rewrite": {"footer_hidden": "--\\nSent through Abakus."}})
    token = s.token(RCPTS, OWNER, "--hide-sender")
    qid = s.send(with_token("hidden", CONTENT["plain_7bit"], token))
    s.wait(qid)
    data = s.outgoing(qid)
    msg = parse(data)
    assert msg["Reply-To"] is None and OWNER.encode() not in data
    assert b"Sent through Abakus." in data
    assert dkim_results(data, keys) == [True, True]


def test_default_key_created_once(make_stack):
    """No [dkim] keys: two workers start at once, one creates the key, both sign."""
    s = make_stack(transforms=2)
    key = Path(s.ingest.spool_dir) / "dkim" / "default.ed25519.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (key.parent.stat().st_mode & 0o777) == 0o700
    logs = "".join(t.log() for t in s.transforms)
    created = re.findall(r'created DKIM key .*TXT "(v=DKIM1; k=ed25519; p=[^"]+)"', logs)
    assert len(created) == 1
    record = created[0]
    token = s.token()
    qid = s.send(with_token("default key", CONTENT["plain_7bit"], token))
    s.wait(qid)
    data = s.outgoing(qid)
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5:
                       record.encode() if name.rstrip(b".") == b"default._domainkey." + DOMAIN.encode()
                       else None)


def test_dispatcher_restart(make_stack, keys):
    """A restarted dispatcher does not know the worker: WHO, HELLO, work goes on."""
    s = make_stack(keys)
    s.dispatch.stop()
    s.dispatch.start()
    qid = s.send(with_token("after restart", CONTENT["plain_7bit"], s.token()))
    s.wait(qid)
    assert s.dispatch.exit_codes == [0]


# ---- tests: bounce report (needs a sender worker and a relay) ------------------

class Sink:
    """aiosmtpd relay: 550 for bad-*, 250 and a record for the others."""

    def __init__(self):
        self.received = []

    async def handle_RCPT(self, server, session, envelope, address, options):
        if address.startswith("bad"):
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        for r in envelope.rcpt_tos:
            self.received.append((envelope.mail_from, r, envelope.original_content))
        return "250 2.0.0 queued"


@pytest.fixture
def sink():
    from aiosmtpd.controller import Controller
    handler = Sink()
    ctl = Controller(handler, hostname="127.0.0.1", port=postern.free_port())
    ctl.start()
    yield ctl.port, handler
    ctl.stop()


def test_bounce_report(make_stack, keys, sink):
    port, relay = sink
    s = make_stack(keys, relay_port=port)
    token = s.token(["good@example.org", "bad-one@example.org", "bad-two@example.org"])
    qid = s.send(with_token("Til alle", CONTENT["plain_7bit"], token))
    s.wait(qid, "done", timeout=60)
    assert {d["rcpt"]: d["state"] for d in s.deliveries(qid)} == {
        "good@example.org": "sent", "bad-one@example.org": "bounced", "bad-two@example.org": "bounced"}

    # The bytes the relay got are the bytes spoolctl shows, and they verify.
    got = [c for f, r, c in relay.received if r == "good@example.org"]
    assert postern.crlf(got[0]).rstrip(b"\r\n") == s.outgoing(qid, "good@example.org").rstrip(b"\r\n")
    assert dkim_results(postern.crlf(got[0]), keys) == [True, True]

    # Two notices about qid: the success one, and the report (the request became it).
    notices = wait_for(lambda: (lambda n: n if len(n) == 2 else None)(s.notices(ref=qid)),
                       timeout=60, what="two notices")
    report = [n for n in notices if "Undelivered" in parse(s.outgoing(n["id"])).get("Subject", "")]
    assert len(report) == 1
    data = s.outgoing(report[0]["id"])
    text = decoded(parse(data)).decode("utf-8")
    assert "2 of its 3 recipients" in text
    assert "bad-one@example.org: 550 5.1.1" in text and "bad-two@example.org: 550 5.1.1" in text
    assert "good@example.org" not in text
    assert dkim_results(data, keys) == [True, True]
    # Notices leave from the null sender and reach the owner.
    wait_for(lambda: sum(1 for f, r, c in relay.received if r == OWNER) == 2, timeout=60,
             what="notices delivered")
    assert all(f == "<>" or f == "" for f, r, c in relay.received if r == OWNER)


# ---- spoolctl dkim keygen ------------------------------------------------------

def test_spoolctl_dkim_keygen(tmp_path, keys):
    cfg = tmp_path / "k.ini"
    postern.write_config(cfg, {"spool": {"dir": tmp_path / "spool"}, "dkim": {"domain": DOMAIN}})
    p = postern.spoolctl(cfg, "dkim", "keygen", "--type", "rsa", "--out", tmp_path / "r.pem")
    line = p.stdout.decode()
    assert line.startswith(f"default._domainkey.{DOMAIN}. IN TXT ( \"v=DKIM1; k=rsa; p=")
    strings = re.findall(r'"([^"]*)"', line)
    assert all(len(x) <= 255 for x in strings) and len(strings) >= 2
    assert (tmp_path / "r.pem").stat().st_mode & 0o777 == 0o600
    again = postern.spoolctl(cfg, "dkim", "keygen", "--type", "rsa", "--out", tmp_path / "r.pem",
                             check=False)
    assert again.returncode != 0 and b"r.pem" in again.stderr
    bad = postern.spoolctl(cfg, "dkim", "keygen", "--type", "dsa", "--out", tmp_path / "x.pem",
                           check=False)
    assert bad.returncode == 2
    assert keys["ed2026"]["record"].startswith("v=DKIM1; k=ed25519; p=")
    assert keys["ed2026"]["name"] == f"ed2026._domainkey.{DOMAIN}"
