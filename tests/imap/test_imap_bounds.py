"""Bounds a hostile or unlucky client meets over real sockets: LIST patterns with
hundreds of wildcards, the folder count, APPENDLIMIT at and past the limit, SEARCH
with too many keys; and a folder deleted and made again showing its own sizes."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest
from imap_helpers import PASSWORD, Line, RunningServer, start_imap_server

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
        assert client.command(b"c", b"CREATE " + name.encode()) == [b"c OK Create completed"]
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
        assert client.command(b"c", b"CREATE f%d" % n) == [b"c OK Create completed"]
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
    assert client.command(b"c", b"CREATE last") == [b"c OK Create completed"]
    listed = client.command(b"l", b'LIST "" *')
    assert len(listed) == 1 + FOLDERS + 1 and listed[-1] == b"l OK List completed"
