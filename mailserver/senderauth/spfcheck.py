"""SPF (RFC 7208) of the HELO and MAIL FROM identities, with pyspf.

pyspf looks names up through its module-level `DNSLookup`; we replace it once with a
function that uses the Lookups of the check running in this thread (a thread-local),
and fails with a TempError when there is none, so pyspf can never fall back to the
system resolver. pyspf enforces RFC 7208 4.6.4 itself: 10 DNS-querying mechanisms,
2 void lookups, 10 MX/PTR names; our Lookups adds the message's time budget.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import spf

from mailserver.senderauth.lookups import Lookups, TempFail

_current = threading.local()

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")


def _lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None
            ) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNSLookup contract: [((name, qtype), value)], TempError on failure."""
    lookups: Lookups | None = getattr(_current, "lookups", None)
    if lookups is None:
        raise spf.TempError("DNS lookup outside a check")
    try:
        records = lookups.query(name, qtype)
    except TempFail as e:
        raise spf.TempError(f"DNS {e}") from None
    out: list[tuple[tuple[str, str], Any]] = []
    for r in records:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), r.address))  # type: ignore[attr-defined]
        elif qtype == "MX":
            out.append(((name, qtype), (r.preference, r.exchange)))  # type: ignore[attr-defined]
        elif qtype == "PTR":
            out.append(((name, qtype), r.target.to_text(True)))  # type: ignore[attr-defined]
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), r.strings))  # type: ignore[attr-defined]
    return out


spf.DNSLookup = _lookup


@contextmanager
def using(lookups: Lookups) -> Iterator[None]:
    _current.lookups = lookups
    try:
        yield
    finally:
        _current.lookups = None


@dataclass(frozen=True)
class SPFResult:
    result: str
    #: The identity checked: the MAIL FROM address, or postmaster@HELO for <>.
    identity: str
    #: The domain of that identity (what DMARC aligns, RFC 7489 3.1.2).
    domain: str
    explanation: str = ""


def check_spf(lookups: Lookups, client_ip: str, helo: str, mail_from: str
              ) -> tuple[SPFResult, SPFResult]:
    """(MAIL FROM result, HELO result); blocking, in a worker thread.

    RFC 7208 2.4: with the null sender the MAIL FROM identity is postmaster@HELO.
    """
    helo_result = _one(lookups, client_ip, "", helo, helo)
    if not mail_from:
        return (SPFResult(helo_result.result, f"postmaster@{helo}", helo,
                          helo_result.explanation), helo_result)
    local, _, domain = mail_from.rpartition("@")
    # The domain is after the LAST @ (a quoted local part may hold one, RFC 5321
    # 4.1.2); pyspf splits at the first, so it gets a local part without any.
    result = _one(lookups, client_ip, local.replace("@", "_") + "@" + domain, helo, domain)
    return SPFResult(result.result, mail_from, result.domain, result.explanation), helo_result


def _one(lookups: Lookups, client_ip: str, sender: str, helo: str,
         domain: str) -> SPFResult:
    identity = sender or helo
    if not domain or not _plausible(domain):
        # RFC 7208 4.3: a domain that is not a valid FQDN gives "none" (for HELO: an
        # address literal or garbage).
        return SPFResult("none", identity, domain, "no valid domain to check")
    budget = max(lookups.remaining(), 0.001)
    try:
        with using(lookups):
            q = spf.query(i=client_ip, s=sender, h=helo, timeout=lookups.timeout,
                          querytime=budget)
            result, _code, explanation = q.check()
    except Exception as e:  # pyspf on input it did not expect: never our crash
        return SPFResult("permerror", identity, domain, f"SPF evaluation failed: {e}")
    if result not in RESULTS:
        result = "permerror"
    return SPFResult(result, identity, domain.lower(), str(explanation))


def _plausible(domain: str) -> bool:
    labels = domain.rstrip(".").split(".")
    return len(labels) >= 2 and len(domain) <= 253 and all(
        0 < len(label) < 64 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels)
