"""The checks and the signer in the real server: submission signs, port 25 checks,
refuses, junks and marks; `mailserver dns-records` prints what DNS needs and --check
compares it with what the loopback DNS server answers."""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dns_server import DNSServer
from sa_helpers import zone_from_records
from server_harness import PASSWORD, USERS, RunningServer, admin, make_server

pytestmark = pytest.mark.timeout(180)

LISTEN = {"smtp": "tcp:0:interface=127.0.0.1", "submission": "tcp:0:interface=127.0.0.1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("sa")
    settings: dict[str, Any] = {"listen": LISTEN, "dkim": {"sign": True},
                                "checks": {"trusted_networks": [], "time_budget": 5,
                                           "no_reject_domains": ["example.net"]},
                                # Forwarded copies wait in the queue (nothing listens).
                                "relay": {"smarthost": "127.0.0.1:9"}}
    draft = make_server(root, start=False, **settings,
                        dns={"nameservers": ["127.0.0.1:9"], "timeout": 2})
    printed = admin(draft.config_path, "dns-records", "example.org").stdout
    zone = zone_from_records(printed)
    zone["example.org"]["TXT"] = [["v=spf1 ip4:127.0.0.1 -all"]]
    zone.update({
        "mx.test.example": {"A": ["127.0.0.1"]},
        "1.0.0.127.in-addr.arpa": {"PTR": ["mx.test.example"]},
        "soft.test": {"TXT": ["v=spf1 ~all"]},
        "quar.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.quar.test": {"TXT": ["v=DMARC1; p=quarantine"]},
        "rej.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.rej.test": {"TXT": ["v=DMARC1; p=reject"]},
    })
    with DNSServer(zone) as dns:
        server = make_server(root, start=False, **settings,
                             dns={"nameservers": [dns.nameserver], "timeout": 10})
        for user in USERS:
            server.add_user(user, PASSWORD)
        server.add_alias("fwd@example.org", "far@remote.test")
        server.start()
        yield {"server": server, "printed": printed, "dns": dns}
        server.stop()


def submit(server: RunningServer, message: bytes, to: str = "bob@example.org") -> None:
    with smtplib.SMTP(*server.address("submission"), timeout=60) as client:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        client.starttls(context=context)
        client.login("alice@example.org", PASSWORD)
        client.sendmail("alice@example.org", [to], message)


def mx(server: RunningServer, sender: str, message: bytes, to: str = "bob@example.org"
       ) -> tuple[int, bytes]:
    with smtplib.SMTP(*server.address("smtp"), timeout=30) as client:
        client.ehlo("mx.test.example")
        client.mail(sender)
        client.rcpt(to)
        return client.data(message)


MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: hi\r\n"
           b"Date: Mon, 07 Dec 2026 06:00:00 +0000\r\nMessage-ID: <x1@example.org>\r\n"
           b"\r\nBody.\r\n")


def test_submitted_mail_is_signed_and_verifies_on_port_25(world: dict[str, Any]) -> None:
    server: RunningServer = world["server"]
    before = len(server.messages("bob@example.org"))
    submit(server, MESSAGE)
    stored = server.messages("bob@example.org")[before]
    assert stored.count(b"DKIM-Signature: v=1; a=") == 2
    assert b"a=ed25519-sha256" in stored and b"a=rsa-sha256" in stored
    assert b"c=relaxed/relaxed" in stored and b"d=example.org" in stored
    # Oversigned: From, To, Subject, Date, Message-ID one more time than present.
    h = re.search(rb"h=([^;]+);", stored.replace(b"\n\t", b"").replace(b"\n ", b""))
    assert h is not None and h.group(1).replace(b" ", b"").split(b":").count(b"from") == 2
    # The signed copy, sent on to port 25 as another server would: dkim=pass twice.
    relayed = stored.split(b"\n", 1)[1].replace(b"\n", b"\r\n")  # without Return-Path
    code, _ = mx(server, "alice@example.org", relayed, to="carol@example.net")
    assert code == 250
    got = server.messages("carol@example.net")[-1]
    header = got.split(b"\n\n")[0].decode()
    assert "Authentication-Results: mx.test.example;" in header
    assert header.count("dkim=pass") == 2, header
    assert "dmarc=pass (p=quarantine) header.from=example.org" in header
    assert "spf=pass" in header and "iprev=pass (mx.test.example)" in header
    # Our Received names the forward-confirmed client, as Postfix does.
    assert got.startswith(b"Return-Path: <alice@example.org>\nReceived: from "
                          b"mx.test.example (mx.test.example [127.0.0.1])\n\tby ")


