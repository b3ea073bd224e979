"""CONDSTORE and QRESYNC (RFC 7162) in the IMAP session: what SELECT, ENABLE, FETCH,
STORE, SEARCH and STATUS add when a client uses them. The handlers of commands_*.py
call in here; the modseqs come from the store (store/modseq.py, IModseqView).

CONDSTORE is enabled for the session by the first CONDSTORE-enabling command (RFC 7162
3.1: SELECT/EXAMINE (CONDSTORE), FETCH MODSEQ or CHANGEDSINCE, SEARCH MODSEQ, STORE
UNCHANGEDSINCE, STATUS HIGHESTMODSEQ, ENABLE CONDSTORE/QRESYNC); from then on every
SELECT says HIGHESTMODSEQ and every unsolicited FETCH carries MODSEQ. QRESYNC is only
enabled by ENABLE (RFC 7162 3.2.3), and turns EXPUNGE responses into VANISHED.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from mailserver.imap import grammar
from mailserver.imap.commands import Qresync, SelectParams, SequenceSet, bad, uid_set_text
from mailserver.imap.encode import flag_list
from mailserver.interfaces import IMailboxView, IModseqView, MessageInfo, StoreError

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

Ranges = list[tuple[int, int]]
#: Above every UID (RFC 3501 2.3.1.1: 32 bits): `_within`'s bisection key.
MAX_UID = 2**32


def modseq_view(view: IMailboxView) -> IModseqView:
    """Our store's views all have modseqs (store/modseqview.py)."""
    return cast(IModseqView, view)


def ranges_text(ranges: Ranges) -> bytes:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges).encode()


def uid_ranges(sequence: SequenceSet, largest: int) -> Ranges:
    """A UID set as sorted, merged ranges (`*` is `largest`)."""
    out: Ranges = []
    for lo, hi in sorted(sequence.resolve(largest)):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def offered(session: IMAPSession) -> bool:
    """CONDSTORE and QRESYNC are off in cluster mode (cluster.node set; decision 0039):
    each node keeps its own modseq database (SQLite stays off the shared file system),
    and a client moving to another node could otherwise see its HIGHESTMODSEQ go back
    or miss a change. Not advertised, so their commands are BAD (RFC 3501 7.1.5)."""
    return not session.config.cluster.node


_NOT_OFFERED = "CONDSTORE and QRESYNC are not offered by this server (RFC 7162)"


async def ensure_condstore(session: IMAPSession) -> None:
    """A CONDSTORE-enabling command: enable it; with a mailbox selected, say its
    HIGHESTMODSEQ before the command's answer (RFC 7162 3.1)."""
    if session.condstore:
        return
    if not offered(session):
        raise bad(_NOT_OFFERED, "CLIENTBUG")
    session.condstore = True
    selected = session.selected
    if selected is not None:
        view = modseq_view(selected.view)
        highest: int = await session.blocking(view.enable_condstore)
        session.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % highest)


async def enable(session: IMAPSession, capabilities: Sequence[str]) -> list[str]:
    """ENABLE CONDSTORE / QRESYNC (RFC 5161, RFC 7162 3.2.3: QRESYNC implies
    CONDSTORE); the names this command enabled, for `* ENABLED`."""
    enabled: list[str] = []
    if not offered(session):
        return enabled  # RFC 5161 3.1: what is not advertised is not enabled
    for capability in capabilities:
        if capability == "CONDSTORE" and "CONDSTORE" not in enabled:
            enabled.append("CONDSTORE")
        elif capability == "QRESYNC" and not session.qresync:
            session.qresync = True
            enabled.append("QRESYNC")
    if enabled:
        await ensure_condstore(session)
    return enabled


