"""The issue-15 extensions driven by a real client over TCP: IMAPClient's multiappend
(MULTIAPPEND), LIST-EXTENDED through raw commands, BINARY fetch, and the bytes that land
in the Maildir."""

from __future__ import annotations

import itertools

from imap_helpers import PASSWORD
from imapclient import IMAPClient
from server_harness import RunningServer

_fresh = itertools.count()


def test_imapclient_multiappend_list_extended_and_binary(imap_server: RunningServer) -> None:
    user = f"ext{next(_fresh)}@example.org"
    imap_server.add_user(user, PASSWORD)
    messages = [b"Subject: m%d\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n" % i
                for i in range(3)]
    with IMAPClient("127.0.0.1", port=imap_server.ports["imap"], ssl=False,
                    timeout=60) as client:
        client.login(user, PASSWORD)
        caps = client.capabilities()
        for cap in (b"MULTIAPPEND", b"CATENATE", b"LIST-EXTENDED", b"LIST-STATUS", b"BINARY",
                    b"STATUS=SIZE", b"CREATE-SPECIAL-USE", b"UTF8=ACCEPT"):
            assert cap in caps
        client.create_folder("Box")
        reply = client.multiappend("Box", messages)
        status, (text,) = reply
        assert status == "OK" and text.startswith(b"[APPENDUID ")
        assert text.endswith(b" 1:3] Append completed")
        listed = client._raw_command_untagged(
            b"LIST", [b'""', b"(Box INBOX)", b"RETURN", b"(STATUS (MESSAGES SIZE))"],
            uid=False, response_name="STATUS")
        assert listed == [b"INBOX (MESSAGES 0 SIZE 0)",
                          b"Box (MESSAGES 3 SIZE %d)" % sum(map(len, messages))]
        client.select_folder("Box")
        fetched = client.fetch([1, 2, 3], ["BINARY.PEEK[1]", "BINARY.SIZE[1]"])
        assert [fetched[n][b"BINARY[1]"] for n in (1, 2, 3)] == [b"hi"] * 3
        assert [fetched[n][b"BINARY.SIZE[1]"] for n in (1, 2, 3)] == [2] * 3
    on_disk = sorted(p.read_bytes() for p in imap_server.maildir(user, "Box").glob("*/*")
                     if p.parent.name in ("new", "cur"))
    assert on_disk == sorted(m.replace(b"\r\n", b"\n") for m in messages)
