"""The typed commands the grammar produces, and what every handler shares: session
states, refusals, message sets.

Handlers live in commands_*.py as `async def handler(session, command) -> str | None`;
they return the text of the tagged OK (None: "<NAME> completed") or raise Refusal for a
tagged NO or BAD. They never write the tagged line themselves, so the session alone
decides the order of untagged updates and the tagged completion (RFC 3501 7.4.1).
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailserver.auth.realm import IMailUser
from mailserver.interfaces import IMailboxView, IUserStore, MessageInfo

#: RFC 3501 9 atom-specials (and CTL), for quoting names in responses.
ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0, 32)) | {127}


# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSet:
    """RFC 3501 9 sequence-set: ranges of numbers; None stands for `*`.

    `*:4` and `4:*` are both valid (a range is unordered), and so is `*:*`.
    """

    ranges: tuple[tuple[int | None, int | None], ...]

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """(low, high) pairs with `*` replaced by `largest` (the message count for
        sequence numbers, the highest UID for UIDs), each pair ordered."""
        out = []
        for a, b in self.ranges:
            lo = largest if a is None else a
            hi = largest if b is None else b
            out.append((min(lo, hi), max(lo, hi)))
        return out

    def __str__(self) -> str:
        def one(n: int | None) -> str:
            return "*" if n is None else str(n)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


@dataclass(frozen=True)
class Section:
    """A BODY[...] section (RFC 3501 6.4.5): part numbers, then the text spec.

    spec is "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME".
    """

    part: tuple[int, ...] = ()
    spec: str = ""
    fields: tuple[str, ...] = ()

    def label(self) -> str:
        """How the section is named in the FETCH response."""
        bits = [".".join(str(p) for p in self.part)] if self.part else []
        if self.spec:
            bits.append(self.spec)
        text = ".".join(bits)
        if self.fields:
            text += " (" + " ".join(quote_if_needed(f) for f in self.fields) + ")"
        return text


@dataclass(frozen=True)
class FetchAtt:
    """One FETCH data item. name is upper case: ENVELOPE, FLAGS, INTERNALDATE, RFC822,
    RFC822.HEADER, RFC822.SIZE, RFC822.TEXT, BODY, BODYSTRUCTURE, UID, or BODY[] for
    BODY[section]<partial> (with `section`, `peek` and `partial` set)."""

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    @property
    def sets_seen(self) -> bool:
        """RFC 3501 6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \\Seen."""
        return (self.name in ("BODY[]", "BINARY[]") and not self.peek) or self.name in (
            "RFC822", "RFC822.TEXT")  # RFC 3516 4.2: BINARY[] like BODY[]

    def label(self) -> str:
        if self.name not in ("BODY[]", "BINARY[]", "BINARY.SIZE"):
            return self.name
        assert self.section is not None
        text = f"{self.name.rstrip('[]')}[{self.section.label()}]"
        if self.partial is not None:
            text += f"<{self.partial[0]}>"
        return text


@dataclass(frozen=True)
class SearchKey:
    """A leaf of the search program: op upper case (RFC 3501 6.4.4), value typed:
    bytes for strings, (field, bytes) for HEADER, datetime.date, int, SequenceSet,
    a flag str for KEYWORD/UNKEYWORD, None for flag keys."""

    op: str
    value: Any = None


@dataclass(frozen=True)
class SearchAnd:
    keys: tuple[Any, ...]


@dataclass(frozen=True)
class SearchOr:
    left: Any
    right: Any


@dataclass(frozen=True)
class SearchNot:
    key: Any


SearchProgram = SearchKey | SearchAnd | SearchOr | SearchNot


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """Every command has a tag; `name` is the upper-case command word as dispatched."""

    tag: str
    name: str


@dataclass(frozen=True)
class Simple(Command):
    """Commands without arguments: CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT
    EXPUNGE IDLE NAMESPACE."""


@dataclass(frozen=True)
class Login(Command):
    user: bytes
    password: bytes


@dataclass(frozen=True)
class Authenticate(Command):
    mechanism: str
    #: SASL-IR (RFC 4959): the initial response as sent (base64 or "="), or None.
    initial: bytes | None


@dataclass(frozen=True)
class Qresync:
    """SELECT's QRESYNC parameter (RFC 7162 3.2.5): what the client knows."""

    uid_validity: int
    modseq: int
    known_uids: SequenceSet | None = None
    #: seq-match-data: (known sequence numbers, their UIDs).
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class SelectParams:
    """SELECT/EXAMINE parameters (RFC 4466): CONDSTORE, QRESYNC (RFC 7162)."""

    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True)
class MailboxCommand(Command):
    """SELECT EXAMINE CREATE DELETE SUBSCRIBE UNSUBSCRIBE: one mailbox argument."""

    mailbox: str
    #: CREATE ... (USE (\\Sent)) (RFC 6154 5.2): requested special-use attributes.
    use: tuple[str, ...] = ()
    #: SELECT/EXAMINE (CONDSTORE) / (QRESYNC (...)) (RFC 7162).
    select: SelectParams = SelectParams()


