"""Who a request is: a Bearer API token (api/tokens.py, RFC 6750 2.1) or HTTP Basic with
the user's password (RFC 7617) through the portal; and the refusals that come first.

In this order, each before the next is looked at:

1. TLS: on the `http` listener (request.isSecure() false) only loopback clients may use
   the API; anyone else gets 403 and no credential is read, so a password sent in the
   clear is not even checked (a client learns to use https, not whether it was right).
2. The shared login throttle: an address locked out by failed logins over any service
   (IMAP, POP3, SMTP AUTH, the API) gets 429 with Retry-After before any check. An
   address found not locked is taken as such for up to a second (a lock-out made by
   another process applies within that; one made by this process's failures at once).
3. The credential. Every failure (a malformed header, a wrong, unknown, expired or
   revoked token, a token whose user was deleted, a wrong password) counts in the
   throttle as service "api"; a missing header does not (a client's first request
   before it sees the challenge). A token that checked out less than a second ago is
   taken as checked (RecentTokens: no HMAC, no stat on the reactor per request).
4. The rate limit per credential (api.requests_per_minute), counted in the abuse table
   shared by every process, in batches of up to a second or 60 requests per process
   (AbuseControl.api_request): 429 with Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.web import server

from mailserver.address import client_address
from mailserver.api.resource import ApiError, Principal
from mailserver.api.tokens import RECHECK, TokenEntry, tokens_file
from mailserver.auth.realm import IMailUser
from mailserver.core.context import ServerContext

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mailserver", Basic realm="mailserver", '
                                 'charset="UTF-8"'}
#: After a Bearer token that did not check out: RFC 6750 3.1's invalid_token.
INVALID_TOKEN = {"WWW-Authenticate": 'Bearer realm="mailserver", error="invalid_token", '
                                     'Basic realm="mailserver", charset="UTF-8"'}
#: Retry-After of a lock-out when no abuse table says when it ends (unit tests).
LOCKOUT_RETRY = 60


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, smtp="5.7.8", headers=CHALLENGE)


class _Failed(Exception):
    """A credential that did not check out: its 401, and the account to log, if any."""

    def __init__(self, message: str, account: str | None = None, bearer: bool = False
                 ) -> None:
        super().__init__(message)
        self.error = unauthenticated(message)
        if bearer:
            self.error.headers = dict(INVALID_TOKEN)
        self.account = account


async def authenticate(context: ServerContext, request: server.Request) -> Principal:
    """The principal the request's credentials name, or ApiError (module docstring)."""
    peer = _peer(request)
    if not request.isSecure() and not _is_loopback(peer):
        # RFC 4954 6's rule for AUTH, in SMTP's words: 5.7.11.
        raise ApiError(403, "tls_required", "use https: over plain http the API answers "
                       "loopback clients only", smtp="5.7.11")
    if context.login_throttle.blocked(peer, "api", cached=True):
        # RFC 6585 4: 429 Too Many Requests; Retry-After: RFC 9110 10.2.3.
        raise ApiError(429, "too_many_failures", "too many failed logins from your address; "
                       "try again later", smtp="4.7.0",
                       headers={"Retry-After": str(_lockout_left(context, peer))})
    raw = request.getHeader(b"authorization")
    if raw is None:
        raise unauthenticated("send a Bearer token or HTTP Basic credentials")
    header = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    scheme, _, value = header.strip().partition(" ")
    try:
        if scheme.lower() == "bearer":
            principal = _bearer(context, value.strip())
        elif scheme.lower() == "basic":
            principal = await _basic(context, value.strip())
        else:
            raise _Failed(f"unknown authorization scheme {scheme[:20]!r}")
    except _Failed as failed:
        context.login_throttle.failed(peer, "api", failed.account)
        raise failed.error from None
    _count_request(context, principal, peer)
    return principal


