"""Relaying under MTA-STS (RFC 8461), REQUIRETLS (RFC 8689) and TLS reporting (RFC 8460):
our sending instance (127.0.0.2) against our receiving instance (127.0.0.3, a
certificate from a test CA) and scripted men in the middle in threads (127.0.0.4-7),
policies served over HTTPS by a thread with the test CA's certificate, MX/TXT records
from the twisted.names server. The sender trusts the test CA only (relay.ca_file).

Each domain's MX points at one peer:
  enforce.test, nomatch.test, plain.test -> our receiver (valid certificate)
  strip.test      -> 127.0.0.4, no STARTTLS offered (stripped)
  selfsigned.test -> 127.0.0.5, a self-signed certificate for its name
  testing.test    -> 127.0.0.5 too, but the policy is mode: testing
  wrongname.test  -> 127.0.0.6, a test-CA certificate for another name
  requiretls.test -> 127.0.0.7, a valid certificate and REQUIRETLS offered
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))

from ports import free_port_on  # noqa: E402
from relay_support import DNSServer, inject, message, parse, wait_for  # noqa: E402
from server_harness import RunningServer, admin, make_server  # noqa: E402
from tls_support import (  # noqa: E402
    Cert,
    PolicyServer,
    SMTPPeer,
    make_cert,
    server_context,
)

from mailserver.queue.tlsrpt import ResultLog, SessionResult  # noqa: E402

RX, STRIP, SELF_SIGNED, WRONG_NAME, REQUIRE = (
    "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7")
MX = {"enforce.test": RX, "nomatch.test": RX, "plain.test": RX, "strip.test": STRIP,
      "selfsigned.test": SELF_SIGNED, "testing.test": SELF_SIGNED,
      "wrongname.test": WRONG_NAME, "requiretls.test": REQUIRE}


def policy(mode: str, *mx: str) -> str:
    patterns = "".join(f"mx: {m}\n" for m in mx)
    return f"version: STSv1\nmode: {mode}\n{patterns}max_age: 86400\n"


POLICIES = {d: policy("enforce", f"mx.{d}") for d in MX if d != "plain.test"}
POLICIES["testing.test"] = policy("testing", "mx.testing.test")
POLICIES["nomatch.test"] = policy("enforce", "mx1.nomatch.test")
YESTERDAY = time.time() - 86400


@dataclass
class World:
    tx: RunningServer
    rx: RunningServer
    peers: dict[str, SMTPPeer]
    policies: PolicyServer
    port: int
    relay: dict[str, object]
    root: Path


def _zone(https: str) -> dict[str, dict[str, object]]:
    zone: dict[str, dict[str, object]] = {}
    for domain, address in MX.items():
        zone[domain] = {"MX": [[10, f"mx.{domain}"]]}
        zone[f"mx.{domain}"] = {"A": [address]}
        if domain in POLICIES:
            zone[f"_mta-sts.{domain}"] = {"TXT": ["v=STSv1; id=20261207"]}
            zone[f"mta-sts.{domain}"] = {"A": [https]}
    zone["_smtp._tls.enforce.test"] = {"TXT": ["v=TLSRPTv1; rua=mailto:reports@enforce.test"]}
    zone["mx.example.org"] = {"A": ["127.0.0.2"]}
    zone["example.org"] = {"MX": [[10, "mx.example.org"]]}
    return zone


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("mtasts")
    ca = make_cert(["Test CA"], ca=True)
    ca_file, _ = ca.write(root / "ca", "ca")
    port = free_port_on([RX, STRIP, SELF_SIGNED, WRONG_NAME, REQUIRE])
    policies = PolicyServer(POLICIES, server_context(
        make_cert([f"mta-sts.{d}" for d in POLICIES], ca), root / "web", "web"))
    peers = {
        STRIP: SMTPPeer(STRIP, port, None),
        SELF_SIGNED: SMTPPeer(SELF_SIGNED, port, server_context(
            make_cert(["mx.selfsigned.test", "mx.testing.test"]), root / "p5", "p")),
        WRONG_NAME: SMTPPeer(WRONG_NAME, port, server_context(
            make_cert(["mx.other.test"], ca), root / "p6", "p")),
        REQUIRE: SMTPPeer(REQUIRE, port, server_context(
            make_cert(["mx.requiretls.test"], ca), root / "p7", "p"),
            ("PIPELINING", "8BITMIME", "REQUIRETLS")),
    }
    rx_cert: Cert = make_cert(["mx.enforce.test", "mx.nomatch.test", "mx.plain.test"], ca)
    crt, key = rx_cert.write(root / "rx-tls", "rx")
    dns = DNSServer(_zone("127.0.0.1")).start()
    rx = make_server(root / "rx", start=False, hostname="mx.enforce.test",
                     domains={"local": ["enforce.test", "nomatch.test", "plain.test"]},
                     listen={"smtp": f"tcp:{port}:interface={RX}"},
                     tls={"certificate": str(crt), "private_key": str(key)})
    for user in ("bob@enforce.test", "reports@enforce.test", "bob@plain.test",
                 "bob@nomatch.test"):
        rx.add_user(user, "x" * 20)
    rx.start()
    relay: dict[str, object] = {
        "nameservers": [dns.nameserver], "port": port, "source_address": "127.0.0.2",
        "retry_initial": 1, "retry_max": 2, "connect_timeout": 5, "command_timeout": 10,
        "dns_timeout": 3, "ca_file": str(ca_file), "https_port": policies.port}
    tx = make_server(root / "tx", start=False, hostname="mx.example.org",
                     domains={"local": ["example.org"]},
                     listen={"smtp": "tcp:0:interface=127.0.0.2"}, relay=relay,
                     tls_reporting={"enabled": True, "organization": "Example Org",
                                    "contact": "mailto:tls@example.org"})
    tx.add_user("alice@example.org", "x" * 20)
    # A day of outcomes already recorded: reported (and forgotten) once the queue runs.
    ResultLog(tx.data_dir / "tls-rpt").record(SessionResult(
        "enforce.test", "sts", "certificate-host-mismatch", "mx.enforce.test", "127.0.0.2",
        RX, ("version: STSv1", "mode: enforce"), ("mx.enforce.test",), YESTERDAY))
    ResultLog(tx.data_dir / "tls-rpt").record(SessionResult(
        "enforce.test", "sts", "success", "mx.enforce.test", "127.0.0.2", RX,
        ("version: STSv1", "mode: enforce"), ("mx.enforce.test",), YESTERDAY))
    tx.start()
    try:
        yield World(tx, rx, peers, policies, port, relay, root)
    finally:
        tx.stop()
        rx.stop()
        for peer in peers.values():
            peer.stop()
        policies.stop()
        dns.stop()


def full_log(world: World) -> str:
    return world.tx.log_path.read_text(errors="replace")


def show(world: World, queue_id: str) -> str:
    return admin(world.tx.config_path, "queue", "show", queue_id).stdout


def deferred_with(world: World, queue_id: str, text: str) -> str:
    """Waits until `queue show` has the deferral reason; returns the whole output."""
    def check() -> str | None:
        out = show(world, queue_id)
        return out if text in out and "state:      pending" in out else None
    result: str = wait_for(check, what=f"deferral {text!r}", server=world.tx)
    return result


def rcpt_lines(peer: SMTPPeer, address: str) -> list[bytes]:
    return [line for s in peer.sessions for line in s.lines
            if line.upper().startswith(b"RCPT") and address.encode() in line]


def test_enforce_delivers_over_verified_tls(world: World) -> None:
    inject(world.tx, "alice@example.org", ["bob@enforce.test"],
           message("sts good", to="bob@enforce.test"))
    [got] = wait_for(lambda: world.rx.messages("bob@enforce.test"), what="bob's copy",
                     server=world.tx)
    assert parse(got)["Subject"] == "sts good"
    assert "with ESMTPS" in parse(got)["Received"]
    log = full_log(world)
    assert f"mx.enforce.test[{RX}]:{world.port}: TLS mta-sts (policy mta-sts)" in log
    assert "enforce.test" in world.policies.fetched


@pytest.mark.parametrize(("domain", "peer", "why"), [
    ("strip.test", STRIP, "the server did not offer STARTTLS"),
    ("selfsigned.test", SELF_SIGNED, "MTA-STS: certificate not trusted"),
    ("wrongname.test", WRONG_NAME, "MTA-STS: certificate not valid for mx.wrongname.test"),
])
def test_man_in_the_middle_gets_nothing(world: World, domain: str, peer: str,
                                        why: str) -> None:
    """Stripped STARTTLS, a self-signed or a wrong-name certificate at an MX of a domain
    with an enforced policy: no MAIL FROM is ever sent, no plaintext retry; the
    recipient waits with the reason in `mailserver queue show`."""
    rcpt = f"bob@{domain}"
    first = len(world.peers[peer].sessions)  # the peer at .5 serves other tests too
    queue_id = inject(world.tx, "alice@example.org", [rcpt], message("mitm", to=rcpt))
    out = deferred_with(world, queue_id, why)
    assert "[4.7.5]" in out and "not sending (policy mta-sts)" in out
    wait_for(lambda: len([s for s in world.peers[peer].sessions[first:]
                          if any(b"EHLO" in line for line in s.lines)]) >= 2,
             what="a retry", server=world.tx)
    assert rcpt_lines(world.peers[peer], rcpt) == []
    assert world.peers[peer].messages == []
    # Each attempt went as far as STARTTLS (the handshake done where offered), never
    # past it: no MAIL, no plaintext retry, not even QUIT (the connection is aborted).
    sessions = [s for s in world.peers[peer].sessions[first:] if s.lines]
    assert {line.split(b" ")[0].upper() for s in sessions for line in s.lines} <= {
        b"EHLO", b"STARTTLS"}
    assert any(s.tls for s in sessions) is (domain != "strip.test")


def test_mx_not_in_the_policy_defers(world: World) -> None:
    queue_id = inject(world.tx, "alice@example.org", ["bob@nomatch.test"],
                      message("nomatch", to="bob@nomatch.test"))
    out = deferred_with(world, queue_id, "MTA-STS policy of nomatch.test (enforce) allows "
                                         "none of its MX hosts (mx.nomatch.test)")
    assert "[4.7.5]" in out
    assert world.rx.messages("bob@nomatch.test") == []


def test_testing_mode_delivers_and_records_the_failure(world: World) -> None:
    inject(world.tx, "alice@example.org", ["carol@testing.test"],
           message("testing mode", to="carol@testing.test"))
    peer = world.peers[SELF_SIGNED]
    wait_for(lambda: any(b"Subject: testing mode" in m for m in peer.messages),
             what="delivery in testing mode", server=world.tx)

    def recorded() -> list[dict[str, object]]:
        lines = [json.loads(line) for p in (world.tx.data_dir / "tls-rpt").glob("*.jsonl")
                 for line in p.read_text().splitlines()]
        return [r for r in lines if r["domain"] == "testing.test"]
    [result] = wait_for(recorded, what="the TLS-RPT record", server=world.tx)
    assert (result["policy_type"], result["result"], result["mx_host"]) == (
        "sts", "certificate-not-trusted", "mx.testing.test")
    assert result["mx_patterns"] == ["mx.testing.test"]


def test_tls_required_no_ignores_the_enforced_policy(world: World) -> None:
    """RFC 8689 5: "TLS-Required: No" delivers despite the self-signed certificate."""
    data = message("optional", to="dave@selfsigned.test").replace(
        b"\n\n", b"\nTLS-Required: No\n\n", 1)
    inject(world.tx, "alice@example.org", ["dave@selfsigned.test"], data)
    peer = world.peers[SELF_SIGNED]
    wait_for(lambda: any(b"Subject: optional" in m for m in peer.messages),
             what="delivery despite the policy", server=world.tx)
    assert "MTA-STS: certificate not trusted: " in full_log(world)
    assert "delivering anyway" in full_log(world)


def test_requiretls_goes_over_verified_tls_with_the_parameter(world: World) -> None:
    inject(world.tx, "alice@example.org", ["erin@requiretls.test"],
           message("requiretls", to="erin@requiretls.test"), requiretls=True)
    peer = world.peers[REQUIRE]
    wait_for(lambda: peer.messages, what="delivery", server=world.tx)
    [mail] = peer.mail_commands
    assert mail.endswith(b" REQUIRETLS")
    assert all(s.tls for s in peer.sessions if s.lines)


def test_requiretls_without_any_policy_bounces_5_7_30(world: World) -> None:
    """plain.test has neither MTA-STS nor DANE: a REQUIRETLS message cannot go (RFC
    8689 4.1), and the sender gets a DSN with 5.7.30 at once."""
    inject(world.tx, "alice@example.org", ["bob@plain.test"],
           message("must be private", to="bob@plain.test"), requiretls=True)
    [dsn_raw] = wait_for(lambda: world.tx.messages("alice@example.org"), what="the DSN",
                         server=world.tx)
    status = parse(dsn_raw).get_payload()[1].get_payload()[1]
    assert status["Final-Recipient"] == "rfc822; bob@plain.test"
    assert status["Action"] == "failed" and status["Status"] == "5.7.30"
    assert "REQUIRETLS: plain.test has neither DANE nor an MTA-STS policy" in \
        status["Diagnostic-Code"]
    assert world.rx.messages("bob@plain.test") == []


def test_yesterdays_tls_report_is_mailed_to_the_rua(world: World) -> None:
    """The recorded day goes as an RFC 8460 report to the mailto: of _smtp._tls."""
    [raw] = wait_for(lambda: world.rx.messages("reports@enforce.test"), what="the report",
                     server=world.tx)
    report_mail = parse(raw)
    assert report_mail["Subject"].startswith(
        "Report Domain: enforce.test Submitter: mx.example.org Report-ID: <")
    assert report_mail["TLS-Report-Domain"] == "enforce.test"
    assert report_mail.get_content_type() == "multipart/report"
    assert report_mail.get_param("report-type") == "tlsrpt"
    [attachment] = [p for p in report_mail.iter_attachments()
                    if p.get_content_type() == "application/tlsrpt+gzip"]
    report = json.loads(gzip.decompress(attachment.get_content()))
    assert report["organization-name"] == "Example Org"
    assert report["contact-info"] == "mailto:tls@example.org"
    [entry] = report["policies"]
    assert entry["policy"]["policy-type"] == "sts"
    assert entry["summary"] == {"total-successful-session-count": 1,
                                "total-failure-session-count": 1}
    assert entry["failure-details"][0]["result-type"] == "certificate-host-mismatch"
    # Reported days are forgotten: only today's records remain.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    wait_for(lambda: all(p.name.startswith(today)
                         for p in (world.tx.data_dir / "tls-rpt").glob("*.jsonl")),
             what="yesterday forgotten", server=world.tx)


def test_enforced_failure_bounces_at_queue_lifetime(world: World) -> None:
    """The deferrals end in a bounce that says why (RFC 8461 5: temporary failures, so
    the message waits for the queue lifetime, here 3 seconds)."""
    tx = make_server(world.root / "tx-short", hostname="mx.example.org",
                     domains={"local": ["example.org"]},
                     listen={"smtp": "tcp:0:interface=127.0.0.2"},
                     relay={**world.relay, "queue_lifetime": 3})
    try:
        tx.add_user("alice@example.org", "x" * 20)
        inject(tx, "alice@example.org", ["frank@wrongname.test"],
               message("expires", to="frank@wrongname.test"))
        [dsn_raw] = wait_for(lambda: tx.messages("alice@example.org"), what="the DSN",
                             server=tx)
    finally:
        tx.stop()
    status = parse(dsn_raw).get_payload()[1].get_payload()[1]
    assert status["Final-Recipient"] == "rfc822; frank@wrongname.test"
    assert status["Action"] == "failed" and status["Status"] == "4.4.7"
    diagnostic = " ".join(status["Diagnostic-Code"].split())
    assert "message expired after" in diagnostic
    assert "MTA-STS: certificate not valid for mx.wrongname.test; not sending" in diagnostic
    assert rcpt_lines(world.peers[WRONG_NAME], "frank@wrongname.test") == []


def test_queue_show_names_the_tls_of_each_recipients_session(world: World) -> None:
    """One entry, two domains: the delivered recipient shows how its session was
    protected; the other waits with the reason."""
    queue_id = inject(world.tx, "alice@example.org", ["bob@enforce.test", "gina@strip.test"],
                      message("two domains", to="bob@enforce.test"))
    out = deferred_with(world, queue_id, "the server did not offer STARTTLS")
    delivered = out.split("recipient: <bob@enforce.test>")[1].split("recipient:")[0]
    assert "state:      delivered" in delivered
    assert "tls:        mta-sts" in delivered
    assert f"remote:     mx.enforce.test[{RX}]:{world.port}" in delivered