def test_forged_from_under_quarantine_lands_in_junk(world: dict[str, Any]) -> None:
    """example.org publishes the p=quarantine `dns-records` printed: an unsigned
    message claiming to be from it, from elsewhere, goes to bob's Junk folder."""
    server: RunningServer = world["server"]
    inbox = len(server.messages("bob@example.org"))
    code, _ = mx(server, "x@soft.test", MESSAGE)
    assert code == 250
    assert len(server.messages("bob@example.org")) == inbox
    junk = server.messages("bob@example.org", "Junk")
    assert junk and b"dmarc=fail (p=quarantine) header.from=example.org" in junk[-1]
    assert junk[-1].startswith(b"Return-Path: <x@soft.test>\n")


def test_ambiguous_from_refused_with_550_and_logged(world: dict[str, Any]) -> None:
    server: RunningServer = world["server"]
    message = MESSAGE.replace(b"To: bob", b"From: boss@evil.test\r\nTo: bob")
    code, text = mx(server, "x@soft.test", message)
    assert code == 550
    assert text.startswith(b"5.7.1 Message refused: ambiguous From (2 From header fields)")
    assert re.search(r"refused from 127\.0\.0\.1 sender <x@soft\.test>: 550 5\.7\.1",
                     server.log())


def test_forged_results_with_our_id_removed(world: dict[str, Any]) -> None:
    server: RunningServer = world["server"]
    forged = (b"Authentication-Results: mx.test.example; dkim=pass header.d=quar.test\r\n"
              + MESSAGE.replace(b"alice@example.org", b"a@quar.test"))
    code, _ = mx(server, "a@quar.test", forged)
    assert code == 250
    got = server.messages("bob@example.org", "Junk")[-1]
    assert got.count(b"Authentication-Results: mx.test.example;") == 1
    assert b"dkim=pass header.d=quar.test" not in got


def test_dns_records_check(world: dict[str, Any]) -> None:
    server: RunningServer = world["server"]
    printed: str = world["printed"]
    assert 'example.org.\t3600\tIN\tMX\t10 mx.test.example.' in printed
    assert '"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"' in printed
    rsa = re.search(r'r\._domainkey\.example\.org\.\t3600\tIN\tTXT\t\( (".*?") \)',
                    printed, re.S)
    assert rsa is not None
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', rsa.group(1)))
    result = admin(server.config_path, "dns-records", "--check", "example.org", check=False)
    # SPF differs on purpose (the test zone lists 127.0.0.1 instead of `mx`).
    assert result.returncode == 1
    assert re.search(r"^DIFFERENT\tTXT\texample\.org\tfound \"v=spf1 ip4:127.0.0.1 -all\"",
                     result.stdout, re.M), result.stdout
    assert re.search(r"^ok\tMX\texample\.org$", result.stdout, re.M)
    assert len(re.findall(r"^ok\tTXT\t\d{8}[er]\._domainkey\.example\.org$",
                          result.stdout, re.M)) == 2
    assert re.search(r"^ok\tTXT\t_dmarc\.example\.org$", result.stdout, re.M)
    assert re.search(r"^ok\tPTR\tmx\.test\.example$", result.stdout, re.M)
    missing = admin(server.config_path, "dns-records", "--check", "example.net",
                    check=False)
    assert missing.returncode == 1
    assert re.search(r"^MISSING\tTXT\t_dmarc\.example\.net\tmissing$", missing.stdout, re.M)
    assert "record(s) missing or different for example.net" in missing.stderr


def test_forwarded_copy_carries_our_verdict_and_signature(world: dict[str, Any]) -> None:
    server: RunningServer = world["server"]
    message = MESSAGE.replace(b"alice@example.org", b"someone@soft.test")
    code, _ = mx(server, "someone@soft.test", message, to="fwd@example.org")
    assert code == 250
    listed = _eventually(lambda: re.findall(
        r"^[0-9A-F]{8,}.*", admin(server.config_path, "queue", "list").stdout, re.M))
    queue_id = re.search(r"^([0-9A-F]{8,})", "\n".join(listed), re.M)
    assert queue_id is not None, listed
    shown = admin(server.config_path, "queue", "show", queue_id.group(1)).stdout
    queued = (server.data_dir / "queue" / "messages" / queue_id.group(1)).read_bytes()
    headers = queued.split(b"\n\n", 1)[0].decode()
    signatures = re.findall(r"DKIM-Signature: v=1; a=(\S+); c=relaxed/relaxed; "
                            r"d=example\.org;", headers)
    assert headers.index("DKIM-Signature") < headers.index("Authentication-Results")
    assert sorted(signatures) == ["ed25519-sha256", "rsa-sha256"]
    assert "Authentication-Results: mx.test.example;" in headers
    assert "<far@remote.test>" in shown


