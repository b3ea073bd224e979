"""The systemd deployment: the server runs as its own user (uid 65534, nobody, here),
the admin tool often as root. What root left behind must be visible before the server
starts (`check-config` as the server's user, the unit's ExecStartPre), and a permission
error the server meets must name the path in its log.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from server_harness import toml_dumps

SERVICE = 65534
BIN = Path(sys.executable).parent
SOURCE = Path(__file__).resolve().parents[2]


def as_service(*args: str) -> list[str]:
    return ["setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--clear-groups", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SOURCE)}


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory the service user may traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="mailserver-deploy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(root: Path, **extra: object) -> Path:
    data = root / "data"
    data.mkdir(mode=0o700)
    os.chown(data, SERVICE, SERVICE)
    config = {"hostname": "mx.test.example", "data_dir": str(data),
              "domains": {"local": ["example.org"]}, **extra}
    path = root / "mailserver.toml"
    path.write_text(toml_dumps(config))
    return path

@contextmanager
def server_as_service(root: Path, config: Path) -> Iterator[tuple[int, Path]]:
    """`twistd mailserver` run as the service user, as systemd runs it: (the smtp
    listener's port, the server's log file) once it listens; stopped on exit."""
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            as_service(str(BIN / "twistd"), "-n", "--pidfile=", "mailserver", "--config",
                       str(config)),
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env())
    try:
        listeners = root / "data" / "run" / "listeners.json"
        deadline = time.monotonic() + 30
        while not listeners.exists():
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield json.loads(listeners.read_text())["smtp"][1], log_path
    finally:
        server.terminate()
        server.wait(15)


def root_owned_leftovers(data: Path) -> None:
    """What the admin tool as root used to leave: a 0600 users file and a 0700 Maildir,
    both root's, in a data_dir of the service user's."""
    (data / "users").write_text("alice@example.org:{PLAIN}pw\n")
    (data / "users").chmod(0o600)
    maildir = data / "mail" / "example.org" / "alice"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, mode=0o700)
    maildir.chmod(0o700)
    for path in (data / "mail", data / "mail" / "example.org"):
        os.chown(path, SERVICE, SERVICE)


def test_check_config_as_the_service_user_names_what_it_cannot_use(root: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config = write_config(root, listen={"smtp": f"tcp:{port}:interface=127.0.0.1",
                                        "imap": "tcp:0:interface=127.0.0.1"})
    data = root / "data"
    root_owned_leftovers(data)
    (data / "queue").mkdir(mode=0o700)  # root's too
    try:
        result = subprocess.run(as_service(str(BIN / "mailserver"), "--config", str(config),
                                           "check-config"),
                                capture_output=True, text=True, timeout=60, env=env())
    finally:
        busy.close()
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"data_dir: cannot write in {data}/queue (owner root, mode 0700; running as nobody)",
        f"data_dir: cannot write in Maildir {data}/mail/example.org/alice "
        "(owner root, mode 0700; running as nobody)",
        f"auth.users_file: cannot read {data}/users (owner root, mode 0600; running as nobody)",
        f"listen.smtp: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use",
        "check-config: 4 errors",
    ]


def test_check_config_as_the_service_user_reads_the_private_key(root: Path) -> None:
    key = root / "privkey.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    config = write_config(root, tls={"certificate": str(key), "private_key": str(key)})
    result = subprocess.run(as_service(str(BIN / "mailserver"), "--config", str(config),
                                       "check-config"),
                            capture_output=True, text=True, timeout=60, env=env())
    assert result.returncode == 1
    assert f"{config}: tls.private_key: cannot read {key}" in result.stderr.splitlines()


def test_check_config_as_the_service_user_passes_on_a_sound_install(root: Path) -> None:
    config = write_config(root, listen={"smtp": "tcp:0:interface=127.0.0.1"})
    added = subprocess.run([str(BIN / "mailserver"), "--config", str(config), "user", "add",
                            "--weak-ok", "alice@example.org"], input="pw\n", capture_output=True,
                           text=True, timeout=60, env=env())
    assert added.returncode == 0, added.stderr  # as root: files go to the service user
    result = subprocess.run(as_service(str(BIN / "mailserver"), "--config", str(config),
                                       "check-config"),
                            capture_output=True, text=True, timeout=60, env=env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("check-config: ok\n")


def test_a_permission_error_in_delivery_names_the_path_in_the_log(root: Path) -> None:
    config = write_config(root, listen={"smtp": "tcp:0:interface=127.0.0.1"})
    data = root / "data"
    root_owned_leftovers(data)
    os.chown(data / "users", SERVICE, SERVICE)  # the users file is fine; the Maildir not
    with server_as_service(root, config) as (port, log_path):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("bob@example.net")
            assert client.rcpt("alice@example.org")[0] == 250
            code, text = client.data(b"Subject: hi\r\n\r\nhello\r\n")
        assert (code, text) == (451, b"4.3.0 Requested action aborted: local error in "
                                     b"processing")
    logged = [line for line in log_path.read_text().splitlines()
              if "delivery to ['alice@example.org'] failed" in line]
    assert len(logged) == 1
    assert logged[0].endswith(
        f"delivery to ['alice@example.org'] failed: PermissionError: "
        f"{data}/mail/example.org/alice/cur: Permission denied")


def test_an_unreadable_users_file_defers_instead_of_bouncing(root: Path) -> None:
    """A users file root left 0600 used to make every recipient a permanent 550 5.1.1
    (user unknown): senders bounced mail for real users. Now a temporary 451, with the
    path in the log, until the operator fixes the owner."""
    config = write_config(root, listen={"smtp": "tcp:0:interface=127.0.0.1"})
    data = root / "data"
    root_owned_leftovers(data)  # users: root's, 0600
    with server_as_service(root, config) as (port, log_path):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("bob@example.net")
            assert client.rcpt("alice@example.org") == (
                451, b"4.3.0 Error: recipient lookup failed; try later")
            # Fixed while the server runs: the next RCPT is accepted.
            os.chown(data / "users", SERVICE, SERVICE)
            assert client.rcpt("alice@example.org")[0] == 250
            assert client.rcpt("nobody@example.org") == (550, b"5.1.1 Error: user unknown")
    assert f"alice@example.org: cannot read {data}/users: Permission denied" \
        in log_path.read_text()


def test_check_config_beside_the_running_server_does_not_report_its_ports(
        tmp_path: Path) -> None:
    from ports import free_port
    from server_harness import admin, make_server

    port = free_port()
    server = make_server(tmp_path / "s", listen={"smtp": f"tcp:{port}:interface=127.0.0.1"})
    try:
        result = admin(server.config_path, "check-config", check=False)
        assert result.returncode == 0, result.stderr
        assert f"  smtp         tcp:{port}:interface=127.0.0.1\n" in result.stdout
    finally:
        server.stop()
    # Stopped, the same port held by someone else is an error again.
    busy = socket.socket()
    busy.bind(("127.0.0.1", port))
    busy.listen()
    try:
        result = admin(server.config_path, "check-config", check=False)
    finally:
        busy.close()
    assert result.returncode == 1
    assert (f"listen.smtp: cannot listen on tcp:{port}:interface=127.0.0.1: address already "
            "in use") in result.stderr.splitlines()
