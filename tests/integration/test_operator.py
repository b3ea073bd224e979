"""What an operator sees: one clear line per mistake, exit status 1, no traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from server_harness import BIN, make_server, toml_dumps


def run_twistd(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "mailserver", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def test_bad_config_is_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml_dumps({
        "hostname": "mx.test", "data_dir": str(tmp_path / "d"), "colour": "blue",
        "limits": {"message_size": "big"}, "listen": {"smtp": "tcpx:25"},
    }))
    result = run_twistd(config, tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert f"mailserver: {config}: colour: unknown key" in output
    assert f'mailserver: {config}: limits.message_size: expected an integer, got "big"' in output
    assert "listen.smtp: not a Twisted endpoint description: 'tcpx:25'" in output


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_twistd(tmp_path / "nope.toml", tmp_path)
    assert result.returncode == 1
    assert f"mailserver: {tmp_path / 'nope.toml'}: no such config file" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_unreadable_certificate(tmp_path: Path) -> None:
    config = tmp_path / "tls.toml"
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    config.write_text(toml_dumps({
        "data_dir": str(tmp_path / "d"), "listen": {"smtp": "tcp:0:interface=127.0.0.1"},
        "tls": {"certificate": str(cert), "private_key": str(cert)},
    }))
    result = run_twistd(config, tmp_path)
    assert result.returncode == 1
    assert f"mailserver: tls.certificate: no PEM certificate in {cert}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_port_in_use(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        server = make_server(tmp_path / "s", start=False,
                             listen={"smtp": f"tcp:{port}:interface=127.0.0.1"})
        result = run_twistd(server.config_path, tmp_path)
    finally:
        busy.close()
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert (f"mailserver: listen.smtp: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "address already in use") in output
    assert "Traceback" not in output


def test_check_config(tmp_path: Path) -> None:
    server = make_server(tmp_path / "s", start=False)
    ok = subprocess.run([str(BIN / "mailserver"), "--config", str(server.config_path),
                         "check-config"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "example.org" in ok.stdout
    assert ("warning: postmaster@example.org reaches nobody (RFC 5321 4.5.1 requires it): "
            "mailserver alias add postmaster@example.org you@example.org") in ok.stderr
    server.add_user("alice@example.org", "pw")
    server.add_alias("postmaster@example.org", "alice@example.org")
    again = subprocess.run([str(BIN / "mailserver"), "--config", str(server.config_path),
                            "check-config"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    assert "postmaster@example.org" not in again.stderr
    assert "postmaster@example.net reaches nobody" in again.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('hostname = 5\n[limits]\nconnections = "x"\n')
    result = subprocess.run([str(BIN / "mailserver"), "--config", str(bad), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "hostname: expected a string, got 5" in result.stderr
    assert 'limits.connections: expected an integer, got "x"' in result.stderr


def test_sigterm_tells_sessions_421(server_factory) -> None:
    from wire import Wire

    server = server_factory("stopping")
    wire = Wire(server.address())
    wire.greet()
    assert server.proc is not None
    server.proc.terminate()
    assert wire.text() == "421 4.3.2 Service shutting down"
    assert wire.closed()
    # twistd re-raises the signal that stopped it; systemd counts SIGTERM as clean.
    assert server.proc.wait(15) in (0, -15)
