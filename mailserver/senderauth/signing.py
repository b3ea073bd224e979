"""DKIM signing (RFC 6376) of the mail we send: one Ed25519 (RFC 8463) and one RSA
signature per message, relaxed/relaxed.

Signed fields: RFC 6376 5.4.1's recommended list, each as often as it occurs, and
From, To, Subject, Date, Message-ID once more than they occur ("oversigning", 8.15):
nobody can add a second one without breaking the signature, which is how the
"Composition Kills" attacks put a second From in front of a mail client.
Signing is CPU work: `sign` runs in a thread.

dkimpy computes RSA signatures with Python integers (5.3 ms of CPU for a 2048-bit key
here, with the GIL held throughout); `_rsa_sign` below does the same RSASSA-PKCS1-v1_5
operation (RFC 8017 8.2.1) in OpenSSL through `cryptography` (0.23 ms), and is put in
the place dkimpy calls. dkimpy offers no hook for it; the signature bytes are the same
(PKCS#1 v1.5 signing is deterministic), and the independent verifiers of
tests/senderauth check them (decision 0014). Its PEM parser is put in place the same way,
with a cache: a key is parsed once, not once per message.
"""

from __future__ import annotations

import email.utils
import re

import dkim
import dkim.crypto
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread

from mailserver.logs import logger
from mailserver.senderauth.keys import DKIMKey, KeyStore

log = logger(__name__)

RECOMMENDED = [h.decode() for h in dkim.DKIM.SHOULD]
OVERSIGNED = ("from", "to", "subject", "date", "message-id")
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")


#: OpenSSL keys made from dkimpy's parsed private keys, by modulus (a few per domain).
_OPENSSL_KEYS: dict[int, rsa.RSAPrivateKey] = {}
#: The digest algorithms of the rsa-sha256 and (verification only) rsa-sha1 signatures.
_DIGESTS = {32: hashes.SHA256(), 20: hashes.SHA1()}


def _rsa_sign(digest: object, private_key: dict[str, int]) -> bytes:
    """dkim.crypto.RSASSA_PKCS1_v1_5_sign's contract (a hash object and dkimpy's key
    dict in, the signature out), computed by OpenSSL."""
    key = _OPENSSL_KEYS.get(private_key["modulus"])
    if key is None:
        public = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
        key = rsa.RSAPrivateNumbers(
            p=private_key["prime1"], q=private_key["prime2"],
            d=private_key["privateExponent"], dmp1=private_key["exponent1"],
            dmq1=private_key["exponent2"], iqmp=private_key["coefficient"],
            public_numbers=public).private_key()
        if len(_OPENSSL_KEYS) >= 64:
            _OPENSSL_KEYS.clear()
        _OPENSSL_KEYS[private_key["modulus"]] = key
    value: bytes = digest.digest()  # type: ignore[attr-defined]
    return key.sign(value, padding.PKCS1v15(), utils.Prehashed(_DIGESTS[len(value)]))


dkim.RSASSA_PKCS1_v1_5_sign = _rsa_sign  # type: ignore[attr-defined]

#: dkimpy's parsed RSA private keys, by their PEM text (a few per domain).
_PARSED_KEYS: dict[bytes, dict[str, int]] = {}
_parse_pem_private_key = dkim.crypto.parse_pem_private_key


def _parsed_private_key(data: bytes) -> dict[str, int]:
    """dkim.crypto.parse_pem_private_key, once per key: dkimpy parses the PEM's ASN.1
    in Python on every signature (0.18 ms with the GIL held, per message, in the
    threads the reactor shares the GIL with); the parsed numbers are only read."""
    key = _PARSED_KEYS.get(data)
    if key is None:
        key = _parse_pem_private_key(data)
        if len(_PARSED_KEYS) >= 64:
            _PARSED_KEYS.clear()
        _PARSED_KEYS[data] = key
    return key


dkim.parse_pem_private_key = _parsed_private_key  # type: ignore[attr-defined]


def _header_names(message: bytes) -> list[str]:
    names = []
    for line in message.split(b"\n"):
        if line in (b"", b"\r"):
            break
        if line[:1] in (b" ", b"\t"):
            continue
        match = _FIELD.match(line)
        if match is None:
            break
        names.append(match.group(1).decode("ascii").lower())
    return names


def headers_to_sign(message: bytes) -> list[bytes]:
    present = _header_names(message)
    out: list[bytes] = []
    for name in RECOMMENDED:
        count = present.count(name) + (1 if name in OVERSIGNED else 0)
        out.extend([name.encode()] * count)
    return out


