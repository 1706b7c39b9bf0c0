"""Our DKIM signatures checked by an independent verifier, python3-dkim.

dkim_tool (tests/unit/dkim_tool.c, path in $DKIM_TOOL) generates the keys
and signs; dkim.verify() gets the TXT record our code printed through a
dnsfunc stub instead of DNS. Run with /usr/bin/python3: python3-dkim is not
importable from other interpreters.
"""

import os
import subprocess

import dkim
import pytest

TOOL = os.environ.get("DKIM_TOOL", "build/tests/unit/dkim_tool")
DOMAIN = "abakus.no"

HEAD = (b"From: Postern <restricted@abakus.no>\r\n"
        b"To: someone@example.org\r\n"
        b"Subject: hello\r\n"
        b"Date: Mon, 24 Nov 2025 10:00:00 +0100\r\n"
        b"Message-ID: <1@abakus.no>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n")

MESSAGES = {
    "plain": HEAD + b"\r\nHello,\r\nthis is a test.\r\n",
    "folded": (b"From: Postern\r\n <restricted@abakus.no>\r\n"
               b"To: a@example.org,\r\n\tb@example.org,\r\n  c@example.org\r\n"
               b"Subject: a rather long subject that someone\r\n"
               b" folded   over\t two lines  \r\n"
               b"List-Unsubscribe: <https://abakus.no/u/1>\r\n"
               b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
               b"\r\nbody\r\n"),
    "duplicate_subject": (b"Subject: first\r\n" + HEAD +
                          b"Subject: third\r\n\r\nbody\r\n"),
    "name_case_wsp": (b"FROM:restricted@abakus.no\r\n"
                      b"subject:  spaced \t  out  \r\n"
                      b"\r\nsome   words\t\there  \r\n\tindented\r\n"),
    "empty_body": HEAD + b"\r\n",
    "no_body_at_all": HEAD,
    "trailing_blank_lines": HEAD + b"\r\ntext  \r\n\r\n \t\r\n\r\n",
    "only_blank_lines": HEAD + b"\r\n\r\n\r\n\r\n",
    "utf8_body": HEAD + ("\r\nBlåbærsyltetøy – “quoted” ✓\r\n"
                         "Ærlig talt.\r\n").encode("utf-8"),
    "unsigned_extra_header": (b"X-Mailer: whatever\r\n" + HEAD +
                              b"Received: by x\r\n\r\nbody\r\n"),
}


def run(*args, stdin=None):
    res = subprocess.run([TOOL, *args], input=stdin, capture_output=True,
                         check=False)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert res.stderr == b"", res.stderr.decode(errors="replace")
    return res.stdout


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def key(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("dkim") / f"{request.param}.pem"
    record = run("keygen", request.param, str(path)).strip()
    assert os.stat(path).st_mode & 0o777 == 0o600
    return {"type": request.param, "path": path, "record": record,
            "selector": f"sel-{request.param}"}


def sign(key, message):
    return run("sign", f"{key['selector']}:{key['path']}", DOMAIN,
               stdin=message)


def verify(key, signed):
    expect = f"{key['selector']}._domainkey.{DOMAIN}".encode()

    def dnsfunc(name, timeout=5):
        assert name.rstrip(b".") == expect
        return key["record"]

    return dkim.verify(signed, dnsfunc=dnsfunc)


def signature_of(signed):
    """The first field: up to the first CRLF not followed by WSP."""
    end = 0
    while True:
        end = signed.index(b"\r\n", end) + 2
        if signed[end:end + 1] not in (b"\t", b" "):
            return signed[:end]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_verifies(key, name):
    signed = sign(key, MESSAGES[name])
    assert signed.startswith(b"DKIM-Signature: ")
    assert verify(key, signed)


def test_tags_and_folding(key):
    sig = signature_of(sign(key, MESSAGES["folded"]))
    for line in sig.split(b"\r\n")[:-1]:
        assert len(line) < 78
    flat = b"".join(sig.split(b"\r\n\t")).decode()
    algo = "rsa-sha256" if key["type"] == "rsa" else "ed25519-sha256"
    assert f"a={algo};" in flat
    assert "c=relaxed/relaxed;" in flat
    assert f"d={DOMAIN};" in flat
    # Present fields signed twice and absent ones once: every one
    # oversigned (RFC 6376 §8.15), so none can be added on top.
    assert "h=From:From:Subject:Subject:Date:Message-ID:Reply-To:Sender:" \
           "MIME-Version:Content-Type:Content-Transfer-Encoding:To:To:" \
           "List-Unsubscribe:List-Unsubscribe:List-Unsubscribe-Post:List-Unsubscribe-Post;" in flat


def test_record(key):
    rec = key["record"].decode()
    assert rec.startswith(f"v=DKIM1; k={key['type']}; p=")
    if key["type"] == "ed25519":
        assert len(rec.split("p=")[1]) == 44


def test_tampering_fails(key):
    signed = sign(key, MESSAGES["plain"])
    sig = signature_of(signed)
    rest = signed[len(sig):]
    assert not verify(key, signed.replace(b"a test.", b"a t3st."))
    assert not verify(key, sig + b"From: evil@example.com\r\n" + rest)
    assert not verify(key, sig + rest.replace(b"Subject: hello",
                                              b"Subject: hellO"))
    # Only From is oversigned: a second Subject counts only at the bottom.
    assert not verify(key, signed.replace(b"8bit\r\n",
                                          b"8bit\r\nSubject: injected\r\n"))


def test_duplicate_subject_bottom_up(key):
    signed = sign(key, MESSAGES["duplicate_subject"])
    sig = signature_of(signed)
    rest = signed[len(sig):]
    assert b"Subject:Subject:Subject:" in b"".join(sig.split(b"\r\n\t"))
    # Three instances signed bottom-up: the verifier takes the three lowest,
    # so one added at the bottom or a swap breaks the signature.
    assert not verify(key, signed.replace(b"Subject: third\r\n",
                                          b"Subject: third\r\n"
                                          b"Subject: new\r\n"))
    swapped = (rest.replace(b"Subject: first", b"Subject: @")
               .replace(b"Subject: third", b"Subject: first")
               .replace(b"Subject: @", b"Subject: third"))
    assert not verify(key, sig + swapped)


def test_relaxed_tolerates_rewrapping(key):
    signed = sign(key, MESSAGES["plain"])
    assert verify(key, signed.replace(b"Subject: hello",
                                      b"subject:   hello  "))
    assert verify(key, signed.replace(b"test.\r\n", b"test.  \r\n\r\n"))
