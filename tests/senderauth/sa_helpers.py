"""Test domains for the sender-authentication checks, served by tests/dns_server.py."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).parent.parent))

from mailserver.config import Config, DomainsConfig  # noqa: E402
from mailserver.core.dns import SharedResolver  # noqa: E402
from mailserver.senderauth.checker import InboundChecker  # noqa: E402
from mailserver.senderauth.keys import DKIMKey, KeyStore, key_from_pem  # noqa: E402

CLIENT = "127.0.0.9"


def rsa_key(domain: str, selector: str, bits: int = 2048) -> DKIMKey:
    key = rsa.generate_private_key(65537, bits)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return key_from_pem(domain, selector, pem)


def raw_rsa_record(bits: int) -> str:
    """A DKIM record with an RSA public key of any size: a random odd modulus of
    `bits` bits (a key record is only ever parsed and used to verify, so it needs no
    primes; generating a real 16384-bit key takes minutes)."""
    import secrets
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    key = rsa.RSAPublicNumbers(65537, n).public_key()
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()


def make_store(tmp: Path, domains: tuple[str, ...]) -> KeyStore:
    config = Config(hostname="mx.test", data_dir=tmp, domains=DomainsConfig(local=domains))
    store = KeyStore(config)
    store.ensure()
    return store


def zone_for(store: KeyStore) -> dict[str, dict[str, list[str]]]:
    zone: dict[str, dict[str, list[str]]] = {}
    for domain in store.domains():
        for key in store.published_keys(domain):
            zone[f"{key.selector}._domainkey.{domain}"] = {"TXT": [key.record]}
    return zone


def checker(nameserver: str, budget: int = 5, **checks: object) -> InboundChecker:
    from dataclasses import replace

    from mailserver.config import ChecksConfig, DNSConfig
    config = Config(hostname="mx.test", dns=DNSConfig(nameservers=(nameserver,), timeout=2),
                    checks=replace(ChecksConfig(time_budget=budget), **checks))  # type: ignore[arg-type]
    return InboundChecker(config, SharedResolver.from_config(config))


def message(from_: str = "Alice <alice@good.test>", extra: str = "",
            body: str = "Hello.\n") -> bytes:
    return (f"From: {from_}\nTo: bob@mx.test\nSubject: hi\n"
            f"Date: Mon, 07 Dec 2026 06:00:00 +0000\nMessage-ID: <1@good.test>\n"
            f"{extra}\n{body}").encode()


def zone_from_records(text: str) -> dict[str, dict[str, list[Any]]]:
    """The zone-file lines `dns-records` printed, as tests/dns_server.py zone entries."""
    zone: dict[str, dict[str, list[Any]]] = {}
    joined = re.sub(r"\(\s*(.*?)\s*\)", lambda m: " ".join(m.group(1).split()), text,
                    flags=re.S)
    for line in joined.splitlines():
        if not line or line.startswith(";"):
            continue
        name, _ttl, _in, rtype, data = line.split(None, 4)
        entry = zone.setdefault(name.rstrip("."), {})
        if rtype == "MX":
            pref, host = data.split()
            entry.setdefault("MX", []).append([int(pref), host.rstrip(".")])
        elif rtype == "SRV":
            priority, weight, port, target = data.split()
            entry.setdefault("SRV", []).append(
                [int(priority), int(weight), int(port), target.rstrip(".") or "."])
        elif rtype == "CNAME":
            entry.setdefault("CNAME", []).append(data.rstrip("."))
        else:
            entry.setdefault("TXT", []).append(re.findall(r'"([^"]*)"', data))
    return zone
