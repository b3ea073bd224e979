"""Reading what Dovecot left in a Maildir, so its users keep their UIDs (read-only).

Dovecot keeps, per Maildir folder (src/lib-storage/index/maildir/maildir-uidlist.c):

    dovecot-uidlist   version 1 (Dovecot 1.0, Courier's courierimapuiddb):
                          1 <uidvalidity> <next uid>
                          <uid> <file name>
                      version 3 (Dovecot 1.1 and later):
                          3 V<uidvalidity> N<next uid> G<mailbox guid> [<key><value>...]
                          <uid> [<key><value>...] :<file name>
                      (record keys: G message GUID, W/S sizes, P saved POP3 UIDL...;
                      version 2, of a few development releases, has a flags field
                      after the UID: the file name is then the last field)
    dovecot-keywords  "<index> <name>" lines, index i = info letter chr(ord('a') + i):
                      the same file and format flags.Keywords already reads.

and, in the user's root, `subscriptions` (src/lib-storage/list/subscription-file.c):
one name per line; Dovecot 2.3 writes a "V\\t2" line and an empty line first, and in
that version a name's hierarchy levels are separated by TAB and each level is
tab-escaped (\\001 + "1", "t", "r", "n" for \\001, TAB, CR, LF).

The file name in a uidlist record has no `:2,` info part; we key on its base (names.
base_of), so a message renamed for its flags since is still found. Nothing here writes:
uidlist.UidList takes the result over into its own file, and Dovecot's stay as they are
(rolling back to Dovecot stays possible).

Damage is never fatal and never makes a UID mean two messages (RFC 3501 2.3.1.1): a
record that cannot be read is skipped (its file gets a new UID above every UID Dovecot
used), of two records with one UID or one name the first wins, and the next UID is
above every UID seen even where the header's N says less.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mailserver.store.names import base_of

DOVECOT_UIDLIST = "dovecot-uidlist"
DOVECOT_SUBSCRIPTIONS = "subscriptions"
#: UIDs are 32-bit (RFC 3501 9: nz-number).
MAX_UID = 2**32 - 1
#: A uidlist bigger than this is not read (10 million records of 100 octets).
MAX_UIDLIST_BYTES = 1 << 30
#: What a Maildir file name in a record may not hold (nor start with ".").
_BAD_NAME = re.compile(r"[ /\t\r\x00]")
#: Warnings kept per file (a thoroughly damaged file would otherwise log a line a record).
MAX_WARNINGS = 20


@dataclass
class DovecotUidList:
    """What a dovecot-uidlist says, checked (see the module docstring)."""

    path: Path
    version: int
    validity: int
    next_uid: int
    #: The mailbox GUID of the header (G), "" if none.
    mailbox_guid: str = ""
    #: (uid, base name), ascending UIDs, each UID and each base name once.
    records: list[tuple[int, str]] = field(default_factory=list)
    #: base name -> the record's extension fields ({"G": guid, "W": "123", ...}); only
    #: records that have any.
    extensions: dict[str, dict[str, str]] = field(default_factory=dict)
    #: What was wrong with the file, one line each (at most MAX_WARNINGS, then a count).
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        elif len(self.warnings) == MAX_WARNINGS:
            self.warnings.append("further problems not listed")


class DovecotFormatError(Exception):
    """A dovecot-uidlist whose header cannot be trusted: its UIDs are no use."""


def read_uidlist(path: Path) -> DovecotUidList | None:
    """The checked contents of the dovecot-uidlist at `path`; None if there is none.

    DovecotFormatError for a file we cannot take UIDs from at all (no UIDVALIDITY, an
    unknown version): the caller starts a new UID space, as Dovecot itself would.
    PermissionError when it may not be read: the caller must not start a new one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except PermissionError:
        # Not damage: the file is there and its UIDs are good, we may not read them
        # (Dovecot's vmail owner, mode 0600). Starting a new UID space now could never
        # be undone; the open fails instead until the owner is fixed.
        raise
    except OSError as e:
        raise DovecotFormatError(f"{path}: cannot read: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_UIDLIST_BYTES:
            raise DovecotFormatError(f"{path}: {size} bytes, more than we read")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_UIDLIST_BYTES)
    finally:
        os.close(fd)
    return parse_uidlist(path, data)


