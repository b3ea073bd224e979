"""Maildir file names: the one parser of the code base (delivery, IMAP, POP3 use it).

A name is `base[,FIELD=value...][:2,FLAGS]` (the Maildir spec, https://cr.yp.to/proto/
maildir.html; Dovecot's `,S=` and `,W=` fields):

- base: the unique part, up to the first `,` or `:`. It never changes when flags do, so
  it is what UID lists key on and what POP3 shows as the UIDL.
- `,S=n`: the stored size (LF line ends); `,W=n`: the size with CRLF line ends, which is
  what POP3 LIST and IMAP RFC822.SIZE report. Fields are comma-separated; one whose
  value is not all digits is ignored, as are fields we do not know.
- `:2,FLAGS`: one ASCII letter per flag, in ASCII order. Other info forms (`:1,...`)
  carry no flags.
- Our names (maildir.unique_name) and Dovecot's start `secs.Musecs...`: the delivery
  time, which orders messages for POP3 and numbers new files for IMAP.

Pure string handling, no file access. The functions are small and separate because
each caller parses 100,000 names on a cold login and wants only one part; COMMON_NAME
is the same grammar for a whole listing at once (folderstate's bulk load).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def base_of(name: str) -> str:
    """The unique part of a name: before the first `,` (fields) or `:` (info)."""
    unique = name.partition(":")[0]
    comma = unique.find(",")
    return unique if comma < 0 else unique[:comma]


def flag_letters(name: str) -> str:
    """The letters of a `:2,` info suffix as written ("" for none or another form)."""
    info = name.partition(":")[2]
    return info[2:] if info.startswith("2,") else ""


def split_name(name: str) -> tuple[str, str]:
    """(base, info letters as written) of a name."""
    unique, _, info = name.partition(":")
    comma = unique.find(",")
    base = unique if comma < 0 else unique[:comma]
    return base, (info[2:] if info.startswith("2,") else "")


def size_field(name: str, letter: str) -> int | None:
    """The value of the `,S=` (letter "S") or `,W=` ("W") field, if the name has one."""
    unique = name.partition(":")[0]
    comma = unique.find(",")
    if comma < 0:
        return None
    prefix = letter + "="
    for field in unique[comma + 1:].split(","):
        if field.startswith(prefix) and field[2:].isdigit():
            return int(field[2:])
    return None


def crlf_size_of(name: str) -> int | None:
    """W=: the size with CRLF line ends, if the name says."""
    return size_field(name, "W")


def stored_size_of(name: str) -> int | None:
    """S=: the size on disk (LF line ends), if the name says."""
    return size_field(name, "S")


def name_time(name: str) -> float | None:
    """The delivery time a name starts with (`secs.Musecs...`), if it does."""
    dot = name.find(".")
    secs = name[:dot] if dot > 0 else ""
    if not secs.isdigit() or len(secs) > 11:
        return None
    when = float(secs)
    if name[dot + 1:dot + 2] == "M":
        end = dot + 2
        while end < len(name) and name[end].isdigit():
            end += 1
        usecs = name[dot + 2:end]
        if usecs and len(usecs) <= 6:
            when += int(usecs) / 1e6
    return when


def order_key(base: str) -> int:
    """Delivery order of a base name `<secs>.M<usecs>P<pid>Q<n>R...`, as one int (time
    in microseconds, then the per-process counter, then the pid), so that sorting
    100,000 names compares ints, not tuples. Foreign names sort by their seconds."""
    secs, _, rest = base.partition(".")
    if not secs.isdigit():
        return 0
    key = int(secs) * 1_000_000
    if rest.startswith("M"):
        p = rest.find("P")
        q = rest.find("Q", p)
        r = rest.find("R", q)
        usecs, pid, counter = rest[1:p], rest[p + 1:q], rest[q + 1:r]
        if p > 1 and q > p and r > q and usecs.isdigit() and pid.isdigit() \
                and counter.isdigit():
            return (((key + int(usecs)) << 32) + int(counter)) << 32 | int(pid)
        if p > 1 and usecs.isdigit():
            key += int(usecs)
    return key << 64


def with_flags(name: str, flags: str) -> str:
    """`name` with its info suffix replaced by `:2,FLAGS` (flags sorted, deduplicated)."""
    unique = name.partition(":")[0]
    return f"{unique}:2,{''.join(sorted(set(flags)))}"


@dataclass(frozen=True)
class MaildirName:
    """What a Maildir file name tells without opening the file."""

    #: The unique part, without `,S=`/`,W=` fields or the info suffix: stable across
    #: flag changes, so it is the key UID lists use.
    base: str
    #: S=: the size on disk (LF line ends); None if the name does not say.
    size: int | None
    #: W=: the size with CRLF line ends (what POP3 LIST and IMAP RFC822.SIZE report).
    crlf_size: int | None
    #: The flags of the `:2,` info suffix, sorted (e.g. "FS"); "" when none or no suffix.
    flags: str
    #: Whether the name had an info suffix at all (files in cur/ do, new/ usually not).
    has_info: bool


def parse_name(name: str) -> MaildirName:
    """Everything a name says, at once (the functions above, for one name)."""
    base, letters = split_name(name)
    return MaildirName(base=base, size=stored_size_of(name), crlf_size=crlf_size_of(name),
                       flags="".join(sorted(set(letters))), has_info=":" in name)


#: The common form (our delivery's names and Dovecot's) for a whole listing joined by
#: "\n", parsed in C: (name, base, secs, usecs, W, info letters) per match. A name
#: that does not match takes the functions above; both read the grammar the same way
#: (tests/store/test_store_names.py checks that they agree).
COMMON_NAME = re.compile(
    r"^(((\d{1,11})\.M(\d{1,6})[^,:\n]*)(?:,S=\d+)?,W=(\d+)(?::2,([A-Za-z]*))?)$", re.M)
