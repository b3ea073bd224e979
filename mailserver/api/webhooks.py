"""/api/v1/webhooks: a user's webhook registrations (issue 18).

    GET    webhooks             the user's hooks (secrets never shown again)
    POST   webhooks             {url, events?, secret?, raw_limit?} -> 201, with the secret
    GET    webhooks/{id}        one hook
    PATCH  webhooks/{id}        {url?, events?, raw_limit?, active?}
    DELETE webhooks/{id}        204

Scope "all": a hook sends a user's mail events to a URL, which is as much as reading
and sending. A URL is checked when registered (and again on every send): http(s) with a
host whose every address passes the SSRF rules (webhooks/urlcheck.py); else 400
bad_url with the reason. The registry (events.IWebhookRegistry) is webhooks/'s, reached
through ServerContext.webhooks; its store calls block, so they run in a disk thread.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from mailserver.api.resource import ApiAnswer, ApiCall, ApiError, Route, route
from mailserver.events import KINDS, IWebhookRegistry

#: A hook id as webhooks/hooks.py makes them.
HOOK_ID = r"(?P<id>wh_[0-9a-f]{16})"
FIELDS_NEW = frozenset({"url", "events", "secret", "raw_limit"})
FIELDS_CHANGE = frozenset({"url", "events", "raw_limit", "active"})


def _registry(call: ApiCall) -> IWebhookRegistry:
    registry = call.context.webhooks
    if registry is None:
        raise ApiError(503, "unavailable", "webhooks are not available on this server",
                       smtp="4.3.0")
    return registry


def _object(call: ApiCall, allowed: frozenset[str]) -> dict[str, Any]:
    body = call.json()
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field {unknown[0][:40]!r}")
    return body


def _events(value: Any) -> list[str]:
    if (not isinstance(value, list) or not value or
            not all(isinstance(v, str) and v in KINDS for v in value)):
        raise ApiError(400, "bad_request", "events: a non-empty list of "
                       + ", ".join(KINDS))
    return list(dict.fromkeys(value))


def _raw_limit(call: ApiCall, value: Any) -> int:
    most = call.context.config.limits.message_size
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ApiError(400, "bad_request", f"raw_limit: an integer from 0 to {most} "
                       "(limits.message_size)")
    return value


_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]{32,100}")


def _secret(value: Any) -> str:
    """whsec_ + base64 of 24 to 64 bytes (Standard Webhooks)."""
    if isinstance(value, str) and _SECRET.fullmatch(value):
        try:
            if 24 <= len(base64.b64decode(value[6:], validate=True)) <= 64:
                return value
        except (binascii.Error, ValueError):
            pass
    raise ApiError(400, "bad_request", "secret: whsec_ followed by the base64 of 24 to "
                   "64 random bytes (or leave it out: one is made and shown once)")


async def _checked_url(call: ApiCall, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad_request", "url: a string is required")
    reason = await _registry(call).check_url(value)  # type: ignore[misc]
    if reason is not None:
        raise ApiError(400, "bad_url", f"url refused: {reason}")
    return value


async def list_hooks(call: ApiCall) -> ApiAnswer:
    hooks = await call.context.disk.run(_registry(call).list_hooks, call.principal.address)
    return ApiAnswer(200, {"webhooks": hooks})


async def add_hook(call: ApiCall) -> ApiAnswer:
    body = _object(call, FIELDS_NEW)
    events = _events(body["events"]) if "events" in body else list(KINDS)
    raw_limit = _raw_limit(call, body.get("raw_limit", 0))
    secret = _secret(body["secret"]) if body.get("secret") is not None else None
    url = await _checked_url(call, body.get("url"))
    registry = _registry(call)
    try:
        hook = await call.context.disk.run(registry.add_hook, call.principal.address, url,
                                           events, secret, raw_limit)
    except ValueError as e:
        raise ApiError(409, "too_many", str(e)) from None
    return ApiAnswer(201, hook, headers={"Location": f"/api/v1/webhooks/{hook['id']}"})


async def get_hook(call: ApiCall) -> ApiAnswer:
    hook = await call.context.disk.run(_registry(call).get_hook, call.principal.address,
                                       call.params["id"])
    if hook is None:
        raise ApiError(404, "not_found", "no such webhook")
    return ApiAnswer(200, hook)


async def change_hook(call: ApiCall) -> ApiAnswer:
    body = _object(call, FIELDS_CHANGE)
    if not body:
        raise ApiError(400, "bad_request", "nothing to change: give url, events, "
                       "raw_limit or active")
    changes: dict[str, object] = {}
    if "events" in body:
        changes["events"] = _events(body["events"])
    if "raw_limit" in body:
        changes["raw_limit"] = _raw_limit(call, body["raw_limit"])
    if "active" in body:
        if not isinstance(body["active"], bool):
            raise ApiError(400, "bad_request", "active: true or false")
        changes["active"] = body["active"]
    if "url" in body:
        changes["url"] = await _checked_url(call, body["url"])
    hook = await call.context.disk.run(_registry(call).update_hook, call.principal.address,
                                       call.params["id"], changes)
    if hook is None:
        raise ApiError(404, "not_found", "no such webhook")
    return ApiAnswer(200, hook)


async def delete_hook(call: ApiCall) -> ApiAnswer:
    gone = await call.context.disk.run(_registry(call).delete_hook, call.principal.address,
                                       call.params["id"])
    if not gone:
        raise ApiError(404, "not_found", "no such webhook")
    return ApiAnswer(204, None, raw=b"")


ROUTES: list[Route] = [
    route("GET", r"webhooks", "all", list_hooks),
    route("POST", r"webhooks", "all", add_hook),
    route("GET", "webhooks/" + HOOK_ID, "all", get_hook),
    route("PATCH", "webhooks/" + HOOK_ID, "all", change_hook),
    route("DELETE", "webhooks/" + HOOK_ID, "all", delete_hook),
]
