"""Fixtures for the POP3 tests (helpers in pop3_helpers.py)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pop3_helpers import put_message, start_pop3_server, wait_unlocked  # noqa: E402
from server_harness import RunningServer  # noqa: E402


@pytest.fixture(scope="session")
def pop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for all POP3 tests, plaintext refused before TLS (the production
    default); tests share it and clean alice's INBOX through the `mailbox` fixture."""
    server = start_pop3_server(tmp_path_factory.mktemp("pop3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with allow_plaintext_without_tls (as the benchmarks run)."""
    server = start_pop3_server(tmp_path_factory.mktemp("pop3plain"), plaintext=True)
    yield server
    server.stop()


@pytest.fixture
def mailbox(pop_server: RunningServer) -> Callable[..., Path]:
    """Empties alice's INBOX; `mailbox(*contents)` fills it and returns the Maildir."""
    maildir = pop_server.maildir("alice@example.org")
    wait_unlocked(maildir)  # a session a failed test left open must not leak into this one
    for sub in ("new", "cur"):
        shutil.rmtree(maildir / sub, ignore_errors=True)

    def fill(*contents: bytes) -> Path:
        for content in contents:
            put_message(maildir, content)
        return maildir

    fill()
    return fill
