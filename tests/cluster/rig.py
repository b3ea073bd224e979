"""The multi-node rig: network namespaces as hosts, nginx's mail proxy in front, three of
our nodes, and one Maildir tree on a "storage" host that every node mounts over sshfs.

    this process (clients) 10.231.19.254  --+
    proxy    mrig-proxy    10.231.19.100    |  nginx: mail (imap, pop3, smtp x2) + http
    n1/n2/n3 mrig-n1..3    10.231.19.1..3   +- bridge mrig-br (no uplink: nothing leaves)
    storage  mrig-storage  10.231.19.200  --+  sshd (internal-sftp) exporting the mail tree

Why sshfs is started with `nsenter --net` and not `ip netns exec` (decision 0040):
`ip netns exec` also unshares the mount namespace (so it can remount /sys for the new
network namespace), and a FUSE mount made inside it lives and dies in that private
namespace: nobody else sees it, and the sshfs daemon lingers. `nsenter --net=` switches
only the network namespace, so the mount is made in the root mount namespace (visible to
the test and to every later `ip netns exec`, which copies the root's mounts) while
sshfs's SSH connection leaves from the node's own address, as on separate machines.

Every name starts with PREFIX; a rig left over by a killed run (namespaces, links, mounts,
its processes) is removed before a new one starts, and everything is removed at the end
even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from server_harness import BIN, PASSWORD, admin, toml_dumps  # noqa: E402

PREFIX = "mrig"
SUBNET = "10.231.19"
CLIENT_ADDR = f"{SUBNET}.254"  # the bridge's own address: where this test process speaks from
PROXY_ADDR = f"{SUBNET}.100"
STORAGE_ADDR = f"{SUBNET}.200"
NODES = {"n1": f"{SUBNET}.1", "n2": f"{SUBNET}.2", "n3": f"{SUBNET}.3"}
#: Every node (and the proxy) listens on the standard ports: each host is its own netns.
PORTS = {"smtp": 25, "submission": 587, "pop3": 110, "imap": 143, "http": 80}
#: nginx's own loopback HTTP server, which spreads auth_http over the nodes.
AUTH_PORT = 9000
#: cluster.auth_secret_file's secret, sent by nginx with every auth request.
AUTH_SECRET = "rig-nginx-auth-7c1e93b05a"
#: Seconds between health checks of the nodes (cluster.health_interval).
HEALTH_INTERVAL = 1
#: Failed checks in a row before a node is down (cluster.health_failures).
HEALTH_FAILURES = 2
#: Listeners where nginx opens each connection with a PROXY header (proxy_protocol on):
#: IMAP and POP3 have no XCLIENT, so the real client's address travels this way.
PROXY_PROTOCOL = ("imap", "pop3")
USERS = ("alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org")

#: sshfs options a shared Maildir needs, the ones an NFS mount would have (actimeo=0,
#: lookupcache=none): no attribute, entry, negative-lookup, directory or page caching,
#: so a file another node renamed or created is seen at once (docs/cluster.md); writes
#: synchronous; noforget, as tests/sshfs_mount.py explains (FUSE would renumber a
#: forgotten directory, which the store takes for a folder made again).
SSHFS_OPTIONS = ("dir_cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0,"
                 "direct_io,sshfs_sync,noforget,"
                 "reconnect,ServerAliveInterval=15,ServerAliveCountMax=4")


def sh(*args: str, check: bool = True, timeout: float = 30) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result.stdout


def ns_exec(host: str) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-{host}"]


def clean_stale() -> None:
    """Remove whatever a previous (killed) rig left: our mounts, namespaces and links.

    Only our own: mounts whose source is the storage host's address, namespaces and
    links whose name starts with PREFIX-, and the processes inside those namespaces
    (every one of them was started by a rig).
    """
    for line in Path("/proc/mounts").read_text().splitlines():
        source, target, fstype = line.split()[:3]
        if fstype == "fuse.sshfs" and source.startswith(f"root@{STORAGE_ADDR}:"):
            target = target.replace("\\040", " ")
            sh("fusermount3", "-u", "-z", target, check=False)
    for name in sh("ip", "netns", "list").split():
        if not name.startswith(f"{PREFIX}-"):
            continue
        for pid in sh("ip", "netns", "pids", name, check=False).split():
            try:
                os.kill(int(pid), signal.SIGCONT)  # a stalled sshd from the stall test
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show").splitlines():
        m = re.match(r"\d+: ([^:@]+)", line)
        if m and m.group(1).startswith(f"{PREFIX}-"):
            sh("ip", "link", "del", m.group(1), check=False)


def make_network() -> None:
    bridge = f"{PREFIX}-br"
    sh("ip", "link", "add", bridge, "type", "bridge")
    sh("ip", "addr", "add", f"{CLIENT_ADDR}/24", "dev", bridge)
    sh("ip", "link", "set", bridge, "up")
    hosts = {"proxy": PROXY_ADDR, "storage": STORAGE_ADDR, **NODES}
    for host, addr in hosts.items():
        ns = f"{PREFIX}-{host}"
        sh("ip", "netns", "add", ns)
        # The host's end is eth0 inside its namespace; ours is named after the host.
        sh("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", ns, "master", bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def wait_port(addr: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((addr, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class Node:
    """One of our servers in its namespace, with its node-local data_dir."""

    name: str
    addr: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "mailserver.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def mail_dir(self) -> Path:
        return self.root / "shared"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def write_config(self, rig_root: Path) -> None:
        config = {
            "hostname": f"{self.name}.cluster.test",
            "data_dir": str(self.data_dir),
            "processes": 1,
            "domains": {"local": ["example.org"]},
            "listen": {svc: f"tcp:{port}:interface={self.addr}" for svc, port in PORTS.items()},
            # One users file for every node (an operator distributes it; here one copy).
            "auth": {"users_file": str(rig_root / "users"),
                     "aliases_file": str(rig_root / "aliases")},
            # No DNS in the rig: SPF/DMARC of the MX traffic would only temperror.
            "checks": {"enabled": False},
            # nginx asks /nginx-auth for every login: its address is not one client.
            "abuse": {"login_failures": 1000, "trusted_networks": [f"{PROXY_ADDR}/32"]},
            "dkim": {"sign": False},
        }
        nodes = ", ".join(f'{n} = "{a}"' for n, a in NODES.items())
        cluster = (f'\n[cluster]\nnode = "{self.name}"\nnodes = {{ {nodes} }}\n'
                   f'trusted_proxies = ["{PROXY_ADDR}/32"]\n'
                   f"mail_dir = {json.dumps(str(self.mail_dir))}\n"
                   f"health_interval = {HEALTH_INTERVAL}\n"
                   f"health_failures = {HEALTH_FAILURES}\n"
                   f"proxy_protocol = {json.dumps(list(PROXY_PROTOCOL))}\n"
                   # nginx proves itself to /nginx-auth (auth_http_header X-Auth-Key).
                   f"auth_secret_file = {json.dumps(str(rig_root / 'auth.secret'))}\n")
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(toml_dumps(config) + cluster)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 30) -> None:
        listeners = self.data_dir / "run" / "listeners.json"
        if listeners.exists():
            listeners.unlink()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*ns_exec(self.name), str(BIN / "twistd"), "-n", "--pidfile=", "mailserver",
                 "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n"
                                     f"{self.log()}")
            try:
                if set(PORTS) <= set(json.loads(listeners.read_text())):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not listen within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL (`ip netns exec` execs twistd, so this pid is the server's)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The `mailserver` command as an operator on this node runs it."""
        return admin(self.config_path, *args, check=check)


