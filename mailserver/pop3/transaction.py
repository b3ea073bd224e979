"""The TRANSACTION-state commands of a POP3 session (RFC 1939 5, RFC 2449 6.6).

A mixin of POP3Session (server.py), kept apart so that each file holds one state's
logic: STAT, LIST, UIDL, RETR (with the read-ahead), TOP, DELE, RSET, NOOP. It works
on the snapshot the login took; nothing here touches a file on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.interfaces import MaildropMessage, MessageGone
from mailserver.pop3 import grammar, maildrop, readahead, stream

if TYPE_CHECKING:
    from mailserver.pop3.server import Login


class Refused(Exception):
    """A command answered with -ERR; str(e) is the text (with its [CODE] if any)."""


class TransactionCommands:
    """The commands of the TRANSACTION state; POP3Session provides the rest."""

    messages: Sequence[MaildropMessage]
    retrieved: set[int]
    reader: readahead.ReadAhead | None
    login: Login | None
    factory: Any  # POP3Factory (typed so, it would clash with Protocol.factory)
    transport: Any
    _buffer: bytearray
    _closing: bool

    if TYPE_CHECKING:
        def _ok(self, text: str = "") -> None: ...
        def _err(self, text: str) -> None: ...
        def _write(self, data: bytes) -> None: ...
        def _listing(self, first: str, body: str) -> None: ...
        def resetTimeout(self) -> None: ...  # noqa: N802 - TimeoutMixin

    def _message(self, number: int) -> MaildropMessage:
        """RFC 1939 5: message numbers count from 1; deleted ones may not be referred to."""
        if number > len(self.messages):
            raise Refused(f"There's no message {number}.")
        message = self.messages[number - 1]
        if message.deleted:
            raise Refused(f"Message {number} is deleted.")
        return message

    def _visible(self) -> list[tuple[int, MaildropMessage]]:
        return [(i, m) for i, m in enumerate(self.messages, 1) if not m.deleted]

    def do_STAT(self, command: grammar.Command) -> None:
        visible = [m for m in self.messages if not m.deleted]
        self._ok(f"{len(visible)} {sum(m.size for m in visible)}")

    def do_LIST(self, command: grammar.MessageArg) -> None:
        if command.number is not None:
            self._ok(f"{command.number} {self._message(command.number).size}")
            return
        visible = self._visible()
        total = sum(m.size for _, m in visible)
        self._listing(f"{len(visible)} messages ({total} octets)",
                      "".join([f"{i} {m.size}\r\n" for i, m in visible]))

    def do_UIDL(self, command: grammar.MessageArg) -> None:
        if command.number is not None:
            self._ok(f"{command.number} {self._message(command.number).uidl}")
            return
        # One pass, one string: 100,000 lines take ~70 ms (measured in bench/pop3.py).
        self._listing("", "".join([f"{i} {m.uidl}\r\n" for i, m in
                                   enumerate(self.messages, 1) if not m.deleted]))

    def do_RETR(self, command: grammar.MessageArg) -> Deferred[None] | None:
        assert command.number is not None and self.reader is not None
        number = command.number
        size = self._message(number).size  # refused if it does not exist or is deleted
        if size > maildrop.STREAM_OCTETS:
            return self._stream(number, size)
        reader = self.reader
        ready, reply = reader.take(number)
        if ready:
            self._send_retrieved(number, reply)
            if reader.needs_refill():
                reader.refill(self._coming(number))
            return None

        def send(reply: bytes | None) -> None:
            self._send_retrieved(number, reply)
            reader.refill(self._coming(number))

        return reader.wait(number, self._coming(number)).addCallback(send)

    def _coming(self, current: int) -> Iterator[int]:
        """The messages likely to be retrieved next, for the read-ahead: the RETR
        commands already in the input buffer, then, while the client downloads in
        order (the previous RETR was current - 1), the numbers after `current`.
        A generator: only evaluated when a batch is actually started."""
        yield from self._pipelined_numbers()
        if current - 1 in self.retrieved and self.reader is not None:
            yield from range(max(current, self.reader.highest) + 1, len(self.messages) + 1)

    def _pipelined_numbers(self) -> list[int]:
        """The numbers of the RETR commands waiting in the input buffer, up to the first
        other command (complete lines only)."""
        numbers: list[int] = []
        for line in bytes(self._buffer).split(b"\n")[:-1][:readahead.BATCH_MESSAGES]:
            try:
                command = grammar.parse_command(line.rstrip(b"\r"))
            except grammar.CommandError:
                break
            if not isinstance(command, grammar.MessageArg) or command.name != "RETR":
                break
            assert command.number is not None
            numbers.append(command.number)
        return numbers

    def _send_retrieved(self, number: int, reply: bytes | None) -> None:
        """The whole reply, built in the disk thread (status line, dot-stuffed CRLF
        bytes, terminator): one write, nothing copied or encoded here."""
        if reply is None:
            self._err("Message no longer exists (expunged by another session).")
            return
        if reply is not maildrop.UNREADABLE and not self._closing:
            # Seen at the end of the session only for what was sent: not for a RETR
            # whose read was still pending when the connection dropped.
            self.retrieved.add(number)
        self._write(reply)

    def _stream(self, number: int, size: int) -> Deferred[None]:
        """A big message: read and sent a chunk at a time (stream.py), not whole."""
        assert self.login is not None

        def sent(whole: bool) -> None:
            if whole and not self._closing:
                self.retrieved.add(number)  # as _send_retrieved: only what was sent

        d: Deferred[bool] = stream.send(self, self.factory.disk.run,  # type: ignore[arg-type]
                                        self.login.maildrop, number, size)
        return d.addCallback(sent)

    def do_TOP(self, command: grammar.Top) -> Deferred[None]:
        assert self.login is not None
        self._message(command.number)  # refused if it does not exist or is deleted
        d: Deferred[Any] = self.factory.disk.run(maildrop.top, self.login.maildrop,
                                                 command.number, command.lines)

        def send(data: bytes) -> None:
            self._write(b"+OK\r\n")
            self._write(data)

        def gone(failure: Failure) -> None:
            failure.trap(MessageGone)
            self._err("Message no longer exists (expunged by another session).")

        return d.addCallbacks(send, gone)

    def do_DELE(self, command: grammar.MessageArg) -> None:
        assert command.number is not None
        self._message(command.number).deleted = True
        if self.reader is not None:
            self.reader.forget(command.number)
        self._ok(f"Message {command.number} marked to be deleted.")

    def do_RSET(self, command: grammar.Command) -> None:
        for message in self.messages:
            message.deleted = False
        self._ok(f"{len(self.messages)} messages.")

    def do_NOOP(self, command: grammar.Command) -> None:
        self._ok()
