"""Postfix (from Debian) as the receiving MX: our client against a real peer.

A throw-away Postfix instance (bench/postfix_instance.py: its own config and queue in a
temp dir, on a high loopback port) accepts user@bench.test into a Maildir; our DNS
server gives bench.test an MX pointing at it.
"""

from __future__ import annotations

import os
import shutil
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
    inject,
    message,
    parse,
    queue_entries,
    sender,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/usr/sbin/postfix"),
                       reason="postfix is not installed (apt-get install postfix)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a throw-away Postfix instance needs root"),
]



@pytest.fixture
def postfix() -> Iterator[object]:
    from postfix_instance import PostfixInstance

    root = Path(tempfile.mkdtemp(prefix="pf-relay-", dir="/tmp"))
    instance = PostfixInstance(root, free_port())
    try:
        with instance:
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_relay_to_postfix(tmp_path: Path, postfix: object) -> None:
    pf = postfix
    zone = {"bench.test": {"MX": [[10, "mx.bench.test"]]},
            "mx.bench.test": {"A": ["127.0.0.1"]}}
    with DNSServer(zone) as dns:
        tx = sender(tmp_path / "tx", dns, pf.port)  # type: ignore[attr-defined]
        try:
            body = "First line.\n.leading dot\n" + "x" * 2000 + "\n"
            inject(tx, "alice@example.org", ["user@bench.test"],
                   message("to postfix", body, to="user@bench.test"))
            new = pf.maildir_new  # type: ignore[attr-defined]
            [path] = wait_for(lambda: list(new.iterdir()), what="postfix delivery",
                              server=tx)
            got = path.read_bytes()
            msg = parse(got)
            assert msg["Subject"] == "to postfix"
            assert msg["Return-Path"] == "<alice@example.org>"
            assert got.endswith(body.encode()), "dot-stuffing and CRLF undone by Postfix"
            wait_for(lambda: not queue_entries(tx), what="queue empty", server=tx)
            assert "status=sent (250 2.0.0 Ok: queued as" in tx.log()
        finally:
            tx.stop()
