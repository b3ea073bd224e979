"""ApiResource: the one twisted.web resource behind /api/v1/, and its route table.

Every route is (method, path pattern, scope, handler). A handler is an `async def`
taking an ApiCall and returning an ApiAnswer (status and a JSON-able body), or raising
ApiError; the resource turns both into JSON with the right status (RFC 9110 15), so no
route writes to the request itself. Every error body has one shape:

    {"error": {"status": 429, "code": "rate_limited", "message": "...",
               "smtp": "4.7.0"}}       # "smtp": the enhanced status code SMTP would give

Routes live beside their subject (send.py, mailbox.py, queue_state.py, ...) and are
gathered by `all_routes`; the resource matches the path exactly against each pattern,
so `..`, doubled slashes and encoded slashes are paths we do not serve (404).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from mailserver.core.context import ServerContext
from mailserver.logs import logger

log = logger(__name__)

PREFIX = b"/api/v1/"
JSON_TYPE = b"application/json"

#: Scopes a token may carry ("all" holds both).
SCOPES = ("send", "read", "all")
#: A route's scope for what every credential may ask (GET /me: a send-only token must
#: be able to check itself too).
ANY_SCOPE = ""


class ApiError(Exception):
    """A refusal, answered as the JSON error body above."""

    def __init__(self, status: int, code: str, message: str, smtp: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.smtp = smtp
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code,
                                 "message": self.message}
        if self.smtp:
            error["smtp"] = self.smtp
        return {"error": error}


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the user's address and what the credential allows."""

    address: str
    scopes: frozenset[str]
    #: "token:ID" or "password": for logs and the rate limit's key.
    credential: str

    def allows(self, scope: str) -> bool:
        """`scope` "" (ANY_SCOPE) is allowed to every credential."""
        return not scope or "all" in self.scopes or scope in self.scopes


