"""MIME fidelity through the whole pipeline (issue 9 items 13-15).

Every message of tests/data/mime_corpus (real-looking and malformed MIME)
goes in over LMTP with a token, through postern-transform, and comes out
as the copy a recipient gets.  Read by Python's email package, which is
not the parser Postern uses (GMime), every leaf of what came in (but the
token) must be in the copy byte for byte (a text leaf may have the footer appended), and
every copy must pass DKIM verification by python3-dkim.

The token goes in a part before the message's own body, in a multipart
that is never closed: the message then runs to the end of the input as it
did on its own, and when the token is taken the multipart is left with one
part and unwrapped (rewrite.c), so the copy's body is the original's.
Uses the Stack of test_transform.py.
"""
import re

import pytest

import postern
from test_transform import (RCPTS, dkim_results, keys, parse, stack,  # noqa: F401
                            token_part)

CORPUS = sorted((postern.Path(postern.__file__).parent.parent / "data" / "mime_corpus").glob("*.eml"))


def crlf(data):
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def with_token_first(original, token):
    """original's header, then its body entity after a token part, unclosed."""
    head, _, body = original.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    # The Content-* fields (with their folds) belong to the entity, the rest to the message.
    entity, message, current = [], [], None
    for line in lines:
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        current = entity if line.lower().startswith(b"content-") else message
        current.append(line)
    outer = b"token-b0undary-" + token[:8].encode()
    return (b"\r\n".join(message) + b"\r\nContent-Type: multipart/mixed; boundary=\"" + outer
            + b"\"\r\n\r\n--" + outer + b"\r\n" + token_part(token).encode() + b"\r\n--" + outer
            + b"\r\n" + b"\r\n".join(entity) + b"\r\n\r\n" + body)


def leaves(msg):
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        out.append(payload if payload is not None else b"")
    return out


FOOTER_WORDS = b"Sendt av"


def kept(orig, copy, ended=True):
    """copy is orig, or orig with the footer added as the transform adds it.
    An original whose last line had no line end gets one (ended False)."""
    if orig == copy or (not ended and copy == orig + b"\r\n"):
        return True
    if FOOTER_WORDS not in copy:
        return False
    # In plain text after the text; in HTML inside before </body>.
    if copy.startswith(orig.rstrip(b"\r\n")):
        return True
    start = copy.find(b"<div>")
    end = copy.find(b"</div>", start)
    if start < 0 or end < 0:
        return False
    # The footer's block stands on lines of its own.
    if copy[:start].endswith(b"\r\n") and not orig[:start].endswith(b"\r\n"):
        start -= 2
    without = copy[:start] + copy[end + len(b"</div>\r\n"):]
    return without in (orig, orig.replace(b"\r\n", b"\n")) or without.rstrip(b"\r\n") == orig.rstrip(b"\r\n")


def is_footer(leaf):
    return leaf.startswith(b"--") and FOOTER_WORDS in leaf


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_message_survives(stack, keys, path):
    original = crlf(path.read_bytes())
    token = stack.token()
    sent = with_token_first(original, token)
    qid = stack.send(sent)
    m = stack.wait(qid, "ready", "hold", "rejected")
    assert m["state"] == "ready", m
    # An empty part (a delimiter right after another) has nothing to read,
    # and GMime keeps it or not depending on what came before: left out.
    # The leaves of what came in, but for the token (the first one).
    want = [leaf for leaf in leaves(parse(sent))[1:] if leaf]
    ended = original.endswith(b"\n")
    for rcpt in RCPTS:
        data = stack.outgoing(qid, rcpt)
        assert dkim_results(data, keys) == [True, True], rcpt
    got = [leaf for leaf in leaves(parse(data)) if leaf]
    j = 0
    for i, leaf in enumerate(want):
        while j < len(got) and not kept(leaf, got[j], ended) and is_footer(got[j]):
            j += 1
        assert j < len(got), f"leaf {i} missing: {leaf!r}\ncopy:\n{data.decode(errors='replace')}"
        assert kept(leaf, got[j], ended), (f"leaf {i} changed:\n{leaf!r}\nbecame\n{got[j]!r}\n"
                                    f"copy:\n{data.decode(errors='replace')}")
        j += 1
    assert all(is_footer(leaf) for leaf in got[j:]), got[j:]
