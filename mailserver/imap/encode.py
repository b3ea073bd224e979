"""IMAP wire encodings of values: strings, flag lists, dates (RFC 3501 section 4, 9).

Everything returns bytes ready to be written between other tokens of a response, so a
FETCH builder only joins. A value that cannot travel as a quoted string (CR, LF, NUL,
8-bit octets, or long) becomes a literal `{n}CRLF...` (RFC 3501 4.3); NIL stands for a
missing nstring (4.5).
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from collections.abc import Iterable

#: Longest value we send as a quoted string. Quoted strings have no length limit in
#: the grammar, but many clients read lines into fixed buffers; Dovecot switches to a
#: literal well before 1000 octets too.
MAX_QUOTED = 1000

#: Octets a quoted string may carry (RFC 3501 9: QUOTED-CHAR is any TEXT-CHAR, with
#: quoted-specials escaped): printable 7-bit plus SP and TAB, no CR, LF, NUL, no 8-bit.
_UNSAFE_FOR_QUOTED = re.compile(rb"[^\x01-\x09\x0b\x0c\x0e-\x7f]")

#: ATOM-CHAR is any CHAR except atom-specials ( ) { SP CTL % * " \ ] (RFC 3501 9); an
#: astring may also hold "]" (ASTRING-CHAR = ATOM-CHAR / resp-specials), so "]" is not here.
_ATOM_SPECIALS = re.compile(rb'[\x00-\x20\x7f-\xff(){%*"\\]')

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name.lower(): number for number, name in enumerate(_MONTHS, start=1)}


def literal(s: bytes) -> bytes:
    """A synchronizing literal as a server sends it: `{n}` CRLF then the octets."""
    return b"{%d}\r\n%s" % (len(s), s)


#: The common case: nothing to escape, nothing that needs a literal.
_PLAIN_QUOTABLE = re.compile(rb'[\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]*')


#: Short strings already rendered: "text", "plain", "charset", "utf-8", "7bit", host
#: names... recur in every BODYSTRUCTURE and ENVELOPE of a folder. Bounded.
_RENDERED: dict[bytes, bytes] = {}
_RENDERED_MAX = 8192


def quoted_or_literal(s: bytes) -> bytes:
    """`s` as an IMAP string: quoted when safe (backslash and quote escaped), else literal."""
    rendered = _RENDERED.get(s)
    if rendered is not None:
        return rendered
    if len(s) < MAX_QUOTED and _PLAIN_QUOTABLE.fullmatch(s) is not None:
        rendered = b'"' + s + b'"'
        if len(s) <= 64:
            if len(_RENDERED) >= _RENDERED_MAX:
                _RENDERED.clear()
            _RENDERED[s] = rendered
        return rendered
    if len(s) >= MAX_QUOTED or _UNSAFE_FOR_QUOTED.search(s) is not None:
        return literal(s)
    if b"\\" in s or b'"' in s:
        s = s.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + s + b'"'


def nstring(s: bytes | None) -> bytes:
    """NIL for None, else an IMAP string (RFC 3501 4.5)."""
    if s is None:
        return b"NIL"
    return quoted_or_literal(s)


def astring(s: bytes) -> bytes:
    """An atom when `s` is a non-empty run of ASTRING-CHARs (and not "NIL"), else a string.

    Used for mailbox names in LIST/LSUB/STATUS answers; "NIL" is quoted so that a client
    cannot confuse a mailbox called NIL with the absence of one.
    """
    if s and _ATOM_SPECIALS.search(s) is None and s.upper() != b"NIL":
        return s
    return quoted_or_literal(s)


def flag_list(flags: Iterable[str], recent: bool) -> bytes:
    """`(\\Seen \\Recent kw)`: system flags and keywords as atoms, \\Recent when held.

    Flags come from the store, which only keeps valid flag atoms; they are written as
    they are. \\Recent goes last, as Dovecot sends it.
    """
    parts = [flag.encode("ascii", "replace") for flag in flags]
    if recent:
        parts.append(b"\\Recent")
    return b"(" + b" ".join(parts) + b")"


# --------------------------------------------------------------------------- dates


def internal_date(ts: float) -> bytes:
    """INTERNALDATE as the quoted RFC 3501 date-time, always in UTC ("+0000").

    `"17-Jul-1996 02:44:25 +0000"`: day is space-padded to two characters (date-day-fixed).
    UTC keeps the answer independent of the server's TZ environment, so two processes
    (or a restart under another TZ) never show a client two different dates.
    """
    t = time.gmtime(ts)
    return b'"%2d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


_DATE_TIME = re.compile(
    r"\A\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\Z")
_DATE = re.compile(r"\A(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")


def _month(name: str) -> int:
    try:
        return _MONTH_NUMBER[name.lower()]
    except KeyError:
        raise ValueError(f"unknown month {name!r}") from None


def parse_date_time(s: str) -> float:
    """APPEND's date-time (RFC 3501 9) to seconds since the epoch.

    Accepts the value with or without its surrounding quotes, day with a leading space
    or one digit, month in any case. ValueError on anything else (the caller answers BAD).
    """
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1]
    m = _DATE_TIME.match(s)
    if m is None:
        raise ValueError(f"not an RFC 3501 date-time: {s!r}")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    if int(zm) >= 60:
        raise ValueError(f"bad zone in {s!r}")
    # datetime validates the day of the month, hours, minutes and seconds.
    when = datetime.datetime(int(year), _month(mon), int(day), int(hh), int(mm), int(ss))
    offset = (int(zh) * 60 + int(zm)) * 60
    if sign == "-":
        offset = -offset
    return float(calendar.timegm(when.timetuple()) - offset)


def parse_date(s: str) -> datetime.date:
    """SEARCH's date (`1-Feb-1994`, RFC 3501 9), month case-insensitive; quotes allowed."""
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1]
    m = _DATE.match(s)
    if m is None:
        raise ValueError(f"not an RFC 3501 date: {s!r}")
    day, mon, year = m.groups()
    return datetime.date(int(year), _month(mon), int(day))
