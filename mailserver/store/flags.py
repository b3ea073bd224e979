"""IMAP flags <-> Maildir info letters, and the per-folder keyword table.

System flags live in the `:2,` info suffix as the Maildir spec and Dovecot write them:
D \\Draft, F \\Flagged, R \\Answered (replied), S \\Seen, T \\Deleted (trashed). P
("passed": bounced or forwarded) is shown as the keyword $Forwarded, which is what it
means (RFC 5788 registry); a client storing $Forwarded sets P, so mutt sees it too.

Keywords take the lowercase letters a-z: the `dovecot-keywords` file of the folder maps
index i to letter chr(ord("a") + i), one "i name" line each (Dovecot's format, so
Dovecot and we read each other's keywords). 26 per folder at most; the 27th is refused
with LIMIT (Dovecot refuses too). Names compare case-insensitively (RFC 3501 2.3.2 says
flags are case-insensitive) and keep the spelling first stored.

Letters we do not know (other uppercase ones) are kept in the file name untouched.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from mailserver.interfaces import StoreError

#: The file Dovecot keeps a folder's keyword letters in.
KEYWORDS_FILE = "dovecot-keywords"
MAX_KEYWORDS = 26

#: Canonical spelling of each flag that has a letter of its own.
FLAG_LETTERS: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "$Forwarded": "P",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS: dict[str, str] = {letter: flag for flag, letter in FLAG_LETTERS.items()}
#: lower-case flag -> canonical spelling, for the case-insensitive comparison.
CANONICAL: dict[str, str] = {flag.lower(): flag for flag in FLAG_LETTERS}
#: System flags a client may store (RFC 3501 2.3.2); \Recent is the server's alone.
SYSTEM_FLAGS: tuple[str, ...] = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

#: One shared frozenset per distinct flag set: 100k messages hold a handful of objects.
_interned: dict[frozenset[str], frozenset[str]] = {}
_intern_lock = threading.Lock()


def intern_flags(flags: frozenset[str]) -> frozenset[str]:
    found = _interned.get(flags)
    if found is not None:
        return found
    with _intern_lock:
        if len(_interned) > 100_000:  # bounded: only pathological keyword use gets here
            _interned.clear()
        return _interned.setdefault(flags, flags)


def canonical_flag(flag: str) -> str:
    """The spelling to store: system flags (and $Forwarded) canonical, keywords as given."""
    return CANONICAL.get(flag.lower(), flag)


def _read_keyword_file(path: Path) -> list[str | None]:
    names: list[str | None] = [None] * MAX_KEYWORDS
    try:
        text = path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return names
    for line in text.splitlines():
        number, _, name = line.partition(" ")
        if number.isdigit() and int(number) < MAX_KEYWORDS and name.strip():
            names[int(number)] = name.strip()
    return names


class Keywords:
    """The keyword letters of one folder, re-read when the file changes.

    Methods are called with the folder's in-process lock held; `add` additionally takes
    the folder's cross-process lock (passed in by the caller) before rewriting the file.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / KEYWORDS_FILE
        self._names: list[str | None] = [None] * MAX_KEYWORDS
        self._lower: dict[str, int] = {}
        self._stamp: tuple[int, int, int] | None = None
        #: info letters -> flag set: parsing 100k names costs one dict lookup each.
        self._info_cache: dict[str, frozenset[str]] = {}

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload(self, force: bool = False) -> None:
        """Re-read the file if it changed (one stat)."""
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return
        self._stamp = stamp
        self._names = _read_keyword_file(self.path)
        self._lower = {n.lower(): i for i, n in enumerate(self._names) if n}
        self._info_cache.clear()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in self._names if n)

    @property
    def full(self) -> bool:
        return all(self._names)

    def flags_of(self, letters: str) -> frozenset[str]:
        """The IMAP flags of an info suffix's letters (e.g. "FSa")."""
        flags = self._info_cache.get(letters)
        if flags is not None:
            return flags
        found: set[str] = set()
        unknown_keyword = False
        for letter in letters:
            if letter in LETTER_FLAGS:
                found.add(LETTER_FLAGS[letter])
            elif "a" <= letter <= "z":
                name = self._names[ord(letter) - ord("a")]
                if name:
                    found.add(name)
                else:
                    unknown_keyword = True
        flags = intern_flags(frozenset(found))
        if not unknown_keyword:  # a letter another process just defined: do not cache
            self._info_cache[letters] = flags
        return flags

    def missing_letters(self, letters: str) -> bool:
        """True if `letters` use a keyword letter this table does not define (re-read)."""
        return any("a" <= c <= "z" and not self._names[ord(c) - ord("a")] for c in letters)

    def letters_of(self, flags: Iterable[str], keep: str = "") -> str | None:
        """Info letters for `flags`; None if a keyword has no letter yet (call `add`).

        `keep`: the old letters, whose unknown uppercase ones are carried over.
        """
        letters = {c for c in keep if c.isupper() and c not in LETTER_FLAGS}
        for flag in flags:
            letter = FLAG_LETTERS.get(canonical_flag(flag))
            if letter is not None:
                letters.add(letter)
                continue
            if flag.startswith("\\"):
                continue  # \Recent or an unknown system flag: not storable
            index = self._lower.get(flag.lower())
            if index is None:
                return None
            letters.add(chr(ord("a") + index))
        return "".join(sorted(letters))

    def add(self, new: Iterable[str]) -> None:
        """Define letters for keywords not yet known; the caller holds the folder lock.

        Rewrites the file by write-temp-and-rename (readers never see it torn).
        """
        self.reload(force=True)
        changed = False
        for flag in new:
            if flag.startswith("\\") or flag.lower() in CANONICAL or flag.lower() in self._lower:
                continue
            try:
                index = self._names.index(None)
            except ValueError:
                raise StoreError("LIMIT", "Too many keywords in this mailbox (26 at most)") from None
            self._names[index] = flag
            self._lower[flag.lower()] = index
            changed = True
        if not changed:
            return
        text = "".join(f"{i} {n}\n" for i, n in enumerate(self._names) if n)
        tmp = self.path.with_name(f"{KEYWORDS_FILE}.tmp.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text, "utf-8")
        os.replace(tmp, self.path)
        self._stamp = self._file_stamp()
        self._info_cache.clear()


def apply_mode(current: frozenset[str], mode: str, flags: Iterable[str]) -> frozenset[str]:
    """The flag set after STORE `mode` ("+", "-", "=") of `flags`, case-insensitively.

    \\Recent and unknown backslash flags are ignored: a client cannot set them (RFC 3501
    2.3.2); the IMAP grammar refuses them before we get here anyway.
    """
    by_lower: dict[str, str] = {}
    for f in flags:
        if not f.startswith("\\") or f.lower() in CANONICAL:
            by_lower.setdefault(f.lower(), canonical_flag(f))
    given = set(by_lower.values())
    given_lower = set(by_lower)
    if mode == "=":
        result = set(given)
    elif mode == "+":
        have = {f.lower() for f in current}
        result = set(current) | {f for f in given if f.lower() not in have}
    elif mode == "-":
        result = {f for f in current if f.lower() not in given_lower}
    else:
        raise ValueError(f"bad STORE mode {mode!r}")
    return intern_flags(frozenset(result))
