"""Defects found in the POP3 review (RFC 1939, 2449, 5034), one test each; every test
failed before its fix. Same StringTransport harness as test_pop3_session.py."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pop3_helpers import put_message
from test_pop3_session import MSG1, MSG2, Harness, fill

from mailserver.core.flow import CLOSE_GRACE
from mailserver.pop3 import maildrop
from mailserver.store import maildrop as store_maildrop


@pytest.fixture
def pop(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_top_of_a_foreign_crlf_file_stops_after_the_header(pop: Harness) -> None:
    """RFC 1939 7 TOP: a Maildir written by another MDA with CRLF line ends still has
    its header/body split found (it used to answer with the whole message)."""
    stored = b"Subject: crlf\r\nX: y\r\n\r\nb1\r\nb2\r\n"
    put_message(pop.maildir, stored, name="1700000000.foreign.host")
    c = pop.connect()
    c.login()
    c.protocol.dataReceived(b"TOP 1 0\r\n")
    assert c.raw() == b"+OK\r\nSubject: crlf\r\nX: y\r\n\r\n.\r\n"
    c.protocol.dataReceived(b"TOP 1 1\r\n")
    assert c.raw() == b"+OK\r\nSubject: crlf\r\nX: y\r\n\r\nb1\r\n.\r\n"


def test_pass_must_immediately_follow_user(pop: Harness) -> None:
    """RFC 1939 7: PASS "may only be given ... immediately after a successful USER";
    any other command in between forgets the name."""
    fill(pop, MSG1)
    c = pop.connect()
    assert c.send(b"USER alice@example.org\r\nCAPA\r\n")[0] == "+OK"
    assert c.send(b"PASS secret\r\n") == ["-ERR No username given."]
    # USER, then a cancelled AUTH: the USER is forgotten as well.
    assert c.send(b"USER alice@example.org\r\nAUTH PLAIN\r\n*\r\nPASS secret\r\n") == [
        "+OK", "+ ", "-ERR Authentication cancelled.", "-ERR No username given."]
    # USER twice: the second name counts.
    assert c.send(b"USER bob@example.org\r\nUSER alice@example.org\r\nPASS secret\r\n") \
        == ["+OK", "+OK", "+OK Logged in, 1 messages."]


def test_an_overlong_sasl_response_ends_the_exchange(pop: Harness) -> None:
    """RFC 5034 4: a refused (too long) continuation line ends the AUTH exchange; the
    next line is a command again, not a SASL response."""
    fill(pop, MSG1)
    c = pop.connect()
    assert c.send(b"AUTH PLAIN\r\n") == ["+ "]
    assert c.send(b"A" * 3000 + b"\r\n") == ["-ERR Line too long."]
    assert c.send(b"CAPA\r\n")[0] == "+OK Capability list follows"
    token = base64.b64encode(b"\0alice@example.org\0secret")
    assert c.send(b"AUTH PLAIN " + token + b"\r\n") == ["+OK Logged in, 1 messages."]


def test_drop_during_update_keeps_the_lock_until_the_deletions_are_done(
        pop: Harness) -> None:
    """RFC 1939 8: the lock keeps other sessions out until UPDATE is over; a client
    that hangs up right after QUIT must not let the next login snapshot messages that
    are being deleted."""
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    c.send(b"DELE 1\r\n")
    pop.disk.hold = True
    c.send(b"QUIT\r\n")  # the UPDATE job is held
    c.drop()
    pop.disk.hold = False
    second = pop.connect()
    assert second.login()[-1] == "-ERR [IN-USE] Mailbox is locked by another POP3 session."
    pop.disk.release()  # the deletions finish, then the lock goes
    assert not paths[0].exists() and paths[1].exists()
    assert second.login()[-1] == "+OK Logged in, 1 messages."


def test_measured_size_counts_a_crlf_split_across_read_chunks(tmp_path: Path) -> None:
    """LIST must equal the octets RETR sends (RFC 1939 11) for a foreign name without W=,
    also when a CRLF straddles the 1 MiB read boundary of the measurement."""
    stored = b"Subject: big\r\n\r\n" + b"x" * ((1 << 20) - 17) + b"\r\nend\r\n"
    assert stored[(1 << 20) - 1:(1 << 20) + 1] == b"\r\n"
    put_message(tmp_path, stored, name="1700000000.big.host")
    [message] = store_maildrop.snapshot(tmp_path)
    assert message.size == len(maildrop.wire_body(stored)) == len(stored)


def test_a_failed_seen_flag_does_not_cancel_the_deletions(
        pop: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 1939 6: QUIT removes the messages marked deleted; the Seen flag is our
    extra, and a rename that fails (EACCES, EROFS, ...) must not keep them."""
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    c.protocol.dataReceived(b"RETR 2\r\n")
    c.raw()

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr(os, "rename", refuse)
    assert c.send(b"DELE 1\r\nQUIT\r\n") == [
        "+OK Message 1 marked to be deleted.", "+OK Logging out, messages deleted: 1."]
    assert not paths[0].exists() and paths[1].exists()


