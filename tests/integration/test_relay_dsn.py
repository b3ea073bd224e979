"""DSN (RFC 3461) end to end between two real instances: example.org (mx.example.org on
127.0.0.2, submission with STARTTLS) and example.net (mx.example.net on 127.0.0.3), each
relaying to the other through a twisted.names DNS server on loopback.

smtplib sets the DSN parameters (RET, ENVID, NOTIFY, ORCPT) on submission; example.org
passes them on to example.net, which offers DSN, delivers, and sends the "delivered"
report back; example.org sends the failure reports itself. Every report is parsed with
the email package and read field by field (RFC 3464 2.2, 2.3). swaks shows what EHLO
offers before and after STARTTLS (DSN always, REQUIRETLS only under TLS).
"""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))

from ports import free_port  # noqa: E402
from relay_support import (  # noqa: E402
    FAST_RELAY,
    PASSWORD,
    RECEIVER_IP,
    SENDER_IP,
    DNSServer,
    parse,
    queue_entries,
    receiver,
    sender,
    wait_for,
    zone,
)
from server_harness import RunningServer  # noqa: E402

MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: dsn e2e\r\n"
           b"Message-ID: <dsn-e2e@example.org>\r\n\r\nthe body text\r\n")



def listening(server: RunningServer, service: str) -> tuple[str, int]:
    host, port = json.loads((server.data_dir / "run" / "listeners.json").read_text())[service]
    return host, port


def no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer,
                                                                    RunningServer]]:
    root = tmp_path_factory.mktemp("dsn")
    with DNSServer(zone()) as dns:
        tx_port = free_port(SENDER_IP)  # example.net's reports come back to it
        rx = receiver(root / "rx", relay={"nameservers": [dns.nameserver], "port": tx_port,
                                          "source_address": RECEIVER_IP, **FAST_RELAY})
        tx = sender(root / "tx", dns, rx.ports["smtp"],
                    users=("alice@example.org", "carol@example.org"),
                    listen={"smtp": f"tcp:{tx_port}:interface={SENDER_IP}",
                            "submission": f"tcp:0:interface={SENDER_IP}"})
        try:
            yield tx, rx
        finally:
            tx.stop()
            rx.stop()


def submit(tx: RunningServer, mail_options: list[str],
           rcpts: list[tuple[str, list[str]]], data: bytes = MESSAGE) -> None:
    """One transaction on 587 after STARTTLS and AUTH, per-recipient RCPT options."""
    host, port = listening(tx, "submission")
    with smtplib.SMTP(host, port, timeout=60) as smtp:
        smtp.starttls(context=no_verify())
        smtp.login("alice@example.org", PASSWORD)
        assert smtp.has_extn("dsn")
        assert smtp.mail("alice@example.org", mail_options) == (250, b"2.1.0 Ok")
        for address, options in rcpts:
            assert smtp.rcpt(address, options) == (250, b"2.1.5 Ok")
        code, _ = smtp.data(data)
        assert code == 250


def reports(tx: RunningServer, subject: str) -> list[tuple[Message, list[Message], Message]]:
    """Alice's reports with `subject`: (report, [per-message, per-recipient...], part 3)."""
    found = []
    for raw in tx.messages("alice@example.org"):
        msg = parse(raw)
        if msg["Subject"] != subject:
            continue
        assert msg["Return-Path"] == "<>"  # RFC 3464 2.1 / RFC 5321 6.1
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "delivery-status"
        text, status, third = msg.get_payload()  # type: ignore[misc]
        assert text.get_content_type() == "text/plain"
        assert status.get_content_type() == "message/delivery-status"
        found.append((msg, list(status.get_payload()), third))
    return found


def test_smtplib_dsn_parameters_delivered_report_from_the_peer(
        pair: tuple[RunningServer, RunningServer]) -> None:
    tx, rx = pair
    submit(tx, ["RET=HDRS", "ENVID=QQ+2B314159"],
           [("bob@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bdsn@example.net"])])
    [copy] = wait_for(lambda: rx.messages("bob@example.net"), what="bob's copy", server=tx)
    assert parse(copy)["Subject"] == "dsn e2e"
    # example.net offered DSN: example.org passed NOTIFY, ORCPT, RET and ENVID on, and
    # the report comes from example.net (RFC 3461 5.2.2: not "relayed" by us).
    [(msg, (per_message, per_rcpt), headers)] = wait_for(
        lambda: reports(tx, "Successful Mail Delivery Report"), what="success DSN",
        server=rx)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.net>"
    assert msg["To"] == "alice@example.org"
    assert per_message["Original-Envelope-Id"] == "QQ+314159"  # RFC 3461 6.3: decoded
    assert per_message["Reporting-MTA"] == "dns; mx.example.net"
    assert per_rcpt["Original-Recipient"] == "rfc822; Bob+dsn@example.net"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_rcpt["Action"] == "delivered"
    assert per_rcpt["Status"] == "2.0.0"
    assert headers.get_content_type() == "text/rfc822-headers"  # RET=HDRS, and 4.3
    assert "Subject: dsn e2e" in headers.get_content()
    assert "the body text" not in headers.get_content()
    assert "success notification" in rx.log()


