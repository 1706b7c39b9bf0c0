"""chaoslib.py - shared helpers of the chaos tests (tests/chaos/).

`PosternRun` is the whole relay under `postern run`, with
its log, the pids of its children found in /proc, kill -9 of one of them,
and a clean stop.  The rest is reused from tests/integration (postern.py,
chain.py, smtp_client_test.py): this file only adds what they lack.
Runs under Debian's /usr/bin/python3.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import postern  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
KINDS = ("ingest", "dispatch", "transform", "sender")
# Lines as log.c writes them to stderr: "Mon DD HH:MM:SS host prog[pid]: text".
STARTED_RE = re.compile("^" + postern.LOG_STAMP
                        + r"postern\[\d+\]: (?:\w+: )?started (\S+) \(pid (\d+)\)", re.M)
READY_RE = re.compile("^" + postern.LOG_STAMP
                      + r"postern-[a-z]+\[(\d+)\]: (?:\w+: )?daemon started", re.M)
KILLED_RE = re.compile("^" + postern.LOG_STAMP
                       + r"postern\[\d+\]: (?:warning: )?(\S+) \(pid (\d+)\) killed by signal 9",
                       re.M)
BACKOFF_RE = re.compile("^" + postern.LOG_STAMP
                        + r"postern\[\d+\]: (?:\w+: )?restarting (\S+) in (\d+)s", re.M)


def sanitizer_env(leaks=True):
    """The environment of `meson test --setup=sanitize`, where not set already.

    leaks=False: no leak check at exit (for the many short spoolctl calls
    that read results; the daemons keep it).
    """
    env = dict(os.environ)
    src = postern.SOURCE
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:exitcode=86:detect_leaks=1:"
                   "strict_string_checks=1:fast_unwind_on_malloc=0")
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1:exitcode=87")
    env.setdefault("LSAN_OPTIONS", f"suppressions={src / 'tests/lsan.supp'}")
    env.setdefault("G_SLICE", "always-malloc")
    if not leaks:
        opts = [o for o in env["ASAN_OPTIONS"].split(":") if o and not o.startswith("detect_leaks=")]
        env["ASAN_OPTIONS"] = ":".join(opts + ["detect_leaks=0"])
    return env


def ctl(config, *args, timeout=120):
    """spoolctl -c config args... without leak check; stdout bytes, raises on exit != 0."""
    p = subprocess.run([str(postern.spoolctl_binary()), "-c", str(config), *map(str, args)],
                       capture_output=True, timeout=timeout, env=sanitizer_env(leaks=False))
    if p.returncode != 0:
        raise postern.SpoolctlError(f"spoolctl {' '.join(map(str, args))}: exit {p.returncode}: "
                                    f"{p.stderr[-2000:]!r}")
    return p.stdout


def proc_stat(pid):
    """(state, ppid, start time in s since boot) of pid, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19]) / CLK_TCK


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def kind_of(pid):
    """ingest | dispatch | transform | sender, from the program's name."""
    try:
        argv0 = Path(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()).name
    except (OSError, IndexError):
        return None
    m = re.fullmatch(r"postern-(ingest|dispatch|transform|sender)", argv0)
    return m.group(1) if m else None


class PosternRun:
    """`postern -c FILE run` in its own session, logging to one file."""

    def __init__(self, workdir, sections):
        self.workdir = Path(workdir)
        self.sections = sections
        self.config_path = self.workdir / "postern.ini"
        postern.write_config(self.config_path, sections)
        self.log_path = self.workdir / "postern-run.log"
        self.proc = None
        self.kills = []             # (monotonic time, name, pid)
        workers = sections.get("workers", {})
        # [workers] transforms = 0 (the default) is one per CPU.
        transforms = int(workers.get("transforms", 0)) or len(os.sched_getaffinity(0))
        self.expected = 2 + transforms + int(workers.get("count", 4))

    # ---- life -----------------------------------------------------------

    def start(self, timeout=90):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(postern.binary("tools/postern")), "-c", str(self.config_path), "run"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=sanitizer_env())
        self.wait_all_up(timeout)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=120):
        """SIGTERM to the supervisor (it passes it on), wait; kill_all() if
        it hangs.  Returns its exit code or "hung"."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = "hung"
                self.kill_all()
        return rc

    def kill_all(self):
        """SIGKILL the supervisor and its children, by pid.  The supervisor
        is frozen first so that it restarts nothing meanwhile.  (It runs in
        the test's process group, so a `meson test` timeout kills all too.)"""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGSTOP)
            for pid in self.children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass

    # ---- children -------------------------------------------------------

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines=300):
        return "\n".join(self.log().splitlines()[-lines:])

    def names(self, text=None):
        """pid -> supervisor's name (postern-sender#2 ...), from the log."""
        return {int(p): n for n, p in STARTED_RE.findall(text or self.log())}

    def children(self):
        """pid -> (kind, start time) of the supervisor's live children."""
        out = {}
        if self.proc is None or self.proc.poll() is not None:
            return out
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            st = proc_stat(entry)
            if st and st[1] == self.proc.pid and st[0] != "Z":
                kind = kind_of(entry)
                if kind:
                    out[int(entry)] = (kind, st[2])
        return out

    def ready_pids(self):
        return {int(p) for p in READY_RE.findall(self.log())}

    def all_up(self):
        kids = self.children()
        return len(kids) == self.expected and set(kids) <= self.ready_pids()

    def wait_all_up(self, timeout):
        """Every child running and past its "daemon started" line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"postern run exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if self.all_up():
                return
            time.sleep(0.2)
        raise TimeoutError(f"not every daemon up after {timeout}s: running "
                           f"{sorted(self.children().items())}, expected {self.expected}")

    def victims(self, kind, min_uptime):
        """Live children of that kind up for at least min_uptime seconds."""
        now = uptime()
        return sorted(pid for pid, (k, started) in self.children().items()
                      if k == kind and now - started >= min_uptime)

    def kill9(self, pid):
        name = self.names().get(pid, f"pid {pid}")
        os.kill(pid, signal.SIGKILL)
        self.kills.append((time.monotonic(), name, pid))
        return name

    def kills_seen(self):
        """(name, pid) of every SIGKILL the supervisor noticed."""
        return [(n, int(p)) for n, p in KILLED_RE.findall(self.log())]

    def max_backoff(self):
        return max([int(s) for _, s in BACKOFF_RE.findall(self.log())] or [0])

    def sanitizer_findings(self):
        return [l for l in self.log().splitlines() if postern.SANITIZER_RE.search(l)]


class Terminated(BaseException):
    """SIGTERM (a harness giving up): unwind, so that `finally` cleans up."""


def raise_on_sigterm():
    def handler(signum, frame):
        raise Terminated(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
