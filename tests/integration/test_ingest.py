"""postern-ingest against real clients over real sockets (SPEC §3).

Clients: Python's smtplib.LMTP, swaks (LMTP and ESMTP), and a raw socket
client (postern.Client) for byte-exact payloads, pipelining and exact
reply counting.  What was stored is read back with spoolctl.
"""
import re
import smtplib
import socket
import subprocess
import threading
import time

import pytest

import postern
from postern import RECIPIENT, Client, data_payload, message, queue_id_of

SENDER = "sender@example.org"


def swaks(ingest, *args, protocol="LMTP"):
    p = subprocess.run(["swaks", "--protocol", protocol, "--server", f"127.0.0.1:{ingest.port}",
                        "--helo", "swaks.test", "--timeout", "60", *args],
                       capture_output=True, text=True, timeout=120)
    print(p.stdout, p.stderr)
    return p


def server_lines(swaks_out):
    """The server's replies in a swaks transcript, in order."""
    return [l[4:] for l in swaks_out.splitlines() if l.startswith(("<-  ", "<** "))]


# ---- configuration errors ------------------------------------------------------

@pytest.mark.parametrize("text, where", [
    ("[ingest]\nlisten = 127.0.0.1:1\nmax_message_size = 12Q\n", ":3: [ingest] max_message_size"),
    ("[ingest]\nrecipient = a@b\n", ":2: [ingest] recipient: unknown key"),
    ("[spool]\ndir = x\nthis is not ini\n", ":3: Key file contains line"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, text, where):
    """SPEC §2: one line on stderr naming the file, line and key; exit 2."""
    path = tmp_path / "bad.ini"
    path.write_text(text)
    p = subprocess.run([postern.ingest_binary(), "-c", path, "-f"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2, p
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and f"{path}{where}" in lines[0], lines


# ---- greeting and extensions ------------------------------------------------

def test_greeting_and_lhlo_extensions(make_ingest):
    d = make_ingest({"ingest": {"max_message_size": "10M"}})
    with d.client() as c:
        assert c.greeting[0] == 220
        assert "ingest.test" in c.greeting[1][0]
        code, lines = c.reply_to("LHLO client.test")
        assert code == 250
        exts = {l[4:].split()[0].upper() for l in lines[1:]}
        assert {"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE", "SMTPUTF8"} <= exts
        assert f"250-SIZE {10 * 1024 * 1024}" in lines
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
        assert c.closed_by_peer()


# ---- smtplib.LMTP and swaks -------------------------------------------------

def test_smtplib_lmtp_and_stored_bytes(ingest, need_spoolctl):
    msg = message("smtplib")
    with smtplib.LMTP(ingest.host, ingest.port, local_hostname="py.test") as s:
        code, _ = s.ehlo()              # LMTP sends LHLO
        assert code == 250
        assert s.has_extn("pipelining")
        assert s.mail(SENDER) == (250, b"2.1.0 Ok")
        assert s.rcpt(RECIPIENT)[0] == 250
        code, resp = s.data(msg)
        assert code == 250
        qid = queue_id_of(f"{code} {resp.decode()}")
        assert qid, resp
    listed = {m["id"]: m for m in ingest.list()}
    assert qid in listed
    m = listed[qid]
    assert m["state"] == "incoming"
    assert m["sender"] == SENDER
    assert m["recipients"] == [RECIPIENT]
    assert m["size"] == len(msg)
    assert ingest.raw(qid) == msg


def test_swaks_lmtp_one_reply_per_recipient(ingest, need_spoolctl):
    p = swaks(ingest, "--to", f"{RECIPIENT},Restricted+tag@ABAKUS.NO,nobody@abakus.no",
              "--from", SENDER)
    assert p.returncode == 0
    replies = server_lines(p.stdout)
    assert any(r.startswith("550 5.1.1 <nobody@abakus.no>") for r in replies)
    queued = [r for r in replies if queue_id_of(r)]
    assert len(queued) == 2                     # one per accepted recipient
    qid = queue_id_of(queued[0])
    assert queue_id_of(queued[1]) == qid
    assert replies[-1].startswith("221")
    env = ingest.show(qid)
    assert env["recipients"] == [RECIPIENT, "Restricted+tag@ABAKUS.NO"]
    assert env["helo"] == "swaks.test"
    assert env["proto"] == "LMTP"


def test_swaks_lmtp_pipelining(ingest, need_spoolctl):
    p = swaks(ingest, "--pipeline", "--to", f"{RECIPIENT},restricted+x@abakus.no",
              "--from", SENDER)
    assert p.returncode == 0
    queued = [r for r in server_lines(p.stdout) if queue_id_of(r)]
    assert len(queued) == 2
    assert len(ingest.list()) == 1


def test_swaks_smtp_ehlo_single_reply(ingest, need_spoolctl):
    p = swaks(ingest, "--to", f"{RECIPIENT},restricted+two@abakus.no", "--from", SENDER,
              protocol="ESMTP")
    assert p.returncode == 0
    replies = server_lines(p.stdout)
    queued = [r for r in replies if queue_id_of(r)]
    assert len(queued) == 1
    env = ingest.show(queue_id_of(queued[0]))
    assert env["proto"] == "ESMTP"
    assert env["recipients"] == [RECIPIENT, "restricted+two@abakus.no"]


def test_smtp_mode_exactly_one_reply_after_data(ingest):
    """EHLO: one reply for two recipients; the next reply is NOOP's."""
    with ingest.client() as c:
        c.lhlo(verb="EHLO")
        rc, replies = c.transaction(SENDER, [RECIPIENT, "restricted+b@abakus.no"], message("smtp"),
                                    lmtp=False)
        assert rc == ["250 2.1.5 Ok"] * 2
        assert len(replies) == 1 and queue_id_of(replies[0])
        assert c.cmd("NOOP") == "250 2.0.0 Ok"


def test_smtp_mode_data_without_recipients_554(ingest):
    """SMTP keeps RFC 5321's 554 where LMTP says 503."""
    with ingest.client() as c:
        c.lhlo(verb="EHLO")
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd("RCPT TO:<nobody@abakus.no>").startswith("550 5.1.1")
        assert c.cmd("DATA").startswith("554 5.5.1")


def test_helo_is_smtp_too(ingest, need_spoolctl):
    with ingest.client() as c:
        code, lines = c.reply_to("HELO old.client")
        assert code == 250 and len(lines) == 1
        rc, replies = c.transaction(SENDER, [RECIPIENT, RECIPIENT], message("helo"), lmtp=False)
        assert len(replies) == 1
        qid = queue_id_of(replies[0])
        assert qid
        assert c.cmd("NOOP") == "250 2.0.0 Ok"
    assert ingest.show(qid)["proto"] == "SMTP"


def test_lmtp_one_reply_per_accepted_recipient(ingest):
    rcpts = [RECIPIENT, "unknown@abakus.no", "RESTRICTED@ABAKUS.NO", "restricted+x@abakus.no"]
    with ingest.client() as c:
        c.lhlo()
        rc, replies = c.transaction(SENDER, rcpts, message("per-rcpt"))
        assert rc[1].startswith("550 5.1.1")
        assert len(replies) == 3
        ids = {queue_id_of(r) for r in replies}
        assert len(ids) == 1 and None not in ids
        # no fourth reply is pending: the next one answers NOOP
        assert c.cmd("NOOP") == "250 2.0.0 Ok"


# ---- RCPT ---------------------------------------------------------------------

def test_unknown_recipient_550(ingest, need_spoolctl):
    with ingest.client() as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        for bad in ("nobody@abakus.no", "restricted@abakus.com", "restricted@sub.abakus.no",
                    "restrictedx@abakus.no", "x+restricted@abakus.no"):
            r = c.cmd(f"RCPT TO:<{bad}>")
            assert r.startswith("550 5.1.1"), (bad, r)
        assert c.cmd("DATA").startswith("503 5.5.1")     # no valid recipients (RFC 2033 §4.2)
    assert ingest.list() == []


@pytest.mark.parametrize("rcpt", [
    RECIPIENT, "Restricted@Abakus.No", "RESTRICTED@ABAKUS.NO", "restricted+tag@abakus.no",
    "Restricted+Some.Tag@ABAKUS.no", "restricted+@abakus.no",
])
def test_recipient_case_and_extension_accepted(ingest, rcpt):
    with ingest.client() as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok"
        # also without brackets and with a space after the colon
        assert c.cmd(f"RCPT TO: {rcpt}") == "250 2.1.5 Ok"


def test_too_many_recipients_452(make_ingest, need_spoolctl):
    d = make_ingest({"ingest": {"max_recipients": 3}})
    with d.client() as c:
        c.lhlo()
        rc, replies = c.transaction(SENDER, [RECIPIENT] * 5, message("many"))
        assert rc[:3] == ["250 2.1.5 Ok"] * 3
        assert all(r.startswith("452 4.5.3") for r in rc[3:]), rc
        assert len(replies) == 3                    # only the accepted ones
        qid = queue_id_of(replies[0])
    assert len(d.show(qid)["recipients"]) == 3


def test_rcpt_null_and_bad_syntax(ingest):
    with ingest.client() as c:
        c.lhlo()
        assert c.cmd("MAIL FROM:<>") == "250 2.1.0 Ok"          # null sender is fine
        assert c.cmd("RCPT TO:<>").startswith("501 5.1.3")
        assert c.cmd("RCPT TO:<a b@c>").startswith("501")
        assert c.cmd("RCPT TO:<restricted@abakus.no> NOTIFY=NEVER").startswith("555 5.5.4")
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"


# ---- MAIL ---------------------------------------------------------------------

def test_mail_variants(ingest, need_spoolctl):
    with ingest.client() as c:
        c.lhlo()
        ids = []
        for mail, sender in [(f"MAIL FROM:{SENDER}", SENDER),
                             (f"MAIL FROM: <{SENDER}> SIZE=100 BODY=8BITMIME", SENDER),
                             ("MAIL FROM:<>", ""),
                             ("mail from:<@hop.example:route@example.org>", "route@example.org"),
                             ('MAIL FROM:<"john q. doe>"@example.org>', '"john q. doe>"@example.org'),
                             ("MAIL FROM:<üser@exämple.org> SMTPUTF8", "üser@exämple.org")]:
            assert c.cmd(mail) == "250 2.1.0 Ok", mail
            assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
            assert c.cmd("DATA").startswith("354")
            c.send(data_payload(message("variant")))
            r = c.line()
            assert queue_id_of(r), r
            ids.append((queue_id_of(r), sender))
        assert c.cmd(f"MAIL FROM:<{SENDER}> FOO=BAR").startswith("555 5.5.4")
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE=big").startswith("501 5.5.4")
    for qid, sender in ids:
        assert ingest.show(qid)["sender"] == sender


def raw_reply(c, data: bytes):
    """Send one raw command line; its reply's last line."""
    c.send(data + b"\r\n")
    return c.line()


def test_bad_bytes_refused_or_escaped(ingest, need_spoolctl):
    """Issue 9 item 3: 8-bit bytes that are not UTF-8 are refused (553 5.6.7
    in addresses, 501 in the LHLO name), controls too; what is stored and
    logged shows control bytes as \\xNN, in the log and in spoolctl show."""
    csi = "\u009b"                         # C1 CSI: valid UTF-8, a terminal control
    with ingest.client() as c:
        assert raw_reply(c, b"LHLO evil\x1b[1Ahost").startswith("501 5.5.2")
        assert raw_reply(c, b"LHLO caf\xe9.example").startswith("501 5.5.2")
        assert raw_reply(c, b"LHLO bad\x7fname").startswith("501 5.5.2")
        c.lhlo(f"c{csi}31m.example")
        assert raw_reply(c, b"MAIL FROM:<a\xff@example.org> SMTPUTF8").startswith("553 5.6.7")
        assert raw_reply(c, b"MAIL FROM:<a\xc3@example.org>").startswith("553 5.6.7")
        assert raw_reply(c, b"MAIL FROM:<a\x7f@example.org>").startswith("501 5.1.7")
        assert raw_reply(c, b"MAIL FROM:<a\x1b[2J@example.org>").startswith("501 5.1.7")
        assert c.cmd("MAIL FROM:<\u00fcser@example.org>").startswith("553 5.6.7")
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert raw_reply(c, b"RCPT TO:<r\xe9stricted@abakus.no>").startswith("553 5.6.7")
        assert c.cmd("RCPT TO:<r\u00e9stricted@abakus.no>").startswith("553 5.6.7")
        assert c.cmd("RSET") == "250 2.0.0 Ok"
        sender = f"x{csi}[2J@example.org"
        assert c.cmd(f"MAIL FROM:<{sender}> SMTPUTF8") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<nobody{csi}[1A@abakus.no>").startswith("550 5.1.1")
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354")
        c.send(data_payload(message("bytes")))
        qid = queue_id_of(c.line())
        assert qid
    log = ingest.log_path.read_bytes()
    for bad in (b"\x1b", b"\x7f", b"\xc2\x9b", b"\xff", b"\xe9"):
        assert bad not in log, bad
    assert b"<nobody\\xc2\\x9b[1A@abakus.no>: unknown recipient" in log
    assert b"from=<x\\xc2\\x9b[2J@example.org>" in log
    text = ingest.spoolctl("show", qid).stdout
    assert b"\xc2\x9b" not in text and b"\x1b" not in text
    assert b"sender:     <x\\xc2\\x9b[2J@example.org>" in text
    assert b"helo c\\xc2\\x9b31m.example" in text
    # JSON keeps the stored string exactly, its controls as \u escapes.
    assert b"\xc2\x9b" not in ingest.spoolctl("--json", "show", qid).stdout
    shown = ingest.show(qid)
    assert (shown["sender"], shown["helo"]) == (sender, f"c{csi}31m.example")


# ---- sizes ------------------------------------------------------------------

def test_oversize_declared_in_mail_552(make_ingest):
    d = make_ingest({"ingest": {"max_message_size": "64K"}})
    with d.client() as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE={64 * 1024 + 1}").startswith("552 5.3.4")
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE=99999999999999999999999").startswith("552 5.3.4")
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE={64 * 1024}") == "250 2.1.0 Ok"


def test_oversize_sent_552_then_session_goes_on(make_ingest, need_spoolctl):
    d = make_ingest({"ingest": {"max_message_size": "64K"}})
    big = message("big", body=("x" * 998 + "\r\n") * 100)       # ~100 KB
    small = message("small")
    with d.client() as c:
        c.lhlo()
        rc, replies = c.transaction(SENDER, [RECIPIENT, RECIPIENT], big)
        assert replies == ["552 5.3.4 Message size exceeds fixed limit"] * 2
        qid = c.send_message(small)
        # SMTP mode: one 552
        c.lhlo(verb="EHLO")
        rc, replies = c.transaction(SENDER, [RECIPIENT, RECIPIENT], big, lmtp=False)
        assert replies == ["552 5.3.4 Message size exceeds fixed limit"]
        assert c.cmd("NOOP") == "250 2.0.0 Ok"
    assert [m["id"] for m in d.list()] == [qid]
    assert d.raw(qid) == small


def test_message_at_exact_size_limit_accepted(make_ingest, need_spoolctl):
    d = make_ingest({"ingest": {"max_message_size": "10K"}})
    head = message("exact", body=b"")
    body = b"y" * (10 * 1024 - len(head) - 2) + b"\r\n"
    msg = head + body
    assert len(msg) == 10 * 1024
    with d.client() as c:
        c.lhlo()
        qid = c.send_message(msg)
        rc, replies = c.transaction(SENDER, [RECIPIENT], msg + b"z\r\n")
        assert replies[0].startswith("552 5.3.4")
    assert d.raw(qid) == msg


def test_header_section_too_big_552_560(make_ingest, need_spoolctl):
    d = make_ingest({"ingest": {"max_header_size": "4K", "max_message_size": "1M"}})
    pad = [f"X-Pad-{i}: " + "p" * 70 for i in range(80)]         # ~6.5 KB of header
    fat = message("fat header", extra_headers=pad)
    # the same bytes, but most of them in the body: fine
    thin = message("thin header", body="\r\n".join(pad) + "\r\n")
    with d.client() as c:
        c.lhlo()
        rc, replies = c.transaction(SENDER, [RECIPIENT, "restricted+2@abakus.no"], fat)
        assert replies == ["552 5.6.0 Message header section exceeds fixed limit"] * 2
        qid = c.send_message(thin)
    assert [m["id"] for m in d.list()] == [qid]


# ---- pipelining -----------------------------------------------------------

def test_pipelined_commands_in_one_write(ingest, need_spoolctl):
    msg = message("pipelined")
    with ingest.client() as c:
        c.lhlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\n"
               f"RCPT TO:<restricted+p@abakus.no>\r\nDATA\r\n")
        assert [c.line() for _ in range(4)] == [
            "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"]
        c.send(data_payload(msg))
        replies = [c.line(), c.line()]
        qid = queue_id_of(replies[0])
        assert qid and queue_id_of(replies[1]) == qid
    assert ingest.raw(qid) == msg


def test_two_messages_pipelined_back_to_back(ingest, need_spoolctl):
    """Everything, both messages and QUIT, in one write: replies in order."""
    m1, m2 = message("first", body="one\r\n"), message("second", body="two\r\n..dot\r\n")
    blob = b"LHLO pipe.test\r\n"
    for m, rcpts in ((m1, [RECIPIENT]), (m2, [RECIPIENT, "restricted+2@abakus.no"])):
        blob += f"MAIL FROM:<{SENDER}>\r\n".encode()
        blob += b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
        blob += b"DATA\r\n" + data_payload(m)
    blob += b"QUIT\r\n"
    with ingest.client() as c:
        c.send(blob)
        assert c.reply()[0] == 250                       # LHLO (multi-line)
        seq = [c.line() for _ in range(3)]
        assert seq == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
        id1 = queue_id_of(c.line())
        seq = [c.line() for _ in range(4)]
        assert seq == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                       "354 End data with <CR><LF>.<CR><LF>"]
        id2a, id2b = queue_id_of(c.line()), queue_id_of(c.line())
        assert c.line() == "221 2.0.0 Bye"
        assert c.closed_by_peer()
    assert id1 and id2a and id2a == id2b and id1 != id2a
    assert id1 < id2a                                   # ids grow with arrival
    assert ingest.raw(id1) == m1
    assert ingest.raw(id2a) == m2


def test_many_messages_pipelined_in_one_write(ingest, need_spoolctl):
    msgs = [message(f"burst {i}", body=f"body {i}\r\n") for i in range(30)]
    blob = b"".join(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
                    + data_payload(m) for m in msgs)
    with ingest.client() as c:
        c.lhlo()
        c.send(blob)
        ids = []
        for _ in msgs:
            assert [c.line() for _ in range(3)][2].startswith("354")
            ids.append(queue_id_of(c.line()))
    assert None not in ids and len(set(ids)) == 30
    for qid, m in zip(ids, msgs):
        assert ingest.raw(qid) == m


# ---- what is stored -----------------------------------------------------------

def test_bare_lf_stored_as_crlf(ingest, need_spoolctl):
    payload = (b"From: <a@example.org>\nSubject: bare lf\n\nline one\nline two\r\n"
               b"mixed\n..stuffed\r\n.\r\n")
    want = (b"From: <a@example.org>\r\nSubject: bare lf\r\n\r\nline one\r\nline two\r\n"
            b"mixed\r\n.stuffed\r\n")
    with ingest.client() as c:
        c.lhlo()
        qid = c.send_message(b"", raw_payload=payload)
    assert ingest.raw(qid) == want


@pytest.mark.parametrize("verb", ["LHLO", "EHLO"])
def test_smuggled_message_stays_content(ingest, need_spoolctl, verb):
    """LF "." LF (or LF "." CRLF) does not end DATA: the "second message" is body text.

    SMTP smuggling: a front server that ends DATA only at CRLF "." CRLF
    passes both parts as one message; were they two here, the second
    would carry an envelope the front never checked.
    """
    smuggled = (b"MAIL FROM:<forged@abakus.no>\r\nRCPT TO:<restricted@abakus.no>\r\n"
                b"DATA\r\nSubject: smuggled\r\n\r\nforged\r\n")
    for end in (b"\n.\n", b"\n.\r\n", b"\r\n.\n"):
        payload = b"From: <a@example.org>\r\nSubject: outer\r\n\r\nhello" + end + smuggled + b".\r\n"
        with ingest.client() as c:
            c.lhlo(verb=verb)
            rc, replies = c.transaction(SENDER, [RECIPIENT], b"", lmtp=verb == "LHLO",
                                        raw_payload=payload)
            assert len(replies) == 1 and queue_id_of(replies[0]), (end, replies)
            assert c.cmd("NOOP") == "250 2.0.0 Ok"     # no reply left for a second message
        raw = ingest.raw(queue_id_of(replies[0]))
        assert raw.startswith(b"From: <a@example.org>\r\nSubject: outer\r\n\r\nhello\r\n")
        assert raw.endswith(b"\r\nSubject: smuggled\r\n\r\nforged\r\n"), raw
    assert [m["sender"] for m in ingest.list()] == [SENDER] * 3


def test_dot_stuffed_lines_unstuffed(ingest, need_spoolctl):
    msg = message("dots", body=".\r\n..\r\n.leading\r\n...three\r\nmid.dle\r\n. \r\n.\r.\r\nend\r\n")
    payload = data_payload(msg)
    assert b"\r\n..leading\r\n" in payload and b"\r\n...\r\n" in payload
    with ingest.client() as c:
        c.lhlo()
        qid = c.send_message(msg)
    assert ingest.raw(qid) == msg


def test_8bit_body_byte_exact(ingest, need_spoolctl):
    allbytes = bytes(b for b in range(256) if b not in (10, 13))
    body = (allbytes + b"\r\n"                              # every octet but CR/LF, NUL too
            + "Blåbærsyltetøy ✉ 日本語\r\n".encode()
            + b"bare\rcarriage return\r\n"
            + b"L" * 5000 + b"\r\n"                         # over 998 octets
            + b"\x00\x00\r\n" + b"\xff" * 3 + b"\r\n")
    msg = message("8bit", body=body, extra_headers=["Subject-Utf8: Ærlig talt —"])
    with ingest.client() as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}> BODY=8BITMIME SMTPUTF8") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354")
        c.send(data_payload(msg))
        qid = queue_id_of(c.line())
    assert qid
    assert ingest.raw(qid) == msg
    assert ingest.list()[0]["size"] == len(msg)


def test_header_only_message(ingest, need_spoolctl):
    with ingest.client() as c:
        c.lhlo()
        qid = c.send_message(b"", raw_payload=b"Subject: only header\r\n.\r\n")
    assert ingest.raw(qid) == b"Subject: only header\r\n"


def test_empty_message(ingest, need_spoolctl):
    with ingest.client() as c:
        c.lhlo()
        qid = c.send_message(b"", raw_payload=b".\r\n")
    assert ingest.list()[0]["size"] == 0
    assert ingest.raw(qid) == b""


def test_missing_message_id_accepted(ingest, need_spoolctl):
    msg = message("no id", message_id=False)
    assert b"Message-ID" not in msg
    with ingest.client() as c:
        c.lhlo()
        qid = c.send_message(msg)
    assert ingest.raw(qid) == msg


@pytest.mark.parametrize("as_text", [True, False], ids=["str", "bytes"])
@pytest.mark.parametrize("fixture", postern.LEGO_FIXTURES)
def test_lego_fixtures_stored_exactly(ingest, need_spoolctl, fixture, as_text):
    """smtplib.LMTP sends the fixture (dot-stuffed); the spool holds it unstuffed, CRLF.

    Given a str, smtplib turns LF into CRLF itself; given bytes it sends the
    bare LFs as they are, then CRLF "." CRLF: the bare LFs are stored as
    CRLF, and the CRLF it adds is part of the message.
    """
    raw = (postern.FIXTURES / fixture).read_bytes()
    assert b"\r" not in raw
    if as_text:
        payload, want = raw.decode(), postern.crlf(raw)
    else:
        payload, want = raw, postern.crlf(raw) + b"\r\n"
    with smtplib.LMTP(ingest.host, ingest.port, local_hostname="lego.test") as s:
        s.ehlo()
        assert s.mail("test@abakus.no")[0] == 250
        assert s.rcpt(RECIPIENT)[0] == 250
        code, resp = s.data(payload)
        assert code == 250
        qid = queue_id_of(f"250 {resp.decode()}")
    assert ingest.raw(qid) == want
    env = ingest.show(qid)
    assert env["sender"] == "test@abakus.no"
    assert env["helo"] == "lego.test"
    assert env["size"] == len(want)


def test_envelope_in_show_json(ingest, need_spoolctl):
    with ingest.client() as c:
        c.lhlo("mx.client.example")
        rc, replies = c.transaction("Some.One+tag@Example.ORG",
                                    [RECIPIENT, "Restricted+X@abakus.no"], message("env"))
        qid = queue_id_of(replies[0])
    env = ingest.show(qid)
    assert env["id"] == qid
    assert env["sender"] == "Some.One+tag@Example.ORG"           # as given
    assert env["recipients"] == [RECIPIENT, "Restricted+X@abakus.no"]
    assert env["client"] == "127.0.0.1"
    assert env["helo"] == "mx.client.example"
    assert env["proto"] == "LMTP"
    assert env["state"] == "incoming"
    assert env["arrival"] > 1_600_000_000
    rec = env["received"]
    assert rec.startswith("Received: from mx.client.example (127.0.0.1)")
    assert f"id {qid}" in rec and "by ingest.test" in rec
    listed = ingest.list()
    assert listed[0]["id"] == qid and listed[0]["sender"] == "Some.One+tag@Example.ORG"


def test_unix_socket_listener(make_ingest, need_spoolctl):
    d = make_ingest(unix_socket=True)
    with Client(None, unix_path=d.unix_path) as c:
        c.lhlo("local.test")
        qid = c.send_message(message("unix"))
    assert d.show(qid)["client"] == "unix"


# ---- sequence and syntax errors ---------------------------------------------

def test_sequence_errors_503(ingest):
    with ingest.client() as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}>").startswith("503 5.5.1")     # before LHLO
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>").startswith("503 5.5.1")
        assert c.cmd("DATA").startswith("503 5.5.1")
        c.lhlo()
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>").startswith("503 5.5.1")    # before MAIL
        assert c.cmd("DATA").startswith("503 5.5.1")                       # no MAIL, no RCPT
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"MAIL FROM:<{SENDER}>").startswith("503 5.5.1")     # nested MAIL
        # DATA after MAIL but before any RCPT: RFC 2033 §4.2 says 503 in LMTP
        assert c.cmd("DATA").startswith("503 5.5.1")
        assert c.cmd("RSET") == "250 2.0.0 Ok"
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>").startswith("503 5.5.1")    # RSET cleared MAIL
        # a new LHLO also resets the transaction
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        c.lhlo()
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>").startswith("503 5.5.1")
        # and the session still works
        assert queue_id_of(c.transaction(SENDER, [RECIPIENT], message("after"))[1][0])


