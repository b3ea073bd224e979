"""The state of one SMTP session, declared once for SMTPSession and its mixins.

SMTPSession (server.py) is assembled from mixins that each own a group of commands:
MessageReception (reception.py: DATA, BDAT) and SubmissionCommands (submission.py: AUTH
and the sender rule). All of them read and write the same per-connection state. It is
declared here, once, with its types; SMTPSession.__init__ gives every attribute its
first value, and the mixins inherit this class so mypy checks their use of it. Nothing
here exists at run time but the annotations: a default value or a method defined here
would shadow the real one further down the session's bases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mailserver.config import Config
    from mailserver.core.headers import HeaderInspector
    from mailserver.interfaces import IDeliveryTransaction
    from mailserver.reply import Reply
    from mailserver.smtp.auth import SASLExchange
    from mailserver.smtp.data import ChunkDecoder, DotDecoder
    from mailserver.smtp.server import Envelope, SMTPServerFactory


class SessionState:
    """What every part of SMTPSession may read and write (see the module docstring)."""

    # -- the connection ------------------------------------------------------------------
    factory: SMTPServerFactory
    transport: Any
    config: Config
    #: "smtp-12", or "w2-smtp-12" in worker process 2: on every log line.
    session_id: str
    peer_ip: str
    #: The HELO/EHLO domain; None before HELO and again after STARTTLS (RFC 3207 4.2).
    helo: str | None
    esmtp: bool
    tls_active: bool
    #: Refused commands (5xx) so far: too many end the session.
    errors: int

    # -- submission (submission.py) --------------------------------------------------------
    #: The authenticated user's address (RFC 4954), None before AUTH.
    user: str | None
    auth_failures: int
    #: The AUTH exchange waiting for the client's next line (RFC 4954 4), if any.
    _sasl: SASLExchange | None

    # -- input (server.py, core/flow.py) -----------------------------------------------------
    _buffer: bytearray
    _closing: bool

    # -- the mail transaction (server.py, reception.py) --------------------------------------
    #: MAIL to the end of DATA; RSET and EHLO replace it, the session stays.
    envelope: Envelope | None
    #: Reading DATA lines or a BDAT chunk instead of commands.
    _receiving: bool
    _decoder: DotDecoder | ChunkDecoder | None
    #: Where the message goes (the delivery router's transaction), from DATA/BDAT on.
    _transaction: IDeliveryTransaction | None
    _headers: HeaderInspector | None
    _message_id: str
    _bdat_last: bool
    #: Raw octets of this transaction's BDAT chunks, for the 250 replies (RFC 3030 2).
    _bdat_octets: int
    #: Why the BDAT transaction fails, replied once the last chunk has been read.
    _bdat_failed: Reply | None

    if TYPE_CHECKING:  # SMTPSession's; declared only, so nothing shadows them
        def _send(self, reply: Reply) -> None: ...
        def _error(self, reply: Reply) -> None: ...
        def _close(self) -> None: ...
        def _wait_for(self, d: Deferred[Any]) -> None: ...
        def _abort_transaction(self) -> None: ...
        def _reset_envelope(self) -> None: ...
        def _from_refusal(self, headers: HeaderInspector) -> Reply | None: ...
