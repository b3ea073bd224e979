"""The signature survives transport: alice submits to our first instance, its queue
relays to a second instance (example.net), whose checks find dkim=pass twice, SPF
and DMARC pass, using the records `mailserver dns-records` printed."""

from __future__ import annotations

import smtplib
import ssl
import sys
import time
from pathlib import Path

import pytest
from sa_helpers import zone_from_records
from server_harness import admin

sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))

from dns_server import DNSServer  # noqa: E402
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
                      dns={"nameservers": [dns.nameserver], "timeout": 2})
        tx = sender(tmp_path / "tx", dns, rx.ports["smtp"], listen=listen,
                    dkim={"sign": True})
        try:
            with smtplib.SMTP(SENDER_IP, tx.ports["submission"], timeout=20) as client:
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
