"""Relaying under DANE (RFC 7672): our sending instance with dns.dnssec = true behind a
real validating resolver (unbound, zones signed here: tests/dnssec_resolver.py), and a
scripted SMTP peer on 127.0.0.8 whose self-signed certificate the TLSA records pin.

  good.dane.test  -> mx1: TLSA 3 1 1 of the peer's key: delivered
  bad.dane.test   -> mx2: TLSA 3 1 1 of another key: nothing sent, deferred
  bogus.dane.test -> mx3: A record fine, but its TLSA records sit in a zone whose
                     signatures do not validate (SERVFAIL): deferred, never plaintext
  pkix.dane.test  -> mx4: only PKIX-EE(1) records (not for SMTP): TLS is required but
                     not authenticated (RFC 7672 2.2), delivered
  strip.dane.test -> mx5 on 127.0.0.9, which offers no STARTTLS, same records: deferred
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))
sys.path.insert(0, str(Path(__file__).parents[1]))

from dnssec_resolver import ValidatingResolver  # noqa: E402
from ports import free_port_on  # noqa: E402
from relay_support import inject, message, wait_for  # noqa: E402
from server_harness import RunningServer, admin, make_server  # noqa: E402
from tls_support import SMTPPeer, make_cert, server_context  # noqa: E402

PEER, PLAIN = "127.0.0.8", "127.0.0.9"


@dataclass
class World:
    tx: RunningServer
    peer: SMTPPeer
    port: int
    plain: SMTPPeer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dane")
    port = free_port_on([PEER, PLAIN])
    cert = make_cert(["mx1.dane.test"])
    other = make_cert(["mx2.dane.test"])
    peer = SMTPPeer(PEER, port, server_context(cert, root / "peer", "peer"))
    plain = SMTPPeer(PLAIN, port, None)
    signed = [
        "good IN MX 10 mx1", "mx1 IN A " + PEER, f"_{port}._tcp.mx1 IN TLSA 3 1 1 "
        + cert.spki_sha256(),
        "bad IN MX 10 mx2", "mx2 IN A " + PEER, f"_{port}._tcp.mx2 IN TLSA 3 1 1 "
        + other.spki_sha256(),
        "bogus IN MX 10 mx3", "mx3 IN A " + PEER,
        "pkix IN MX 10 mx4", "mx4 IN A " + PEER, f"_{port}._tcp.mx4 IN TLSA 1 1 1 "
        + cert.spki_sha256(),
        "strip IN MX 10 mx5", "mx5 IN A " + PLAIN, f"_{port}._tcp.mx5 IN TLSA 1 1 1 "
        + cert.spki_sha256(),
    ]
    bogus = {f"_{port}._tcp.mx3.dane.test": ["@ IN TLSA 3 1 1 " + cert.spki_sha256()]}
    zones = ValidatingResolver(root / "unbound", {"dane.test": signed}, bogus=bogus)
    zones.start()
    tx = make_server(root / "tx", hostname="mx.example.org",
                     domains={"local": ["example.org"]},
                     listen={"smtp": "tcp:0:interface=127.0.0.2"},
                     dns={"nameservers": [zones.nameserver], "dnssec": True},
                     relay={"port": port, "source_address": "127.0.0.2",
                            "retry_initial": 1, "retry_max": 2, "connect_timeout": 5,
                            "command_timeout": 10, "dns_timeout": 3})
    try:
        yield World(tx, peer, port, plain)
    finally:
        tx.stop()
        peer.stop()
        plain.stop()
        zones.stop()


def full_log(world: World) -> str:
    return world.tx.log_path.read_text(errors="replace")


def deferred_with(world: World, queue_id: str, text: str) -> str:
    def check() -> str | None:
        out = admin(world.tx.config_path, "queue", "show", queue_id).stdout
        return out if text in out and "state:      pending" in out else None
    result: str = wait_for(check, what=f"deferral {text!r}", server=world.tx)
    return result


def rcpts(world: World, address: str) -> list[bytes]:
    return [line for s in world.peer.sessions for line in s.lines
            if line.upper().startswith(b"RCPT") and address.encode() in line]


def test_dane_ee_match_delivers(world: World) -> None:
    inject(world.tx, "alice@example.org", ["bob@good.dane.test"],
           message("dane good", to="bob@good.dane.test"))
    wait_for(lambda: any(b"Subject: dane good" in m for m in world.peer.messages),
             what="delivery", server=world.tx)
    assert f"mx1.dane.test[{PEER}]:{world.port}: TLS dane (policy dane)" in full_log(world)
    assert all(s.tls for s in world.peer.sessions if rcpts(world, "bob@good.dane.test"))


def test_dane_mismatch_defers_and_sends_nothing(world: World) -> None:
    queue_id = inject(world.tx, "alice@example.org", ["bob@bad.dane.test"],
                      message("dane bad", to="bob@bad.dane.test"))
    out = deferred_with(world, queue_id,
                        "DANE: no TLSA record matches the server's certificates")
    assert "[4.7.5]" in out and "not sending (policy dane)" in out
    assert rcpts(world, "bob@bad.dane.test") == []


def test_bogus_tlsa_defers_without_connecting_in_clear(world: World) -> None:
    queue_id = inject(world.tx, "alice@example.org", ["bob@bogus.dane.test"],
                      message("dane bogus", to="bob@bogus.dane.test"))
    out = deferred_with(world, queue_id,
                        f"DANE: TLSA lookup of _{world.port}._tcp.mx3.dane.test. failed")
    assert "[4.7.5]" in out and "without its TLSA records (RFC 7672 2.1.1)" in out
    assert rcpts(world, "bob@bogus.dane.test") == []


def test_unusable_tlsa_records_still_require_tls(world: World) -> None:
    inject(world.tx, "alice@example.org", ["bob@pkix.dane.test"],
           message("dane pkix", to="bob@pkix.dane.test"))
    wait_for(lambda: any(b"Subject: dane pkix" in m for m in world.peer.messages),
             what="delivery over unauthenticated TLS", server=world.tx)
    assert f"mx4.dane.test[{PEER}]:{world.port}: TLS opportunistic (policy " \
        "dane-unauthenticated)" in full_log(world)
    queue_id = inject(world.tx, "alice@example.org", ["bob@strip.dane.test"],
                      message("dane strip", to="bob@strip.dane.test"))
    out = deferred_with(world, queue_id, "the server did not offer STARTTLS")
    assert "[4.7.5]" in out and "(policy dane-unauthenticated)" in out
    assert not [line for s in world.plain.sessions for line in s.lines
                if line.upper().startswith(b"MAIL")]
