"""A throw-away Postfix instance in a temporary directory, for side-by-side benchmarks.

It never touches /etc/postfix's instance: `postfix -c DIR` with its own main.cf and
master.cf, its own queue_directory and data_directory, listening only on 127.0.0.1:PORT,
delivering `user@bench.test` with virtual(8) into a Maildir under the temp dir (fsync'd,
as Postfix always does). No DNS: no relayhost, no lookups of any kind. Must run as root
(Postfix's master starts as root and drops to mail_owner; `postfix start` insists).

    with PostfixInstance(root_dir, port) as pf:
        pf.master_pid, pf.maildir_new, pf.maillog ...
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import proctree
from instance import ServerInstance

POSTFIX = "/usr/sbin/postfix"
DOMAIN = "bench.test"
USER = "user"

# Settings a reader of bench/README.md sees verbatim; {placeholders} are filled in.
MAIN_CF = """\
# Throw-away benchmark instance (bench/postfix_instance.py). Not the system's Postfix.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.local
mydomain = bench.local
myorigin = $myhostname
mydestination =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
# 50 parallel connections from one client must not hit anvil's default of 50.
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = texthash:{config}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
maillog_file = {maillog}
maillog_file_prefixes = {root}
"""

# As Debian's master.cf, minus the optional pipe transports, smtpd on our port, and no
# chroot anywhere (the temp dir has no chroot set-up).
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(Exception):
    pass


def delivery_user() -> tuple[int, int, str]:
    """An unprivileged uid/gid for virtual(8) deliveries (it refuses uid 0)."""
    for name in ("nobody",):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid, name
        except KeyError:
            pass
    raise PostfixError("no 'nobody' user to deliver as")


class PostfixInstance(ServerInstance):
    def __init__(self, root: Path, port: int, host: str = "127.0.0.1") -> None:
        self.root = root
        self.port = port
        self.host = host
        self.config = root / "etc"
        self.queue = root / "spool"
        self.data = root / "lib"
        self.vmail = root / "vmail"
        self.maillog = root / "maillog"
        self.maildir = self.vmail / DOMAIN / USER
        self.maildir_new = self.maildir / "new"
        self.master_pid = 0

    # -- set-up -------------------------------------------------------------------------

    def write_config(self) -> None:
        uid, gid, _ = delivery_user()
        # postfix (mail_owner) and the delivery uid must traverse the temp dir.
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        p = self.root
        while p != p.parent:  # every ancestor must be traversable too
            p = p.parent
            if not os.stat(p).st_mode & 0o001:
                raise PostfixError(f"{p} is not world-traversable; use --tmpdir elsewhere")
        self.config.mkdir(exist_ok=True)
        self.queue.mkdir(exist_ok=True)
        os.chmod(self.queue, 0o755)  # owned by root; post-install makes the subdirs
        self.data.mkdir(exist_ok=True)
        pf = pwd.getpwnam("postfix")
        os.chown(self.data, pf.pw_uid, pf.pw_gid)
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        for d in (
            self.vmail,
            self.vmail / DOMAIN,
            self.maildir,
            *(self.maildir / s for s in ("cur", "new", "tmp")),
        ):
            os.chown(d, uid, gid)
            os.chmod(d, 0o700 if d.parent == self.maildir or d == self.maildir else 0o755)
        (self.config / "main.cf").write_text(self.main_cf(uid, gid))
        (self.config / "master.cf").write_text(MASTER_CF.format(listen=f"{self.host}:{self.port}"))
        (self.config / "vmailbox").write_text(f"{USER}@{DOMAIN} {DOMAIN}/{USER}/\n")
        self.maillog.touch()

    def main_cf(self, uid: int, gid: int) -> str:
        return MAIN_CF.format(
            queue=self.queue,
            data=self.data,
            domain=DOMAIN,
            vmail=self.vmail,
            config=self.config,
            uid=uid,
            gid=gid,
            maillog=self.maillog,
            root=self.root,
        )

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [POSTFIX, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and p.returncode != 0:
            raise PostfixError(
                f"postfix {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}"
                f"{self.log_tail()}"
            )
        return p

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.maillog.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n  maillog: " + "\n  maillog: ".join(lines) if lines else ""

    def start(self) -> None:
        if os.geteuid() != 0:
            raise PostfixError("the Postfix side needs root (postfix start refuses otherwise)")
        self.write_config()
        self._postfix("check")
        self._postfix("start")
        pidfile = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.master_pid = int(pidfile.read_text().split()[0])
                if proctree.pid_alive(self.master_pid):
                    break
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.05)
        else:
            raise PostfixError(f"master did not write {pidfile}{self.log_tail()}")

    # -- state --------------------------------------------------------------------------

    def queue_empty(self) -> bool:
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            d = self.queue / sub
            for _dirpath, _dirs, files in os.walk(d):
                if files:
                    return False
        return True

    def deferred_count(self) -> int:
        return sum(len(f) for _, _, f in os.walk(self.queue / "deferred"))

    # -- tear-down ----------------------------------------------------------------------

    def stop(self) -> None:
        pids = proctree.descendants(self.master_pid) if self.master_pid else []
        if self.config.exists():
            try:
                self._postfix("stop", check=False)
            except (OSError, subprocess.SubprocessError):
                pass
        proctree.reap(pids, 10)
        self.master_pid = 0
