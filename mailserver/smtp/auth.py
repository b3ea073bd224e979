"""The SMTP AUTH exchange (RFC 4954): PLAIN (RFC 4616) and LOGIN, as a small pure
state machine.

The session feeds it the AUTH command and each client response line; it answers with a
challenge to send (`334 <base64>`) or the credentials to log in with. Everything that
can be wrong with the client's SASL data is a ReplyError carrying RFC 4954's reply, so
the session only has to send it. Nothing here sees the network, the portal or a log:
passwords pass through and are never stored beyond the exchange.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from twisted.cred.credentials import IUsernamePassword, UsernamePassword

from mailserver.auth.sasl import MAX_FIELD, SASLError, decode_base64, plain_credentials
from mailserver.errors import ReplyError

#: What we offer, in the order EHLO lists them.
MECHANISMS = ("PLAIN", "LOGIN")

#: draft-murchison-sasl-login: the customary prompts, base64 of "Username:"/"Password:".
_USERNAME_PROMPT = base64.b64encode(b"Username:").decode("ascii")
_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """Send `334 <text>` and read one more response line."""

    text: str


@dataclass(frozen=True)
class Done:
    """The client has said everything: log in with these credentials."""

    credentials: IUsernamePassword


Step = Challenge | Done


def cancelled() -> ReplyError:
    """RFC 4954 4: a `*` response cancels the exchange with 501."""
    return ReplyError(501, "5.0.0", "Authentication cancelled")


def bad_data(why: str) -> ReplyError:
    """RFC 4954 6: 501 5.5.2 when a response cannot be decoded or is malformed."""
    return ReplyError(501, "5.5.2", f"Cannot decode response: {why}")


class SASLExchange:
    """One AUTH command and its continuation lines."""

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            # RFC 4954 4: 504 for a mechanism we do not support.
            raise ReplyError(504, "5.5.4", "Unrecognized authentication type")
        self.mechanism = mechanism
        self._username: bytes | None = None

    def start(self, initial: str | None) -> Step:
        """The AUTH command itself; `initial` is the initial response (RFC 4954 4)."""
        if initial is None:
            if self.mechanism == "PLAIN":
                return Challenge("")  # RFC 4616 2: the server's (empty) challenge
            return Challenge(_USERNAME_PROMPT)
        return self._take(_decode(initial.encode("ascii")))

    def respond(self, line: bytes) -> Step:
        """One client response line (without CRLF)."""
        if line.strip() == b"*":
            raise cancelled()
        return self._take(_decode(line))

    def _take(self, data: bytes) -> Step:
        if self.mechanism == "PLAIN":
            try:
                return Done(plain_credentials(data))
            except SASLError as e:
                raise bad_data(str(e)) from None
        if self._username is None:
            if not data:
                raise bad_data("empty user name")
            if len(data) > MAX_FIELD:
                raise bad_data("LOGIN field too long")
            self._username = data
            return Challenge(_PASSWORD_PROMPT)
        # The password's length is the checker's to judge (auth/checker.py): a long one
        # gets 535 after the delay, like any wrong password. MAX_COMMAND_LINE bounds it.
        return Done(UsernamePassword(self._username, data))


def _decode(data: bytes) -> bytes:
    try:
        return decode_base64(data)
    except SASLError:
        raise bad_data("invalid base64") from None
