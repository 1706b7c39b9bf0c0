"""one_to_many.py - one message to N recipients, each with its own copy.

From the LMTP 250 to the last copy sent to a local smtp-sink (every copy
personalised and signed by the transform, then delivered by W sender
workers), and the dispatcher's CPU seconds over that span.  Uses the
helpers of deliver.py (its chain: 64 relay connections); bench/lib/e2e.py
runs it too (one_to_many()), with an RSA-2048 key.

    N=5000 W=4 POSTERN_BUILD=build-bench /usr/bin/python3 bench/lib/one_to_many.py

Run as root or not; needs smtp-sink.  Prints one line.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "bench" / "lib"), str(ROOT / "tests" / "integration"), str(ROOT / "tests" / "interop")]
import deliver as D  # noqa: E402
import chain  # noqa: E402
import postern  # noqa: E402


def one_to_many(n, workers, sink_port, name, config=None, transforms=1):
    """(seconds from the 250 to the last copy sent, seconds from the 250 to
    every copy signed and committed, CPU seconds of the dispatcher and of
    the transform workers meanwhile)."""
    c = D.make_chain(name, sink_port, config, transforms)
    try:
        for _ in range(workers):
            c.add_sender()
        rcpts = [f"b{i}@sink.test" for i in range(n)]
        (tok,) = D.tokens(c, [rcpts])
        time.sleep(2.5)   # the dispatcher's 2 s connection grace after its start
        cpu0 = D.cpu_seconds(c.dispatch), D.cpu_seconds(*c.transforms)
        with c.ingest.client() as cl:
            cl.lhlo()
            cl.send_message(chain.lego_message(tok, subject="big"), sender=chain.OWNER)
            t0 = time.monotonic()
        signed = []

        def all_sent():
            d = D.deliveries(c)
            if not signed and sum(d.values()) == n + 1:
                signed.append(time.monotonic() - t0)
            return d["sent"] == n + 1
        postern.wait_for(all_sent, timeout=600, interval=0.05, what="every copy sent")
        return (time.monotonic() - t0, signed[0], D.cpu_seconds(c.dispatch) - cpu0[0],
                D.cpu_seconds(*c.transforms) - cpu0[1])
    finally:
        D.stop(c)


if __name__ == "__main__":
    N = int(os.environ.get("N", 5000))
    sink, port = D.spawn_sink()
    try:
        secs, _, cpu, _ = one_to_many(N, int(os.environ.get("W", 4)), port, f"big-{os.getpid()}")
        print(f"{os.environ.get('POSTERN_BUILD')}: {N} rcpts: 250 -> last sent {secs:.2f} s; "
              f"dispatcher CPU {cpu:.2f} s "
              f"(load {open('/proc/loadavg').read().split()[0]})", flush=True)
    finally:
        sink.terminate()
        sink.wait()
        # deliver.py made its scratch directory on import.
        subprocess.run(["rm", "-rf", str(D.TMP)])
