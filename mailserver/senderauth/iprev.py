"""iprev (RFC 8601 2.7.3): forward-confirmed reverse DNS of the client address."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailserver.senderauth.lookups import Lookups, TempFail

#: PTR names followed (RFC 7208 5.5 uses the same bound for the same lookup).
MAX_NAMES = 10


@dataclass(frozen=True)
class IprevResult:
    result: str  # pass, fail, temperror, permerror
    ip: str
    #: The confirmed host name (pass only).
    name: str = ""


def check_iprev(lookups: Lookups, ip: str) -> IprevResult:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return IprevResult("permerror", ip)
    try:
        names = lookups.ptr(ip)
    except TempFail:
        return IprevResult("temperror", ip)
    if not names:
        return IprevResult("fail", ip)  # no PTR (RFC 8601 3.3: "permerror" is for
        # broken data; no name at all is a plain failure of the check)
    rdtype = "A" if address.version == 4 else "AAAA"
    temp = False
    for name in names[:MAX_NAMES]:
        try:
            forward = lookups.addresses(name, rdtype)
        except TempFail:
            temp = True
            continue
        if any(ipaddress.ip_address(a) == address for a in forward):
            return IprevResult("pass", ip, name)
    return IprevResult("temperror" if temp else "fail", ip)
