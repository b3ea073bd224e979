"""GET /api/v1/me: who the credential is and what it may do (an application's first
call, to check its token before it relies on it)."""

from __future__ import annotations

from mailserver.api.resource import ANY_SCOPE, ApiAnswer, ApiCall, Route, route


async def me(call: ApiCall) -> ApiAnswer:
    principal = call.principal
    return ApiAnswer(200, {"address": principal.address,
                           "scopes": sorted(principal.scopes)})


ROUTES: list[Route] = [route("GET", r"me", ANY_SCOPE, me)]
