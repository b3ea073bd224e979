"""IMAP fixtures: one real server for the whole package (smtp + imap + imaps on loopback),
logged-in imaplib clients, a raw line client."""

from __future__ import annotations

import imaplib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from imap_helpers import Line, RunningServer, connect, start_imap_server  # noqa: E402
from session_harness import OPEN_SESSIONS  # noqa: E402

from mailserver.store import notify  # noqa: E402


@pytest.fixture(autouse=True)
def _disconnect_sessions() -> Iterator[None]:
    """Disconnect the test's in-process sessions, and check that doing so released every
    store watch they held (a leaked watch keeps an inotify descriptor open)."""
    yield
    sessions = list(OPEN_SESSIONS)
    OPEN_SESSIONS.clear()
    for session in sessions:
        session.disconnect()
    if sessions:
        assert notify.default_notifier().watched_folders == 0


@pytest.fixture(scope="package")
def imap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_imap_server(tmp_path_factory.mktemp("imap"))
    yield server
    server.stop()


@pytest.fixture
def login(imap_server: RunningServer) -> Iterator[Callable[..., imaplib.IMAP4]]:
    clients: list[imaplib.IMAP4] = []

    def make(user: str = "alice@example.org") -> imaplib.IMAP4:
        client = connect(imap_server, user)
        clients.append(client)
        return client

    yield make
    for client in clients:
        try:
            client.logout()
        except Exception:
            pass


@pytest.fixture
def line_client(imap_server: RunningServer) -> Iterator[Callable[..., Line]]:
    opened: list[Line] = []

    def make(service: str = "imap") -> Line:
        client = Line(imap_server, service)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()
