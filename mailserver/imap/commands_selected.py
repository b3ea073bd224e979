"""Commands of the selected state (RFC 3501 6.4): CHECK, CLOSE, UNSELECT (RFC 3691),
EXPUNGE and UID EXPUNGE (RFC 4315), SEARCH, FETCH, STORE, COPY, MOVE (RFC 6851); and
IDLE (RFC 2177), valid once authenticated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from mailserver.imap import commands_condstore as condstore
from mailserver.imap import fetch as fetching
from mailserver.imap import grammar
from mailserver.imap.commands import (
    ANSWERED,
    Refusal,
    bad,
    no,
    sequence_indexes,
    uid_set_text,
)
from mailserver.imap.commands_mailbox import SYSTEM_FLAGS, checked_name
from mailserver.imap.encode import flag_list
from mailserver.imap.search import CHARSETS, run_search
from mailserver.interfaces import Changes, CopyResult, IMailboxView, MessageInfo

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

#: Numbers per line in a SEARCH answer chunk (a 100k-message answer streams).
SEARCH_CHUNK = 10000


#: One FETCH batch as built in a disk thread: its answer bytes and the messages seen.
BuiltBatch = tuple[bytes, list[int]]

def _writable(session: IMAPSession) -> IMailboxView:
    selected = session.selection()
    if selected.read_only:
        raise no("Mailbox is read-only (EXAMINE)", "CANNOT")
    return selected.view


async def check(session: IMAPSession, command: grammar.Simple) -> str | None:
    return None  # RFC 3501 6.4.1: every change is already on disk


async def close(session: IMAPSession, command: grammar.Simple) -> str | None:
    """RFC 3501 6.4.2: expunge silently (no EXPUNGE responses), then deselect."""
    selected = session.selection()
    if not selected.read_only:
        await session.blocking(selected.view.expunge)
    await session.deselect()
    return None


async def unselect(session: IMAPSession, command: grammar.Simple) -> str | None:
    await session.deselect()  # RFC 3691: as CLOSE without the expunge
    return None


async def expunge(session: IMAPSession, command: grammar.Command) -> str | None:
    view = _writable(session)
    uids: list[int] | None = None
    if isinstance(command, grammar.UidExpunge):
        indexes = sequence_indexes(view.messages, command.sequence, uid=True)
        uids = [view.messages[i].uid for i in indexes]
        if not uids:
            return None
    changes: Changes = await session.blocking(view.expunge, uids)
    session.report(changes)
    return None


def item_cache_key(session: IMAPSession) -> tuple[str, str, str, int]:
    """The selected folder's key in the shared item cache (fetch.CACHE): its entries
    hold for as long as the UIDVALIDITY does (RFC 3501 2.3.1.1). The store's location
    (the Maildir's path) is in it too, so a user's Maildir made again from scratch
    cannot meet old entries."""
    account, selected = session.authenticated(), session.selection()
    return (str(account.store.location), str(account.user.address), selected.name,
            int(selected.view.uid_validity))


async def search(session: IMAPSession, command: grammar.Search) -> str | None:
    charset = command.charset
    if charset is not None and charset not in CHARSETS:
        # RFC 3501 6.4.4 / 7.1: BADCHARSET lists what we support.
        raise no(f"Unsupported charset {charset}", f"BADCHARSET ({' '.join(CHARSETS)})")
    view = session.selection().view
    cache_key = item_cache_key(session)
    modseq = condstore.uses_modseq(command.program)
    if modseq:
        await condstore.ensure_condstore(session)
    found: list[int] = await session.blocking(run_search, view, command.program,
                                              command.uid, cache_key)
    chunks = [b"* SEARCH"]
    for start in range(0, len(found), SEARCH_CHUNK):
        chunks.append(b" " + b" ".join(b"%d" % n for n in found[start:start + SEARCH_CHUNK]))
    if modseq:
        chunks.append(await condstore.search_suffix(session, found, command.uid))
    session.send(b"".join(chunks) + b"\r\n")
    return None


async def fetch(session: IMAPSession, command: grammar.Fetch) -> str | None:
    view = session.selection().view
    indexes = sequence_indexes(view.messages, command.sequence, command.uid)
    items = list(grammar.flatten(command.items))
    if (command.uid or session.qresync) and not any(att.name == "UID" for att in items):
        # RFC 3501 6.4.8; RFC 7162 3.2.4: every FETCH has UID once QRESYNC is enabled.
        items.insert(0, grammar.FetchAtt("UID"))
    with_modseq = condstore.wants_modseq(command)
    if with_modseq:
        # RFC 7162 3.1.4.1: MODSEQ comes from the modseq database; CHANGEDSINCE
        # narrows the set first (and implies MODSEQ).
        items = [att for att in items if att.name != "MODSEQ"]
        indexes = await condstore.fetch_changed(session, command, view.messages, indexes)
    changed: frozenset[int] = frozenset()
    if not view.read_only and any(att.sets_seen for att in items):
        unseen = [view.messages[i].uid for i in indexes
                  if "\\Seen" not in view.messages[i].flags]
        if unseen:
            infos: list[MessageInfo] = await session.blocking(view.store, unseen, "+",
                                                              ["\\Seen"])
            changed = frozenset(info.uid for info in infos)
    modseqs = (await condstore.fetch_modseqs(session, view.messages, indexes)
               if with_modseq else None)
    fetch_plan = fetching.plan(items)
    cache_key = item_cache_key(session)
    missing: list[int] = []
    chunks = fetching.batches(fetch_plan, view.messages, indexes)
    recent = not session.imap4rev2  # RFC 9051: no \Recent

    def build(batch: list[int]) -> Deferred[BuiltBatch] | BuiltBatch:
        entries = [(i + 1, view.messages[i]) for i in batch]
        if fetch_plan.needs_disk:
            return session.blocking(fetching.build, view, fetch_plan, entries, changed,
                                    cache_key, modseqs, recent)
        return fetching.build(view, fetch_plan, entries, changed, None, modseqs, recent)

    with session.write_flow() as flow:
        # The next batch is built in the disk thread while this one is written: one
        # store call at a time still, but no idle hop between batches.
        pending: Deferred[BuiltBatch] | BuiltBatch | None = build(chunks[0]) if chunks else None
        for n in range(len(chunks)):
            assert pending is not None
            data, gone = await pending if isinstance(pending, Deferred) else pending
            pending = build(chunks[n + 1]) if n + 1 < len(chunks) else None
            missing += gone
            session.send(data)
            if flow is not None and flow.paused:
                await flow.wait()
            if session._closing:
                if isinstance(pending, Deferred):
                    await pending  # let the running store call end before the view closes
                return ANSWERED
    if missing:
        # RFC 5530 EXPUNGEISSUED: another session expunged some of them meanwhile.
        raise no("Some of the requested messages no longer exist", "EXPUNGEISSUED")
    return None


def normalised_flags(flags: tuple[str, ...]) -> list[str]:
    """System flags in their canonical case; unknown system flags are refused."""
    out = []
    for flag in flags:
        if flag.startswith("\\"):
            known = next((f for f in SYSTEM_FLAGS if f.lower() == flag.lower()), None)
            if known is None:
                raise bad(f"Invalid system flag {flag}")
            out.append(known)
        else:
            out.append(flag)
    return out


async def store(session: IMAPSession, command: grammar.Store) -> str | None:
    view = _writable(session)
    indexes = sequence_indexes(view.messages, command.sequence, command.uid)
    flags = normalised_flags(command.flags)
    uids = [view.messages[i].uid for i in indexes]
    if command.unchanged_since is not None or session.condstore:
        return await _store_condstore(session, command, indexes, uids, flags)
    if uids:
        await session.blocking(view.store, uids, command.mode, flags)
        if command.mode != "-":
            session.send(session.keyword_lines(flags))  # a keyword new to the client
    if not command.silent:
        # RFC 3501 6.4.6: the new flags of each message, as an untagged FETCH.
        lines = []
        messages = view.messages
        for i in indexes:
            info = messages[i]
            if view.is_vanished(info.uid):
                continue  # expunged by another session; its EXPUNGE comes later
            uid = b"UID %d " % info.uid if command.uid else b""
            lines.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (
                i + 1, uid, flag_list(sorted(info.flags),
                                      info.recent and not session.imap4rev2)))
        session.send(b"".join(lines))
    return None


async def _store_condstore(session: IMAPSession, command: grammar.Store, indexes: list[int],
                           uids: list[int], flags: list[str]) -> str | None:
    """STORE once CONDSTORE is on: MODSEQ in each FETCH, UNCHANGEDSINCE (RFC 7162 3.1.3)."""
    view = session.selection().view
    refused: list[int] = []
    code = ""
    changed: set[int] = set()
    if command.unchanged_since is not None:
        refused, code = await condstore.conditional_store(session, command, uids, flags)
        changed = set(uids) - set(refused)  # the silent answer names those stored
    elif uids:
        infos: list[MessageInfo] = await session.blocking(view.store, uids, command.mode,
                                                          flags)
        changed = {info.uid for info in infos}
    if uids and command.mode != "-":
        session.send(session.keyword_lines(flags))
    session.send(await condstore.store_lines(session, command, indexes, set(refused),
                                             changed))
    if code:
        return f"[{code}] Conditional STORE failed"
    return None


async def copy(session: IMAPSession, command: grammar.Copy) -> str | None:
    """COPY (RFC 3501 6.4.7) and MOVE (RFC 6851), with COPYUID (RFC 4315 3)."""
    view = session.selection().view if command.name == "COPY" else _writable(session)
    dest = checked_name(command.mailbox)
    indexes = sequence_indexes(view.messages, command.sequence, command.uid)
    uids = [view.messages[i].uid for i in indexes]
    word = command.name.title()
    if not uids:
        return f"{word} completed"
    if command.name == "COPY":
        copied: CopyResult = await session.blocking(view.copy, uids, dest)
        if not copied.source_uids:
            raise _all_vanished()
        return f"[{_copyuid(copied)}] Copy completed"
    moved: tuple[CopyResult, Changes] = await session.blocking(view.move, uids, dest)
    result, changes = moved
    if result.source_uids:
        # RFC 6851 4.3: COPYUID in an untagged OK before the EXPUNGEs.
        session.send(f"* OK [{_copyuid(result)}] Moved\r\n".encode())
    session.report(changes)
    if not result.source_uids:
        raise _all_vanished()
    return "Move completed"


def _all_vanished() -> Refusal:
    """Every message asked for was expunged by another session meanwhile: nothing was
    copied, and a COPYUID with empty sets would break RFC 4315's grammar (uid-set is
    never empty), so refuse as RFC 2180 4.4.1 allows, with RFC 5530's code."""
    return no("Some of the requested messages no longer exist", "EXPUNGEISSUED")


