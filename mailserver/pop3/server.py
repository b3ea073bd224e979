"""The POP3 session (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595), AUTH (RFC 5034).

One state machine per connection: AUTHORIZATION -> TRANSACTION -> UPDATE (RFC 1939 3).
One command at a time: while a login or a disk job is pending, later pipelined commands
wait in our buffer (RFC 2449 6.6 PIPELINING: replies in order), and while the transport's
write buffer is full (a client slow to read a big RETR) we read no further commands,
so memory stays bounded by one message plus the socket buffers.

Wire parsing lives in grammar.py, the wire form of messages in maildrop.py, the
maildrop itself (snapshot, files, the [IN-USE] lock) in the store behind
interfaces.IMaildrop, opened through the context's IMailboxOpener in a disk thread;
this module only sequences them. Failed logins count in the context's LoginThrottle,
shared with IMAP and submission.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.auth.realm import IMailUser
from mailserver.auth.sasl import SASLError, decode_base64, login_name, plain_credentials
from mailserver.core import metrics
from mailserver.core.connection import Goodbyes, LineConnection
from mailserver.core.context import MailboxFactory
from mailserver.core.lines import POP3_LINES, LineRefused
from mailserver.core.peer import trusted_link
from mailserver.interfaces import IMaildrop, MaildropInUse, MaildropMessage
from mailserver.logs import logger
from mailserver.pop3 import grammar, maildrop, readahead
from mailserver.pop3.transaction import Refused, TransactionCommands

log = logger(__name__)

#: Pipelined input held while a command is pending before we stop reading the socket.
MAX_PENDING_INPUT = 64 * 1024
#: RFC 1939 3: the autologout timer "MUST be of at least 10 minutes duration".
MIN_TRANSACTION_TIMEOUT = 600
#: Failed logins on one connection before it is closed (Dovecot's default is 3 too);
#: each failure already costs the client the checker's delay. Across connections (and
#: protocols) the context's LoginThrottle counts them per client address.
MAX_AUTH_FAILURES = 3
#: The reply to a login from an address the LoginThrottle blocks. RFC 3206 4: SYS/TEMP
#: is "a problem which is likely to be temporary ... no need to alert the user, unless
#: the failure persists" (its example: "a central resource which is currently
#: locked"), so the client retries later. Not [AUTH] (RFC 3206 5), although its list
#: includes "an attempt to authenticate in violation of policy (such as from an invalid
#: location)": AUTH is how a client learns to ask the user for new credentials (RFC
#: 3206 3), and here the right password is refused too (it is never checked), e.g. for
#: a user behind the same NAT as a guesser. SMTP says 421 4.7.0, IMAP NO [UNAVAILABLE].
THROTTLED = ("[SYS/TEMP] Too many failed logins from your address; "
             "try again later.")
IMPLEMENTATION = "mailserver"

AUTHORIZATION, TRANSACTION, UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"

#: Which commands each state accepts (RFC 1939 4-6, RFC 2449 5, RFC 2595 4, RFC 5034 4).
ALLOWED = {
    AUTHORIZATION: frozenset({"USER", "PASS", "AUTH", "CAPA", "STLS", "QUIT"}),
    TRANSACTION: frozenset({"STAT", "LIST", "UIDL", "RETR", "DELE", "RSET", "NOOP", "TOP",
                            "QUIT", "CAPA"}),
    UPDATE: frozenset(),
}


@dataclass
class Login:
    """What a successful login and the maildrop open leave with the session."""

    address: str
    #: The locked snapshot; closing it releases the lock.
    maildrop: IMaildrop
    logout: Callable[[], None]


class POP3Factory(MailboxFactory["POP3Session"]):
    """Builds one POP3Session per connection; shares config, portal, disk threads,
    the way to users' maildrops and the login throttle (the context's)."""

    default_name = "pop3"

    def new_session(self, number: int) -> POP3Session:
        return POP3Session(self, number)

    @property
    def login_timeout(self) -> float:
        """Idle seconds before AUTHORIZATION ends (RFC 1939 leaves it to us) ..."""
        return self.config.limits.command_timeout

    @property
    def transaction_timeout(self) -> float:
        """... and in TRANSACTION (RFC 1939 3: at least 10 minutes)."""
        return max(self.config.limits.command_timeout, MIN_TRANSACTION_TIMEOUT)


class POP3Session(TransactionCommands, LineConnection):
    """One POP3 connection (the reading, waiting, error limit and timeouts are
    core/connection.py's, the framing rules core/lines.py's POP3_LINES)."""

    rules = POP3_LINES
    # A session closed by the server's shutdown deletes nothing: only QUIT reaches UPDATE.
    goodbyes = Goodbyes(timeout="-ERR Disconnected for inactivity.",
                        errors="-ERR Too many invalid commands, closing.",
                        shutdown="-ERR [SYS/TEMP] Server shutting down.")
    max_pending_input = MAX_PENDING_INPUT
    # Replies are whole (a message in one writeSequence): Nagle's algorithm would
    # only hold back the tail of each one until the client's delayed ACK.
    tcp_no_delay = True
    timeout_log = "{session} idle timeout from {peer}"

    def __init__(self, factory: POP3Factory, number: int) -> None:
        self.factory = factory
        self.config = factory.config
        self.session_id = f"{factory.id_prefix}-{number}"
        self.state = AUTHORIZATION
        self.tls_active = factory.implicit_tls
        self.user: str | None = None
        self.login: Login | None = None
        self.messages: Sequence[MaildropMessage] = ()
        #: Numbers of the messages sent by RETR (they get the Seen flag when the
        #: session ends).
        self.retrieved: set[int] = set()
        #: Message files read ahead of the RETR commands (once logged in).
        self.reader: readahead.ReadAhead | None = None
        self.auth_failures = 0
        self._sasl_pending = False  # AUTH PLAIN sent "+ ", waiting for the response
        #: A streamed RETR waiting for the write buffer to drain (drained()).
        self._drain_waiter: Deferred[None] | None = None
        self.init_connection()

    # -- connection lifecycle ------------------------------------------------------------

    def initial_timeout(self) -> float:
        timeout: float = self.factory.login_timeout
        return timeout

    def greeting(self) -> None:
        self._ok(f"{IMPLEMENTATION} POP3 server ready.")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._fire_drained()  # a streamed RETR waiting to write sees _closing and stops
        if self.state != UPDATE:
            # In UPDATE the deletions are running in a disk thread: _update's callback
            # (or _wait_for's errback) ends the login after them, so the lock keeps the
            # next session out until they are done (RFC 1939 8).
            self._end_login()

    def _end_login(self) -> None:
        """Release the maildrop lock and the avatar (dropped connection: no UPDATE, but
        what was retrieved still gets its Seen flag, before the lock goes)."""
        login, self.login = self.login, None
        if self.reader is not None:
            self.reader.close()
        if login is None:
            return
        retrieved, self.retrieved = sorted(self.retrieved), set()

        def release(_: object = None) -> None:
            login.maildrop.close()
            login.logout()

        if not retrieved:
            release()
            return
        d = self.factory.disk.run(login.maildrop.mark_seen, retrieved)
        d.addErrback(lambda f: log.failure("{session} marking Seen failed", f,
                                           session=self.session_id))
        d.addBoth(release)

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name (IPushProducer)
        self._closing = True
        self._fire_drained()

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name (IPushProducer)
        """The transport's write buffer is empty: a streamed RETR writes its next
        chunk (stream.py; writing it may pause us again at once), else pipelined
        commands are handled as before (the stream's end handles them)."""
        if self._drain_waiter is None:
            super().resumeProducing()
            return
        self._writing_paused = False
        self._fire_drained()

    def drained(self) -> Deferred[None] | None:
        """None if a big RETR may write its next chunk now, else a Deferred that fires
        once the transport's write buffer has drained (or the connection is gone)."""
        if not self._writing_paused or self._closing:
            return None
        self._drain_waiter = Deferred()
        return self._drain_waiter

    def _fire_drained(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            waiter.callback(None)

    # -- input ---------------------------------------------------------------------------

    def max_line(self) -> int:
        """RFC 5034 4: AUTH lines and SASL answers may be longer (pop3/grammar.py)."""
        return grammar.line_limit(bytes(self._buffer[:8]), self._sasl_pending)

    def line_refused(self, refused: LineRefused) -> None:
        self._sasl_pending = False  # RFC 5034 4: a refused response ends AUTH
        error = refused.error
        self._error(f"[{error.code}] {error.text}" if error.code else error.text)

    def line_received(self, line: bytes) -> None:
        self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        # RFC 1939 7: PASS only "immediately after a successful USER command"; any
        # other line in between (CAPA, AUTH, garbage) forgets the name.
        user, self.user = self.user, None
        if self._sasl_pending:
            self._sasl_pending = False
            self._sasl_response(line)
            return
        try:
            command = grammar.parse_command(line)
            if command.name == "PASS":
                self.user = user
            if command.name not in ALLOWED[self.state]:
                raise Refused(self._not_allowed(command.name))
            handler = getattr(self, "do_" + command.name)
            result = handler(command)
        except (grammar.CommandError, Refused) as e:
            self._error(str(e))
            return
        if isinstance(result, Deferred):
            self._wait_for(result)

    def _not_allowed(self, name: str) -> str:
        if self.state == AUTHORIZATION:
            return "Unknown command or not allowed before login."
        return f"{name} not allowed after login."

    def command_failed(self, failure: Failure) -> None:
        log.failure("{session} command failed", failure, session=self.session_id)
        self._err("[SYS/TEMP] Internal error; try again later.")
        if self.state == UPDATE:
            self._end_login()
            self._close()

    # -- output --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(data)
            self.resetTimeout()  # a long download is activity, not an idle session

    emit = _write

    def _ok(self, text: str = "") -> None:
        self._write(b"+OK " + text.encode("utf-8") + b"\r\n" if text else b"+OK\r\n")

    def _err(self, text: str) -> None:
        self._write(b"-ERR " + text.encode("utf-8") + b"\r\n")

    def _multiline(self, first: str, lines: list[str]) -> None:
        """RFC 1939 3: a multi-line response, terminated by a lone dot, in one write."""
        self._listing(first, "".join([line + "\r\n" for line in lines]))

    def _listing(self, first: str, body: str) -> None:
        """A multi-line response whose lines are already joined, each ending in CRLF."""
        status = f"+OK {first}\r\n" if first else "+OK\r\n"
        self._write(f"{status}{body}.\r\n".encode())

    def _error(self, text: str) -> None:
        """A refused command; it counts towards the error limit."""
        self._err(text)
        self._count_error()

    # -- AUTHORIZATION -------------------------------------------------------------------

    def plaintext_allowed(self) -> bool:
        """RFC 2595 2.2 / RFC 8314: no passwords over a clear channel unless allowed
        (or the channel is a trusted proxy's, which did TLS with the client)."""
        return (self.tls_active or self.config.auth.allow_plaintext_without_tls
                or trusted_link(self.transport, self.config))

    def capabilities(self) -> list[str]:
        """RFC 2449 6 (and RFC 2595 4 STLS, RFC 5034 SASL, RFC 3206 AUTH-RESP-CODE)."""
        caps = ["CAPA", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                "EXPIRE NEVER", "LOGIN-DELAY 0"]
        if self.state == AUTHORIZATION:
            if self.plaintext_allowed():
                caps += ["USER", "SASL PLAIN"]
            if self.factory.tls_options is not None and not self.tls_active:
                caps.append("STLS")
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return caps

    def do_CAPA(self, command: grammar.Command) -> None:
        self._multiline("Capability list follows", self.capabilities())

    def do_QUIT(self, command: grammar.Command) -> Deferred[None] | None:
        if self.state == TRANSACTION:
            return self._update()
        self._ok("Logging out.")
        self._close()
        return None

    def do_STLS(self, command: grammar.Command) -> None:
        if self.tls_active:
            raise Refused("TLS is already active.")
        if self.factory.tls_options is None:
            raise Refused("TLS not available.")
        self._ok("Begin TLS negotiation now.")
        # RFC 2595 4 and the STARTTLS injection attacks (CVE-2011-0411 and the POP3 cases
        # of 2021): whatever was pipelined after STLS in plaintext is thrown away.
        self.discard_input()
        self.transport.startTLS(self.factory.tls_options)  # type: ignore[union-attr]
        self.tls_active = True
        self.user = None

    def _refuse_plaintext(self) -> None:
        if not self.plaintext_allowed():
            raise Refused("[AUTH] Plaintext authentication disallowed on non-secure "
                          "(SSL/TLS) connections.")

    def do_USER(self, command: grammar.User) -> None:
        self._refuse_plaintext()
        self.user = command.user
        self._ok()

    def do_PASS(self, command: grammar.Pass) -> Deferred[None] | None:
        self._refuse_plaintext()
        if self.user is None:
            raise Refused("No username given.")
        user, self.user = self.user, None
        return self._authenticate(UsernamePassword(user.encode("utf-8"), command.password))

    def do_AUTH(self, command: grammar.Auth) -> Deferred[None] | None:
        if command.mechanism is None:
            # Not in RFC 5034; clients (fetchmail) probe with it, Dovecot lists mechanisms.
            self._multiline("", ["PLAIN"] if self.plaintext_allowed() else [])
            return None
        self._refuse_plaintext()
        if command.mechanism != "PLAIN":
            raise Refused("Unsupported authentication mechanism.")
        if self._throttled():
            return None
        if command.initial_response is None:
            self._sasl_pending = True
            self._write(b"+ \r\n")  # RFC 5034 4: an empty challenge
            return None
        return self._plain(command.initial_response)

    def _sasl_response(self, line: bytes) -> None:
        if line == b"*":
            self._error("Authentication cancelled.")  # RFC 5034 4
            return
        try:
            d = self._plain(line)
        except Refused as e:
            self._error(str(e))
            return
        if d is not None:
            self._wait_for(d)

    def _plain(self, response: bytes) -> Deferred[None] | None:
        try:
            credentials = plain_credentials(decode_base64(response))
        except SASLError as e:
            raise Refused(f"Invalid AUTH PLAIN data: {e}.") from None
        return self._authenticate(credentials)

    def _throttled(self) -> bool:
        """Refuse and close when this address has failed too often, over any protocol
        (core/throttle.py): reconnecting buys a guesser no more password checks."""
        if not self.factory.login_throttle.blocked(self.peer_ip, "pop3"):
            return False
        log.info("{session} login refused: too many failures from {peer}",
                 session=self.session_id, peer=self.peer_ip)
        self._err(THROTTLED)
        self._close()
        return True

    def _authenticate(self, credentials: IUsernamePassword) -> Deferred[None] | None:
        if self._throttled():
            return None
        self.setTimeout(None)  # the checker's delay is not the client's silence
        d: Deferred[Any] = metrics.counted_login(
            "pop3", self.factory.portal.login(credentials, None, IMailUser))
        d.addCallbacks(self._logged_in, self._login_failed,
                       errbackArgs=(login_name(credentials),))
        return d

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]]) -> Deferred[None] | None:
        _interface, avatar, logout = result
        if self._closing:
            logout()
            return None
        address: str = avatar.address
        d: Deferred[Any] = self.factory.disk.run(self.factory.mailboxes.open_maildrop,
                                                 avatar.mailbox)

        def opened(drop: IMaildrop) -> None:
            if self._closing:
                drop.close()
                logout()
                return
            self.login = Login(address, drop, logout)
            messages = self.messages = drop.messages
            self.reader = readahead.ReadAhead(self.factory.disk.run, drop)
            self.state = TRANSACTION
            self.setTimeout(self.factory.transaction_timeout)
            log.info("{session} {user} logged in from {peer}: {count} messages",
                     session=self.session_id, user=address, peer=self.peer_ip,
                     count=len(messages))
            self._ok(f"Logged in, {len(messages)} messages.")

        def not_opened(failure: Failure) -> None:
            logout()
            self.setTimeout(self.factory.login_timeout)
            if failure.check(MaildropInUse):
                log.info("{session} {user}: maildrop in use", session=self.session_id,
                         user=address)
                self._error("[IN-USE] Mailbox is locked by another POP3 session.")
                return
            log.failure("{session} cannot open maildrop of {user}", failure,
                        session=self.session_id, user=address)
            self._err("[SYS/TEMP] Cannot open the mailbox; try again later.")

        d.addCallbacks(opened, not_opened)
        return d

    def _login_failed(self, failure: Failure, account: str | None = None) -> None:
        self.setTimeout(self.factory.login_timeout)
        if not failure.check(UnauthorizedLogin):
            log.failure("{session} login error", failure, session=self.session_id)
            self._err("[SYS/TEMP] Temporary authentication failure.")
            return
        self.auth_failures += 1
        self.factory.login_throttle.failed(self.peer_ip, "pop3", account)
        self._error("[AUTH] Authentication failed.")
        if self.auth_failures >= MAX_AUTH_FAILURES and not self._closing:
            log.info("{session} {n} failed logins from {peer}, closing",
                     session=self.session_id, n=self.auth_failures, peer=self.peer_ip)
            self._err("[AUTH] Too many authentication failures.")
            self._close()

    # -- UPDATE ----------------------------------------------------------------------------

    def _update(self) -> Deferred[None]:
        """RFC 1939 6: QUIT in TRANSACTION removes the messages marked deleted, then
        releases the maildrop. Only QUIT gets here: a dropped connection deletes nothing."""
        assert self.login is not None
        self.state = UPDATE
        doomed = [n for n, m in enumerate(self.messages, 1) if m.deleted]
        retrieved, self.retrieved = sorted(self.retrieved), set()
        d: Deferred[Any] = self.factory.disk.run(maildrop.update, self.login.maildrop,
                                                 retrieved, doomed)

        def done(failed: int) -> None:
            address = self.login.address if self.login else ""
            self._end_login()  # the lock is free before the client reads +OK
            if failed:
                self._err(f"[SYS/TEMP] {failed} messages could not be deleted.")
            else:
                self._ok(f"Logging out, messages deleted: {len(doomed)}."
                         if doomed else "Logging out.")
            log.info("{session} {user} quit, {n} deleted", session=self.session_id,
                     user=address, n=len(doomed) - failed)
            self._close()

        return d.addCallback(done)
