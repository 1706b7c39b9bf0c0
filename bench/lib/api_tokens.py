"""api_tokens.py - token registrations for bench/api.sh.

    api_tokens.py prepare DIR ROUND N BIG_RCPTS BIG_N
    api_tokens.py post DIR PORT KEY CONNS...

prepare writes the tokens both sides of a round register, as JSON that
`spoolctl token import` reads and POST /v1/tokens takes alike:
DIR/small.json (N tokens of one recipient each) and DIR/big-I.json for I
in 0..BIG_N-1 (one token of BIG_RCPTS recipients each, one array each).
Every token's text is chosen here, so both sides store the same tokens.

post sends them to postern-api on 127.0.0.1:PORT, one token per request
(the platform's usual call), over keep-alive connections, each answer
read before that connection's next request.  The small tokens are cut
in as many equal slices as CONNS are given; slice K goes over CONNS[K]
connections at once (threads: a platform's workers), the next slice
only when it is done.  Then the big tokens, one after the other on one
connection.  Bodies are encoded before the clock starts.  Prints the
wall seconds of each slice, then the milliseconds of each big request;
any answer but 201 is an error.
"""
import glob
import http.client
import json
import sys
import threading
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


class Conn:
    def __init__(self, port, key):
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.error = None

    def post(self, body):
        self.http.request("POST", "/v1/tokens", body=body, headers=self.headers)
        r = self.http.getresponse()
        answer = r.read()
        if r.status != 201 or r.getheader("Connection", "").lower() == "close":
            raise RuntimeError(f"POST /v1/tokens: {r.status} {answer[:200]!r}")

    def post_all(self, bodies):
        try:
            for body in bodies:
                self.post(body)
        except Exception as e:      # noqa: BLE001  (reported by the main thread)
            self.error = e


def post(out, port, key, conns):
    small = [json.dumps(t).encode() for t in json.load(open(f"{out}/small.json"))]
    big = [json.dumps(json.load(open(p))[0]).encode()
           for p in sorted(glob.glob(f"{out}/big-*.json"))]
    times = []
    per = len(small) // len(conns)
    for k, c in enumerate(conns):
        part = small[k * per:(k + 1) * per]
        workers = [Conn(port, key) for _ in range(c)]
        threads = [threading.Thread(target=w.post_all, args=(part[i::c],))
                   for i, w in enumerate(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times.append(f"{time.perf_counter() - t0:.4f}")
        for w in workers:
            if w.error:
                sys.exit(str(w.error))
            w.http.close()
    one = Conn(port, key)
    for body in big:
        t0 = time.perf_counter()
        one.post(body)
        times.append(f"{(time.perf_counter() - t0) * 1000:.2f}")
    one.http.close()
    print(" ".join(times))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7]))
    else:
        post(sys.argv[2], int(sys.argv[3]), sys.argv[4], [int(c) for c in sys.argv[5:]])
