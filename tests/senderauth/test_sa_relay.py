"""The signature survives transport: alice submits to our first instance, its queue
relays to a second instance (example.net), whose checks find dkim=pass twice, SPF
and DMARC pass, using the records `mailserver dns-records` printed; and relayed to
Postfix, the copy Postfix delivers still verifies (ours, and Perl's Mail::DKIM)."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import sys
import tempfile
import time
from pathlib import Path

import pytest
from judges import mail_dkim_verify
from sa_helpers import checker, zone_from_records
from server_harness import RunningServer, admin

sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))
sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

from dns_server import DNSServer  # noqa: E402
from ports import free_port as _free_port  # noqa: E402
from relay_support import PASSWORD, SENDER_IP, receiver, sender, zone  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_signed_submission_verifies_at_the_next_hop(tmp_path: Path) -> None:
    listen = {"smtp": f"tcp:0:interface={SENDER_IP}",
              "submission": f"tcp:0:interface={SENDER_IP}"}
    with DNSServer(zone()) as placeholder:
        draft = sender(tmp_path / "tx", placeholder, 25, users=(), start=False,
                       listen=listen, dkim={"sign": True})
        printed = admin(draft.config_path, "dns-records", "example.org").stdout
    records = zone_from_records(printed)
    records["example.org"]["TXT"] = [[f"v=spf1 ip4:{SENDER_IP} -all"]]
    records["2.0.0.127.in-addr.arpa"] = {"PTR": ["mx.example.org"]}
    with DNSServer(zone(**records)) as dns:
        rx = receiver(tmp_path / "rx", checks={"trusted_networks": []},
                      dns={"nameservers": [dns.nameserver], "timeout": 10})
        tx = sender(tmp_path / "tx", dns, rx.ports["smtp"], listen=listen,
                    dkim={"sign": True})
        try:
            with smtplib.SMTP(SENDER_IP, tx.ports["submission"], timeout=60) as client:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                client.starttls(context=context)
                client.login("alice@example.org", PASSWORD)
                client.sendmail("alice@example.org", ["bob@example.net"],
                                b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
                                b"Subject: across\r\n\r\nSigned here, checked there.\r\n")
            deadline = time.monotonic() + 30
            while not rx.messages("bob@example.net") and time.monotonic() < deadline:
                time.sleep(0.2)
            got = rx.messages("bob@example.net")
        finally:
            tx.stop()
            rx.stop()
    assert len(got) == 1, "one copy in bob's inbox"
    header = got[0].split(b"\n\n", 1)[0].decode()
    assert "Authentication-Results: mx.example.net;" in header
    assert header.count("dkim=pass header.d=example.org") == 2, header
    assert "spf=pass" in header and "smtp.mailfrom=alice@example.org" in header
    assert "dmarc=pass (p=quarantine) header.from=example.org" in header
    assert "iprev=pass (mx.example.org) policy.iprev=127.0.0.2" in header


def _submit(tx: RunningServer, to: str, body: bytes) -> None:
    with smtplib.SMTP(SENDER_IP, tx.ports["submission"], timeout=60) as client:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        client.starttls(context=context)
        client.login("alice@example.org", PASSWORD)
        client.sendmail("alice@example.org", [to],
                        b"From: Alice <alice@example.org>\r\nTo: " + to.encode() +
                        b"\r\nSubject: to postfix\r\n\r\n" + body)


def test_signature_survives_postfix(tmp_path: Path) -> None:
    from postfix_instance import PostfixInstance

    listen = {"smtp": f"tcp:0:interface={SENDER_IP}",
              "submission": f"tcp:0:interface={SENDER_IP}"}
    with DNSServer(zone()) as placeholder:
        draft = sender(tmp_path / "tx", placeholder, 25, users=(), start=False,
                       listen=listen, dkim={"sign": True})
        printed = admin(draft.config_path, "dns-records", "example.org").stdout
    records = zone_from_records(printed)
    records.update({"bench.test": {"MX": [[10, "mx.bench.test"]]},
                    "mx.bench.test": {"A": ["127.0.0.1"]}})
    # Dot-stuffing, a long line and trailing blank lines: what transport may touch.
    body = b".leading dot\r\n" + b"x" * 1500 + b"\r\n\r\nend\r\n\r\n\r\n"
    pf_root = Path(tempfile.mkdtemp(prefix="pf-dkim-", dir="/tmp"))
    try:
        with DNSServer(zone(**records)) as dns, \
                PostfixInstance(pf_root, _free_port()) as postfix:
            tx = sender(tmp_path / "tx", dns, postfix.port, listen=listen,
                        dkim={"sign": True})
            try:
                _submit(tx, "user@bench.test", body)
                deadline = time.monotonic() + 30
                while not list(postfix.maildir_new.iterdir()) and \
                        time.monotonic() < deadline:
                    time.sleep(0.2)
                [path] = list(postfix.maildir_new.iterdir())
                delivered = path.read_bytes()
            finally:
                tx.stop()
            results = mail_dkim_verify(dns.port, path)
            check = checker(dns.nameserver)
            early = check.envelope_sync(SENDER_IP, "mx.example.org", "alice@example.org")
            header = check.message_sync(delivered, early).header.decode()
    finally:
        shutil.rmtree(pf_root, ignore_errors=True)
    assert header.count("dkim=pass header.d=example.org") == 2, header
    assert [r[2:] for r in results if r[2] == "rsa-sha256"] == [["rsa-sha256", "pass"]]


