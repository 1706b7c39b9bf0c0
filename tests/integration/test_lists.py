"""Lists (issue 11, first part): [list NAME] sections, each on its own
restricted address with its own From, footer, notice language and cap on a
token's recipients; a token belongs to one list.

The whole stack of test_transform.py (ingest, dispatch, transform) on one
config with the default list (the global keys) and two lists; tokens are
registered with spoolctl and over postern-api.
"""
import json

import pytest

import postern
from postern import wait_for
from test_transform import (CONTENT, OWNER, RCPTS, Stack, decoded, keys,  # noqa: F401
                            make_stack, parse, with_token)
from test_api import Api

STYRET = "styret@abakus.no"
ALLE = "alle@abakus.no"
SKJULT = "skjult@abakus.no"
LISTS = {
    "list styret": {"address": STYRET, "from": "Styret <styret@abakus.no>",
                    "footer": "--\\nSendt av {sender} til styret.", "language": "nb",
                    "max_recipients": 3},
    "list alle": {"address": ALLE, "from": "Alle <alle@abakus.no>",
                  "footer": "--\\nSent by {sender} to everyone.", "max_recipients": 2},
    "list skjult": {"address": SKJULT, "hide_sender": "true",
                    "footer_hidden": "--\\nSent through the hidden list."},
}


def send_to(stack, raw, rcpt):
    with stack.ingest.client() as c:
        c.lhlo()
        return c.send_message(raw, sender=OWNER, rcpts=(rcpt,))


def notice_of(stack, qid):
    (n,) = wait_for(lambda: stack.notices(ref=qid), what=f"notice about {qid}")
    msg = parse(stack.outgoing(n["id"]))
    return msg, decoded(msg).decode("utf-8")


@pytest.fixture
def lists(make_stack, keys):
    return make_stack(keys, config=LISTS)


def test_two_lists_own_address_from_and_footer(lists):
    a = lists.token(RCPTS[:2], OWNER, "--list", "styret")
    b = lists.token(RCPTS[:1], OWNER, "--list", "alle")
    qa = send_to(lists, with_token("til styret", CONTENT["plain_7bit"], a), STYRET)
    qb = send_to(lists, with_token("to all", CONTENT["plain_7bit"], b), ALLE)
    lists.wait(qa)
    lists.wait(qb)
    ma = parse(lists.outgoing(qa, RCPTS[0]))
    mb = parse(lists.outgoing(qb, RCPTS[0]))
    assert ma["From"] == "Styret <styret@abakus.no>"
    assert mb["From"] == "Alle <alle@abakus.no>"
    assert f"Sendt av {OWNER} til styret." in decoded(ma).decode()
    assert f"Sent by {OWNER} to everyone." in decoded(mb).decode()
    assert "to everyone" not in decoded(ma).decode()
    # The token records its list; the acceptance notice is in the list's language.
    assert lists.token_info(a)["list"] == "styret"
    msg, text = notice_of(lists, qa)
    assert msg["From"] == "Styret <styret@abakus.no>"
    assert "Meldingen din er på vei til 2 mottakere." in text


def test_hide_sender_list(lists):
    token = lists.token(RCPTS[:1], OWNER, "--list", "skjult")     # no --hide-sender
    qid = send_to(lists, with_token("hidden", CONTENT["plain_7bit"], token), SKJULT)
    lists.wait(qid)
    data = lists.outgoing(qid)
    msg = parse(data)
    assert msg["Reply-To"] is None and OWNER.encode() not in data
    assert b"Sent through the hidden list." in data


def test_default_list_unchanged(lists):
    token = lists.token(RCPTS[:1])
    assert lists.token_info(token)["list"] == "default"
    qid = lists.send(with_token("default", CONTENT["plain_7bit"], token))
    lists.wait(qid)
    msg, text = notice_of(lists, qid)
    assert "Your message is on its way to 1 recipient." in text


def test_token_of_another_list_refused_with_notice(lists):
    token = lists.token(RCPTS[:1], OWNER, "--list", "alle")
    # To styret (a Norwegian list): refused, told so in Norwegian.
    qid = send_to(lists, with_token("feil liste", CONTENT["plain_7bit"], token), STYRET)
    assert lists.wait(qid, "rejected")["reason"] == "TOKEN_WRONG_LIST"
    assert lists.deliveries(qid) == []
    msg, text = notice_of(lists, qid)
    assert "Meldingen din ble ikke sendt til noen." in text
    assert "TOKEN_WRONG_LIST" in text and "tokenet hører til en annen liste" in text
    assert msg["From"] == "Styret <styret@abakus.no>"
    # The same token to the default list's address: refused too, in English.
    qid2 = lists.send(with_token("wrong list", CONTENT["plain_7bit"], token))
    assert lists.wait(qid2, "rejected")["reason"] == "TOKEN_WRONG_LIST"
    _, text2 = notice_of(lists, qid2)
    assert "Nothing was delivered: the token belongs to another list." in text2
    # Still unused: it works on its own list.
    qid3 = send_to(lists, with_token("right list", CONTENT["plain_7bit"], token), ALLE)
    lists.wait(qid3)


def test_norwegian_rejection_notice(lists):
    lists.spoolctl("token", "add", "--from", OWNER, "--rcpt", RCPTS[0])    # owns one: told
    qid = send_to(lists, with_token("ukjent", CONTENT["plain_7bit"], "y" * 43), STYRET)
    assert lists.wait(qid, "rejected")["reason"] == "TOKEN_INVALID"
    _, text = notice_of(lists, qid)
    assert "Årsak:     TOKEN_INVALID" in text
    assert "tokenet er ukjent" in text


def test_cap_and_unknown_list_refused_by_spoolctl(lists):
    args = ["token", "add", "--from", OWNER, "--list", "alle"]
    for r in RCPTS:
        args += ["--rcpt", r]
    p = lists.spoolctl(*args, check=False)
    assert p.returncode == 2 and b"at most 2" in p.stderr
    p = lists.spoolctl("token", "add", "--from", OWNER, "--rcpt", RCPTS[0], "--list", "nosuch",
                       check=False)
    assert p.returncode == 2 and b'no list "nosuch"' in p.stderr
    # token import takes the same rules.
    path = lists.tmp / "import.json"
    path.write_text(json.dumps([{"from": OWNER, "recipients": RCPTS, "list": "alle"}]))
    p = lists.spoolctl("token", "import", path, check=False)
    assert p.returncode == 2 and b"at most 2" in p.stderr


def test_cap_refused_by_api(tmp_path):
    sections = postern.merge({"spool": {"dir": tmp_path / "spool"}}, LISTS)
    a = Api(tmp_path, sections).start()
    try:
        st, body, _ = a.call("POST", "/v1/tokens", {"from": OWNER, "recipients": RCPTS,
                                                     "list": "alle"})
        assert st == 400 and "at most 2" in body["message"]
        st, body, _ = a.call("POST", "/v1/tokens", {"from": OWNER, "recipients": RCPTS,
                                                     "list": "nosuch"})
        assert st == 400
        st, body, _ = a.call("POST", "/v1/tokens", {"from": OWNER, "recipients": RCPTS[:2],
                                                     "list": "alle"})
        assert st == 201
        st, got, _ = a.call("GET", f"/v1/tokens/{body['id']}")
        assert got["list"] == "alle"
        # Replacing its recipients keeps to the cap too.
        st, _, _ = a.call("PUT", f"/v1/tokens/{body['id']}/recipients", {"recipients": RCPTS})
        assert st == 400
    finally:
        problems = postern.stop_and_check([a])
        assert not problems, problems
