"""The connection base (core/connection.py) and its line reader (core/lines.py), over
StringTransport with a tiny echo protocol: each rule of the LineRules table for each of
SMTP, POP3 and IMAP, the wait that holds pipelined commands, the error limit, the
timeouts. The protocols' own tests show the same rules in their replies; these pin the
shared machinery down once, fast and with full control of time and of the Deferreds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailserver.core.connection import Goodbyes, LineConnection
from mailserver.core.flow import CLOSE_GRACE
from mailserver.core.lines import (
    IMAP_LINES,
    POP3_LINES,
    SMTP_LINES,
    LineReader,
    LineRefused,
    LineRules,
)

RULES = {"smtp": SMTP_LINES, "pop3": POP3_LINES, "imap": IMAP_LINES}
TIMEOUT = 60
ERROR_LIMIT = 3


class Transport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.aborted = True
        super().abortConnection()


class Echo(LineConnection):
    """`WAIT x` waits for a Deferred the test fires, `BAD` is a refused command, `RAW n`
    takes the next n octets raw (as DATA and literals do); anything else is echoed."""

    def __init__(self, rules: LineRules, clock: Clock) -> None:
        self.rules = rules  # type: ignore[misc]
        self.goodbyes = Goodbyes(  # type: ignore[misc]
            timeout="BYE timeout {hostname}", errors="BYE errors", shutdown="BYE shutdown")
        self.factory = SimpleNamespace(sessions=set(), shutting_down=False)
        self.config = SimpleNamespace(hostname="mx.test", limits=SimpleNamespace(
            command_timeout=TIMEOUT, errors_per_session=ERROR_LIMIT))
        self.session_id = "echo-1"
        self.callLater = clock.callLater  # TimeoutMixin's timer
        self.waits: list[Deferred[None]] = []
        self.raw_left = 0
        self.raw: list[bytes] = []
        self.init_connection()

    def emit(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def greeting(self) -> None:
        self.emit(b"HELLO\r\n")

    def take_raw(self) -> bool:
        if not self.raw_left:
            return False
        take = bytes(self._buffer[: self.raw_left])
        del self._buffer[: len(take)]
        self.raw_left -= len(take)
        self.raw.append(take)
        if not self.raw_left:
            self.emit(b"RAW " + b"".join(self.raw) + b"\r\n")
        return True

    def line_received(self, line: bytes) -> None:
        word, _, arg = line.partition(b" ")
        if word == b"WAIT":
            d: Deferred[None] = Deferred()
            d.addCallback(lambda _: self.emit(b"DONE " + arg + b"\r\n"))
            self.waits.append(d)
            self._wait_for(d)
        elif word == b"BAD":
            self.emit(b"ERR\r\n")
            self._count_error()
        elif word == b"RAW":
            self.raw_left = int(arg)
        else:
            self.emit(b"OK " + line + b"\r\n")

    def line_refused(self, refused: LineRefused) -> None:
        self.emit(b"REFUSED " + refused.error.text.encode() + b" " + refused.head[:8]
                  + b"\r\n")
        self._count_error()


def connect(name: str) -> tuple[Echo, Transport, Clock]:
    clock = Clock()
    session = Echo(RULES[name], clock)
    transport = Transport()
    session.makeConnection(transport)
    assert transport.value() == b"HELLO\r\n"
    transport.clear()
    return session, transport, clock


def lines(transport: Transport) -> list[bytes]:
    out = transport.value().split(b"\r\n")
    transport.clear()
    assert out[-1] == b""
    return out[:-1]


# -- the table ---------------------------------------------------------------------------


def test_the_table_states_the_rfc_limits() -> None:
    """RFC 2449 4 (255 with CRLF), RFC 5321 4.5.3.1.4 (at least 512), RFC 7162 3 (at
    least 8192); SMTP alone refuses a bare LF (RFC 5321 2.3.8), IMAP alone a NUL."""
    assert (SMTP_LINES.max_line, POP3_LINES.max_line, IMAP_LINES.max_line) == (
        2048, 255, 65536)
    assert [r.bare_lf_ends_line for r in RULES.values()] == [False, True, True]
    assert [r.refuse_nul for r in RULES.values()] == [False, False, True]
    assert [r.refuse_cr for r in RULES.values()] == [True, False, True]


@pytest.mark.parametrize("name", list(RULES))
def test_overlong_line_is_discarded_with_bounded_memory(name: str) -> None:
    """A line that never ends costs at most the limit plus one read, then one refusal,
    and the next command is read in step."""
    session, transport, _ = connect(name)
    limit = RULES[name].max_line
    chunk = b"x" * 1000
    session.dataReceived(b"TAG1 ")
    for _ in range(limit // 1000 + 50):
        session.dataReceived(chunk)
        assert len(session._buffer) <= limit + len(chunk)
    assert transport.value() == b""  # nothing said until the line ends
    session.dataReceived(b"yyy\r\nNOOP\r\n")
    text = RULES[name].too_long.text.encode()
    assert lines(transport) == [b"REFUSED " + text + b" TAG1 xxx", b"OK NOOP"]


@pytest.mark.parametrize("name", list(RULES))
def test_a_line_at_the_limit_is_read_and_one_octet_more_is_refused(name: str) -> None:
    session, transport, _ = connect(name)
    limit = RULES[name].max_line
    session.dataReceived(b"A" * (limit - 2) + b"\r\n")
    assert lines(transport) == [b"OK " + b"A" * (limit - 2)]
    session.dataReceived(b"A" * (limit - 1) + b"\r\n")
    assert lines(transport) == [b"REFUSED " + RULES[name].too_long.text.encode()
                                + b" AAAAAAAA"]


def test_a_sasl_line_may_be_longer_where_the_session_says_so() -> None:
    """POP3: RFC 5034 AUTH lines get max_sasl_line (the session's max_line hook)."""
    session, transport, _ = connect("pop3")
    session.max_line = lambda: POP3_LINES.max_sasl_line  # type: ignore[method-assign]
    session.dataReceived(b"A" * 1000 + b"\r\n")
    assert lines(transport) == [b"OK " + b"A" * 1000]


@pytest.mark.parametrize("name, reply", [
    ("smtp", b"REFUSED Syntax error: bare CR or LF in command NOOP\n"),
    ("pop3", b"OK NOOP"),
    ("imap", b"OK NOOP"),
])
def test_bare_lf(name: str, reply: bytes) -> None:
    session, transport, _ = connect(name)
    session.dataReceived(b"NOOP\nNOOP\r\n")
    assert lines(transport) == [reply, b"OK NOOP"]


@pytest.mark.parametrize("name, reply", [
    ("smtp", b"REFUSED Syntax error: bare CR or LF in command NO\rOP\r\n"),
    ("pop3", b"OK NO\rOP"),
    ("imap", b"REFUSED Bare CR in command line NO\rOP\r\n"),
])
def test_bare_cr_inside_a_line(name: str, reply: bytes) -> None:
    session, transport, _ = connect(name)
    session.dataReceived(b"NO\rOP\r\n")
    assert transport.value() == reply + b"\r\n"


@pytest.mark.parametrize("name, reply", [
    ("smtp", b"OK NO\0OP"),
    ("pop3", b"OK NO\0OP"),
    ("imap", b"REFUSED NUL in command line NO\0OP\r\n"),
])
def test_nul_inside_a_line(name: str, reply: bytes) -> None:
    session, transport, _ = connect(name)
    session.dataReceived(b"NO\0OP\r\n")
    assert transport.value() == reply + b"\r\n"


def test_a_line_split_across_reads_is_one_line() -> None:
    session, transport, _ = connect("smtp")
    for octet in b"NOOP 1\r\n":
        session.dataReceived(bytes([octet]))
    assert lines(transport) == [b"OK NOOP 1"]


# -- one command at a time ---------------------------------------------------------------


def test_pipelined_commands_wait_for_the_pending_one_and_are_answered_in_order() -> None:
    session, transport, _ = connect("smtp")
    session.dataReceived(b"WAIT 1\r\nNOOP 2\r\nWAIT 3\r\nNOOP 4\r\n")
    assert transport.value() == b""  # NOOP 2 is not answered before WAIT 1
    assert bytes(session._buffer) == b"NOOP 2\r\nWAIT 3\r\nNOOP 4\r\n"
    session.waits[0].callback(None)
    assert lines(transport) == [b"DONE 1", b"OK NOOP 2"]
    session.dataReceived(b"NOOP 5\r\n")
    assert transport.value() == b""
    session.waits[1].callback(None)
    assert lines(transport) == [b"DONE 3", b"OK NOOP 4", b"OK NOOP 5"]


def test_reading_pauses_while_held_input_backs_up_and_resumes_after() -> None:
    session, transport, _ = connect("imap")
    session.dataReceived(b"WAIT 1\r\n")
    flood = b"NOOP\r\n" * (session.max_pending_input // 6 + 10)
    session.dataReceived(flood)
    assert transport.producerState == "paused"
    session.waits[0].callback(None)
    assert transport.producerState == "producing"
    assert lines(transport) == [b"DONE 1"] + [b"OK NOOP"] * (len(flood) // 6)


def test_a_command_waiting_for_the_disk_does_not_count_as_client_silence() -> None:
    """SMTP's timer stops while the fsync runs (suspend_timeout_while_waiting)."""
    session, transport, clock = connect("smtp")
    session.suspend_timeout_while_waiting = True  # type: ignore[misc]
    session.dataReceived(b"WAIT 1\r\n")
    clock.advance(TIMEOUT * 10)
    assert transport.value() == b"" and not transport.disconnecting
    session.waits[0].callback(None)
    clock.advance(TIMEOUT - 1)
    assert lines(transport) == [b"DONE 1"]
    clock.advance(1)
    assert lines(transport) == [b"BYE timeout mx.test"]


def test_raw_octets_bypass_the_line_rules() -> None:
    """DATA and literals: what take_raw() consumes is not framed, whatever it holds."""
    session, transport, _ = connect("smtp")
    payload = b"a\nb\rc\0" + b"z" * 5000
    session.dataReceived(b"RAW %d\r\n" % len(payload) + payload[:10])
    session.dataReceived(payload[10:] + b"NOOP\r\n")
    assert lines(transport) == [b"RAW " + payload, b"OK NOOP"]


# -- error limit, timeouts, shutdown -----------------------------------------------------


@pytest.mark.parametrize("name, refusal", [
    ("smtp", b"REFUSED Line too long AAAAAAAA"),
    ("pop3", b"REFUSED Line too long. AAAAAAAA"),
    ("imap", b"REFUSED NUL in command line AAAAAAAA"),  # 3000 octets fit in IMAP's limit
])
def test_the_error_limit_closes_the_session(name: str, refusal: bytes) -> None:
    """Refused commands and refused lines count alike; the last one is followed by the
    goodbye, and nothing pipelined after it runs."""
    session, transport, _ = connect(name)
    session.dataReceived(b"BAD\r\n" * (ERROR_LIMIT - 1))
    assert not transport.disconnecting
    session.dataReceived(b"NOOP\r\n" + b"A" * 3000 + b"\0\r\nNOOP\r\n")
    assert lines(transport) == [b"ERR"] * (ERROR_LIMIT - 1) + [b"OK NOOP", refusal,
                                                                b"BYE errors"]
    assert transport.disconnecting
    session.dataReceived(b"NOOP\r\n")
    assert transport.value() == b""


def test_the_idle_timeout_says_goodbye_and_closes() -> None:
    session, transport, clock = connect("pop3")
    clock.advance(TIMEOUT - 1)
    session.dataReceived(b"NOOP\r\n")  # activity restarts the timer
    clock.advance(TIMEOUT - 1)
    assert lines(transport) == [b"OK NOOP"]
    clock.advance(1)
    assert lines(transport) == [b"BYE timeout mx.test"]
    assert transport.disconnecting and not transport.aborted


def test_a_client_that_never_reads_the_goodbye_is_aborted_after_the_grace() -> None:
    session, transport, clock = connect("smtp")
    clock.advance(TIMEOUT)
    assert transport.disconnecting and not transport.aborted
    session.pauseProducing()  # the goodbye is stuck in a full write buffer
    clock.advance(CLOSE_GRACE - 1)
    assert not transport.aborted
    clock.advance(1)
    assert transport.aborted


@pytest.mark.parametrize("name", list(RULES))
def test_a_client_that_reads_nothing_is_aborted_at_the_timeout(name: str) -> None:
    """A stalled download: no goodbye (it would only queue behind the rest), abort."""
    session, transport, clock = connect(name)
    session.dataReceived(b"NOOP\r\n")
    transport.clear()
    session.pauseProducing()  # the transport's write buffer is full
    session.dataReceived(b"NOOP\r\n")  # not handled while the client does not read
    assert transport.value() == b""
    clock.advance(TIMEOUT)
    assert transport.aborted and transport.value() == b""


def test_shut_down_lets_a_waiting_command_answer_first() -> None:
    session, transport, _ = connect("smtp")
    session.dataReceived(b"WAIT 1\r\nNOOP\r\n")
    session.factory.shutting_down = True
    session.shut_down()
    assert transport.value() == b""
    session.waits[0].callback(None)
    assert lines(transport) == [b"DONE 1", b"BYE shutdown"]  # NOOP is never run
    assert transport.disconnecting


def test_shut_down_while_busy_interrupts_where_the_protocol_allows() -> None:
    session, transport, _ = connect("imap")
    session.shut_down_while_busy = True  # type: ignore[misc]
    session.dataReceived(b"WAIT 1\r\n")
    session.shut_down()
    assert lines(transport) == [b"BYE shutdown"]
    assert transport.disconnecting


def test_connection_lost_forgets_the_session() -> None:
    session, transport, clock = connect("smtp")
    assert session.factory.sessions == {session}
    session.dataReceived(b"WAIT 1\r\nNOOP\r\n")
    session.connectionLost(None)
    assert session.factory.sessions == set() and session._buffer == bytearray()
    session.waits[0].callback(None)  # the late answer goes nowhere, and nothing runs
    clock.advance(TIMEOUT * 2)
    assert lines(transport) == [b"DONE 1"]


# -- the pure reader -----------------------------------------------------------------------


def test_reader_keeps_the_head_of_a_discarded_line_for_imaps_tag() -> None:
    reader = LineReader(IMAP_LINES)
    buffer = bytearray(b"a7 APPEND " + b"x" * 70000)
    assert reader.next_line(buffer) is None and buffer == bytearray()
    buffer += b"x" * 100
    assert reader.next_line(buffer) is None and buffer == bytearray()
    buffer += b"xx\r\na8 NOOP\r\n"
    with pytest.raises(LineRefused) as refused:
        reader.next_line(buffer)
    assert refused.value.head.startswith(b"a7 APPEND xxx") and len(refused.value.head) == 100
    assert refused.value.error.code == "TOOBIG"
    assert reader.next_line(buffer) == b"a8 NOOP"


def test_reader_reset_forgets_a_line_being_discarded() -> None:
    """After STARTTLS the buffer is thrown away; the discarding state goes with it."""
    reader = LineReader(SMTP_LINES)
    buffer = bytearray(b"x" * 3000)
    reader.next_line(buffer)
    assert reader.discarding
    reader.reset()
    buffer += b"NOOP\r\n"
    assert reader.next_line(buffer) == b"NOOP"
