"""The POP3 session state machine over StringTransport, with a real Maildir in tmp_path.

Logins go through a real twisted.cred Portal; the disk executor runs each job at once
(or holds it, when a test needs to show that replies wait in order).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import FakeDisk, MailRealm
from pop3_helpers import put_message
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mailserver.config import AuthConfig, LimitsConfig, default_config
from mailserver.core.throttle import LoginThrottle
from mailserver.pop3.server import POP3Factory, POP3Session
from mailserver.store.opener import MaildirOpener

ALICE = "alice@example.org"
PASSWORD = b"secret"


class Harness:
    def __init__(self, tmp_path: Path, plaintext: bool = True, **limits: int) -> None:
        config = replace(default_config(), hostname="pop.test", data_dir=tmp_path,
                         auth=AuthConfig(allow_plaintext_without_tls=plaintext),
                         limits=replace(LimitsConfig(), **limits))
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(ALICE.encode(), PASSWORD)
        checker.addUser(b"bob@example.org", PASSWORD)
        self.disk = FakeDisk()
        self.clock = Clock()
        self.throttle = LoginThrottle(clock=self.clock)
        self.factory = POP3Factory(config, Portal(MailRealm(), [checker]),
                                   self.disk,  # type: ignore[arg-type]
                                   MaildirOpener(config.mail_dir),
                                   login_throttle=self.throttle)
        self.maildir = tmp_path / "mail" / "example.org" / "alice"
        self.transports: list[StringTransport] = []

    def connect(self) -> Client:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
        protocol.callLater = self.clock.callLater  # type: ignore[method-assign]
        protocol.makeConnection(transport)
        client = Client(protocol, transport)
        assert client.lines() == ["+OK mailserver POP3 server ready."]
        return client


class Client:
    def __init__(self, protocol: POP3Session, transport: StringTransport) -> None:
        self.protocol, self.transport = protocol, transport

    def raw(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def lines(self) -> list[str]:
        return [line for line in self.raw().decode().split("\r\n") if line]

    def send(self, data: bytes) -> list[str]:
        self.protocol.dataReceived(data)
        return self.lines()

    def login(self, user: str = ALICE) -> list[str]:
        return self.send(f"USER {user}\r\nPASS {PASSWORD.decode()}\r\n".encode())

    def drop(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("dropped")))


@pytest.fixture
def pop(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def fill(h: Harness, *contents: bytes) -> list[Path]:
    return [put_message(h.maildir, c) for c in contents]


MSG1 = b"Subject: one\n\nfirst\n.dot\n"
MSG2 = b"Subject: two\nX: y\n\nl1\nl2\nl3\n"


def test_capa_lists_user_and_sasl_only_when_plaintext_is_allowed(tmp_path: Path) -> None:
    c = Harness(tmp_path, plaintext=False).connect()
    caps = c.send(b"CAPA\r\n")
    assert caps[0] == "+OK Capability list follows" and caps[-1] == "."
    assert "USER" not in caps and "SASL PLAIN" not in caps
    assert {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER",
            "IMPLEMENTATION mailserver"} <= set(caps)
    c2 = Harness(tmp_path).connect()
    assert {"USER", "SASL PLAIN"} <= set(c2.send(b"CAPA\r\n"))


def test_plaintext_refused_without_tls(tmp_path: Path) -> None:
    c = Harness(tmp_path, plaintext=False).connect()
    refusal = ("-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) "
               "connections.")
    assert c.send(b"USER alice@example.org\r\n") == [refusal]
    assert c.send(b"PASS secret\r\n") == [refusal]
    assert c.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n") == [refusal]
    assert c.send(b"STLS\r\n") == ["-ERR TLS not available."]


def test_login_stat_list_uidl_retr_top(pop: Harness) -> None:
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    assert c.login() == ["+OK", "+OK Logged in, 2 messages."]
    assert c.send(b"STAT\r\n") == ["+OK 2 63"]  # CRLF sizes: 29 + 34
    assert c.send(b"LIST\r\n") == ["+OK 2 messages (63 octets)", "1 29", "2 34", "."]
    assert c.send(b"LIST 2\r\n") == ["+OK 2 34"]
    bases = [p.name.split(",")[0] for p in paths]
    assert c.send(b"UIDL\r\n") == ["+OK", f"1 {bases[0]}", f"2 {bases[1]}", "."]
    assert c.send(b"UIDL 1\r\n") == [f"+OK 1 {bases[0]}"]
    c.protocol.dataReceived(b"RETR 1\r\n")
    assert c.raw() == b"+OK 29 octets\r\nSubject: one\r\n\r\nfirst\r\n..dot\r\n.\r\n"
    c.protocol.dataReceived(b"TOP 2 1\r\n")
    assert c.raw() == b"+OK\r\nSubject: two\r\nX: y\r\n\r\nl1\r\n.\r\n"
    c.protocol.dataReceived(b"TOP 2 0\r\n")
    assert c.raw() == b"+OK\r\nSubject: two\r\nX: y\r\n\r\n.\r\n"
    assert c.send(b"NOOP\r\nQUIT\r\n") == ["+OK", "+OK Logging out."]
    assert c.transport.disconnecting


def test_pipelined_commands_wait_for_the_login_and_the_disk(pop: Harness) -> None:
    fill(pop, MSG1)
    pop.disk.hold = True
    c = pop.connect()
    # Everything in one packet (RFC 2449 PIPELINING); the snapshot job is held.
    assert c.send(b"USER alice@example.org\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nQUIT\r\n") \
        == ["+OK"]
    pop.disk.release()  # the snapshot: the login reply, STAT, then RETR waits again
    assert c.lines() == ["+OK Logged in, 1 messages.", "+OK 1 29"]
    pop.disk.release()  # the read
    assert c.lines()[0] == "+OK 29 octets"
    pop.disk.release()  # the UPDATE (Seen flag)
    assert c.lines() == ["+OK Logging out."]


@pytest.mark.parametrize("command, reply", [
    (b"RETR 0", "-ERR Invalid message number"),
    (b"RETR -1", "-ERR Invalid message number"),
    (b"RETR +1", "-ERR Invalid message number"),
    (b"RETR 1x", "-ERR Invalid message number"),
    (b"RETR 99999999999", "-ERR Invalid message number"),
    (b"RETR 3", "-ERR There's no message 3."),
    (b"LIST 3", "-ERR There's no message 3."),
    (b"TOP 3 1", "-ERR There's no message 3."),
    (b"TOP 1", "-ERR TOP: message number and line count required"),
    (b"TOP 1 -2", "-ERR Invalid line count"),
    (b"DELE", "-ERR DELE: one message number required"),
    (b"LIST 1 2", "-ERR LIST: at most one argument"),
    (b"STAT 1", "-ERR STAT: no arguments allowed"),
    (b"USER bob", "-ERR USER not allowed after login."),
    (b"STLS", "-ERR STLS not allowed after login."),
    (b"APOP alice 0123", "-ERR APOP not supported; use USER/PASS or AUTH PLAIN over TLS"),
    (b"XYZZY", "-ERR Unknown command."),
    (b"", "-ERR Unknown command."),
])
def test_bad_commands_in_transaction(pop: Harness, command: bytes, reply: str) -> None:
    fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    assert c.send(command + b"\r\n") == [reply]
    assert c.send(b"STAT\r\n") == ["+OK 2 63"]  # the session goes on


def test_commands_before_login_are_refused(pop: Harness) -> None:
    c = pop.connect()
    for command in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"UIDL", b"RSET"):
        assert c.send(command + b"\r\n") == [
            "-ERR Unknown command or not allowed before login."]
    assert c.send(b"PASS secret\r\n") == ["-ERR No username given."]


def test_dele_rset_and_quit_delete_only_marked(pop: Harness) -> None:
    paths = fill(pop, MSG1, MSG2, b"Subject: 3\n\n3\n")
    c = pop.connect()
    c.login()
    assert c.send(b"DELE 1\r\n") == ["+OK Message 1 marked to be deleted."]
    assert c.send(b"DELE 1\r\n") == ["-ERR Message 1 is deleted."]
    assert c.send(b"RETR 1\r\n") == ["-ERR Message 1 is deleted."]
    assert c.send(b"STAT\r\n") == ["+OK 2 51"]
    assert c.send(b"LIST\r\n") == ["+OK 2 messages (51 octets)", "2 34", "3 17", "."]
    assert c.send(b"RSET\r\n") == ["+OK 3 messages."]
    assert c.send(b"DELE 2\r\nDELE 3\r\nQUIT\r\n") == [
        "+OK Message 2 marked to be deleted.", "+OK Message 3 marked to be deleted.",
        "+OK Logging out, messages deleted: 2."]
    assert paths[0].exists() and not paths[1].exists() and not paths[2].exists()


def test_dropped_connection_deletes_nothing_and_releases_the_lock(pop: Harness) -> None:
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    c.send(b"DELE 1\r\nDELE 2\r\n")
    c.drop()
    assert all(p.exists() for p in paths)
    again = pop.connect()
    assert again.login()[-1] == "+OK Logged in, 2 messages."


def test_second_session_gets_in_use(pop: Harness) -> None:
    fill(pop, MSG1)
    first = pop.connect()
    first.login()
    second = pop.connect()
    assert second.login() == ["+OK", "-ERR [IN-USE] Mailbox is locked by another POP3 "
                                     "session."]
    other_user = pop.connect()  # another maildrop is not affected
    assert other_user.login("bob@example.org")[-1] == "+OK Logged in, 0 messages."
    first.send(b"QUIT\r\n")
    first.drop()
    assert second.login()[-1] == "+OK Logged in, 1 messages."


def test_snapshot_ignores_mail_delivered_during_the_session(pop: Harness) -> None:
    fill(pop, MSG1)
    c = pop.connect()
    c.login()
    fill(pop, MSG2)
    assert c.send(b"STAT\r\n") == ["+OK 1 29"]
    assert c.send(b"RETR 2\r\n") == ["-ERR There's no message 2."]


def test_retr_sets_seen_at_quit_and_top_does_not(pop: Harness) -> None:
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    c.send(b"RETR 1\r\nTOP 2 1\r\nQUIT\r\n")
    cur = sorted(p.name for p in (pop.maildir / "cur").iterdir())
    assert cur == [paths[0].name + ":2,S"]
    assert paths[1].exists()  # TOP is not a retrieval


def test_retr_keeps_existing_flags_and_follows_a_rename(pop: Harness) -> None:
    path = put_message(pop.maildir, MSG1, subdir="cur", flags="F")
    c = pop.connect()
    c.login()
    # An IMAP session renames the file (adds \\Answered) while we hold the snapshot.
    renamed = path.with_name(path.name.replace(":2,F", ":2,FR"))
    path.rename(renamed)
    c.protocol.dataReceived(b"RETR 1\r\n")
    assert c.raw().startswith(b"+OK 29 octets\r\nSubject: one\r\n")
    c.send(b"QUIT\r\n")
    assert [p.name for p in (pop.maildir / "cur").iterdir()] == [
        path.name.replace(":2,F", ":2,FRS")]


def test_message_expunged_by_another_session(pop: Harness) -> None:
    paths = fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    paths[0].unlink()
    assert c.send(b"RETR 1\r\n") == [
        "-ERR Message no longer exists (expunged by another session)."]
    assert c.send(b"DELE 1\r\nQUIT\r\n")[-1] == "+OK Logging out, messages deleted: 1."
    assert paths[1].exists()


def test_auth_plain_initial_response_and_continuation(pop: Harness) -> None:
    fill(pop, MSG1)
    token = base64.b64encode(b"\0alice@example.org\0secret")
    c = pop.connect()
    assert c.send(b"AUTH\r\n") == ["+OK", "PLAIN", "."]
    assert c.send(b"AUTH PLAIN " + token + b"\r\n") == ["+OK Logged in, 1 messages."]
    c.send(b"QUIT\r\n")
    c2 = pop.connect()
    assert c2.send(b"AUTH PLAIN\r\n") == ["+ "]
    assert c2.send(token + b"\r\n") == ["+OK Logged in, 1 messages."]


def test_auth_cancel_bad_data_and_unknown_mechanism(pop: Harness) -> None:
    c = pop.connect()
    assert c.send(b"AUTH PLAIN\r\n") == ["+ "]
    assert c.send(b"*\r\n") == ["-ERR Authentication cancelled."]
    assert c.send(b"AUTH PLAIN !!!\r\n") == [
        "-ERR Invalid AUTH PLAIN data: invalid base64 data."]
    assert c.send(b"AUTH CRAM-MD5\r\n") == ["-ERR Unsupported authentication mechanism."]
    assert c.send(b"AUTH PLAIN " + base64.b64encode(b"bob\0alice\0secret") + b"\r\n") == [
        "-ERR Invalid AUTH PLAIN data: authorization identity differs from authentication "
        "identity."]


def test_wrong_passwords_close_after_three(pop: Harness) -> None:
    c = pop.connect()
    for _ in range(2):
        assert c.send(b"USER alice@example.org\r\nPASS wrong\r\n") == [
            "+OK", "-ERR [AUTH] Authentication failed."]
    assert c.send(b"USER alice@example.org\r\nPASS wrong\r\n") == [
        "+OK", "-ERR [AUTH] Authentication failed.",
        "-ERR [AUTH] Too many authentication failures."]
    assert c.transport.disconnecting


def test_overlong_lines_and_nul(pop: Harness) -> None:
    c = pop.connect()
    assert c.send(b"USER " + b"a" * 300 + b"\r\n") == ["-ERR Line too long."]
    assert c.send(b"USER a\0b\r\n") == ["-ERR NUL octet in command"]
    # A 1 MiB line without CRLF: memory stays bounded, one -ERR when it finally ends.
    for _ in range(16):
        c.protocol.dataReceived(b"x" * 65536)
        assert len(c.protocol._buffer) <= 2048
    assert c.lines() == []
    assert c.send(b"\r\nCAPA\r\n")[:2] == ["-ERR Line too long.", "+OK Capability list follows"]
    assert not c.transport.disconnecting


def test_too_many_errors_close_the_session(tmp_path: Path) -> None:
    c = Harness(tmp_path, errors_per_session=5).connect()
    replies = c.send(b"BAD\r\n" * 10)
    assert replies == ["-ERR Unknown command."] * 5 + ["-ERR Too many invalid commands, closing."]
    assert c.transport.disconnecting


def test_idle_timeout(pop: Harness) -> None:
    c = pop.connect()
    pop.clock.advance(pop.factory.login_timeout + 1)
    assert c.lines() == ["-ERR Disconnected for inactivity."]
    assert c.transport.disconnecting


def test_transaction_timeout_is_at_least_ten_minutes(pop: Harness) -> None:
    fill(pop, MSG1)
    c = pop.connect()
    c.login()
    pop.clock.advance(599)
    assert c.send(b"NOOP\r\n") == ["+OK"]
    pop.clock.advance(601)
    assert c.lines() == ["-ERR Disconnected for inactivity."]


def test_shutdown_says_goodbye_and_deletes_nothing(pop: Harness) -> None:
    paths = fill(pop, MSG1)
    c = pop.connect()
    c.login()
    c.send(b"DELE 1\r\n")
    pop.factory.shut_down()
    assert c.lines() == ["-ERR [SYS/TEMP] Server shutting down."]
    assert c.transport.disconnecting
    c.drop()
    assert paths[0].exists()


def test_no_new_command_while_the_write_buffer_is_full(pop: Harness) -> None:
    fill(pop, MSG1, MSG2)
    c = pop.connect()
    c.login()
    c.protocol.pauseProducing()  # the transport's buffer is full
    assert c.send(b"RETR 1\r\nRETR 2\r\n") == []
    c.protocol.resumeProducing()
    out = c.raw()
    assert out.count(b"+OK") == 2 and out.endswith(b"l3\r\n.\r\n")


def test_retr_read_ahead_answers_in_order(pop: Harness) -> None:
    fill(pop, *(f"Subject: {i}\n\nbody {i}\n".encode() for i in range(1, 41)))
    c = pop.connect()
    c.login()
    pop.disk.hold = True
    c.protocol.dataReceived(b"".join(f"RETR {i}\r\n".encode() for i in range(1, 41)))
    assert len(pop.disk.held) == 1  # one disk job reads the pipelined RETRs ahead
    while pop.disk.held:
        pop.disk.release()
    out = c.raw()
    bodies = [int(x.split(b"\r\n")[0]) for x in out.split(b"body ")[1:]]
    assert bodies == list(range(1, 41))


def test_read_ahead_respects_dele_and_expunged_files(pop: Harness) -> None:
    paths = fill(pop, *(f"Subject: {i}\n\nbody {i}\n".encode() for i in range(1, 6)))
    c = pop.connect()
    c.login()
    c.protocol.dataReceived(b"RETR 1\r\n")  # reads 1..5 ahead (a sequential download)
    c.raw()
    c.protocol.dataReceived(b"RETR 2\r\n")
    assert c.raw().startswith(b"+OK")
    paths[3].unlink()  # expunged by another session after it was read ahead: still sent
    assert c.send(b"DELE 3\r\n") == ["+OK Message 3 marked to be deleted."]
    assert c.send(b"RETR 3\r\n") == ["-ERR Message 3 is deleted."]
    c.protocol.dataReceived(b"RETR 4\r\nRETR 5\r\n")
    out = c.raw()
    assert b"body 4" in out and b"body 5" in out


def test_login_stat_list_uidl_open_no_message_file(pop: Harness,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes come from W= in the names: a 1,000-message maildrop is listed, not read."""
    from mailserver.store import maildrop

    fill(pop, *(f"Subject: {i}\n\n{'x' * i}\n".encode() for i in range(1000)))
    opened: list[str] = []

    def no_open(path: str, *args: object, **kwargs: object) -> None:
        opened.append(path)
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(maildrop, "open", no_open, raising=False)
    c = pop.connect()
    assert c.login()[-1] == "+OK Logged in, 1000 messages."
    sizes = [len(f"Subject: {i}\n\n{'x' * i}\n") + 3 for i in range(1000)]
    assert c.send(b"STAT\r\n") == [f"+OK 1000 {sum(sizes)}"]
    assert len(c.send(b"LIST\r\n")) == 1002 and len(c.send(b"UIDL\r\n")) == 1002
    assert opened == []
    monkeypatch.undo()
    c.protocol.dataReceived(b"RETR 1000\r\n")
    assert c.raw().startswith(f"+OK {sizes[-1]} octets\r\nSubject: 999\r\n".encode())
