"""The API's authentication and limits without a server: the TLS rule, the token check's
single path, the throttle and rate limit, 503, 413, 415 and deep JSON."""

from __future__ import annotations

import base64
import hmac
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.test.requesthelper import DummyRequest

from mailserver.abuse.control import AbuseControl, open_table
from mailserver.api import auth, tokens
from mailserver.api.resource import ApiAnswer, ApiCall, ApiError, ApiResource, Principal, route
from mailserver.api.tokens import TokensFile, new_token, tokens_file
from mailserver.config import config_from_dict
from mailserver.core.context import ServerContext
from mailserver.core.throttle import LoginThrottle


class Directory:
    def __init__(self, *users: str) -> None:
        self.users = set(users)

    def login_allowed(self, address: str) -> bool:
        return address in self.users


class Portal:
    """Counts logins; every password is wrong."""

    def __init__(self) -> None:
        self.logins = 0

    def login(self, *args: Any) -> Deferred[Any]:
        from twisted.cred.error import UnauthorizedLogin

        self.logins += 1
        d: Deferred[Any] = Deferred()
        d.errback(UnauthorizedLogin())
        return d


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_context(tmp_path: Path, abuse: bool = False, **api: Any) -> ServerContext:
    config = config_from_dict({"data_dir": str(tmp_path / "data"),
                               "domains": {"local": ["example.org"]}, "api": api})
    control = AbuseControl(config, open_table(config)) if abuse else None
    return ServerContext(config=config, directory=Directory("alice@example.org"),
                         portal=Portal(), target=None, disk=None, tls=None,  # type: ignore
                         mailboxes=None, abuse=control,  # type: ignore[arg-type]
                         login_throttle=LoginThrottle(limit=3, control=control))


def add_token(context: ServerContext, scope: str = "all", **kw: Any) -> str:
    token, entry = new_token("alice@example.org", scope, kw.pop("now", int(time.time())), **kw)
    tokens_file(context.config).add(entry)
    return token


def http_request(authorization: str | bytes | None = None, client: str = "127.0.0.1",
                 secure: bool = False) -> DummyRequest:
    request = DummyRequest([b"me"])
    request.client = IPv4Address("TCP", client, 40000)
    request.isSecure = lambda: secure  # type: ignore[method-assign]
    if authorization is not None:
        value = authorization.encode("latin-1") if isinstance(authorization, str) \
            else authorization
        request.requestHeaders.setRawHeaders(b"authorization", [value])
    return request


def outcome(context: ServerContext, request: DummyRequest) -> Principal | ApiError:
    d = ensureDeferred(auth.authenticate(context, request))
    result: list[Any] = []
    d.addBoth(result.append)
    assert result, "authenticate answered synchronously here"
    value = result[0]
    if hasattr(value, "value"):  # a Failure
        assert isinstance(value.value, ApiError), value
        return value.value
    assert isinstance(value, Principal)
    return value


def test_plain_http_from_elsewhere_is_403_and_no_credential_is_checked(
        tmp_path: Path) -> None:
    context = make_context(tmp_path)
    token = add_token(context)
    for header in (f"Bearer {token}", "Basic YWxpY2VAZXhhbXBsZS5vcmc6c2VjcmV0", "Bearer x"):
        error = outcome(context, http_request(header, client="192.0.2.7"))
        assert isinstance(error, ApiError)
        assert (error.status, error.code, error.smtp) == (403, "tls_required", "5.7.11")
        assert "https" in error.message
    assert context.portal.logins == 0  # type: ignore[attr-defined]
    assert not context.login_throttle.blocked("192.0.2.7")  # nothing counted
    # The same token: fine over https from there, and over http from loopback.
    assert isinstance(outcome(context, http_request(f"Bearer {token}", "192.0.2.7", True)),
                      Principal)
    for loopback in ("127.0.0.1", "127.3.4.5"):
        assert isinstance(outcome(context, http_request(f"Bearer {token}", loopback)),
                          Principal)


