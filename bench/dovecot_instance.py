"""A throw-away Dovecot 2.3 instance in a temporary directory, for POP3/IMAP benchmarks.

It never reads /etc/dovecot: `dovecot -F -c ROOT/dovecot.conf` with its own base_dir
(sockets, pid), state_dir, log file and passwd-file, listening only on 127.0.0.1 on
high ports picked at start. Plaintext logins are allowed without TLS (ssl = no,
disable_plaintext_auth = no): this is a loopback benchmark, exactly like ours with
`allow_plaintext_without_tls = true`. Mail is served from `mail_root/<user>/` as a
Maildir (`mail_location = maildir:<mail_root>/%n`, Maildir++ folders); point it at an
identical copy of the Maildir our server serves.

POP3:

    with DovecotInstance(root, mail_root, users={"user": "pw"}, protocols=("pop3",)) as dc:
        poplib.POP3("127.0.0.1", dc.ports["pop3"]) ...

IMAP (the same instance can serve both; `protocols=("pop3", "imap")`):

    with DovecotInstance(root, mail_root, users={"user": "pw"}, protocols=("imap",)) as dc:
        imaplib.IMAP4("127.0.0.1", dc.ports["imap"]).login("user", "pw")
        dc.master_pid  # for proctree.TreeSampler (CPU, RSS of the whole process tree)

Runs as root on this machine: the login processes run as Debian's `dovenull`, the
internals as `dovecot`, and the mail processes as the owner of mail_root. Dovecot
refuses to access mail as uid 0 (hard-coded), so when mail_root belongs to root the
instance chowns the tree to `nobody` at start (it is a throw-away copy) and makes
mail_root's ancestors traversable (like bench/postfix_instance.py). Without root
it runs everything as the current user. The Maildir index files Dovecot writes (dovecot.index*, dovecot-uidlist) go into
the Maildir, as in a normal installation; `INDEX=` could move them, but the default is
what users run. Dovecot's first login to a big Maildir builds its index; a benchmark
should log in once before timing (both servers then run warm).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import proctree
from instance import ServerInstance
from ports import free_port

DOVECOT = "/usr/sbin/dovecot"

# Settings a reader of bench/README.md sees verbatim; {placeholders} are filled in.
CONFIG = """\
# Throw-away benchmark instance (bench/dovecot_instance.py). Not the system's Dovecot.
protocols = {protocols}
base_dir = {run_dir}
state_dir = {root}/state
instance_name = bench-{port_tag}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 1M
auth_cache_ttl = 1 hour
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:{mail_root}/%n
mail_uid = {mail_uid}
mail_gid = {mail_gid}
mail_privileged_group =
pop3_uidl_format = %08Xu%08Xv
# 100 parallel benchmark connections from 127.0.0.1 must not hit per-IP limits.
mail_max_userip_connections = 1000

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={mail_root}/%n
}}
{services}
"""

SERVICE = """\
service {proto}-login {{
  inet_listener {proto} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {proto}s {{
    port = 0
  }}
}}
"""


class DovecotError(Exception):
    pass


class DovecotInstance(ServerInstance):
    def __init__(self, root: Path, mail_root: Path,
                 users: Mapping[str, str] | None = None,
                 protocols: Iterable[str] = ("pop3", "imap"),
                 host: str = "127.0.0.1") -> None:
        self.root = root
        self.mail_root = mail_root
        self.users = dict(users or {"user": "pw"})
        self.protocols = tuple(protocols)
        unknown = set(self.protocols) - {"pop3", "imap"}
        if unknown:
            raise DovecotError(f"unsupported protocols: {sorted(unknown)}")
        self.host = host
        self.config = root / "dovecot.conf"
        self.log = root / "dovecot.log"
        self.ports: dict[str, int] = {}
        self.run_dir = root / "run"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def master_pid(self) -> int:
        return self.proc.pid if self.proc else 0

    # -- set-up -------------------------------------------------------------------------

    def _accounts(self) -> tuple[str, str, str, int, int]:
        """internal user, internal group, login user, mail uid, mail gid."""
        self.mail_root.mkdir(parents=True, exist_ok=True)
        st = os.stat(self.mail_root)
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid()).pw_name
            group = _group_name(os.getegid())
            return me, group, me, os.geteuid(), os.getegid()
        try:
            pwd.getpwnam("dovecot")
            pwd.getpwnam("dovenull")
        except KeyError:
            raise DovecotError("users dovecot and dovenull missing: install dovecot-core") from None
        uid, gid = st.st_uid, st.st_gid
        if uid == 0:
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            _chown_tree(self.mail_root, uid, gid)
            _check_traversable(self.mail_root)
        return "dovecot", "dovecot", "dovenull", uid, gid

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("run", "state"):
            (self.root / sub).mkdir(exist_ok=True)
        # Unix socket paths are limited to 107 bytes (sun_path); under a deep temp dir
        # (pytest-xdist's popen-gwN level) base_dir/token-login/imap-urlauth is longer.
        self.run_dir = self.root / "run"
        if len(str(self.run_dir)) > 48:
            self.run_dir = Path(tempfile.mkdtemp(prefix="dovecot-run-", dir="/tmp"))
            self.run_dir.chmod(0o755)  # like a plain mkdir: the login processes look in
        internal_user, internal_group, login_user, uid, gid = self._accounts()
        self.ports = {proto: free_port(self.host) for proto in self.protocols}
        services = "".join(SERVICE.format(proto=p, port=self.ports[p]) for p in self.protocols)
        text = CONFIG.format(
            protocols=" ".join(self.protocols), root=self.root, mail_root=self.mail_root,
            run_dir=self.run_dir,
            internal_user=internal_user, internal_group=internal_group,
            login_user=login_user, mail_uid=uid, mail_gid=gid, services=services,
            port_tag="-".join(str(p) for p in self.ports.values()),
        )
        self.config.write_text(text)
        lines = "".join(f"{name}:{{PLAIN}}{password}::::::\n"
                        for name, password in self.users.items())
        passwd = self.root / "passwd"
        passwd.write_text(lines)
        os.chmod(passwd, 0o644)  # read by the auth process (runs as root, but be safe)
        for name in self.users:
            for sub in ("cur", "new", "tmp"):
                path = self.mail_root / name / sub
                if not path.exists():
                    path.mkdir(parents=True)
                    os.chown(path, uid, gid)
                    os.chown(path.parent, uid, gid)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n  dovecot: " + "\n  dovecot: ".join(lines) if lines else ""

    def start(self) -> None:
        if not os.path.exists(DOVECOT):
            raise DovecotError(f"{DOVECOT} missing: install dovecot-core, -pop3d, -imapd")
        self.write_config()
        check = subprocess.run([DOVECOT, "-c", str(self.config), "-n"],
                               capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise DovecotError(f"dovecot -n: {check.stderr.strip()}")
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=self.root, start_new_session=True,
        )
        for proto, port in self.ports.items():
            if not self._wait_greeting(port, 30):
                err = b""
                if self.proc.poll() is not None and self.proc.stderr is not None:
                    err = self.proc.stderr.read()
                raise DovecotError(f"dovecot {proto} did not come up on {self.host}:{port}: "
                                   f"{err.decode(errors='replace').strip()}{self.log_tail()}")

    def _wait_greeting(self, port: int, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, port), timeout=1) as s:
                    s.settimeout(5)
                    if s.recv(512)[:4] in (b"+OK ", b"* OK"):
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    # -- tear-down ----------------------------------------------------------------------

    def stop(self) -> None:
        if self.proc is None:
            return
        proctree.terminate(self.proc)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        if self.run_dir != self.root / "run":
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """chown -R, without following symlinks (the tree is our own throw-away copy)."""
    os.chown(top, uid, gid)
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _check_traversable(path: Path) -> None:
    """The mail processes (not root) must reach mail_root: open up our own temp dirs
    up to the first world-traversable ancestor; refuse if a system dir is closed."""
    for p in path.resolve().parents:
        if os.stat(p).st_mode & 0o001:
            continue
        if str(p).startswith(("/tmp/", "/var/tmp/")) or p.name.startswith("tmp"):
            os.chmod(p, os.stat(p).st_mode | 0o711)
        else:
            raise DovecotError(f"{p} is not world-traversable; use a --tmpdir elsewhere")


def _group_name(gid: int) -> str:
    import grp
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


if __name__ == "__main__":  # smoke test: log in once over POP3 and IMAP
    import imaplib
    import poplib
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        with DovecotInstance(base / "dovecot", base / "mail", {"user": "pw"}) as dc:
            pop = poplib.POP3(dc.host, dc.ports["pop3"])
            pop.user("user")
            pop.pass_("pw")
            print("pop3", dc.ports["pop3"], pop.stat(), pop.capa())
            pop.quit()
            imap = imaplib.IMAP4(dc.host, dc.ports["imap"])
            imap.login("user", "pw")
            print("imap", dc.ports["imap"], imap.select("INBOX"))
            imap.logout()
