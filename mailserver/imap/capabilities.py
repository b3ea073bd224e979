"""What the IMAP server offers: the CAPABILITY list, by session state.

One extension per line, each its own RFC and its own change: the list grows with every
extension, so it lives apart from the session (server.py), which had grown past 700
lines; IMAPSession.capabilities() gives it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailserver.imap.commands import State

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession


def capability_list(session: IMAPSession) -> list[str]:
    """The CAPABILITY list in `session`'s state (RFC 3501 7.2.1), as the greeting, the
    CAPABILITY command and LOGIN's response code give it."""
    caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
    if session.state is State.NOT_AUTHENTICATED:
        if not session.tls_active and session.factory.tls_options is not None:
            caps.append("STARTTLS")                      # RFC 3501 6.2.1
        # RFC 3501 6.2.3 / 7.2.1: LOGINDISABLED while passwords would go in clear.
        caps.append("AUTH=PLAIN" if session.plaintext_allowed else "LOGINDISABLED")
    # One extension per line: each is its own RFC and its own change.
    caps += [
        "NAMESPACE",
        "UIDPLUS",
        "MOVE",
        "SPECIAL-USE",
        "CHILDREN",
        "UNSELECT",
        "ESEARCH",
        "SEARCHRES",
        "SORT",
        "SORT=DISPLAY",
        "ESORT",
        "CONTEXT=SEARCH",
        "CONTEXT=SORT",
        "THREAD=ORDEREDSUBJECT",
        "THREAD=REFERENCES",
        "CONDSTORE",
        "QRESYNC",
        "MULTIAPPEND",
        "CATENATE",
        "LIST-EXTENDED",
        "LIST-STATUS",
        "BINARY",
        "STATUS=SIZE",
        "CREATE-SPECIAL-USE",
        "UTF8=ACCEPT",
        "COMPRESS=DEFLATE",
        "QUOTA",
        "QUOTA=RES-STORAGE",
        "QUOTA=RES-MESSAGE",
        "URLAUTH",
        "URLAUTH=BINARY",
        "OBJECTID",
        f"APPENDLIMIT={session.config.limits.message_size}",
    ]
    if session.config.cluster.node:  # per-node modseqs: commands_condstore.offered
        caps = [c for c in caps if c not in ("CONDSTORE", "QRESYNC")]
    return caps