def test_a_token_carries_its_scope_and_id(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    for scope in ("send", "read", "all"):
        token = add_token(context, scope)
        principal = outcome(context, http_request(f"Bearer {token}"))
        token_id = token.split("_")[1]
        assert principal == Principal("alice@example.org", frozenset({scope}),
                                      f"token:{token_id}")


def test_unknown_id_and_wrong_secret_take_the_same_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One HMAC and one compare_digest of 32 bytes each, whether the id exists or not
    (the path is what is shown, not a timing, which a loaded machine would blur)."""
    context = make_context(tmp_path)
    token = add_token(context)
    _, token_id, secret = token.split("_")
    wrong_secret = f"ms1_{token_id}_{'a' * 52}"
    unknown_id = f"ms1_{'a' * 16}_{secret}"
    calls: list[tuple[str, Any]] = []
    real_digest, real_compare = tokens.digest, hmac.compare_digest

    def spy_digest(i: str, s: str) -> bytes:
        calls.append(("digest", i))
        return real_digest(i, s)

    def spy_compare(a: bytes, b: bytes) -> bool:
        calls.append(("compare", (len(a), len(b))))
        return real_compare(a, b)

    monkeypatch.setattr(tokens, "digest", spy_digest)
    monkeypatch.setattr(tokens.hmac, "compare_digest", spy_compare)
    reader = TokensFile(tokens.tokens_path(context.config))
    for presented, used_id in ((wrong_secret, token_id), (unknown_id, "a" * 16)):
        calls.clear()
        assert reader.verify(presented) is None
        assert calls == [("digest", used_id), ("compare", (32, 32))]
    calls.clear()
    assert reader.verify(token) is not None
    assert calls == [("digest", token_id), ("compare", (32, 32))]


def test_every_failure_counts_and_a_locked_address_gets_429_first(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    token = add_token(context)
    expired = add_token(context, now=int(time.time()) - 3 * 86_400, days=1)
    for header in ("ms1_nothing", f"Bearer {expired}", "Basic bm9jb2xvbg=="):
        error = outcome(context, http_request(header, "127.0.0.9"))
        assert isinstance(error, ApiError) and error.status == 401, header
    # A missing header is a first request, not a failure: still not locked.
    assert outcome(context, http_request(None, "127.0.0.10")).status == 401  # type: ignore
    locked = outcome(context, http_request(f"Bearer {token}", "127.0.0.9"))
    assert isinstance(locked, ApiError)
    assert (locked.status, locked.code, locked.headers["Retry-After"]) == (
        429, "too_many_failures", str(auth.LOCKOUT_RETRY))
    assert isinstance(outcome(context, http_request(f"Bearer {token}", "127.0.0.10")),
                      Principal)
    # Locked out: not even a password check (the portal is never asked).
    logins = context.portal.logins  # type: ignore[attr-defined]
    error = outcome(context, http_request("Basic YWxpY2VAZXhhbXBsZS5vcmc6eA==", "127.0.0.9"))
    assert isinstance(error, ApiError) and error.status == 429
    assert context.portal.logins == logins  # type: ignore[attr-defined]


def test_expired_and_orphaned_tokens_are_401_with_a_reason(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    expired = add_token(context, now=int(time.time()) - 3 * 86_400, days=1)
    error = outcome(context, http_request(f"Bearer {expired}"))
    assert isinstance(error, ApiError)
    assert (error.status, error.message) == (401, "the token has expired")
    assert 'error="invalid_token"' in error.headers["WWW-Authenticate"]  # RFC 6750 3.1
    error = outcome(context, http_request(None))
    assert 'error=' not in error.headers["WWW-Authenticate"]  # type: ignore[union-attr]
    token = add_token(context)
    context.directory.users.clear()  # type: ignore[attr-defined]
    error = outcome(context, http_request(f"Bearer {token}"))
    assert isinstance(error, ApiError)
    assert (error.status, error.message) == (
        401, "the token's user no longer exists or may not log in")


def test_the_rate_limit_counts_per_token_in_the_shared_table(tmp_path: Path) -> None:
    context = make_context(tmp_path, abuse=True, requests_per_minute=3)
    first, second = add_token(context), add_token(context)
    for _ in range(3):
        assert isinstance(outcome(context, http_request(f"Bearer {first}")), Principal)
    error = outcome(context, http_request(f"Bearer {first}"))
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.smtp) == (429, "rate_limited", "4.7.0")
    wait = int(error.headers["Retry-After"])
    assert 21 <= wait <= 80  # the rest of the minute and 60/3 s
    assert isinstance(outcome(context, http_request(f"Bearer {second}")), Principal)
    # Another process (another AbuseControl over the same file) sees the same count.
    other = make_context(tmp_path, abuse=True, requests_per_minute=3)
    error = outcome(other, http_request(f"Bearer {first}"))
    assert isinstance(error, ApiError) and error.status == 429


# -- the resource: 503, 413, 415, deep JSON ---------------------------------------------

async def _echo(call: ApiCall) -> ApiAnswer:
    return ApiAnswer(200, {"got": call.json()})


def _resource(context: Any, authenticate: Any = None, max_body: int = 1000) -> ApiResource:
    async def anyone(context: Any, request: Any) -> Principal:
        return Principal("alice@example.org", frozenset({"all"}), "token:t")

    return ApiResource(context, authenticate or anyone, [route("POST", r"echo", "send", _echo)],
                       max_body=max_body)


def _post(resource: ApiResource, body: bytes, content_type: str | None = "application/json"
          ) -> DummyRequest:
    request = DummyRequest([b"echo"])
    request.method, request.path = b"POST", b"/api/v1/echo"
    request.content = io.BytesIO(body)
    if content_type is not None:
        request.requestHeaders.setRawHeaders(b"content-type", [content_type.encode()])
    resource.render(request)
    return request


def _answer(request: DummyRequest) -> tuple[int, Any]:
    assert request.finished
    return request.responseCode or 200, json.loads(b"".join(request.written))


def test_a_non_json_content_type_is_415(tmp_path: Path) -> None:
    api = _resource(None)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None,
                         "application/jsonx", "application/json-seq"):
        code, body = _answer(_post(api, b'{"a": 1}', content_type))
        assert (code, body["error"]["code"]) == (415, "unsupported_media_type"), content_type
    for content_type in ("application/json", "Application/JSON; charset=utf-8"):
        assert _answer(_post(api, b'{"a": 1}', content_type)) == (200, {"got": {"a": 1}})


def test_deep_and_broken_json_is_400(tmp_path: Path) -> None:
    api = _resource(None, max_body=1_000_000)
    for body, message in ((b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
                          (b'{"a": ', None), (b'"\xff"', "the body is not UTF-8"),
                          (b"", "the request has no JSON body")):
        code, answer = _answer(_post(api, body))
        assert (code, answer["error"]["code"]) == (400, "bad_json"), body[:10]
        if message:
            assert answer["error"]["message"] == message


def test_a_body_over_max_body_is_413_json(tmp_path: Path) -> None:
    api = _resource(None, max_body=1000)
    code, body = _answer(_post(api, b"[" + b"1," * 600 + b"1]"))
    assert code == 413
    assert body == {"error": {"status": 413, "code": "too_large", "smtp": "5.3.4",
                              "message": "the request body is larger than 1000 bytes"}}
    assert _answer(_post(api, b"[1]"))[0] == 200
    assert json.loads(api.refusal(413) or b"") == body  # what the channel sends
    assert api.refusal(400) is None


def _held_route() -> tuple[list[Deferred[None]], Any]:
    """A route whose handler waits until the test fires its Deferred."""
    working: list[Deferred[None]] = []

    async def slow(call: ApiCall) -> ApiAnswer:
        d: Deferred[None] = Deferred()
        working.append(d)
        await d
        return ApiAnswer(200, {"got": call.json()})

    return working, route("POST", r"echo", "send", slow)


def _from(api: ApiResource, body: bytes, authorization: str | None = None,
          client: str = "192.0.2.9") -> DummyRequest:
    """A POST /api/v1/echo over https from `client`."""
    request = http_request(authorization, client, secure=True)
    request.method, request.path = b"POST", b"/api/v1/echo"
    request.content = io.BytesIO(body)
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    api.render(request)
    return request


def test_authenticated_requests_past_concurrent_requests_are_503(tmp_path: Path) -> None:
    context = make_context(tmp_path, concurrent_requests=2)
    working, slow = _held_route()
    api = ApiResource(context, _resource(context).authenticate, [slow])
    held = [_post(api, b"[1]"), _post(api, b"[2]")]
    assert not any(r.finished for r in held) and api.in_progress == 2
    refused = _post(api, b"[3]")
    code, body = _answer(refused)
    assert (code, body["error"]["code"], body["error"]["smtp"]) == (503, "busy", "4.3.2")
    assert refused.responseHeaders.getRawHeaders(b"retry-after") == [b"1"]
    assert len(working) == 2, "the refused request never reached its handler"
    working[0].callback(None)
    assert _answer(held[0]) == (200, {"got": [1]}) and api.in_progress == 1
    working[1].errback(ApiError(422, "refused", "no"))
    assert _answer(held[1])[0] == 422 and api.in_progress == 0
    fourth = _post(api, b"[4]")  # a slot is free again
    working[2].callback(None)
    assert _answer(fourth) == (200, {"got": [4]}) and api.in_progress == 0


def test_requests_still_authenticating_take_no_slot(tmp_path: Path) -> None:
    """A flood of requests whose credential is still being checked (a password in the
    hashing pool) or never checks out leaves the slots to those that did."""
    context = make_context(tmp_path, concurrent_requests=2)
    checking: list[Deferred[Principal]] = []
    alice = Principal("alice@example.org", frozenset({"all"}), "token:t")

    async def authenticate(context: Any, request: Any) -> Principal:
        if request.getHeader(b"authorization") == b"Bearer good":
            return alice
        d: Deferred[Principal] = Deferred()
        checking.append(d)
        return await d

    api = ApiResource(context, authenticate, [route("POST", r"echo", "send", _echo)])
    flood = [_from(api, b"[0]", "Basic Zm9vOmJhcg==") for _ in range(50)]
    assert len(checking) == 50 and api.in_progress == 0
    for n in range(5):
        assert _answer(_from(api, f"[{n}]".encode(), "Bearer good")) == (200, {"got": [n]})
    for d in checking[:49]:
        d.errback(ApiError(401, "unauthenticated", "wrong address or password"))
    assert {_answer(r)[0] for r in flood[:49]} == {401} and api.in_progress == 0
    checking[49].callback(alice)  # the last one's password was right after all
    assert _answer(flood[49]) == (200, {"got": [0]})


def test_failing_credentials_meet_the_throttle_not_the_slot_limit(tmp_path: Path) -> None:
    """With every slot busy, wrong passwords still get their own answers (401, then 429
    from the login throttle before any check), never 503; real clients get 503 only
    because of other real clients."""
    context = make_context(tmp_path, concurrent_requests=1)
    token = add_token(context)
    working, slow = _held_route()
    api = ApiResource(context, auth.authenticate, [slow])
    held = _from(api, b"[1]", f"Bearer {token}", client="198.51.100.1")
    assert api.in_progress == 1 and not held.finished
    wrong = "Basic " + base64.b64encode(b"alice@example.org:guess").decode()
    codes = [_answer(_from(api, b"[2]", wrong))[0] for _ in range(10)]
    assert codes == [401] * 3 + [429] * 7
    assert context.portal.logins == 3  # type: ignore[attr-defined]
    code, body = _answer(_from(api, b"[3]", f"Bearer {token}", client="198.51.100.2"))
    assert (code, body["error"]["code"]) == (503, "busy")
    working[0].callback(None)
    assert _answer(held) == (200, {"got": [1]}) and api.in_progress == 0


def test_the_shared_error_responses_are_in_the_openapi_document(tmp_path: Path) -> None:
    """Every route $refs these; each real refusal body fits the one for its status."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from openapi_check import _validate, document

    responses = document()["components"]["responses"]
    names = {400: "BadRequest", 401: "Unauthenticated", 403: "Forbidden",
             413: "ContentTooLarge", 415: "UnsupportedMediaType", 429: "TooManyRequests",
             503: "Unavailable"}
    api = _resource(None, max_body=10)
    bodies = {400: _answer(_post(api, b"{"))[1],
              413: json.loads(api.refusal(413) or b""),
              415: _answer(_post(api, b"[]", "text/plain"))[1]}
    for status, name in names.items():
        schema = responses[name]["content"]["application/json"]["schema"]
        body = bodies.get(status, ApiError(status, "x", "y", "4.7.0").body())
        _validate(schema, body, name)
    assert set(responses["TooManyRequests"]["headers"]) == {"Retry-After"}


def test_an_unreadable_token_store_is_503_not_a_failure(tmp_path: Path) -> None:
    """A tokens file that cannot be read (here a directory in its place: root reads
    through modes) is the server's problem: 503, nothing counted against the client."""
    (tmp_path / "store").mkdir()
    context = make_context(tmp_path, tokens_file=str(tmp_path / "store"))
    error = outcome(context, http_request(f"Bearer ms1_{'a' * 16}_{'b' * 52}", "127.0.0.20"))
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.headers["Retry-After"]) == (503, "unavailable",
                                                                       "60")
    assert not context.login_throttle._failures  # not counted against the client