def _copyuid(result: CopyResult) -> str:
    return (f"COPYUID {result.uid_validity} {uid_set_text(result.source_uids)} "
            f"{uid_set_text(result.dest_uids)}")


async def idle(session: IMAPSession, command: grammar.Simple) -> str | None:
    """RFC 2177: `+ idling`, then changes as they happen, until DONE."""
    session.idle_tag = command.tag
    session.watch_folder()
    session.send(b"+ idling\r\n")
    session.expect_continuation(lambda line: _idle_done(session, line))
    session.folder_changed()  # anything that happened before IDLE began
    return ANSWERED


def _idle_done(session: IMAPSession, line: bytes) -> None:
    tag, session.idle_tag = session.idle_tag, None
    assert tag is not None
    session.unwatch_folder()
    if line.rstrip(b"\r\n").upper() == b"DONE":
        reply = f"{tag} OK Idle completed\r\n".encode()
    else:
        reply = bad("Expected DONE to end IDLE").line(tag)
        session._count_error()
    if not session._idle_syncing:
        session.send(reply)
        return
    # A sync is running: answer after it, and read nothing more until then.
    finished: Deferred[None] = Deferred()
    session.idle_waiters.append(finished)
    finished.addCallback(lambda _: session.send(reply))
    session._wait_for(finished)
