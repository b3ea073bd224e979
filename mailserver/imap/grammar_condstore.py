"""The grammar of CONDSTORE and QRESYNC (RFC 7162 7), hooked into grammar.py's parsers:
SELECT/EXAMINE parameters, FETCH and STORE modifiers, the SEARCH MODSEQ key.

Mod-sequences are 63-bit (RFC 7162 7: mod-sequence-value is at most 2^63 - 1); a larger
number is a syntax error (BAD), never silently clipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap.commands import Qresync, SearchKey, SelectParams, SequenceSet

if TYPE_CHECKING:
    from mailserver.imap.grammar import Reader

#: RFC 7162 7: mod-sequence-value = 1*DIGIT, "Positive unsigned 63-bit integer".
MAX_MODSEQ = 2**63 - 1
#: RFC 7162 7 entry-type-req (the SEARCH MODSEQ key's optional entry).
_ENTRY_TYPES = frozenset({"PRIV", "SHARED", "ALL"})


def mod_sequence(r: Reader, nonzero: bool = False) -> int:
    """mod-sequence-value (nonzero) or mod-sequence-valzer: at most 2^63 - 1."""
    start = r.pos
    while (c := r.peek()) is not None and 0x30 <= c <= 0x39:
        r.pos += 1
    digits = r.data[start:r.pos]
    if not digits:
        raise r.fail("expected a mod-sequence")
    if len(digits) > 19 or int(digits) > MAX_MODSEQ:
        raise r.fail("mod-sequence out of range (2^63-1 at most)")
    value = int(digits)
    if nonzero and value == 0:
        raise r.fail("mod-sequence must not be zero")
    return value


def _uid_set(r: Reader, what: str) -> SequenceSet:
    """A sequence-set of UIDs without `*` (RFC 7162 7: known-uids, known-uid-set)."""
    sequence = r.sequence_set()
    if any(a is None or b is None for a, b in sequence.ranges):
        raise r.fail(f"{what} must not contain *")
    return sequence


def select_params(r: Reader) -> SelectParams:
    """After `SELECT mailbox SP`: "(" select-param *(SP select-param) ")" (RFC 4466),
    of which we know CONDSTORE (RFC 7162 3.1.8) and QRESYNC (3.2.5)."""
    r.expect(b"(")
    condstore = False
    qresync: Qresync | None = None
    while True:
        word = r.atom().upper()
        if word == "CONDSTORE" and not condstore:
            condstore = True
        elif word == "QRESYNC" and qresync is None:
            r.sp()
            qresync = _qresync(r)
        else:
            raise r.fail(f"unknown or repeated SELECT parameter {word[:40]}")
        if not r.maybe_sp():
            break
    r.expect(b")")
    return SelectParams(condstore=condstore or qresync is not None, qresync=qresync)


def _qresync(r: Reader) -> Qresync:
    """"(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")"."""
    r.expect(b"(")
    validity = r.number(nonzero=True)
    r.sp()
    modseq = mod_sequence(r, nonzero=True)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.maybe_sp() and r.peek() != 0x28:
        known = _uid_set(r, "known-uids")
        if not r.maybe_sp():
            r.expect(b")")
            return Qresync(validity, modseq, known, None)
    if r.peek() == 0x28:
        r.pos += 1
        seqs = _uid_set(r, "known-sequence-set")
        r.sp()
        uids = _uid_set(r, "known-uid-set")
        r.expect(b")")
        if _count(seqs) != _count(uids):
            raise r.fail("seq-match-data sets differ in size")
        match = (seqs, uids)
    r.expect(b")")
    return Qresync(validity, modseq, known, match)


def _count(sequence: SequenceSet) -> int:
    return sum(abs((b or 0) - (a or 0)) + 1 for a, b in sequence.ranges)


def fetch_modifiers(r: Reader) -> tuple[int | None, bool]:
    """After the FETCH items: SP "(" fetch-modifier *(SP fetch-modifier) ")" with
    CHANGEDSINCE mod-sequence-valzer (RFC 7162 3.1.4.1) and VANISHED (3.2.6)."""
    r.sp()
    r.expect(b"(")
    changed_since: int | None = None
    vanished = False
    while True:
        word = r.atom().upper()
        if word == "CHANGEDSINCE" and changed_since is None:
            r.sp()
            changed_since = mod_sequence(r)
        elif word == "VANISHED" and not vanished:
            vanished = True
        else:
            raise r.fail(f"unknown or repeated FETCH modifier {word[:40]}")
        if not r.maybe_sp():
            break
    r.expect(b")")
    if vanished and changed_since is None:
        raise r.fail("VANISHED needs CHANGEDSINCE (RFC 7162 3.2.6)")
    return changed_since, vanished


def store_modifiers(r: Reader) -> int:
    """"(" UNCHANGEDSINCE SP mod-sequence-valzer ")" SP (RFC 7162 3.1.3)."""
    r.expect(b"(")
    r.expect(b"UNCHANGEDSINCE", "UNCHANGEDSINCE")
    r.sp()
    value = mod_sequence(r)
    r.expect(b")")
    r.sp()
    return value


def modseq_key(r: Reader) -> SearchKey:
    """After `MODSEQ SP`: [entry-name SP entry-type-req SP] mod-sequence-valzer (RFC
    7162 3.1.5). The entry names a flag's own modseq; ours are per message, which the
    RFC allows (a message's modseq bounds each of its flags'), so it only is checked."""
    if r.peek() == 0x22 or r.peek() == 0x7B:
        entry = r.string().decode("ascii", "replace").lower()
        if not entry.startswith("/flags/") or len(entry) <= len("/flags/"):
            raise r.fail("MODSEQ entry names a flag: \"/flags/...\"")
        r.sp()
        kind = r.atom().upper()
        if kind not in _ENTRY_TYPES:
            raise r.fail("MODSEQ entry type is priv, shared or all")
        r.sp()
    return SearchKey("MODSEQ", mod_sequence(r))
