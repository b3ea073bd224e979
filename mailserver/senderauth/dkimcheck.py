"""DKIM (RFC 6376, RFC 8463) and ARC (RFC 8617) verification with dkimpy.

dkimpy fetches keys through the `dnsfunc` we give it: ours goes through Lookups and
also enforces our key-size policy before dkimpy sees the key (RSA under 1024 bits is
refused, RFC 8301 3.2; over 8192 bits too: such keys only cost the verifier). dkimpy
turns every key problem into a plain False; our dnsfunc remembers what happened, so
the result can say temperror or permerror instead of fail (RFC 8601 2.7.1).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mailserver.senderauth.lookups import Lookups, TempFail

MIN_RSA_BITS = 1024
MAX_RSA_BITS = 8192


@dataclass(frozen=True)
class DKIMResult:
    result: str  # pass, fail, neutral, policy, temperror, permerror
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    #: The start of b=, so several signatures of one domain can be told apart
    #: (RFC 6008).
    b_prefix: str = ""
    reason: str = ""


class _KeyFetcher:
    """dkimpy's dnsfunc, remembering why the last fetch failed."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups
        self.problem: tuple[str, str] | None = None

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        self.problem = None
        qname = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = self.lookups.txt(qname.rstrip("."))
        except TempFail as e:
            self.problem = ("temperror", f"key lookup: {e}")
            return None
        if not records:
            self.problem = ("permerror", "no key for signature")
            return None
        if len(records) > 1:
            # RFC 6376 3.6.2.2: several records are allowed, but which is meant is
            # then a guess; we do not guess.
            self.problem = ("permerror", "several key records")
            return None
        record = records[0]
        size_problem = _key_size_problem(record)
        if size_problem:
            self.problem = ("permerror", size_problem)
            return None
        return record


def _key_size_problem(record: bytes) -> str | None:
    """Refuse RSA keys outside MIN..MAX bits before any RSA work is done."""
    try:
        tags = dkim.util.parse_tag_value(record)
    except Exception:
        return "malformed key record"
    if tags.get(b"k", b"rsa").strip() != b"rsa":
        return None
    p = re.sub(rb"\s+", b"", tags.get(b"p", b""))
    if not p:
        return "key revoked"
    try:
        key = load_der_public_key(base64.b64decode(p, validate=True))
    except (ValueError, binascii.Error, TypeError):
        return "malformed public key"
    if not isinstance(key, rsa.RSAPublicKey):
        return "not an RSA key"
    if key.key_size < MIN_RSA_BITS:
        return f"RSA key of {key.key_size} bits is too short"
    if key.key_size > MAX_RSA_BITS:
        return f"RSA key of {key.key_size} bits is too long"
    return None


def verify_dkim(message: bytes, lookups: Lookups, max_signatures: int) -> list[DKIMResult]:
    """One result per DKIM-Signature, topmost first; at most `max_signatures` are
    verified, the rest are reported neutral without any work."""
    try:
        d = dkim.DKIM(message, minkey=MIN_RSA_BITS, timeout=max(1, int(lookups.timeout)))
    except Exception as e:
        return [DKIMResult("permerror", reason=f"unparsable message: {e}")]
    signatures = [value for name, value in d.headers if name.lower() == b"dkim-signature"]
    results: list[DKIMResult] = []
    fetcher = _KeyFetcher(lookups)
    for index, value in enumerate(signatures):
        tags = _tags(value)
        base = DKIMResult("neutral", _tag(tags, b"d").lower(), _tag(tags, b"s"),
                          _tag(tags, b"a").lower(), re.sub(r"\s+", "", _tag(tags, b"b"))[:8])
        if index >= max_signatures:
            results.append(_with(base, "neutral", f"not verified: over the limit of "
                                                  f"{max_signatures} signatures"))
            continue
        results.append(_verify_one(d, index, tags, base, fetcher))
    return results


def _verify_one(d: dkim.DKIM, index: int, tags: dict[bytes, bytes] | None,
                base: DKIMResult, fetcher: _KeyFetcher) -> DKIMResult:
    if tags is None:
        return _with(base, "permerror", "malformed signature")
    length_problem = _length_problem(d, tags)
    try:
        ok = d.verify(idx=index, dnsfunc=fetcher)
    except dkim.ValidationError as e:
        if str(e).startswith("body hash mismatch"):
            # RFC 6376 6.1.3: the body changed after signing: a failed signature.
            return _with(base, "fail", "body hash did not verify")
        return _with(base, "permerror", str(e)[:120])
    except dkim.DKIMException as e:
        return _with(base, "permerror", str(e)[:120])
    except Exception as e:  # dkimpy on input it did not expect: never our crash
        return _with(base, "permerror", f"{type(e).__name__}: {str(e)[:100]}")
    if not ok and fetcher.problem is not None:
        return _with(base, *fetcher.problem)
    if not ok:
        return _with(base, "fail", "signature did not verify")
    if length_problem:
        return _with(base, "policy", length_problem)
    return _with(base, "pass", "")


def _length_problem(d: dkim.DKIM, tags: dict[bytes, bytes]) -> str | None:
    """l= (RFC 6376 3.5, 8.2): a signature over part of the body vouches for nothing
    appended after it, so it does not authenticate the message we deliver; an l=
    beyond the body is invalid."""
    if b"l" not in tags:
        return None
    try:
        length = int(tags[b"l"])
        policy = dkim.CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        body = policy.canonicalize_body(d.body)
    except Exception:
        return "malformed l= or c="
    if length > len(body):
        return "l= is longer than the body"
    if length < len(body):
        return f"signature covers only {length} of {len(body)} body octets"
    return None


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        return {k: v for k, v in dkim.util.parse_tag_value(value).items()}
    except Exception:
        return None


def _tag(tags: dict[bytes, bytes] | None, key: bytes) -> str:
    if not tags or key not in tags:
        return ""
    return tags[key].decode("ascii", "replace").strip()


def _with(base: DKIMResult, result: str, reason: str) -> DKIMResult:
    return DKIMResult(result, base.domain, base.selector, base.algorithm, base.b_prefix,
                      reason)


@dataclass(frozen=True)
class ARCResult:
    result: str  # none, pass, fail
    reason: str = ""


def verify_arc(message: bytes, lookups: Lookups) -> ARCResult:
    """RFC 8617 5.2: the chain's validation status (cv)."""
    if b"arc-seal" not in message[:message.find(b"\n\n") + 1 or len(message)].lower():
        return ARCResult("none")
    try:
        cv, _results, comment = dkim.arc_verify(message, dnsfunc=_KeyFetcher(lookups),
                                                minkey=MIN_RSA_BITS,
                                                timeout=max(1, int(lookups.timeout)))
    except Exception as e:
        return ARCResult("fail", f"{type(e).__name__}")
    if cv is None:
        return ARCResult("fail", str(comment)[:100])
    return ARCResult(cv.decode("ascii", "replace"), str(comment)[:100])