@dataclass
class ApiCall:
    """One request as a handler sees it."""

    context: ServerContext
    request: server.Request
    principal: Principal
    #: The pattern's named groups, URL-decoded.
    params: dict[str, str]
    #: The request body (bytes as received; `json()` parses it).
    body: bytes
    query: dict[str, list[str]] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON: ApiError 415 unless the request says it is application/json
        (RFC 9110 15.5.16; a form or text body is a client's mistake worth naming), 400
        (bad_json) when it is not JSON after all."""
        from mailserver.api.jsonbody import parse_json

        if not is_json_type(self.request.getHeader(b"content-type")):
            raise ApiError(415, "unsupported_media_type", "send the body as "
                           "Content-Type: application/json", smtp="5.6.0")
        return parse_json(self.body)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class ApiAnswer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    #: Raw bytes to send instead of JSON (a message's source, an attachment).
    raw: bytes | None = None
    content_type: str = "application/json"


Handler = Callable[[ApiCall], Awaitable[ApiAnswer]]


def is_json_type(value: bytes | str | None) -> bool:
    """application/json, any case, with or without parameters (`; charset=utf-8`)."""
    if value is None:
        return False
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.split(";", 1)[0].strip().lower() == "application/json"


#: The refusals BoundedChannel (http/site.py) makes before a request reaches a resource,
#: as the API words them (RFC 9110 15.5.9 408, 15.5.14 413; RFC 6585 5 431).
CHANNEL_REFUSALS = {
    408: ("request_timeout", "the request did not arrive in time", "4.4.2"),
    413: ("too_large", "the request body is too large", "5.3.4"),
    431: ("header_too_large", "a header line or the header is too large", "5.5.2"),
}


@dataclass(frozen=True)
class Route:
    method: bytes
    pattern: re.Pattern[str]
    #: "send" or "read": what the principal's scopes must allow; ANY_SCOPE: any.
    scope: str
    handler: Handler


def route(method: str, pattern: str, scope: str, handler: Handler) -> Route:
    """A route; `pattern` is a regex over the path after /api/v1/ with named groups."""
    return Route(method.encode(), re.compile(pattern), scope, handler)


def all_routes() -> list[Route]:
    """Every route of the API (each module keeps its own list)."""
    from mailserver.api import account, mailbox, send, webhooks

    routes: list[Route] = []
    routes += account.ROUTES
    routes += mailbox.ROUTES
    routes += send.ROUTES
    routes += webhooks.ROUTES
    return routes


Authenticator = Callable[[ServerContext, server.Request], Awaitable[Principal]]


class ApiResource(resource.Resource):
    """/api/v1/...: authenticate, find the route, run it, answer JSON."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self, context: ServerContext, authenticate: Authenticator,
                 routes: list[Route] | None = None, max_body: int = 64 * 1024) -> None:
        super().__init__()
        self.context = context
        self.authenticate = authenticate
        self.routes = all_routes() if routes is None else routes
        #: The largest request body BoundedChannel lets through for this prefix.
        self.max_body = max_body
        #: Authenticated requests of this process being worked on
        #: (api.concurrent_requests; one still authenticating is not counted).
        self.in_progress = 0

    def refusal(self, status: int) -> bytes | None:
        """The JSON body of a refusal the channel makes itself (408, 413, 431), so a
        client of the API sees the API's error shape there too; None for others."""
        known = CHANNEL_REFUSALS.get(status)
        if known is None:
            return None
        code, message, smtp = known
        if status == 413:
            message = f"the request body is larger than {self.max_body} bytes"
        return json.dumps(ApiError(status, code, message, smtp).body()).encode()

    def render(self, request: server.Request) -> int:  # type: ignore[override]
        request.setHeader(b"cache-control", b"no-store")
        d = ensureDeferred(self._answer(request))
        d.addErrback(self._crashed, request)
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request) -> None:
        try:
            answer = await self._dispatch(request)
        except ApiError as e:
            _refuse(request, e)
            return
        for name, value in answer.headers.items():
            request.setHeader(name.encode(), value.encode())
        if answer.raw is not None:
            finish_raw(request, answer.status, answer.raw, answer.content_type)
        else:
            finish_json(request, answer.status, answer.body)

    async def _dispatch(self, request: server.Request) -> ApiAnswer:
        path = request.path
        if not path.startswith(PREFIX):
            raise ApiError(404, "not_found", "no such API path")
        try:
            rest = path[len(PREFIX):].decode("ascii")
        except UnicodeDecodeError:
            raise ApiError(404, "not_found", "no such API path") from None
        matched = [(r, m) for r in self.routes if (m := r.pattern.fullmatch(rest))]
        if not matched:
            raise ApiError(404, "not_found", "no such API path")
        chosen = next(((r, m) for r, m in matched if r.method == request.method), None)
        if chosen is None:
            allow = ", ".join(sorted({r.method.decode() for r, _ in matched}))
            raise ApiError(405, "method_not_allowed", f"use {allow}",
                           headers={"Allow": allow})
        found, match = chosen
        principal = await self.authenticate(self.context, request)
        if not principal.allows(found.scope):
            raise ApiError(403, "forbidden", f"this credential lacks the {found.scope} scope")
        limit = self.context.config.api.concurrent_requests if self.context else 0
        if limit and self.in_progress >= limit:
            # RFC 9110 15.6.4 (503 with Retry-After). Only now, after the credential
            # checked out: a slot counted before it would let a flood of requests with
            # no or wrong credentials make every real client's answer 503. Those are
            # bounded otherwise: a Bearer check is a hash of 32 bytes on this thread,
            # a password check goes to the hashing pool, and the login throttle ends
            # both for an address after a few failures (429 before any check), the
            # per-address connection limit how many it may have open (app/limits.py).
            raise ApiError(503, "busy", "the server is busy; try again shortly",
                           smtp="4.3.2", headers={"Retry-After": "1"})
        self.in_progress += 1
        try:
            return await self._run(found, match, principal, request)
        finally:
            self.in_progress -= 1

    async def _run(self, found: Route, match: re.Match[str], principal: Principal,
                   request: server.Request) -> ApiAnswer:
        """The route's handler, with the path's parameters, the body and the query."""
        from urllib.parse import unquote

        params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        content = getattr(request, "content", None)
        body = content.read(self.max_body + 1) if content is not None else b""
        if len(body) > self.max_body:  # BoundedChannel cuts it earlier on the server
            raise ApiError(413, "too_large",
                           f"the request body is larger than {self.max_body} bytes",
                           smtp="5.3.4")
        query = {k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
                 for k, vs in request.args.items()}
        return await found.handler(ApiCall(self.context, request, principal, params, body,
                                           query))

    def _crashed(self, failure: Failure, request: server.Request) -> None:
        log.failure("api: {path}", failure, path=request.path.decode("ascii", "replace"))
        if not request.finished and not getattr(request, "_disconnected", False):
            finish_json(request, 500, {"error": {"status": 500, "code": "internal",
                                                 "message": "internal error"}})


def _refuse(request: server.Request, error: ApiError) -> None:
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    finish_json(request, error.status, error.body())


def finish_json(request: server.Request, status: int, body: Any) -> None:
    finish_raw(request, status, json.dumps(body, ensure_ascii=False).encode("utf-8"),
               "application/json")


def finish_raw(request: server.Request, status: int, data: bytes, content_type: str) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type.encode())
    request.setHeader(b"content-length", str(len(data)).encode())
    if request.method != b"HEAD":
        _write_once(request, data)
    request.finish()


class _Gather:
    """Stands in for a channel's transport while twisted.web writes one answer."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802 - Twisted's name
        self.parts.extend(data)


def _write_once(request: server.Request, data: bytes) -> None:
    """The status line, headers and body in one write to the transport: twisted.web
    writes the head and the body apart, which over TLS is two SSL_write calls and two
    records; each call releases the GIL, and under load getting it back is what costs
    the reactor most (bench/results/api.md). The bytes are twisted.web's own."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if not isinstance(request, http.Request) or transport is None or request.startedWriting:
        request.write(data)
        return
    parts: list[bytes] = []
    channel.transport = _Gather(parts)  # type: ignore[union-attr]
    try:
        request.write(data)
    finally:
        channel.transport = transport  # type: ignore[union-attr]
    if parts:
        transport.write(b"".join(parts))
