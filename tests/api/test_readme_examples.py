"""Every ```sh block of README's "HTTP API" section, run in order with curl against one
fresh real server, must exit 0.

What a block finds: $API (the https base URL, .../api/v1), $TOKEN (a token of
alice@example.org, scope all), $PASSWORD (her password), `mailserver` on the PATH with
the server's config ($MAILSERVER_CONFIG) and a scratch directory as the working
directory. curl trusts the server's self-signed certificate and resolves its host name
to 127.0.0.1 through a .curlrc ($CURL_HOME), so the examples read as they would on a
real server, without -k. Each block runs in its own `bash -euo pipefail`.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
from http_helpers import ALL_LISTENERS  # noqa: E402
from server_harness import BIN, RunningServer, admin, make_server  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "wonderland-rabbit-hole"


def http_api_blocks(text: str) -> list[str]:
    """The ```sh blocks between "## HTTP API" and the next second-level heading."""
    start = text.index("\n## HTTP API\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)


def test_the_section_has_examples_to_run() -> None:
    blocks = http_api_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3
    assert any("mailserver token add" in b for b in blocks)
    assert any('"$API/me"' in b for b in blocks)


def test_the_block_finder_sees_only_the_section() -> None:
    text = ("## Before\n```sh\nnot this\n```\n## HTTP API\n```sh\none\n```\n```\nplain\n```\n"
            "### Sub\n```sh\ntwo\nlines\n```\n## After\n```sh\nnor this\n```\n")
    assert http_api_blocks(text) == ["one\n", "two\nlines\n"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root: Path = tmp_path_factory.mktemp("readme")
    # The Webhooks example registers $HOOK_URL, a loopback port here (allowed for it).
    running = make_server(root, listen=ALL_LISTENERS,
                          webhooks={"allowed_networks": ["127.0.0.0/8"]})
    running.add_user("alice@example.org", PASSWORD)
    # The Sending examples write to them (local recipients: delivered at once).
    running.add_user("bob@example.org", PASSWORD)
    running.add_user("carol@example.org", PASSWORD)
    # The Reading examples read alice's INBOX: one message there, as on a real server.
    with smtplib.SMTP(*running.address("smtp"), timeout=60) as smtp:
        smtp.sendmail("bob@example.org", ["alice@example.org"],
                      b"From: Bob <bob@example.org>\r\nTo: alice@example.org\r\n"
                      b"Subject: Hello\r\n\r\nHello Alice.\r\n")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def hook_url() -> Iterator[str]:
    """An application's webhook endpoint: a loopback port that accepts and answers 200."""
    with socketserver.TCPServer(("127.0.0.1", 0), _Ok) as receiver:
        thread = threading.Thread(target=receiver.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{receiver.server_address[1]}/mail-events"
        receiver.shutdown()


class _Ok(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_every_example_runs(server: RunningServer, hook_url: str, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    assert curl, "make tools installs curl"
    host = server.config["hostname"]
    certificate = server.data_dir / "tls" / "cert.pem"
    (tmp_path / ".curlrc").write_text(
        f'cacert = "{certificate}"\nresolve = "{host}:{server.ports["https"]}:127.0.0.1"\n')
    work = tmp_path / "work"
    work.mkdir()
    token = admin(server.config_path, "token", "add", "alice@example.org",
                  "--name", "readme").stdout.strip()
    env = {**os.environ, "API": f"https://{host}:{server.ports['https']}/api/v1",
           "TOKEN": token, "PASSWORD": PASSWORD, "HOOK_URL": hook_url, "CURL_HOME": str(tmp_path),
           "MAILSERVER_CONFIG": str(server.config_path),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for number, block in enumerate(http_api_blocks(README.read_text(encoding="utf-8")), 1):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (
            f"README HTTP API block {number} exited {result.returncode}:\n{block}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}")
