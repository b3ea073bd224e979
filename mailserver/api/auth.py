"""Who a request is: a Bearer API token, or HTTP Basic with the user's password.

(The tokens, their store and the checks arrive with the API's authentication work;
until then every request is refused, so nothing is served unauthenticated.)
"""

from __future__ import annotations

from twisted.web import server

from mailserver.api.resource import ApiError, Principal
from mailserver.core.context import ServerContext


async def authenticate(context: ServerContext, request: server.Request) -> Principal:
    """The principal the request's credentials name, or ApiError 401."""
    raise ApiError(401, "unauthenticated", "send a Bearer token or HTTP Basic credentials",
                   headers={"WWW-Authenticate": 'Bearer realm="mailserver"'})
