"""IMAP4rev2 (RFC 9051) beside IMAP4rev1: what changes once a client has sent
`ENABLE IMAP4rev2` (RFC 9051 2.3 / RFC 5161; a server offering both keeps rev1's
behaviour until then).

Most of rev2 is rev1 plus extensions we already serve (ENABLE, IDLE, NAMESPACE,
UNSELECT, UIDPLUS, ESEARCH, SEARCHRES, MOVE, LIST-EXTENDED, LIST-STATUS, SPECIAL-USE,
BINARY, STATUS=SIZE, LITERAL+, SASL-IR, the RFC 5530 response codes). What a session in
rev2 mode does differently (RFC 9051 Appendix E), and where:

- mailbox names in UTF-8 both ways (5.1; RFC 6855's conversion, utf8.py): enabling rev2
  sets `utf8_accept` too;
- no \\Recent: no `* n RECENT` (SELECT, EXISTS updates), no \\Recent in FLAGS of any
  FETCH (`shows_recent`), no OK [UNSEEN] in SELECT (6.3.2, 7.1 has no UNSEEN code);
  STATUS has no RECENT item (6.3.11: BAD), and has DELETED (also in rev1 mode);
- SELECT/EXAMINE send an untagged LIST of the mailbox (6.3.2: REQUIRED);
- SEARCH without RETURN is answered `* ESEARCH (TAG ...) [UID] ALL ...` as if RETURN
  (ALL) were given (6.4.4: the SEARCH response is gone; 7.3.4);
- LSUB is still answered (rev2 drops it from the grammar; clients should use LIST
  (SUBSCRIBED), which listext.py answers with \\Subscribed and \\NonExistent).

SEARCH keys RECENT, NEW and OLD are not in rev2's grammar; we still accept them (a
client in rev2 mode that sends them gets the rev1 meaning) rather than refuse a
command Dovecot and rev1 accept.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mailserver.imap.commands import Search, bad
from mailserver.imap.grammar import DELIMITER
from mailserver.imap.grammar_sort import ESearch
from mailserver.imap.utf8 import wire_name
from mailserver.interfaces import FolderInfo, IUserStore, StoreError

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

#: The capability as RFC 9051 spells it (ENABLE's argument is case-insensitive; the
#: ENABLED response uses this spelling).
CAPABILITY = "IMAP4rev2"


def enable(session: IMAPSession, capabilities: tuple[str, ...]) -> list[str]:
    """ENABLE IMAP4rev2 (RFC 9051 2.3): on for the rest of the connection; implies
    UTF-8 mailbox names (5.1). Returned for `* ENABLED` only when this command turned
    it on (RFC 5161 3.2: a second ENABLE lists nothing).

    While a mailbox is selected it is not turned on: RFC 5161 3.1 allows ENABLE only
    before a mailbox is selected, and switching in the middle would change what the
    client has been told about the selected mailbox (\\Recent, the form of SEARCH
    answers). Leaving it out of `* ENABLED` is RFC 5161's way of saying "not enabled"
    (the client goes on in rev1 mode); after CLOSE/UNSELECT it may be enabled."""
    if CAPABILITY.upper() not in capabilities or session.imap4rev2:
        return []
    if session.selected is not None:
        return []
    session.imap4rev2 = True
    session.utf8_accept = True
    return [CAPABILITY]


def shows_recent(session: IMAPSession) -> bool:
    """\\Recent and RECENT are rev1 only (RFC 9051 Appendix E: \\Recent obsoleted)."""
    return not session.imap4rev2


def search_form(session: IMAPSession, command: Search) -> Search:
    """In rev2 mode a SEARCH without RETURN is answered as RETURN (ALL) (RFC 9051 6.4.4:
    "If no result option is specified ... ALL is assumed"), i.e. with ESEARCH."""
    if not session.imap4rev2 or isinstance(command, ESearch):
        return command
    fields = {f.name: getattr(command, f.name) for f in dataclasses.fields(command)}
    return ESearch(**fields, returns=("ALL",))


def check_status_items(session: IMAPSession, items: tuple[str, ...]) -> None:
    """RFC 9051 6.3.11 / 9 (status-att): RECENT is not a STATUS item in rev2."""
    if session.imap4rev2 and "RECENT" in items:
        raise bad("STATUS RECENT does not exist in IMAP4rev2 (RFC 9051 6.3.11)",
                  "CLIENTBUG")


def select_list_line(store: IUserStore, name: str) -> bytes:
    """The untagged LIST response SELECT/EXAMINE send in rev2 mode (RFC 9051 6.3.2:
    the mailbox's name and accurate attributes), in UTF-8. Blocking (lists folders).
    A folder gone since the SELECT found it is listed without attributes."""
    try:
        folders: list[FolderInfo] = store.folders()
    except StoreError:
        folders = []
    folder = next((f for f in folders if f.name == name), None)
    attributes = []
    if folder is not None:
        if not folder.selectable:
            attributes.append("\\Noselect")
        attributes.append("\\HasChildren" if folder.has_children else "\\HasNoChildren")
        if folder.special_use:
            attributes.append(folder.special_use)
    return (f"* LIST ({' '.join(attributes)}) \".\" ".encode()
            + wire_name(name, True) + b"\r\n")


def delete(store: IUserStore, name: str, rev2: bool) -> None:
    """DELETE through the store; in rev2 mode a refusal because the name is a
    \\Noselect parent of other mailboxes carries RFC 9051's HASCHILDREN (6.3.4, 7.1)
    instead of CANNOT (rev1 sessions keep CANNOT: RFC 3501 has no such code).
    Blocking."""
    try:
        store.delete(name)
    except StoreError as e:
        if not rev2 or e.code != "CANNOT":
            raise
        prefix = name + DELIMITER
        folders = store.folders()
        if any(f.name == name and f.selectable for f in folders) or not any(
                f.name.startswith(prefix) for f in folders):
            raise
        raise StoreError("HASCHILDREN", e.text) from None
