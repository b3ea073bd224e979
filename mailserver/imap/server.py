"""The IMAP4rev1 session (RFC 3501) on the `imap` and `imaps` listeners.

One state machine per connection, one command at a time. A command that waits for the
disk (every store call runs in a disk thread) holds all later input in our buffer and,
past MAX_PENDING_INPUT, pauses the socket: answers go out strictly in the order the
commands came (RFC 3501 5.5), which twisted.mail's server gets wrong (twisted#9282).

Framing is ours too: a command is a line plus, for each `{n}` / `{n+}` literal at a
line's end (RFC 3501 4.3, RFC 7888), n octets and another line. Lines and literals are
bounded before anything is buffered, so neither a 1 GiB line nor `{4294967295}` costs
memory. grammar.py parses the framed command; commands_*.py carry out each command,
as command_table.py assigns them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import interfaces
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.core import metrics
from mailserver.core.connection import Goodbyes, LineConnection
from mailserver.core.context import MailboxFactory
from mailserver.core.lines import IMAP_LINES, LineRefused
from mailserver.core.peer import trusted_link
from mailserver.imap import appendext, commands_mailbox, compress, context, grammar, searchres, utf8
from mailserver.imap.capabilities import capability_list
from mailserver.imap.command_table import (  # noqa: F401 - SELECTED_COMMANDS: kept importable
    HANDLERS,
    SELECTED_COMMANDS,
    SYNC_AFTER,
    SYNC_BEFORE,
    Handler,
    wrong_state,
)
from mailserver.imap.commands import (
    ANSWERED,
    Account,
    Refusal,
    Selected,
    State,
    bad,
    index_of_uid,
    uid_set_text,
)
from mailserver.imap.encode import flag_list
from mailserver.interfaces import Changes, StoreError
from mailserver.logs import logger

log = logger(__name__)

#: Longest command line (without literals); core/lines.py states why (IMAP_LINES).
MAX_LINE = IMAP_LINES.max_line
#: Largest command, literals included, except APPEND's message (APPENDLIMIT).
MAX_COMMAND = 64 * 1024
#: Pipelined input held while a command is pending before we stop reading the socket.
MAX_PENDING_INPUT = 256 * 1024
#: An APPEND literal bigger than this is collected in a buffer of its own, not among the
#: command's parts, and handed to the store as it is: the message is in memory once
#: (joining the parts and slicing the literal out again would make it three times).
BIG_LITERAL = 64 * 1024
_LITERAL_ANNOUNCEMENT = re.compile(rb"\{\d+\+?\}\r\n$")
#: Failed LOGIN/AUTHENTICATE attempts before the connection is closed.
MAX_AUTH_FAILURES = 5
#: RFC 3501 5.4: an authenticated session's autologout timer is at least 30 minutes.
AUTHENTICATED_TIMEOUT = 31 * 60


@implementer(interfaces.IPushProducer)
class WriteFlow:
    """Flow control for long answers (FETCH of many bodies): registered with the
    transport while they are written; `wait()` fires once the client has read enough."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiters: list[Deferred[None]] = []

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.stopped = True
        self.resumeProducing()

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.paused and not self.stopped:
            self._waiters.append(d)
        else:
            d.callback(None)
        return d


class IMAPServerFactory(MailboxFactory["IMAPSession"]):
    """Builds one IMAPSession per connection, sharing config, portal, disk threads,
    TLS, the way to users' stores and the login throttle (the context's).

    `mailboxes.open_user_store(mailbox)` builds a user's IUserStore (blocking: called
    in a disk thread); `disk` runs blocking calls (`run(fn, *args) -> Deferred`).
    """

    default_name = "imap"

    def new_session(self, number: int) -> IMAPSession:
        return IMAPSession(self, number)


class SessionEnded(Exception):
    """The session said `* BYE` in the middle of a command and is closing: the command
    stops without a tagged answer."""


