"""Commands valid in any state and the way into the authenticated state:
CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE, ENABLE, NAMESPACE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred

from mailserver.auth.realm import IMailUser
from mailserver.auth.sasl import SASLError, decode_base64, login_name, plain_credentials
from mailserver.core import metrics
from mailserver.imap import commands_condstore, grammar, rev2
from mailserver.imap.commands import ANSWERED, Account, State, bad, no
from mailserver.imap.encode import quoted_or_literal
from mailserver.logs import logger, printable

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession

log = logger(__name__)

SERVER_NAME = "mailserver"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version(SERVER_NAME)
    except Exception:
        return "0"


async def capability(session: IMAPSession, command: grammar.Simple) -> str | None:
    session.send(("* CAPABILITY " + " ".join(session.capabilities()) + "\r\n").encode())
    return None


async def noop(session: IMAPSession, command: grammar.Simple) -> str | None:
    return None  # the session's sync after the command reports what changed


async def logout(session: IMAPSession, command: grammar.Simple) -> str | None:
    # RFC 3501 6.1.3: BYE first, then the tagged OK, then close.
    session.send(b"* BYE Logging out\r\n" + f"{command.tag} OK Logout completed\r\n".encode())
    session.state = State.LOGOUT
    session.close()
    return ANSWERED


async def id_command(session: IMAPSession, command: grammar.Id) -> str | None:
    """RFC 2971: we say who we are; what the client says is only logged."""
    if command.params:
        # The client's own text: cut and without control characters (logs.printable).
        log.info("{session} client id {params}", session=session.session_id,
                 params=printable(", ".join(f"{k}={v}" for k, v in command.params[:6])))
    fields = (b"name", SERVER_NAME.encode(), b"version", _version().encode())
    session.send(b"* ID (" + b" ".join(quoted_or_literal(f) for f in fields) + b")\r\n")
    return None


#: What ENABLE turns on (RFC 5161): capability -> the session attribute it sets.
ENABLEABLE = {"UTF8=ACCEPT": "utf8_accept"}  # RFC 6855


async def enable(session: IMAPSession, command: grammar.Enable) -> str | None:
    """RFC 5161: `* ENABLED` lists what this command turned on (CONDSTORE, QRESYNC,
    UTF8=ACCEPT, IMAP4rev2); unknown names are ignored."""
    enabled = await commands_condstore.enable(session, command.capabilities)
    for capability in command.capabilities:
        attribute = ENABLEABLE.get(capability)
        if attribute is not None and not getattr(session, attribute):
            setattr(session, attribute, True)
            enabled.append(capability)
    enabled += rev2.enable(session, command.capabilities)  # RFC 9051
    session.send(("* ENABLED" + "".join(" " + c for c in enabled) + "\r\n").encode())
    return None


async def namespace(session: IMAPSession, command: grammar.Simple) -> str | None:
    """RFC 2342: one personal namespace, no prefix, "." as the delimiter."""
    session.send(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
    return None


async def starttls(session: IMAPSession, command: grammar.Simple) -> str | None:
    if session.tls_active:
        raise bad("TLS is already active")
    if session.factory.tls_options is None:
        raise bad("STARTTLS not available")
    session.send(f"{command.tag} OK Begin TLS negotiation now\r\n".encode())
    # RFC 3501 6.2.1 and the STARTTLS injection attacks (CVE-2011-0411, CVE-2021-33515
    # in Dovecot): whatever was pipelined after STARTTLS in plaintext is thrown away.
    session._buffer.clear()
    session._reset_command()
    session.transport.startTLS(session.factory.tls_options)  # type: ignore[union-attr]
    session.tls_active = True
    return ANSWERED


async def login(session: IMAPSession, command: grammar.Login) -> str | None:
    if not session.plaintext_allowed:
        # RFC 3501 6.2.3: LOGINDISABLED; RFC 5530 PRIVACYREQUIRED.
        raise no("Plaintext authentication disallowed without TLS; use STARTTLS",
                 "PRIVACYREQUIRED")
    if _throttled(session, command.tag):
        return ANSWERED
    return await _authenticate(session, command.tag, UsernamePassword(command.user, command.password))


async def authenticate(session: IMAPSession, command: grammar.Authenticate) -> str | None:
    if command.mechanism != "PLAIN":
        raise no(f"Unsupported authentication mechanism {command.mechanism}", "CANNOT")
    if not session.plaintext_allowed:
        raise no("Plaintext authentication disallowed without TLS; use STARTTLS",
                 "PRIVACYREQUIRED")
    if _throttled(session, command.tag):
        return ANSWERED
    response = command.initial
    if response is None:
        # RFC 3501 6.2.2: an empty challenge, then one line of base64 (or "*").
        session.send(b"+ \r\n")
        answer: Deferred[bytes] = Deferred()
        session.expect_continuation(answer.callback)
        response = (await answer).rstrip(b"\r\n")
        if response == b"*":
            raise bad("Authentication cancelled")
    try:
        credentials = plain_credentials(decode_base64(response))
    except SASLError as e:
        if "authorization identity" in str(e):
            # Well-formed, but asks to act as another user: refused credentials are a
            # NO (RFC 3501 6.2.2), not a syntax error; RFC 5530's code.
            return _failed(session, command.tag)
        raise bad(f"Invalid SASL response: {e}") from None
    return await _authenticate(session, command.tag, credentials)


#: RFC 5530 3 UNAVAILABLE, "temporary failure because a subsystem is down": the
#: password is not even checked, so AUTHENTICATIONFAILED (the credentials are wrong)
#: would mislead; a client should try again later. POP3 says [SYS/TEMP] and SMTP
#: 421 4.7.0 alike.
THROTTLED = no("Too many failed logins from your address; try again later", "UNAVAILABLE")


def _throttled(session: IMAPSession, tag: str) -> bool:
    """Refuse (and close) when this address has failed too often over any protocol
    (core/throttle.py): reconnecting, or switching to POP3 or submission, buys a
    guesser no more password checks."""
    if not session.factory.login_throttle.blocked(session.peer_ip, "imap"):
        return False
    log.info("{session} login refused: too many failures from {peer}",
             session=session.session_id, peer=session.peer_ip)
    session.send(THROTTLED.line(tag) + b"* BYE Too many failed logins\r\n")
    session.close()
    return True


async def _authenticate(session: IMAPSession, tag: str,
                        credentials: IUsernamePassword) -> str | None:
    try:
        _, user, _logout = await metrics.counted_login(
            "imap", session.factory.portal.login(credentials, None, IMailUser))
    except UnauthorizedLogin:
        return _failed(session, tag, login_name(credentials))
    store = await session.blocking(session.factory.mailboxes.open_user_store, user.mailbox)
    session.logged_in(Account(user, store))
    log.info("{session} {user} logged in from {peer}", session=session.session_id,
             user=user.address, peer=session.peer_ip)
    return f"[CAPABILITY {' '.join(session.capabilities())}] Logged in"


def _failed(session: IMAPSession, tag: str, account: str | None = None) -> str | None:
    """A refused login: NO [AUTHENTICATIONFAILED], or BYE after too many."""
    session.auth_failures += 1
    session.factory.login_throttle.failed(session.peer_ip, "imap", account)
    log.info("{session} login failed from {peer}", session=session.session_id,
             peer=session.peer_ip)
    refusal = no("Authentication failed", "AUTHENTICATIONFAILED")
    if session.auth_failures < _max_failures():
        raise refusal
    session.send(refusal.line(tag) + b"* BYE Too many authentication failures\r\n")
    session.close()
    return ANSWERED


def _max_failures() -> int:
    from mailserver.imap.server import MAX_AUTH_FAILURES

    return MAX_AUTH_FAILURES
