"""The DSN parameters of MAIL and RCPT (RFC 3461 4), read and checked.

    MAIL FROM:<...> RET=FULL|HDRS ENVID=xtext
    RCPT TO:<...> NOTIFY=NEVER | NOTIFY=SUCCESS,DELAY,FAILURE (any of the three)
                  ORCPT=addr-type;xtext

- xtext (4): printable US-ASCII but "+" and "=", and "+XX" (two upper-case hex digits)
  for any other octet. decode_xtext refuses a lower-case or short escape, a raw "+"
  or "=", and anything outside 0x21-0x7E.
- ENVID: at most 100 characters once decoded (4.4), printable ASCII.
- ORCPT (4.2): addr-type "rfc822" (the address, ASCII, in xtext) or "utf-8" (RFC 6533
  3: "\\x{HEX}" escapes, or raw UTF-8 under SMTPUTF8); at most 500 characters as sent.
  A malformed one is refused, never passed on.
- NOTIFY (4.1): NEVER alone, or one or more of SUCCESS, DELAY, FAILURE, once each.

Errors are ReplyError 501 5.5.4 (RFC 3461 4: "syntax error in parameters" is 501)
naming the parameter; a parameter given twice is the caller's 501 already (grammar).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailserver.errors import ReplyError

MAX_ENVID = 100
MAX_ORCPT = 500
NOTIFY_WORDS = frozenset({"SUCCESS", "DELAY", "FAILURE"})
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
_HEX_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _bad(parameter: str, why: str) -> ReplyError:
    return ReplyError(501, "5.5.4", f"Syntax: {parameter} {why} (RFC 3461)")


def decode_xtext(text: str, parameter: str) -> str:
    """RFC 3461 4: xtext to the octets it stands for (as Latin-1 text, one character
    per octet; callers then decide what octets are allowed)."""
    if not _XTEXT.match(text):
        raise _bad(parameter, "is not xtext")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), text)


def encode_xtext(text: str) -> str:
    """The xtext form of ASCII `text` ("+" and "=" and controls as "+XX")."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}"
                   for c in text)


@dataclass(frozen=True)
class MailDsn:
    ret: str = ""  # "FULL", "HDRS" or "" (not given)
    envid: str = ""  # decoded


@dataclass(frozen=True)
class RcptDsn:
    notify: frozenset[str] = frozenset()  # {"NEVER"} or a subset of NOTIFY_WORDS; empty: not given
    orcpt_type: str = ""  # "rfc822" or "utf-8", lower case; "" when not given
    orcpt: str = ""  # the original recipient, decoded (UTF-8 text for utf-8)

    @property
    def wants(self) -> frozenset[str]:
        """What to report: NOTIFY as given, or RFC 3461 4.1's default (FAILURE, and
        DELAY at the MTA's discretion: we send it)."""
        if not self.notify:
            return frozenset({"FAILURE", "DELAY"})
        return frozenset() if "NEVER" in self.notify else self.notify


def parse_ret(value: str | None) -> str:
    if value is None or value.upper() not in ("FULL", "HDRS"):
        raise _bad("RET", "must be FULL or HDRS")
    return value.upper()


def parse_envid(value: str | None) -> str:
    if value is None:
        raise _bad("ENVID", "needs a value")
    decoded = decode_xtext(value, "ENVID")
    if len(decoded) > MAX_ENVID:
        raise _bad("ENVID", f"is longer than {MAX_ENVID} characters")
    if not all(" " <= c <= "~" for c in decoded):
        raise _bad("ENVID", "holds characters outside printable US-ASCII")
    return decoded


def parse_notify(value: str | None) -> frozenset[str]:
    if not value:
        raise _bad("NOTIFY", "needs NEVER or SUCCESS, DELAY, FAILURE")
    words = [w.upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return frozenset(words)
    if len(set(words)) != len(words) or not set(words) <= NOTIFY_WORDS:
        raise _bad("NOTIFY", "must be NEVER alone or SUCCESS, DELAY, FAILURE once each")
    return frozenset(words)


def parse_orcpt(value: str | None) -> tuple[str, str]:
    """(addr-type, address) of ORCPT=addr-type;xtext."""
    if not value or len(value) > MAX_ORCPT:
        raise _bad("ORCPT", f"needs addr-type;address of at most {MAX_ORCPT} characters")
    kind, semicolon, text = value.partition(";")
    kind = kind.lower()
    if not semicolon or not text:
        raise _bad("ORCPT", "needs addr-type;address")
    if kind == "rfc822":
        decoded = decode_xtext(text, "ORCPT")
        if not all("!" <= c <= "~" for c in decoded):
            raise _bad("ORCPT", "rfc822 address holds non-ASCII or spaces")
        return kind, decoded
    if kind == "utf-8":
        # RFC 6533 3: utf-8-addr-xtext (ASCII, "\x{HEX}" for other code points and for
        # "+", "=", "\", space and controls) or, with SMTPUTF8, utf-8-addr-unitext (the
        # same with raw UTF-8 allowed). Not xtext: "+" and "=" may not appear raw.
        if any(c in "+=" or c <= " " or c == "\x7f" for c in text):
            raise _bad("ORCPT", "utf-8 address holds '+', '=', a space or a control")

        def code_point(m: re.Match[str]) -> str:
            number = int(m[1], 16)
            if number > 0x10FFFF or 0xD800 <= number <= 0xDFFF or number < 0x20 or \
                    number == 0x7F:
                raise _bad("ORCPT", "has an escape that is not a printable code point")
            return chr(number)

        if "\\" in _HEX_ESCAPE.sub("", text):
            raise _bad("ORCPT", "utf-8 address holds a backslash that is no \\x{HEX}")
        return kind, _HEX_ESCAPE.sub(code_point, text)
    raise _bad("ORCPT", f"addr-type {kind[:20]!r} is not rfc822 or utf-8")


def format_orcpt(kind: str, address: str) -> str:
    """ORCPT's value to pass on to a peer that offers DSN (RFC 3461 4.2, RFC 6533 3:
    utf-8-addr-xtext, which any peer can take)."""
    if kind == "utf-8" or not address.isascii():
        return "utf-8;" + "".join(
            c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}"
            for c in address)
    return "rfc822;" + encode_xtext(address)
