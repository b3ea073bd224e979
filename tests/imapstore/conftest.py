"""Fixtures for the IMAP store tests: a real Maildir in tmp_path, made as for a new user."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from imapstore_helpers import ALICE

from mailserver.store.maildir import create_maildir
from mailserver.store.registry import drop_idle_states
from mailserver.store.userstore import UserStore


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    """Each test starts (and ends) with no shared folder state in this process."""
    drop_idle_states()
    yield
    drop_idle_states()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return create_maildir(tmp_path / "mail", ALICE)


@pytest.fixture
def store(root: Path) -> UserStore:
    return UserStore(root)
