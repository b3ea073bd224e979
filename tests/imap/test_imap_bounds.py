"""Bounds a hostile or unlucky client meets over real sockets: LIST patterns with
hundreds of wildcards, the folder count, APPENDLIMIT at and past the limit, SEARCH
with too many keys; and a folder deleted and made again showing its own sizes."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from imap_helpers import PASSWORD, Line, RunningServer, connect, start_imap_server

USER = "alice@example.org"
MESSAGE_SIZE = 4096
FOLDERS = 40


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_imap_server(
        tmp_path_factory.mktemp("bounds"),
        limits={"message_size": MESSAGE_SIZE, "folders_per_user": FOLDERS})
    yield server
    server.stop()


@pytest.fixture
def lines(bounded: RunningServer) -> Iterator[Callable[..., Line]]:
    opened: list[Line] = []

    def make(user: str = USER) -> Line:
        client = Line(bounded)
        assert client.command(b"l", b'LOGIN %s "%s"' % (
            user.encode(), PASSWORD.encode()))[-1].startswith(b"l OK")
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


# -- LIST --------------------------------------------------------------------------------

LONG = ["a" * 240, "ab" * 100 + "x", ".".join(["abc"] * 20), "long." + "b" * 200]


@pytest.mark.timeout(120)  # a guard only: the regex took hours here (exponential)
def test_list_with_hundreds_of_wildcards_is_answered_and_others_are_served(
        bounded: RunningServer, lines: Callable[..., Line]) -> None:
    """`LIST "" "<60 stars>x"` held the reactor 16.9 s (a new SMTP connection waited
    23.6 s for its banner). Each pattern here has hundreds of wildcards, against names
    of up to 240 characters; while the first is on its way, another IMAP session and
    a new SMTP connection are answered."""
    client, other = lines(), lines()
    for name in LONG:
        assert client.command(b"c", b"CREATE " + name.encode())[-1].startswith(b"c OK [MAILBOXID (")
    stars = b"*" * 600 + b"x"
    client.send(b"l1 LIST \"\" " + stars + b"\r\n")
    assert other.command(b"n", b"NOOP") == [b"n OK Noop completed"]
    with socket.create_connection(bounded.address("smtp"), timeout=30) as smtp:
        assert smtp.recv(100).startswith(b"220 ")
    assert client.until(b"l1") == [
        b'* LIST (\\HasNoChildren) "." ' + ("ab" * 100 + "x").encode(), b"l1 OK List completed"]

    def names(pattern: bytes) -> list[bytes]:
        reply = client.command(b"l", b'LIST "" ' + pattern)
        assert reply[-1] == b"l OK List completed"
        return [line.rsplit(b" ", 1)[1] for line in reply[:-1]]

    assert names(b"*a" * 100 + b"*") == [b"a" * 240, b"ab" * 100 + b"x"]  # 100 a's or more
    # "%" never crosses the ".": not long.bbb..., nor abc.abc...
    assert names(b"%" * 300 + b"b" + b"%" * 300) == [b"ab" * 100 + b"x", b"abc"]
    assert names(b"*%" * 300 + b"c") == [b"abc", *(".".join(["abc"] * n).encode()
                                                  for n in range(2, 21))]
    assert names(b"long.%" + b"%" * 500) == [b"long." + b"b" * 200]
    assert names(b"%" * 1000) == [b"INBOX", b"Drafts", b"Junk", b"Sent", b"Trash",
                                  b"a" * 240, b"ab" * 100 + b"x", b"abc", b"long"]
    assert client.command(b"u", b"SUBSCRIBE long." + b"b" * 200)[-1] == b"u OK Subscribe completed"
    assert client.command(b"s", b'LSUB "" ' + b"*%" * 300 + b"b") == [
        b'* LSUB (\\HasNoChildren) "." long.' + b"b" * 200, b"s OK Lsub completed"]
    client.command(b"u", b"UNSUBSCRIBE long." + b"b" * 200)
    for name in LONG:
        client.command(b"d", b"DELETE " + name.encode())


def test_list_pattern_length_is_capped(lines: Callable[..., Line]) -> None:
    client = lines()
    assert client.command(b"a", b'LIST "" ' + b"*" * 1024)[-1] == b"a OK List completed"
    assert client.command(b"b", b'LIST "" ' + b"*" * 1025) == [
        b"b NO [LIMIT] Mailbox pattern too long (1024 octets at most)"]
    assert client.command(b"c", b'LSUB "' + b"x" * 1000 + b'" ' + b"%" * 100) == [
        b"c NO [LIMIT] Mailbox pattern too long (1024 octets at most)"]
    assert client.command(b"d", b"NOOP") == [b"d OK Noop completed"]


# -- folders per user --------------------------------------------------------------------


def test_folder_limit(bounded: RunningServer, lines: Callable[..., Line]) -> None:
    """limits.folders_per_user (40 here): CREATE and RENAME past it are NO [LIMIT]
    (RFC 5530) and make nothing; DELETE makes room again."""
    client = lines("bob@example.org")
    for n in range(FOLDERS - 4):  # besides INBOX, a new user has 4 special-use folders
        assert client.command(b"c", b"CREATE f%d" % n)[-1].startswith(b"c OK [MAILBOXID (")
    before = sorted(os.listdir(bounded.maildir("bob@example.org")))
    refused = [b"c NO [LIMIT] Too many folders (40 at most)"]
    assert client.command(b"c", b"CREATE one.more") == refused
    assert client.command(b"c", b"CREATE f0.child") == refused
    assert client.command(b"r", b"RENAME f0 new.parent") == [refused[0].replace(b"c", b"r", 1)]
    assert client.command(b"r", b"RENAME INBOX saved") == [refused[0].replace(b"c", b"r", 1)]
    assert sorted(os.listdir(bounded.maildir("bob@example.org"))) == before
    assert client.command(b"c", b"CREATE f0") == [b"c NO [ALREADYEXISTS] Mailbox already exists"]
    assert client.command(b"r", b"RENAME f0 f1.child") == [b"r OK Rename completed"]
    assert client.command(b"d", b"DELETE f1.child") == [b"d OK Delete completed"]
    assert client.command(b"c", b"CREATE last")[-1].startswith(b"c OK [MAILBOXID (")
    listed = client.command(b"l", b'LIST "" *')
    assert len(listed) == 1 + FOLDERS + 1 and listed[-1] == b"l OK List completed"


# -- a folder made again -----------------------------------------------------------------


def test_folder_deleted_and_made_again_shows_its_own_sizes(bounded: RunningServer,
                                                           tmp_path: Path) -> None:
    """CREATE, APPEND, DELETE the same name three times with messages of different
    sizes: RFC822.SIZE, INTERNALDATE and SEARCH LARGER/SMALLER are those of the round's
    message (they stayed at the first round's in 3 runs of 4). What made it depend on
    timing: whether the new new/ and cur/ got the old inode numbers back (ext4 often
    does after rmtree + mkdir) and times the server had seen. Here they always do: the
    first round's directories (emptied) are put back in place of the new ones, with
    their times set back (os.utime)."""
    user = "carol@example.net"
    client = connect(bounded, user)
    folder = bounded.maildir(user, "Again")
    saved = tmp_path / "saved"
    first: dict[str, int] = {}
    validities = []
    try:
        for n, (body, date) in enumerate(((1500, "11-Feb-2020 10:00:00 +0000"),
                                          (90, "12-Mar-2021 11:00:00 +0000"),
                                          (700, "13-Apr-2022 12:00:00 +0000"))):
            assert client.create("Again")[0] == "OK"
            if first:
                _put_back_directories(folder, saved)
            data = b"Subject: round %d\r\n\r\n" % n + b"x" * body + b"\r\n"
            assert client.append("Again", "", f'"{date}"', data)[0] == "OK"
            for sub, mtime in first.items():
                os.utime(folder / sub, ns=(mtime, mtime))
            typ, answer = client.select("Again")
            assert typ == "OK" and answer == [b"1"]
            validities.append(client.response("UIDVALIDITY")[1][0])
            typ, fetched = client.fetch("1", "(RFC822.SIZE INTERNALDATE BODY.PEEK[])")
            assert typ == "OK"
            head, content = fetched[0]
            assert content == data
            assert b"RFC822.SIZE %d " % len(data) in head
            assert b'INTERNALDATE "%s"' % date.encode() in head
            assert client.search(None, f"LARGER {len(data) - 1}") == ("OK", [b"1"])
            assert client.search(None, f"SMALLER {len(data) + 1}") == ("OK", [b"1"])
            assert client.search(None, f"LARGER {len(data)}") == ("OK", [b""])
            assert client.search(None, f"SMALLER {len(data)}") == ("OK", [b""])
            assert client.close()[0] == "OK"
            if not first:
                first = {sub: os.stat(folder / sub).st_mtime_ns for sub in ("new", "cur")}
            _set_aside_directories(folder, saved)
            assert client.delete("Again")[0] == "OK"
    finally:
        client.logout()
    assert len(set(validities)) == 3


def _set_aside_directories(folder: Path, saved: Path) -> None:
    """Keep new/ and cur/ (emptied: same inodes) out of the folder; empty ones stand in."""
    saved.mkdir(exist_ok=True)
    for sub in ("new", "cur"):
        for name in os.listdir(folder / sub):
            os.unlink(folder / sub / name)
        os.rename(folder / sub, saved / sub)
        os.mkdir(folder / sub)


def _put_back_directories(folder: Path, saved: Path) -> None:
    """The folder made again gets the first round's directories (their inodes) back."""
    for sub in ("new", "cur"):
        os.rmdir(folder / sub)
        os.rename(saved / sub, folder / sub)


# -- APPENDLIMIT -------------------------------------------------------------------------


def octets(size: int) -> bytes:
    """A message of exactly `size` octets as transmitted, CRLF line ends included (RFC
    7889 counts those; stored with LF ends, the file is smaller)."""
    head = b"Subject: limit\r\n\r\n"
    body = (b"y" * 70 + b"\r\n") * ((size - len(head)) // 72)
    tail = size - len(head) - len(body)
    data = head + body + (b"y" * (tail - 2) + b"\r\n" if tail >= 2 else b"y" * tail)
    assert len(data) == size
    return data


def test_appendlimit_counts_octets_as_transmitted(bounded: RunningServer,
                                                  lines: Callable[..., Line]) -> None:
    """APPENDLIMIT=4096 (limits.message_size): a literal of exactly 4096 octets is
    stored, and reported with RFC822.SIZE 4096; 4097 is NO [TOOBIG] without a "+"
    (RFC 7889 4), or, sent as a non-synchronizing literal, BAD [TOOBIG] and BYE (RFC
    7888 4: the octets are on their way and are not read)."""
    client = lines("carol@example.net")
    assert b"APPENDLIMIT=%d" % MESSAGE_SIZE in client.command(b"c", b"CAPABILITY")[0]
    assert client.command(b"x", b"CREATE Limit")[-1].startswith(b"x OK [MAILBOXID (")
    exact = octets(MESSAGE_SIZE)
    assert exact.count(b"\r\n") > 50
    client.send(b"a APPEND Limit {%d}\r\n" % MESSAGE_SIZE)
    assert client.line() == b"+ Ready for literal data"
    client.send(exact + b"\r\n")
    assert client.line().startswith(b"a OK [APPENDUID ")
    client.send(b"b APPEND Limit {%d+}\r\n" % MESSAGE_SIZE + exact + b"\r\n")
    assert client.line().startswith(b"b OK [APPENDUID ")
    assert client.command(b"c", b"APPEND Limit {%d}" % (MESSAGE_SIZE + 1)) == [
        b"c NO [TOOBIG] Message too large"]
    assert client.command(b"s", b"SELECT Limit")[-1].startswith(b"s OK")
    assert client.command(b"f", b"FETCH 1:* RFC822.SIZE") == [
        b"* 1 FETCH (RFC822.SIZE 4096)", b"* 2 FETCH (RFC822.SIZE 4096)",
        b"f OK Fetch completed"]
    stored = bounded.messages("carol@example.net", "Limit")
    assert stored == [exact.replace(b"\r\n", b"\n")] * 2
    client.send(b"d APPEND Limit {%d+}\r\n" % (MESSAGE_SIZE + 1) + octets(MESSAGE_SIZE + 1))
    assert client.line() == b"d BAD [TOOBIG] Literal too large"
    assert client.line() == b"* BYE Literal too large"
    assert client.closed()
