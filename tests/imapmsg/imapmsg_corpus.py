"""The message corpus of these tests, served as our store serves it."""

from __future__ import annotations

from pathlib import Path

from mailserver.imap.message import ParsedMessage

MESSAGES = Path(__file__).resolve().parent / "messages"


def served(name: str) -> bytes:
    """A corpus message as the store serves it: LF on disk, CRLF on the wire."""
    data = (MESSAGES / name).read_bytes()
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def message(name: str) -> ParsedMessage:
    return ParsedMessage(served(name))