def test_a_user_marked_nologin_or_deny_cannot_use_a_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within tokens.RECHECK of the last full check (RecentTokens)."""
    from mailserver.auth.directory import RecipientDirectory

    clock = Clock()
    monkeypatch.setattr(auth, "_recent", auth.RecentTokens(clock))
    context = make_context(tmp_path)
    users = context.config.users_file
    users.parent.mkdir(parents=True, exist_ok=True)
    users.write_text("alice@example.org:{PLAIN}x::::::\n")
    context.directory = RecipientDirectory(context.config)
    token = add_token(context)
    assert isinstance(outcome(context, http_request(f"Bearer {token}")), Principal)
    for field in ("nologin", "deny=yes"):
        users.write_text(f"alice@example.org:{{PLAIN}}x::::::{field}\n")
        clock.now += tokens.RECHECK
        error = outcome(context, http_request(f"Bearer {token}", "127.0.0.30"))
        assert isinstance(error, ApiError) and error.status == 401, field
    users.write_text("alice@example.org:{PLAIN}x::::::deny=no\n")
    assert isinstance(outcome(context, http_request(f"Bearer {token}")), Principal)


def test_a_user_name_with_line_breaks_stays_on_one_log_line(tmp_path: Path) -> None:
    """The failure's log line is what fail2ban reads: a Basic user name holding CR LF
    and a forged "abuse: refused ... ip=VICTIM" must not become a line of its own."""
    import base64

    from twisted.logger import formatEvent, globalLogPublisher

    config = config_from_dict({"data_dir": str(tmp_path / "data")})
    context = make_context(tmp_path)
    context.login_throttle = LoginThrottle(control=AbuseControl(config, open_table(config)))
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    forged = "x\r\nabuse: refused service=imap ip=192.0.2.99 account=- reason=auth-failed"
    value = base64.b64encode(f"{forged}:pw".encode()).decode()
    globalLogPublisher.addObserver(observe)
    try:
        error = outcome(context, http_request(f"Basic {value}", "127.0.0.40"))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert isinstance(error, ApiError) and error.status == 401
    # (Basic ends the user name at its first colon: the rest went in as the password.)
    refused = [line for line in lines if line.startswith("abuse: refused")]
    assert refused == ["abuse: refused service=api ip=127.0.0.40 account=x??abuse "
                       "reason=auth-failed"]


def test_retry_after_the_rate_limit_is_when_a_request_fits_again(tmp_path: Path) -> None:
    """Ten a minute, all used at 12:00:30; refused until 12:01:06 (the rest of the
    minute, then 6 s: 10 * (1 - 6/60) = 9 requests' worth left in the estimate)."""
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1_800_000_030)  # hh:mm:30
    config = config_from_dict({"data_dir": str(tmp_path / "data")})
    control = AbuseControl(config, open_table(config, clock=clock))
    for _ in range(10):
        assert control.api_request("token:t", 10, "127.0.0.1", "a@example.org") == 0
    wait = control.api_request("token:t", 10, "127.0.0.1", "a@example.org")
    assert wait == 36
    clock.advance(wait - 1)
    assert control.api_request("token:t", 10, "127.0.0.1", "a@example.org") > 0
    clock.advance(1)
    assert control.api_request("token:t", 10, "127.0.0.1", "a@example.org") == 0


