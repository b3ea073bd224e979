"""Our bounces are DKIM-signed for the local domain our host name is under, and the
queue looks names up through [dns] (no relay.nameservers configured)."""

from __future__ import annotations

import smtplib
import ssl
import time
from pathlib import Path

import pytest
from dns_server import DNSServer
from sa_helpers import zone_from_records
from server_harness import PASSWORD, admin, make_server

from mailserver.config import Config, DNSConfig
from mailserver.core.dns import SharedResolver
from mailserver.senderauth.checker import InboundChecker

pytestmark = pytest.mark.timeout(120)


def test_bounce_is_signed_and_verifies(tmp_path: Path) -> None:
    settings = {"hostname": "mx.example.org",
                "listen": {"smtp": "tcp:0:interface=127.0.0.1",
                           "submission": "tcp:0:interface=127.0.0.1"},
                "dkim": {"sign": True}}
    draft = make_server(tmp_path, start=False, **settings,
                        dns={"nameservers": ["127.0.0.1:9"], "timeout": 2})
    zone = zone_from_records(admin(draft.config_path, "dns-records", "example.org").stdout)
    with DNSServer(zone) as dns:  # nx.test is not in it: NXDOMAIN, a permanent failure
        server = make_server(tmp_path, start=False, **settings,
                             dns={"nameservers": [dns.nameserver], "timeout": 10})
        server.add_user("alice@example.org", PASSWORD)
        server.start()
        try:
            with smtplib.SMTP(*server.address("submission"), timeout=60) as client:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                client.starttls(context=context)
                client.login("alice@example.org", PASSWORD)
                client.sendmail("alice@example.org", ["bob@nx.test"],
                                b"From: alice@example.org\r\nSubject: x\r\n\r\nHi.\r\n")
            deadline = time.monotonic() + 30
            while not server.messages("alice@example.org") and time.monotonic() < deadline:
                time.sleep(0.2)
            dsn = server.messages("alice@example.org")[0]
        finally:
            server.stop()
        assert b"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>" in dsn
        assert b"Host or domain name not found: nx.test" in dsn
        head = dsn.split(b"\n\n", 1)[0]  # the DSN's own header (the report quotes ours)
        assert head.count(b"DKIM-Signature: v=1;") == 2 and b"d=example.org" in head
        config = Config(hostname="mx.test", dns=DNSConfig(nameservers=(dns.nameserver,)))
        check = InboundChecker(config, SharedResolver.from_config(config))
        early = check.envelope_sync("127.0.0.1", "mx.example.org", "")
        assert dsn.startswith(b"Return-Path: <>\n")
        message = dsn.split(b"\n", 1)[1]  # as it would leave us
        header = check.message_sync(message, early).header.decode()
        assert header.count("dkim=pass header.d=example.org") == 2, header
        assert "dmarc=pass" in header and "header.from=mx.example.org" in header
