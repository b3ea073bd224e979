"""Independent judges agree with us: mailauth and Mail::DKIM verify what we sign,
and we verify what they sign; our DMARC verdicts match mailauth's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import DNSServer
from judges import (
    dns_cache,
    mail_dkim_sign,
    mail_dkim_verify,
    mailauth_report,
    mailauth_sign,
)
from sa_helpers import CLIENT, checker, make_store, message, zone_for

from mailserver.senderauth.keys import KeyStore
from mailserver.senderauth.signing import Signer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("judges")
    store = make_store(tmp / "data", ("good.test",))
    zone: dict[str, Any] = zone_for(store)
    zone.update({
        "good.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
        "_dmarc.good.test": {"TXT": ["v=DMARC1; p=reject"]},
        "helo.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
        "evil.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
        "quar.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.quar.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    })
    with DNSServer(zone) as dns:
        yield {"tmp": tmp, "store": store, "zone": zone, "dns": dns,
               "cache": dns_cache(zone, tmp / "cache.json")}


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data.replace(b"\n", b"\r\n"))
    return path


def ours(world: dict[str, Any], data: bytes, sender: str = "alice@good.test") -> str:
    check = checker(world["dns"].nameserver)
    verdict = check.message_sync(data, check.envelope_sync(CLIENT, "helo.test", sender))
    return verdict.header.decode()


def test_mailauth_verifies_both_of_our_signatures(world: dict[str, Any]) -> None:
    msg = message()
    signed = Signer(world["store"]).sign_sync(msg) + msg
    report = mailauth_report(write(world["tmp"], "ours.eml", signed), world["cache"],
                             CLIENT, "alice@good.test", "helo.test")
    results = {r["algo"]: r["status"]["result"] for r in report["dkim"]["results"]}
    assert results == {"ed25519-sha256": "pass", "rsa-sha256": "pass"}
    assert report["dmarc"]["status"]["result"] == "pass"


def test_mail_dkim_verifies_our_rsa_signature(world: dict[str, Any]) -> None:
    msg = message(body="Line one.\n\n\nTrailing blank lines are canonicalised.\n\n")
    signed = Signer(world["store"]).sign_sync(msg) + msg
    results = mail_dkim_verify(world["dns"].port, write(world["tmp"], "perl.eml", signed))
    rsa = [r for r in results if r[2] == "rsa-sha256"]
    assert rsa == [["good.test", rsa[0][1], "rsa-sha256", "pass"]]


def _key_file(store: KeyStore, kind: str) -> tuple[Path, str]:
    directory = store.directory("good.test")
    selector = next(s for s in store.state("good.test", "active") if s.endswith(kind))
    return directory / f"{selector}.key", selector


def test_we_verify_what_mail_dkim_signs(world: dict[str, Any]) -> None:
    key, selector = _key_file(world["store"], "r")
    msg = message(body="Signed by Perl.\n")
    signature = mail_dkim_sign(key, "good.test", selector, write(world["tmp"], "p.eml", msg))
    assert signature.startswith(b"DKIM-Signature:")
    header = ours(world, signature + msg)
    assert "dkim=pass header.d=good.test" in header and "header.a=rsa-sha256" in header
    assert "dmarc=pass" in header


@pytest.mark.parametrize("kind", ["e", "r"])
def test_we_verify_what_mailauth_signs(world: dict[str, Any], kind: str) -> None:
    key, selector = _key_file(world["store"], kind)
    msg = message(body="Signed by mailauth.\n")
    algorithm = "ed25519-sha256" if kind == "e" else "rsa-sha256"
    signed = mailauth_sign(write(world["tmp"], f"m{kind}.eml", msg), key, "good.test",
                           selector, algorithm)
    header = ours(world, signed)
    assert f"dkim=pass header.d=good.test header.s={selector} header.a={algorithm}" in header
    assert "dmarc=pass" in header


@pytest.mark.parametrize("from_,sender,signed", [
    ("alice@good.test", "alice@good.test", True),    # pass: aligned DKIM and SPF
    ("alice@good.test", "x@evil.test", False),       # fail: nothing aligned
    ("alice@good.test", "x@evil.test", True),        # pass: DKIM alone
    ("a@quar.test", "a@quar.test", False),           # fail: SPF -all
])
def test_dmarc_verdicts_agree_with_mailauth(world: dict[str, Any], from_: str,
                                            sender: str, signed: bool) -> None:
    msg = message(from_)
    if signed:
        msg = Signer(world["store"]).sign_sync(message()) + message()
    report = mailauth_report(write(world["tmp"], "agree.eml", msg), world["cache"],
                             CLIENT, sender, "helo.test")
    theirs = report["dmarc"]["status"]["result"]
    assert f"dmarc={theirs} " in ours(world, msg, sender)
