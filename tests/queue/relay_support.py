"""Helpers shared by the queue tests: two real servers, a DNS server, queue injection."""

from __future__ import annotations

import email
import email.message
import email.policy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

from dns_server import DNSServer  # noqa: E402
from server_harness import RunningServer, make_server  # noqa: E402

from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id  # noqa: E402
from mailserver.queue.spool import EntryGone, Spool  # noqa: E402

PASSWORD = "correct horse battery staple"
SENDER_IP = "127.0.0.2"
RECEIVER_IP = "127.0.0.3"

#: Fast retries for tests (seconds).
FAST_RELAY = {"retry_initial": 1, "retry_max": 2, "connect_timeout": 5,
              "command_timeout": 10, "dns_timeout": 10}


def zone(receiver_ip: str = RECEIVER_IP, **extra: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "example.net": {"MX": [[10, "mx.example.net"]]},
        "mx.example.net": {"A": [receiver_ip]},
        "example.org": {"MX": [[10, "mx.example.org"]]},
        "mx.example.org": {"A": [SENDER_IP]},
    }
    base.update(extra)
    return base


def receiver(root: Path, users: tuple[str, ...] = ("bob@example.net",),
             start: bool = True, **overrides: Any) -> RunningServer:
    """The instance for example.net on 127.0.0.3."""
    settings: dict[str, Any] = {
        "hostname": "mx.example.net", "domains": {"local": ["example.net"]},
        "listen": {"smtp": f"tcp:0:interface={RECEIVER_IP}"},
    }
    server = make_server(root, start=False, **_merge(settings, overrides))
    for user in users:
        server.add_user(user, PASSWORD)
    return server.start() if start else server


def sender(root: Path, dns: DNSServer, relay_port: int,
           users: tuple[str, ...] = ("alice@example.org",), start: bool = True,
           relay: dict[str, Any] | None = None, **overrides: Any) -> RunningServer:
    """The instance for example.org on 127.0.0.2, relaying through `dns`'s MX."""
    settings: dict[str, Any] = {
        "hostname": "mx.example.org", "domains": {"local": ["example.org"]},
        "listen": {"smtp": f"tcp:0:interface={SENDER_IP}"},
        "relay": {"nameservers": [dns.nameserver], "port": relay_port,
                  "source_address": SENDER_IP, **FAST_RELAY,
                  **(relay or {})},
    }
    server = make_server(root, start=False, **_merge(settings, overrides))
    for user in users:
        server.add_user(user, PASSWORD)
    return server.start() if start else server


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def message(subject: str = "hello", body: str = "Hi Bob.\n", sender_addr: str =
            "alice@example.org", to: str = "bob@example.net") -> bytes:
    return (f"From: <{sender_addr}>\nTo: <{to}>\nSubject: {subject}\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.org>\n\n{body}").encode()


def inject(server: RunningServer, sender_addr: str, recipients: list[str],
           data: bytes, **fields: Any) -> str:
    """Queue a message the way a session does (commit + release), from outside;
    `fields`: further QueueEntry fields (requiretls=True)."""
    spool = Spool(server.data_dir / "queue")
    spool.ensure_dirs()
    entry = QueueEntry(id=new_queue_id(), sender=sender_addr,
                       recipients=[RecipientState(r) for r in recipients], size=len(data),
                       **fields)
    tmp = spool.tmp_path(entry.id, "msg")
    tmp.write_bytes(data)
    spool.commit(entry, tmp)
    spool.release(entry.id)
    return entry.id


def queue_entries(server: RunningServer) -> list[QueueEntry]:
    """The entries on disk now; one the running server finishes (and deletes) between
    listing and loading is simply no longer there."""
    spool = Spool(server.data_dir / "queue")
    entries = []
    for queue_id in spool.ids():
        try:
            entries.append(spool.load(queue_id))
        except EntryGone:
            continue
    return entries


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "",
             server: RunningServer | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    log = server.log() if server else ""
    raise AssertionError(f"timed out waiting for {what or check}\n{log}")


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg
