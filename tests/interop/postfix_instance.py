"""postfix_instance.py - a private Postfix instance for tests and benchmarks.

Its own config, queue and data directories under one temporary folder,
loopback only, its own syslog_name and maillog file, every service
unchrooted (the queue directory holds no copy of /etc).  Facts learned
setting it up: Postfix refuses a config directory the system main.cf
does not list in alternate_config_directories; `postfix start` prints its
errors only to a terminal, hence `script`; post-install create-missing
before the first start.  Needs root (Postfix starts as root, drops to
user postfix).
"""
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEM_MAIN_CF = Path("/etc/postfix/main.cf")

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup     unix n - n 60 1 pickup
cleanup    unix n - n - 0 cleanup
qmgr       unix n - n 300 1 qmgr
rewrite    unix - - n - - trivial-rewrite
bounce     unix - - n - 0 bounce
defer      unix - - n - 0 bounce
trace      unix - - n - 0 bounce
verify     unix - - n - 1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp       unix - - n - - smtp
relay      unix - - n - - smtp
showq      unix n - n - - showq
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
lmtp       unix - - n - - lmtp
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def _run(*argv, check=True):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def _allow_config_dir(config_dir):
    """List config_dir in the system main.cf (created empty when Debian's
    "No configuration" install left none)."""
    if not SYSTEM_MAIN_CF.exists():
        SYSTEM_MAIN_CF.write_text("compatibility_level = 3.6\n")
    current = _run("postconf", "-h", "alternate_config_directories").stdout.strip()
    dirs = [d.strip() for d in current.replace(",", " ").split() if d.strip()]
    if str(config_dir) not in dirs:
        dirs.append(str(config_dir))
        _run("postconf", "-e", "alternate_config_directories = " + " ".join(dirs))


def _reachable_by_postfix(path):
    """Every parent of path lets others in (pytest's temp dirs are 0700)."""
    for p in [Path(path), *Path(path).parents]:
        if p.exists() and not p.stat().st_mode & 0o001:
            return False
    return True


class PostfixInstance:
    def __init__(self, root, smtpd_port, relayhost=None, transport=None, relay_domains=(),
                 extra=None, name="postfix-test"):
        # Postfix's daemons run as user postfix: its directories must be
        # reachable by that user; a private temp dir is not.
        root = Path(root)
        if not _reachable_by_postfix(root.parent):
            root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/var/tmp"))
            root.chmod(0o755)
            self.own_root = root
        else:
            self.own_root = None
        self.root = root
        self.port = smtpd_port
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "maillog"
        self.name = name
        self.relayhost = relayhost
        self.transport = transport or {}
        self.relay_domains = list(relay_domains)
        self.extra = extra or {}
        self.started = False

    def main_cf(self):
        params = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.postfix-test.invalid",
            "mydomain": "postfix-test.invalid",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "syslog_name": self.name,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.root,
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "relayhost": self.relayhost or "",
            "relay_domains": ", ".join(self.relay_domains),
            "transport_maps": f"texthash:{self.config_dir / 'transport'}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            # Retry fast: tests wait for deferred mail to go out.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_tls_security_level": "none",
            "lmtp_tls_security_level": "none",
        }
        params.update(self.extra)
        return "".join(f"{k} = {v}\n" for k, v in params.items())

    def start(self):
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        (self.config_dir / "transport").write_text(
            "".join(f"{k} {v}\n" for k, v in self.transport.items()))
        _allow_config_dir(self.config_dir)
        _run("postfix", "-c", self.config_dir, "post-install", "create-missing")
        r = _run("script", "-qc", f"postfix -c {self.config_dir} start", "/dev/null", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed:\n{r.stdout}{r.stderr}\n{self.log()}")
        self.started = True
        self.wait_listening()
        return self

    def wait_listening(self, timeout=30):
        import socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"postfix not listening on {self.port}:\n{self.log()}")

    def stop(self):
        if self.started:
            _run("postfix", "-c", self.config_dir, "stop", check=False)
            self.started = False
        if self.own_root:
            shutil.rmtree(self.own_root, ignore_errors=True)
            self.own_root = None

    def flush(self):
        _run("postqueue", "-c", self.config_dir, "-f", check=False)

    def queue(self):
        """The queue as postqueue -j describes it: one dict per message."""
        out = _run("postqueue", "-c", self.config_dir, "-j", check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def log(self):
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""
