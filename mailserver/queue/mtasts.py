"""MTA-STS when sending (RFC 8461): a recipient domain's policy, discovered, fetched over
verified HTTPS, checked and cached, and what it asks of delivery.

- Discovery (3.1): the `_mta-sts.DOMAIN` TXT record; exactly one record starting
  "v=STSv1;" with a valid `id=` (1-32 letters and digits), else the domain has no policy.
- Fetch (3.3): https://mta-sts.DOMAIN/.well-known/mta-sts.txt, the certificate verified
  for that name (relay.ca_file or the system's roots), no redirects followed, status 200,
  Content-Type text/plain, at most MAX_POLICY_BYTES; the name resolved with our resolver
  (dns.nameservers), never the system's.
- Policy (3.2): "key: value" lines, version STSv1, mode enforce | testing | none,
  max_age at most 31557600, one or more mx patterns (a "*." wildcard covers exactly
  one leftmost label, 4.1); unknown keys ignored.
- Cache (5.1): kept on disk (data_dir/mta-sts/DOMAIN.json) until max_age ends; a TXT
  whose id equals the cached policy's means no fetch; a new id means fetch, and a
  failed fetch keeps the cached policy while it is fresh (5.1: the cached policy
  stays in force). A failed TXT lookup keeps the cached policy too (10.2: an attacker
  who blocks DNS must not turn the policy off).
- Applying it (5, 4.2): `enforce`: only MX hosts matching a pattern, over TLS with a
  certificate valid for that host name (PKIX), else the mail waits and in the end
  bounces; `testing`: deliver as before and report (TLS-RPT); `none`: as no policy.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from mailserver.core.dns import txt_strings
from mailserver.core.ownfiles import write_atomically

#: RFC 8461 3.2 does not bound the policy; 64 KiB is what mox and Postfix's
#: postfix-mta-sts-resolver read at most, and a real policy is a few hundred octets.
MAX_POLICY_BYTES = 64 * 1024
#: RFC 8461 3.2: "max_age ... up to 31557600".
MAX_AGE_LIMIT = 31_557_600
MODES = frozenset({"enforce", "testing", "none"})
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


class PolicyError(Exception):
    """A policy (or its TXT record) that cannot be used; says what is wrong."""


@dataclass(frozen=True)
class StsPolicy:
    domain: str
    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int
    fetched: float  # when it was fetched (seconds since the epoch)

    def fresh(self, now: float) -> bool:
        return now < self.fetched + self.max_age

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    def allows(self, host: str) -> bool:
        """RFC 8461 4.1: does MX `host` match one of the policy's patterns?"""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def txt_policy_id(texts: Sequence[str]) -> str:
    """The id of the one "v=STSv1;" record among `texts`; PolicyError otherwise
    (RFC 8461 3.1: no such record, several, or a bad one: no policy)."""
    records = [t for t in texts if t.startswith("v=STSv1;") or t == "v=STSv1"]
    if len(records) != 1:
        raise PolicyError(f"{len(records)} v=STSv1 TXT records (exactly one needed)")
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if key:
            if not eq:
                raise PolicyError(f"TXT field {key[:40]!r} has no value")
            fields.setdefault(key, value.strip())
    ident = fields.get("id", "")
    if not _ID.match(ident):
        raise PolicyError(f"TXT id {ident[:40]!r} is not 1-32 letters and digits")
    return ident


def parse_policy(domain: str, ident: str, body: bytes, now: float) -> StsPolicy:
    """The policy in `body` (RFC 8461 3.2); PolicyError naming what is wrong."""
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy of {len(body)} octets (at most {MAX_POLICY_BYTES})")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("policy is not ASCII") from None
    fields: dict[str, list[str]] = {}
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"policy line {number} is not 'key: value'")
        fields.setdefault(key.strip(), []).append(value.strip())
    version = fields.get("version", [""])[0]
    if version != "STSv1":
        raise PolicyError(f"policy version {version[:20]!r} (STSv1 needed)")
    mode = fields.get("mode", [""])[0]
    if mode not in MODES:
        raise PolicyError(f"policy mode {mode[:20]!r} (enforce, testing or none)")
    age = fields.get("max_age", [""])[0]
    if not (age.isascii() and age.isdigit() and len(age) <= 10) or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {age[:20]!r} (0 to {MAX_AGE_LIMIT})")
    patterns = tuple(p.lower().rstrip(".") for p in fields.get("mx", []))
    for pattern in patterns:
        if not _valid_pattern(pattern):
            raise PolicyError(f"policy mx {pattern[:80]!r} is not a host name pattern")
    if mode != "none" and not patterns:
        raise PolicyError("policy has no mx (needed unless mode is none)")
    return StsPolicy(domain, ident, mode, patterns, int(age), now)


