"""RETR of big messages, sent a chunk at a time (pop3/stream.py), and the read-ahead's
budget shared by all sessions (pop3/readahead.py): exact bytes, flow control, files
closed, memory bounded. Same StringTransport harness as test_pop3_session.py, with a
transport that pauses its producer when its buffer is full, as Twisted's TCP one does."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from test_pop3_maildrop import reference_wire
from test_pop3_session import Client, Harness, fill
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailserver.interfaces import MessageGone
from mailserver.pop3 import maildrop, readahead
from mailserver.store import maildrop as store_maildrop

#: The most one chunk can be on the wire (WireReader: a carried partial line, at most
#: a read, plus one read whose LFs all become CRLF).
WIRE_CHUNK = 3 * maildrop.CHUNK_OCTETS

#: Twisted's FileDescriptor.bufferSize: the write buffer size that pauses the producer.
BUFFER = 64 * 1024


class FillingTransport(StringTransport):
    """StringTransport that pauses its streaming producer once more than BUFFER octets
    wait (FileDescriptor.write does), and resumes it when the test reads them all."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > BUFFER \
                and self.producerState != "paused":
            self.producerState = "paused"
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The client reads everything; the transport says so to its producer."""
        out = self.value()
        self.clear()
        if self.producerState == "paused":
            self.producerState = "producing"
            self.producer.resumeProducing()
        return out


def connect(pop: Harness) -> tuple[Client, FillingTransport]:
    protocol = pop.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4000))
    transport = FillingTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
    protocol.callLater = pop.clock.callLater  # type: ignore[method-assign]
    protocol.makeConnection(transport)
    client = Client(protocol, transport)
    assert client.lines() == ["+OK mailserver POP3 server ready."]
    client.login()
    return client, transport


@pytest.fixture
def pop(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def big_message(octets: int, seed: int = 1) -> bytes:
    """Lines of all lengths, some beginning with a dot, one longer than a chunk, and
    no final newline: every case the chunking has to get right."""
    rng = random.Random(seed)
    parts = [b"Subject: big\n\n", b"x" * (maildrop.CHUNK_OCTETS + 10) + b"\n"]
    size = sum(len(p) for p in parts)
    while size < octets:
        line = (b"." if rng.random() < 0.2 else b"") + b"y" * rng.randint(0, 120) + b"\n"
        parts.append(line)
        size += len(line)
    parts.append(b".last line without newline")
    return b"".join(parts)


def open_files() -> set[str]:
    """The paths this process has open (the server's session runs in it)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor, closed meanwhile
    return found


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 64])
def test_wire_reader_chunks_join_to_the_line_by_line_definition(tmp_path: Path,
                                                              chunk: int) -> None:
    """Chunk edges anywhere (inside a CRLF, before a dot, in a long line): the chunks
    joined are RFC 1939 3's wire form of the whole file."""
    rng = random.Random(chunk)
    for i in range(300):
        stored = bytes(rng.choice(b"a..\n\r") for _ in range(rng.randint(0, 40)))
        path = tmp_path / f"m{i}"
        path.write_bytes(stored)
        reader = maildrop.WireReader(os.open(path, os.O_RDONLY), chunk)
        out = b""
        while not reader.done:
            out += reader.next_chunk()
        assert out == reference_wire(stored) == maildrop.to_wire(stored), stored


def test_a_big_message_is_streamed_with_exact_bytes_and_flow_control(pop: Harness) -> None:
    stored = big_message(3 * 1024 * 1024)
    fill(pop, stored, b"Subject: small\n\nafter\n")
    c, transport = connect(pop)
    c.protocol.dataReceived(b"RETR 1\r\nRETR 2\r\n")
    # The client reads nothing: chunks are written until the buffer is full (here the
    # status line, the header, then the long line and what follows it), the next
    # chunk is read, and nothing more until the write buffer drains.
    first = transport.value()
    assert first.startswith(b"+OK ")
    assert BUFFER < len(first) <= WIRE_CHUNK + 100
    received = b""
    rounds = 0
    while b"after\r\n.\r\n" not in received:
        received += transport.drain()
        rounds += 1
        assert len(transport.value()) <= WIRE_CHUNK
    status, _, rest = received.partition(b"\r\n")
    assert status == b"+OK %d octets" % next(m.size for m in c.protocol.messages)
    assert rest == maildrop.to_wire(stored) + \
        b"+OK 25 octets\r\nSubject: small\r\n\r\nafter\r\n.\r\n"
    assert rounds > 10  # really sent a chunk at a time
    assert not any("/new/" in path for path in open_files())  # the file is closed


def test_a_client_that_drops_mid_stream_leaves_no_open_file(pop: Harness) -> None:
    [path] = fill(pop, big_message(2 * 1024 * 1024))
    c, transport = connect(pop)
    c.protocol.dataReceived(b"RETR 1\r\n")
    assert transport.value().startswith(b"+OK ")
    # The message file is open while its chunks are sent, closed when the client goes.
    assert [p for p in open_files() if "/new/" in p] == [str(path)]
    c.drop()
    assert not any("/new/" in p for p in open_files())
    # Not all of it was sent: no Seen flag.
    assert all(":2,S" not in p.name for p in (pop.maildir / "new").iterdir())


def test_a_streamed_retr_gets_seen_at_quit(pop: Harness) -> None:
    fill(pop, big_message(2 * 1024 * 1024))
    c, transport = connect(pop)
    c.protocol.dataReceived(b"RETR 1\r\n")
    while not transport.value().endswith(b"\r\n.\r\n"):
        transport.drain()
    transport.drain()
    assert c.send(b"QUIT\r\n") == ["+OK Logging out."]
    assert [p.name.endswith(":2,S") for p in (pop.maildir / "cur").iterdir()] == [True]