def test_failures_honour_notify_and_ret_full(
        pair: tuple[RunningServer, RunningServer]) -> None:
    tx, rx = pair
    data = MESSAGE.replace(b"dsn e2e", b"dsn failures")
    submit(tx, ["RET=FULL", "ENVID=fail-1"],
           [("nobody@example.net", ["NOTIFY=NEVER"]),
            ("ghost@example.net", ["NOTIFY=FAILURE", "ORCPT=rfc822;ghost@example.net"]),
            ("bob@example.net", ["NOTIFY=DELAY"])],
           data)
    wait_for(lambda: [m for m in rx.messages("bob@example.net")
                      if parse(m)["Subject"] == "dsn failures"], what="bob's copy", server=tx)
    [(msg, (per_message, per_rcpt), returned)] = wait_for(
        lambda: [r for r in reports(tx, "Undelivered Mail Returned to Sender")
                 if r[1][0]["Original-Envelope-Id"] == "fail-1"], what="failure DSN",
        server=tx)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_rcpt["Original-Recipient"] == "rfc822; ghost@example.net"
    assert per_rcpt["Final-Recipient"] == "rfc822; ghost@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert "Last-Attempt-Date" in per_rcpt
    # RET=FULL: the whole message comes back (RFC 3461 4.3).
    assert returned.get_content_type() == "message/rfc822"
    [original] = returned.get_payload()  # type: ignore[misc]
    assert original["Subject"] == "dsn failures"
    assert original.get_payload().strip() == "the body text"
    # NOTIFY=NEVER: nobody@ is in no report at all; NOTIFY=DELAY: no success report.
    wait_for(lambda: not queue_entries(tx), what="queue empty", server=tx)
    everything = b"".join(tx.messages("alice@example.org"))
    assert b"nobody@example.net" not in everything
    assert "no non-delivery notification (NOTIFY=NEVER)" in tx.log()


def test_local_delivery_on_submission_reports_delivered(
        pair: tuple[RunningServer, RunningServer]) -> None:
    tx, _ = pair
    submit(tx, ["ENVID=local-1"],
           [("carol@example.org", ["NOTIFY=SUCCESS"])],
           MESSAGE.replace(b"dsn e2e", b"dsn local"))
    [copy] = wait_for(lambda: tx.messages("carol@example.org"), what="carol's copy", server=tx)
    assert parse(copy)["Subject"] == "dsn local"
    [(msg, (per_message, per_rcpt), headers)] = wait_for(
        lambda: [r for r in reports(tx, "Successful Mail Delivery Report")
                 if r[1][0]["Original-Envelope-Id"] == "local-1"], what="local success DSN",
        server=tx)
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_rcpt["Final-Recipient"] == "rfc822; carol@example.org"
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("delivered", "2.0.0")
    assert "Original-Recipient" not in per_rcpt
    assert "Remote-MTA" not in per_rcpt
    assert "Subject: dsn local" in headers.get_content()


def test_smtplib_hostile_parameters_on_port_25(
        pair: tuple[RunningServer, RunningServer]) -> None:
    tx, _ = pair
    with smtplib.SMTP(SENDER_IP, listening(tx, "smtp")[1], timeout=60) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("dsn") and not smtp.has_extn("requiretls")
        assert smtp.mail("x@remote.test", ["REQUIRETLS"]) == (
            555, b"5.5.4 Unsupported parameter: REQUIRETLS (needs TLS)")
        assert smtp.mail("x@remote.test", ["RET=HDRS", "RET=FULL"]) == (
            501, b"5.5.4 Duplicate parameter: RET")
        assert smtp.mail("x@remote.test", ["ENVID=" + "x" * 101]) == (
            501, b"5.5.4 Syntax: ENVID is longer than 100 characters (RFC 3461)")
        assert smtp.mail("x@remote.test", ["RET=HDRS"]) == (250, b"2.1.0 Ok")
        assert smtp.rcpt("carol@example.org", ["NOTIFY=NEVER,FAILURE"])[0] == 501
        assert smtp.rcpt("carol@example.org", ["ORCPT=rfc822;caf+E9@x"]) == (
            501, b"5.5.4 Syntax: ORCPT rfc822 address holds non-ASCII or spaces (RFC 3461)")
        assert smtp.rcpt("carol@example.org", ["NOTIFY=NEVER", "ORCPT=rfc822;c+40x"]) == (
            250, b"2.1.5 Ok")
        smtp.starttls(context=no_verify())
        smtp.ehlo("client.test")
        assert smtp.has_extn("requiretls")
        assert smtp.mail("x@remote.test", ["REQUIRETLS=YES"]) == (
            501, b"5.5.4 Syntax: REQUIRETLS takes no value")
        assert smtp.mail("x@remote.test", ["REQUIRETLS"]) == (250, b"2.1.0 Ok")


def test_swaks_sees_dsn_and_requiretls_only_after_starttls(
        pair: tuple[RunningServer, RunningServer]) -> None:
    tx, _ = pair
    host, port = listening(tx, "submission")
    result = subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--tls", "--quit-after", "helo"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    plain, _, tls = result.stdout.partition("STARTTLS\n")
    assert "<-  250-DSN" in plain and "REQUIRETLS" not in plain
    assert "<~  250-DSN" in tls and "<~  250-REQUIRETLS" in tls
