"""Mail addresses as values: the local part kept as given, the domain normalised.

RFC 5321 2.4: the local part is case-sensitive on the wire, but every mailbox we host is
looked up case-insensitively (as Postfix and Dovecot do), via `key`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

#: The address grammar SMTP (smtp/grammar.py) and the JSON API (api/addresses.py) both
#: parse with. RFC 5321 4.1.2 atext (via RFC 5322 3.2.3), extended by RFC 6531 3.3
#: (and RFC 6532 3.2) with UTF8-non-ascii.
ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff"
DOT_STRING = re.compile(rf"[{ATEXT}]+(?:\.[{ATEXT}]+)*")
#: RFC 5321 4.1.2 sub-domain = Let-dig [Ldh-str] (+ U-label, RFC 6531 3.3).
LET_DIG = r"[A-Za-z0-9\u0080-\U0010ffff]"
LABEL = rf"{LET_DIG}(?:[A-Za-z0-9\u0080-\U0010ffff\-]*{LET_DIG})?"
DOMAIN = re.compile(rf"{LABEL}(?:\.{LABEL})*")


@dataclass(frozen=True)
class Address:
    """`localpart@domain`; the null reverse-path `<>` is Address("", "")."""

    localpart: str
    domain: str

    @classmethod
    def null(cls) -> Address:
        return cls("", "")

    @classmethod
    def parse_simple(cls, text: str) -> Address:
        """Split `local@domain` at the last `@` (admin input, config; not SMTP paths)."""
        local, sep, domain = text.strip().rpartition("@")
        if not sep or not local or not domain:
            raise ValueError(f"not an address: {text!r}")
        return cls(local, domain_key(domain))

    @property
    def is_null(self) -> bool:
        return not self.localpart and not self.domain

    @property
    def key(self) -> str:
        """Lookup form: lower-cased local part and domain."""
        return f"{self.localpart.lower()}@{self.domain}" if not self.is_null else ""

    @property
    def is_ascii(self) -> bool:
        return str(self).isascii()

    def __str__(self) -> str:
        return "" if self.is_null else f"{self.localpart}@{self.domain}"

    def bracketed(self) -> str:
        return f"<{self}>"


def domain_key(domain: str) -> str:
    """Lower-case, without a trailing dot; IDNA A-labels are left as they are."""
    return domain.strip().rstrip(".").lower()


def address_literal(ip: str) -> str:
    """RFC 5321 4.1.3: `[192.0.2.1]`, and `[IPv6:2001:db8::1]` for IPv6."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as the checks compare it: without an IPv6 zone ("%eth0"), and an
    IPv4-mapped IPv6 address ("::ffff:192.0.2.1", a dual-stack socket's view of an IPv4
    client) as the IPv4 address it is; None if `ip` is not an address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
