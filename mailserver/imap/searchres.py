"""SEARCHRES (RFC 5182): the saved search result and the `$` that refers to it.

The result is kept as UIDs per selected mailbox (a new SELECT starts with none, RFC
5182 2.1), so it follows expunges by itself: `$` names those of the saved messages that
still exist (2.1: "if a message is expunged, it is removed from the result"). Before a
command runs, `resolve` replaces its `$` (grammar.SAVED_RESULT) by the set it stands
for, in the numbering the command uses: UIDs for UID commands and in search keys,
sequence numbers otherwise.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

from mailserver.imap.commands import (
    SearchAnd,
    SearchKey,
    SearchNot,
    SearchOr,
    Selected,
    SequenceSet,
    index_of_uid,
)
from mailserver.imap.grammar import SAVED_RESULT

_SAVED: weakref.WeakKeyDictionary[Selected, tuple[int, ...]] = weakref.WeakKeyDictionary()


def save(selected: Selected, uids: Sequence[int]) -> None:
    _SAVED[selected] = tuple(uids)


def saved(selected: Selected) -> tuple[int, ...]:
    """The saved UIDs (empty if no SEARCH ... SAVE ran since SELECT, RFC 5182 2.1)."""
    return _SAVED.get(selected, ())


def _ranges(numbers: Sequence[int]) -> SequenceSet:
    """Consecutive runs of `numbers` as a SequenceSet that names exactly them."""
    out: list[tuple[int | None, int | None]] = []
    for n in sorted(set(numbers)):
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return SequenceSet(tuple(out))


def _uses_saved(program: Any) -> bool:
    if isinstance(program, SearchKey):
        return program.value is SAVED_RESULT
    if isinstance(program, SearchAnd):
        return any(_uses_saved(k) for k in program.keys)
    if isinstance(program, SearchOr):
        return _uses_saved(program.left) or _uses_saved(program.right)
    if isinstance(program, SearchNot):
        return _uses_saved(program.key)
    return False


def _replace_in(program: Any, uids: SequenceSet) -> Any:
    """The search program with every `$` made a UID key (depth bounded by the grammar)."""
    if isinstance(program, SearchKey):
        return SearchKey("UID", uids) if program.value is SAVED_RESULT else program
    if isinstance(program, SearchAnd):
        return SearchAnd(tuple(_replace_in(k, uids) for k in program.keys))
    if isinstance(program, SearchOr):
        return SearchOr(_replace_in(program.left, uids), _replace_in(program.right, uids))
    if isinstance(program, SearchNot):
        return SearchNot(_replace_in(program.key, uids))
    return program


def resolve(selected: Selected | None, command: Any) -> Any:
    """`command` with its `$` replaced; the command itself when it has none."""
    sequence = getattr(command, "sequence", None)
    program = getattr(command, "program", None)
    has_set = sequence is SAVED_RESULT
    has_key = program is not None and _uses_saved(program)
    if not has_set and not has_key:
        return command
    view = selected.view if selected is not None else None
    uids = [u for u in (saved(selected) if selected is not None else ())
            if view is not None and not view.is_vanished(u)]
    changes: dict[str, Any] = {}
    if has_key:
        changes["program"] = _replace_in(program, _ranges(uids))
    if has_set:
        if getattr(command, "uid", True) or view is None:
            changes["sequence"] = _ranges(uids)
        else:
            messages = view.messages
            seqs = [i + 1 for u in uids if (i := index_of_uid(messages, u)) is not None]
            changes["sequence"] = _ranges(seqs)
    return dataclasses.replace(command, **changes)
