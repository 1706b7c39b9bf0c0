"""memwatch.py - peak memory of a process tree, for bench/memory.sh.

    memwatch.py ROOT_PID OUT_FILE [INTERVAL_S]

Every INTERVAL_S (0.05) seconds, finds ROOT_PID and all its descendants
(through /proc/PID/task/TID/children) and reads /proc/PID/status of each:
VmHWM (the kernel's own peak of VmRSS), and the current RssAnon and
RssFile, whose largest sampled values it keeps.  RssFile counts the pages
of the LMDB map the process touched (page cache shared with every other
process and reclaimable), RssAnon its own heap and stacks.  VmHWM is read
on every pass, so the value kept is the one of the last pass before the
process ended.  Rewrites OUT_FILE on every pass (write then rename), one
line per process ever seen:

    pid name vmhwm_kib rssanon_max_kib rssfile_max_kib

Also writes OUT_FILE.pids, the pids seen, so the caller can stop by pid
any child its supervisor left behind.  Stops on SIGTERM or when ROOT_PID
is gone.
"""
import os
import signal
import sys
import time

root = int(sys.argv[1])
out = sys.argv[2]
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
seen = {}          # pid -> [name, hwm, anon, file]
running = True


def stop(_sig, _frame):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)


def tree(pid):
    pids = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    pids.extend(tree(int(child)))
    except OSError:
        pass
    return pids


def name_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        return os.path.basename(argv[0].decode(errors="replace")) or "?"
    except OSError:
        return "?"


def sample(pid):
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "RssAnon", "RssFile"):
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return None
    return values if len(values) == 3 else None


def write():
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        for pid, (name, hwm, anon, fil) in sorted(seen.items()):
            f.write(f"{pid} {name} {hwm} {anon} {fil}\n")
    os.replace(tmp, out)
    with open(out + ".pids.tmp", "w") as f:
        f.write("".join(f"{pid}\n" for pid in sorted(seen)))
    os.replace(out + ".pids.tmp", out + ".pids")


while running and os.path.exists(f"/proc/{root}"):
    for pid in tree(root):
        v = sample(pid)
        if v is None:
            continue
        rec = seen.get(pid)
        if rec is None:
            rec = seen[pid] = [name_of(pid), 0, 0, 0]
        rec[1] = max(rec[1], v["VmHWM"])
        rec[2] = max(rec[2], v["RssAnon"])
        rec[3] = max(rec[3], v["RssFile"])
    write()
    time.sleep(interval)
write()
