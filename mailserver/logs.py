"""Loggers for our modules: structured twisted.logger events, debug dropped by default.

twistd's log observer writes every level; formatting a debug event costs as much as an
info one, and the per-message debug lines measurably slowed the reactor thread. Our
loggers publish through a level filter instead, so debug output is one call away
(`set_level(LogLevel.debug)`) without costing anything when off.

log.format = "json" replaces twistd's text lines with json_observer: one JSON object
per line, the session id and client address as top-level keys (sessions log them as
`session` and `peer`), never a password or a message body (keys that name one are
dropped; nothing here logs a body in the first place).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
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


#: Event keys the JSON form lifts to the top level (the rest go under "fields").
_SESSION_KEYS = ("session",)
_CLIENT_KEYS = ("client", "peer", "peer_ip", "ip")
#: Keys whose values are never written, whatever a caller passes (passwords, bodies).
_SECRET_WORDS = ("password", "secret", "token", "body", "message_data")


def json_event(event: dict[str, Any]) -> str:
    """One log event as one line of JSON (log.format = "json").

    {"time", "level", "service", "session", "client", "event", "fields"}: `event` is the
    rendered text (as the text form shows it), `fields` the structured values, so a log
    shipper can filter on `session` to follow one connection. Values that JSON cannot
    hold are written as their repr; secret-looking keys are left out altogether.
    """
    namespace = str(event.get("log_namespace", ""))
    parts = namespace.split(".")
    session = next((str(event[k]) for k in _SESSION_KEYS if event.get(k)), None)
    # Session ids are "LISTENER-N" (submission-3): the listener is the finer service.
    service = event.get("service") or (session.rpartition("-")[0] if session and "-" in
                                       session else None) or (
        parts[1] if len(parts) > 1 and parts[0] == "mailserver" else namespace)
    level = event.get("log_level")
    fields: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or key in ("format", "message", "isError", "time",
                                             "system", "why", "failure"):
            continue
        if any(word in key.lower() for word in _SECRET_WORDS):
            continue
        fields[key] = value if isinstance(value, str | int | float | bool | None) \
            else repr(value)
    stamp = event.get("log_time")
    record = {
        "time": datetime.datetime.fromtimestamp(
            time.time() if stamp is None else stamp, datetime.UTC
        ).isoformat(timespec="milliseconds"),
        "level": getattr(level, "name", "info"),
        "service": str(service),
        "session": session,
        "client": next((str(event[k]) for k in _CLIENT_KEYS if event.get(k)), None),
        "event": formatEvent(event),
        "fields": fields,
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_observer(stream: IO[str], **extra: Any) -> FileLogObserver:
    """A FileLogObserver writing json_event lines (with `extra` fields) to `stream`."""
    if not extra:
        return FileLogObserver(stream, json_event)
    return FileLogObserver(stream, lambda e: json_event({**extra, **e}))
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
