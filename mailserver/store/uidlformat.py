"""POP3 UIDLs in Dovecot's `pop3_uidl_format`, so clients moving over download nothing.

A POP3 client remembers the UIDL (RFC 1939 7) of each message it has; a server that
shows other UIDLs makes it fetch the whole maildrop again. Dovecot builds them from
`pop3_uidl_format` (default `%08Xu%08Xv`) with its var_expand syntax:

    %[0][width][modifiers]<var>   or   %[0][width][modifiers]{<long name>}

- vars: `u` {uid}: the IMAP UID; `v` {uidvalidity}; `g` {guid}: the message GUID
  (the `G` field of its dovecot-uidlist record, else the Maildir base name, as Dovecot
  does for Maildir); `m` {md5}: MD5 of the header block, hex (see below); `f`
  {filename}: the file name without its `:2,` info; `%%` is a percent sign.
- `X` writes a decimal value in hex (lower case, as Dovecot's var_expand does: its
  default format gives "000000016b165384"); `L`/`U` lower/upper case.
- a width with a leading 0 pads on the left with zeros; without, it keeps the first
  `width` characters (Dovecot's meaning).

The UID and UIDVALIDITY come from the folder's UID list (uidlist.py, which took over
Dovecot's on first open), so they are the ones Dovecot used. `%m` reads every message's
header at login, which costs a file read per message: nothing is read unless the
format uses it. Dovecot documents its %m for mbox only, where it hashes the header
minus the fields Dovecot itself adds; ours hashes the header block as stored and so
matches only what we computed ourselves (say so to a Dovecot-on-mbox site).

A UIDL that does not fit RFC 1939 7 (1 to 70 characters 0x21-0x7E) is replaced by a
stable hash of it, like a base name that does not fit.

Saved UIDLs come first: a dovecot-uidlist record's `P` field is the UIDL Dovecot saved
for that message (`pop3_save_uidl = yes`, or the pop3-migration plugin keeping a UIDL
from the server before Dovecot). Dovecot's POP3 answers it in preference to
pop3_uidl_format (pop3-commands.c pop3_get_uid asks MAIL_FETCH_UIDL_BACKEND first), so
we do too, whatever `pop3.uidl_format` says: those are the UIDLs the clients hold.
saved_uidls() reads them; the snapshot applies them after the format.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailserver.config import UIDL_LONG_NAMES, UIDL_TOKEN, uidl_format_problem
from mailserver.store.dovecot import DOVECOT_UIDLIST, DovecotFormatError, read_uidlist
from mailserver.store.uidlist import UidList

#: A header bigger than this is hashed as far as this (a message without a blank line).
MAX_HEADER = 1 << 20


class UidlMessage(Protocol):
    """What the format needs of a snapshot message (maildrop.Message has it)."""

    subdir: str
    name: str
    base: str
    uidl: str


@dataclass(frozen=True)
class _Field:
    var: str
    zero: bool
    width: int
    modifiers: str


@dataclass(frozen=True)
class UidlFormat:
    """A parsed pop3.uidl_format; `parts` are literal strings and fields in order."""

    text: str
    parts: tuple[str | _Field, ...]

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(p.var for p in self.parts if isinstance(p, _Field))

    def render(self, values: dict[str, str | int]) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = values[part.var]
            text = str(value)
            for modifier in part.modifiers:
                if modifier == "X":
                    text = format(int(text), "x") if text.isdigit() else text
                elif modifier == "L":
                    text = text.lower()
                else:
                    text = text.upper()
            if part.width:
                text = text.rjust(part.width, "0") if part.zero else text[:part.width]
            out.append(text)
        return "".join(out)

    def apply(self, maildir: Path, messages: Sequence[UidlMessage],
              fallback: Callable[[str], str]) -> None:
        """Set each message's `uidl` (blocking: the disk thread). Messages without a
        UID yet get one, in the order given (delivery order), as IMAP would."""
        needed = self.variables
        uids: dict[str, int] = {}
        validity = 0
        if needed & {"u", "v"}:
            uidlist = UidList(maildir, maildir)
            uidlist.refresh()
            missing = [m.base for m in messages if m.base not in uidlist.by_base]
            if missing:
                uidlist.assign(missing)
            uids, validity = uidlist.by_base, uidlist.validity
        template = self.template()
        if template is not None and needed <= {"u", "v"} and validity:
            self._apply_numbers(messages, uids, validity, template, fallback)
            return
        guids = _dovecot_guids(maildir) if "g" in needed else {}
        need_uid, need_validity = "u" in needed, "v" in needed
        for message in messages:
            uid = uids.get(message.base, 0)
            if (need_uid and not uid) or (need_validity and not validity):
                continue  # no UID space (a damaged list): keep the base-name UIDL
            values: dict[str, str | int] = {"u": uid, "v": validity}
            if "g" in needed:
                values["g"] = guids.get(message.base, message.base)
            if "f" in needed:
                values["f"] = message.name.partition(":")[0]
            if "m" in needed:
                values["m"] = _header_md5(os.path.join(maildir, message.subdir,
                                                       message.name))
            text = template.format_map(values) if template is not None \
                else self.render(values)
            message.uidl = fallback(text)

    @staticmethod
    def _apply_numbers(messages: Sequence[UidlMessage], uids: dict[str, int],
                       validity: int, template: str,
                       fallback: Callable[[str], str]) -> None:
        """The common case (Dovecot's default %08Xu%08Xv): numbers only. When the
        longest UID gives a UIDL RFC 1939 accepts, every UID does (same characters,
        no longer), so the per-message check is skipped: 100,000 at login in ~0.1 s."""
        fmt = template.format
        widest = fmt(u=2**32 - 1, v=validity)
        checked = fallback(widest) == widest and fallback(fmt(u=1, v=validity)) \
            == fmt(u=1, v=validity)
        get = uids.get
        for message in messages:
            uid = get(message.base)
            if uid:
                text = fmt(u=uid, v=validity)
                message.uidl = text if checked else fallback(text)

    def template(self) -> str | None:
        """The format as a str.format template when every field has one (a UID or
        UIDVALIDITY in hex or decimal, zero-padded; a string cut or zero-padded):
        100,000 UIDLs at login in C instead of render's Python loop. None otherwise."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part.replace("{", "{{").replace("}", "}}"))
                continue
            numeric = part.var in "uv"
            if part.modifiers not in ("", "X") or (part.modifiers and not numeric):
                return None
            if numeric and part.width and not part.zero:
                return None  # a cut decimal number: render does it
            kind = "x" if part.modifiers else ("d" if numeric else "s")
            if not part.width:
                spec = kind
            elif numeric:
                spec = f"0{part.width}{kind}"
            else:
                spec = f"0>{part.width}s" if part.zero else f".{part.width}s"
            out.append(f"{{{part.var}:{spec}}}")
        return "".join(out)


def parse_uidl_format(text: str) -> UidlFormat | None:
    """The format (None for "": base names); ValueError naming what is wrong (the
    config check, config.uidl_format_problem, reports it before we get here)."""
    if not text:
        return None
    error = uidl_format_problem(text)
    if error:
        raise ValueError(error)
    parts: list[str | _Field] = []
    pos = 0
    while (percent := text.find("%", pos)) >= 0:
        if percent > pos:
            parts.append(text[pos:percent])
        match = UIDL_TOKEN.match(text, percent)
        assert match is not None  # uidl_format_problem checked
        literal, zero, width, modifiers, var, long = match.groups()
        if literal:
            parts.append("%")
        else:
            var = UIDL_LONG_NAMES[long] if long is not None else var
            parts.append(_Field(var, bool(zero), int(width or 0), modifiers))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    return UidlFormat(text, tuple(parts))


#: maildir -> ((inode, size, mtime_ns) of its dovecot-uidlist, base -> saved UIDL).
#: Dovecot's file is never written by us, so one read serves every login until it
#: changes (a site still running Dovecot beside us for a while).
_saved_cache: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}
_SAVED_CACHE_FOLDERS = 1024


