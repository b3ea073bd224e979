"""A shared file system for cluster tests: an sshd on a loopback port and sshfs mounts of
one of its directories, standing in for NFS (the kernel here has no NFS client).

Everything is made by the test and thrown away after: a host key, a client key that is
the only authorised one, an sshd_config that listens on 127.0.0.1 only, runs sftp inside
sshd (internal-sftp) and reads no system file. Needs root (sshd, FUSE mounts) and the
Debian packages openssh-server and sshfs (the Makefile's `tools` target).

Mounts use the options an NFS deployment of the store needs (docs/decisions/0039): no
attribute, name or directory caching, no page cache (direct_io), synchronous writes, so
one node sees another's renames, appends and unlinks at once:

    sshfs -o dir_cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0,
             direct_io,sshfs_sync,noforget,...

Reused by the multi-node rig: `SshfsServer(workdir)`, `.start()`, `.mount(remote_dir,
mountpoint)` as often as needed, `.stop()` (unmounts all, stops sshd). With network
namespaces: `SshfsServer(workdir, host=ADDRESS_IN_NS, netns="storage")` runs the sshd
in that namespace, and `.mount(remote, mountpoint, netns="node1")` runs sshfs with the
node's network. Both enter only the network namespace (`nsenter --net=`), not `ip netns
exec`, which also makes a private mount namespace: a FUSE mount made there would be
invisible to the node's server process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ports import free_port

#: The mount options: no caching anywhere (what NFS needs with `noac` / actimeo=0).
#: noforget: FUSE invents inode numbers (SFTP has none) and, without it, may give a
#: directory a new one after forgetting it, which the store takes for a folder deleted
#: and made again (FolderState.refresh).
MOUNT_OPTIONS = ("dir_cache=no", "attr_timeout=0", "entry_timeout=0", "negative_timeout=0",
                 "direct_io", "sshfs_sync", "noforget")
SSH_OPTIONS = ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
               "LogLevel=ERROR", "BatchMode=yes", "ServerAliveInterval=5")


def available() -> str | None:
    """Why sshfs tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (sshd, FUSE)"
    for tool in ("sshfs", "ssh-keygen", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} missing (make tools)"
    if not Path("/usr/sbin/sshd").exists():
        return "/usr/sbin/sshd missing (make tools)"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse missing"
    return None


def in_netns(netns: str | None) -> list[str]:
    """The command prefix that runs in network namespace `netns` (None: here), keeping
    the mount namespace (mounts stay visible to every process)."""
    return ["nsenter", f"--net=/run/netns/{netns}"] if netns else []


class SshfsServer:
    """One sshd serving sftp, and the sshfs mounts made of it."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None,
                 netns: str | None = None) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.netns = netns
        self.mounts: list[Path] = []
        self._sshd: subprocess.Popen[bytes] | None = None

    def _prefix(self) -> list[str]:
        return in_netns(self.netns)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "sshd.pid").unlink(missing_ok=True)
        for name in ("host_key", "client_key"):
            key = self.workdir / name
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                                str(key)], check=True)
        (self.workdir / "authorized_keys").write_bytes(
            (self.workdir / "client_key.pub").read_bytes())
        os.chmod(self.workdir / "authorized_keys", 0o600)
        config = self.workdir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.host}:{self.port}",
            f"HostKey {self.workdir / 'host_key'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "Subsystem sftp internal-sftp", "MaxStartups 100", "MaxSessions 100", ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
        log = open(self.workdir / "sshd.log", "ab")
        self._sshd = subprocess.Popen([*self._prefix(), "/usr/sbin/sshd", "-D", "-e", "-f",
                                       str(config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._sshd.poll() is not None:
                raise RuntimeError("sshd exited: "
                                   + (self.workdir / "sshd.log").read_text()[-2000:])
            if self.netns:  # sshd writes its pid file once it listens
                if (self.workdir / "sshd.pid").exists():
                    return
                time.sleep(0.05)
                continue
            try:
                socket.create_connection((self.host, self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on {self.host}:{self.port}")

    def mount(self, remote_dir: Path, mountpoint: Path, netns: str | None = None) -> Path:
        """Mount `remote_dir` (a directory of the sshd's host) at `mountpoint`, as a node
        in `netns` (None: here) would."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        options = [*MOUNT_OPTIONS, f"port={self.port}",
                   f"IdentityFile={self.workdir / 'client_key'}", *SSH_OPTIONS]
        prefix = in_netns(netns)
        subprocess.run([*prefix, "sshfs", f"root@{self.host}:{remote_dir}", str(mountpoint),
                        "-o", ",".join(options)], check=True, timeout=30)
        self.mounts.append(mountpoint)
        return mountpoint

    def unmount(self, mountpoint: Path) -> None:
        for _ in range(50):
            done = subprocess.run(["fusermount3", "-u", str(mountpoint)],
                                  capture_output=True)
            if done.returncode == 0 or not os.path.ismount(mountpoint):
                break
            time.sleep(0.1)
        else:
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
        if mountpoint in self.mounts:
            self.mounts.remove(mountpoint)

    def stop(self) -> None:
        for mountpoint in list(self.mounts):
            self.unmount(mountpoint)
        if self._sshd is not None:
            self._sshd.terminate()
            try:
                self._sshd.wait(10)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait()
            self._sshd = None
