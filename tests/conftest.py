"""Shared fixtures: the real server on loopback, with real users."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# bench/ports.py allocates the ports of the programs tests start; bench/*_instance.py
# start Postfix and Dovecot.
sys.path.append(str(Path(__file__).parents[1] / "bench"))

from server_harness import PASSWORD, USERS, RunningServer, make_server  # noqa: E402

__all__ = ["PASSWORD", "USERS"]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """make_server(**overrides) for tests that need their own config; all stopped after."""
    started: list[RunningServer] = []

    def factory(name: str = "server", users: tuple[str, ...] = USERS,
                **overrides: Any) -> RunningServer:
        server = make_server(tmp_path / name, start=False, **overrides)
        for user in users:
            server.add_user(user, PASSWORD)
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server per test module with alice, bob and carol; tests must not break it."""
    running = make_server(tmp_path_factory.mktemp("srv"), start=False)
    for user in USERS:
        running.add_user(user, PASSWORD)
    running.start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _reset_store_notifier() -> Iterator[None]:
    """In-process IMAP session tests that end without a disconnect leave inotify watches
    behind; trial tests after them would find the reactor unclean."""
    yield
    if "mailserver.store.notify" in sys.modules:
        sys.modules["mailserver.store.notify"].reset_default_notifier()


@pytest.fixture(autouse=True)
def _no_stray_reactor_timers(request: pytest.FixtureRequest) -> Iterator[None]:
    """A plain pytest test never runs the reactor, so a timer it leaves behind (a
    session's idle timeout on a StringTransport) could only fire, or be found by trial's
    unclean-reactor check, inside some later trial test that happens to share this
    process: with four workers by file, any of them. Cancel such leftovers at once."""
    yield
    from twisted.trial import unittest as trial_unittest

    if isinstance(getattr(request, "instance", None), trial_unittest.TestCase):
        return  # trial checks its own tests' timers
    from twisted.internet import reactor

    for call in reactor.getDelayedCalls():  # type: ignore[attr-defined]
        if call.active():
            call.cancel()
