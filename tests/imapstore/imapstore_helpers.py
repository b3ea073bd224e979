"""Helpers shared by the IMAP store tests (a module of its own: conftest is not importable)."""

from __future__ import annotations

import os
from pathlib import Path

from mailserver.interfaces import MailboxId
from mailserver.store.maildir import unique_name
from mailserver.store.registry import drop_idle_states

ALICE = MailboxId("example.org", "alice")


def message(subject: str = "hi", body: bytes = b"Hello\n") -> bytes:
    return f"From: a@example.com\nSubject: {subject}\n\n".encode() + body


def deliver(folder: Path, subject: str = "hi", body: bytes = b"Hello\n", sub: str = "new",
            name: str | None = None, data: bytes | None = None) -> str:
    """Put a message file into folder/sub as our delivery names it (LF line ends)."""
    if data is None:
        data = message(subject, body)
    if name is None:
        name = unique_name(len(data), len(data) + data.count(b"\n"))
    tmp = folder / "tmp" / name.partition(":")[0]
    tmp.write_bytes(data)
    os.rename(tmp, folder / sub / name)
    return name


def files(folder: Path, sub: str) -> list[str]:
    return sorted(os.listdir(folder / sub))


def restart() -> None:
    """What a server restart does to the in-process caches."""
    drop_idle_states()
