"""SORT (RFC 5256 3) over the messages a search found, and the ESEARCH answers of
ESEARCH (RFC 4731), ESORT and PARTIAL (RFC 5267).

Runs in a disk thread as a whole (search, then the keys from sortkeys.load). The
order: each criterion in turn, REVERSE turning only its own; messages equal under all
of them keep their mailbox order (RFC 5256 3: "sorted according to the order in which
they appear in the mailbox"), which stable sorts give for free when applied from the
last criterion to the first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from mailserver.imap.commands import SearchKey
from mailserver.imap.grammar_sort import SORT_KEYS
from mailserver.imap.search import run_search
from mailserver.imap.sortkeys import Keys, load
from mailserver.interfaces import IMailboxView, MessageInfo

#: The keys that need a message's header (the rest are in MessageInfo).
_HEADER_KEYS = SORT_KEYS - {"ARRIVAL", "SIZE"}

Entry = tuple[int, MessageInfo, Keys | None]
_EXTRACT: dict[str, Callable[[Entry], Any]] = {
    "ARRIVAL": lambda e: e[1].internal_date,
    "SIZE": lambda e: e[1].size,
    # RFC 5256 2.2: without a usable Date header, the internal date is the sent date.
    "DATE": lambda e: e[1].internal_date if e[2] is None or e[2].date is None
    else e[2].date,
    "SUBJECT": lambda e: e[2].subject if e[2] else b"",
    "FROM": lambda e: e[2].from_ if e[2] else b"",
    "TO": lambda e: e[2].to if e[2] else b"",
    "CC": lambda e: e[2].cc if e[2] else b"",
    "DISPLAYFROM": lambda e: e[2].display_from if e[2] else "",
    "DISPLAYTO": lambda e: e[2].display_to if e[2] else "",
}


def matching(view: IMailboxView, program: Any,
             cache_key: tuple[Any, ...] | None) -> list[int]:
    """0-based indexes of the messages the search program matches (ALL, what clients
    send with SORT and THREAD nearly always, without evaluating it per message)."""
    if isinstance(program, SearchKey) and program.op == "ALL":
        return list(range(len(view.messages)))
    return [seq - 1 for seq in run_search(view, program, False, cache_key)]


def entries(view: IMailboxView, indexes: Sequence[int], cache_key: tuple[Any, ...] | None,
            need_keys: bool) -> list[Entry]:
    """(sequence number, info, keys) of these messages; keys None unless needed.
    Messages expunged by another session meanwhile are left out."""
    messages = view.messages
    infos = [messages[i] for i in indexes]
    if not need_keys:
        return [(i + 1, info, None) for i, info in zip(indexes, infos, strict=True)]
    keys = load(view, cache_key, infos).get
    rows = [(i + 1, info, keys(info.uid)) for i, info in zip(indexes, infos, strict=True)]
    return [row for row in rows if row[2] is not None]


class Answers:
    """The last answers of SORT and THREAD per folder, criteria and message set.

    The answer depends only on the messages matched, their sequence numbers and their
    keys, and the keys of a UID never change while the UIDVALIDITY holds (RFC 3501
    2.3.1.1): the same SORT or THREAD over the same (sequence number, UID) pairs has
    the same answer. Clients repeat them on every view of a folder (Roundcube threads
    each page), so the work is done once per change of the folder. Bounded in the
    messages all entries describe together (about 50 octets each)."""

    MAX_ENTRIES = 16
    MAX_MESSAGES = 400_000

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, Any, int]] = OrderedDict()
        self._messages = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...] | None, signature: Any) -> Any:
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != signature:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: tuple[Any, ...] | None, signature: Any, value: Any, size: int) -> None:
        if key is None or size > self.MAX_MESSAGES // 2:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._messages -= old[2]
            self._entries[key] = (signature, value, size)
            self._messages += size
            while len(self._entries) > self.MAX_ENTRIES or self._messages > self.MAX_MESSAGES:
                _, dropped = self._entries.popitem(last=False)
                self._messages -= dropped[2]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._messages = 0


ANSWERS = Answers()


def signature(view: IMailboxView, indexes: Sequence[int]) -> tuple[Any, ...]:
    """What an answer over these messages depends on: their (sequence number, UID);
    for all of the folder's messages (ascending, distinct), the UIDs say it all."""
    messages = view.messages
    uids = tuple([messages[i].uid for i in indexes])
    return (None if len(indexes) == len(messages) else tuple(indexes)), uids