def _qresync_answer(view: IModseqView, qresync: Qresync | None,
                    recent: bool = True) -> tuple[int, bytes]:
    """HIGHESTMODSEQ, then (QRESYNC with the right UIDVALIDITY) VANISHED (EARLIER) and
    the FETCH of each message changed since the client's modseq (RFC 7162 3.2.5.1).
    Blocking. A wrong UIDVALIDITY is an ordinary SELECT: the client starts over.
    `recent`: False in IMAP4rev2 mode (no \\Recent, RFC 9051)."""
    highest = view.enable_condstore()
    if qresync is None or qresync.uid_validity != view.uid_validity:
        return highest, b""
    top = max(view.uid_next - 1, 1)
    known = uid_ranges(qresync.known_uids, top) if qresync.known_uids is not None else None
    vanished = view.vanished_since(qresync.modseq, known)
    changed = view.changed_since(qresync.modseq)
    lines = []
    if vanished:
        lines.append(b"* VANISHED (EARLIER) " + ranges_text(vanished) + b"\r\n")
    messages = view.messages
    for uid in sorted(changed):  # the changes, not the folder (100 of 100,000)
        seq = view.seq_of(uid)
        if seq is None or (known is not None and not _within(uid, known)):
            continue
        info, modseq = messages[seq - 1], changed[uid]
        lines.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (
            seq, uid, flag_list(sorted(info.flags), info.recent and recent), modseq))
    return max(highest, view.highest_modseq), b"".join(lines)


def _within(uid: int, ranges: Ranges) -> bool:
    """`ranges` sorted and merged (uid_ranges): a binary search. A scan of them per
    changed message cost messages x ranges, and a client's known-uids may hold ~16,000
    ranges (a 64 KiB line): seconds of CPU per SELECT, holding the GIL."""
    i = bisect.bisect_right(ranges, (uid, MAX_UID)) - 1
    return i >= 0 and ranges[i][0] <= uid <= ranges[i][1]


async def select_lines(session: IMAPSession, view: IMailboxView,
                       params: SelectParams) -> bytes:
    """What SELECT/EXAMINE adds once CONDSTORE is on: [HIGHESTMODSEQ] (or [NOMODSEQ]
    when the modseq database cannot be read now), and QRESYNC's resynchronisation."""
    if params.condstore:
        session.condstore = True
    if not session.condstore:
        return b""
    try:
        answer: tuple[int, bytes] = await session.blocking(
            _qresync_answer, modseq_view(view), params.qresync, not session.imap4rev2)
        highest, qresync = answer
    except StoreError:
        return b"* OK [NOMODSEQ] Mod-sequences are unavailable just now\r\n"
    return b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % highest + qresync


def check_select(session: IMAPSession, params: SelectParams) -> None:
    """RFC 7162 3.2.5: QRESYNC in SELECT without ENABLE QRESYNC first is BAD."""
    if (params.condstore or params.qresync is not None) and not offered(session):
        raise bad(_NOT_OFFERED, "CLIENTBUG")
    if params.qresync is not None and not session.qresync:
        raise bad("QRESYNC must be enabled first (ENABLE QRESYNC)", "CLIENTBUG")


# -- FETCH -----------------------------------------------------------------------------


def wants_modseq(command: grammar.Fetch) -> bool:
    return command.changed_since is not None or any(
        att.name == "MODSEQ" for att in command.items)


async def fetch_changed(session: IMAPSession, command: grammar.Fetch,
                        messages: Sequence[MessageInfo], indexes: list[int]) -> list[int]:
    """FETCH (CHANGEDSINCE n [VANISHED]): only the messages changed after n (RFC 7162
    3.1.4.1), from the modseq index; with VANISHED (UID FETCH, QRESYNC enabled) first
    the UIDs of the set expunged after n (3.2.6)."""
    if command.vanished and not session.qresync:
        raise bad("VANISHED needs ENABLE QRESYNC first", "CLIENTBUG")
    await ensure_condstore(session)
    view = modseq_view(session.selection().view)
    if command.vanished:
        top = max(view.uid_next - 1, 1)
        requested = uid_ranges(command.sequence, top)
        vanished: Ranges = await session.blocking(view.vanished_since,
                                                  command.changed_since, requested)
        if vanished:
            session.send(b"* VANISHED (EARLIER) " + ranges_text(vanished) + b"\r\n")
    if command.changed_since is None:
        return indexes
    changed: dict[int, int] = await session.blocking(view.changed_since,
                                                     command.changed_since)
    return [i for i in indexes if messages[i].uid in changed]


