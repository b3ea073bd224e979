"""Receiving the message itself (DATA, RFC 5321 4.1.1.4; BDAT, RFC 3030) and handing it
to its delivery transaction: a mixin of SMTPSession.

On its way the content passes the HeaderInspector (hop count on every port, Message-ID
and Date added on submission) and goes to the one transaction the delivery router gives
for the envelope (delivery/router.py: local mailboxes, the relay queue, or both, and in
which order they commit). The session adds Received; the router adds Return-Path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from mailserver.core import metrics
from mailserver.core.headers import HeaderInspector
from mailserver.core.trace import (
    new_message_id,
    received_header,
    with_protocol,
)
from mailserver.errors import ReplyError
from mailserver.interfaces import DeliveryEnvelope
from mailserver.logs import logger
from mailserver.reply import Reply
from mailserver.smtp import grammar
from mailserver.smtp.data import ChunkDecoder, DotDecoder
from mailserver.smtp.state import SessionState

if TYPE_CHECKING:
    from mailserver.smtp.server import Envelope

log = logger(__name__)


class MessageReception(SessionState):
    """DATA and BDAT, for SMTPSession."""

    def do_DATA(self, command: grammar.Data) -> None:
        envelope = self._check_ready_for_data()
        if self._decoder is not None:  # BDAT chunks already under way
            raise ReplyError(503, "5.5.1", "Error: DATA after BDAT")
        self._start_message(envelope, DotDecoder(self.config.limits.message_size,
                                                 self._is_strict_8bit(envelope)))
        self._receiving = True
        self._send(Reply(354, None, "End data with <CR><LF>.<CR><LF>"))

    def do_BDAT(self, command: grammar.Bdat) -> None:
        """RFC 3030: the chunk is read whatever the verdict, so the session stays in sync."""
        self._bdat_last = command.last
        if not isinstance(self._decoder, ChunkDecoder):
            error: Reply | None = None
            try:
                envelope = self._check_ready_for_data()
            except ReplyError as e:
                error, envelope = e.reply, None
            strict = self._is_strict_8bit(envelope) if envelope else False
            decoder = ChunkDecoder(self.config.limits.message_size, strict)
            if envelope is not None:
                self._start_message(envelope, decoder)
            else:
                self._decoder = decoder
            self._bdat_failed = error
        assert isinstance(self._decoder, ChunkDecoder)
        self._decoder.begin_chunk(command.size)
        self._bdat_octets += command.size
        self._receiving = True
        if command.size == 0:
            self._feed_message()

    def _check_ready_for_data(self) -> Envelope:
        if self.envelope is None:
            raise ReplyError(503, "5.5.1", "Error: need MAIL command")
        if not self.envelope.mailboxes and not self.envelope.remote:
            # RFC 5321 3.3 / RFC 2920 3.1: no recipient was accepted.
            raise ReplyError(554, "5.5.1", "Error: no valid recipients")
        return self.envelope

    def _is_strict_8bit(self, envelope: Envelope) -> bool:
        return self.config.limits.strict_8bitmime and not (envelope.body_8bit
                                                           or envelope.smtputf8)

    def _start_message(self, envelope: Envelope, decoder: DotDecoder | ChunkDecoder) -> None:
        self._decoder = decoder
        self._message_id = new_message_id()
        self._transaction = self.factory.target.begin(DeliveryEnvelope(
            sender=str(envelope.sender), mailboxes=tuple(sorted(envelope.mailboxes)),
            remote=tuple(envelope.remote), smtputf8=envelope.smtputf8,
            body_8bit=envelope.body_8bit, submitter=self.user or "", ret=envelope.ret,
            envid=envelope.envid, dsn=tuple(envelope.dsn), requiretls=envelope.requiretls))
        hook = self.factory.message_hook  # senderauth: checks (port 25) or DKIM signing
        held = None if hook is None else hook.wrap(self._transaction, self,
                                                   str(envelope.sender),
                                                   sorted(envelope.mailboxes))
        if held is not None:
            self._transaction = held
        self._transaction.write(self._received(envelope))
        if held is not None:
            held.hold()  # what follows is the content, held until checked or signed
        self._headers = HeaderInspector(
            add_missing=self.factory.policy.add_missing_headers,
            hostname=self.config.hostname, message_id=self._message_id)

    def _received(self, envelope: Envelope) -> bytes:
        tls_info = None
        if self.tls_active:
            tls_info = self._tls_description()
        return received_header(
            helo=self.helo or "unknown",
            peer_ip=self.peer_ip,
            hostname=self.config.hostname,
            protocol=with_protocol(esmtp=self.esmtp, tls=self.tls_active,
                                   authenticated=self.user is not None,
                                   smtputf8=envelope.smtputf8),
            message_id=self._message_id,
            recipients=envelope.recipients,
            tls_info=tls_info,
        )

    def _tls_description(self) -> str | None:
        try:
            connection = self.transport.getHandle()  # type: ignore[union-attr]
            return (f"using {connection.get_protocol_version_name()} with cipher "
                    f"{connection.get_cipher_name()}")
        except Exception:
            return None

    def _feed_message(self) -> None:
        """Pass buffered bytes to the DATA/BDAT decoder; finish the message at its end."""
        decoder = self._decoder
        assert decoder is not None
        output, rest = decoder.feed(bytes(self._buffer))
        self._buffer.clear()
        if output and self._transaction is not None and not self._message_refused(decoder):
            if self._headers is not None:
                output = self._headers.feed(output)
            self._transaction.write(output)
        if rest is None:
            return
        self._buffer[:0] = rest
        self._receiving = False
        if isinstance(decoder, ChunkDecoder) and not self._bdat_last:
            self._chunk_done(decoder)
            return
        if isinstance(decoder, ChunkDecoder):
            decoder.finish()
        self._decoder = None
        self._finish_message(decoder)

    def _chunk_done(self, decoder: ChunkDecoder) -> None:
        if self._bdat_failed is not None:
            self._decoder = None
            self._error(self._bdat_failed)
            return
        refusal = self._message_refused(decoder)
        if refusal is not None:
            # RFC 3030 2: a failed chunk fails the transaction.
            self._decoder = None
            self._abort_transaction()
            self._reset_envelope()
            self._error(refusal)
            return
        self._send(Reply(250, "2.0.0", f"{self._bdat_octets} octets received"))

    @staticmethod
    def _message_refused(decoder: DotDecoder | ChunkDecoder) -> Reply | None:
        """Why the message cannot be accepted, judged on what the decoder has seen."""
        error = decoder.rejection()
        return error.reply if error is not None else None

    def _finish_message(self, decoder: DotDecoder | ChunkDecoder) -> None:
        failed, self._bdat_failed = self._bdat_failed, None
        if failed is not None:
            self._error(failed)
            return
        refusal = self._message_refused(decoder)
        envelope, transaction, headers = self.envelope, self._transaction, self._headers
        if refusal is None and transaction is not None and headers is not None:
            transaction.write(headers.finish())
            if headers.too_many_hops:
                # RFC 5321 6.3: a loop; Postfix says 554 5.4.0 past hopcount_limit = 50.
                refusal = Reply(554, "5.4.6", "Error: too many hops (mail loop?)")
            elif (self.factory.policy.check_sender
                  and self.config.submission.check_from_header):
                # RFC 6409 6.1 / 8: the From header obeys the envelope sender's rule.
                refusal = self._from_refusal(headers)
        if refusal is not None or envelope is None or transaction is None:
            self._abort_transaction()
            self._reset_envelope()
            self._error(refusal or Reply(503, "5.5.1", "Error: no transaction"))
            return
        self._transaction = None
        self._headers = None
        self.envelope = None
        self._bdat_octets = 0
        message_id = self._message_id
        committing = metrics.now()
        d = transaction.commit()

        def stored(queue_id: str | None) -> None:
            log.info("{session} {id} from {sender} to {rcpts} local, {remote} queued "
                     "{queue_id} ({size} octets) stored", session=self.session_id,
                     id=message_id, sender=str(envelope.sender),
                     rcpts=len(envelope.mailboxes), remote=len(envelope.remote),
                     queue_id=queue_id or "-", size=decoder.size)
            metrics.message_accepted(self.factory.policy.name, metrics.now() - committing)
            self._send(Reply(250, "2.0.0", f"Ok: queued as {queue_id or message_id}"))

        def failed_commit(failure: Failure) -> None:
            transaction.abort()
            if failure.check(ReplyError):
                reply = failure.value.reply  # type: ignore[union-attr]
            else:
                log.failure("{session} {id} delivery failed", failure,
                            session=self.session_id, id=message_id)
                reply = Reply(451, "4.3.0", "Error: local delivery failed; try again later")
            self._send(reply)

        d.addCallbacks(stored, failed_commit)
        self._wait_for(d)
