"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819).

A LIST in RFC 3501's form is answered by commands_mailbox.list_command as before; this
module answers the extended forms: several patterns, selection options SUBSCRIBED,
REMOTE (we have no remote mailboxes: it changes nothing), RECURSIVEMATCH and
SPECIAL-USE (RFC 6154), return options SUBSCRIBED, CHILDREN, SPECIAL-USE and STATUS.

RFC 5258 rules kept here: a subscribed name that does not exist is listed with
\\NonExistent (never \\Noselect beside it, 3.4 and 4); with RECURSIVEMATCH a mailbox
that matches a pattern but not the selection is listed with CHILDINFO ("SUBSCRIBED")
when a descendant matches the selection and no pattern (3.5, Dovecot's reading, which
ImapTest checks); a mailbox is listed once however many patterns it matches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap import commands_condstore as condstore
from mailserver.imap import commands_mailbox, grammar, listmatch, rev2
from mailserver.imap.commands import ListCommand, no
from mailserver.imap.grammar_ext import ListExtended
from mailserver.imap.utf8 import wire_name
from mailserver.interfaces import FolderInfo, FolderStatus, IUserStore, StoreError

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession


async def list_command(session: IMAPSession, command: ListCommand) -> str | None:
    """LIST: RFC 3501's form as before, the extended forms here."""
    if not isinstance(command, ListExtended):
        return await commands_mailbox.list_command(session, command)
    rev2.check_status_items(session, command.status_items)
    patterns: list[listmatch.MailboxPattern] = []
    for pattern in command.patterns:
        full = grammar.mailbox_name((command.reference + pattern).encode())
        if len(full.encode()) > listmatch.MAX_PATTERN:
            raise no(f"Mailbox pattern too long ({listmatch.MAX_PATTERN} octets at most)",
                     "LIMIT")
        patterns.append(listmatch.MailboxPattern(full))
    if command.patterns == ("",):
        # RFC 5258 3 keeps RFC 3501's meaning of "": the delimiter and root.
        session.send(b'* LIST (\\Noselect) "." ""\r\n')
        return None
    if "HIGHESTMODSEQ" in command.status_items:  # RFC 7162 3.1: as STATUS, enabling
        await condstore.ensure_condstore(session)
    store = session.authenticated().store
    selected = session.selected
    # RFC 5819 2 / RFC 3501 7.3.2: RECENT of the selected mailbox as STATUS answers it
    # (commands_mailbox.status): this session's own \Recent messages count too.
    own = ((selected.name, selected.view.recent_count)
           if selected is not None and not selected.read_only else None)
    lines: list[bytes] = await session.blocking(_lines, store, command, patterns,
                                                session.utf8_accept, own)
    session.send(b"".join(lines))
    return None


def _lines(store: IUserStore, command: ListExtended,
           patterns: list[listmatch.MailboxPattern], utf8: bool = False,
           own: tuple[str, int] | None = None) -> list[bytes]:
    """The untagged LIST (and, for RETURN (STATUS ...), STATUS) responses. Blocking."""
    select, returns = set(command.select), set(command.returns)
    subscribed_only = "SUBSCRIBED" in select
    special_only = "SPECIAL-USE" in select
    folders: list[FolderInfo] = store.folders()
    subscriptions = set(store.subscriptions()) if (
        subscribed_only or "SUBSCRIBED" in returns) else set()
    known = {f.name for f in folders}
    missing = {name for name in subscriptions if name not in known}
    entries = [f if f.name not in subscriptions else FolderInfo(
        f.name, f.special_use, f.has_children, f.selectable, True) for f in folders]
    if subscribed_only:
        entries += [FolderInfo(name, subscribed=True) for name in sorted(missing)]

    def matches(name: str) -> bool:
        return any(p.matches(name) for p in patterns)

    def chosen(folder: FolderInfo) -> bool:
        return ((not subscribed_only or folder.subscribed)
                and (not special_only or bool(folder.special_use)))

    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in select:
        for folder in entries:
            if chosen(folder) and not matches(folder.name):
                parts = folder.name.split(grammar.DELIMITER)
                for n in range(1, len(parts)):
                    parent = grammar.DELIMITER.join(parts[:n])
                    if matches(parent):
                        childinfo.add(parent)
    show_subscribed = subscribed_only or "SUBSCRIBED" in returns
    lines: list[bytes] = []
    listed: set[str] = set()
    for folder in entries:
        name = folder.name
        if name in listed or not matches(name):
            continue
        if not chosen(folder) and name not in childinfo:
            continue
        listed.add(name)
        lines.append(_line(folder, name in missing, show_subscribed, name in childinfo,
                           utf8))
        if command.status_items and folder.selectable and name not in missing:
            own_recent = own[1] if own is not None and own[0] == name else 0
            lines += _status(store, name, command.status_items, utf8, own_recent)
    # RECURSIVEMATCH parents that are not folders at all (only a child exists).
    for name in sorted(childinfo - listed):
        lines.append(_line(FolderInfo(name, has_children=True), True, False, True, utf8))
    return lines


def _line(folder: FolderInfo, nonexistent: bool, show_subscribed: bool,
          childinfo: bool, utf8: bool = False) -> bytes:
    attributes = []
    if nonexistent:
        attributes.append("\\NonExistent")  # RFC 5258 3.4: implies \Noselect
    elif not folder.selectable:
        attributes.append("\\Noselect")
    if not nonexistent or folder.has_children:
        attributes.append("\\HasChildren" if folder.has_children else "\\HasNoChildren")
    if folder.special_use:
        attributes.append(folder.special_use)
    if show_subscribed and folder.subscribed:
        attributes.append("\\Subscribed")
    extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if childinfo else b""
    return (f"* LIST ({' '.join(attributes)}) \".\" ".encode()
            + wire_name(folder.name, utf8) + extra + b"\r\n")


def _status(store: IUserStore, name: str, items: tuple[str, ...],
            utf8: bool = False, own_recent: int = 0) -> list[bytes]:
    """RFC 5819 2: a STATUS response right after the mailbox's LIST response; none for a
    mailbox that went away meanwhile (the LIST line said what was true then)."""
    try:
        result: FolderStatus = store.status(name)
        # RFC 7162 3.1.9 in a LIST-STATUS answer too (RFC 5819 2: any STATUS item).
        highest = store.highest_modseq(name) if "HIGHESTMODSEQ" in items else 0
    except StoreError:
        return []
    values: dict[str, int | str] = {
        "MESSAGES": result.messages,
        "RECENT": result.recent + own_recent,
        "UIDNEXT": result.uid_next,
        "UIDVALIDITY": result.uid_validity,
        "UNSEEN": result.unseen,
        "SIZE": result.size,
        "HIGHESTMODSEQ": highest,
        "DELETED": result.deleted,  # RFC 9051 6.3.11
    }
    if "MAILBOXID" in items:  # RFC 8474 4.3
        try:
            values["MAILBOXID"] = f"({store.mailbox_id(name)})"
        except StoreError:
            return []
    text = " ".join(f"{item} {values[item]}" for item in items)
    return [b"* STATUS " + wire_name(name, utf8) + f" ({text})\r\n".encode()]