def run_sort(view: IMailboxView, criteria: Sequence[tuple[str, bool]], program: Any,
             uid: bool, cache_key: tuple[Any, ...] | None = None) -> list[int]:
    """Sequence numbers (or UIDs) of the matching messages in sort order. Blocking."""
    found = matching(view, program, cache_key)
    answer_key = None if cache_key is None else (cache_key, "SORT", tuple(criteria), uid)
    sign = signature(view, found)
    cached: list[int] | None = ANSWERS.get(answer_key, sign)
    if cached is not None:
        return cached
    need = any(name in _HEADER_KEYS for name, _ in criteria)
    rows = entries(view, found, cache_key, need)
    for name, reverse in reversed(criteria):
        rows.sort(key=_EXTRACT[name], reverse=reverse)
    result = [info.uid if uid else seq for seq, info, _ in rows]
    if len(rows) == len(found):  # not when some vanished meanwhile
        ANSWERS.put(answer_key, sign, result, len(found))
    return result


# -- ESEARCH answers (RFC 4731 3.1, RFC 5267 4.4) ----------------------------------------


def sequence_text(numbers: Sequence[int], ordered: bool = False) -> bytes:
    """A sequence-set of these numbers with ascending runs as `a:b`: sorted first
    (SEARCH), or for `ordered` (ESORT, RFC 5267 3.1: ALL keeps the sort order) in the
    order given, so that `5,3:4,2,1` says 5, 3, 4, 2, 1 (as Dovecot writes it)."""
    if not ordered:
        numbers = sorted(set(numbers))
    parts: list[bytes] = []
    i, n = 0, len(numbers)
    while i < n:
        j = i
        while j + 1 < n and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(b"%d" % numbers[i] if j == i else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(parts)


def partial_window(found: Sequence[int], window: tuple[int, int]) -> Sequence[int]:
    """RFC 5267 4.4: the results at positions lo..hi (1-based) of `found`."""
    lo, hi = window
    return found[lo - 1:hi]


def esearch_line(tag: str, uid: bool, returns: Sequence[Any], found: Sequence[int],
                 ordered: bool = False, modseq: int | None = None) -> bytes:
    """`* ESEARCH (TAG "t") [UID] ...` with what RETURN asked for, in RFC 4731's order
    of the options: MIN, MAX, ALL, PARTIAL, COUNT. MIN and MAX of a SORT are the first
    and last in sort order (RFC 5267 3.1); of a SEARCH the lowest and highest."""
    quoted = tag.replace("\\", "\\\\").replace('"', '\\"')
    out = [b'* ESEARCH (TAG "%s")' % quoted.encode("utf-8", "replace")]
    if uid:
        out.append(b"UID")
    names = {r if isinstance(r, str) else r[0] for r in returns}
    if found:
        if "MIN" in names:
            out.append(b"MIN %d" % (found[0] if ordered else min(found)))
        if "MAX" in names:
            out.append(b"MAX %d" % (found[-1] if ordered else max(found)))
        if "ALL" in names:
            out.append(b"ALL " + sequence_text(found, ordered))
    for option in returns:
        if not isinstance(option, str):  # ("PARTIAL", (lo, hi))
            lo, hi = option[1]
            window = partial_window(found if ordered else sorted(found), (lo, hi))
            text = sequence_text(window, ordered) if window else b"NIL"
            out.append(b"PARTIAL (%d:%d %s)" % (lo, hi, text))
    if "COUNT" in names:
        out.append(b"COUNT %d" % len(found))
    if modseq is not None and found:  # RFC 7162 3.1.5, see modseq_shown()
        out.append(b"MODSEQ %d" % modseq)
    return b" ".join(out) + b"\r\n"


def modseq_shown(returns: Sequence[Any], found: Sequence[int],
                 ordered: bool = False) -> list[int]:
    """Whose modseq an ESEARCH of a SEARCH with MODSEQ reports (RFC 7162 3.1.5 with
    RFC 4731): the highest of the MIN and/or MAX message when only those were asked
    for, else the highest of every message found. `ordered` (ESORT): MIN and MAX are
    the first and last in sort order (RFC 5267 3.1)."""
    names = {r if isinstance(r, str) else r[0] for r in returns} - {"SAVE", "UPDATE"}
    if found and names and names <= {"MIN", "MAX"}:
        picked = []
        if "MIN" in names:
            picked.append(found[0] if ordered else min(found))
        if "MAX" in names:
            picked.append(found[-1] if ordered else max(found))
        return picked
    return list(found)