def test_unknown_command_500_and_others(ingest):
    with ingest.client() as c:
        assert c.cmd("XYZZY").startswith("500 5.5.2")
        assert c.cmd("BDAT 10 LAST").startswith("500 5.5.2")
        assert c.cmd("LHLO").startswith("501")
        c.lhlo()
        assert c.cmd("NOOP") == "250 2.0.0 Ok"
        assert c.cmd("VRFY someone").startswith("252")
        assert c.cmd("HELP").startswith("214")
        assert c.cmd("STARTTLS").startswith("502")
        assert c.cmd("DATA extra").startswith("501")
        c.send(b"NO\x00OP\r\n")
        assert c.line().startswith("500 5.5.2")
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
        assert c.closed_by_peer()


def test_quit_221_mid_transaction_stores_nothing(ingest, need_spoolctl):
    with ingest.client() as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
        assert c.closed_by_peer()
    assert ingest.list() == []


def test_client_drops_mid_data_stores_nothing(ingest, need_spoolctl):
    with ingest.client() as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354")
        c.send(message("cut", body="half a message\r\n"))
    with ingest.client() as c:          # the daemon is still there
        c.lhlo()
        qid = c.send_message(message("whole"))
    assert [m["id"] for m in ingest.list()] == [qid]


def test_command_line_too_long(ingest):
    with ingest.client() as c:
        c.lhlo()
        c.send(b"NOOP " + b"x" * 10000)          # no line end yet
        assert c.line().startswith("500 5.5.2")
        assert c.closed_by_peer()