class RecentTokens:
    """Bearer tokens that checked out (right secret, not expired, user allowed to log
    in) less than tokens.RECHECK seconds ago, so a client's next requests within that
    time skip the HMAC and the users file's stat: a revoked token, or one whose user was
    deleted or barred, stops working within RECHECK (README). Expiry is still checked on
    every request. Bounded: forgotten wholesale past MAX entries."""

    MAX = 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: token -> (clock at its full check, its entry, the directory that allowed it).
        self._seen: dict[str, tuple[float, TokenEntry, object]] = {}

    def get(self, token: str, directory: object) -> TokenEntry | None:
        found = self._seen.get(token)
        if found is None:
            return None
        checked, entry, allowed_by = found
        if allowed_by is not directory or not 0 <= self.clock() - checked < RECHECK:
            del self._seen[token]
            return None
        return entry

    def put(self, token: str, entry: TokenEntry, directory: object) -> None:
        if len(self._seen) >= self.MAX:
            self._seen.clear()
        self._seen[token] = (self.clock(), entry, directory)


_recent = RecentTokens()


def _bearer(context: ServerContext, value: str) -> Principal:
    entry = _recent.get(value, context.directory)
    if entry is not None:
        if entry.expired(time.time()):
            raise _Failed("the token has expired", entry.address, bearer=True)
        return Principal(entry.address, frozenset({entry.scope}), f"token:{entry.id}")
    tokens = tokens_file(context.config)
    try:
        entry = tokens.verify(value)
    except OSError:  # a stat refused on the way to the file (WatchedFile reads the rest)
        entry = None
        tokens_broken = True
    else:
        tokens_broken = tokens.read_error is not None
    if entry is None:
        if tokens_broken:
            # Not the client's failure: not counted, and not a 401 that says "wrong".
            raise ApiError(503, "unavailable", "the token store cannot be read; try later",
                           smtp="4.3.0", headers={"Retry-After": "60"})
        raise _Failed("not a valid token", bearer=True)
    if entry.expired(time.time()):
        raise _Failed("the token has expired", entry.address, bearer=True)
    if not context.directory.login_allowed(entry.address):
        raise _Failed("the token's user no longer exists or may not log in", entry.address,
                      bearer=True)
    _recent.put(value, entry, context.directory)
    return Principal(entry.address, frozenset({entry.scope}), f"token:{entry.id}")


async def _basic(context: ServerContext, value: str) -> Principal:
    try:
        user, sep, password = base64.b64decode(value, validate=True).partition(b":")
    except (binascii.Error, ValueError):
        raise _Failed("Basic credentials are not base64") from None
    if not sep:
        raise _Failed("Basic credentials lack the colon")
    try:
        result: Any = await context.portal.login(UsernamePassword(user, password), None,
                                                 IMailUser)
    except UnauthorizedLogin:
        raise _Failed("wrong address or password", user.decode("utf-8", "replace")) from None
    return Principal(result[1].address, frozenset({"all"}), "password")


def _count_request(context: ServerContext, principal: Principal, peer: str) -> None:
    """One request against the credential's per-minute budget, or 429."""
    if context.abuse is None:
        return
    key = principal.credential if principal.credential.startswith("token:") else \
        f"password:{principal.address}"
    wait = context.abuse.api_request(key, context.config.api.requests_per_minute, peer,
                                     principal.address)
    if wait:
        raise ApiError(429, "rate_limited", f"more than "
                       f"{context.config.api.requests_per_minute} requests a minute with "
                       "this credential", smtp="4.7.0", headers={"Retry-After": str(wait)})


def _lockout_left(context: ServerContext, peer: str) -> int:
    if context.abuse is None:
        return LOCKOUT_RETRY
    return max(1, context.abuse.locked_until(peer) - int(time.time()))


def _is_loopback(peer: str) -> bool:
    address = client_address(peer)
    return address is not None and address.is_loopback


def _peer(request: server.Request) -> str:
    """The client's address as the throttle keys it."""
    return str(getattr(request.getClientAddress(), "host", ""))
