"""Loggers for our modules: structured twisted.logger events, debug dropped by default.

twistd's log observer writes every level; formatting a debug event costs as much as an
info one, and the per-message debug lines measurably slowed the reactor thread. Our
loggers publish through a level filter instead, so debug output is one call away
(`set_level(LogLevel.debug)`) without costing anything when off.
"""

from __future__ import annotations

import re

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(namespace: str) -> Logger:
    """A Logger for `namespace` (pass __name__) that honours our level filter."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(level: LogLevel, namespace: str = "") -> None:
    """Change the lowest level published, for all our modules or one namespace."""
    _predicate.setLogLevelForNamespace(namespace, level)


# --------------------------------------------------------------------------- peer text

#: C0 and C1 controls and DEL. Text a peer chose (a remote server's reply, an IMAP
#: client's ID, a login name) reaches log lines, DSNs and the operator's terminal: raw,
#: CR or LF forge log lines or header fields, and an ESC sequence drives a terminal
#: (retitle it, hide lines). Postfix's mailq prints them as "?" likewise.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Octets of peer text kept for one log field or one DSN field: a whole line of an
#: SMTP reply and more (RFC 5321 4.5.3.1.5: 512), and small enough that the field stays
#: under RFC 5322 2.1.1's 998 octets even where it cannot be folded (no white space).
MAX_PEER_TEXT = 900
#: What stands for the part that was cut off.
ELLIPSIS = "..."


def printable(text: str | bytes, limit: int = MAX_PEER_TEXT) -> str:
    """`text` made safe for one log line or one header field: control characters
    (C0, DEL, C1: CR, LF and ESC among them) become "?", and what is past `limit`
    octets of UTF-8 is cut off and marked with "...". Bytes are read as UTF-8.

    The one helper for every text a peer supplies, so the queue (remote replies, DSNs)
    and the protocols (client names and IDs in the log) treat it alike.
    """
    if isinstance(text, bytes):
        text = text[:limit + 1].decode("utf-8", "replace")
    text = text[:limit + 1]  # a character is at least one octet: the rest cannot fit
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return CONTROLS.sub("?", text)
    # Whole characters only: a sequence cut in two is dropped ("ignore").
    kept = encoded[:limit - len(ELLIPSIS)].decode("utf-8", "ignore")
    return CONTROLS.sub("?", kept) + ELLIPSIS