def test_too_many_errors_421(ingest):
    with ingest.client() as c:
        c.send(b"BOGUS\r\n" * 25)
        codes = []
        try:
            while True:
                codes.append(c.reply()[0])
        except postern.ProtocolError:
            pass
        assert codes[:20] == [500] * 20
        assert codes[20] == 421
        assert len(codes) == 21


# ---- timeouts and limits ----------------------------------------------------

def test_idle_timeout_421(make_ingest):
    d = make_ingest({"ingest": {"timeout": "2s"}})
    with d.client(timeout=60) as c:
        c.lhlo()
        assert c.line().startswith("421 4.4.2")
        assert c.closed_by_peer()
    with d.client(timeout=60) as c:         # silent from the greeting on
        assert c.line().startswith("421 4.4.2")


def test_timeout_mid_data_421_stores_nothing(make_ingest, need_spoolctl):
    d = make_ingest({"ingest": {"timeout": "2s"}})
    with d.client(timeout=60) as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: stalled\r\n\r\npart")
        assert c.line().startswith("421 4.4.2")
        assert c.closed_by_peer()
    assert d.list() == []


def dribble(c, data: bytes, every=0.5, limit=15):
    """Send data one byte every `every` s until the server answers (or
    closes) or `limit` s pass: (its reply line, seconds it took)."""
    start = time.monotonic()
    c.sock.settimeout(every)
    for i in range(len(data)):
        if time.monotonic() - start > limit:
            break
        try:
            c.sock.sendall(data[i:i + 1])
            chunk = c.sock.recv(65536)
            c.buf += chunk
            if not chunk or b"\n" in c.buf:
                break
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    c.sock.settimeout(30)
    line = c.line()
    return line, time.monotonic() - start


