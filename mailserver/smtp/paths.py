"""Paths and mailboxes of MAIL FROM and RCPT TO (RFC 5321 4.1.2, 4.1.3, 4.5.3.1): the
bracketed path, its local part and its domain or address literal, each in one canonical
spelling so that lookups need no quoting rules.

Pure, as grammar.py is (it parses the rest of the command line and calls these); kept
apart from it since grammar.py had grown past 600 lines. Refusals are ReplyErrors with
the code and enhanced status code the client should see.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from mailserver.address import DOMAIN, DOT_STRING, Address, domain_key
from mailserver.errors import ReplyError

#: RFC 5321 4.1.2 Dot-string and Domain: mailserver/address.py (the API parses with them too).
_DOT_STRING = DOT_STRING
#: RFC 5321 4.1.2 Quoted-string: qtextSMTP = %d32-33 / %d35-91 / %d93-126 (+ UTF8-non-ascii,
#: RFC 6531 3.3), quoted-pairSMTP = "\" %d32-126.
_QUOTED_STRING = re.compile(r'"((?:[ !#-\[\]-~\u0080-\U0010ffff]|\\[ -~])*)"')
_QUOTED_PAIR = re.compile(r"\\([ -~])")
_DOMAIN = DOMAIN
#: A Path up to its closing ">", where a quoted local part may itself hold "<" or ">".
_PATH = re.compile(r'<(?:[^"<>]|"(?:[^"\\]|\\.)*")*>')
#: RFC 5321 4.1.3 IPv4-address-literal: Snum 3("." Snum), Snum = 1*3DIGIT (0-255).
_IPV4_LITERAL = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")

#: RFC 5321 4.5.3.1.1-3 size limits, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_LABEL = 63  # RFC 1035 2.3.4

#: Unicode categories refused inside non-ASCII text: C1 controls, unassigned, private use,
#: surrogates, and the separators (U+2028/2029 end lines in some software, spaces in a
#: domain are never valid). Domains additionally refuse format characters and spaces.
_BAD_LOCAL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BAD_DOMAIN_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Cf", "Zs", "Zl", "Zp"})


def bad_address(enhanced: str, text: str) -> ReplyError:
    # RFC 3463 3.2: X.1.7 bad sender mailbox syntax, X.1.3 bad destination mailbox syntax.
    return ReplyError(501, enhanced, text)


def split_path(rest: str, enhanced: str, role: str) -> tuple[str, str]:
    """Split `<path> params` into the bracketed path and the parameter text."""
    match = _PATH.match(rest)
    if match is None:
        raise bad_address(enhanced, f"Syntax error in {role} address: use <address>")
    path, after = match.group(0), rest[match.end() :]
    if after and not after.startswith(" "):
        raise bad_address(enhanced, f"Syntax error in {role} address: junk after >")
    return path, after[1:]


def parse_path(path: str, enhanced: str, role: str, smtputf8_allowed: bool) -> Address:
    """A bracketed Path (RFC 5321 4.1.2) other than `<>` -> Address."""
    if len(path.encode("utf-8")) > MAX_PATH:  # RFC 5321 4.5.3.1.3
        raise bad_address(enhanced, f"Syntax error in {role} address: path too long")
    mailbox = path[1:-1]
    if mailbox.startswith("@"):
        # RFC 5321 4.1.2 A-d-l and Appendix C: a source route MUST be accepted, SHOULD be
        # ignored. It ends at the first ":" (route domains hold none).
        route, colon, mailbox = mailbox.partition(":")
        if not colon or not all(
            hop.startswith("@") and is_domain_name(hop[1:]) for hop in route.split(",")
        ):
            raise bad_address(enhanced, f"Syntax error in {role} address: bad source route")
    address = parse_mailbox(mailbox, enhanced, role)
    if not smtputf8_allowed and not address.is_ascii:
        # RFC 6531 3.5: an address that must be ASCII is refused with 550 (MAIL) or 553
        # (RCPT) and X.6.7 (RFC 5248: non-ASCII addresses not permitted).
        code = 550 if role == "sender" else 553
        raise ReplyError(code, "5.6.7", f"Non-ASCII {role} address not permitted")
    return address


def parse_mailbox(mailbox: str, enhanced: str, role: str) -> Address:
    """RFC 5321 4.1.2: Mailbox = Local-part "@" ( Domain / address-literal )."""
    quoted = _QUOTED_STRING.match(mailbox) if mailbox.startswith('"') else None
    if quoted is not None:
        wire_local, rest = quoted.group(0), mailbox[quoted.end() :]
        local = _canonical_quoted(quoted.group(1))
    else:
        wire_local, at, after = mailbox.partition("@")
        rest = at + after
        if not _DOT_STRING.fullmatch(wire_local) or not _text_ok(wire_local, False):
            raise bad_address(enhanced, f"Syntax error in {role} address: bad local part")
        local = wire_local
    if not rest.startswith("@"):
        raise bad_address(enhanced, f"Syntax error in {role} address: missing @domain")
    if len(wire_local.encode("utf-8")) > MAX_LOCAL_PART:  # RFC 5321 4.5.3.1.1
        raise bad_address(enhanced, f"Syntax error in {role} address: local part too long")
    domain = parse_domain(rest[1:])
    if domain is None:
        raise bad_address(enhanced, f"Syntax error in {role} address: bad domain")
    return Address(local, domain)


def _canonical_quoted(content: str) -> str:
    """The local part of a Quoted-string, in one canonical form per mailbox.

    RFC 5321 4.1.2: `"john"` and `john` are the same local part, and quoted-pairs are
    only escapes. So: unescape; if the result is a Dot-string, use it bare; otherwise
    quote it again, escaping only `"` and `\\`. Lookups then need no quoting rules.
    """
    text = _QUOTED_PAIR.sub(r"\1", content)
    if _DOT_STRING.fullmatch(text) and _text_ok(text, False):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_domain(text: str) -> str | None:
    """Domain or address-literal (RFC 5321 4.1.2, 4.1.3) in normal form, None if invalid.

    Names go through domain_key (lower case); literals become `[1.2.3.4]` or
    `[IPv6:<compressed form>]` so that one address has one spelling.
    """
    if len(text.encode("utf-8")) > MAX_DOMAIN:  # RFC 5321 4.5.3.1.2
        return None
    if text.startswith("[") and text.endswith("]"):
        return _address_literal(text[1:-1])
    return domain_key(text) if is_domain_name(text) else None


def is_domain_name(text: str) -> bool:
    """RFC 5321 4.1.2 Domain (with RFC 6531 3.3 U-labels); no trailing dot, no "_"."""
    if not _DOMAIN.fullmatch(text) or not _text_ok(text, True):
        return False
    return all(len(label) <= MAX_LABEL for label in text.split(".") if label.isascii())


def _address_literal(inner: str) -> str | None:
    """RFC 5321 4.1.3: IPv4 or `IPv6:` literals; General-address-literal tags other than
    IPv6 are not registered with IANA, so none can be valid today."""
    v4 = _IPV4_LITERAL.fullmatch(inner)
    if v4 is not None:
        octets = [int(part) for part in v4.groups()]
        return "[" + ".".join(map(str, octets)) + "]" if max(octets) <= 255 else None
    if inner[:5].upper() == "IPV6:" and "%" not in inner:
        try:
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        except ValueError:
            return None
    return None


def _text_ok(text: str, domain: bool) -> bool:
    """Non-ASCII characters: refuse controls and separators (see the category sets)."""
    if text.isascii():
        return True
    bad = _BAD_DOMAIN_CATEGORIES if domain else _BAD_LOCAL_CATEGORIES
    return not any(unicodedata.category(c) in bad for c in text if c >= "\x80")
