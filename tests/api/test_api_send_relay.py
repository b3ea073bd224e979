"""POST /api/v1/send to a remote recipient: the message leaves through the relay queue
DKIM-signed (after 8-bit parts were made 7-bit, as submission does), arrives at the
next hop (a second server on loopback, DNS on loopback) and verifies there with dkimpy
against the key `mailserver dns-records` published; and GET /api/v1/queue/{id} shows
a deferred recipient with the peer's error and the next try."""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import sys
from pathlib import Path
from typing import Any

import dkim
import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))
sys.path.insert(0, str(Path(__file__).parents[1] / "senderauth"))
from dns_server import DNSServer  # noqa: E402
from openapi_check import check_response  # noqa: E402
from ports import free_port  # noqa: E402
from relay_support import (  # noqa: E402
    PASSWORD,
    SENDER_IP,
    parse,
    receiver,
    sender,
    wait_for,
    zone,
)
from sa_helpers import zone_from_records  # noqa: E402
from server_harness import RunningServer, admin  # noqa: E402

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

LISTEN = {"smtp": f"tcp:0:interface={SENDER_IP}", "https": f"tcp:0:interface={SENDER_IP}",
          "submission": f"tcp:0:interface={SENDER_IP}"}


def post(server: RunningServer, path: str, body: dict[str, Any] | None = None,
         ) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    url = f"https://{SENDER_IP}:{server.ports['https']}/api/v1{path}"
    if body is None:
        return session.get(url, auth=("alice@example.org", PASSWORD), verify=False,
                           timeout=60)
    return session.post(url, json=body, auth=("alice@example.org", PASSWORD),
                        verify=False, timeout=60)


def test_sent_through_the_api_arrives_signed_at_the_next_hop(tmp_path: Path) -> None:
    with DNSServer(zone()) as placeholder:
        draft = sender(tmp_path / "tx", placeholder, 25, users=(), start=False,
                       listen=LISTEN, dkim={"sign": True})
        printed = admin(draft.config_path, "dns-records", "example.org").stdout
    records = zone_from_records(printed)
    with DNSServer(zone(**records)) as dns:
        rx = receiver(tmp_path / "rx")
        tx = sender(tmp_path / "tx", dns, rx.ports["smtp"], listen=LISTEN,
                    dkim={"sign": True})
        try:
            response = post(tx, "/send", {
                "from": {"address": "alice@example.org", "name": "Alice"},
                "to": ["bob@example.net"], "subject": "over the API",
                "text": "Grüße aus dem API.\n",
                "attachments": [{"filename": "n.bin", "content": base64.b64encode(
                    b"\x00\xff" * 100).decode()}]})
            assert response.status_code == 202, response.text
            answer = response.json()
            check_response("post", "/send", 202, answer)
            assert answer["recipients"] == [{"address": "bob@example.net",
                                             "state": "queued"}]
            assert re.fullmatch(r"[0-9A-F]{16}", answer["queue_id"])
            got = wait_for(lambda: rx.messages("bob@example.net"), 30, "the relayed copy",
                           tx)
        finally:
            tx.stop()
            rx.stop()
    [data] = got
    head = data.split(b"\n\n", 1)[0].decode()
    assert f"Message-ID: {answer['message_id']}" in head
    assert "with HTTPSA id" in head
    # dkimpy's own verdict, against the key dns-records published.
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        txt = records[name.decode().rstrip(".")]["TXT"][0]
        return "".join(txt).encode()

    assert dkim.verify(data.replace(b"\n", b"\r\n"), dnsfunc=dnsfunc)
    message = parse(data)
    body = message.get_body(("plain",))
    assert body is not None and body.get_content() == "Grüße aus dem API.\n"
    # 8-bit made 7-bit before signing (mime7bit), so no relay can break the body hash.
    assert body["Content-Transfer-Encoding"] == "quoted-printable"
    [part] = list(message.iter_attachments())
    assert part.get_content() == b"\x00\xff" * 100


def test_queue_state_of_a_deferred_recipient(tmp_path: Path) -> None:
    with DNSServer(zone()) as dns:
        tx = sender(tmp_path / "tx", dns, free_port("127.0.0.3"), listen=LISTEN)
        try:
            response = post(tx, "/send", {"to": ["bob@example.net", "alice@example.org"],
                                          "text": "will wait\n"})
            assert response.status_code == 202, response.text
            answer = response.json()
            assert answer["recipients"] == [
                {"address": "bob@example.net", "state": "queued"},
                {"address": "alice@example.org", "state": "delivered"}]

            def deferred() -> dict[str, Any] | None:
                state = post(tx, f"/queue/{answer['queue_id']}")
                assert state.status_code == 200, state.text
                body: dict[str, Any] = state.json()
                check_response("get", "/queue/{id}", 200, body)
                rows = {r["address"]: r for r in body["recipients"]}
                return body if rows["bob@example.net"]["state"] == "deferred" else None

            body = wait_for(deferred, 30, "a deferred state", tx)
            smtp_id = _submit_over_smtp(tx)
            over_smtp = post(tx, f"/queue/{smtp_id}")
        finally:
            tx.stop()
    rows = {r["address"]: r for r in body["recipients"]}
    assert body["message_id"] == answer["message_id"]
    # The local copy's "delivered" event came after the record (written before the
    # queue copy's release), so it is kept with what it says.
    assert rows["alice@example.org"] == {"address": "alice@example.org",
                                         "state": "delivered", "attempts": 1,
                                         "status": "2.0.0", "remote": "local",
                                         "diagnostic": "250 2.0.0 delivered to maildir"}
    bob = rows["bob@example.net"]
    assert bob["attempts"] >= 1
    assert bob["status"].startswith("4.")
    assert "refused" in bob["diagnostic"].lower() or "connect" in bob["diagnostic"].lower()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bob["next_try"])
    # The user's own message submitted over SMTP is in the queue under its name too.
    assert over_smtp.status_code == 200, over_smtp.text
    check_response("get", "/queue/{id}", 200, over_smtp.json())
    assert over_smtp.json()["message_id"] == ""
    [row] = over_smtp.json()["recipients"]
    assert row["address"] == "carol@example.net"
    assert row["state"] in ("pending", "deferred")


def _submit_over_smtp(tx: RunningServer) -> str:
    """The queue id of a message alice submits on port 587 (from its 250 reply)."""
    with smtplib.SMTP(SENDER_IP, tx.ports["submission"], timeout=60) as client:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        client.starttls(context=context)
        client.login("alice@example.org", PASSWORD)
        client.mail("alice@example.org")
        client.rcpt("carol@example.net")
        code, text = client.data(b"From: alice@example.org\r\nSubject: smtp\r\n\r\nx\r\n")
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]