def test_dribbled_command_hits_its_deadline(make_ingest):
    """Issue 9 item 2: a byte every 0.5 s does not keep a command alive
    past `timeout` (it restarted on every byte: sessions lived for ever)."""
    d = make_ingest({"ingest": {"timeout": "3s"}})
    with d.client(timeout=60) as c:
        c.lhlo()
        line, took = dribble(c, b"MAIL FROM:<" + b"s" * 60 + b"@example.org>")
        assert line.startswith("421 4.4.2"), line
        assert 2.5 < took < 7, took
        assert c.closed_by_peer()
    assert "timeout after command from 127.0.0.1" in d.log()


def test_dribbled_data_hits_its_deadline(make_ingest, need_spoolctl):
    """Issue 9 item 2: in DATA a byte every 0.5 s earns 2 ms each at the
    default min_data_rate (500 bytes/s): cut off after about `timeout`."""
    d = make_ingest({"ingest": {"timeout": "3s"}})
    with d.client(timeout=60) as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354")
        line, took = dribble(c, b"Subject: slow\r\n\r\n" + b"x" * 60)
        assert line.startswith("421 4.4.2"), line
        assert 2.5 < took < 7, took
        assert c.closed_by_peer()
    assert re.search(r"timeout after DATA \(\d+ bytes\) from 127\.0\.0\.1", d.log())
    assert d.list() == []


