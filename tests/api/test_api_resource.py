"""The API's dispatch: JSON errors for unknown paths, wrong methods and missing scopes."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.test.requesthelper import DummyRequest

from mailserver.api.resource import ApiAnswer, ApiCall, ApiError, ApiResource, Principal, route


async def _hello(call: ApiCall) -> ApiAnswer:
    return ApiAnswer(200, {"hello": call.principal.address, "name": call.params["name"]})


async def _reader(context: Any, request: Any) -> Principal:
    return Principal("alice@example.org", frozenset({"read"}), "token:t1")


async def _nobody(context: Any, request: Any) -> Principal:
    raise ApiError(401, "unauthenticated", "who are you")


ROUTES = [route("GET", r"hello/(?P<name>[^/]+)", "read", _hello),
          route("POST", r"send", "send", _hello)]


def _request(resource: ApiResource, method: bytes, path: bytes) -> tuple[int, Any, DummyRequest]:
    request = DummyRequest(path[1:].split(b"/"))
    request.method = method
    request.path = path
    finished: Deferred[None] = request.notifyFinish()
    resource.render(request)
    assert finished.called, "the API answered synchronously in these tests"
    return request.responseCode or 200, json.loads(b"".join(request.written)), request


def test_a_route_answers_json_with_its_parameters_decoded() -> None:
    api = ApiResource(None, _reader, ROUTES)  # type: ignore[arg-type]
    code, body, _ = _request(api, b"GET", b"/api/v1/hello/caf%C3%A9")
    assert (code, body) == (200, {"hello": "alice@example.org", "name": "café"})


def test_unknown_paths_are_404_json() -> None:
    api = ApiResource(None, _reader, ROUTES)  # type: ignore[arg-type]
    for path in (b"/api/v1/nothing", b"/api/v1/hello/a/b", b"/api/v1//hello/x",
                 b"/api/v1/../v1/hello/x", b"/api/v2/hello/x"):
        code, body, _ = _request(api, b"GET", path)
        assert code == 404, path
        assert body["error"]["code"] == "not_found"


def test_a_wrong_method_is_405_with_allow() -> None:
    api = ApiResource(None, _reader, ROUTES)  # type: ignore[arg-type]
    code, body, request = _request(api, b"DELETE", b"/api/v1/hello/x")
    assert code == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [b"GET"]


def test_a_missing_scope_is_403_and_no_credential_401() -> None:
    code, body, _ = _request(ApiResource(None, _reader, ROUTES),  # type: ignore[arg-type]
                             b"POST", b"/api/v1/send")
    assert (code, body["error"]["code"]) == (403, "forbidden")
    code, body, _ = _request(ApiResource(None, _nobody, ROUTES),  # type: ignore[arg-type]
                             b"GET", b"/api/v1/hello/x")
    assert (code, body["error"]) == (401, {"status": 401, "code": "unauthenticated",
                                           "message": "who are you"})