def test_state_machine_corners(pop: Harness) -> None:
    """Regression net for what the review checked and found right."""
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    assert c.send(b"quit\r\n") == ["+OK Logging out."]  # no UPDATE before login
    c = pop.connect()
    assert "USER" in c.send(b"CAPA\r\n")
    assert c.send(b"AUTH PLAIN =\r\n") == [
        "-ERR Invalid AUTH PLAIN data: PLAIN wants authzid NUL authcid NUL password."]
    c.login()
    capa = c.send(b"capa\r\n")
    assert "USER" not in capa and "SASL PLAIN" not in capa and "PIPELINING" in capa
    assert c.send(b"list 01 \r\n") == ["+OK 1 29"]
    assert c.send(b"UIDL +1\r\n") == ["-ERR Invalid message number"]
    assert c.send(b"DELE 2\r\nLIST 2\r\nUIDL 2\r\nTOP 2 0\r\n") == [
        "+OK Message 2 marked to be deleted.", "-ERR Message 2 is deleted.",
        "-ERR Message 2 is deleted.", "-ERR Message 2 is deleted."]
    assert c.send(b"UIDL\r\n") == ["+OK", f"1 {paths[0].name.split(',')[0]}", "."]
    assert c.send(b"RSET\r\nSTAT\r\n") == ["+OK 2 messages.", "+OK 2 63"]
    c.protocol.dataReceived(b"TOP 1 99\r\n")
    assert c.raw() == b"+OK\r\nSubject: one\r\n\r\nfirst\r\n..dot\r\n.\r\n"


def test_top_and_retr_of_a_body_without_final_newline(pop: Harness) -> None:
    put_message(pop.maildir, b"Subject: x\n\n.\nno newline")
    c = pop.connect()
    c.login()
    c.protocol.dataReceived(b"RETR 1\r\n")
    assert c.raw() == b"+OK 27 octets\r\nSubject: x\r\n\r\n..\r\nno newline\r\n.\r\n"
    c.protocol.dataReceived(b"TOP 1 5\r\n")
    assert c.raw() == b"+OK\r\nSubject: x\r\n\r\n..\r\nno newline\r\n.\r\n"


def test_timeout_aborts_a_client_that_reads_nothing(pop: Harness) -> None:
    """A client that stops reading in the middle of a download: loseConnection would
    wait for the write buffer to drain, forever, holding the [IN-USE] lock and the
    message in memory. The autologout aborts the connection instead."""
    fill(pop, MSG1)
    c = pop.connect()
    c.login()
    c.protocol.pauseProducing()  # the transport's write buffer is full
    pop.clock.advance(pop.factory.transaction_timeout + 1)
    assert c.transport.disconnected


def test_idle_timeout_then_a_close_that_never_completes_is_aborted(pop: Harness) -> None:
    c = pop.connect()
    pop.clock.advance(pop.factory.login_timeout + 1)
    assert c.lines() == ["-ERR Disconnected for inactivity."]
    assert c.transport.disconnecting and not c.transport.disconnected
    # The peer never reads our last words, so the close never finishes: cut it off.
    pop.clock.advance(CLOSE_GRACE + 1)
    assert c.transport.disconnected


def test_read_ahead_holds_at_most_two_batches_of_octets(tmp_path: Path) -> None:
    """readahead's promise (two batches, 2 x BATCH_OCTETS): with 2 MiB messages each
    in-order RETR used to start a 2-message batch and consume one, so the cache grew to
    LOW_WATER messages (128 MiB) for one session."""
    from twisted.internet.defer import succeed

    from mailserver.pop3 import readahead

    size = 2 * 1024 * 1024
    messages = [store_maildrop.Message("new", f"m{i}", f"m{i}", size, f"m{i}")
                for i in range(200)]
    drop = store_maildrop.Maildrop(tmp_path, None, messages)  # type: ignore[arg-type]

    def run(fn: object, maildrop: object, batch: list[int]) -> object:
        return succeed([b"x" * messages[n - 1].size for n in batch])

    reader = readahead.ReadAhead(run, drop)
    most = 0
    for n in range(1, len(messages) + 1):
        coming = range(n + 1, len(messages) + 1)
        ready, reply = reader.take(n)
        if not ready:
            reader.wait(n, coming)
        reader.refill(coming)
        most = max(most, sum(len(r or b"") for r in reader._ready.values()))
    assert most <= 2 * readahead.BATCH_OCTETS


