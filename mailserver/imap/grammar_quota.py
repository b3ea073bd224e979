"""Grammar of COMPRESS (RFC 4978 5) and the QUOTA commands (RFC 9208 4, 7): their
typed commands and parsers, hooked into grammar.py's table of parsers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailserver.imap.commands import Command
from mailserver.imap.grammar import Reader, mailbox_name

#: RFC 9208 4: number64, a 63-bit unsigned number (not RFC 3501's 32-bit number).
MAX_NUMBER64 = 2**63 - 1
#: Resources a SETQUOTA may name, at most: ours are two, RFC 9208 registers six.
MAX_RESOURCES = 16


@dataclass(frozen=True)
class Compress(Command):
    mechanism: str


@dataclass(frozen=True)
class QuotaRootCommand(Command):
    """GETQUOTA (`root`: a quota root's name) or GETQUOTAROOT (a mailbox name)."""

    root: str


@dataclass(frozen=True)
class SetQuota(Command):
    root: str
    limits: tuple[tuple[str, int], ...]


def _compress(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    return Compress(tag, name, r.atom().upper())  # algorithm = "DEFLATE" / atom


def _getquota(r: Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    raw = r.astring()
    if name == "GETQUOTAROOT":
        return QuotaRootCommand(tag, name, mailbox_name(raw, r))
    return QuotaRootCommand(tag, name, raw.decode("utf-8", "replace"))


def _number64(r: Reader) -> int:
    start = r.pos
    while (c := r.peek()) is not None and 0x30 <= c <= 0x39:
        r.pos += 1
    digits = r.data[start:r.pos]
    if not digits:
        raise r.fail("expected a number")
    if len(digits) > 19 or int(digits) > MAX_NUMBER64:
        raise r.fail("number out of range")
    return int(digits)


def _setquota(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """RFC 9208 7: SETQUOTA root "(" [resource SP number64 *(SP resource SP number64)] ")"."""
    r.sp()
    root = r.astring().decode("utf-8", "replace")
    r.sp()
    r.expect(b"(")
    limits: list[tuple[str, int]] = []
    while not r.at(b")"):
        if limits:
            r.sp()
        if len(limits) >= MAX_RESOURCES:
            raise r.fail("too many resources")
        resource = r.atom().upper()
        r.sp()
        limits.append((resource, _number64(r)))
    r.expect(b")")
    return SetQuota(tag, name, root, tuple(limits))


PARSERS: dict[str, Callable[[Reader, str, str, bool], Command]] = {
    "COMPRESS": _compress,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _getquota,
    "SETQUOTA": _setquota,
}