def test_data_at_the_minimum_rate_outlives_timeout(make_ingest, need_spoolctl):
    """A message that comes at min_data_rate or faster may take longer than
    `timeout` in all: each read earns its bytes' worth of time."""
    d = make_ingest({"ingest": {"timeout": "2s", "min_data_rate": 200}})
    body = b"y" * 78 + b"\r\n"
    with d.client(timeout=60) as c:
        c.lhlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
        assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354")
        c.send(b"Subject: steady\r\n\r\n")
        start = time.monotonic()
        while time.monotonic() - start < 4:     # 80 bytes a 0.3 s: 267 bytes/s
            c.send(body)
            time.sleep(0.3)
        c.send(b".\r\n")
        assert queue_id_of(c.line())


def test_connections_per_client_421_470(make_ingest):
    """Issue 9 item 2: [ingest] max_connections_per_client: the N+1th
    session from one address hears 421 4.7.0 naming the reason and is
    closed, and it is logged; other clients (here: the unix socket) and
    later sessions are let in."""
    d = make_ingest({"ingest": {"max_connections_per_client": 2}}, unix_socket=True)
    c1, c2 = d.client(), d.client()
    try:
        assert c1.greeting[0] == 220 and c2.greeting[0] == 220
        with d.client(greet=False) as c3:
            line = c3.line()
            assert line.startswith("421 4.7.0") and "too many connections from 127.0.0.1" in line
            assert c3.closed_by_peer()
        assert re.search(r"warning: connect from 127\.0\.0\.1: refused: too many connections "
                         r"from this client \(2\)", d.log())
        with Client(None, unix_path=d.unix_path) as u:
            assert u.greeting[0] == 220
        c1.lhlo()                                   # the admitted ones still work
        assert queue_id_of(c1.transaction(SENDER, [RECIPIENT], message("per client"))[1][0])
        c2.cmd("QUIT")
        c2.closed_by_peer()

        def admitted():
            with d.client(greet=False) as c:
                return c.line().startswith("220")
        postern.wait_for(admitted, timeout=30, what="a free slot for 127.0.0.1")
    finally:
        c1.close()
        c2.close()


