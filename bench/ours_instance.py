"""Our server, started for a benchmark from a throw-away config in a temp dir.

    twistd -n --pidfile= mailserver --config ROOT/mailserver.toml

after `mailserver --config ... user add user@bench.test` (password on stdin). Mail for
the user lands in ROOT/data/mail/bench.test/user/new/, fsync'd before the 250.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import proctree
from instance import ServerInstance

DOMAIN = "bench.test"
USER = "user"

CONFIG = """\
hostname = "bench.local"
data_dir = "{data}"
processes = {processes}

[domains]
local = ["{domain}"]

[listen]
smtp = "tcp:{port}:interface={host}"
"""

LIMITS = """
[limits]
connections_per_ip = 1000
"""


class OursError(Exception):
    pass


def venv_bin(name: str) -> str:
    """The tool from the venv that runs this script (make bench: .venv/bin/python)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    repo = Path(__file__).resolve().parent.parent / ".venv" / "bin" / name
    return str(repo)


def plugin_available() -> str | None:
    """None when `twistd mailserver` exists, else why not."""
    plugin = Path(__file__).resolve().parent.parent / "twisted" / "plugins" / "mailserver_plugin.py"
    if not plugin.exists():
        return f"{plugin} does not exist yet"
    p = subprocess.run(
        [venv_bin("twistd"), "mailserver", "--help"], capture_output=True, text=True, timeout=60
    )
    if p.returncode != 0:
        return "`twistd mailserver --help` failed: " + (p.stderr or p.stdout).strip()[-500:]
    return None


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(5)
                greeting = s.recv(512)  # the banner: the server is really serving
                s.sendall(b"QUIT\r\n")
                if greeting.startswith(b"220"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


class OursInstance(ServerInstance):
    def __init__(self, root: Path, port: int, host: str = "127.0.0.1",
                 processes: int = 1, tree: str | None = None) -> None:
        self.root = root
        self.processes = processes
        #: Run the server from this source tree (PYTHONPATH) instead of the venv's.
        self.env = {**os.environ, "PYTHONPATH": tree} if tree else None
        self.port = port
        self.host = host
        self.config = root / "mailserver.toml"
        self.data = root / "data"
        self.log = root / "twistd.log"
        self.maildir = self.data / "mail" / DOMAIN / USER
        self.maildir_new = self.maildir / "new"
        self.proc: subprocess.Popen[bytes] | None = None
        self.limits = True

    @property
    def master_pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = CONFIG.format(data=self.data, domain=DOMAIN, port=self.port, host=self.host,
                             processes=self.processes)
        if self.limits:
            text += LIMITS
        self.config.write_text(text)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n  twistd: " + "\n  twistd: ".join(lines) if lines else ""

    def add_user(self) -> None:
        p = subprocess.run(
            [
                venv_bin("mailserver"),
                "--config",
                str(self.config),
                "user",
                "add",
                "--weak-ok",  # a throw-away bench password
                f"{USER}@{DOMAIN}",
            ],
            input="pw\n",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if p.returncode != 0:
            raise OursError(
                f"mailserver user add exited {p.returncode}: {(p.stderr or p.stdout).strip()[-800:]}"
            )

    def _spawn(self) -> bool:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    venv_bin("twistd"),
                    "-n",
                    "--pidfile=",
                    "mailserver",
                    "--config",
                    str(self.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=self.env,
                start_new_session=True,  # a ^C in the terminal reaches us, not it
            )
        return wait_port(self.host, self.port, 60, self.proc)

    def start(self) -> None:
        self.write_config()
        self.add_user()
        if self._spawn():
            return
        self.stop()
        # The [limits] key is the lead's; until the config knows it, run without it.
        if self.limits and "connections_per_ip" in self.log.read_text(errors="replace"):
            self.limits = False
            self.write_config()
            print("  note: ours rejected [limits] connections_per_ip; running without it")
            if self._spawn():
                return
            self.stop()
        raise OursError(f"our server did not come up on {self.host}:{self.port}{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proctree.terminate(self.proc)
        self.proc = None