def test_any_scope_routes_take_every_token_and_others_check_theirs() -> None:
    from mailserver.api.resource import ANY_SCOPE

    sender = Principal("alice@example.org", frozenset({"send"}), "token:t")
    assert (sender.allows(ANY_SCOPE), sender.allows("send"), sender.allows("read")) == (
        True, True, False)
    everything = Principal("alice@example.org", frozenset({"all"}), "password")
    assert everything.allows("read") and everything.allows("send")


def test_a_checked_token_is_taken_from_memory_for_a_second_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RecentTokens: a token whose user was deleted stops working within RECHECK; until
    then no HMAC is computed for it again; expiry is still checked every time."""
    clock = Clock()
    monkeypatch.setattr(auth, "_recent", auth.RecentTokens(clock))
    context = make_context(tmp_path)
    token = add_token(context, days=1)
    assert isinstance(outcome(context, http_request(f"Bearer {token}")), Principal)
    hmacs: list[str] = []
    real_digest = tokens.digest
    monkeypatch.setattr(tokens, "digest",
                        lambda i, s: hmacs.append(i) or real_digest(i, s))
    context.directory.users.clear()  # type: ignore[attr-defined]  # the user is deleted
    clock.now += tokens.RECHECK / 2
    principal = outcome(context, http_request(f"Bearer {token}"))
    assert isinstance(principal, Principal) and principal.address == "alice@example.org"
    assert hmacs == []
    real_time = time.time
    monkeypatch.setattr(auth.time, "time", lambda: real_time() + 2 * 86_400)
    error = outcome(context, http_request(f"Bearer {token}"))
    assert isinstance(error, ApiError) and error.message == "the token has expired"
    monkeypatch.setattr(auth.time, "time", real_time)
    clock.now += tokens.RECHECK / 2
    error = outcome(context, http_request(f"Bearer {token}"))
    assert isinstance(error, ApiError) and (error.status, error.message) == (
        401, "the token's user no longer exists or may not log in")
    assert len(hmacs) == 1


def test_recent_tokens_are_bounded_and_per_directory() -> None:
    clock = Clock()
    recent = auth.RecentTokens(clock)
    _, entry = new_token("alice@example.org", "all", 1)
    first, other = object(), object()
    recent.put("t", entry, first)
    assert recent.get("t", other) is None  # another server's directory: checked anew
    recent.put("t", entry, first)
    assert recent.get("t", first) == entry
    for i in range(auth.RecentTokens.MAX):
        recent.put(f"t{i}", entry, first)
    assert recent.get("t", first) is None  # forgotten wholesale at MAX
    assert len(recent._seen) <= auth.RecentTokens.MAX


def test_a_checked_token_costs_no_stat_within_recheck(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RecentTokens is the one cache in front of the tokens file: within RECHECK of a
    token's full check no file is stat()ed on the reactor (neither the tokens file nor
    the users file); after it, the full check reads the file as it is now."""
    from mailserver.auth import textfile

    clock = Clock()
    monkeypatch.setattr(auth, "_recent", auth.RecentTokens(clock))
    context = make_context(tmp_path)
    token = add_token(context)
    stats: list[Path] = []
    real = textfile._signature

    def counted(path: Path) -> textfile.Signature | None:
        stats.append(path)
        return real(path)

    monkeypatch.setattr(textfile, "_signature", counted)
    assert isinstance(outcome(context, http_request(f"Bearer {token}")), Principal)
    assert stats == [tokens_file(context.config).path]
    stats.clear()
    for _ in range(50):
        assert isinstance(outcome(context, http_request(f"Bearer {token}")), Principal)
    assert stats == []
    clock.now += tokens.RECHECK
    assert isinstance(outcome(context, http_request(f"Bearer {token}")), Principal)
    assert stats == [tokens_file(context.config).path]


def test_a_revoked_token_stops_within_recheck_of_its_last_full_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever other tokens did meanwhile: a reading of the file made for another
    token's check must not renew a revoked token's time (with a second cache of the
    file's reading under RecentTokens, a token revoked just after that reading was
    still accepted up to two RECHECKs after its last full check)."""
    clock = Clock()
    monkeypatch.setattr(auth, "_recent", auth.RecentTokens(clock))
    context = make_context(tmp_path)
    first, second = add_token(context), add_token(context)
    assert isinstance(outcome(context, http_request(f"Bearer {first}")), Principal)
    clock.now += tokens.RECHECK * 1.05
    assert isinstance(outcome(context, http_request(f"Bearer {second}")), Principal)
    cli = TokensFile(tokens_file(context.config).path)  # `token del`: another process
    revoked = cli.remove(lambda e: first.startswith(f"ms1_{e.id}_"))
    assert len(revoked) == 1
    clock.now += tokens.RECHECK * 0.05
    error = outcome(context, http_request(f"Bearer {first}"))
    assert isinstance(error, ApiError) and error.status == 401
