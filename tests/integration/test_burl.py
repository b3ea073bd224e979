"""BURL (RFC 4468) on the real server: a draft saved over IMAP, a submit+ URL made for it
with GENURLAUTH, and the message sent on the submission port by reference; what the
recipient's Maildir holds, and every URL that must not resolve (554 5.6.6)."""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl
from collections.abc import Iterator

import pytest
from server_harness import PASSWORD, USERS, RunningServer, make_server

LISTEN = {"submission": "tcp:0:interface=127.0.0.1", "imap": "tcp:0:interface=127.0.0.1"}
DRAFT = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: by reference\r\n"
         b"Message-ID: <draft-1@example.org>\r\n\r\nThe body, fetched from the store.\r\n")
HOST = "mx.test.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = make_server(tmp_path_factory.mktemp("burl"), start=False, listen=LISTEN,
                          auth={"allow_plaintext_without_tls": True})
    for user in USERS:
        running.add_user(user, PASSWORD)
    running.start()
    yield running
    running.stop()


def genurlauth(server: RunningServer, rump: str, user: str = "alice@example.org") -> str:
    with imaplib.IMAP4("127.0.0.1", server.ports["imap"]) as m:
        m.login(user, PASSWORD)
        typ, data = m.xatom("GENURLAUTH", f'"{rump}"', "INTERNAL")
        assert typ == "OK", data
        answer = m.untagged_responses.pop("GENURLAUTH")
        return bytes(answer[0]).decode().strip('"')


@pytest.fixture(scope="module")
def draft_uid(server: RunningServer) -> int:
    with imaplib.IMAP4("127.0.0.1", server.ports["imap"]) as m:
        m.login("alice@example.org", PASSWORD)
        typ, data = m.append("Drafts", r"(\Draft)", None, DRAFT)
        assert typ == "OK", data
        found = re.search(rb"APPENDUID \d+ (\d+)", data[0])
        assert found is not None
        return int(found.group(1))


def smtp(server: RunningServer, user: str = "alice@example.org") -> smtplib.SMTP:
    client = smtplib.SMTP(*server.address("submission"))
    client.ehlo("desktop.test")
    client.starttls(context=ssl._create_unverified_context())
    client.ehlo("desktop.test")
    client.login(user, PASSWORD)
    return client


def rump(uid: int, access: str = "submit+alice%40example.org") -> str:
    return f"imap://alice%40example.org@{HOST}/Drafts/;UID={uid};URLAUTH={access}"


def test_burl_sends_the_draft(server: RunningServer, draft_uid: int) -> None:
    url = genurlauth(server, rump(draft_uid))
    before = len(server.messages("bob@example.org"))
    with smtp(server) as client:
        assert client.esmtp_features["burl"] == "imap"  # RFC 4468 3.1
        client.mail("alice@example.org")
        client.rcpt("bob@example.org")
        code, text = client.docmd("BURL", url + " LAST")
        assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), (code, text)
    stored = server.messages("bob@example.org")
    assert len(stored) == before + 1
    head, body = stored[-1].split(b"\n\n", 1)
    assert body == b"The body, fetched from the store.\n"
    assert b"\nSubject: by reference\n" in head and b"ESMTPSA" in head
    assert b"\nMessage-ID: <draft-1@example.org>\n" in head


def test_burl_after_a_bdat_chunk(server: RunningServer, draft_uid: int) -> None:
    """RFC 4468 3.2: BDAT and BURL mix; the URL's part is added where it comes."""
    url = genurlauth(server, rump(draft_uid).replace(";URLAUTH", "/;SECTION=TEXT;URLAUTH"))
    header = (b"From: alice@example.org\r\nTo: bob@example.org\r\n"
              b"Subject: forwarded text\r\n\r\n")
    before = len(server.messages("bob@example.org"))
    with smtp(server) as client:
        client.mail("alice@example.org")
        client.rcpt("bob@example.org")
        client.send(b"BDAT %d\r\n" % len(header) + header)
        assert client.getreply() == (250, b"2.0.0 %d octets received" % len(header))
        code, _ = client.docmd("BURL", url + " LAST")
        assert code == 250
    stored = server.messages("bob@example.org")
    assert len(stored) == before + 1
    head, body = stored[-1].split(b"\n\n", 1)
    assert b"\nSubject: forwarded text\n" in head
    assert body == b"The body, fetched from the store.\n"


@pytest.mark.parametrize("make", [
    lambda url: url[:-1] + ("0" if url[-1] != "0" else "1"),           # forged token
    lambda url: url[:-8],                                              # truncated token
    lambda url: url.rsplit(":internal:", 1)[0],                        # no token
    lambda url: url.replace(f"@{HOST}/", "@elsewhere.example/"),        # another server
])
def test_burl_refusals_fail_the_transaction(server: RunningServer, draft_uid: int,
                                            make: object) -> None:
    url = genurlauth(server, rump(draft_uid))
    assert callable(make)
    before = len(server.messages("bob@example.org"))
    with smtp(server) as client:
        client.mail("alice@example.org")
        client.rcpt("bob@example.org")
        assert client.docmd("BURL", make(url) + " LAST") == (
            554, b"5.6.6 Error: BURL URL cannot be resolved")
        # RFC 3030 2 / RFC 4468: the transaction is gone.
        assert client.docmd("DATA") == (503, b"5.5.1 Error: need MAIL command")
    assert len(server.messages("bob@example.org")) == before


def test_urls_not_for_this_submitter(server: RunningServer, draft_uid: int) -> None:
    """A submit+ URL is for the user it names; user+ and authuser URLs are for IMAP."""
    for_bob = genurlauth(server, rump(draft_uid, "submit+bob%40example.org"))
    for_imap = genurlauth(server, rump(draft_uid, "user+alice%40example.org"))
    anyone = genurlauth(server, rump(draft_uid, "authuser"))
    own = genurlauth(server, rump(draft_uid))
    with smtp(server) as client:
        for url in (for_bob, for_imap, anyone):
            client.mail("alice@example.org")
            client.rcpt("bob@example.org")
            assert client.docmd("BURL", url + " LAST")[0] == 554
    text_for_bob = genurlauth(server, rump(draft_uid, "submit+bob%40example.org").replace(
        ";URLAUTH", "/;SECTION=TEXT;URLAUTH"))
    header = b"From: bob@example.org\r\nTo: alice@example.org\r\n\r\n"
    with smtp(server, "bob@example.org") as client:
        client.mail("bob@example.org")
        client.rcpt("alice@example.org")
        assert client.docmd("BURL", own + " LAST")[0] == 554  # alice's, not bob's
        client.mail("bob@example.org")
        client.rcpt("alice@example.org")
        client.send(b"BDAT %d\r\n" % len(header) + header)
        assert client.getreply()[0] == 250
        code, _ = client.docmd("BURL", text_for_bob + " LAST")
        assert code == 250  # alice let bob send her draft's text: submit+bob


def test_burl_needs_auth_and_a_transaction(server: RunningServer, draft_uid: int) -> None:
    url = genurlauth(server, rump(draft_uid))
    with smtplib.SMTP(*server.address("submission")) as client:
        client.ehlo("desktop.test")
        assert client.docmd("BURL", url + " LAST") == (530, b"5.7.0 Authentication required")
    with smtp(server) as client:
        assert client.docmd("BURL", url + " LAST") == (503, b"5.5.1 Error: need MAIL command")
        assert client.docmd("BURL") == (501, b"5.5.4 Syntax: BURL imap-url [LAST]")
