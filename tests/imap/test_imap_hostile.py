"""Hostile input against the real server: each gets the right NO/BAD, nothing lands
outside the user's Maildir, memory stays bounded, and the server keeps serving."""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from imap_helpers import PASSWORD, Line, connect, no_verify, start_imap_server
from server_harness import RunningServer
from session_harness import Session
from twisted.logger import formatEvent, globalLogPublisher

LOGIN = b"LOGIN alice@example.org \"" + PASSWORD.encode() + b"\""


def rss_kib(server: RunningServer) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def still_serving(server: RunningServer) -> None:
    client = connect(server)
    assert client.noop()[0] == "OK"
    client.logout()


def test_thirty_wrong_passwords(imap_server: RunningServer) -> None:
    """5 failures per connection end it with BYE; 30 attempts over 6 connections in
    parallel (each failure is delayed 0.75 s by the checker)."""
    results: list[list[bytes]] = []

    def guesser() -> None:
        client = Line(imap_server)
        # Each failure waits the checker's delay, growing with the account's failures:
        # on a loaded machine one answer may take longer than the usual 20 s.
        client.sock.settimeout(120)
        lines = []
        for n in range(5):
            client.send(b"g%d LOGIN alice@example.org wrong%d\r\n" % (n, n))
            lines.append(client.line())
        lines.append(client.line())
        lines.append(b"closed" if client.closed() else b"open")
        results.append(lines)

    threads = [threading.Thread(target=guesser) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert len(results) == 6
    for lines in results:
        assert lines[:4] == [b"g%d NO [AUTHENTICATIONFAILED] Authentication failed" % n
                             for n in range(4)]
        assert lines[4:] == [b"g4 NO [AUTHENTICATIONFAILED] Authentication failed",
                             b"* BYE Too many authentication failures", b"closed"]
    still_serving(imap_server)


def test_megabyte_line_and_memory(imap_server: RunningServer,
                                  line_client: Callable[..., Line]) -> None:
    client = line_client()
    client.command(b"a", LOGIN)
    assert client.command(b"b", b"NOOP " + b"x" * (1024 * 1024)) == [
        b"b BAD [TOOBIG] Line too long"]
    assert client.command(b"c", b"NOOP")[-1] == b"c OK Noop completed"
    rss_before = rss_kib(imap_server)
    chunk = b"A" * (1024 * 1024)
    for _ in range(64):  # 64 MiB without a line end
        client.send(chunk)
    client.send(b"\r\n")
    assert client.line() == b"* BAD [TOOBIG] Line too long"
    assert client.command(b"d", b"NOOP")[-1] == b"d OK Noop completed"
    assert rss_kib(imap_server) - rss_before < 32 * 1024, "the server buffered the line"


def test_huge_literal_announcements(imap_server: RunningServer,
                                    line_client: Callable[..., Line]) -> None:
    client = line_client()
    # Not authenticated: only small literals.
    assert client.command(b"a", b"LOGIN {4294967296}") == [b"a BAD [TOOBIG] Literal too large"]
    assert client.command(b"b", b"LOGIN {100000000}") == [b"b BAD [TOOBIG] Literal too large"]
    client.command(b"c", LOGIN)
    # APPENDLIMIT: NO [TOOBIG] and no "+", so the client never sends it (RFC 7889).
    assert client.command(b"d", b"APPEND INBOX {999999999}") == [
        b"d NO [TOOBIG] Message too large"]
    assert client.command(b"e", b"SELECT {4294967296}") == [b"e BAD [TOOBIG] Literal too large"]
    assert client.command(b"f", b"NOOP")[-1] == b"f OK Noop completed"
    # A literal is announced, then never sent: the session waits for it (and times out
    # like any silent client); meanwhile the server serves others.
    client.send(b"g APPEND INBOX {50}\r\n")
    assert client.line() == b"+ Ready for literal data"
    still_serving(imap_server)
    # A non-synchronizing literal that is too large: BAD, BYE, closed (RFC 7888 4).
    other = line_client()
    other.command(b"a", LOGIN)
    other.send(b"b SELECT {9999999+}\r\n" + b"x" * 1000)
    assert other.line() == b"b BAD [TOOBIG] Literal too large"
    assert other.line() == b"* BYE Literal too large"
    assert other.closed()


def test_deep_nesting_nul_and_bad_sets(imap_server: RunningServer,
                                       line_client: Callable[..., Line]) -> None:
    client = line_client()
    client.command(b"a", LOGIN)
    client.command(b"b", b"SELECT INBOX")
    deep = b"(" * 10000 + b"ALL" + b")" * 10000
    assert client.command(b"c", b"SEARCH " + deep) == [
        b"c BAD [LIMIT] search program nested too deeply"]
    assert client.command(b"d", b"NOOP \0") == [b"d BAD NUL in command line"]
    assert client.command(b"e", b"FETCH 0 FLAGS") == [b"e BAD invalid sequence set"]
    assert client.command(b"f", b"FETCH 4294967296 FLAGS") == [b"f BAD invalid sequence set"]
    assert client.command(b"g", b"UID FETCH *:* FLAGS")[-1] == b"g OK Fetch completed"
    assert client.command(b"h", b"FETCH 1:x FLAGS") == [b"h BAD invalid sequence set"]
    assert client.command(b"i", b'LOGIN "unterminated')[-1].startswith(b"i BAD")
    assert client.command(b"j", b"NOOP")[-1] == b"j OK Noop completed"


def test_hostile_mailbox_names(imap_server: RunningServer,
                               line_client: Callable[..., Line]) -> None:
    client = line_client()
    client.command(b"a", LOGIN)
    data_dir = imap_server.data_dir
    before = {p for p in data_dir.rglob("*") if "mail" in p.parts}
    refusals = {
        b'"../../../etc"': b"NO [CANNOT]",
        b'"a..b"': b"NO [CANNOT]",
        b'"a/b"': b"NO [CANNOT]",
        b'"' + b"x" * 1100 + b'"': b"NO [CANNOT]",
        b"{3}\r\na\0b": b"BAD",
        b'".hidden"': b"NO [CANNOT]",
        b'"caf\xc3\xa9"': b"NO [CANNOT]",
        b'"&Jjo"': b"NO [CANNOT]",
    }
    for n, (name, answer) in enumerate(refusals.items()):
        tag = b"c%d" % n
        if name.startswith(b"{"):
            client.send(tag + b" CREATE " + name.split(b"\r\n")[0] + b"\r\n")
            assert client.line() == b"+ Ready for literal data"
            client.send(name.split(b"\r\n")[1] + b"\r\n")
            reply = client.until(tag)
        else:
            reply = client.command(tag, b"CREATE " + name)
        assert reply[-1].startswith(tag + b" " + answer), (name, reply)
    after = {p for p in data_dir.rglob("*") if "mail" in p.parts}
    created = {p for p in after - before if "alice" not in p.parts}
    assert created == set()
    assert not (data_dir.parent / "etc").exists()
    assert client.command(b"d", b"CREATE INBOX") == [b"d NO [ALREADYEXISTS] INBOX always exists"]
    assert client.command(b"e", b"DELETE inbox") == [b"e NO [CANNOT] INBOX cannot be deleted"]


def test_delete_folder_with_children(imap_server: RunningServer,
                                     line_client: Callable[..., Line]) -> None:
    client = line_client()
    client.command(b"a", LOGIN)
    assert client.command(b"b", b"CREATE Parent.Child")[-1].startswith(b"b OK [MAILBOXID (")
    reply = client.command(b"c", b"DELETE Parent")
    listing = client.command(b"d", b'LIST "" "Parent*"')
    # RFC 3501 6.3.4: either refused, or the parent stays as \Noselect with its child.
    if reply[-1].startswith(b"c OK"):
        assert b'* LIST (\\Noselect \\HasChildren) "." Parent' in listing
    else:
        assert reply[-1].startswith(b"c NO")
    assert b'* LIST (\\HasNoChildren) "." Parent.Child' in listing
    assert client.command(b"e", b"DELETE Parent.Child")[-1] == b"e OK Delete completed"


def test_starttls_injection(imap_server: RunningServer) -> None:
    client = Line(imap_server)
    # The injected command arrives in the same segment as STARTTLS.
    client.send(b"a STARTTLS\r\nb LOGIN alice@example.org x\r\n")
    assert client.line() == b"a OK Begin TLS negotiation now"
    tls = no_verify().wrap_socket(client.sock)
    tls.sendall(b"c CAPABILITY\r\n")
    reader = tls.makefile("rb")
    first = reader.readline()
    assert first.startswith(b"* CAPABILITY IMAP4rev1"), first
    assert b"STARTTLS" not in first
    assert reader.readline() == b"c OK Capability completed\r\n"
    tls.close()


def test_pipelined_commands_answered_in_order(imap_server: RunningServer,
                                              line_client: Callable[..., Line]) -> None:
    client = line_client()
    burst = [b"p0 " + LOGIN, b"p1 SELECT INBOX", b"p2 CREATE Pipe", b"p3 STATUS Pipe (MESSAGES)",
             b"p4 NOOP", b"p5 LIST \"\" Pipe", b"p6 DELETE Pipe", b"p7 EXAMINE INBOX",
             b"p8 CAPABILITY", b"p9 LOGOUT"]
    client.send(b"\r\n".join(burst) + b"\r\n")
    tags = []
    while True:
        line = client.line()
        if not line:
            break
        if not line.startswith(b"*"):
            tags.append(line.split(b" ")[0])
    assert tags == [b"p%d" % n for n in range(10)]


def test_implicit_tls_greeting(imap_server: RunningServer) -> None:
    client = Line(imap_server, "imaps")
    assert client.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
    assert b"STARTTLS" not in client.greeting and b"AUTH=PLAIN" in client.greeting
    assert isinstance(client.sock, ssl.SSLSocket)
    client.close()
    time.sleep(0)


def test_no_passwords_in_clear(tmp_path: Path) -> None:
    """Default config: LOGINDISABLED before STARTTLS, NO [PRIVACYREQUIRED] for LOGIN and
    AUTHENTICATE; after STARTTLS the same login works."""
    server = start_imap_server(tmp_path / "strict", users=("alice@example.org",), auth={})
    try:
        client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=60)
        assert "LOGINDISABLED" in client.capabilities
        assert "AUTH=PLAIN" not in client.capabilities
        raw = Line(server)
        assert raw.command(b"a", LOGIN) == [
            b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS; use "
            b"STARTTLS"]
        raw.close()
        client.starttls(ssl_context=no_verify())
        assert "LOGINDISABLED" not in client.capabilities
        assert client.login("alice@example.org", PASSWORD)[0] == "OK"
        client.logout()
    finally:
        server.stop()


