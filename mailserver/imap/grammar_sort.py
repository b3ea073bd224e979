"""Grammar of SORT and THREAD (RFC 5256 5), of SEARCH/SORT RETURN options (ESEARCH,
RFC 4731 3; ESORT and PARTIAL, RFC 5267 3, 4.4; SAVE, RFC 5182 2.1) and the commands
they produce. The `$` of RFC 5182 is read by grammar.Reader.sequence_set.

grammar.py imports this module at its end; this module registers its parsers there,
so whichever of the two is imported first, both are complete once either is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mailserver.imap import grammar
from mailserver.imap.commands import Command, Search, SearchAnd, SearchProgram

#: RFC 5256 3 sort keys, and RFC 5957's DISPLAYFROM / DISPLAYTO.
SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                       "DISPLAYFROM", "DISPLAYTO"})
#: RFC 5256 4 threading algorithms.
ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
#: A RETURN option: a name, or ("PARTIAL", (low, high)).
ReturnOption = str | tuple[str, tuple[int, int]]
_RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE"})


@dataclass(frozen=True)
class ESearch(Search):
    """SEARCH RETURN (...) (RFC 4731): answered with `* ESEARCH`; SAVE alone with
    nothing (RFC 5182 2.1)."""

    returns: tuple[ReturnOption, ...] = ()


@dataclass(frozen=True)
class Sort(Command):
    """SORT (RFC 5256 3), with RETURN options for ESORT (RFC 5267 3) or None."""

    uid: bool
    criteria: tuple[tuple[str, bool], ...]  # (key, reverse)
    charset: str
    program: SearchProgram
    returns: tuple[ReturnOption, ...] | None = None


@dataclass(frozen=True)
class Thread(Command):
    uid: bool
    algorithm: str
    charset: str
    program: SearchProgram


@dataclass(frozen=True)
class CancelUpdate(Command):
    """CANCELUPDATE (RFC 5267 4.3): the tags of the searches to stop updating."""

    tags: tuple[str, ...]


def return_options(r: grammar.Reader) -> tuple[ReturnOption, ...] | None:
    """` RETURN (opt ...)` after the command word, or None when there is none. `()`
    means ALL (RFC 4731 3.1)."""
    if not r.at(b" RETURN "):
        return None
    r.pos += len(b" RETURN ")
    r.expect(b"(")
    options: list[ReturnOption] = []
    while r.peek() != 0x29:
        if options:
            r.sp()
        word = r.atom().upper()
        if word == "PARTIAL":  # RFC 5267 4.4: PARTIAL low:high, both nz-number
            r.sp()
            low = r.number(nonzero=True)
            r.expect(b":")
            high = r.number(nonzero=True)
            options.append(("PARTIAL", (min(low, high), max(low, high))))
        elif word in _RETURN_OPTIONS:
            options.append(word)
        else:
            raise r.fail(f"unknown RETURN option {word[:40]}")
    r.expect(b")")
    if sum(1 for o in options if not isinstance(o, str)) > 1 or (
            "ALL" in options and any(not isinstance(o, str) for o in options)):
        raise r.fail("PARTIAL cannot be combined with ALL or another PARTIAL")
    if "UPDATE" in options and any(o not in ("UPDATE", "ALL", "COUNT") for o in options):
        # RFC 5267 4.2 updates a result, its ALL or its COUNT; MIN, MAX, PARTIAL and
        # SAVE would need updates of their own, which we do not keep.
        raise r.fail("UPDATE can only be combined with ALL and COUNT")
    return tuple(options) if options else ("ALL",)


def _search(r: grammar.Reader, tag: str, name: str, uid: bool) -> Command:
    """SEARCH [RETURN (...)] then the RFC 3501 arguments, read by grammar's parser."""
    returns = return_options(r)
    command = grammar._search(r, tag, name, uid)
    if returns is None:
        return command
    values = {f.name: getattr(command, f.name) for f in dataclasses.fields(command)}
    return ESearch(**values, returns=returns)


def _criteria(r: grammar.Reader) -> tuple[tuple[str, bool], ...]:
    """RFC 5256 5: sort-criteria = "(" sort-criterion *(SP sort-criterion) ")"."""
    r.expect(b"(")
    criteria: list[tuple[str, bool]] = []
    while True:
        word = r.atom().upper()
        reverse = word == "REVERSE"
        if reverse:
            r.sp()
            word = r.atom().upper()
        if word not in SORT_KEYS:
            raise r.fail(f"unknown sort key {word[:40]}")
        criteria.append((word, reverse))
        if not r.maybe_sp():
            break
    r.expect(b")")
    return tuple(criteria)


def _charset_and_program(r: grammar.Reader) -> tuple[str, SearchProgram]:
    charset = r.astring().decode("ascii", "replace").upper()
    r.sp()
    keys = [grammar._search_key(r, 0)]
    while r.maybe_sp():
        keys.append(grammar._search_key(r, 0))
    return charset, keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))


def _sort(r: grammar.Reader, tag: str, name: str, uid: bool) -> Command:
    returns = return_options(r)
    r.sp()
    criteria = _criteria(r)
    r.sp()
    charset, program = _charset_and_program(r)
    return Sort(tag, name, uid, criteria, charset, program, returns)


def _thread(r: grammar.Reader, tag: str, name: str, uid: bool) -> Command:
    r.sp()
    algorithm = r.atom().upper()
    if algorithm not in ALGORITHMS:
        raise r.fail(f"unknown THREAD algorithm {algorithm[:40]}")
    r.sp()
    charset, program = _charset_and_program(r)
    return Thread(tag, name, uid, algorithm, charset, program)


def _cancel_update(r: grammar.Reader, tag: str, name: str, uid: bool) -> Command:
    """RFC 5267 4.3: CANCELUPDATE SP tag-string *(SP tag-string)."""
    if uid:
        raise r.fail("unknown UID command CANCELUPDATE")
    tags = []
    while r.maybe_sp():
        tags.append(r.string().decode("utf-8", "replace"))
    if not tags:
        raise r.fail("CANCELUPDATE needs a tag")
    return CancelUpdate(tag, name, tuple(tags))


PARSERS: dict[str, Any] = {"SEARCH": _search, "SORT": _sort, "THREAD": _thread,
                           "CANCELUPDATE": _cancel_update}
grammar._PARSERS.update(PARSERS)