def _queued_sender(server: RunningServer, recipient: str) -> str:
    """The envelope sender queued for `recipient`. The 250 may come before the queue's
    disk thread has moved the entry from held/ to envelopes/ (the release follows the
    commit), so this waits for it a little."""
    import json
    deadline = time.monotonic() + 30
    while True:
        for path in (server.data_dir / "queue" / "envelopes").iterdir():
            try:
                entry = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                continue  # rewritten or removed meanwhile
            if any(r.get("address") == recipient for r in entry.get("recipients", [])):
                return str(entry["sender"])
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing queued for {recipient}")
        time.sleep(0.05)


def test_forwarded_copy_has_an_srs_sender_and_its_bounce_goes_back(
        world: dict[str, Any]) -> None:
    server: RunningServer = world["server"]
    message = MESSAGE.replace(b"alice@example.org", b"orig@soft.test")
    code, _ = mx(server, "orig@soft.test", message, to="fwd@example.org")
    assert code == 250
    srs = _eventually(lambda: [s for s in _all_queued_senders(server)
                               if s.endswith("=soft.test=orig@example.org")])
    assert len(srs) == 1 and re.fullmatch(
        r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=soft\.test=orig@example\.org", srs[0]), srs
    bounce = (b"From: MAILER-DAEMON@far.test\r\nTo: " + srs[0].encode() +
              b"\r\nSubject: Undelivered\r\n\r\nNo such user.\r\n")
    code, text = mx(server, "", bounce, to=srs[0])
    assert code == 250, text
    assert _queued_sender(server, "orig@soft.test") == ""  # back to the original sender
    forged = srs[0][:5] + ("A" if srs[0][5] != "A" else "B") + srs[0][6:]
    with smtplib.SMTP(*server.address("smtp"), timeout=30) as client:
        client.ehlo("mx.test.example")
        client.mail("")
        code, text = client.rcpt(forged)
    assert (code, text[:30]) == (550, b"5.7.1 Error: invalid SRS addre")


def _all_queued_senders(server: RunningServer) -> list[str]:
    import json
    senders = []
    for path in (server.data_dir / "queue" / "envelopes").iterdir():
        try:
            senders.append(json.loads(path.read_text())["sender"])
        except (FileNotFoundError, ValueError):
            continue  # rewritten or removed meanwhile
    return senders


def _eventually(probe: Callable[[], list[str]]) -> list[str]:
    """`probe()` once it finds something, within 10 s: the queue moves a committed
    entry into envelopes/ in a disk thread, possibly just after the 250."""
    deadline = time.monotonic() + 30
    while not (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_forwarded_copy_is_arc_sealed_and_the_seal_validates(world: dict[str, Any]) -> None:
    """The next hop (here our own checker, with the records dns-records printed)
    finds arc=pass: our seal over our Authentication-Results holds."""
    from sa_helpers import checker
    server: RunningServer = world["server"]
    message = MESSAGE.replace(b"alice@example.org", b"arc@soft.test")
    code, _ = mx(server, "arc@soft.test", message, to="fwd@example.org")
    assert code == 250
    copies = [p.read_bytes() for p in (server.data_dir / "queue" / "messages").iterdir()]
    [queued] = [c for c in copies if b"arc@soft.test" in c]
    head = queued.split(b"\n\n", 1)[0].decode()
    assert "ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.org;" in head
    assert "ARC-Message-Signature: i=1; a=rsa-sha256;" in head
    assert "ARC-Authentication-Results: i=1; mx.test.example;" in head
    received_end = queued.index(b"\n", queued.index(b"for <fwd@example.org>"))
    forwarded = queued[received_end + 1:]  # as the next hop gets it, after our Received
    check = checker(world["dns"].nameserver)
    early = check.envelope_sync("127.0.0.1", "mx.test.example", "x@soft.test")
    next_hop = check.message_sync(forwarded, early).header.decode()
    assert "arc=pass" in next_hop, next_hop
    assert next_hop.count("dkim=pass header.d=example.org") == 2


def test_dmarc_reject_is_550_except_for_a_no_reject_domain(world: dict[str, Any]) -> None:
    server: RunningServer = world["server"]
    forged = MESSAGE.replace(b"alice@example.org", b"ceo@rej.test")
    code, text = mx(server, "ceo@rej.test", forged)
    assert (code, text[:40]) == (550, b"5.7.1 Message refused: rej.test asks to ")
    # carol's domain is in checks.no_reject_domains: Junk instead.
    code, _ = mx(server, "ceo@rej.test", forged, to="carol@example.net")
    assert code == 250
    junk = server.messages("carol@example.net", "Junk")
    assert junk and b"dmarc=fail (p=reject) header.from=rej.test" in junk[-1]
