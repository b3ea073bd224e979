"""CONTEXT=SEARCH (RFC 5267 4): SEARCH RETURN (UPDATE ...) keeps a search alive, and
the session tells the client how its result changes, with `* ESEARCH (TAG "t") ADDTO
(0 set)` and `REMOVEFROM (0 set)` (position 0: an unsorted result, 4.3), until
CANCELUPDATE or the mailbox is closed.

After every command (server.py calls `updates`), each live search is evaluated again
on the messages whose flags changed or that arrived since it last was (kept as a
snapshot of UID -> flags: messages never change otherwise), so a STORE on one message
costs one evaluation, not a search of the folder. Expunged messages of a result are
reported by `removed_before_expunge` just before the `* n EXPUNGE` lines, while their
sequence numbers still hold (the client's numbering is the snapshot's order).

Updates for a sorted result (SORT RETURN (UPDATE), CONTEXT=SORT) are declined with
`* NO [NOUPDATE "tag"]` (4.2 allows it): SORT still answers, without updates. So are
searches beyond MAX_CONTEXTS per session.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailserver.imap.commands import Selected
from mailserver.imap.search import Evaluator, _Message
from mailserver.imap.sort import sequence_text
from mailserver.interfaces import Changes, IMailboxView, StoreError

#: Live searches per selected mailbox; more are declined with NOUPDATE.
MAX_CONTEXTS = 8


@dataclass(eq=False)
class Context:
    tag: str
    program: Any
    uid: bool
    #: UIDs in the result as the client knows it.
    matched: set[int]
    #: UID -> flags of every message when last evaluated, and their order then (the
    #: client's sequence numbers).
    flags: dict[int, frozenset[str]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)


_CONTEXTS: weakref.WeakKeyDictionary[Selected, dict[str, Context]] = (
    weakref.WeakKeyDictionary())


def active(selected: Selected | None) -> bool:
    return selected is not None and bool(_CONTEXTS.get(selected))


def start(selected: Selected, tag: str, program: Any, uid: bool,
          found: Sequence[int]) -> bool:
    """Keep a search alive (`found`: its result, UIDs or sequence numbers as `uid`
    says); False if there are MAX_CONTEXTS already (the caller says NOUPDATE)."""
    contexts = _CONTEXTS.setdefault(selected, {})
    if tag not in contexts and len(contexts) >= MAX_CONTEXTS:
        return False
    messages = selected.view.messages
    uids = set(found) if uid else {messages[n - 1].uid for n in found}
    contexts[tag] = Context(tag, program, uid, uids,
                            {m.uid: m.flags for m in messages}, [m.uid for m in messages])
    return True


def cancel(selected: Selected, tags: Sequence[str]) -> None:
    """CANCELUPDATE (RFC 5267 4.3): unknown tags are ignored."""
    contexts = _CONTEXTS.get(selected)
    if contexts:
        for tag in tags:
            contexts.pop(tag, None)


def _line(context: Context, word: bytes, numbers: Sequence[int]) -> bytes:
    quoted = context.tag.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8", "replace")
    uid = b" UID" if context.uid else b""
    return b'* ESEARCH (TAG "%s")%s %s (0 %s)\r\n' % (quoted, uid, word,
                                                      sequence_text(numbers))


def removed_before_expunge(selected: Selected | None, changes: Changes) -> bytes:
    """REMOVEFROM for the results' messages among `changes.expunged`, in the numbering
    before those expunges (to be sent before the EXPUNGE lines)."""
    contexts = _CONTEXTS.get(selected) if selected is not None else None
    if not contexts or not changes.expunged:
        return b""
    out = []
    for context in contexts.values():
        remaining = list(context.order)
        gone: list[tuple[int, int]] = []  # (number before the expunges, uid)
        position = {uid: i + 1 for i, uid in enumerate(context.order)}
        for n in changes.expunged:
            if 0 < n <= len(remaining):
                uid = remaining.pop(n - 1)
                gone.append((position[uid], uid))
        context.order = remaining
        dropped = [(seq, uid) for seq, uid in gone if uid in context.matched]
        for _, uid in gone:
            context.matched.discard(uid)
            context.flags.pop(uid, None)
        if dropped:
            out.append(_line(context, b"REMOVEFROM",
                             [uid if context.uid else seq for seq, uid in dropped]))
    return b"".join(out)


def updates(view: IMailboxView, selected: Selected) -> bytes:
    """ADDTO/REMOVEFROM for every live search whose result changed. Blocking (a BODY
    key reads the changed messages)."""
    contexts = _CONTEXTS.get(selected)
    if not contexts:
        return b""
    messages = view.messages
    out = []
    evaluator = Evaluator(view)
    for context in contexts.values():
        added: list[int] = []
        removed: list[int] = []
        current = {m.uid for m in messages}
        for uid in [u for u in context.matched if u not in current]:
            context.matched.discard(uid)  # gone without passing removed_before_expunge
            if context.uid:
                removed.append(uid)
        for seq, info in enumerate(messages, 1):
            if context.flags.get(info.uid) == info.flags or view.is_vanished(info.uid):
                continue
            try:
                hit = evaluator.matches(context.program, _Message(view, info, seq))
            except StoreError:
                continue
            number = info.uid if context.uid else seq
            if hit and info.uid not in context.matched:
                context.matched.add(info.uid)
                added.append(number)
            elif not hit and info.uid in context.matched:
                context.matched.discard(info.uid)
                removed.append(number)
        context.flags = {m.uid: m.flags for m in messages}
        context.order = [m.uid for m in messages]
        if removed:
            out.append(_line(context, b"REMOVEFROM", removed))
        if added:
            out.append(_line(context, b"ADDTO", added))
    return b"".join(out)
