"""Who a request is: HTTP Basic with the user's password (RFC 7617), through the portal.

Bearer API tokens, the throttle's lockout answer and the TLS rule arrive with the API's
authentication work; Basic is here first so every route can be tried on the real server.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.web import server

from mailserver.api.resource import ApiError, Principal
from mailserver.auth.realm import IMailUser
from mailserver.core.context import ServerContext

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mailserver", Basic realm="mailserver", '
                                 'charset="UTF-8"'}


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, smtp="5.7.8", headers=CHALLENGE)


async def authenticate(context: ServerContext, request: server.Request) -> Principal:
    """The principal the request's credentials name, or ApiError 401."""
    raw = request.getHeader(b"authorization")
    if not raw:
        raise unauthenticated("send a Bearer token or HTTP Basic credentials")
    header = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        return await _basic(context, request, value.strip())
    raise unauthenticated(f"unknown authorization scheme {scheme[:20]!r}")


async def _basic(context: ServerContext, request: server.Request, value: str) -> Principal:
    try:
        user, sep, password = base64.b64decode(value, validate=True).partition(b":")
    except (binascii.Error, ValueError):
        raise unauthenticated("Basic credentials are not base64") from None
    if not sep:
        raise unauthenticated("Basic credentials lack the colon")
    peer = _peer(request)
    if context.login_throttle.blocked(peer, "api"):
        raise ApiError(429, "too_many_failures", "too many failed logins from your address; "
                       "try again later", smtp="4.7.0", headers={"Retry-After": "60"})
    try:
        result: Any = await context.portal.login(UsernamePassword(user, password), None,
                                                 IMailUser)
    except UnauthorizedLogin:
        context.login_throttle.failed(peer, "api", user.decode("utf-8", "replace"))
        raise unauthenticated("wrong address or password") from None
    return Principal(result[1].address, frozenset({"all"}), "password")


def _peer(request: server.Request) -> str:
    """The client's address as the throttle keys it."""
    return str(getattr(request.getClientAddress(), "host", ""))
