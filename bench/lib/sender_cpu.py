"""sender_cpu.py - the benchmark behind bench/sender_cpu.sh.

Each round runs deliver.py's Postern round once per build given, in an
order reversed every other round: a fresh spool filled through ingest and
transform, then WORKERS senders of that build deliver every copy to one
smtp-sink.  Printed per build: the senders' CPU (utime + stime, every
thread) per delivery in each round and the median, in µs, with the load
average.  The other daemons come from the same build as the sender.
"""
import os
import statistics
import sys
from pathlib import Path

import deliver

WORKERS = int(os.environ.get("WORKERS", 1))


def main(builds):
    deliver.log(f"sender CPU per delivery: {deliver.MESSAGES} x {deliver.RCPTS} personalised, "
                f"{WORKERS} worker(s), {deliver.RUNS} rounds of {len(builds)} builds")
    sink, sink_port = deliver.spawn_sink()
    us = {b: [] for b in builds}
    try:
        for rnd in range(1, deliver.RUNS + 1):
            for i, b in enumerate(builds if rnd % 2 else builds[::-1]):
                os.environ["POSTERN_BUILD"] = b
                _, cpu = deliver.postern_round(rnd, WORKERS, sink_port, name=f"build{i}")
                us[b].append(cpu * 1e6)
                deliver.log(f"round {rnd}, {b}: {us[b][-1]:.0f} µs/delivery, "
                            f"load {os.getloadavg()[0]:.1f}")
    finally:
        sink.terminate()
        sink.wait()
    for b in builds:
        print(f"{b}: median {statistics.median(us[b]):.0f} µs/delivery   "
              f"({' '.join(f'{x:.0f}' for x in us[b])})")


if __name__ == "__main__":
    try:
        main([str(Path(b)) for b in sys.argv[1:]])
    finally:
        deliver.subprocess.run(["rm", "-rf", str(deliver.TMP)])