async def fetch_modseqs(session: IMAPSession, messages: Sequence[MessageInfo],
                        indexes: list[int]) -> dict[int, bytes]:
    """uid -> `MODSEQ (n)` for the messages a FETCH answers (after any \\Seen it set)."""
    await ensure_condstore(session)
    view = modseq_view(session.selection().view)
    uids = [messages[i].uid for i in indexes]
    found: dict[int, int] = await session.blocking(view.modseqs_of, uids)
    return {uid: b"MODSEQ (%d)" % found[uid] for uid in uids}


# -- STORE -----------------------------------------------------------------------------


async def conditional_store(session: IMAPSession, command: grammar.Store,
                            uids: list[int], flags: list[str]) -> tuple[list[int], str]:
    """STORE (UNCHANGEDSINCE n) (RFC 7162 3.1.3): (UIDs refused, the MODIFIED code or
    "" for the tagged OK). UNCHANGEDSINCE 0 refuses every message (each has a modseq)."""
    assert command.unchanged_since is not None
    await ensure_condstore(session)
    view = modseq_view(session.selection().view)
    result: tuple[list[MessageInfo], list[int]] = await session.blocking(
        view.store_unchanged_since, uids, command.mode, flags, command.unchanged_since)
    modified = result[1]
    if not modified:
        return [], ""
    if command.uid:
        numbers = sorted(modified)
    else:
        numbers = sorted(n for n in (view.seq_of(uid) for uid in modified) if n is not None)
    return modified, f"MODIFIED {uid_set_text(numbers)}"


async def store_lines(session: IMAPSession, command: grammar.Store, indexes: list[int],
                      refused: set[int], changed: set[int]) -> bytes:
    """The untagged FETCH of a STORE with CONDSTORE on: FLAGS and MODSEQ of each
    message stored (not of those refused as MODIFIED); with .SILENT only the MODSEQ of
    those whose flags changed (RFC 7162 3.1.3)."""
    view = modseq_view(session.selection().view)
    messages = view.messages
    picked = [i for i in indexes if messages[i].uid not in refused
              and not view.is_vanished(messages[i].uid)
              and (not command.silent or messages[i].uid in changed)]
    if not picked:
        return b""
    modseqs = await fetch_modseqs(session, messages, picked)
    lines = []
    for i in picked:
        info = messages[i]
        # RFC 7162 3.2.4: UID in every FETCH once QRESYNC is enabled.
        uid = b"UID %d " % info.uid if command.uid or session.qresync else b""
        flags = b"" if command.silent else b"FLAGS %s " % flag_list(
            sorted(info.flags), info.recent and not session.imap4rev2)  # RFC 9051
        lines.append(b"* %d FETCH (%s%s%s)\r\n" % (i + 1, uid, flags, modseqs[info.uid]))
    return b"".join(lines)


# -- SEARCH ----------------------------------------------------------------------------


def uses_modseq(program: grammar.SearchProgram) -> bool:
    if isinstance(program, grammar.SearchKey):
        return program.op == "MODSEQ"
    if isinstance(program, grammar.SearchAnd):
        return any(uses_modseq(k) for k in program.keys)
    if isinstance(program, grammar.SearchOr):
        return uses_modseq(program.left) or uses_modseq(program.right)
    if isinstance(program, grammar.SearchNot):
        return uses_modseq(program.key)
    return False


async def search_suffix(session: IMAPSession, found: list[int], uid: bool) -> bytes:
    """` (MODSEQ n)`: the highest modseq of the messages a SEARCH with MODSEQ found
    (RFC 7162 3.1.5); nothing when none matched."""
    if not found:
        return b""
    return b" (MODSEQ %d)" % await highest_modseq_of(session, found, uid)


async def highest_modseq_of(session: IMAPSession, found: Sequence[int], uid: bool) -> int:
    """The highest modseq of these messages (UIDs, or sequence numbers)."""
    view = modseq_view(session.selection().view)
    if uid:
        uids = list(found)
    else:
        uids = [view.messages[n - 1].uid for n in found]
    modseqs: dict[int, int] = await session.blocking(view.modseqs_of, sorted(uids))
    return max(modseqs.values(), default=0)
