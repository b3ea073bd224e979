"""DKIM keys on disk: data_dir/dkim/DOMAIN/, made on first start, rotated by command.

Layout (one directory per local domain, 0700):

    SELECTOR.key   the private key, PEM, 0600: RSA (PKCS#1, 2048 bits) or Ed25519
                   (PKCS#8); the selector names its date and type, 20261207e / 20261207r
    active         the selectors that sign, one per line
    pending        selectors made by `mailserver dkim rotate`, not yet signing: they
                   start signing with `mailserver dkim activate`, which first checks
                   that their records are published
    retired        selectors replaced by a rotation: their records stay listed by
                   `dns-records` until `mailserver dkim forget` removes them

Key generation and file I/O block: callers are the admin commands and the startup
code of the server, which runs them in a thread.
"""

from __future__ import annotations

import base64
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailserver.config import Config

RSA_BITS = 2048


@dataclass(frozen=True)
class DKIMKey:
    domain: str
    selector: str
    #: "ed25519" or "rsa" (the k= of the record, RFC 6376 3.6.1, RFC 8463 4).
    kind: str
    #: What dkimpy's sign() takes: PEM for RSA, the base64 seed for Ed25519.
    private: bytes
    #: The p= value of the DNS record: base64 SubjectPublicKeyInfo for RSA, the raw
    #: 32-octet key for Ed25519 (RFC 8463 4.2).
    public_b64: str

    @property
    def algorithm(self) -> bytes:
        return b"ed25519-sha256" if self.kind == "ed25519" else b"rsa-sha256"

    @property
    def record(self) -> str:
        """The TXT record at SELECTOR._domainkey.DOMAIN."""
        return f"v=DKIM1; k={self.kind}; p={self.public_b64}"


def key_from_pem(domain: str, selector: str, pem: bytes) -> DKIMKey:
    """A DKIMKey from a PEM private key (ours or an external one); ValueError if it is
    neither RSA nor Ed25519."""
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw,
                                 serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        return DKIMKey(domain, selector, "ed25519", base64.b64encode(seed),
                       base64.b64encode(public).decode("ascii"))
    if isinstance(key, rsa.RSAPrivateKey):
        pkcs1 = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return DKIMKey(domain, selector, "rsa", pkcs1, base64.b64encode(spki).decode("ascii"))
    raise ValueError("not an RSA or Ed25519 private key")


class KeyStore:
    """The keys of every local domain under data_dir/dkim."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.data_dir / "dkim"
        self.external: dict[str, tuple[str, Path]] = {}
        for entry in config.dkim.external_keys:
            domain, _, rest = entry.partition(":")
            selector, _, path = rest.partition(":")
            self.external[domain.lower()] = (selector, Path(path))

    def domains(self) -> list[str]:
        """The local domains we sign for."""
        skip = {d.lower() for d in self.config.dkim.unsigned_domains}
        return [d for d in self.config.domains.local if d not in skip]

    def directory(self, domain: str) -> Path:
        return self.root / domain

    def ensure(self) -> list[str]:
        """Make keys for every domain that has none; the domains given new keys."""
        made = []
        for domain in self.domains():
            if domain in self.external or self._read_list(domain, "active"):
                continue
            selectors = self._generate(domain)
            self._write_list(domain, "active", selectors)
            made.append(domain)
        return made

    def rotate(self, domain: str) -> list[str]:
        """New keys as `pending`; the selectors made."""
        selectors = self._generate(domain)
        self._write_list(domain, "pending", selectors)
        return selectors

    def activate(self, domain: str) -> tuple[list[str], list[str]]:
        """pending -> active, old active -> retired; (now active, retired)."""
        pending = self._read_list(domain, "pending")
        if not pending:
            raise ValueError(f"{domain}: no pending keys (run `mailserver dkim rotate "
                             f"{domain}` first)")
        old = self._read_list(domain, "active")
        retired = list(dict.fromkeys(self._read_list(domain, "retired") + old))
        self._write_list(domain, "retired", retired)
        self._write_list(domain, "active", pending)
        self._write_list(domain, "pending", [])
        return pending, retired

    def forget(self, domain: str, selector: str) -> None:
        """Drop a retired selector: its key file and its listing."""
        retired = self._read_list(domain, "retired")
        if selector not in retired:
            raise ValueError(f"{domain}: {selector} is not a retired selector")
        self._write_list(domain, "retired", [s for s in retired if s != selector])
        (self.directory(domain) / f"{selector}.key").unlink(missing_ok=True)

    def signing_keys(self, domain: str) -> list[DKIMKey]:
        """The keys that sign mail of `domain` now ([] if it has none or opted out)."""
        domain = domain.lower()
        if domain not in self.domains():
            return []
        if domain in self.external:
            selector, path = self.external[domain]
            return [key_from_pem(domain, selector, path.read_bytes())]
        return [self.load(domain, s) for s in self._read_list(domain, "active")]

    def published_keys(self, domain: str) -> list[DKIMKey]:
        """Every key whose record should be in DNS: active, pending and retired."""
        domain = domain.lower()
        if domain in self.external:
            return self.signing_keys(domain)
        selectors = [s for name in ("active", "pending", "retired")
                     for s in self._read_list(domain, name)]
        return [self.load(domain, s) for s in dict.fromkeys(selectors)]

    def state(self, domain: str, name: str) -> list[str]:
        return self._read_list(domain, name)

    def load(self, domain: str, selector: str) -> DKIMKey:
        return key_from_pem(domain, selector,
                            (self.directory(domain) / f"{selector}.key").read_bytes())

    # ------------------------------------------------------------------ files

    def _generate(self, domain: str) -> list[str]:
        directory = self.directory(domain)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
        made = []
        for letter, key in (("e", ed25519.Ed25519PrivateKey.generate()),
                            ("r", rsa.generate_private_key(65537, RSA_BITS))):
            selector = f"{date}{letter}"
            n = 1
            while (directory / f"{selector}.key").exists():
                n += 1
                selector = f"{date}{letter}{n}"
            fmt = (serialization.PrivateFormat.PKCS8 if letter == "e"
                   else serialization.PrivateFormat.TraditionalOpenSSL)
            pem = key.private_bytes(serialization.Encoding.PEM, fmt,
                                    serialization.NoEncryption())
            _write_private(directory / f"{selector}.key", pem)
            made.append(selector)
        return made

    def _read_list(self, domain: str, name: str) -> list[str]:
        try:
            text = (self.directory(domain) / name).read_text("ascii")
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    def _write_list(self, domain: str, name: str, selectors: list[str]) -> None:
        path = self.directory(domain) / name
        temp = path.with_name(name + ".tmp")
        temp.write_text("".join(s + "\n" for s in selectors), "ascii")
        os.replace(temp, path)


def _write_private(path: Path, data: bytes) -> None:
    """Create the key file 0600 from the start (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