def test_foreign_files_with_poplib(pop_server: object, mailbox: Callable[..., Path]) -> None:
    """The real server and poplib: foreign Maildir files (no W=, CRLF or LF, no final
    newline, NUL, lone dots) have LIST sizes equal to what RETR sends before stuffing
    (RFC 1939 11), and TOP of the CRLF file stops at the header."""
    from test_pop3_clients import retr_bytes, stls_login

    maildir = mailbox()
    files = [
        b"Subject: crlf\r\n\r\n.\r\n..x\r\nbody\r\n",
        b"Subject: lf\n\n.\n..\nno final newline",
        b"Subject: nul\n\na\0b\n",
        b"",
    ]
    for i, content in enumerate(files):
        put_message(maildir, content, name=f"{1700000000 + i}.foreign{i}.host")
    pop = stls_login(pop_server)  # type: ignore[arg-type]
    try:
        _resp, listing, _ = pop.list()
        sizes = [int(line.split()[1]) for line in listing]
        for n in range(1, len(files) + 1):
            sent = retr_bytes(pop, n)
            assert sent.replace(b"\r\n", b"\n") == files[n - 1].replace(b"\r\n", b"\n") + (
                b"\n" if files[n - 1] and not files[n - 1].endswith(b"\n") else b"")
            trailing = 2 if files[n - 1] and not files[n - 1].endswith(b"\n") else 0
            assert sizes[n - 1] == len(sent) - trailing
        _resp, top, _ = pop.top(1, 0)
        assert top == [b"Subject: crlf", b""]
        pop.quit()
    finally:
        pop.close()


def test_one_unreadable_message_does_not_fail_its_read_ahead_batch(pop: Harness) -> None:
    """A file that cannot be read (EISDIR here; EACCES or EIO alike) used to fail the
    whole read-ahead job, so every RETR of the batch got -ERR, again and again."""
    paths = fill(pop, MSG1, MSG2, MSG1)
    paths[1].unlink()
    paths[1].mkdir()  # a name like a message, but os.read fails
    c = pop.connect()
    c.login()
    c.protocol.dataReceived(b"RETR 1\r\nRETR 2\r\nRETR 3\r\n")
    assert c.raw() == (
        b"+OK 29 octets\r\nSubject: one\r\n\r\nfirst\r\n..dot\r\n.\r\n"
        b"-ERR [SYS/TEMP] Cannot read this message; try again later.\r\n"
        b"+OK 29 octets\r\nSubject: one\r\n\r\nfirst\r\n..dot\r\n.\r\n")
    assert c.send(b"QUIT\r\n") == ["+OK Logging out."]
    assert paths[1].is_dir()  # not received, so not marked Seen (not renamed)


def test_no_descriptor_is_left_open_on_any_exit_path(pop: Harness) -> None:
    """The lock file and message files are closed after QUIT, a drop, [IN-USE], a
    timeout, a server stop and a drop during UPDATE (counted in /proc/self/fd)."""
    fill(pop, MSG1, MSG2)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    c = pop.connect()
    c.login()
    c.send(b"RETR 1\r\nTOP 2 0\r\nQUIT\r\n")
    c.drop()
    c = pop.connect()
    c.login()
    busy = pop.connect()
    assert busy.login()[-1].startswith("-ERR [IN-USE]")
    busy.drop()
    c.drop()
    c = pop.connect()
    c.login()
    pop.clock.advance(pop.factory.transaction_timeout + 1)
    c.drop()
    c = pop.connect()
    c.login()
    pop.factory.shut_down()
    c.drop()
    pop.factory.shutting_down = False
    c = pop.connect()
    c.login()
    pop.disk.hold = True
    c.send(b"DELE 1\r\nQUIT\r\n")
    c.drop()
    pop.disk.release()
    assert open_fds() == before


def test_a_pipelined_flood_during_a_pending_login_stops_the_reading(pop: Harness) -> None:
    """RFC 2449 6.6 pipelining is bounded: while the login waits for the disk, more than
    MAX_PENDING_INPUT of queued commands pauses the socket; all are answered in order
    once the login is done, and reading resumes."""
    from mailserver.pop3.server import MAX_PENDING_INPUT

    fill(pop, MSG1)
    pop.disk.hold = True
    c = pop.connect()
    flood = b"NOOP\r\n" * (MAX_PENDING_INPUT // 6 + 100)
    assert c.send(b"USER alice@example.org\r\nPASS secret\r\n" + flood) == ["+OK"]
    assert c.transport.producerState == "paused"
    pop.disk.hold = False
    pop.disk.release()
    replies = c.lines()
    assert replies[0] == "+OK Logged in, 1 messages."
    assert replies[1:] == ["+OK"] * (MAX_PENDING_INPUT // 6 + 100)
    assert c.transport.producerState == "producing"


def test_a_retr_still_reading_when_the_client_drops_sets_no_seen(pop: Harness) -> None:
    """Seen on a drop is for what was sent (docs/pop3.md): a RETR whose file was still
    being read when the connection dropped used to get the flag all the same."""
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    c.protocol.dataReceived(b"RETR 1\r\n")
    pop.disk.hold = True
    c.protocol.dataReceived(b"RETR 2\r\n")  # only a later read-ahead batch has it
    c.drop()
    pop.disk.hold = False
    pop.disk.release()
    assert not paths[0].exists() and paths[1].exists()  # 1 went to cur/ with S, 2 not
    assert [p.name for p in (pop.maildir / "cur").iterdir()] == [paths[0].name + ":2,S"]
