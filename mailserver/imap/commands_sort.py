"""SEARCH RETURN (ESEARCH, RFC 4731; SAVE, RFC 5182), SORT (RFC 5256, ESORT of RFC
5267) and THREAD (RFC 5256): the handlers. The work runs in a disk thread (sort.py,
thread.py); the saved result is searchres.py's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailserver.imap import commands_condstore as condstore
from mailserver.imap import commands_selected, context, rev2, searchres
from mailserver.imap.commands import Search, no
from mailserver.imap.commands_selected import SEARCH_CHUNK, item_cache_key
from mailserver.imap.grammar_sort import CancelUpdate, ESearch, ReturnOption, Sort, Thread
from mailserver.imap.search import CHARSETS, run_search
from mailserver.imap.sort import esearch_line, modseq_shown, run_sort
from mailserver.imap.thread import run_thread

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession


def _check_charset(session: IMAPSession, charset: str | None,
                   returns: Sequence[ReturnOption] | None) -> None:
    """RFC 5256 3 / RFC 3501 6.4.4: an unknown charset is NO [BADCHARSET (...)]; a
    failed SEARCH ... SAVE empties the saved result (RFC 5182 2.1)."""
    if charset is None or charset in CHARSETS:
        return
    if returns is not None and "SAVE" in returns:
        searchres.save(session.selection(), ())
    raise no(f"Unsupported charset {charset}", f"BADCHARSET ({' '.join(CHARSETS)})")


def _save(session: IMAPSession, uid: bool, returns: Sequence[ReturnOption],
          found: Sequence[int], ordered: bool) -> None:
    """RFC 5182 2.4: with SAVE and only MIN and/or MAX, just those are saved."""
    if "SAVE" not in returns:
        return
    picked: Sequence[int] = found
    if found and not any(r in ("ALL", "COUNT") or not isinstance(r, str) for r in returns):
        wanted = []
        if "MIN" in returns:
            wanted.append(found[0] if ordered else min(found))
        if "MAX" in returns:
            wanted.append(found[-1] if ordered else max(found))
        if wanted:
            picked = wanted
    selected = session.selection()
    if uid:
        uids = list(picked)
    else:
        messages = selected.view.messages
        uids = [messages[n - 1].uid for n in picked if 0 < n <= len(messages)]
    searchres.save(selected, uids)


def _answer(session: IMAPSession, tag: str, uid: bool, returns: Sequence[ReturnOption],
            found: Sequence[int], ordered: bool, modseq: int | None = None) -> None:
    _save(session, uid, returns, found, ordered)
    shown = [r for r in returns if r != "SAVE"]
    if shown or "SAVE" not in returns:  # SAVE alone: no ESEARCH (RFC 5182 2.1)
        session.send(esearch_line(tag, uid, shown, found, ordered, modseq))


async def esearch(session: IMAPSession, command: ESearch) -> str | None:
    """SEARCH RETURN (...): one `* ESEARCH` line (RFC 4731 3.1)."""
    _check_charset(session, command.charset, command.returns)
    view = session.selection().view
    uses_modseq = condstore.uses_modseq(command.program)
    if uses_modseq:
        await condstore.ensure_condstore(session)
    found: list[int] = await session.blocking(run_search, view, command.program,
                                              command.uid, item_cache_key(session))
    modseq = None
    if uses_modseq and found:  # RFC 7162 3.1.5: MODSEQ in the ESEARCH response
        modseq = await condstore.highest_modseq_of(
            session, modseq_shown(command.returns, found), command.uid)
    _answer(session, command.tag, command.uid, command.returns, found, False, modseq)
    if "UPDATE" in command.returns and not context.start(
            session.selection(), command.tag, command.program, command.uid, found):
        session.send(_no_update(command.tag, "Too many searches kept up to date"))
    return None


def _no_update(tag: str, text: str) -> bytes:
    """RFC 5267 4.2: the search is answered, but not kept up to date."""
    quoted = tag.replace("\\", "\\\\").replace('"', '\\"')
    return f'* NO [NOUPDATE "{quoted}"] {text}\r\n'.encode("utf-8", "replace")


async def cancel_update(session: IMAPSession, command: CancelUpdate) -> str | None:
    context.cancel(session.selection(), command.tags)
    return None


async def sort(session: IMAPSession, command: Sort) -> str | None:
    _check_charset(session, command.charset, command.returns)
    view = session.selection().view
    # RFC 7162 3.1.5/3.1.6: MODSEQ is a search key of SORT too (CONDSTORE-enabling:
    # without it the modseq database is not recorded and the key matches nothing),
    # and the SORT response then ends with (MODSEQ n) like SEARCH's.
    uses_modseq = condstore.uses_modseq(command.program)
    if uses_modseq:
        await condstore.ensure_condstore(session)
    found: list[int] = await session.blocking(run_sort, view, command.criteria,
                                              command.program, command.uid,
                                              item_cache_key(session))
    if command.returns is not None:  # ESORT (RFC 5267 3)
        modseq = None
        if uses_modseq and found:
            modseq = await condstore.highest_modseq_of(
                session, modseq_shown(command.returns, found, ordered=True), command.uid)
        _answer(session, command.tag, command.uid, command.returns, found, True, modseq)
        if "UPDATE" in command.returns:  # positions in a sorted result: not kept
            session.send(_no_update(command.tag, "Sorted results are not kept up to date"))
        return None
    chunks = [b"* SORT"]
    for start in range(0, len(found), SEARCH_CHUNK):
        chunks.append(b" " + b" ".join(b"%d" % n for n in found[start:start + SEARCH_CHUNK]))
    if uses_modseq:
        chunks.append(await condstore.search_suffix(session, found, command.uid))
    session.send(b"".join(chunks) + b"\r\n")
    return None


async def thread(session: IMAPSession, command: Thread) -> str | None:
    _check_charset(session, command.charset, None)
    view = session.selection().view
    if condstore.uses_modseq(command.program):  # else MODSEQ n matches nothing
        await condstore.ensure_condstore(session)
    body: bytes = await session.blocking(run_thread, view, command.algorithm,
                                         command.program, command.uid,
                                         item_cache_key(session))
    session.send(b"* THREAD " + body + b"\r\n" if body else b"* THREAD\r\n")
    return None


async def search(session: IMAPSession, command: Search) -> str | None:
    """SEARCH: with RETURN options (or in IMAP4rev2 mode) an ESEARCH answer, else RFC
    3501's `* SEARCH`."""
    command = rev2.search_form(session, command)
    if isinstance(command, ESearch):
        return await esearch(session, command)
    return await commands_selected.search(session, command)
