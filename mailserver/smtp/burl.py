"""BURL (RFC 4468): message content fetched from an IMAP URL instead of sent, on the
submission listeners: a mixin of SMTPSession beside BDAT (reception.py).

`BURL imap://alice%40example.org@mail.example.org/Drafts/;UID=7;URLAUTH=submit+
alice%40example.org:internal:<token> LAST` takes the octets the URL names from our own
store (imap/urlauth.SubmitUrls: the URL must verify and be for the logged-in user, as
Dovecot's imap-urlauth checks for its submission service) and adds them to the message
exactly as a BDAT chunk of that size would (RFC 4468 3.2: BURL and BDAT may be mixed;
LAST ends the message). Header checks, size limit, the From rule and DKIM apply as to
any submitted message.

A URL that does not resolve, whatever the reason (syntax, another server, another user,
a wrong or expired token, a message gone), fails the transaction as a failed BDAT chunk
does (RFC 3030 2): 554 5.6.6 (RFC 4468 6: "message content not available"); the client
learns nothing about which check failed. BURL before AUTH: 530 5.7.0 (RFC 4954 6).
"""

from __future__ import annotations

from twisted.python.failure import Failure

from mailserver.errors import ReplyError
from mailserver.logs import logger
from mailserver.reply import Reply
from mailserver.smtp import grammar
from mailserver.smtp.data import ChunkDecoder
from mailserver.smtp.reception import MessageReception

log = logger(__name__)


class BurlCommands(MessageReception):
    """BURL, for SMTPSession."""

    def do_BURL(self, command: grammar.Burl) -> object:
        resolve = self.factory.burl
        if resolve is None:
            raise ReplyError(502, "5.5.1", "Error: command not implemented")
        if self.user is None:
            raise ReplyError(530, "5.7.0", "Authentication required")
        envelope = self._check_ready_for_data()
        if not isinstance(self._decoder, ChunkDecoder):
            self._start_message(envelope, ChunkDecoder(self.config.limits.message_size,
                                                       self._is_strict_8bit(envelope)))
        d = resolve.fetch(self.config, command.url, self.user)
        d.addCallbacks(self._burl_fetched, self._burl_failed,
                       callbackArgs=(command.last,))
        return d

    def _burl_fetched(self, data: bytes, last: bool) -> None:
        decoder = self._decoder
        if not isinstance(decoder, ChunkDecoder) or self.envelope is None:
            return  # the session was reset meanwhile (it is closing)
        self._bdat_last = last
        self._bdat_octets += len(data)
        decoder.begin_chunk(len(data))
        output, rest = decoder.feed(data)
        assert rest == b""
        if output and self._transaction is not None and not self._message_refused(decoder):
            if self._headers is not None:
                output = self._headers.feed(output)
            self._transaction.write(output)
        if not last:
            self._chunk_done(decoder)
            return
        tail = decoder.finish()
        if tail and self._transaction is not None and not self._message_refused(decoder):
            self._transaction.write(self._headers.feed(tail) if self._headers else tail)
        self._decoder = None
        self._finish_message(decoder)

    def _burl_failed(self, failure: Failure) -> None:
        log.info("{session} BURL refused: {why}", session=self.session_id,
                 why=failure.getErrorMessage())
        self._decoder = None
        self._abort_transaction()
        self._reset_envelope()
        self._error(Reply(554, "5.6.6", "Error: BURL URL cannot be resolved"))
