"""The Received trace header the SMTP session adds (RFC 5321 4.4); Return-Path is the
final delivery's (delivery/router.py).

Kept apart from the session so the header format has one home and its own tests.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import os
import time

from mailserver.address import Address, address_literal


def new_message_id() -> str:
    """A short random id for the log and the 250 reply (like Postfix's queue ids).

    One urandom call per message (secrets.choice per character cost 14 syscalls).
    """
    return base64.b32encode(os.urandom(10)).decode("ascii")


def with_protocol(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The `with` clause keyword (RFC 3848; RFC 6531 3.7.3 for UTF8SMTP)."""
    if smtputf8:
        base = "UTF8SMTP"
    else:
        base = "ESMTP" if esmtp else "SMTP"
    if tls:
        base += "S"
    if authenticated:
        base += "A"
    return base


def received_header(
    *,
    helo: str,
    peer_ip: str,
    hostname: str,
    protocol: str,
    message_id: str,
    recipients: list[Address],
    tls_info: str | None = None,
    now: float | None = None,
) -> bytes:
    """`Received:` per RFC 5321 4.4 (From-domain, By-domain, With, ID, For, date-time).

    `for` is given only for a single recipient, as Postfix does, so a message copied to
    several users does not reveal the others (RFC 5321 7.2 on blind copies).
    """
    # RFC 5322 3.3: "+0000" is UTC; "-0000" would mean "local zone unknown".
    moment = datetime.datetime.fromtimestamp(now if now is not None else time.time(),
                                             datetime.UTC)
    stamp = email.utils.format_datetime(moment)
    helo_text = _sanitise(helo) or "unknown"
    lines = [f"Received: from {helo_text} ({address_literal(peer_ip)})"]
    by = f"\tby {hostname} (mailserver) with {protocol} id {message_id}"
    if tls_info:
        by += f"\n\t({_sanitise(tls_info)})"
    lines.append(by)
    if len(recipients) == 1:
        lines.append(f"\tfor {recipients[0].bracketed()}; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _sanitise(text: str) -> str:
    """Header text from the client: keep it on one line and printable."""
    return "".join(c if c.isprintable() and c not in "()" else "?" for c in text)[:200]