NGINX_CONF = """\
# The rig's proxy (docs/cluster.md explains every line).
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}

# auth_http takes one address: a local HTTP server spreads it over every node's
# /nginx-auth and skips a dead one, so logins go on when the node nginx asked is killed.
http {{
    access_log {root}/auth-access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    upstream mailserver_auth {{
{auth_servers}
    }}
    server {{
        listen 127.0.0.1:{auth_port};
        location = /nginx-auth {{
            proxy_pass http://mailserver_auth;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_connect_timeout 1s;
            proxy_read_timeout 20s;
        }}
    }}
}}

mail {{
    server_name proxy.cluster.test;
    auth_http 127.0.0.1:{auth_port}/nginx-auth;
    auth_http_header X-Auth-Key {auth_secret};
    auth_http_timeout 30s;
    proxy_pass_error_message on;
    # SMTP backends learn the client (and, after AUTH, the user) by XCLIENT.
    xclient on;

    server {{
        listen {addr}:143;
        protocol imap;
        imap_auth login plain;
        imap_capabilities IMAP4rev1 LITERAL+ SASL-IR IDLE UIDPLUS ENABLE;
{imap_extra}
    }}
    server {{
        listen {addr}:110;
        protocol pop3;
        pop3_auth plain;
        pop3_capabilities TOP USER UIDL;
{pop3_extra}
    }}
    # Submission: nginx takes AUTH itself, then XCLIENT LOGIN=user to the node's
    # submission port.
    server {{
        listen {addr}:587;
        protocol smtp;
        smtp_auth login plain;
        smtp_capabilities "SIZE 36700160" 8BITMIME ENHANCEDSTATUSCODES PIPELINING;
    }}
    # MX: no AUTH; nginx asks auth_http (Auth-Method: none) after RCPT TO.
    server {{
        listen {addr}:25;
        protocol smtp;
        smtp_auth none;
        smtp_capabilities "SIZE 36700160" 8BITMIME ENHANCEDSTATUSCODES PIPELINING;
    }}
}}
"""