class IMAPSession(LineConnection):
    """One IMAP connection (the reading, waiting, error limit and timeouts are
    core/connection.py's, the framing rules core/lines.py's IMAP_LINES)."""

    rules = IMAP_LINES
    goodbyes = Goodbyes(timeout="* BYE Autologout; idle for too long",
                        errors="* BYE Too many invalid commands",
                        shutdown="* BYE Server shutting down")
    max_pending_input = MAX_PENDING_INPUT
    # Answers are written in few big chunks, then the tagged line alone: with Nagle
    # that line waited for the client's delayed ACK (40 ms on Linux) whenever the
    # chunk before it came from a disk thread, e.g. every warm FETCH of headers.
    tcp_no_delay = True
    shut_down_while_busy = True  # `* BYE` may come at any time (RFC 3501 7.1.5)
    timeout_log = "{session} autologout from {peer}"

    def __init__(self, factory: IMAPServerFactory, number: int) -> None:
        self.factory = factory
        self.config = factory.config
        self.session_id = f"{factory.id_prefix}-{number}"
        self.state = State.NOT_AUTHENTICATED
        self.tls_active = factory.implicit_tls
        #: The user and their store, from login on (states AUTHENTICATED, SELECTED).
        self.account: Account | None = None
        #: The selected mailbox, in state SELECTED only.
        self.selected: Selected | None = None
        #: RFC 7162: CONDSTORE enabled (by ENABLE or a CONDSTORE-enabling command), and
        #: QRESYNC enabled (ENABLE only): see commands_condstore.py.
        self.condstore = False
        self.qresync = False
        self.auth_failures = 0
        self.utf8_accept = False  # ENABLE UTF8=ACCEPT (RFC 6855): names in UTF-8
        self.imap4rev2 = False  # ENABLE IMAP4rev2 (RFC 9051): see rev2.py
        self.flow: WriteFlow | None = None
        #: COMPRESS=DEFLATE's state once active (imap/compress.py).
        self.compression: compress.Deflate | None = None
        self.init_connection()
        # Commands with literals
        self._parts: list[bytes] = []      # the command framed so far
        self._parts_size = 0
        self._literal_left = 0             # octets of the current literal still to come
        #: A big APPEND message literal, collected apart (see BIG_LITERAL), and the
        #: index in _parts where it belongs (a `{0}` stands in for it there).
        self._body: bytearray | None = None
        self._body_at = 0
        self._body_line = b""  # its announcement as sent (appendext.inliner)
        #: While set, the next line is the answer to a continuation (`+`) we sent:
        #: an AUTHENTICATE response or IDLE's DONE.
        self._continuation: Callable[[bytes], None] | None = None
        # IDLE
        self.idle_tag: str | None = None
        self._idle_syncing = False
        self._idle_again = False
        self.idle_waiters: list[Deferred[None]] = []

    # -- connection lifecycle ------------------------------------------------------------

    def greeting(self) -> None:
        caps = " ".join(self.capabilities())
        self.send(f"* OK [CAPABILITY {caps}] {self.config.hostname} IMAP4rev1 ready\r\n"
                  .encode())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self.flow is not None:
            self.flow.stopProducing()
        if not self._busy:  # else the running command's end drops it (one call at a time)
            self._drop_view()

    def closed_while_busy(self) -> None:
        if self._lost:
            self._drop_view()

    # The session is the transport's producer (core/flow.py) for its whole life; a long
    # FETCH answer waits on `self.flow`, which follows the session's pause and resume.

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        super().pauseProducing()
        if self.flow is not None:
            self.flow.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        if self.flow is not None:
            self.flow.resumeProducing()
        super().resumeProducing()

    def authenticated(self) -> Account:
        """The user and their store. HANDLERS run a command that needs them only in
        the states that have them, so a missing one is a bug, not a client error."""
        if self.account is None:
            raise RuntimeError(f"{self.session_id}: not authenticated")
        return self.account

    def selection(self) -> Selected:
        """The selected mailbox; as `authenticated`, for SELECTED-state commands."""
        if self.selected is None:
            raise RuntimeError(f"{self.session_id}: no mailbox selected")
        return self.selected

    def watch_folder(self) -> None:
        """Watch the selected folder (IDLE only). Outside IDLE every command syncs, so a
        watch would only cost: each rename of our own STORE is an inotify event read on
        the reactor thread (20,000 of them for STORE 1:* on 10,000 messages)."""
        selected = self.selected
        if selected is None or selected.unwatch is not None or self.account is None:
            return
        try:
            selected.unwatch = self.account.store.watch(selected.name, self.folder_changed)
        except Exception as e:  # IDLE falls back to reporting at the next command
            log.warn("{session} cannot watch {name}: {e!r}", session=self.session_id,
                     name=selected.name, e=e)

    def unwatch_folder(self) -> None:
        selected = self.selected
        if selected is not None and selected.unwatch is not None:
            unwatch, selected.unwatch = selected.unwatch, None
            unwatch()

    def _drop_view(self) -> Deferred[None]:
        """Stop watching and close the view; closing writes the index, so it runs in a
        disk thread. The Deferred fires once it is closed (errors are logged)."""
        self.unwatch_folder()
        selected, self.selected = self.selected, None
        if selected is None:
            return succeed(None)
        d = self.blocking(selected.view.close)
        d.addErrback(lambda f: log.failure("{session} closing the view failed", f,
                                           session=self.session_id))
        return d

    # -- capabilities --------------------------------------------------------------------

    @property
    def plaintext_allowed(self) -> bool:
        return (self.tls_active or self.config.auth.allow_plaintext_without_tls
                or trusted_link(self.transport, self.config))  # nginx did TLS

    def capabilities(self) -> list[str]:
        return capability_list(self)

    # -- output --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            if self.compression is not None:
                data = self.compression.compress(data)
            self.transport.write(data)

    emit = send

    def report(self, changes: Changes) -> None:
        """Untagged updates from a sync (RFC 3501 7.4.1, 7.3.1, 7.3.2, 7.4.2); with
        QRESYNC, VANISHED instead of EXPUNGE (RFC 7162 3.2.10) and MODSEQ in each FETCH."""
        lines = [context.removed_before_expunge(self.selected, changes)]  # RFC 5267 4.3
        if self.qresync and changes.expunged_uids:
            lines.append(b"* VANISHED %s\r\n" % uid_set_text(changes.expunged_uids).encode())
        else:
            lines += [b"* %d EXPUNGE\r\n" % n for n in changes.expunged]
        modseqs = changes.modseqs or {}
        view = self.selected.view if self.selected is not None else None
        if changes.exists is not None:
            lines.append(b"* %d EXISTS\r\n" % changes.exists)
            if not self.imap4rev2:  # RFC 9051 7.4.1: no RECENT in rev2
                recent: int = view.recent_count if view is not None else 0
                lines.append(b"* %d RECENT\r\n" % recent)
        if view is not None:
            lines.append(self.keyword_lines(f for info in changes.flags_changed
                                            for f in info.flags))
            for info in changes.flags_changed:
                i = index_of_uid(view.messages, info.uid)
                if i is not None:
                    modseq = (b" MODSEQ (%d)" % modseqs[info.uid] if info.uid in modseqs
                              else b"")
                    lines.append(b"* %d FETCH (UID %d FLAGS %s%s)\r\n" % (
                        i + 1, info.uid, flag_list(sorted(info.flags),
                                               info.recent and not self.imap4rev2), modseq))
        if any(lines):
            self.send(b"".join(lines))

    def keyword_lines(self, flags: Iterable[str] = ()) -> bytes:
        """FLAGS and PERMANENTFLAGS again if the selected folder has keywords (defined
        there, or among `flags`) the client was not told of yet; else nothing."""
        selected = self.selected
        if selected is None:
            return b""
        view = selected.view
        known = selected.announced_keywords
        told = {k.lower() for k in known}
        fresh: dict[str, str] = {}  # keywords are case-insensitive (RFC 3501 2.3.2)
        keywords: Iterable[str] = view.keywords
        for f in (*keywords, *flags):
            if not f.startswith("\\") and f.lower() not in told:
                fresh.setdefault(f.lower(), f)
        if not fresh:
            return b""
        known.update(fresh.values())
        lines = commands_mailbox.flags_lines(view, known)
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")

    async def sync(self, report_expunges: bool = True) -> None:
        selected = self.selected
        if selected is None:
            return
        changes: Changes = await self.blocking(selected.view.sync, report_expunges)
        if selected.view.validity_changed:
            # RFC 3501 2.3.1.1: a new UIDVALIDITY voids every UID the client holds; with
            # the mailbox selected the only safe answer is to end the session (Dovecot
            # does the same). Nothing else of this command is answered.
            log.info("{session} UIDVALIDITY of {mailbox} changed; disconnecting",
                     session=self.session_id, mailbox=selected.name)
            self.send(b"* BYE UIDVALIDITY changed, mailbox must be selected again\r\n")
            self.close()
            raise SessionEnded()
        self.report(changes)

    async def context_updates(self) -> None:
        """RFC 5267 4: ADDTO / REMOVEFROM for the searches kept up to date, if any."""
        selected = self.selected
        if context.active(selected):
            assert selected is not None
            self.send(await self.blocking(context.updates, selected.view, selected))

    @contextmanager
    def write_flow(self) -> Iterator[WriteFlow]:
        """Flow control while a long answer is written: the writer waits on
        `flow.wait()` while the transport's buffer is full (our pauseProducing)."""
        flow = WriteFlow()
        flow.paused = self._writing_paused
        self.flow = flow
        try:
            yield flow
        finally:
            self.flow = None

    def blocking(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run a blocking store call in a disk thread (never on the reactor)."""
        d: Deferred[Any] = self.factory.disk.run(fn, *args)
        return d

    # -- input ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.compression is None:
            super().dataReceived(data)
        else:
            compress.received(self, data)

    def resume_reading(self) -> None:
        # Compressed input not inflated yet is inflated first (imap/compress.py).
        if self.compression is None or compress.pump(self):
            super().resume_reading()

    def may_handle_input(self) -> bool:
        # A command waiting for a continuation answer (AUTHENTICATE) is busy, but
        # its answer is the one line we must read.
        return ((not self._busy or self._continuation is not None)
                and not self._closing and not self._writing_paused)

    def take_raw(self) -> bool:
        """The octets of a literal (RFC 3501 4.3) are not lines."""
        if not self._literal_left:
            return False
        take = min(self._literal_left, len(self._buffer))
        if self._body is not None and self._body_at == len(self._parts):
            self._body += self._buffer[:take]
        else:
            self._parts.append(bytes(self._buffer[:take]))
        del self._buffer[:take]
        self._literal_left -= take
        return True

    def line_refused(self, refused: LineRefused) -> None:
        """Overlong, bare CR or NUL: BAD with the command's tag, and the command so far
        is forgotten."""
        tag = grammar.peek_tag(refused.head) if not self._parts else self._command_tag()
        self._reset_command()
        error = refused.error
        self.send(Refusal(error.status, error.text, error.code or "").line(tag or "*"))
        self._count_error()
        if self._continuation is not None:
            # The refused line was the answer to our `+`: that ends the exchange
            # (AUTHENTICATE cancelled, IDLE without DONE), or the next command would be
            # taken for the answer.
            handler, self._continuation = self._continuation, None
            handler(b"*")

    def line_received(self, line: bytes) -> None:
        line += b"\r\n"  # a bare LF is taken as CRLF (the framing below wants CRLF)
        if self._continuation is not None:
            handler, self._continuation = self._continuation, None
            handler(line)
            return
        self._frame_line(line)

    def _command_tag(self) -> str | None:
        return grammar.peek_tag(self._parts[0]) if self._parts else None

    def _reset_command(self) -> None:
        self._body = None
        self._parts = []
        self._parts_size = 0
        self._literal_left = 0

    def _frame_line(self, line: bytes) -> None:
        """Add a line to the command; dispatch it when no literal follows."""
        self._parts.append(line)
        self._parts_size += len(line)
        literal = grammar.literal_at_end(line)
        if literal is None:
            data = b"".join(self._parts)
            body, body_at, parts = self._body, self._body_at, self._parts
            self._reset_command()
            inline = (appendext.inliner(parts, body_at, body, self._body_line)
                      if body is not None else None)
            if inline is not None and parts[body_at:] != [b"\r\n"]:
                # More follows the big literal: MULTIAPPEND or CATENATE, or else (a
                # mailbox name that big) refused as TOOBIG by _dispatch.
                self._dispatch(inline(), None, appendext.MANY)
                return
            self._dispatch(data, body, inline)
            return
        size, non_sync = literal
        word = grammar.command_word(self._parts[0])
        tag = self._command_tag() or "*"
        limit = MAX_COMMAND
        message_size = self.config.limits.message_size
        if word == "APPEND":
            limit += message_size  # RFC 7889: APPENDLIMIT bounds the message literal
        if (size > grammar.MAX_NUMBER or self._parts_size + size > limit
                or (word == "APPEND" and size > message_size)):
            self._reset_command()
            too_big = (word == "APPEND" and size <= grammar.MAX_NUMBER)
            if non_sync:
                # RFC 7888 4: the octets are on their way and we will not read them;
                # say so and close, rather than execute them as commands.
                self.send(bad("Literal too large", "TOOBIG").line(tag))
                self.send(b"* BYE Literal too large\r\n")
                self.close()
                return
            # RFC 7889 4 / RFC 3501 7.5: no "+", so the client never sends the octets.
            refusal = (Refusal("NO", "Message too large", "TOOBIG") if too_big
                       else bad("Literal too large", "TOOBIG"))
            self.send(refusal.line(tag))
            self._count_error()
            return
        if self.state is State.NOT_AUTHENTICATED and word not in ("LOGIN", "AUTHENTICATE"):
            # Before login, literals only make sense for LOGIN's name and password.
            if size > 8192:
                self._reset_command()
                self.send(bad("Literal too large", "TOOBIG").line(tag))
                if non_sync:
                    self.close()
                return
        if not non_sync:
            self.send(b"+ Ready for literal data\r\n")
        self._parts_size += size
        self._literal_left = size
        if word == "APPEND" and size > BIG_LITERAL and self._body is None and size:
            self._parts[-1] = _LITERAL_ANNOUNCEMENT.sub(b"{0}\r\n", line)
            self._body = bytearray()
            self._body_at = len(self._parts)
            self._body_line = line

    def expect_continuation(self, handler: Callable[[bytes], None]) -> None:
        """The next input line answers a `+` we sent (it is not a command)."""
        self._continuation = handler

    # -- commands ------------------------------------------------------------------------

    def _dispatch(self, data: bytes, body: bytearray | None = None,
                  inline: Callable[[], bytes] | None = None) -> None:
        """Parse and run one framed command; `body`: its big APPEND message literal
        (`inline()`: the command with it in place, for MULTIAPPEND and CATENATE)."""
        try:
            command = grammar.parse_command(data)
            if body is not None or inline is appendext.MANY:
                command = appendext.with_body(command, body, inline)
            if self.utf8_accept:
                command = utf8.names_from_client(command)
        except grammar.ParseError as e:
            tag = e.tag or grammar.peek_tag(data) or "*"
            self.send(bad(e.text, e.code).line(tag))
            self._count_error()
            return
        entry = HANDLERS.get(command.name)
        if entry is None:
            self.send(bad(f"Unknown command {command.name}").line(command.tag))
            self._count_error()
            return
        states, handler = entry
        if self.state not in states:
            self.send(bad(wrong_state(command.name, self.state)).line(command.tag))
            self._count_error()
            return
        d = metrics.timed_imap_command(command.name, ensureDeferred(self._run(command, handler)))
        if not d.called:
            self._wait_for(d)

    async def _run(self, command: grammar.Command, handler: Handler) -> None:
        try:
            uid = getattr(command, "uid", False)
            if self.selected is not None and command.name in SYNC_BEFORE:
                # Current flags and messages before answering from them (another session
                # may have changed them). Sequence numbers in the command refer to the
                # client's numbering, so expunges wait, except for UID commands (RFC 3501
                # 7.4.1: no EXPUNGE during FETCH, STORE, SEARCH; UID forms may have them).
                await self.sync(report_expunges=uid)
            command = searchres.resolve(self.selected, command)  # RFC 5182 "$"
            text = await handler(self, command)
            if self.selected is not None and command.name in SYNC_AFTER:
                await self.sync()
            await self.context_updates()
            if text is ANSWERED:
                return
            self.send(f"{command.tag} OK {text or command.name.title() + ' completed'}\r\n"
                      .encode("utf-8", "replace"))
        except SessionEnded:
            return
        except Refusal as refusal:
            self.send(refusal.line(command.tag))
            if refusal.status == "BAD":
                self._count_error()
        except StoreError as e:
            self.send(Refusal("NO", e.text, e.code).line(command.tag))
        except Exception:
            log.failure("{session} {command} failed", session=self.session_id,
                        command=command.name)
            self.send(Refusal("NO", "Internal error", "SERVERBUG").line(command.tag))

    def logged_in(self, account: Account) -> None:
        self.account = account
        self.state = State.AUTHENTICATED
        self.setTimeout(max(AUTHENTICATED_TIMEOUT, self.config.limits.command_timeout))

    def deselect(self) -> Deferred[None]:
        """Back to the authenticated state; await the result before the next store call."""
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED
        return self._drop_view()

    # -- IDLE (RFC 2177) -------------------------------------------------------------------

    def folder_changed(self) -> None:
        """The store's watch: something changed in the selected folder. Outside IDLE the
        next command's sync reports it; during IDLE we report it at once."""
        if self.idle_tag is None or self._closing:
            return
        if self._idle_syncing:
            self._idle_again = True
            return
        self._idle_syncing = True
        d = ensureDeferred(self._idle_sync())
        d.addErrback(lambda f: log.failure("{session} IDLE sync failed", f,
                                           session=self.session_id))

    async def _idle_sync(self) -> None:
        try:
            while True:
                self._idle_again = False
                if self.idle_tag is not None:
                    try:
                        await self.sync()
                        await self.context_updates()
                    except SessionEnded:
                        return
                if not self._idle_again:
                    return
        finally:
            self._idle_syncing = False
            waiters, self.idle_waiters = self.idle_waiters, []
            for d in waiters:
                d.callback(None)
