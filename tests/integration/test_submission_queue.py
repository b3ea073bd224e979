"""Submission handing remote recipients to the real outbound queue (mailserver.queue):
one message, local and remote recipients, one 250 once both copies are durable.

Nothing ever leaves 127.0.0.1: the smarthost is a closed loopback port (a temporary
failure, so the entry stays queued and its files can be read), or a second real server
taking the remote domain (the message arrives there).
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import time
from collections.abc import Callable
from typing import Any

from ports import free_port as closed_port
from server_harness import PASSWORD, RunningServer
from wire import Wire

LISTEN = {"smtp": "tcp:0:interface=127.0.0.1", "submissions": "tcp:0:interface=127.0.0.1"}
MESSAGE = b"From: alice@example.org\r\nTo: friend@remote.test\r\nSubject: out\r\n\r\nHello.\r\n"


#: A smarthost that refuses connections: every remote recipient is deferred (RFC 5321
#: 4.5.4.1), never bounced, and its queue files stay for us to read.
NO_PEER = {"smarthost": f"[127.0.0.1]:{closed_port()}"}


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def queue_entries(server: RunningServer) -> list[tuple[dict[str, Any], bytes]]:
    """Every queued entry (released or held): its envelope JSON and its message."""
    root = server.data_dir / "queue"
    for _attempt in range(50):
        found = []
        try:
            for folder in ("envelopes", "held"):
                for path in sorted((root / folder).glob("*")):
                    found.append((json.loads(path.read_text()),
                                  (root / "messages" / path.name).read_bytes()))
        except FileNotFoundError:
            # Released (held/ -> envelopes/) or rewritten while we looked: look again.
            time.sleep(0.02)
            continue
        return found
    raise AssertionError("the queue kept changing under the test")


def wait_deferred(server: RunningServer) -> dict[str, Any]:
    """The single queue entry once its first attempt has been made: a refused
    connection is temporary (RFC 5321 4.5.4.1), so the recipient stays pending."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = queue_entries(server)
        if entries and entries[0][0]["recipients"][0]["attempts"] >= 1:
            return entries[0][0]
        time.sleep(0.1)
    raise AssertionError(f"no attempt made:\n{server.log()}")


def test_remote_recipient_queued_local_one_delivered(server_factory: Callable[...,
                                                                             RunningServer]) -> None:
    server = server_factory(listen=LISTEN, relay=NO_PEER)
    with smtplib.SMTP_SSL(*server.address("submissions"), context=tls_context()) as client:
        client.login("alice@example.org", PASSWORD)
        refused = client.sendmail("alice@example.org",
                                  ["bob@example.org", "friend@remote.test"], MESSAGE)
    assert refused == {}
    [local] = server.messages("bob@example.org")
    [(envelope, queued)] = queue_entries(server)
    assert envelope["sender"] == "alice@example.org"
    assert envelope["submitter"] == "alice@example.org"
    assert [r["address"] for r in envelope["recipients"]] == ["friend@remote.test"]
    # The same bytes; the relayed copy has no Return-Path (RFC 5321 4.4).
    assert local == b"Return-Path: <alice@example.org>\n" + queued
    assert queued.startswith(b"Received: from ")
    assert b"with ESMTPSA id" in queued.split(b"\n\n")[0]
    assert b"\nMessage-ID: <" in queued and b"\nDate: " in queued
    [recipient] = wait_deferred(server)["recipients"]
    assert recipient["state"] == "pending" and recipient["status"].startswith("4.")


def test_forwarding_alias_on_port_25_rewrites_the_sender_with_srs(
        server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(listen=LISTEN, relay=NO_PEER)
    server.add_alias("fwd@example.org", "bob@example.org,friend@remote.test")
    wire = Wire(server.address("smtp"))
    wire.greet()
    assert wire.command("MAIL FROM:<someone@elsewhere.test>") == "250 2.1.0 Ok"
    assert wire.command("RCPT TO:<fwd@example.org>") == "250 2.1.5 Ok"
    assert wire.command("DATA").startswith("354")
    assert wire.command(b"Subject: fwd\r\n\r\nx\r\n.").startswith("250 2.0.0 Ok: queued as ")
    wire.close()
    [(envelope, queued)] = queue_entries(server)
    # The relayed copy's sender is ours (SRS, senderauth/srs.py), the local copy's not.
    assert re.fullmatch(r"SRS0=[^=]{4}=[A-Z2-7]{2}=elsewhere\.test=someone@example\.org",
                        envelope["sender"]), envelope["sender"]
    assert [r["address"] for r in envelope["recipients"]] == ["friend@remote.test"]
    assert b"with ESMTP id" in queued and b"Message-ID" not in queued
    [local] = server.messages("bob@example.org")
    assert local == b"Return-Path: <someone@elsewhere.test>\n" + queued
    wait_deferred(server)  # (stopping the server during an attempt is slow)


def test_relayed_through_a_second_server(server_factory: Callable[..., RunningServer]) -> None:
    receiver = server_factory("receiver", users=("friend@remote.test",),
                              domains={"local": ["remote.test"]})
    sender = server_factory("sender", listen=LISTEN,
                            relay={"smarthost": f"[127.0.0.1]:{receiver.ports['smtp']}"})
    with smtplib.SMTP_SSL(*sender.address("submissions"), context=tls_context()) as client:
        client.login("alice@example.org", PASSWORD)
        assert client.sendmail("alice@example.org",
                               ["bob@example.org", "friend@remote.test"], MESSAGE) == {}
    deadline = time.monotonic() + 60
    while not receiver.messages("friend@remote.test") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.messages("friend@remote.test"), sender.log()
    [arrived] = receiver.messages("friend@remote.test")
    [local] = sender.messages("bob@example.org")
    assert arrived.startswith(b"Return-Path: <alice@example.org>\nReceived: from ")
    # Everything the sender stored after its own Return-Path arrived unchanged, below
    # the receiver's Received header.
    assert arrived.endswith(local.split(b"\n", 1)[1])
    assert b"Subject: out" in arrived