@dataclass(frozen=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True)
class ListCommand(Command):
    """LIST and LSUB; with RFC 5258 selection and return options where we parse them."""

    reference: str
    pattern: str
    select: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append(Command):
    mailbox: str
    flags: tuple[str, ...]
    date: str | None
    message: bytes | bytearray  # bytearray: a big literal collected apart (server.py)


@dataclass(frozen=True)
class Fetch(Command):
    uid: bool
    sequence: SequenceSet
    items: tuple[FetchAtt, ...]
    #: RFC 7162 3.1.4.1 CHANGEDSINCE and 3.2.6 VANISHED modifiers.
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True)
class Store(Command):
    uid: bool
    sequence: SequenceSet
    mode: str  # "+", "-" or "="
    silent: bool
    flags: tuple[str, ...]
    #: RFC 7162 3.1.3 UNCHANGEDSINCE modifier.
    unchanged_since: int | None = None


@dataclass(frozen=True)
class Copy(Command):
    """COPY and MOVE (RFC 6851)."""

    uid: bool
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Search(Command):
    uid: bool
    charset: str | None
    program: SearchProgram


@dataclass(frozen=True)
class UidExpunge(Command):
    sequence: SequenceSet


@dataclass(frozen=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id(Command):
    params: tuple[tuple[str, str | None], ...] | None = field(default=None)


def quote_if_needed(text: str) -> str:
    if text and all(ord(c) < 128 and ord(c) not in ATOM_SPECIALS for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- session states and refusals ---------------------------------------------------------


class State(enum.Enum):
    """RFC 3501 3: the session states."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


ANY = frozenset(State) - {State.LOGOUT}
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


@dataclass(frozen=True, eq=False)
class Account:
    """What exists once a session is authenticated (RFC 3501 3.2): who, and their
    folders. Set by LOGIN/AUTHENTICATE, never changed afterwards."""

    user: IMailUser
    store: IUserStore


@dataclass(eq=False)
class Selected:
    """What exists only while a mailbox is selected (RFC 3501 3.3): made by a
    successful SELECT/EXAMINE, gone at CLOSE, UNSELECT, a failed SELECT, or logout."""

    #: The mailbox name as the client gave it (after modified UTF-7 checks).
    name: str
    view: IMailboxView
    #: The keywords the client was told of (FLAGS at SELECT, or since).
    announced_keywords: set[str] = field(default_factory=set)
    #: Stops the store's watch on the folder; set only during IDLE.
    unwatch: Callable[[], None] | None = None

    @property
    def read_only(self) -> bool:
        """EXAMINE (RFC 3501 6.3.2): no flag changes, no expunges."""
        return bool(self.view.read_only)


#: A handler's return value when it has sent its tagged completion itself (LOGOUT,
#: STARTTLS) or sends it later (IDLE, at DONE).
ANSWERED = "\0answered"


class Refusal(Exception):
    """A tagged NO or BAD, with an optional response code (RFC 3501 7.1, RFC 5530)."""

    def __init__(self, status: str, text: str, code: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code

    def line(self, tag: str) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{tag} {self.status} {code}{self.text}\r\n".encode("utf-8", "replace")


def no(text: str, code: str = "") -> Refusal:
    return Refusal("NO", text, code)


def bad(text: str, code: str = "") -> Refusal:
    return Refusal("BAD", text, code)


def sequence_indexes(messages: Sequence[MessageInfo], sequence: SequenceSet,
                     uid: bool) -> list[int]:
    """0-based indexes into `messages` of the messages a set names, ascending, once.

    Sequence numbers (RFC 3501 6.4.8 / 9): `*` is the last message; a number above the
    message count is a client error (BAD), as Dovecot answers; `*` in an empty mailbox
    names nothing. UIDs: `*` is the highest UID; UIDs that do not exist are ignored (a
    range beyond the highest UID still names the highest, RFC 3501 6.4.8).
    """
    count = len(messages)
    picked: set[int] = set()
    if not uid:
        for (a, b), (lo, hi) in zip(sequence.ranges, sequence.resolve(count), strict=True):
            if count == 0 and (a is None or b is None):
                continue
            if hi > count:
                raise bad("invalid message sequence number", "CLIENTBUG")
            picked.update(range(lo - 1, hi))
        return sorted(picked)
    if count == 0:
        return []
    largest = messages[-1].uid
    for lo, hi in sequence.resolve(largest):
        start = bisect.bisect_left(messages, lo, key=_uid)
        end = bisect.bisect_right(messages, hi, key=_uid)
        picked.update(range(start, end))
    return sorted(picked)


def _uid(info: MessageInfo) -> int:
    return info.uid


def index_of_uid(messages: Sequence[MessageInfo], uid: int) -> int | None:
    """0-based index of the message with this UID, or None."""
    i = bisect.bisect_left(messages, uid, key=_uid)
    if i < len(messages) and messages[i].uid == uid:
        return i
    return None


def uid_set_text(uids: Sequence[int]) -> str:
    """A compact UID set for COPYUID/APPENDUID (RFC 4315 3): `4:7,9`, order kept."""
    parts: list[str] = []
    start = prev = None
    for n in uids:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)