def sign_with(message: bytes, keys: list[DKIMKey]) -> bytes:
    """The DKIM-Signature fields for `message` (LF line ends), one per key."""
    include = headers_to_sign(message)
    out = b""
    for key in keys:
        signature = dkim.sign(message, key.selector.encode(), key.domain.encode(),
                              key.private, include_headers=include,
                              canonicalize=(b"relaxed", b"relaxed"),
                              signature_algorithm=key.algorithm, linesep=b"\n")
        out = signature + out if key.kind == "ed25519" else out + signature
    return out


def author_domain(message: bytes) -> str | None:
    """The domain of the single From address, else None (nothing to sign for)."""
    values = []
    for line in message.split(b"\n"):
        if line in (b"", b"\r"):
            break
        if line[:5].lower() == b"from:":
            values.append(line[5:].decode("utf-8", "replace"))
    if len(values) != 1:
        return None
    addresses = email.utils.getaddresses(values)
    domains = {addr.rpartition("@")[2].lower() for _, addr in addresses if "@" in addr}
    return domains.pop() if len(domains) == 1 else None


class Signer:
    """Signs messages of the local domains with their current keys."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        #: domain -> (mtime of its `active` file, its keys)
        self._keys: dict[str, tuple[float, list[DKIMKey]]] = {}

    def keys_for(self, domain: str) -> list[DKIMKey]:
        """The domain's signing keys, loaded again after `mailserver dkim activate`
        changed its `active` file (one stat per message)."""
        domain = domain.lower()
        try:
            mtime = (self.store.directory(domain) / "active").stat().st_mtime
        except OSError:
            mtime = 0.0
        cached = self._keys.get(domain)
        if cached is None or cached[0] != mtime:
            try:
                keys = self.store.signing_keys(domain)
            except (OSError, ValueError) as e:
                log.error("dkim: cannot load the keys of {domain}: {error}",
                          domain=domain, error=str(e))
                keys = []
            self._keys[domain] = cached = (mtime, keys)
        return cached[1]

    def sign_sync(self, message: bytes, domain: str | None = None) -> bytes:
        """Blocking: the DKIM-Signature fields to put on top of `message` (b"" when
        the From domain is not ours to sign)."""
        domain = domain or author_domain(message)
        if domain is None:
            return b""
        keys = self.keys_for(domain)
        if not keys:
            return b""
        try:
            return sign_with(message, keys)
        except Exception as e:  # a message dkimpy cannot parse: sent unsigned, logged
            log.warn("dkim: not signed for {domain}: {error}", domain=domain,
                     error=str(e)[:200])
            return b""

    def sign(self, message: bytes, domain: str | None = None) -> Deferred[bytes]:
        return deferToThread(self.sign_sync, message, domain)

    def seal_sync(self, message: bytes, domain: str, authserv_id: str) -> bytes:
        """Blocking: the ARC set (RFC 8617 5.1) for a message we forward, made from our
        Authentication-Results at its top; b"" when the domain has no RSA key (ARC
        signers use rsa-sha256, RFC 8617 4.1.3 / 7.1) or the seal cannot be made."""
        keys = [k for k in self.keys_for(domain) if k.kind == "rsa"]
        if not keys:
            return b""
        key = keys[0]
        try:
            headers = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(),
                                    key.private, authserv_id.encode(), linesep=b"\n")
        except Exception as e:  # an unparsable message: forwarded without a seal
            log.warn("arc: not sealed for {domain}: {error}", domain=domain,
                     error=str(e)[:200])
            return b""
        # dkimpy returns AAR, AMS, AS; RFC 8617 4.1 puts the newest set on top, in
        # any order: the seal first reads best.
        return b"".join(reversed(headers))

    def dsn_domain(self) -> str | None:
        """The local domain our bounces are signed for: the one our host name is (or
        is under), so the signature aligns with MAILER-DAEMON@hostname's domain
        (relaxed, RFC 7489 3.1.1); None if the host name is under none of them."""
        host = self.store.config.hostname.lower().rstrip(".")
        for domain in sorted(self.store.domains(), key=len, reverse=True):
            if host == domain or host.endswith("." + domain):
                return domain
        return None

    def sign_dsn(self, message: bytes) -> Deferred[bytes]:
        """A bounce or delay notice (queue/bounce.py), signed for dsn_domain()."""
        domain = self.dsn_domain()
        if domain is None:
            return succeed(b"")
        return self.sign(message, domain)
