"""Hostile input against the real server: each gets the right -ERR, the server stays up
and keeps serving, and memory stays bounded."""

from __future__ import annotations

import concurrent.futures
import poplib
from collections.abc import Callable
from pathlib import Path

from pop3_helpers import (
    PASSWORD,
    RawPop3,
    client_tls,
    message,
    put_message,
    start_pop3_server,
)
from server_harness import RunningServer

ALICE = b"alice@example.org"


def logged_in(server: RunningServer) -> RawPop3:
    raw = RawPop3(server.address("pop3s"))
    raw.sock = client_tls().wrap_socket(raw.sock, server_hostname="localhost")
    assert raw.line().startswith(b"+OK")
    assert raw.command(b"USER " + ALICE) == b"+OK"
    assert raw.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK Logged in")
    return raw


def still_serving(server: RunningServer) -> None:
    pop = poplib.POP3_SSL(*server.address("pop3s"), context=client_tls(), timeout=60)
    pop.user(ALICE.decode())
    pop.pass_(PASSWORD)
    pop.quit()


def test_commands_before_login(pop_server: RunningServer) -> None:
    raw = RawPop3(pop_server.address("pop3"))
    assert raw.line().startswith(b"+OK")
    for command in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"TOP 1 1", b"UIDL", b"RSET"):
        assert raw.command(command) == b"-ERR Unknown command or not allowed before login."
    assert raw.command(b"USER alice@example.org") == (
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) "
        b"connections.")
    assert raw.command(b"QUIT") == b"+OK Logging out."
    assert raw.closed()


def test_bad_message_numbers(pop_server: RunningServer,
                             mailbox: Callable[..., Path]) -> None:
    mailbox(message(1), message(2))
    raw = logged_in(pop_server)
    assert raw.command(b"DELE 2") == b"+OK Message 2 marked to be deleted."
    for command, reply in ((b"RETR 0", b"-ERR Invalid message number"),
                           (b"RETR -1", b"-ERR Invalid message number"),
                           (b"LIST 3", b"-ERR There's no message 3."),
                           (b"RETR 2", b"-ERR Message 2 is deleted."),
                           (b"TOP 2 0", b"-ERR Message 2 is deleted."),
                           (b"UIDL x", b"-ERR Invalid message number")):
        assert raw.command(command) == reply
    assert raw.command(b"STAT").startswith(b"+OK 1 ")
    raw.close()


def test_overlong_line_nul_and_a_1mib_line(pop_server: RunningServer) -> None:
    raw = RawPop3(pop_server.address("pop3"))
    raw.line()
    assert raw.command(b"CAPA " + b"x" * 300) == b"-ERR Line too long."
    assert raw.command(b"USER a\0b") == b"-ERR NUL octet in command"
    raw.send(b"A" * (1 << 20))  # no CRLF: discarded as it arrives
    assert raw.command(b"") == b"-ERR Line too long."
    assert raw.command(b"CAPA") == b"+OK Capability list follows"
    raw.close()
    still_serving(pop_server)


def test_stls_injection_is_discarded(pop_server: RunningServer) -> None:
    raw = RawPop3(pop_server.address("pop3"))
    raw.line()
    # The classic injection: commands pipelined after STLS in the same packet.
    raw.send(b"STLS\r\nCAPA\r\nUSER alice@example.org\r\n")
    assert raw.line() == b"+OK Begin TLS negotiation now."
    raw.starttls()
    # Only QUIT's answer arrives over TLS: the injected CAPA and USER were never run.
    assert raw.command(b"QUIT") == b"+OK Logging out."
    assert raw.closed() and raw.buffer == b""


def test_stls_twice_and_after_login(pop_server: RunningServer,
                                    mailbox: Callable[..., Path]) -> None:
    raw = RawPop3(pop_server.address("pop3"))
    raw.line()
    assert raw.command(b"STLS") == b"+OK Begin TLS negotiation now."
    raw.starttls()
    assert raw.command(b"STLS") == b"-ERR TLS is already active."
    raw.close()
    mailbox(message(1))
    secure = logged_in(pop_server)
    assert secure.command(b"STLS") == b"-ERR STLS not allowed after login."
    secure.close()


def test_thirty_wrong_passwords(pop_server: RunningServer) -> None:
    """10 connections x 3 wrong passwords (each connection closes after its 3rd)."""

    def guess() -> list[bytes]:
        raw = RawPop3(pop_server.address("pop3s"), timeout=120)  # failures wait a growing delay
        raw.sock = client_tls().wrap_socket(raw.sock, server_hostname="localhost")
        raw.line()
        raw.send(b"USER alice@example.org\r\nPASS wrong\r\n" * 3)
        replies = [raw.line() for _ in range(7)]
        assert raw.closed()
        return replies

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: guess(), range(10)))
    failed = b"-ERR [AUTH] Authentication failed."
    for replies in results:
        assert replies == [b"+OK", failed, b"+OK", failed, b"+OK", failed,
                           b"-ERR [AUTH] Too many authentication failures."]
    still_serving(pop_server)


def test_too_many_errors_close_the_connection(pop_server: RunningServer) -> None:
    raw = RawPop3(pop_server.address("pop3"))
    raw.line()
    raw.send(b"JUNK\r\n" * 25)
    replies = [raw.line() for _ in range(21)]
    assert replies[:20] == [b"-ERR Unknown command."] * 20
    assert replies[20] == b"-ERR Too many invalid commands, closing."
    assert raw.closed()


def test_in_use_across_worker_processes(tmp_path: Path) -> None:
    """processes = 2: the [IN-USE] lock is an flock, so it holds between processes."""
    server = start_pop3_server(tmp_path / "workers", processes=2)
    try:
        (server.maildir("alice@example.org") / "new").mkdir(parents=True, exist_ok=True)
        sessions = []
        refused = 0
        for _ in range(6):  # connections are spread over the processes by the kernel
            raw = logged_in_or_refused(server)
            if raw is None:
                refused += 1
            else:
                sessions.append(raw)
        assert len(sessions) == 1 and refused == 5
    finally:
        server.stop()


def logged_in_or_refused(server: RunningServer) -> RawPop3 | None:
    raw = RawPop3(server.address("pop3s"))
    raw.sock = client_tls().wrap_socket(raw.sock, server_hostname="localhost")
    raw.line()
    raw.command(b"USER " + ALICE)
    reply = raw.command(b"PASS " + PASSWORD.encode())
    if reply.startswith(b"+OK"):
        return raw
    assert reply == b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
    raw.close()
    return None


def test_server_stop_says_goodbye_and_deletes_nothing(tmp_path: Path) -> None:
    server = start_pop3_server(tmp_path / "stopping")
    try:
        path = put_message(server.maildir("alice@example.org"), message(1))
        raw = logged_in(server)
        assert raw.command(b"DELE 1") == b"+OK Message 1 marked to be deleted."
        server.stop()  # SIGTERM: the listener's on_stop tells every session
        assert raw.line() == b"-ERR [SYS/TEMP] Server shutting down."
        assert raw.closed()
        assert path.exists()
    finally:
        server.stop()
