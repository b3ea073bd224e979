"""The outbound SMTP client: one connection to one remote host, several messages.

A small coroutine per connection instead of twisted.mail's ESMTPSender, which cannot
tell a 4xx from a 5xx per recipient, has no opportunistic STARTTLS and one message per
connection. What it does, and where the RFCs say so:

- EHLO, HELO when EHLO is refused (RFC 5321 3.2).
- STARTTLS whenever offered (RFC 3207), without certificate checks in the handshake
  (opportunistic, as RFC 7435 describes and Postfix's `may` level does); if the
  handshake fails the same host is tried again at once without TLS, as Postfix does,
  unless `require_tls` (DANE, MTA-STS enforce, REQUIRETLS: never plaintext). Whether
  the session is good enough is judged after it opens (queue/outtls.py).
- REQUIRETLS (RFC 8689): on MAIL FROM for such messages; a peer without it: 5.7.30.
- PIPELINING when offered (RFC 2920): MAIL, every RCPT and DATA in one write.
- SIZE (RFC 1870): our size on MAIL; a message larger than the peer's limit fails
  with 552 5.3.4 without being sent. SMTPUTF8 (RFC 6531) only when the peer has it
  (else 5.6.7); BODY=8BITMIME (RFC 6152) when the peer has it, else the message is
  sent converted to 7-bit (mime7bit.py), or fails with 5.6.3 when it cannot be.
- The body is sent with CRLF line ends and dot-stuffing (RFC 5321 4.5.2); no bare CR
  or LF ever goes out.
- Every reply is awaited with a timeout (RFC 5321 4.5.3.2).
- Outcomes per recipient: 2xx delivered, 4xx deferred, 5xx failed; a connection lost
  before the final reply to the end of data defers every recipient of that message
  (none is ever counted delivered before that 250).
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import endpoints, error, reactor, threads
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions

from mailserver.logs import logger
from mailserver.mime7bit import DowngradeError, to_7bit
from mailserver.queue.envelope import DELIVERED, FAILED, PENDING
from mailserver.queue.replies import (  # noqa: F401 - MAX_*: importable from here
    MAX_LINE,
    MAX_LINES,
    MAX_TEXT_LINES,
    MAX_UNREAD,
    ReplyProtocol,
    SMTPClientError,
    SMTPReply,
    abort_transport,
)
from mailserver.queue.routing import Hop

log = logger(__name__)

_BAD_PATH = re.compile(r"[\x00-\x20<>\x7f]")


@dataclass
class Outcome:
    """What happened to one recipient in one attempt."""

    state: str  # DELIVERED, FAILED or PENDING (deferred)
    status: str
    text: str
    remote: str = ""
    #: False when no attempt was made (the server is stopping): nothing to record.
    attempted: bool = True
    #: The peer offered DSN (RFC 3461) and got our NOTIFY/ORCPT: it reports success
    #: itself; without it we report "relayed" (RFC 3461 5.2.2).
    peer_dsn: bool = False
    #: The session's TLS: "dane", "mta-sts" (verified), "opportunistic", "none"; "".
    tls: str = ""


@dataclass
class Message:
    """One message to send over a connection: in memory (`data`) or, for queued mail,
    the spool file (`path`), streamed in CHUNK-sized reads so that memory per
    connection stays bounded whatever the message size."""

    sender: str
    recipients: Sequence[str]
    data: bytes = b""  # LF line ends, as stored
    smtputf8: bool = False
    body_8bit: bool = False
    path: Path | None = None
    #: Bytes as stored (LF); with `path`, the caller's stat() of the file.
    size: int = 0
    #: Line feeds in the message (for the CRLF size); -1: unknown, estimate.
    lines: int = -1
    #: DSN (RFC 3461) to pass on when the peer offers it: MAIL's " RET=.. ENVID=.."
    #: and each recipient's " NOTIFY=.. ORCPT=..", in wire form (queue/dsnwire.py).
    mail_dsn: str = ""
    rcpt_dsn: dict[str, str] = field(default_factory=dict)
    #: REQUIRETLS (RFC 8689): only over verified TLS, to peers that offer it.
    requiretls: bool = False
    #: "TLS-Required: No" (RFC 8689 5): DANE and MTA-STS failures do not stop it.
    tls_optional: bool = False

    def wire_size(self) -> int:
        """The size on the wire without dot-stuffing (RFC 1870 SIZE)."""
        if self.path is None:
            return len(self.data) + self.data.count(b"\n")
        return self.size + (self.lines if self.lines >= 0 else self.size // 40)


#: Bytes read from a spool file at a time while sending.
CHUNK = 64 * 1024
#: Seconds to wait for the reply to QUIT before closing anyway.
QUIT_TIMEOUT = 10.0
#: Seconds a host whose TLS handshake failed is sent to without STARTTLS. Remembered,
#: so that each new connection does not pay a failed handshake first; but not for
#: ever: a peer that fixed its certificate setup, or one handshake broken by someone
#: in the path, must not leave that host in plaintext until our next restart.
TLS_BROKEN_FOR = 3600.0


class BodyEncoder:
    """Stored LF text -> the DATA payload, chunk by chunk: CRLF line ends and
    dot-stuffing (RFC 5321 4.5.2), whatever the chunk boundaries."""

    def __init__(self) -> None:
        self.at_line_start = True
        self.held_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self.held_cr:
            chunk = b"\r" + chunk
            self.held_cr = False
        if chunk.endswith(b"\r"):
            chunk, self.held_cr = chunk[:-1], True
        text = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not text:
            return b""
        if self.at_line_start and text.startswith(b"."):
            text = b"." + text
        text = text.replace(b"\n.", b"\n..")
        self.at_line_start = text.endswith(b"\n")
        return text.replace(b"\n", b"\r\n")

    def end(self) -> bytes:
        tail = b"\r\n" if self.held_cr else b""
        if not self.held_cr and not self.at_line_start:
            tail = b"\r\n"
        return tail + b".\r\n"


@dataclass
class ClientSettings:
    helo_name: str
    connect_timeout: float = 30
    command_timeout: float = 300
    #: Hosts (IP addresses) whose TLS handshake failed -> until when (the clock's
    #: seconds) their connections go without STARTTLS; then TLS is tried again.
    tls_broken: dict[str, float] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    #: Local address to connect from (relay.source_address); "" lets the system choose.
    source_address: str = ""


def wire_data(message: bytes) -> bytes:
    """The DATA payload: CRLF line ends, dot-stuffed, ending in CRLF.CRLF (4.5.2)."""
    encoder = BodyEncoder()
    return encoder.feed(message) + encoder.end()


class SMTPConnection:
    """One conversation with one host: open(), send() messages, close()."""

    def __init__(self, hop: Hop, settings: ClientSettings,
                 clock: IReactorTime | None = None, require_tls: bool = False) -> None:
        self.hop = hop
        self.settings = settings
        #: A policy requires TLS: a failed handshake is not retried in plaintext.
        self.require_tls = require_tls
        self.starttls_offered = False
        self.clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self.proto: ReplyProtocol | None = None
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.usable = False
        self._stage = "connecting"
        #: Transactions sent over this connection, and replies read on it.
        self.transactions = 0
        self.replies = 0
        #: The last send() found the connection closed before any reply to it: the
        #: peer saw nothing of that message (see send()).
        self.stale = False

    @property
    def alive(self) -> bool:
        """Still connected (an idle cached connection may have been closed by the peer)."""
        return self.proto is not None and self.proto.lost is None

    # -- the conversation ---------------------------------------------------------

    async def open(self) -> None:
        """Connect, greet, STARTTLS, AUTH. SMTPClientError if this host will not do."""
        broken = self.settings.tls_broken
        now = self.clock.seconds()
        for address in [a for a, until in broken.items() if until <= now]:
            del broken[address]  # expired: TLS again (and the dict stays small)
        use_tls = self.require_tls or self.hop.address not in broken
        try:
            await self._open(use_tls)
        except _TLSFailed:
            if self.require_tls:  # judged (and refused) by the caller: tls is False
                self.tls = False
                return
            log.warn("{hop}: TLS handshake failed; trying again without TLS", hop=self.hop)
            broken[self.hop.address] = now + TLS_BROKEN_FOR
            await self._open(False)
        self.usable = True

    async def _open(self, use_tls: bool) -> None:
        self.extensions, self.tls = {}, False
        await self._connect()
        self._stage = "receiving the initial server greeting"
        greeting = await self._reply()
        if greeting.code != 220:
            raise self._refused(greeting)
        await self._ehlo()
        self.starttls_offered = "STARTTLS" in self.extensions
        if use_tls and "STARTTLS" in self.extensions:
            self._stage = "sending STARTTLS"
            assert self.proto is not None
            self.proto.switching_to_tls = True
            reply = await self._command(b"STARTTLS")
            self.proto.switching_to_tls = False
            if reply.code == 220:
                assert self.proto is not None and self.proto.transport is not None
                self.proto.transport.startTLS(CertificateOptions())  # type: ignore[attr-defined]
                self.tls = True
                try:
                    await self._ehlo()
                except SMTPClientError as e:
                    if e.code == 0:  # the connection died: the handshake failed
                        self.abort()
                        raise _TLSFailed() from None
                    raise
        if self.settings.auth is not None:
            await self._auth(*self.settings.auth)

    async def _connect(self) -> None:
        v6 = ":" in self.hop.address
        endpoint_type = endpoints.TCP6ClientEndpoint if v6 else endpoints.TCP4ClientEndpoint
        source = self.settings.source_address
        bind = (source, 0) if source and (":" in source) == v6 else None
        endpoint = endpoint_type(reactor, self.hop.address, self.hop.port,
                                 timeout=self.settings.connect_timeout, bindAddress=bind)
        proto = ReplyProtocol()
        factory = Factory.forProtocol(lambda: proto)  # type: ignore[arg-type,return-value]
        factory.noisy = False  # no "Starting factory" line per connection
        try:
            await endpoint.connect(factory)
        except error.ConnectError as e:
            raise SMTPClientError(f"connect to {self.hop}: {_connect_reason(e)}") from None
        self.proto = proto

    async def _ehlo(self) -> None:
        self._stage = "sending EHLO"
        name = self.settings.helo_name.encode("ascii", "replace")
        reply = await self._command(b"EHLO " + name)
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params
            return
        reply = await self._command(b"HELO " + name)  # RFC 5321 3.2
        if reply.code != 250:
            raise self._refused(reply)
        self.extensions = {}

    async def _auth(self, user: str, password: str) -> None:
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if not self.tls or "PLAIN" not in mechanisms:
            raise SMTPClientError(f"{self.hop} offers no AUTH PLAIN over TLS; not sending "
                                  "the smarthost password", status="4.7.0")
        self._stage = "authenticating"
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        reply = await self._command(b"AUTH PLAIN " + token)
        if reply.code != 235:
            raise self._refused(reply)

    async def send(self, message: Message) -> dict[str, Outcome]:
        """One transaction; an Outcome for every recipient (never raises).

        On a reused connection the peer may close while idle (its own timeout) just as
        we start the next transaction: the close crosses our MAIL FROM, and no reply to
        it is ever read. The peer then saw nothing of this message, so `stale` is set
        and the caller may send it again at once on a new connection instead of
        deferring it for the retry back-off (the price of connection reuse otherwise).
        """
        outcomes: dict[str, Outcome] = {}
        replies, self.stale = self.replies, False
        try:
            await self._transaction(message, outcomes)
        except SMTPClientError as e:
            self.stale = (self.transactions > 0 and self.replies == replies and e.code == 0
                          and e.text == "lost connection")
            self.usable = False
            self.abort()
            text = f"lost connection with {self.hop} while {self._stage}" \
                if e.code == 0 and e.text == "lost connection" else e.text
            for rcpt in message.recipients:
                # Keep only definite answers (a 4xx or 5xx to this RCPT): everything
                # else is retried, and nothing counts as delivered before the 250 to
                # the end of data.
                known = outcomes.get(rcpt)
                if known is None or known.state == DELIVERED or known.text[:1] not in "45":
                    outcomes[rcpt] = Outcome(PENDING, e.status, text, str(self.hop))
        finally:
            self.transactions += 1
        return outcomes

    async def _transaction(self, message: Message, outcomes: dict[str, Outcome]) -> None:
        """One message on this connection; each recipient's outcome lands in `outcomes`."""
        if message.body_8bit and "8BITMIME" not in self.extensions:
            converted = await self._downgraded(message)
            if isinstance(converted, Outcome):
                for rcpt in message.recipients:
                    outcomes[rcpt] = converted
                return
            message = converted
        refused = self._unsendable(message)
        if refused is not None:
            for rcpt in message.recipients:
                outcomes[rcpt] = refused
            return
        accepted = await self._mail_and_rcpts(message, outcomes)
        if accepted is not None:
            await self._data(message, accepted, outcomes)

    async def _mail_and_rcpts(self, message: Message,
                              outcomes: dict[str, Outcome]) -> list[str] | None:
        """MAIL FROM and every RCPT TO (with DATA, when pipelined): the recipients the
        peer accepted; None after a 421, when nothing more may be sent."""
        remote = str(self.hop)
        pipelining = "PIPELINING" in self.extensions
        mail = self._mail_command(message, message.wire_size())
        dsn = "DSN" in self.extensions
        rcpts = [b"RCPT TO:<" + r.encode("utf-8") + b">"
                 + (message.rcpt_dsn.get(r, "").encode() if dsn else b"")
                 for r in message.recipients]
        self._stage = "sending MAIL FROM"
        if pipelining:  # RFC 2920 3.1: DATA may end a pipelined group
            self._write(b"".join(c + b"\r\n" for c in [mail, *rcpts, b"DATA"]))
        else:
            self._write(mail + b"\r\n")
        mail_reply = await self._reply()
        accepted: list[str] = []
        for rcpt, command in zip(message.recipients, rcpts, strict=True):
            if not pipelining:
                if mail_reply.code != 250 or not self.usable:
                    break  # refused, or a 421: no further RCPT
                self._write(command + b"\r\n")
            self._stage = "sending RCPT TO"
            reply = await self._reply()
            if mail_reply.code != 250:
                continue  # pipelined RCPTs after a refused MAIL: replies to discard
            if reply.code in (250, 251):
                accepted.append(rcpt)
            else:
                outcomes[rcpt] = _outcome(reply, remote, "1.0")
        if mail_reply.code != 250:
            for rcpt in message.recipients:
                outcomes[rcpt] = _outcome(mail_reply, remote, "0.0")
        if not self.usable:  # a 421 (RFC 5321 3.8): nothing more on this connection
            for rcpt in message.recipients:
                outcomes.setdefault(rcpt, Outcome(
                    PENDING, "4.4.2", f"{remote} closed the session (421) before this "
                    "recipient was tried", remote))
            return None
        return accepted

    async def _data(self, message: Message, accepted: list[str],
                    outcomes: dict[str, Outcome]) -> None:
        """DATA (its reply only, when pipelined), the body and the final reply, which
        alone counts the accepted recipients delivered."""
        remote = str(self.hop)
        pipelining = "PIPELINING" in self.extensions
        dsn = "DSN" in self.extensions
        self._stage = "sending DATA"
        if pipelining:
            data_reply = await self._reply()
        elif accepted:
            self._write(b"DATA\r\n")
            data_reply = await self._reply()
        else:
            await self._rset()
            return
        if data_reply.code != 354:
            if data_reply.code < 400:
                # RFC 5321 4.1.1.4: only 354 opens the data; a 2xx here is a peer out of
                # step (or lying), and must never count the message as delivered.
                raise SMTPClientError(f"protocol error: {remote} answered DATA with "
                                      f"{data_reply.text[:200]}")
            for rcpt in accepted:
                outcomes[rcpt] = _outcome(data_reply, remote, "0.0")
            await self._rset()
            return
        if not accepted:  # 354 with no recipient: a broken peer; never send the body
            raise SMTPClientError(f"{remote} accepted DATA without recipients")
        self._stage = "sending message body"
        await self._send_body(message)
        self._stage = "sending end of data"
        final = await self._reply(2 * self.settings.command_timeout)  # 4.5.3.2.6: 10 min
        for rcpt in accepted:
            outcomes[rcpt] = _outcome(final, remote, "0.0")
            outcomes[rcpt].peer_dsn = dsn

    async def _downgraded(self, message: Message) -> Message | Outcome:
        """The message made 7-bit for a peer without 8BITMIME (RFC 6152 3: "convert"
        rather than bounce; mime7bit.py), in a thread; the Outcome to give when
        it cannot be (8-bit headers, a binary part): 5.6.3, as before."""
        def convert() -> bytes:
            data = message.data if message.path is None else message.path.read_bytes()
            return to_7bit(data)

        try:
            data = await threads.deferToThread(convert)
        except DowngradeError as e:
            return Outcome(FAILED, "5.6.3", f"{self.hop.host} does not support 8BITMIME "
                           f"and the message cannot be made 7-bit: {e}", str(self.hop))
        except OSError as e:
            return Outcome(PENDING, "4.3.0", f"cannot read the queued message: {e.strerror}",
                           str(self.hop))
        log.info("{hop}: no 8BITMIME; message sent as 7-bit (quoted-printable/base64)",
                 hop=self.hop)
        return dataclasses.replace(message, data=data, path=None, body_8bit=False,
                                   size=len(data), lines=data.count(b"\n"))

    def _unsendable(self, message: Message) -> Outcome | None:
        for address in (message.sender, *message.recipients):
            if _BAD_PATH.search(address):  # never let a stored address inject commands
                return Outcome(FAILED, "5.1.3", f"bad address syntax: {address!r}")
        limit = self.extensions.get("SIZE", "")
        size = message.wire_size()
        if limit.isdigit() and int(limit) and size > int(limit):
            return Outcome(FAILED, "5.3.4", f"message size {size} exceeds the limit of "
                           f"{self.hop.host} ({limit})", str(self.hop))
        if message.smtputf8 and "SMTPUTF8" not in self.extensions:
            return Outcome(FAILED, "5.6.7", f"{self.hop.host} does not support SMTPUTF8, "
                           "needed for this message (RFC 6531)", str(self.hop))
        if message.requiretls and "REQUIRETLS" not in self.extensions:
            return Outcome(FAILED, "5.7.30", f"{self.hop.host} does not support "
                           "REQUIRETLS, needed for this message (RFC 8689)", str(self.hop))
        return None

    async def _send_body(self, message: Message) -> None:
        """Stream the body, waiting whenever the socket's send buffer is full."""
        assert self.proto is not None
        encoder = BodyEncoder()
        if message.path is None:
            self._write(encoder.feed(message.data) + encoder.end())
            return
        try:
            f = await threads.deferToThread(open, message.path, "rb")
        except OSError as e:  # deleted by `mailserver queue delete` meanwhile
            raise SMTPClientError(f"cannot read the queued message: {e.strerror}") from None
        try:
            while True:
                chunk = await threads.deferToThread(f.read, CHUNK)
                if not chunk:
                    break
                self._write(encoder.feed(chunk))
                await self.proto.drained(self.settings.command_timeout, self.clock)
        except OSError as e:
            raise SMTPClientError(f"cannot read the queued message: {e.strerror}") from None
        finally:
            threads.deferToThread(f.close)
        self._write(encoder.end())

    def _mail_command(self, message: Message, size: int) -> bytes:
        params = ""
        if "SIZE" in self.extensions:
            params += f" SIZE={size}"
        if message.body_8bit:
            params += " BODY=8BITMIME"
        if message.smtputf8:
            params += " SMTPUTF8"
        if "DSN" in self.extensions:
            params += message.mail_dsn  # RFC 3461 4.3, 4.4
        if message.requiretls:
            params += " REQUIRETLS"
        return f"MAIL FROM:<{message.sender}>{params}".encode()

    async def _rset(self) -> None:
        if not self.usable:  # after a 421: the peer is closing; say nothing more
            return
        self._stage = "sending RSET"
        reply = await self._command(b"RSET")
        if reply.code != 250:
            self.usable = False

    async def close(self) -> None:
        """QUIT politely; never raises. The reply is awaited QUIT_TIMEOUT at most: every
        message is settled by now, and a peer that never answers QUIT must not hold a
        connection slot for the whole command timeout (Postfix does not wait at all:
        smtp_skip_quit_response = yes)."""
        if self.proto is None or self.proto.transport is None:
            return
        try:
            if self.usable:
                self._stage = "sending QUIT"
                self._write(b"QUIT\r\n")
                await self.proto.next_reply(min(QUIT_TIMEOUT, self.settings.command_timeout),
                                            self.clock)
        except SMTPClientError:
            pass
        finally:
            self.proto.transport.loseConnection()

    def abort(self) -> None:
        if self.proto is not None:
            abort_transport(self.proto.transport)

    # -- plumbing -----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self.proto is not None and self.proto.transport is not None
        self.proto.transport.write(data)

    async def _command(self, line: bytes) -> SMTPReply:
        self._write(line + b"\r\n")
        return await self._reply()

    async def _reply(self, timeout: float | None = None) -> SMTPReply:
        assert self.proto is not None
        reply = await self.proto.next_reply(timeout or self.settings.command_timeout,
                                            self.clock)
        self.replies += 1
        if reply.code == 421:
            # RFC 5321 3.8: the server is closing the channel. The transaction's
            # recipients are deferred, and the connection is never used again.
            self.usable = False
        return reply

    def _refused(self, reply: SMTPReply) -> SMTPClientError:
        return SMTPClientError(f"host {self.hop} refused to talk to me: {reply.text}",
                               reply.code, reply.status("0.0"))


class _TLSFailed(Exception):
    pass


def _outcome(reply: SMTPReply, remote: str, detail: str) -> Outcome:
    if 200 <= reply.code < 300:
        state = DELIVERED
    elif 500 <= reply.code < 600:
        state = FAILED
    else:
        state = PENDING
    status = reply.status(detail)
    if state == PENDING and not status.startswith("4"):
        status = "4." + detail
    return Outcome(state, status, reply.text, remote)


def _connect_reason(e: Exception) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "Connection refused"
    if isinstance(e, error.TimeoutError):
        return "Connection timed out"
    return str(e.__class__.__name__)