def nginx_conf(root: Path, proxy_protocol: tuple[str, ...] = ()) -> str:
    servers = "\n".join(f"        server {addr}:{PORTS['http']} max_fails=1 fail_timeout=5s;"
                        for addr in NODES.values())

    def extra(service: str) -> str:
        return "        proxy_protocol on;" if service in proxy_protocol else ""

    return NGINX_CONF.format(root=root, auth_servers=servers, auth_port=AUTH_PORT,
                             auth_secret=AUTH_SECRET,
                             addr=PROXY_ADDR, imap_extra=extra("imap"),
                             pop3_extra=extra("pop3"))


@dataclass
class Rig:
    root: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sshd_pid: int = 0
    mounts: list[Path] = field(default_factory=list)

    @property
    def export(self) -> Path:
        """The storage host's exported directory (the NFS server's disk)."""
        return self.root / "storage" / "export"

    def maildir(self, address: str) -> Path:
        """A user's Maildir as the storage host holds it."""
        local, _, domain = address.partition("@")
        return self.export / domain / local

    def up(self, proxy_protocol: tuple[str, ...] = PROXY_PROTOCOL) -> None:
        clean_stale()
        make_network()
        self._storage()
        (self.root / "users").touch()
        (self.root / "aliases").touch()
        (self.root / "auth.secret").write_text(AUTH_SECRET + "\n")
        for name, addr in NODES.items():
            node = Node(name, addr, self.root / name)
            # data_dir stays node-local; cluster.mail_dir is this node's mount of the
            # storage host's tree (an NFS mount in production).
            self._mount(name, node.mail_dir)
            node.write_config(self.root)
            self.nodes[name] = node
        first = self.nodes["n1"]
        for user in USERS:
            admin(first.config_path, "user", "add", "--weak-ok", user, stdin=PASSWORD + "\n")
        for node in self.nodes.values():
            node.start()
        self._nginx(proxy_protocol)

    def _storage(self) -> None:
        storage = self.root / "storage"
        self.export.mkdir(parents=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(storage / "host_key"))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(storage / "client_key"))
        (storage / "sshd_config").write_text(
            f"ListenAddress {STORAGE_ADDR}\nPort 22\nHostKey {storage / 'host_key'}\n"
            f"AuthorizedKeysFile {storage / 'client_key.pub'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {storage / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
            "MaxStartups 50\nMaxSessions 50\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        sh(*ns_exec("storage"), "/usr/sbin/sshd", "-f", str(storage / "sshd_config"),
           "-E", str(storage / "sshd.log"))
        wait_port(STORAGE_ADDR, 22)
        pid_file = storage / "sshd.pid"
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip().isdigit():
            # sshd listens before it writes its pid file
            assert time.monotonic() < deadline, f"{pid_file}: no pid"
            time.sleep(0.05)
        self.sshd_pid = int(pid_file.read_text())

    def _mount(self, node: str, mount: Path) -> None:
        mount.mkdir(parents=True)
        key = self.root / "storage" / "client_key"
        sh("nsenter", f"--net=/run/netns/{PREFIX}-{node}", "sshfs",
           f"root@{STORAGE_ADDR}:{self.export}", str(mount),
           "-o", f"IdentityFile={key},StrictHostKeyChecking=no,"
                 f"UserKnownHostsFile=/dev/null,LogLevel=ERROR,{SSHFS_OPTIONS}")
        self.mounts.append(mount)

    def _nginx(self, proxy_protocol: tuple[str, ...]) -> None:
        proxy = self.root / "proxy"
        (proxy / "tmp").mkdir(parents=True)
        conf = proxy / "nginx.conf"
        conf.write_text(nginx_conf(proxy, proxy_protocol))
        log = open(proxy / "nginx.out", "ab")
        self.procs.append(subprocess.Popen(
            [*ns_exec("proxy"), "nginx", "-p", str(proxy), "-e", str(proxy / "error.log"),
             "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT))
        log.close()
        for port in (143, 110, 587, 25):
            wait_port(PROXY_ADDR, port)

    def sftp_sessions(self) -> list[int]:
        """The storage sshd's per-connection processes (one or two per mounted node)."""
        children = sh("pgrep", "-P", str(self.sshd_pid), check=False).split()
        pids = [int(p) for p in children]
        for pid in list(pids):
            pids += [int(p) for p in sh("pgrep", "-P", str(pid), check=False).split()]
        return pids

    def auth_answer(self, user: str, protocol: str = "imap",
                    password: str = PASSWORD) -> dict[str, str]:
        """Ask /nginx-auth from the proxy's host, exactly as nginx does."""
        out = sh(*ns_exec("proxy"), "curl", "-s", "-D", "-", "-o", "/dev/null",
                 "-H", "Auth-Method: plain", "-H", f"Auth-User: {user}",
                 "-H", f"Auth-Pass: {password}", "-H", f"Auth-Protocol: {protocol}",
                 "-H", "Auth-Login-Attempt: 1", "-H", f"Client-IP: {CLIENT_ADDR}",
                 "-H", f"X-Auth-Key: {AUTH_SECRET}",
                 f"http://127.0.0.1:{AUTH_PORT}/nginx-auth")
        headers = {}
        for line in out.splitlines()[1:]:
            name, _, value = line.partition(":")
            if value:
                headers[name.strip().lower()] = value.strip()
        return headers

    def owner(self, user: str) -> str:
        """The node nginx would send this user's IMAP session to."""
        server = self.auth_answer(user).get("auth-server", "")
        names = [n for n, a in NODES.items() if a == server]
        assert names, f"/nginx-auth gave no node for {user}: {server!r}"
        return names[0]

    def down(self) -> None:
        """Tear everything down; never raises (it runs after failures too)."""
        for pid in self.sftp_sessions() if self.sshd_pid else []:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for node in self.nodes.values():
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                node.kill()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for mount in self.mounts:
            sh("fusermount3", "-u", "-z", str(mount), check=False)
        clean_stale()

    def logs(self) -> str:
        """The end of every log, for a failing assertion's message."""
        parts = [f"--- {n.name}\n{n.log()}" for n in self.nodes.values()]
        for name in ("proxy/error.log", "storage/sshd.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def have_tools() -> list[str]:
    """What the rig needs that is missing (make tools installs it): a failure, not a skip."""
    wanted = {"nginx": "nginx", "sshfs": "sshfs", "/usr/sbin/sshd": "openssh-server",
              "ip": "iproute2", "nsenter": "util-linux", "curl": "curl", "mbsync": "isync"}
    missing = [pkg for cmd, pkg in wanted.items() if not shutil.which(cmd)]
    if not Path("/usr/lib/nginx/modules/ngx_mail_module.so").exists():
        missing.append("libnginx-mod-mail")
    return missing
