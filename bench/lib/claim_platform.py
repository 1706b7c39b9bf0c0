"""claim_platform.py - the least a platform can be, for bench/api.sh.

    claim_platform.py PORT RECIPIENT

Answers every POST (a claim of pull mode, docs/integration.md) at once
with 200 {"recipients": [RECIPIENT]}: no signature check, no lookup, so
what bench/api.sh measures is Postern's side of the round trip (libcurl,
the connection, the HTTP exchange) and not a platform's work.  HTTP/1.1
(the transform keeps its connection), one thread per connection, as
Python's http.server gives.  Runs until
SIGTERM.
"""
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, recipient = int(sys.argv[1]), sys.argv[2]
ANSWER = json.dumps({"recipients": [recipient]}).encode()


class Claim(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes: without TCP_NODELAY the
    # body waits for the ACK of the head, which the client delays (40 ms).
    disable_nagle_algorithm = True

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Claim)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
