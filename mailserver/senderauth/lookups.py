"""DNS for the checks of one message: our resolver, one time budget, a query cap.

Runs in a worker thread. Every lookup the libraries make (pyspf's DNSLookup, dkimpy's
dnsfunc) lands here, so no library ever reaches the system resolver on its own, and
a DNS server that never answers costs at most `budget` seconds per message in all.
"""

from __future__ import annotations

import time

import dns.exception
import dns.rdatatype
import dns.resolver
import dns.reversename

from mailserver.core.dns import SharedResolver

#: Queries one message may cause in all (SPF: 10 mechanisms x a few each, for two
#: identities; DKIM: one per signature; DMARC: two; iprev: 1 + 10 x 2).
MAX_QUERIES = 120


class TempFail(Exception):
    """A lookup failed in a way that may pass: timeout, SERVFAIL, budget spent."""


class Lookups:
    """Blocking DNS for one message's checks (one thread at a time)."""

    def __init__(self, shared: SharedResolver, budget: float,
                 max_queries: int = MAX_QUERIES) -> None:
        self.resolver = shared.resolver()
        self.timeout = float(shared.timeout)
        self.budget = budget
        self.deadline = time.monotonic() + budget
        self.max_queries = max_queries
        self.queries = 0
        self._paused_with: float | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def pause(self) -> None:
        """Stop the clock (between the envelope checks and the end of the data, which
        may be minutes later: the client's upload time is not ours to spend)."""
        self._paused_with = max(self.remaining(), 0.0)

    def resume(self) -> None:
        if self._paused_with is not None:
            self.deadline = time.monotonic() + self._paused_with
            self._paused_with = None

    def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        """The answer's records; [] for NXDOMAIN or no data; TempFail otherwise."""
        left = self.remaining()
        if left <= 0:
            raise TempFail("time budget for this message spent")
        self.queries += 1
        if self.queries > self.max_queries:
            raise TempFail(f"more than {self.max_queries} DNS queries for one message")
        try:
            answer = self.resolver.resolve(name, rdtype, search=False,
                                           raise_on_no_answer=False,
                                           lifetime=min(self.timeout, left))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.YXDOMAIN:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
            raise TempFail(f"{rdtype} {name}: {type(e).__name__}") from None
        except dns.exception.DNSException as e:  # a name that is not one, etc.
            raise TempFail(f"{rdtype} {name}: {e}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record at `name`, its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]  # type: ignore[attr-defined]

    def addresses(self, name: str, rdtype: str) -> list[str]:
        return [r.to_text() for r in self.query(name, rdtype)]

    def ptr(self, ip: str) -> list[str]:
        name = dns.reversename.from_address(ip).to_text()
        return [r.target.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
                for r in self.query(name, "PTR")]
