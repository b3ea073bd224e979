"""Addresses in API requests: `alice@example.org`, `"john doe"@example.org`,
`jöran@exämple.org` (SMTPUTF8), or {"address": ..., "name": ...} with a display name.

The address is read with the email package's RFC 5322 addr-spec parser and then put in
the one canonical form the SMTP grammar gives a path (smtp/grammar.py
_canonical_quoted and _parse_domain): a quoted local part that is a plain dot-string
loses its quotes, any other keeps them with only `"` and `\\` escaped; the domain is
lower-cased. So the directory, the sender rule and the queue see the same address
whether it came in by RCPT TO or in JSON. A display name travels only in the header.

Anything a receiving parser might read otherwise than we do is refused (ApiError 400):
CR, LF or NUL anywhere (header injection), a defect the parser reports, a group, a
route, more than one address, no domain, a local part past RFC 5321's 64 octets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.errors import NonASCIILocalPartDefect
from email.headerregistry import Address as HeaderAddress
from email.headerregistry import AddressHeader, HeaderRegistry
from typing import Any

from mailserver.address import DOMAIN, DOT_STRING, domain_key
from mailserver.api.resource import ApiError

#: RFC 5321 4.1.2 Dot-string (address.py's, as SMTP parses it), and Domain with RFC 6531
#: U-labels or an address literal (RFC 5321 4.1.3).
_DOT_STRING = DOT_STRING
_DOMAIN = re.compile(rf"{DOMAIN.pattern}|\[[0-9A-Fa-f:.IPv]+\]")
#: Dot-string "@" Domain: an address no parser can read two ways (the fast path).
_SIMPLE = re.compile(rf"({_DOT_STRING.pattern})@({_DOMAIN.pattern})")
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\]|\\.)*"')
#: What no header value, name or address may hold (RFC 5322 2.2: CR and LF end a field;
#: NUL is not a character of a message at all, RFC 5322 2.1).
FORBIDDEN = re.compile(r"[\r\n\x00]")
#: RFC 5321 4.5.3.1.1.
MAX_LOCAL_PART = 64
MAX_ADDRESS = 254

_REGISTRY = HeaderRegistry()


@dataclass(frozen=True)
class Mailbox:
    """One address of a request: the envelope's form, and the display name."""

    address: str
    name: str = ""

    @property
    def is_ascii(self) -> bool:
        return self.address.isascii()

    def header(self) -> HeaderAddress:
        """The email package's Address, for building header fields."""
        local, _, domain = self.address.rpartition("@")
        if local.startswith('"'):
            local = re.sub(r"\\(.)", r"\1", local[1:-1])
        return HeaderAddress(display_name=self.name, username=local, domain=domain)


def no_injection(value: str, where: str) -> str:
    """`value` unchanged, or ApiError 400 if it holds CR, LF or NUL."""
    if FORBIDDEN.search(value):
        raise ApiError(400, "header_injection", f"{where}: CR, LF and NUL are not allowed",
                       smtp="5.6.0")
    return value


def mailbox(value: Any, where: str) -> Mailbox:
    """A request's address (a string, or {"address", "name"}), canonical, or 400."""
    name = ""
    if isinstance(value, dict):
        unknown = set(value) - {"address", "name"}
        if unknown:
            raise ApiError(400, "bad_request", f"{where}: unknown key {sorted(unknown)[0]!r}")
        name = value.get("name", "")
        value = value.get("address")
        if not isinstance(name, str):
            raise ApiError(400, "bad_request", f"{where}.name: must be a string")
        no_injection(name, f"{where}.name")
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad_request", f"{where}: an address is a non-empty string")
    no_injection(value, where)
    return Mailbox(canonical(value, where), name)


def mailboxes(value: Any, where: str, limit: int) -> list[Mailbox]:
    """A list of addresses (a single one is taken as a list of one)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > limit:
        raise ApiError(400, "too_many_recipients", f"{where}: at most {limit} addresses",
                       smtp="5.5.3")
    return [mailbox(item, f"{where}[{i}]") for i, item in enumerate(items)]


def canonical(text: str, where: str) -> str:
    """`local@domain` as the SMTP grammar would store it, or ApiError 400."""
    bad = ApiError(400, "bad_address", f"{where}: not an address: {text[:100]!r}",
                   smtp="5.1.3")
    if len(text.encode("utf-8")) > 4 * MAX_ADDRESS or text.strip() != text:
        raise bad
    simple = _SIMPLE.fullmatch(text)
    if simple is not None:
        # dot-atom "@" domain: nothing for a parser to read otherwise (the common case,
        # and the email package's parser costs ~0.1 ms an address).
        local, domain = simple.group(1), simple.group(2)
        if ".." in domain or len(local.encode("utf-8")) > MAX_LOCAL_PART:
            raise bad
        return _checked(f"{local}@{domain_key(domain)}", bad)
    if "(" in _QUOTED_LOCAL.sub("", text, count=1):
        raise bad  # an RFC 5322 comment: no part of an address, and no part of a path
    try:
        header = _REGISTRY("To", text)
    except Exception:  # the parser's own errors on hostile input
        raise bad from None
    assert isinstance(header, AddressHeader)
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if defects or len(header.addresses) != 1 or header.groups[0].display_name is not None:
        raise bad
    parsed = header.addresses[0]
    if parsed.display_name or not parsed.username or not parsed.domain:
        raise bad  # "Name <a@b>" belongs in {"address", "name"}
    local = parsed.username
    if not _DOT_STRING.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    domain = parsed.domain
    if not _DOMAIN.fullmatch(domain) or ".." in domain:
        raise bad
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise bad
    return _checked(f"{local}@{domain_key(domain)}", bad)


def _checked(address: str, bad: ApiError) -> str:
    if len(address.encode("utf-8")) > MAX_ADDRESS:
        raise bad
    return address
