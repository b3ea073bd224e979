"""SASL mechanisms shared by SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE.

Only what the protocols need to turn client bytes into cred credentials: PLAIN
(RFC 4616) and the obsolete but ubiquitous LOGIN (draft-murchison-sasl-login). The
protocols own the challenge/response framing (`334`, `+ `), base64 included.
"""

from __future__ import annotations

import base64
import binascii

from twisted.cred.credentials import IUsernamePassword, UsernamePassword

#: RFC 4616 2: a server "MUST accept" authzid, authcid and passwd "up to 255 octets".
#: That is a floor, not a ceiling; we take names up to it. Passwords may be longer (up to
#: schemes.MAX_PASSWORD_OCTETS): a longer one goes to the checker, which refuses it as a
#: wrong password, so the client sees the same reply and delay as for any wrong one.
MAX_FIELD = 255


class SASLError(Exception):
    """The client's SASL data is malformed; the protocol answers with its syntax error
    (SMTP 501 5.5.2, IMAP BAD / NO, POP3 -ERR)."""


def decode_base64(data: bytes | str) -> bytes:
    """Strict base64 (RFC 4648 without line breaks); "=" alone is an empty response
    (RFC 4954 4). SASLError when it is not base64."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    data = data.strip()
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("invalid base64 data") from None


def encode_base64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain_credentials(message: bytes) -> IUsernamePassword:
    """RFC 4616 2: `[authzid] NUL authcid NUL passwd` (already base64-decoded).

    An authzid different from the authcid (acting as another user) is refused: we have
    no administrators who may do that.
    """
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SASLError("PLAIN wants authzid NUL authcid NUL password")
    authzid, authcid, passwd = parts
    if not authcid or len(authzid) > MAX_FIELD or len(authcid) > MAX_FIELD:
        raise SASLError("PLAIN fields empty or too long")
    try:
        authcid_text = authcid.decode("utf-8")
        authzid_text = authzid.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("PLAIN fields must be UTF-8") from None
    if authzid_text and authzid_text.lower() != authcid_text.lower():
        raise SASLError("authorization identity differs from authentication identity")
    return UsernamePassword(authcid, passwd)


def login_name(credentials: object) -> str | None:
    """The name a failed login tried, for the log and the per-account counts of the
    abuse control (never the password); None if there is none."""
    name = getattr(credentials, "username", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name if isinstance(name, str) and name else None