def peak_rss_kib(server: RunningServer) -> int:
    """VmHWM: the most resident memory the server process has ever had."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_nested_multipart_bomb_from_port_25(tmp_path: Path) -> None:
    """99 nested multipart/mixed levels around 8 MB, accepted over SMTP from anyone:
    BODYSTRUCTURE and SEARCH BODY cost a small multiple of the message (each level once
    copied the rest of it: 100 times the size), and another session is served meanwhile."""
    server = start_imap_server(tmp_path / "bomb", users=("dave@example.org",))
    try:
        head = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n"
                        % (i, i + 1) for i in range(99))
        leaf = (b"x" * 76 + b"\r\n") * 100_000 + b"bottom\r\n"
        message = (b"From: a@example.com\r\nSubject: bomb\r\n"
                   b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
                   + head + b"--b99\r\nContent-Type: text/plain\r\n\r\n" + leaf)
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as smtp:
            assert smtp.sendmail("a@example.com", ["dave@example.org"], message) == {}
        login = b'LOGIN dave@example.org "' + PASSWORD.encode() + b'"'
        fetcher, other = Line(server), Line(server)
        for client in (fetcher, other):
            assert client.command(b"a", login)[-1].startswith(b"a OK")
            assert client.command(b"b", b"SELECT INBOX")[-1].startswith(b"b OK")
        rss_before = rss_kib(server)
        fetcher.send(b"c FETCH 1 (BODYSTRUCTURE)\r\nd SEARCH BODY bottom\r\n")
        assert other.command(b"n", b"NOOP") == [b"n OK Noop completed"]
        fetched = fetcher.until(b"c")
        assert fetched[-1] == b"c OK Fetch completed"
        structure = b"".join(fetched[:-1])
        assert structure.count(b'"mixed"') == 100
        assert (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d NIL NIL NIL NIL)'
                % (len(leaf), leaf.count(b"\n"))) in structure
        assert fetcher.until(b"d") == [b"* SEARCH 1", b"d OK Search completed"]
        assert other.command(b"m", b"NOOP") == [b"m OK Noop completed"]
        grown = peak_rss_kib(server) - rss_before
        assert grown < 8 * len(message) // 1024, f"{grown} KiB for a {len(message)} B message"
    finally:
        server.stop()


def test_client_id_reaches_the_log_cut_and_printable(tmp_path: Path) -> None:
    """RFC 2971 ID values are the client's own text: CR, LF and ESC in a literal (which
    may hold anything but NUL) never reach the log raw, nor a value of any length."""
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        session = Session(tmp_path)
        session.take()
        value = b"Evil\r\n\x1b[2J\x1b]0;owned\x07" + b"v" * 5000
        reply = session.command(b'a ID ("name" {%d+}\r\n' % len(value) + value
                                + b' "version" "1\x7f")')
        assert reply[-1] == b"a OK Id completed"
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = [formatEvent(e) for e in events if "client id" in str(e.get("log_format"))]
    assert "client id name=Evil???[2J?]0;owned?vvvv" in line
    assert len(line.encode()) < 1000 and line.endswith("...")
    assert re.search("[\x00-\x1f\x7f-\x9f]", line) is None