def parse_uidlist(path: Path, data: bytes) -> DovecotUidList:
    """read_uidlist on bytes already read (tests feed damaged files through here)."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    truncated = lines.pop()  # "" when the file ends in a newline, as Dovecot writes it
    if not lines:
        raise DovecotFormatError(f"{path}: empty or no complete header line")
    result = _parse_header(path, lines[0])
    if truncated:
        # Dovecot writes whole lines (temp file and rename): a partial last line is
        # damage, and its name may be cut short, so it names no file for sure.
        result.warn(f"line {len(lines) + 1}: incomplete last line ignored")
    if result.version == 3 and _parse_clean_v3(result, lines):
        return _finish(result)
    seen_names: set[str] = set()
    seen_uids: set[int] = set()
    for number, line in enumerate(lines[1:], start=2):
        record = _parse_record(result, line, number)
        if record is None:
            continue
        uid, name, ext = record
        base = base_of(name)
        if uid in seen_uids:
            result.warn(f"line {number}: UID {uid} listed again (for {base}): the "
                        "first kept, this file gets a new UID")
            continue
        if base in seen_names:
            result.warn(f"line {number}: {base} listed again (UID {uid}): the first "
                        "UID kept")
            continue
        seen_uids.add(uid)
        seen_names.add(base)
        result.records.append((uid, base))
        if ext:
            result.extensions[base] = ext
    return _finish(result)


#: A version 3 record as Dovecot writes it: "<uid> [<key><value> ...] :<file name>",
#: the UID without leading zeros, the name a Maildir file name (no space, "/", TAB, CR,
#: NUL; not starting with "."). Groups: UID, extension fields, base name, the rest.
_V3_RECORD = re.compile(
    r"([1-9][0-9]{0,9}) ((?:[!-9;-~]+ )*):([^ /\t\r\x00.,:][^ /\t\r\x00,:]*)"
    r"([,:][^ /\t\r\x00]*)?")


def _parse_clean_v3(result: DovecotUidList, lines: list[str]) -> bool:
    """The common case at C speed: every record well formed, no UID or base name twice
    (a 100,000-record list in ~0.15 s instead of ~0.8 s). False, with `result`
    untouched, when any line is not: the careful loop then says what is wrong."""
    body = lines[1:]
    matched = [m for m in map(_V3_RECORD.fullmatch, body) if m is not None]
    if len(matched) != len(body):
        return False
    records = [(int(m[1]), m[3]) for m in matched]
    if len({uid for uid, _ in records}) != len(records) or \
            len({base for _, base in records}) != len(records) or \
            any(uid > MAX_UID for uid, _ in records):
        return False
    for m in matched:
        if m[2]:
            result.extensions[m[3]] = {item[:1]: item[1:] for item in m[2].split()}
    result.records = records
    return True


def _finish(result: DovecotUidList) -> DovecotUidList:
    """Records in UID order; the next UID above every UID listed (warned if not)."""
    result.records.sort()
    if result.records:
        top = result.records[-1][0]
        if top >= result.next_uid:
            result.warn(f"UID {top} is not below the next UID N{result.next_uid}: "
                        f"new UIDs start at {top + 1}")
            result.next_uid = top + 1
    return result


def _parse_header(path: Path, line: str) -> DovecotUidList:
    fields = line.split()
    version = fields[0] if fields else ""
    validity = next_uid = 0
    guid = ""
    if version in ("1", "2"):
        if len(fields) >= 3:
            validity, next_uid = _number(fields[1]), _number(fields[2])
    elif version == "3":
        for item in fields[1:]:
            key, value = item[:1], item[1:]
            if key == "V":
                validity = _number(value)
            elif key == "N":
                next_uid = _number(value)
            elif key == "G":
                guid = value
    else:
        raise DovecotFormatError(f"{path}: unknown version {version[:10]!r}")
    if not 0 < validity <= MAX_UID:
        raise DovecotFormatError(f"{path}: no valid UIDVALIDITY in the header")
    return DovecotUidList(path, int(version), validity, max(next_uid, 1), guid)


def _parse_record(result: DovecotUidList, line: str,
                  number: int) -> tuple[int, str, dict[str, str]] | None:
    """(uid, file name, extension fields) of one line, or None (warned) if unusable."""
    if not line:
        return None
    uid_text, _, rest = line.partition(" ")
    uid = _number(uid_text)
    if not 0 < uid <= MAX_UID:
        result.warn(f"line {number}: not a UID: {uid_text[:20]!r}")
        return None
    ext: dict[str, str] = {}
    if result.version == 3:
        head, colon, name = rest.partition(":")
        if not colon:
            result.warn(f"line {number}: no ':<file name>' field")
            return None
        if head:
            for item in head.split():
                ext[item[:1]] = item[1:]
    elif result.version == 2:
        name = rest.rpartition(" ")[2]
    else:
        name = rest
    if not name or _BAD_NAME.search(name) or name.startswith("."):
        result.warn(f"line {number}: not a Maildir file name: {name[:60]!r}")
        return None
    return uid, name, ext


def _number(text: str) -> int:
    """A decimal of at most 10 ASCII digits (2^32 - 1 has 10), else 0. isascii: "²"
    passes str.isdigit() and int() refuses it; length: a megabyte of digits would cost
    int() seconds (and Python refuses past 4300 digits)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else 0


def read_subscriptions(text: str) -> list[str]:
    """The folder names of a Dovecot `subscriptions` file (version 1 or 2), in order,
    with "." as the hierarchy delimiter (Maildir++, our folders.DELIMITER)."""
    lines = text.split("\n")
    if lines and lines[0].rstrip("\r") == "V\t2":
        names = []
        for line in lines[1:]:
            line = line.rstrip("\r")
            if line:
                names.append(".".join(_tab_unescape(level) for level in line.split("\t")))
        return names
    return [line.strip() for line in lines if line.strip()]


_UNESCAPE = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}


def _tab_unescape(text: str) -> str:
    """Dovecot's str_tabunescape: \\001 followed by 1, t, r or n."""
    if "\x01" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\x01" and i + 1 < len(text):
            out.append(_UNESCAPE.get(text[i + 1], text[i + 1]))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)
