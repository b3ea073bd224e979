"""Relaying between two real instances: example.org on 127.0.0.2, example.net on
127.0.0.3, a twisted.names DNS server on loopback serving their MX records.

Mail enters the sending instance either through submission (smtplib, swaks) or, for
the queue-only tests, as a queue entry written with the spool API (exactly what a
session's commit+release leaves on disk), which also exercises the resume-at-start path.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))

from ports import free_port  # noqa: E402
from relay_support import (  # noqa: E402
    PASSWORD,
    RECEIVER_IP,
    DNSServer,
    inject,
    message,
    parse,
    queue_entries,
    receiver,
    sender,
    wait_for,
    zone,
)
from server_harness import RunningServer, admin  # noqa: E402

LOOP_ZONE = {"loop.example": {"MX": [[10, "mx.example.org"]]},
             "null.example": {"MX": [[0, "."]]},
             "slowdns.example": {"TIMEOUT": True}}


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer(zone(**LOOP_ZONE)) as server:
        yield server


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for s in started:
        s.stop()



def listening(server: RunningServer, service: str) -> tuple[str, int]:
    found = json.loads((server.data_dir / "run" / "listeners.json").read_text())
    host, port = found[service]
    return host, port


def bob_messages(rx: RunningServer) -> list[bytes]:
    return rx.messages("bob@example.net")


def queue_is_empty(tx: RunningServer) -> bool:
    return not queue_entries(tx)


# -- queue to the other instance ------------------------------------------------------------


def test_queued_mail_is_relayed_with_starttls_and_a_550_bounces(
        tmp_path: Path, dns: DNSServer, servers: list[RunningServer]) -> None:
    rx = receiver(tmp_path / "rx")
    servers.append(rx)
    tx = sender(tmp_path / "tx", dns, rx.ports["smtp"])
    servers.append(tx)
    inject(tx, "alice@example.org", ["bob@example.net", "nobody@example.net"],
           message("relay one", "Hello Bob.\n.a line with a dot\n"))
    [got] = wait_for(lambda: bob_messages(rx), what="bob's copy", server=tx)
    msg = parse(got)
    assert msg["Subject"] == "relay one"
    assert msg["Return-Path"] == "<alice@example.org>"
    assert "with ESMTPS" in msg["Received"], "STARTTLS was used (opportunistic TLS)"
    assert msg["Received"].startswith("from mx.example.org ([127.0.0.2])"), \
        "EHLO hostname, from relay.source_address"
    assert got.endswith(b"\n\nHello Bob.\n.a line with a dot\n"), "dot-stuffing undone"
    [dsn_raw] = wait_for(lambda: tx.messages("alice@example.org"), what="DSN", server=tx)
    dsn = parse(dsn_raw)
    assert dsn["Return-Path"] == "<>"
    assert dsn.get_content_type() == "multipart/report"
    status = dsn.get_payload()[1].get_payload()[1]
    assert status["Final-Recipient"] == "rfc822; nobody@example.net"
    assert status["Action"] == "failed" and status["Status"] == "5.1.1"
    assert status["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    wait_for(lambda: queue_is_empty(tx), what="queue empty", server=tx)
    assert len(bob_messages(rx)) == 1
    log = tx.log()
    assert "to=<bob@example.net>, relay=mx.example.net[127.0.0.3]" in log
    assert "status=sent (250 2.0.0" in log and "status=bounced (550 5.1.1" in log


def receiver_down_and_sender(tmp_path: Path, dns: DNSServer, servers: list[RunningServer]
                             ) -> tuple[RunningServer, RunningServer]:
    """A receiver configured but not started (its port refuses connections) and a
    sender whose retries wait ten minutes: only a flush or a restart retries."""
    port = free_port(RECEIVER_IP)
    rx = receiver(tmp_path / "rx", start=False,
                  listen={"smtp": f"tcp:{port}:interface={RECEIVER_IP}"})
    servers.append(rx)
    tx = sender(tmp_path / "tx", dns, port, relay={"retry_initial": 600, "retry_max": 600})
    servers.append(tx)
    return rx, tx

def test_receiver_down_then_up_delivered_after_flush_and_admin_commands(
        tmp_path: Path, dns: DNSServer, servers: list[RunningServer]) -> None:
    rx, tx = receiver_down_and_sender(tmp_path, dns, servers)
    queue_id = inject(tx, "alice@example.org", ["bob@example.net"], message("retry me"))

    def deferred() -> bool:
        entries = queue_entries(tx)
        return bool(entries) and entries[0].recipients[0].attempts >= 1
    wait_for(deferred, what="a failed first attempt", server=tx)
    [entry] = queue_entries(tx)
    assert entry.recipients[0].state == "pending"
    assert "Connection refused" in entry.recipients[0].last_error

    listing = admin(tx.config_path, "queue", "list")
    assert queue_id in listing.stdout and "<alice@example.org>" in listing.stdout
    assert "pending   <bob@example.net>  next try in" in listing.stdout
    assert "Connection refused" in listing.stdout
    shown = admin(tx.config_path, "queue", "show", queue_id.lower()).stdout
    assert f"id:        {queue_id}" in shown
    assert "  attempts:   1" in shown and "  next try:" in shown
    assert "  Subject: retry me" in shown
    missing = admin(tx.config_path, "queue", "show", "0123456789ABCDEF", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "queue show: 0123456789ABCDEF: no such message in the queue\n"
    bad = admin(tx.config_path, "queue", "delete", "../etc/passwd", check=False)
    assert bad.returncode == 1 and "is not a queue id" in bad.stderr
    usage = admin(tx.config_path, "queue", "show", check=False)
    assert usage.returncode == 2

    rx.start()
    time.sleep(0.5)
    assert bob_messages(rx) == [], "retry_initial is 600 s: nothing before the flush"
    flushed = admin(tx.config_path, "queue", "flush")
    assert "retry 1 pending recipients now" in flushed.stdout
    wait_for(lambda: bob_messages(rx), what="delivery after flush", server=tx)
    wait_for(lambda: queue_is_empty(tx), what="queue empty", server=tx)
    assert admin(tx.config_path, "queue", "list").stdout == "queue list: the queue is empty\n"
    assert len(bob_messages(rx)) == 1


def test_queue_delete_while_running(tmp_path: Path, dns: DNSServer,
                                    servers: list[RunningServer]) -> None:
    port = free_port(RECEIVER_IP)
    tx = sender(tmp_path / "tx", dns, port, relay={"retry_initial": 600, "retry_max": 600})
    servers.append(tx)
    queue_id = inject(tx, "alice@example.org", ["bob@example.net"], message("delete me"))
    wait_for(lambda: queue_entries(tx) and queue_entries(tx)[0].recipients[0].attempts,
             what="first attempt", server=tx)
    deleted = admin(tx.config_path, "queue", "delete", queue_id)
    assert deleted.stdout.startswith(f"queue delete: {queue_id} deleted")
    assert queue_is_empty(tx)
    assert not (tx.data_dir / "queue" / "messages" / queue_id).exists()
    again = admin(tx.config_path, "queue", "delete", queue_id, check=False)
    assert again.returncode == 1
    admin(tx.config_path, "queue", "flush")
    # Once the server has taken the flush (its trigger file gone) and had a moment to
    # run the round: a fixed 1.5 s could end before a loaded server even looked.
    trigger = tx.data_dir / "queue" / "flush"
    wait_for(lambda: not trigger.exists(), what="the server takes the flush", server=tx)
    time.sleep(0.5)
    assert queue_is_empty(tx), "a deleted entry never comes back"
    assert tx.is_running()


def test_sigkill_with_a_full_queue_delivers_each_exactly_once(
        tmp_path: Path, dns: DNSServer, servers: list[RunningServer]) -> None:
    rx, tx = receiver_down_and_sender(tmp_path, dns, servers)
    ids = [inject(tx, "alice@example.org", ["bob@example.net"], message(f"kill {i}"))
           for i in range(10)]
    wait_for(lambda: all(e.recipients[0].attempts for e in queue_entries(tx))
             and len(queue_entries(tx)) == 10, what="all deferred once", server=tx)
    tx.kill()
    rx.start()
    tx.start()  # the restart reschedules every pending entry at its next try ...
    admin(tx.config_path, "queue", "flush")  # ... which is far away: retry now
    wait_for(lambda: len(bob_messages(rx)) >= 10, what="ten deliveries", server=tx)
    wait_for(lambda: queue_is_empty(tx), what="queue empty", server=tx)
    time.sleep(0.5)
    subjects = sorted(parse(m)["Subject"] for m in bob_messages(rx))
    assert subjects == sorted(f"kill {i}" for i in range(10)), "each exactly once"
    assert len(ids) == 10


def test_sigkill_mid_drain_loses_nothing(tmp_path: Path, dns: DNSServer,
                                        servers: list[RunningServer]) -> None:
    # A full queue draining over reused connections, removals batched, when the sender
    # dies: after the restart every message arrives, none more than twice (those whose
    # 250 came before their removal was durable are sent again; nothing is lost).
    rx = receiver(tmp_path / "rx")
    servers.append(rx)
    tx = sender(tmp_path / "tx", dns, rx.ports["smtp"], start=False)
    servers.append(tx)
    subjects = [f"drain {i}" for i in range(200)]
    for subject in subjects:
        inject(tx, "alice@example.org", ["bob@example.net"], message(subject))
    tx.start()
    wait_for(lambda: len(bob_messages(rx)) >= 10, what="the drain under way", server=tx)
    tx.kill()
    arrived, left = len(bob_messages(rx)), len(queue_entries(tx))
    # Killed while the queue still held entries (some delivered, their removal not yet
    # durable: removals go in batches; or not sent yet): the restart must finish them.
    # The queue may still list all 200 although some arrived.
    assert left > 0, f"killed after the drain ({arrived} arrived, {left} left)"
    tx.start()
    wait_for(lambda: queue_is_empty(tx), what="queue empty", server=tx)
    wait_for(lambda: {parse(m)["Subject"] for m in bob_messages(rx)} == set(subjects),
             what="every message delivered", server=rx)
    got = [parse(m)["Subject"] for m in bob_messages(rx)]
    assert max(got.count(s) for s in subjects) <= 2, "at most sent once more"


def test_sigkill_before_release_loses_nothing(tmp_path: Path, dns: DNSServer,
                                              servers: list[RunningServer]) -> None:
    rx = receiver(tmp_path / "rx")
    servers.append(rx)
    tx = sender(tmp_path / "tx", dns, rx.ports["smtp"], start=False)
    servers.append(tx)
    # A session committed (files durable in held/) and the process died before release.
    from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id
    from mailserver.queue.spool import Spool
    spool = Spool(tx.data_dir / "queue")
    spool.ensure_dirs()
    entry = QueueEntry(new_queue_id(), "alice@example.org", [RecipientState("bob@example.net")])
    tmp = spool.tmp_path(entry.id, "msg")
    tmp.write_bytes(message("held at crash"))
    spool.commit(entry, tmp)
    writer = subprocess.Popen(["true"])
    writer.wait()  # a process that died while writing:
    (spool.tmp / f"FFFFFFFFFFFFFFFF.msg.{writer.pid}").write_bytes(b"torn write")
    tx.start()
    [got] = wait_for(lambda: bob_messages(rx), what="delivery", server=tx)
    assert parse(got)["Subject"] == "held at crash"
    assert list(spool.tmp.iterdir()) == []


@pytest.fixture(scope="module")
def lone_sender(tmp_path_factory: pytest.TempPathFactory,
                dns: DNSServer) -> Iterator[RunningServer]:
    """One sending instance for the routing-failure tests (each uses its own user)."""
    tx = sender(tmp_path_factory.mktemp("lone"), dns, 25,
                users=("alice@example.org", "dave@example.org", "erin@example.org"),
                relay={"dns_timeout": 1, "retry_initial": 600, "retry_max": 600})
    yield tx
    tx.stop()


def entry_of(tx: RunningServer, queue_id: str) -> object:
    return next((e for e in queue_entries(tx) if e.id == queue_id), None)


def test_mx_pointing_at_ourselves_bounces_as_a_loop(lone_sender: RunningServer) -> None:
    tx = lone_sender
    queue_id = inject(tx, "alice@example.org", ["someone@loop.example", "x@null.example"],
                      message("loop"))
    [raw] = wait_for(lambda: tx.messages("alice@example.org"), what="DSN", server=tx)
    wait_for(lambda: entry_of(tx, queue_id) is None, what="entry removed", server=tx)
    blocks = parse(raw).get_payload()[1].get_payload()[1:]
    by_rcpt = {b["Final-Recipient"]: b for b in blocks}
    loop = by_rcpt["rfc822; someone@loop.example"]
    assert loop["Status"] == "5.4.6"
    assert loop["Diagnostic-Code"] == \
        "X-Mailserver; mail for loop.example loops back to myself"
    assert by_rcpt["rfc822; x@null.example"]["Status"] == "5.1.10"


def test_dns_timeout_defers(lone_sender: RunningServer) -> None:
    tx = lone_sender
    queue_id = inject(tx, "dave@example.org", ["someone@slowdns.example"],
                      message("slow dns"))

    def attempted() -> object:
        entry = entry_of(tx, queue_id)
        return entry and entry.recipients[0].attempts  # type: ignore[attr-defined]
    wait_for(attempted, what="first attempt", server=tx)
    [rcpt] = entry_of(tx, queue_id).recipients  # type: ignore[attr-defined]
    assert (rcpt.state, rcpt.status) == ("pending", "4.4.3")
    assert rcpt.last_error == "DNS lookup of MX slowdns.example failed: timed out"
    assert tx.messages("dave@example.org") == [], "no bounce for a temporary failure"
    assert tx.is_running()


def test_bounce_of_a_bounce_is_never_sent(lone_sender: RunningServer) -> None:
    tx = lone_sender
    queue_id = inject(tx, "", ["erin@loop.example"], message("a dsn that fails"))
    wait_for(lambda: entry_of(tx, queue_id) is None, what="dropped", server=tx)
    time.sleep(0.3)
    assert [e for e in queue_entries(tx) if e.sender == ""] == []
    assert tx.messages("erin@example.org") == []
    assert f"{queue_id}: to=<erin@loop.example>, relay=none" in tx.log()


# -- submission (587 / 465) -----------------------------------------------------------------


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="module")
def submission_pair(tmp_path_factory: pytest.TempPathFactory,
                    dns: DNSServer) -> Iterator[tuple[RunningServer, RunningServer]]:
    root = tmp_path_factory.mktemp("submit")
    rx = receiver(root / "rx")
    tx = sender(root / "tx", dns, rx.ports["smtp"],
                listen={"smtp": "tcp:0:interface=127.0.0.2",
                        "submission": "tcp:0:interface=127.0.0.2",
                        "submissions": "tcp:0:interface=127.0.0.2"})
    try:
        yield tx, rx
    finally:
        tx.stop()
        rx.stop()


def with_subject(messages: list[bytes], subject: str) -> list[bytes]:
    return [m for m in messages if parse(m)["Subject"] == subject]


def test_smtplib_submission_587_reaches_bob(
        submission_pair: tuple[RunningServer, RunningServer]) -> None:
    tx, rx = submission_pair
    host, port = listening(tx, "submission")
    with smtplib.SMTP(host, port, timeout=60) as smtp:
        smtp.starttls(context=_no_verify())
        smtp.login("alice@example.org", PASSWORD)
        smtp.sendmail("alice@example.org", ["bob@example.net"],
                      b"From: alice@example.org\r\nTo: bob@example.net\r\n"
                      b"Subject: via submission\r\n\r\nHi Bob, from 587.\r\n")
    [got] = wait_for(lambda: with_subject(bob_messages(rx), "via submission"),
                     what="bob's copy", server=tx)
    msg = parse(got)
    assert msg["Message-ID"] and msg["Date"], "submission completes the headers"
    assert got.endswith(b"Hi Bob, from 587.\n")
    assert "with ESMTPS" in msg["Received"], "relayed over STARTTLS"
    wait_for(lambda: queue_is_empty(tx), what="queue empty", server=tx)


def test_smtplib_submissions_465_and_a_550_gives_alice_a_dsn(
        submission_pair: tuple[RunningServer, RunningServer]) -> None:
    tx, rx = submission_pair
    host, port = listening(tx, "submissions")
    with smtplib.SMTP_SSL(host, port, timeout=60, context=_no_verify()) as smtp:
        smtp.login("alice@example.org", PASSWORD)
        smtp.sendmail("alice@example.org", ["nobody@example.net"],
                      b"From: alice@example.org\r\nTo: nobody@example.net\r\n"
                      b"Subject: to nobody\r\n\r\nhello?\r\n")
    [raw] = wait_for(lambda: tx.messages("alice@example.org"), what="DSN", server=tx)
    dsn = parse(raw)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    block = dsn.get_payload()[1].get_payload()[1]
    assert block["Final-Recipient"] == "rfc822; nobody@example.net"
    assert block["Status"] == "5.1.1"
    assert "Subject: to nobody" in dsn.get_payload()[2].get_payload()


def test_swaks_submission_reaches_bob(
        submission_pair: tuple[RunningServer, RunningServer]) -> None:
    tx, rx = submission_pair
    host, port = listening(tx, "submission")
    result = subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--tls",
         "--auth", "PLAIN", "--auth-user", "alice@example.org",
         "--auth-password", PASSWORD, "--from", "alice@example.org",
         "--to", "bob@example.net", "--header", "Subject: via swaks",
         "--body", "Sent by swaks."],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 " in result.stdout
    wait_for(lambda: with_subject(bob_messages(rx), "via swaks"), what="bob's copy",
             server=tx)


def test_worker_processes_queue_and_process_zero_delivers(
        tmp_path: Path, dns: DNSServer, servers: list[RunningServer]) -> None:
    """processes = 2: a worker accepts some of the submissions; its queue entries are
    noticed by the scheduler in process 0 (inotify on queue/envelopes/)."""
    rx = receiver(tmp_path / "rx")
    servers.append(rx)
    tx = sender(tmp_path / "tx", dns, rx.ports["smtp"], processes=2,
                listen={"smtp": "tcp:0:interface=127.0.0.2",
                        "submission": "tcp:0:interface=127.0.0.2"})
    servers.append(tx)
    host, port = listening(tx, "submission")
    for i in range(8):
        with smtplib.SMTP(host, port, timeout=60) as smtp:
            smtp.starttls(context=_no_verify())
            smtp.login("alice@example.org", PASSWORD)
            smtp.sendmail("alice@example.org", ["bob@example.net"],
                          f"Subject: worker {i}\r\n\r\nbody {i}\r\n".encode())
    wait_for(lambda: len(bob_messages(rx)) >= 8, what="eight deliveries", server=tx)
    wait_for(lambda: queue_is_empty(tx), what="queue empty", server=tx)
    subjects = sorted(parse(m)["Subject"] for m in bob_messages(rx))
    assert subjects == sorted(f"worker {i}" for i in range(8))
