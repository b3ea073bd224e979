"""DSN against Postfix (from Debian) as the next hop: a queue entry with NOTIFY=SUCCESS,
an ORCPT and an ENVID is relayed to a throw-away Postfix instance, which offers DSN.
Postfix's own "delivered" report (read from its queue with postcat: the instance defers
its SMTP transport, so the report waits there) carries what we passed on, and our side
sends no report of its own for that recipient (RFC 3461 5.2.2: the peer reports)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "tests" / "queue"))
sys.path.insert(0, str(ROOT / "bench"))

from ports import free_port  # noqa: E402
from relay_support import (  # noqa: E402
    DNSServer,
    message,
    queue_entries,
    sender,
    wait_for,
)

from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id  # noqa: E402
from mailserver.queue.spool import Spool  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/usr/sbin/postfix"),
                       reason="postfix is not installed (apt-get install postfix)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a throw-away Postfix instance needs root"),
]



@pytest.fixture
def postfix() -> Iterator[object]:
    from postfix_instance import PostfixInstance

    class HoldingPostfix(PostfixInstance):
        """Keeps what it would send by SMTP (its report to alice) in its queue."""

        def main_cf(self, uid: int, gid: int) -> str:
            return super().main_cf(uid, gid) + "defer_transports = smtp\n"

    root = Path(tempfile.mkdtemp(prefix="pf-dsn-", dir="/tmp"))
    instance = HoldingPostfix(root, free_port())
    try:
        with instance:
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_postfix_gets_notify_orcpt_envid_and_reports_delivered(
        tmp_path: Path, postfix: object) -> None:
    pf = postfix
    zone = {"bench.test": {"MX": [[10, "mx.bench.test"]]},
            "mx.bench.test": {"A": ["127.0.0.1"]}}
    with DNSServer(zone) as dns:
        tx = sender(tmp_path / "tx", dns, pf.port)  # type: ignore[attr-defined]
        try:
            spool = Spool(tx.data_dir / "queue")
            data = message("dsn to postfix", "Hi.\n", to="user@bench.test")
            entry = QueueEntry(new_queue_id(), "alice@example.org", [RecipientState(
                "user@bench.test", notify=["SUCCESS", "FAILURE"], orcpt_type="rfc822",
                orcpt="User+tag@bench.test")], ret="HDRS", envid="env pf=1", size=len(data))
            tmp = spool.tmp_path(entry.id, "msg")
            tmp.write_bytes(data)
            spool.commit(entry, tmp)
            spool.release(entry.id)
            wait_for(lambda: list(pf.maildir_new.iterdir()),  # type: ignore[attr-defined]
                     what="postfix delivery", server=tx)
            maillog = pf.maillog  # type: ignore[attr-defined]
            found = wait_for(lambda: re.search(
                r"sender delivery status notification: (\w+)", maillog.read_text()),
                what="Postfix's success report", server=tx)

            def postcat() -> str:
                """The report's text, once postcat finds it (it moves between Postfix's
                queue directories while qmgr tries it: retried until read)."""
                done = subprocess.run(
                    ["postcat", "-c", str(pf.config), "-bh", "-q", found[1]],  # type: ignore[attr-defined]
                    capture_output=True, text=True, timeout=30, check=False)
                return done.stdout if done.returncode == 0 else ""

            report = wait_for(postcat, what="postcat of the report", server=tx)
            # Postfix decoded our xtext (ENVID "env+20pf+3D1", ORCPT "User+2Btag@...").
            assert "Original-Envelope-Id: env pf=1" in report, report
            assert re.search(r"Original-Recipient: rfc822; ?User\+tag@bench\.test", report)
            assert re.search(r"Final-Recipient: rfc822; ?user@bench\.test", report)
            assert "Action: delivered" in report
            wait_for(lambda: not queue_entries(tx), what="queue empty", server=tx)
            assert "success notification" not in tx.log(), "Postfix reports, not us"
            assert not tx.messages("alice@example.org")
        finally:
            tx.stop()
