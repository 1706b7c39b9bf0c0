"""postfix_accept.py - Postfix smtpd's durable accept rate, for bench/ingest.sh.

    /usr/bin/python3 bench/lib/postfix_accept.py WORKDIR SMTP-SOURCE-ARGS...

Starts a private Postfix 3.7 (tests/interop/postfix_instance.py) that
holds every message it accepts (smtpd: HOLD, so nothing is delivered
during the run), times `smtp-source ARGS 127.0.0.1:PORT` against it, checks
that the queue holds every message, stops it and prints the seconds.
smtpd, like postern-ingest, answers 250 only once the queue file is
fsync'd. Run as root (Postfix).
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests" / "interop")]

import postern  # noqa: E402
from postfix_instance import PostfixInstance  # noqa: E402


def main(workdir, source_args):
    messages = int(source_args[source_args.index("-m") + 1])
    port = postern.free_port()
    pf = PostfixInstance(Path(workdir) / "postfix", port, name="postfix-bench-accept",
                         relay_domains=["abakus.no"],
                         extra={"smtpd_client_restrictions": "check_client_access static:HOLD",
                                "message_size_limit": "0",
                                "smtpd_client_connection_count_limit": "0",
                                "default_process_limit": "200"})
    pf.start()
    try:
        t0 = time.monotonic()
        subprocess.run(["smtp-source", *source_args, f"127.0.0.1:{port}"], check=True,
                       capture_output=True, timeout=1800)
        secs = time.monotonic() - t0
        held = len(pf.queue())
        if held != messages:
            sys.exit(f"postfix_accept: {held} of {messages} messages in the queue")
        print(f"{secs:.3f}")
    finally:
        pf.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
