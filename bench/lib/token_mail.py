"""token_mail.py - mail that carries tokens, and an LMTP client sending it,
for bench/transform.sh and bench/api.sh.

    token_mail.py prepare DIR N RCPTS SIZE
    token_mail.py send FILE PORT

prepare writes DIR/tokens.json (N tokens of RCPTS recipients each, for
`spoolctl token import`) and DIR/messages: N messages of about SIZE bytes
to restricted@abakus.no, each carrying one of those tokens (a base64
text part, as LEGO sends them), each preceded by its length (4 bytes).
send delivers FILE over LMTP to 127.0.0.1:PORT: one session per 500
messages; any answer to the data but 250 is an error.
"""
import base64
import json
import socket
import sys


def prepare(out, n, rcpts, size):
    tokens = [{"from": "bench@abakus.no", "token": f"bench-token-{i:08d}-0123456789",
               "recipients": [f"r{j}@example.org" for j in range(rcpts)]} for i in range(n)]
    json.dump(tokens, open(f"{out}/tokens.json", "w"))
    filler = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod "
              "tempor incididunt ut labore.\r\n") * 64
    with open(f"{out}/messages", "wb") as f:
        for t in tokens:
            tok = base64.b64encode(f"LEGOTOKEN{t['token']}\n".encode()).decode()
            head = ("From: bench@abakus.no\r\nTo: restricted@abakus.no\r\nSubject: bench\r\n"
                    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                    "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
            tail = ("\r\n--b\r\nContent-Type: text/plain\r\n"
                    f"Content-Transfer-Encoding: base64\r\n\r\n{tok}\r\n--b--\r\n")
            body = filler[:max(0, size - len(head) - len(tail))]
            m = (head + body + tail).encode()
            f.write(len(m).to_bytes(4, "big") + m)


def reply(f):
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line


def send(path, port):
    data, msgs = open(path, "rb").read(), []
    while data:
        n = int.from_bytes(data[:4], "big"); msgs.append(data[4:4 + n]); data = data[4 + n:]
    for at in range(0, len(msgs), 500):
        s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
        reply(f); s.sendall(b"LHLO bench\r\n"); reply(f)
        for m in msgs[at:at + 500]:
            s.sendall(b"MAIL FROM:<bench@abakus.no>\r\nRCPT TO:<restricted@abakus.no>\r\nDATA\r\n")
            reply(f); reply(f); reply(f)
            s.sendall(m.replace(b"\r\n.", b"\r\n..") + b".\r\n")
            r = reply(f)
            assert r.startswith(b"250"), r
        s.sendall(b"QUIT\r\n"); s.close()


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        send(sys.argv[2], int(sys.argv[3]))
