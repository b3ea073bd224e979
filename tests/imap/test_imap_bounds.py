"""Bounds a hostile or unlucky client meets over real sockets: LIST patterns with
hundreds of wildcards, the folder count, APPENDLIMIT at and past the limit, SEARCH
with too many keys; and a folder deleted and made again showing its own sizes."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from imap_helpers import Line, RunningServer, start_imap_server

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
def lines(bounded: RunningServer) -> Iterator[Callable[[], Line]]:
    opened: list[Line] = []

    def make() -> Line:
        client = Line(bounded)
        client.command(b"l", b'LOGIN %s "correct horse battery staple"' % USER.encode())
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


# -- LIST --------------------------------------------------------------------------------

LONG = ["a" * 240, "ab" * 100 + "x", ".".join(["abc"] * 20), "long." + "b" * 200]


@pytest.mark.timeout(120)  # a guard only: the regex took hours here (exponential)
def test_list_with_hundreds_of_wildcards_is_answered_and_others_are_served(
        bounded: RunningServer, lines: Callable[[], Line]) -> None:
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


def test_list_pattern_length_is_capped(lines: Callable[[], Line]) -> None:
    client = lines()
    assert client.command(b"a", b'LIST "" ' + b"*" * 1024)[-1] == b"a OK List completed"
    assert client.command(b"b", b'LIST "" ' + b"*" * 1025) == [
        b"b NO [LIMIT] Mailbox pattern too long (1024 octets at most)"]
    assert client.command(b"c", b'LSUB "' + b"x" * 1000 + b'" ' + b"%" * 100) == [
        b"c NO [LIMIT] Mailbox pattern too long (1024 octets at most)"]
    assert client.command(b"d", b"NOOP") == [b"d OK Noop completed"]
