"""The DSN parameters (RFC 3461 4) a queue entry passes on to a peer that offers DSN.

The SMTP side (smtp/dsn.py) decodes what clients send; the queue stores the decoded
values and encodes them again here when it relays: xtext (RFC 3461 4) for ENVID and an
rfc822 ORCPT, RFC 6533 3's utf-8-addr-xtext ("\\x{HEX}") for a utf-8 ORCPT, which any
peer can take, SMTPUTF8 or not. Every output is printable ASCII without spaces, so a
stored value can never add a parameter or a command to the line it goes on.
"""

from __future__ import annotations

from mailserver.queue.envelope import QueueEntry, RecipientState


def encode_xtext(text: str) -> str:
    """RFC 3461 4: "+XX" for "+", "=", and every octet outside "!".."~" (UTF-8 first)."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in b"+=" else f"+{b:02X}"
                   for b in text.encode("utf-8"))


def utf8_addr_xtext(address: str) -> str:
    """RFC 6533 3 utf-8-addr-xtext: "\\x{HEX}" for non-ASCII, "+", "=", "\\", controls."""
    return "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}"
                   for c in address)


def orcpt_value(kind: str, address: str) -> str:
    if kind == "utf-8" or not address.isascii():
        return "utf-8;" + utf8_addr_xtext(address)
    return "rfc822;" + encode_xtext(address)


def mail_params(entry: QueueEntry) -> str:
    """" RET=.. ENVID=..", or "" when the sender gave neither (RFC 3461 4.3, 4.4)."""
    params = f" RET={entry.ret}" if entry.ret in ("FULL", "HDRS") else ""
    if entry.envid:
        params += f" ENVID={encode_xtext(entry.envid)}"
    return params


def rcpt_params(rcpt: RecipientState) -> str:
    """" NOTIFY=.. ORCPT=..", or "" (RFC 3461 4.1, 4.2). NOTIFY in a fixed order."""
    params = ""
    notify = [w for w in ("NEVER", "SUCCESS", "DELAY", "FAILURE") if w in rcpt.notify]
    if notify:
        params += " NOTIFY=" + ",".join(notify)
    if rcpt.orcpt_type and rcpt.orcpt:
        params += " ORCPT=" + orcpt_value(rcpt.orcpt_type, rcpt.orcpt)
    return params
