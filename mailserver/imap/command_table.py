"""The IMAP command table: which handler of commands_*.py runs each command, in which
states it is valid (RFC 3501 6.1-6.4 and the extensions), which commands sync the
selected folder before or after they run, and the BAD text for a command in the wrong
state.

Kept out of server.py (the session: framing, dispatch, output), which had grown past
700 lines; server.py imports these names and so they are importable from there too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mailserver.imap import (
    appendext,
    commands_auth,
    commands_mailbox,
    commands_selected,
    commands_sort,
    compress,
    listext,
    quota,
    urlauth,
)
from mailserver.imap.commands import ANY, AUTH, NOT_AUTH, SELECTED, State

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

#: A command handler of commands_*.py: `async def handler(session, command)`. The
#: command is typed by each handler (grammar's dataclasses), hence Any here.
Handler = Callable[["IMAPSession", Any], Awaitable[str | None]]

#: name -> (states where it is valid, handler). RFC 3501 6.1-6.4 and the extensions.
HANDLERS: dict[str, tuple[frozenset[State], Handler]] = {
    "CAPABILITY": (ANY, commands_auth.capability),
    "NOOP": (ANY, commands_auth.noop),
    "LOGOUT": (ANY, commands_auth.logout),
    "ID": (ANY, commands_auth.id_command),
    "STARTTLS": (NOT_AUTH, commands_auth.starttls),
    "LOGIN": (NOT_AUTH, commands_auth.login),
    "AUTHENTICATE": (NOT_AUTH, commands_auth.authenticate),
    "ENABLE": (AUTH, commands_auth.enable),
    "NAMESPACE": (AUTH, commands_auth.namespace),
    "IDLE": (AUTH, commands_selected.idle),
    "SELECT": (AUTH, commands_mailbox.select),
    "EXAMINE": (AUTH, commands_mailbox.select),
    "CREATE": (AUTH, commands_mailbox.create),
    "DELETE": (AUTH, commands_mailbox.delete),
    "RENAME": (AUTH, commands_mailbox.rename),
    "SUBSCRIBE": (AUTH, commands_mailbox.subscribe),
    "UNSUBSCRIBE": (AUTH, commands_mailbox.subscribe),
    "LIST": (AUTH, listext.list_command),
    "LSUB": (AUTH, commands_mailbox.list_command),
    "STATUS": (AUTH, commands_mailbox.status),
    "APPEND": (AUTH, appendext.append),
    "GENURLAUTH": (AUTH, urlauth.genurlauth),
    "RESETKEY": (AUTH, urlauth.resetkey),
    "URLFETCH": (AUTH, urlauth.urlfetch),
    "CHECK": (SELECTED, commands_selected.check),
    "CLOSE": (SELECTED, commands_selected.close),
    "UNSELECT": (SELECTED, commands_selected.unselect),
    "EXPUNGE": (SELECTED, commands_selected.expunge),
    "SEARCH": (SELECTED, commands_sort.search),
    "SORT": (SELECTED, commands_sort.sort),
    "THREAD": (SELECTED, commands_sort.thread),
    "CANCELUPDATE": (SELECTED, commands_sort.cancel_update),
    "FETCH": (SELECTED, commands_selected.fetch),
    "STORE": (SELECTED, commands_selected.store),
    "COPY": (SELECTED, commands_selected.copy),
    "MOVE": (SELECTED, commands_selected.copy),
    "COMPRESS": (AUTH, compress.compress),
    "GETQUOTA": (AUTH, quota.getquota),
    "GETQUOTAROOT": (AUTH, quota.getquotaroot),
    "SETQUOTA": (AUTH, quota.setquota),
}
SELECTED_COMMANDS = frozenset(n for n, (states, _) in HANDLERS.items() if states == SELECTED)
#: After these, report what changed meanwhile (RFC 3501 7: any command may get
#: untagged updates; CLOSE/UNSELECT/SELECT leave no view, LOGOUT says BYE).
#: FETCH, STORE, SEARCH sync before they run instead (and changes that arrive while
#: they run are reported at the next command).
SYNC_BEFORE = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "SORT", "THREAD"})
SYNC_AFTER = frozenset(HANDLERS) - {"LOGOUT", "CLOSE", "UNSELECT", "SELECT", "EXAMINE",
                                    "IDLE", "STARTTLS", "LOGIN", "AUTHENTICATE",
                                    "CAPABILITY", "ID", "FETCH", "STORE", "SEARCH",
                                    "SORT", "THREAD"}


def wrong_state(name: str, state: State) -> str:
    if state is State.NOT_AUTHENTICATED:
        return f"{name} needs authentication first"
    if state is State.AUTHENTICATED:
        return f"{name} needs a selected mailbox" if name in SELECTED_COMMANDS else (
            f"{name} is only valid before authentication")
    return f"{name} is not valid in the selected state"
