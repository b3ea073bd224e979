"""One way to run the real server in tests: `twistd -n mailserver` on 127.0.0.1 port 0.

The server writes where it listens to data_dir/run/listeners.json; we wait for that.
Users are added with the real admin command, so the tests go through the same files an
operator would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire import REPLY_TIMEOUT

BIN = Path(sys.executable).parent
#: The users the shared fixtures create, and their password.
USERS = ("alice@example.org", "bob@example.org", "carol@example.net")
PASSWORD = "correct horse battery staple"
SERVICES = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps", "http",
            "https")


def toml_dumps(data: dict[str, Any]) -> str:
    """Just enough TOML for our config files (scalars, lists, one level of tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    top = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append(f"\n[{k}]")
            tables.extend(f"{kk} = {value(vv)}" for kk, vv in v.items())
    return "\n".join(top + tables) + "\n"


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def admin(config_path: Path, *args: str, stdin: str | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real `mailserver` admin command."""
    result = subprocess.run(
        [str(BIN / "mailserver"), "--config", str(config_path), *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"mailserver {' '.join(args)} failed: {result.stderr}")
    return result


@dataclass
class RunningServer:
    root: Path
    config: dict[str, Any]
    config_path: Path
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    #: The services start() waits for (when configured); extended as they are built.
    wait_for: tuple[str, ...] = SERVICES

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def start(self, timeout: float = 60.0) -> RunningServer:
        listeners = self.data_dir / "run" / "listeners.json"
        if listeners.exists():
            listeners.unlink()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "mailserver", "--config",
             str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )
        log.close()
        # Every configured service that is built (see app/service.LISTENER_MAKERS).
        wanted = set(self.config.get("listen", {})) & set(self.wait_for)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                found = json.loads(listeners.read_text())
            except (OSError, ValueError):
                found = {}
            if wanted <= set(found):
                self.ports = {name: port for name, (_host, port) in found.items()}
                return self
            time.sleep(0.05)
        raise AssertionError(f"server did not listen within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash the durability tests are about."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def address(self, service: str = "smtp") -> tuple[str, int]:
        return ("127.0.0.1", self.ports[service])

    def connect(self, service: str = "smtp", timeout: float = REPLY_TIMEOUT) -> socket.socket:
        return socket.create_connection(self.address(service), timeout=timeout)

    def add_user(self, address: str, password: str = "secret") -> None:
        # --weak-ok: some tests want short passwords; the check has its own tests.
        admin(self.config_path, "user", "add", "--weak-ok", address, stdin=password + "\n")

    def add_alias(self, address: str, targets: str) -> None:
        admin(self.config_path, "alias", "add", address, targets)

    def maildir(self, address: str, folder: str = "") -> Path:
        local, _, domain = address.lower().rpartition("@")
        base = self.data_dir / "mail" / domain / local
        return base / f".{folder}" if folder else base

    def messages(self, address: str, folder: str = "") -> list[bytes]:
        """Every message in the folder's new/ and cur/, oldest first.

        By the delivery time in the name, as numbers: names do not sort as text (the
        Maildir spec's microsecond field is not zero-padded) and file times are coarse.
        """
        root = self.maildir(address, folder)
        files = sorted(
            (p for sub in ("new", "cur") if (root / sub).is_dir()
             for p in (root / sub).iterdir()),
            key=_delivery_order,
        )
        return [p.read_bytes() for p in files]

    def visible_files(self, address: str) -> list[Path]:
        root = self.maildir(address)
        return [p for sub in ("new", "cur") if (root / sub).is_dir()
                for p in (root / sub).iterdir()]


def _delivery_order(path: Path) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.M(\d+)P\d+Q(\d+)", path.name)
    assert m, f"not one of our Maildir names: {path.name}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def base_config(root: Path) -> dict[str, Any]:
    return {
        "hostname": "mx.test.example",
        "data_dir": str(root / "data"),
        # The default (0: one per CPU) starts workers; a test that wants them says so.
        "processes": 1,
        "domains": {"local": ["example.org", "example.net"]},
        "listen": {"smtp": "tcp:0:interface=127.0.0.1"},
        "limits": {},
        # Unsigned, so tests compare the bytes they sent (tests/senderauth signs).
        "dkim": {"sign": False},
    }


def make_server(root: Path, start: bool = True, **overrides: Any) -> RunningServer:
    """Write a config in `root` (with `overrides` merged in) and start the server."""
    root.mkdir(parents=True, exist_ok=True)
    config = merge(base_config(root), overrides)
    config = {k: v for k, v in config.items() if v != {}}  # no empty tables
    path = root / "mailserver.toml"
    path.write_text(toml_dumps(config))
    server = RunningServer(root=root, config=config, config_path=path,
                           data_dir=Path(config["data_dir"]))
    os.makedirs(server.data_dir, exist_ok=True)
    return server.start() if start else server
