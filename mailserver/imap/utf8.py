"""UTF8=ACCEPT (RFC 6855): once a client has ENABLEd it, mailbox names travel as UTF-8
both ways instead of modified UTF-7 (RFC 3501 5.1.3), and APPEND may carry a message
with UTF-8 headers as `UTF8 (~{n})` (grammar_ext).

The store keeps names in modified UTF-7 on disk (as Dovecot does), so the session
converts at its edges: `names_from_client` on every parsed command before its handler
runs, `wire_name` where LIST, LSUB and STATUS write a name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mailserver.imap import mutf7
from mailserver.imap.commands import Command
from mailserver.imap.encode import astring
from mailserver.imap.grammar import ParseError

#: The fields of the typed commands that hold mailbox names or LIST patterns.
_NAME_FIELDS = ("mailbox", "old", "new", "reference", "pattern")


def names_from_client(command: Command) -> Command:
    """The command with its UTF-8 mailbox names (and patterns) as modified UTF-7, the
    form the store and the rest of the session know. "&" is an ordinary character in
    UTF-8 mode, so "&-" on disk; a name that is not valid UTF-8 never gets this far
    (grammar.mailbox_name refuses it). ParseError (BAD) for control characters."""
    changes: dict[str, Any] = {}
    for name in _NAME_FIELDS:
        value = getattr(command, name, None)
        if isinstance(value, str) and (not value.isascii() or "&" in value):
            changes[name] = _to_store(value, command.tag)
    patterns = getattr(command, "patterns", None)
    if isinstance(patterns, tuple) and any(not p.isascii() or "&" in p for p in patterns):
        changes["patterns"] = tuple(_to_store(p, command.tag) for p in patterns)
    return dataclasses.replace(command, **changes) if changes else command


def _to_store(name: str, tag: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        # ParseError: the session answers it as BAD, like any other malformed name.
        raise ParseError("control characters in mailbox name", tag)
    return mutf7.encode(name)


def wire_name(name: str, utf8: bool) -> bytes:
    """A store name (modified UTF-7) as a LIST/LSUB/STATUS response writes it: as it
    is, or in UTF-8 mode decoded and sent as a quoted string (RFC 6855 3: UTF-8 is
    allowed in quoted strings once enabled)."""
    if not utf8 or "&" not in name:
        return astring(name.encode("utf-8"))
    try:
        text = mutf7.decode(name)
    except ValueError:
        return astring(name.encode("utf-8"))  # not ours to fix: shown as it is stored
    raw = text.encode("utf-8")
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