def _valid_pattern(pattern: str) -> bool:
    labels = pattern[2:].split(".") if pattern.startswith("*.") else pattern.split(".")
    return len(pattern) <= 253 and len(labels) >= 1 and all(
        _LABEL.match(label) for label in labels)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: the host exactly, or "*.example.com" for one label before it."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return host == pattern


class PolicyCache:
    """Policies on disk, one JSON file per domain under `root` (data_dir/mta-sts), so a
    restart keeps them: forgetting a policy is what an attacker on the path wants."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: domain -> its policy, None: no file (so one read per domain, not per mail).
        self._memory: dict[str, StsPolicy | None] = {}

    def _path(self, domain: str) -> Path:
        return self.root / f"{domain}.json"

    def loaded(self, domain: str) -> bool:
        """get() answers from memory, without touching the disk."""
        return domain in self._memory

    def get(self, domain: str) -> StsPolicy | None:
        """Blocking the first time for each domain (a disk thread)."""
        if domain in self._memory:
            return self._memory[domain]
        try:
            data = json.loads(self._path(domain).read_text("ascii"))
            policy = StsPolicy(domain, str(data["id"]), str(data["mode"]),
                               tuple(str(m) for m in data["mx"]), int(data["max_age"]),
                               float(data["fetched"]))
        except (OSError, ValueError, KeyError, TypeError):
            self._memory[domain] = None
            return None
        self._memory[domain] = policy
        return policy

    def put(self, policy: StsPolicy) -> None:
        """Blocking (a disk thread): written whole or not at all."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
        data = asdict(policy)
        data["mx"] = list(policy.mx)
        write_atomically(self._path(policy.domain), json.dumps(data).encode("ascii"), 0o640)
        self._memory[policy.domain] = policy

    def domains(self) -> list[str]:
        """Every domain with a policy on disk (blocking: the refresher's disk thread)."""
        try:
            return sorted(p.name[:-5] for p in self.root.iterdir()
                          if p.name.endswith(".json"))
        except FileNotFoundError:
            return []

    def forget(self, domain: str) -> None:
        self._memory.pop(domain, None)
        try:
            os.unlink(self._path(domain))
        except FileNotFoundError:
            pass


def lookup_txt(resolver: dns.resolver.Resolver, domain: str) -> list[str] | None:
    """The TXT strings at _mta-sts.DOMAIN ([] when there are none: NXDOMAIN or no TXT);
    None when the lookup failed (the cached policy then stays in force). Blocking."""
    return txt_strings(resolver, f"_mta-sts.{domain}.")


#: (domain) -> the policy's bytes; raises PolicyError or any Exception on failure.
Fetcher = Callable[[str], Any]


def decide(domain: str, txt: list[str] | None, cached: StsPolicy | None,
           now: float) -> tuple[str, StsPolicy | None, str]:
    """What to do before any fetch, RFC 8461 5.1 (pure):
    ("use", policy, why), ("fetch", cached-or-None, id) or ("none", None, why)."""
    fresh = cached if cached is not None and cached.fresh(now) else None
    if txt is None:
        return ("use", fresh, "TXT lookup failed: the cached policy stays") if fresh \
            else ("none", None, "TXT lookup failed and no policy cached")
    try:
        ident = txt_policy_id(txt)
    except PolicyError as e:
        # No (valid) record: a cached policy stays in force until it expires (5.1).
        return ("use", fresh, f"{e}: the cached policy stays") if fresh \
            else ("none", None, str(e))
    if fresh is not None and fresh.id == ident:
        return "use", fresh, "cached, id unchanged"
    return "fetch", fresh, ident
