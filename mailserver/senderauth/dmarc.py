"""DMARC (RFC 7489): the From domain, its policy record, and alignment.

The organisational domain comes from the Public Suffix List (publicsuffixlist, RFC
7489 3.2). The record parsing is ours and deliberately strict: a record must start
with v=DMARC1 (6.4), several records at one name mean no policy (6.6.3), unknown
tags are ignored, a bad p= with a good rua= is p=none (6.6.3), sp= is the policy of
subdomains, pct= samples (6.6.4: the policy not applied falls one step).

The From domain (6.6.1) is taken strictly: exactly one From field holding addresses
of one domain, with nothing a mail client could show differently from what we check
(encoded words or a second @ in the address, a domain that is not a host name).
Anything else is "ambiguous" and never passes.
"""

from __future__ import annotations

import email.headerregistry
import email.policy
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from mailserver.senderauth.lookups import Lookups, TempFail

_LDH = re.compile(r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                  r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (the domain itself if none)."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, strict: bool) -> bool:
    """RFC 7489 3.1: identical (strict), or the same organisational domain (relaxed)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if strict or a == b:
        return a == b
    return organizational_domain(a) == organizational_domain(b)


class AmbiguousFrom(Exception):
    """RFC 7489 6.6.1: no single author domain can be determined."""


def from_domain(from_values: list[bytes]) -> str:
    """The RFC5322.From domain, or AmbiguousFrom saying why there is none."""
    if len(from_values) != 1:
        raise AmbiguousFrom(f"{len(from_values)} From header fields")
    raw = from_values[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousFrom("From is not UTF-8") from None
    text = re.sub(r"\r?\n", "", text).strip()
    if "=?" in _angle_or_all(text):
        raise AmbiguousFrom("encoded word in the From address")
    try:
        header = email.policy.default.header_factory("From", text)
    except Exception:
        raise AmbiguousFrom("unparsable From") from None
    addresses = list(getattr(header, "addresses", ()))
    if getattr(header, "defects", None) or not addresses:
        raise AmbiguousFrom("malformed From")
    domains = set()
    for address in addresses:
        assert isinstance(address, email.headerregistry.Address)
        if "@" in address.username or not address.domain:
            raise AmbiguousFrom("malformed From address")
        domain = address.domain.lower().rstrip(".")
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise AmbiguousFrom("From domain is not a host name") from None
        if not _LDH.match(domain):
            raise AmbiguousFrom("From domain is not a host name")
        domains.add(domain)
    if len(domains) != 1:
        raise AmbiguousFrom("From addresses of several domains")
    return domains.pop()


def _angle_or_all(text: str) -> str:
    """The part of a From value that is the address (inside <>), or all of it."""
    start = text.rfind("<")
    return text[start:] if start >= 0 else text


@dataclass(frozen=True)
class Policy:
    domain: str  # where the record was found
    p: str
    sp: str
    pct: int
    adkim_strict: bool
    aspf_strict: bool


def parse_record(text: bytes) -> Policy | None:
    """A DMARC record's policy, None when it is not a usable one (RFC 7489 6.3, 6.4)."""
    try:
        value = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = [p.strip() for p in value.split(";")]
    tags: dict[str, str] = {}
    for i, part in enumerate(parts):
        if not part:
            continue
        key, sep, val = part.partition("=")
        key, val = key.strip().lower(), val.strip()
        if not sep:
            return None  # not a tag-value list (RFC 7489 6.4): no usable record
        if i == 0 and (key != "v" or val != "DMARC1"):
            return None
        tags.setdefault(key, val)  # a repeated tag: the first counts
    if "v" not in tags:
        return None
    p = tags.get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        if "rua" in tags:
            p = "none"  # 6.6.3 step 6
        else:
            return None
    sp = tags.get("sp", "").lower()
    if sp not in ("none", "quarantine", "reject"):
        sp = p
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    pct = min(max(pct, 0), 100)
    return Policy("", p, sp, pct, tags.get("adkim", "r").lower() == "s",
                  tags.get("aspf", "r").lower() == "s")


def _record_at(lookups: Lookups, domain: str) -> Policy | None:
    records = [r for r in lookups.txt(f"_dmarc.{domain}")
               if r[:8].lower().startswith(b"v=dmarc1")]
    if len(records) != 1:
        return None  # none, or several: 6.6.3 step 5, no policy
    policy = parse_record(records[0])
    if policy is None:
        return None
    return Policy(domain, policy.p, policy.sp, policy.pct, policy.adkim_strict,
                  policy.aspf_strict)


def find_policy(lookups: Lookups, domain: str) -> tuple[Policy | None, str]:
    """(policy, the disposition it asks for this domain); TempFail passes through."""
    policy = _record_at(lookups, domain)
    if policy is not None:
        return policy, policy.p
    org = organizational_domain(domain)
    if org != domain:
        policy = _record_at(lookups, org)
        if policy is not None:
            return policy, policy.sp
    return None, "none"


@dataclass(frozen=True)
class DMARCResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str
    #: What the domain owner asks for a failure: none, quarantine, reject (after pct).
    disposition: str = "none"
    policy: str = ""
    reason: str = ""


def evaluate(lookups: Lookups, domain: str, spf_domain: str, spf_result: str,
             dkim_passes: list[str]) -> DMARCResult:
    """RFC 7489 4.2: pass when an aligned identifier passed SPF or DKIM."""
    try:
        policy, requested = find_policy(lookups, domain)
    except TempFail as e:
        return DMARCResult("temperror", domain, reason=str(e))
    if policy is None:
        return DMARCResult("none", domain)
    if any(aligned(d, domain, policy.adkim_strict) for d in dkim_passes) or (
            spf_result == "pass" and aligned(spf_domain, domain, policy.aspf_strict)):
        return DMARCResult("pass", domain, "none", requested)
    disposition = requested
    if policy.pct < 100 and random.randrange(100) >= policy.pct:
        # 6.6.4: the next less strict policy for messages outside the sample.
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(requested, "none")
    return DMARCResult("fail", domain, disposition, requested)
