"""Mailbox commands (RFC 3501 6.3): SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
UNSUBSCRIBE, LIST, LSUB, STATUS, APPEND; with SPECIAL-USE (RFC 6154), CHILDREN
(RFC 3348), UIDPLUS's APPENDUID (RFC 4315) and APPENDLIMIT (RFC 7889)."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from mailserver.imap import commands_condstore as condstore
from mailserver.imap import grammar, listmatch, mutf7, objectid, rev2
from mailserver.imap import utf8 as _utf8
from mailserver.imap.commands import Selected, State, bad, no
from mailserver.imap.encode import parse_date_time
from mailserver.imap.precompute import append_items
from mailserver.interfaces import (
    SETTABLE_USES,
    CopyResult,
    FolderInfo,
    FolderStatus,
    IMailboxView,
    IUserStore,
)
from mailserver.logs import logger

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

log = logger(__name__)

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def checked_name(name: str) -> str:
    """A mailbox name the store may see, or NO [CANNOT] (RFC 5530) saying why.

    Modified UTF-7 is checked here (RFC 3501 5.1.3); the store checks again."""
    if name == "INBOX":
        return name
    problem = grammar.store_name_problem(name)
    if problem is None:
        try:
            mutf7.decode(name)
        except ValueError:
            problem = "mailbox name is not valid modified UTF-7 (RFC 3501 5.1.3)"
    if problem is not None:
        raise no(problem, "CANNOT")
    return name


async def select(session: IMAPSession, command: grammar.MailboxCommand) -> str | None:
    """RFC 3501 6.3.1/6.3.2. A failed SELECT leaves no mailbox selected."""
    read_only = command.name == "EXAMINE"
    name = checked_name(command.mailbox)
    store = session.authenticated().store
    condstore.check_select(session, command.select)
    if session.selected is not None:
        await session.deselect()  # RFC 3501 6.3.1: even if this SELECT fails
        # RFC 7162 3.2.11: what follows is about the new mailbox.
        session.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
    view: IMailboxView = await session.blocking(store.select, name, read_only)
    lines, keywords = _select_lines(view, not session.imap4rev2)
    selected = session.selected = Selected(name, view, keywords)
    session.state = State.SELECTED
    try:
        lines += await condstore.select_lines(session, view, command.select)
        lines += await session.blocking(_mailbox_id_line, store, name)  # RFC 8474 4.2
        if session.imap4rev2:  # RFC 9051 6.3.2: an untagged LIST of the mailbox
            lines += await session.blocking(rev2.select_list_line, store, name)
    except BaseException:
        await session.deselect()
        raise
    session.send(lines)
    mode = "READ-ONLY" if selected.read_only else "READ-WRITE"
    return f"[{mode}] {command.name.title()} completed"


_FLAGS_OF = operator.attrgetter("flags")
_RECENT_OF = operator.attrgetter("recent")


def _select_lines(view: IMailboxView, rev1: bool = True) -> tuple[bytes, set[str]]:
    """RFC 3501 6.3.1 untagged data, and the keywords its FLAGS named. Keywords: those
    the folder defines (the store's `keywords`, a Maildir++ folder has 26 letters) and
    those in use; PERMANENTFLAGS has \\* only while new keywords can still be created
    (`can_create_keywords`). `rev1` False (IMAP4rev2 mode): no RECENT and no
    OK [UNSEEN] (RFC 9051 6.3.2)."""
    messages = view.messages
    keywords: set[str] = set(view.keywords)
    # Loops in C over the messages (100k of them on the reactor thread): a folder has a
    # handful of distinct flag sets, so the Python-level work is per set.
    all_flags = list(map(_FLAGS_OF, messages))
    distinct = set(all_flags)
    recent = sum(map(_RECENT_OF, messages))
    unseen_sets = {flags for flags in distinct if "\\Seen" not in flags}
    first_unseen = min(all_flags.index(flags) for flags in unseen_sets) + 1 \
        if unseen_sets else 0
    for flags in distinct:
        keywords.update(f for f in flags if not f.startswith("\\"))
    lines = [
        *flags_lines(view, keywords),
        f"* {len(messages)} EXISTS",
    ]
    if rev1:
        lines.append(f"* {recent} RECENT")
    if first_unseen and rev1:
        lines.append(f"* OK [UNSEEN {first_unseen}] First unseen")
    lines.append(f"* OK [UIDVALIDITY {view.uid_validity}] UIDs valid")
    lines.append(f"* OK [UIDNEXT {view.uid_next}] Predicted next UID")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace"), keywords


def _mailbox_id_line(store: IUserStore, name: str) -> bytes:
    """`* OK [MAILBOXID (id)]` (RFC 8474 4.2). Blocking (made on first use)."""
    return f"* OK [{objectid.mailbox_code(store.mailbox_id(name))}] Ok\r\n".encode()


def flags_lines(view: IMailboxView, keywords: set[str]) -> list[str]:
    """The FLAGS and PERMANENTFLAGS lines of SELECT, also sent again when a keyword
    the client has not been told of appears (RFC 3501 7.2.6: the client records the
    update; Dovecot sends it the same way)."""
    flags_text = " ".join([*SYSTEM_FLAGS, *sorted(keywords)])
    more = ["\\*"] if view.can_create_keywords else []
    permanent = "" if view.read_only else " ".join(
        [*SYSTEM_FLAGS, *sorted(keywords), *more])
    return [f"* FLAGS ({flags_text})", f"* OK [PERMANENTFLAGS ({permanent})] Flags permitted"]


async def create(session: IMAPSession, command: grammar.MailboxCommand) -> str | None:
    name = command.mailbox
    if name.endswith(grammar.DELIMITER):
        # RFC 3501 6.3.3: a trailing delimiter says the client means a parent to be.
        name = name.rstrip(grammar.DELIMITER)
    if name.upper() == "INBOX":
        raise no("INBOX always exists", "ALREADYEXISTS")
    use = _special_use(command.use)  # RFC 6154 5.2: NO [USEATTR] before creating
    store = session.authenticated().store
    name = checked_name(name)
    await session.blocking(store.create, name, use)
    # RFC 8474 4.1: the new mailbox's id in the tagged OK.
    mailbox_id: str = await session.blocking(store.mailbox_id, name)
    return f"[{objectid.mailbox_code(mailbox_id)}] Create completed"


def _special_use(uses: tuple[str, ...]) -> str | None:
    """The one attribute CREATE ... (USE (...)) may give a folder here, or NO [USEATTR]."""
    if not uses:
        return None
    known = {u.lower(): u for u in SETTABLE_USES}
    if len(uses) > 1 or uses[0].lower() not in known:
        raise no(f"Cannot create a mailbox with USE ({' '.join(uses)[:100]}); "
                 f"one of {' '.join(SETTABLE_USES)}", "USEATTR")
    return known[uses[0].lower()]


async def delete(session: IMAPSession, command: grammar.MailboxCommand) -> str | None:
    name = command.mailbox
    if name == "INBOX":
        raise no("INBOX cannot be deleted", "CANNOT")  # RFC 3501 6.3.4
    name = checked_name(name)
    if session.selected is not None and session.selected.name == name:
        raise no("The selected mailbox cannot be deleted; select another first", "CANNOT")
    await session.blocking(rev2.delete, session.authenticated().store, name, session.imap4rev2)
    return None


async def rename(session: IMAPSession, command: grammar.Rename) -> str | None:
    old, new = checked_name(command.old), command.new
    if new.upper() == "INBOX":
        raise no("INBOX already exists", "ALREADYEXISTS")
    await session.blocking(session.authenticated().store.rename, old, checked_name(new))
    return None


async def subscribe(session: IMAPSession, command: grammar.MailboxCommand) -> str | None:
    name = checked_name(command.mailbox)
    store = session.authenticated().store
    method = store.subscribe if command.name == "SUBSCRIBE" else store.unsubscribe
    await session.blocking(method, name)
    return None


async def list_command(session: IMAPSession, command: grammar.ListCommand) -> str | None:
    """LIST (RFC 3501 6.3.8, with RFC 5258 SUBSCRIBED / RFC 6154 SPECIAL-USE selection
    and CHILDREN / SUBSCRIBED / SPECIAL-USE return options) and LSUB (6.3.9)."""
    word = command.name
    if command.pattern == "" and word == "LIST":
        # RFC 3501 6.3.8: the hierarchy delimiter and the root of the reference.
        session.send(b'* LIST (\\Noselect) "." ""\r\n')
        return None
    for option in command.select:
        if option not in ("SUBSCRIBED", "SPECIAL-USE", "REMOTE", "RECURSIVEMATCH"):
            raise bad(f"Unknown LIST selection option {option}")
    for option in command.returns:
        if option not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"):
            raise bad(f"Unknown LIST return option {option}")
    # RFC 3501 6.3.8: the reference and the pattern are interpreted together.
    full = grammar.mailbox_name((command.reference + command.pattern).encode())
    if len(full.encode()) > listmatch.MAX_PATTERN:
        raise no(f"Mailbox pattern too long ({listmatch.MAX_PATTERN} octets at most)",
                 "LIMIT")
    # Listing and matching both in the disk thread: a user with many folders costs
    # the reactor nothing (the matcher itself is linear in each name: listmatch).
    lines: list[bytes] = await session.blocking(_list_lines, session.authenticated().store,
                                                command,
                                                listmatch.MailboxPattern(full),
                                                session.utf8_accept)
    session.send(b"".join(lines))
    return None


def _list_lines(store: IUserStore, command: grammar.ListCommand,
                pattern: listmatch.MailboxPattern, utf8: bool = False) -> list[bytes]:
    """The untagged LIST/LSUB responses: the folders that match. Blocking."""
    word = command.name
    subscribed_only = word == "LSUB" or "SUBSCRIBED" in command.select
    folders = _listing(store, subscribed_only)
    show_subscribed = "SUBSCRIBED" in command.select or "SUBSCRIBED" in command.returns
    lines: list[bytes] = []
    listed: set[str] = set()
    for folder in folders:
        if subscribed_only and not folder.subscribed:
            continue
        if "SPECIAL-USE" in command.select and not folder.special_use:
            continue
        if not pattern.matches(folder.name):
            continue
        lines.append(_list_line(word, folder, show_subscribed, utf8))
        listed.add(folder.name)
    if word == "LSUB" and "%" in command.pattern:
        # RFC 3501 6.3.9: a subscribed child under an unsubscribed parent that matches
        # "%" shows the parent as \Noselect.
        for folder in folders:
            if not folder.subscribed:
                continue
            parts = folder.name.split(grammar.DELIMITER)
            for n in range(1, len(parts)):
                parent = grammar.DELIMITER.join(parts[:n])
                if parent not in listed and pattern.matches(parent):
                    listed.add(parent)
                    lines.append(b'* LSUB (\\Noselect) "." ' + _wire_name(parent, utf8) + b"\r\n")
    return lines


def _listing(store: IUserStore, with_subscriptions: bool) -> list[FolderInfo]:
    """The folders, plus (for LSUB and LIST (SUBSCRIBED)) subscribed names that no
    longer exist: RFC 3501 6.3.9 keeps them listed. Blocking."""
    folders: list[FolderInfo] = store.folders()
    if with_subscriptions:
        known = {f.name for f in folders}
        folders += [FolderInfo(name, selectable=False, subscribed=True)
                    for name in store.subscriptions() if name not in known]
    return folders


def _wire_name(name: str, utf8: bool = False) -> bytes:
    return _utf8.wire_name(name, utf8)  # RFC 6855: UTF-8 once enabled


def _list_line(word: str, folder: FolderInfo, show_subscribed: bool,
               utf8: bool = False) -> bytes:
    attributes = []
    if not folder.selectable:
        attributes.append("\\Noselect")
    attributes.append("\\HasChildren" if folder.has_children else "\\HasNoChildren")
    if folder.special_use:
        attributes.append(folder.special_use)
    if show_subscribed and folder.subscribed:
        attributes.append("\\Subscribed")
    return (f"* {word} ({' '.join(attributes)}) \".\" ".encode()
            + _wire_name(folder.name, utf8) + b"\r\n")


async def status(session: IMAPSession, command: grammar.Status) -> str | None:
    """RFC 3501 6.3.10. For the selected mailbox too (the RFC discourages, not forbids)."""
    name = checked_name(command.mailbox)
    rev2.check_status_items(session, command.items)
    result: FolderStatus = await session.blocking(session.authenticated().store.status, name)
    highest = 0
    if "HIGHESTMODSEQ" in command.items:  # RFC 7162 3.1.9 (CONDSTORE-enabling)
        await condstore.ensure_condstore(session)
        highest = await session.blocking(session.authenticated().store.highest_modseq, name)
    recent = result.recent  # messages nobody has claimed yet
    selected = session.selected
    if selected is not None and selected.name == name and not selected.read_only:
        # The selected mailbox: this session's own \Recent messages count too (RFC 3501
        # 7.3.2; Dovecot does the same). An EXAMINEd view's are the unclaimed ones.
        recent += selected.view.recent_count
    values: dict[str, int | str] = {
        "MESSAGES": result.messages,
        "RECENT": recent,
        "UIDNEXT": result.uid_next,
        "UIDVALIDITY": result.uid_validity,
        "UNSEEN": result.unseen,
        "HIGHESTMODSEQ": highest,
        "SIZE": result.size,  # RFC 8438
        "DELETED": result.deleted,  # RFC 9051 6.3.11
    }
    if "MAILBOXID" in command.items:  # RFC 8474 4.3
        mailbox_id = await session.blocking(session.authenticated().store.mailbox_id, name)
        values["MAILBOXID"] = f"({mailbox_id})"
    items = " ".join(f"{item} {values[item]}" for item in command.items)
    session.send(b"* STATUS " + _wire_name(name, session.utf8_accept)
                 + f" ({items})\r\n".encode())
    return None


async def append(session: IMAPSession, command: grammar.Append) -> str | None:
    """RFC 3501 6.3.11, APPENDUID (RFC 4315 3), TOOBIG / APPENDLIMIT (RFC 7889)."""
    name = checked_name(command.mailbox)
    if len(command.message) > session.config.limits.message_size:
        raise no("Message too large", "TOOBIG")
    if not command.message:
        raise no("Empty messages cannot be stored")
    date = None
    if command.date is not None:
        try:
            date = parse_date_time(command.date)
        except ValueError:
            raise bad("Invalid date-time") from None
    flags = []
    for flag in command.flags:
        if flag.startswith("\\"):
            system = _system_flag(flag)
            if system is None:
                raise bad(f"Invalid system flag {flag}")
            flags.append(system)
        else:
            flags.append(flag)
    result: CopyResult = await session.blocking(session.authenticated().store.append, name,
                                                command.message, tuple(flags), date,
                                                append_items)
    uid = result.dest_uids[0] if result.dest_uids else 0
    if session.selected is not None and session.selected.name == name:
        await session.sync()
    return f"[APPENDUID {result.uid_validity} {uid}] Append completed"


def _system_flag(flag: str) -> str | None:
    for known in SYSTEM_FLAGS:
        if flag.lower() == known.lower():
            return known
    return None

