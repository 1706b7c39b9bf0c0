"""api_tokens.py - token registrations for bench/api.sh.

    api_tokens.py prepare DIR ROUND N BIG_RCPTS BIG_N
    api_tokens.py post DIR PORT KEY

prepare writes the tokens both sides of a round register, as JSON that
`spoolctl token import` reads and POST /v1/tokens takes alike:
DIR/small.json (N tokens of one recipient each) and DIR/big-I.json for I
in 0..BIG_N-1 (one token of BIG_RCPTS recipients each, one array each).
Every token's text is chosen here, so both sides store the same tokens.

post sends them to postern-api on 127.0.0.1:PORT over one keep-alive
connection, one token per request (the platform's usual call), each
answer read before the next request is sent: first every small token,
then every big one.  Bodies are encoded before the clock starts.  Prints
"SMALL_SECONDS BIG_MS..." (the wall time of all the small requests, then
the time of each big request); any answer but 201 is an error.
"""
import glob
import http.client
import json
import sys
import time


def prepare(out, rnd, n, big_rcpts, big_n):
    small = [{"from": "bench@abakus.no", "token": f"api-{rnd}-small-{i:08d}-0123456789",
              "recipients": [f"r{i}@example.org"]} for i in range(n)]
    with open(f"{out}/small.json", "w") as f:
        json.dump(small, f)
    rcpts = [f"member{j:05d}@example.org" for j in range(big_rcpts)]
    for i in range(big_n):
        with open(f"{out}/big-{i}.json", "w") as f:
            json.dump([{"from": "bench@abakus.no", "token": f"api-{rnd}-big-{i:04d}-0123456789",
                        "recipients": rcpts}], f)


def post(out, port, key):
    small = [json.dumps(t).encode() for t in json.load(open(f"{out}/small.json"))]
    big = [json.dumps(json.load(open(p))[0]).encode()
           for p in sorted(glob.glob(f"{out}/big-*.json"))]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def one(body):
        conn.request("POST", "/v1/tokens", body=body, headers=headers)
        r = conn.getresponse()
        answer = r.read()
        if r.status != 201 or r.getheader("Connection", "").lower() == "close":
            sys.exit(f"POST /v1/tokens: {r.status} {answer[:200]!r}")

    t0 = time.perf_counter()
    for body in small:
        one(body)
    small_secs = time.perf_counter() - t0
    big_ms = []
    for body in big:
        t0 = time.perf_counter()
        one(body)
        big_ms.append((time.perf_counter() - t0) * 1000)
    conn.close()
    print(f"{small_secs:.4f}", " ".join(f"{ms:.2f}" for ms in big_ms))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7]))
    else:
        post(sys.argv[2], int(sys.argv[3]), sys.argv[4])