def saved_uidls(maildir: Path) -> dict[str, str]:
    """base name -> the `P` field (saved POP3 UIDL) of the folder's dovecot-uidlist;
    {} without one (a stat, nothing read: every new install)."""
    path = os.path.join(maildir, DOVECOT_UIDLIST)
    try:
        st = os.stat(path)
    except OSError:
        return {}
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _saved_cache.get(str(maildir))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        taken = read_uidlist(Path(path))
    except (DovecotFormatError, OSError):
        return {}
    saved = {} if taken is None else {
        base: ext["P"] for base, ext in taken.extensions.items() if ext.get("P")}
    if len(_saved_cache) >= _SAVED_CACHE_FOLDERS:
        _saved_cache.clear()
    _saved_cache[str(maildir)] = (stamp, saved)
    return saved


def apply_saved(maildir: Path, messages: Sequence[UidlMessage],
                fallback: Callable[[str], str]) -> None:
    """Give each message with a saved UIDL (`P`) that UIDL (blocking: disk thread)."""
    saved = saved_uidls(maildir)
    if not saved:
        return
    for message in messages:
        uidl = saved.get(message.base)
        if uidl is not None:
            message.uidl = fallback(uidl)


def _dovecot_guids(maildir: Path) -> dict[str, str]:
    """base name -> the G field of Dovecot's records (read-only; none: {})."""
    try:
        taken = read_uidlist(maildir / DOVECOT_UIDLIST)
    except DovecotFormatError:
        return {}
    if taken is None:
        return {}
    return {base: ext["G"] for base, ext in taken.extensions.items() if ext.get("G")}


def _header_md5(path: str) -> str:
    """MD5 (hex) of the header block (up to and with the empty line) as stored."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HEADER)
    except OSError:
        return ""
    end = data.find(b"\n\n")
    digest.update(data if end < 0 else data[:end + 2])
    return digest.hexdigest()
