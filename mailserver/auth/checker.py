"""The password checker and portal every protocol shares (SMTP AUTH, POP3, IMAP).

Why one checker: the same users file, the same address rules and the same defences for
every protocol, so a guesser gains nothing by switching from IMAP to SMTP AUTH.

- The login name is the full address, case-insensitive; a bare name gets the first
  local domain (directory.login_key).
- Verification runs in a thread of auth/hashing.py's pool (one per core): Argon2id is
  slow on purpose (~37 ms), and the reactor must keep serving everyone else meanwhile.
- An unknown user costs the same hashing as a known one (schemes.dummy_verify), so the
  answer's timing does not reveal which addresses exist.
- A failure is answered `failure_delay` seconds after the attempt began (or when the
  hashing ends, if that takes longer), not that long after the hashing: the answer's
  timing then tells nothing about the user's scheme (Argon2id ~37 ms, SHA-crypt and
  bcrypt other times) or whether the user exists. Online guessing is slow either way.
  Per-client throttling is core/throttle.py's LoginThrottle, one per process in the
  ServerContext: every protocol records its failed logins there and refuses a blocked
  address before asking this checker (the protocols know the peer); this delay is the
  floor under all of them.
- A password longer than schemes.MAX_PASSWORD_OCTETS is refused as a wrong one (same
  reply, same delay) without being hashed: SHA-crypt's cost grows with the square of the
  password's length. Every protocol's login (SMTP AUTH, POP3 USER/PASS and AUTH, IMAP
  LOGIN and AUTHENTICATE) comes through here, so this is the one place the cap lives.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailserver.abuse.control import AbuseControl
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.realm import MailRealm
from mailserver.auth.schemes import dummy_verify, password_too_long, verify_password
from mailserver.config import Config
from mailserver.logs import logger, printable

log = logger(__name__)

#: Seconds before a failed login is answered.
DEFAULT_FAILURE_DELAY = 0.75


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks IUsernamePassword against the users file; the avatar id is the address.

    `reactor` (IReactorTime + IReactorThreads) and `threadpool` are injectable for
    tests; by default the global reactor and its thread pool are used.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, directory: RecipientDirectory, *, reactor: Any = None,
                 threadpool: ThreadPool | None = None,
                 failure_delay: float = DEFAULT_FAILURE_DELAY,
                 abuse: AbuseControl | None = None) -> None:
        self.directory = directory
        self.abuse = abuse
        self._reactor = reactor
        self._threadpool = threadpool
        self.failure_delay = failure_delay

    def _get_reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        """Fire with the canonical address, or fail with UnauthorizedLogin (delayed).

        The avatar id is a str (`alice@example.org`), although Twisted's annotations say
        bytes: every protocol wants the address as text, and MailRealm accepts both.
        """
        reactor = self._get_reactor()
        started = reactor.seconds()
        username = _text(credentials.username)
        password = credentials.password
        # Look the user up here, on the reactor thread: the directory is not shared
        # with worker threads; only the hashing goes there.
        key = self.directory.login_key(username) if username else None

        def refuse(why: str) -> Deferred[str]:
            # The client chose the name: no CR, LF or ESC reaches the log (logs.printable).
            log.info("login refused for {user}{why}",
                     user=printable(key) if key else "(undecodable name)", why=why)
            # Answered at the same moment after the attempt began whatever the scheme,
            # and whether or not anything was hashed (see the module docstring).
            delay = self.failure_delay
            if self.abuse is not None:
                # Counted under the name as typed, known or not: the delay grows the
                # same for an account that does not exist.
                delay = max(delay, self.abuse.account_failure_delay(
                    key or username or "(undecodable name)"))
            wait = max(0.0, started + delay - reactor.seconds())
            return task.deferLater(reactor, wait, _refuse)

        if password_too_long(password):
            return refuse(": password too long")
        stored = self.directory.password_hash(key) if key else None
        pool = self._threadpool or reactor.getThreadPool()
        d: Deferred[bool] = threads.deferToThreadPool(reactor, pool, _check, password,
                                                      stored)

        def decide(ok: bool) -> str | Deferred[str]:
            if ok and key:
                log.info("login accepted for {user}", user=key)
                return key
            return refuse("")

        return d.addCallback(decide)


def _check(password: str | bytes, stored: str | None) -> bool:
    """Runs in a worker thread. An unknown user or an empty hash still costs a hash."""
    if not stored:
        return dummy_verify(password)
    return verify_password(password, stored)


def _refuse() -> str:
    raise UnauthorizedLogin("authentication failed")


def _text(value: str | bytes) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def make_portal(config: Config, directory: RecipientDirectory | None = None, *,
                reactor: Any = None, threadpool: ThreadPool | None = None,
                failure_delay: float = DEFAULT_FAILURE_DELAY,
                abuse: AbuseControl | None = None) -> Portal:
    """The portal all protocols log in through: MailRealm + PasswordChecker.

    Pass the server's one RecipientDirectory so SMTP and the login share its cache.
    """
    directory = directory or RecipientDirectory(config)
    checker = PasswordChecker(directory, reactor=reactor, threadpool=threadpool,
                              failure_delay=failure_delay, abuse=abuse)
    return Portal(MailRealm(directory), [checker])
