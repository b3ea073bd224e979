"""CONTEXT=SEARCH (RFC 5267 4): SEARCH RETURN (UPDATE ...) keeps a search alive, and
the session tells the client how its result changes, with `* ESEARCH (TAG "t") ADDTO
(0 set)` and `REMOVEFROM (0 set)` (position 0: an unsorted result, 4.3), until
CANCELUPDATE or the mailbox is closed.

After every command (server.py calls `updates`), each live search is evaluated again
on the messages whose flags changed or that arrived since they last were (messages
never change otherwise), so a STORE on one message costs one evaluation per search,
not a search of the folder. Expunged messages of a result are
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
from mailserver.interfaces import Changes, IMailboxView, MessageInfo, StoreError

#: Live searches per selected mailbox; more are declined with NOUPDATE.
MAX_CONTEXTS = 8


@dataclass(eq=False)
class Context:
    tag: str
    program: Any
    uid: bool
    #: UIDs in the result as the client knows it.
    matched: set[int]


@dataclass(eq=False)
class _Live:
    """The live searches of one selected mailbox, and the messages as they were when
    last evaluated: the client's numbering, and (MessageInfo being immutable, replaced
    when flags change) by identity which messages changed since. A list of references
    to the view's own objects: no copy of flags per search."""

    contexts: dict[str, Context] = field(default_factory=dict)
    seen: list[MessageInfo] = field(default_factory=list)


_LIVE: weakref.WeakKeyDictionary[Selected, _Live] = weakref.WeakKeyDictionary()


def active(selected: Selected | None) -> bool:
    if selected is None:
        return False
    live = _LIVE.get(selected)
    return live is not None and bool(live.contexts)


def start(selected: Selected, tag: str, program: Any, uid: bool,
          found: Sequence[int]) -> bool:
    """Keep a search alive (`found`: its result, UIDs or sequence numbers as `uid`
    says); False if there are MAX_CONTEXTS already (the caller says NOUPDATE)."""
    live = _LIVE.setdefault(selected, _Live())
    if tag not in live.contexts and len(live.contexts) >= MAX_CONTEXTS:
        return False
    messages = selected.view.messages
    uids = set(found) if uid else {messages[n - 1].uid for n in found}
    if not live.contexts:
        live.seen = list(messages)
    live.contexts[tag] = Context(tag, program, uid, uids)
    return True


def cancel(selected: Selected, tags: Sequence[str]) -> None:
    """CANCELUPDATE (RFC 5267 4.3): unknown tags are ignored."""
    live = _LIVE.get(selected)
    if live is not None:
        for tag in tags:
            live.contexts.pop(tag, None)
        if not live.contexts:
            live.seen = []


def _line(context: Context, word: bytes, numbers: Sequence[int]) -> bytes:
    quoted = context.tag.replace("\\", "\\\\").replace('"', '\\"')
    uid = b" UID" if context.uid else b""
    return b'* ESEARCH (TAG "%s")%s %s (0 %s)\r\n' % (
        quoted.encode("utf-8", "replace"), uid, word, sequence_text(numbers))


def removed_before_expunge(selected: Selected | None, changes: Changes) -> bytes:
    """REMOVEFROM for the results' messages among `changes.expunged`, in the numbering
    before those expunges (to be sent before the EXPUNGE lines)."""
    live = _LIVE.get(selected) if selected is not None else None
    if live is None or not live.contexts or not changes.expunged:
        return b""
    gone = _expunged(live.seen, changes.expunged)  # (number before the expunges, uid)
    kept = {info.uid for info in live.seen}.difference(uid for _, uid in gone)
    live.seen = [info for info in live.seen if info.uid in kept]
    out = []
    for context in live.contexts.values():
        dropped = [(seq, uid) for seq, uid in gone if uid in context.matched]
        for _, uid in dropped:
            context.matched.discard(uid)
        if dropped:
            out.append(_line(context, b"REMOVEFROM",
                             [uid if context.uid else seq for seq, uid in dropped]))
    return b"".join(out)


def _expunged(seen: Sequence[MessageInfo], expunged: Sequence[int]) -> list[tuple[int, int]]:
    """(number before the expunges, uid) of each of `expunged`, EXPUNGE numbers each
    counted after the ones before it (RFC 3501 7.4.1). This runs on the reactor thread:
    ascending numbers (what a sync reports, MailboxView._drop_vanished) are mapped in one
    pass, as the k-th is the (n + k)-th message before them all; a list.pop per number
    moved the rest of the list each time (50,000 of 100,000 expunged: 0.65 s, of
    500,000: 12 s of the reactor). Any other order is replayed with pops."""
    count = len(seen)
    if all(a <= b for a, b in zip(expunged, expunged[1:], strict=False)):
        out = []
        for k, n in enumerate(expunged):
            if 0 < n and n + k <= count:
                out.append((n + k, seen[n + k - 1].uid))
        return out
    remaining = [info.uid for info in seen]
    position = {uid: i + 1 for i, uid in enumerate(remaining)}
    gone: list[tuple[int, int]] = []
    for n in expunged:
        if 0 < n <= len(remaining):
            uid = remaining.pop(n - 1)
            gone.append((position[uid], uid))
    return gone


def updates(view: IMailboxView, selected: Selected) -> bytes:
    """ADDTO/REMOVEFROM for every live search whose result changed. Blocking (a BODY
    key reads the changed messages)."""
    live = _LIVE.get(selected)
    if live is None or not live.contexts:
        return b""
    messages = view.messages
    before = {info.uid: info for info in live.seen}
    changed = [(seq, info) for seq, info in enumerate(messages, 1)
               if before.get(info.uid) is not info and not view.is_vanished(info.uid)]
    current = {info.uid for info in messages}
    live.seen = list(messages)
    evaluator = Evaluator(view)
    out = []
    for context in live.contexts.values():
        added: list[int] = []
        removed: list[int] = []
        for uid in [u for u in context.matched if u not in current]:
            context.matched.discard(uid)  # gone without passing removed_before_expunge
            if context.uid:
                removed.append(uid)
        for seq, info in changed:
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
        if removed:
            out.append(_line(context, b"REMOVEFROM", removed))
        if added:
            out.append(_line(context, b"ADDTO", added))
    return b"".join(out)