def test_connection_limit_421_432(make_ingest):
    d = make_ingest({"ingest": {"max_connections": 2}})
    c1, c2 = d.client(), d.client()
    try:
        assert c1.greeting[0] == 220 and c2.greeting[0] == 220
        with d.client(greet=False) as c3:
            assert c3.line().startswith("421 4.3.2")
            assert c3.closed_by_peer()
        c1.lhlo()                               # the admitted ones still work
        assert queue_id_of(c1.transaction(SENDER, [RECIPIENT], message("limit"))[1][0])
        c2.cmd("QUIT")
        c2.closed_by_peer()

        def admitted():                         # the slot frees once the close is seen
            with d.client(greet=False) as c:
                return c.line().startswith("220")
        postern.wait_for(admitted, timeout=30, what="a free connection slot")
    finally:
        c1.close()
        c2.close()


# ---- spool full ---------------------------------------------------------------

def test_spool_full_452_then_recovers(make_ingest, need_spoolctl):
    d = make_ingest({"spool": {"map_size": "1M", "max_size": "2M"},
                     "ingest": {"max_message_size": "64M"}})
    first = message("before full", body="kept\r\n")
    huge = message("huge", body=("z" * 78 + "\r\n") * (3 * 1024 * 1024 // 80))
    small = message("after full", body="fits\r\n")
    with d.client() as c:
        c.lhlo()
        id1 = c.send_message(first)
        rc, replies = c.transaction(SENDER, [RECIPIENT, "restricted+b@abakus.no"], huge)
        assert replies == ["452 4.3.1 Insufficient system storage"] * 2
        # the spool is still readable and holds what it held
        assert [m["id"] for m in d.list()] == [id1]
        assert d.raw(id1) == first
        stats = postern.json_stats(d.config_path)
        assert stats["messages"]["incoming"] == 1
        # and a small message on the same session still gets 250
        id2 = c.send_message(small)
        # SMTP mode: one 452
        c.lhlo(verb="EHLO")
        rc, replies = c.transaction(SENDER, [RECIPIENT, RECIPIENT], huge, lmtp=False)
        assert replies == ["452 4.3.1 Insufficient system storage"]
    with d.client() as c:
        c.lhlo()
        id3 = c.send_message(small)
    assert [m["id"] for m in d.list()] == [id1, id2, id3]
    assert d.raw(id2) == small and d.raw(id3) == small
    assert "spool full" in d.log()


def dots_at_once(d, messages, before_dots=lambda: None):
    """Each message on a session of its own, all of it but the final dot;
    then every final dot at once, so the messages finish together.
    Returns the replies to DATA, one per session."""
    clients = [d.client() for _ in messages]
    try:
        for c, m in zip(clients, messages):
            c.lhlo()
            assert c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
            assert c.cmd(f"RCPT TO:<{RECIPIENT}>") == "250 2.1.5 Ok"
            assert c.cmd("DATA").startswith("354")
            c.send(data_payload(m)[:-3])
        before_dots()
        for c in clients:
            c.send(b".\r\n")
        return [c.line() for c in clients]
    finally:
        for c in clients:
            c.close()


def test_spool_full_in_a_batch_only_the_big_one_refused(make_ingest, need_spoolctl):
    """Several sessions finish together; the one that does not fit hears 452, the others 250."""
    d = make_ingest({"spool": {"map_size": "1M", "max_size": "2M"},
                     "ingest": {"max_message_size": "64M"}})
    huge = message("huge", body=("z" * 78 + "\r\n") * (3 * 1024 * 1024 // 80))
    smalls = [message(f"small {i}") for i in range(4)]
    replies = dots_at_once(d, [huge] + smalls)
    assert replies[0] == "452 4.3.1 Insufficient system storage"
    ids = [queue_id_of(r) for r in replies[1:]]
    assert None not in ids, replies
    assert sorted(m["id"] for m in d.list()) == sorted(ids)
    for qid, m in zip(ids, smalls):
        assert d.raw(qid) == m


# ---- no dispatcher, several sessions, shutdown ----------------------------------

def test_missing_dispatcher_does_not_slow_ingest(ingest, need_spoolctl):
    """hints = an ipc path nobody listens on: 200 messages still go through."""
    assert "nobody-listens" in ingest.sections["workers"]["hints"]
    errors, ids = [], []

    def worker(n):
        try:
            with ingest.client() as c:
                c.lhlo()
                for i in range(n):
                    ids.append(c.send_message(message(f"hint {i}")))
        except Exception as e:          # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "clients did not finish"
    assert errors == []
    assert len(set(ids)) == 200
    assert {m["id"] for m in ingest.list()} == set(ids)


def test_hint_reaches_a_listening_dispatcher(make_ingest, tmp_path):
    """A PULL socket where the dispatcher would be hears "incoming" after the commit."""
    zmq = pytest.importorskip("zmq")
    endpoint = f"ipc://{tmp_path}/hints"
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(endpoint)
    try:
        d = make_ingest({"workers": {"hints": endpoint}})
        with d.client() as c:
            c.lhlo()
            qid = c.send_message(message("hinted"))
        assert qid
        assert pull.poll(10000), "no hint within 10 s of the 250"
        # Framed as every wire message (command, payload): the dispatcher
        # drops anything else, as it once dropped every hint.
        assert pull.recv_multipart() == [b"incoming", b""]
    finally:
        pull.close(linger=0)
        ctx.term()


def test_hint_waits_for_a_dispatcher_that_starts_later(make_ingest, tmp_path):
    """A message accepted while no dispatcher listens is hinted as soon as one binds.

    Without the queue the hint would be dropped, and the message would wait
    for the dispatcher's first rescan instead of being taken at once.
    """
    zmq = pytest.importorskip("zmq")
    endpoint = f"ipc://{tmp_path}/hints"
    d = make_ingest({"workers": {"hints": endpoint}})
    with d.client() as c:
        c.lhlo()
        assert c.send_message(message("before the dispatcher"))
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(endpoint)
    try:
        assert pull.poll(10000), "the hint sent before the bind never arrived"
        assert pull.recv_multipart() == [b"incoming", b""]
    finally:
        pull.close(linger=0)
        ctx.term()


def lmdb_last_txn(spool_dir):
    """LMDB's last committed transaction id, read by mdb_stat (lmdb-utils)."""
    out = subprocess.run(["mdb_stat", "-e", str(spool_dir)], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        if "Last transaction ID:" in line:
            return int(line.split(":")[1])
    raise AssertionError("mdb_stat printed no transaction id:\n" + out)


def test_group_commit_shares_transactions(make_ingest, need_spoolctl):
    """Ten messages whose final dots arrive together are stored in fewer commits than messages."""
    d = make_ingest()
    marks = []
    replies = dots_at_once(d, [message("group")] * 10,
                           before_dots=lambda: marks.append(lmdb_last_txn(d.spool_dir)))
    assert all(queue_id_of(r) for r in replies), replies
    commits = lmdb_last_txn(d.spool_dir) - marks[0]
    assert 1 <= commits <= 5, f"{commits} commits for 10 messages"
    assert len(d.list()) == 10


def test_client_that_never_reads_replies_is_held_back(ingest):
    """500,000 pipelined NOOPs from a client that reads nothing: the
    daemon stops taking its commands (and then its bytes) instead of
    buffering the 7 MB of replies the kernel's socket buffers cannot
    hold, and answers every one once the client reads.
    (RSS says nothing under ASan, whose quarantine keeps freed memory:
    the daemon's log line tells that the hold happened.)"""
    n = 500_000
    c = ingest.client()
    c.lhlo()
    done = threading.Event()

    def pump():
        try:
            c.sock.sendall(b"NOOP\r\n" * n)
        finally:
            done.set()
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    # The client reads nothing meanwhile.
    held = postern.wait_for(lambda: re.search(r"input held: (\d+) bytes of commands wait for "
                                              r"(\d+) bytes of replies", ingest.log()),
                            timeout=60, what="the daemon holding the input back")
    assert int(held.group(1)) < 1 << 20 and int(held.group(2)) < 1 << 20, held.group(0)
    got = 0
    c.sock.settimeout(120)
    buf = b""
    while got < n:
        data = c.sock.recv(1 << 20)
        assert data, f"connection closed after {got} replies"
        buf += data
        end = buf.rfind(b"\r\n") + 2
        lines = buf[:end].split(b"\r\n")[:-1]
        assert set(lines) <= {b"250 2.0.0 Ok"}, set(lines)
        got += len(lines)
        buf = buf[end:]
    t.join(timeout=60)
    assert got == n
    assert c.cmd("QUIT") == "221 2.0.0 Bye"
    c.close()


def test_out_of_descriptors_backs_off(make_ingest):
    """accept() failing with EMFILE (here: a low RLIMIT_NOFILE) pauses the
    listener for a second instead of spinning on a readable socket and
    logging a warning at every wake-up; sessions flow again once clients go."""
    d = make_ingest(start=False)
    d.argv = ["prlimit", "--nofile=48", *d.argv]
    d.start()
    clients = []
    try:
        for _ in range(80):         # more than the daemon has descriptors for
            clients.append(socket.create_connection(d.addr, timeout=10))
        time.sleep(2.5)
        warnings = d.log().count("not accepting for 1000 ms")
        assert 1 <= warnings <= 5, f"{warnings} back-off warnings in 2.5 s"
        assert "warning: accept:" not in d.log().replace("warning: accept: Too many open files:", "")
    finally:
        for s_ in clients:
            s_.close()
    time.sleep(1.5)                 # the back-off ends; the closed ones are reaped
    with d.client() as c:
        c.lhlo()
        assert c.send_message(message("after EMFILE"))


def test_sigterm_closes_sessions_421(make_ingest):
    d = make_ingest()
    c = d.client()
    c.lhlo()
    assert d.stop() == 0
    try:
        assert c.line().startswith("421 4.3.2")
    except (postern.ProtocolError, ConnectionResetError):
        pytest.fail("no 421 at shutdown")
    finally:
        c.close()
    assert "daemon stopped" in d.log()


def test_restart_keeps_messages_and_ids_grow(make_ingest, need_spoolctl):
    d = make_ingest()
    with d.client() as c:
        c.lhlo()
        id1 = c.send_message(message("before restart"))
    assert d.stop() == 0
    d.start()
    with d.client() as c:
        c.lhlo()
        id2 = c.send_message(message("after restart"))
    assert id2 > id1
    assert [m["id"] for m in d.list()] == [id1, id2]