def test_a_big_message_gone_or_unreadable_is_answered_err(pop: Harness) -> None:
    paths = fill(pop, big_message(2 * 1024 * 1024), big_message(2 * 1024 * 1024, 2))
    c, transport = connect(pop)
    paths[0].unlink()
    paths[1].unlink()
    paths[1].mkdir()  # os.read fails with EISDIR before anything is sent
    assert c.send(b"RETR 1\r\nRETR 2\r\n") == [
        "-ERR Message no longer exists (expunged by another session).",
        "-ERR [SYS/TEMP] Cannot read this message; try again later."]


def test_open_file_follows_a_rename_and_says_gone(tmp_path: Path) -> None:
    path = fill_dir(tmp_path, b"Subject: x\n\nbody\n")
    drop = store_maildrop.open_maildir(tmp_path)
    try:
        os.rename(path, tmp_path / "cur" / (path.name + ":2,S"))
        fd = drop.open_file(1)
        assert os.read(fd, 100) == b"Subject: x\n\nbody\n"
        os.close(fd)
        (tmp_path / "cur" / (path.name + ":2,S")).unlink()
        with pytest.raises(MessageGone):
            drop.open_file(1)
    finally:
        drop.close()


def fill_dir(maildir: Path, content: bytes) -> Path:
    from pop3_helpers import put_message
    return put_message(maildir, content)


def test_read_ahead_of_all_sessions_stays_within_the_shared_budget(tmp_path: Path) -> None:
    """Ten sessions downloading at once: together they hold no more than the budget
    read ahead, plus what each may read when it is spent (a small batch, or the one
    message it is asked for), and every octet taken is given back when they close."""
    from twisted.internet.defer import Deferred

    size = 300 * 1024
    messages = [store_maildrop.Message("new", f"m{i}", f"m{i}", size, f"m{i}")
                for i in range(100)]
    budget = readahead.Budget(4 * 1024 * 1024)
    jobs: list[tuple[Deferred[list[bytes]], list[int]]] = []

    def run(fn: object, drop: object, batch: list[int]) -> Deferred[list[bytes]]:
        d: Deferred[list[bytes]] = Deferred()
        jobs.append((d, batch))
        return d

    drops = [store_maildrop.Maildrop(tmp_path, None, list(messages))  # type: ignore[arg-type]
             for _ in range(10)]
    readers = [readahead.ReadAhead(run, drop, budget) for drop in drops]
    for r in readers:
        r.wait(1, range(2, 101))
    held = sum(sum(messages[n - 1].size for n in batch) for _, batch in jobs)
    assert held <= budget.octets + 10 * max(size, readahead.MIN_BATCH_OCTETS)
    assert len(jobs) == 10 and len(jobs[-1][1]) == 1  # the last ones got one message
    assert budget.octets - budget.free == held
    for d, batch in jobs:
        d.callback([b"x" * size for _ in batch])
    for r in readers:
        r.close()
    assert budget.free == budget.octets


def test_a_big_message_is_never_read_ahead(pop: Harness) -> None:
    fill(pop, b"Subject: 1\n\none\n", big_message(2 * 1024 * 1024), b"Subject: 3\n\nthree\n")
    c, transport = connect(pop)
    read: list[int] = []
    real = maildrop.read_replies

    def spy(drop: object, numbers: list[int]) -> list[bytes | None]:
        read.extend(numbers)
        return real(drop, numbers)  # type: ignore[arg-type]

    maildrop.read_replies = spy  # type: ignore[assignment]
    try:
        c.protocol.dataReceived(b"RETR 1\r\nRETR 2\r\nRETR 3\r\n")
        out = b""
        while not out.endswith(b"three\r\n.\r\n"):
            out += transport.drain()
    finally:
        maildrop.read_replies = real  # type: ignore[assignment]
    assert 2 not in read and out.count(b"+OK") == 3


def test_a_batch_is_filed_whole_before_its_waiter_refills(pop: Harness) -> None:
    """The reply waited for was sent (and the next batch started) while the rest of
    its batch was not yet filed as read: those messages were read a second time (129
    of a 3,000-message download) and counted twice in the shared budget, which then
    leaked until every session of the process read one message per disk job."""
    budget = readahead.SHARED
    free = budget.free
    fill(pop, *(b"Subject: %d\n\nbody %d\n" % (i, i) for i in range(1, 201)))
    c, transport = connect(pop)
    read: list[int] = []
    real = maildrop.read_replies

    def spy(drop: object, numbers: list[int]) -> list[bytes | None]:
        read.extend(numbers)
        return real(drop, numbers)  # type: ignore[arg-type]

    maildrop.read_replies = spy  # type: ignore[assignment]
    pop.disk.hold = True
    try:
        sent = 0
        while sent < 200:
            c.protocol.dataReceived(b"".join(b"RETR %d\r\n" % n
                                             for n in range(sent + 1, sent + 33)))
            sent += 32
            while pop.disk.held:
                pop.disk.release()
        assert transport.drain().count(b"\r\n.\r\n") == 200
        assert sorted(read) == list(range(1, 201))  # each message read once
        c.protocol.dataReceived(b"QUIT\r\n")
        pop.disk.release()
    finally:
        maildrop.read_replies = real  # type: ignore[assignment]
    assert budget.free == free  # all given back
