"""Bearer tokens, the throttle, the rate and concurrency limits and the body cap, on the
real server (one for the module; each test that makes failures has its own loopback
source address, since failures lock an address out)."""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
sys.path.insert(0, str(Path(__file__).parent))
from http_helpers import read_all, request  # noqa: E402
from openapi_check import check_response  # noqa: E402
from server_harness import RunningServer, admin, make_server  # noqa: E402

from mailserver.api.tokens import RECHECK, TokensFile, new_token  # noqa: E402

RATE = 30
LOCKOUT = 600
_sources = (f"127.0.{i // 250 + 1}.{i % 250 + 2}" for i in itertools.count())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root: Path = tmp_path_factory.mktemp("api-auth")
    listen = {"http": "tcp:0:interface=127.0.0.1", "https": "tcp:0:interface=127.0.0.1"}
    running = make_server(root, listen=listen, limits={"message_size": 30_000},
                          abuse={"login_failures": 3, "lockout": LOCKOUT},
                          api={"requests_per_minute": RATE, "concurrent_requests": 1})
    running.add_user("alice@example.org", "wonderland")
    yield running
    running.stop()


def add_token(server: RunningServer, *args: str) -> str:
    out = admin(server.config_path, "token", "add", "alice@example.org", *args).stdout
    return out.strip()


def me(server: RunningServer, authorization: str | None, secure: bool = True,
       source: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, answer_headers, body = request(server, "GET", "/api/v1/me", secure=secure,
                                           headers=headers, source=source)
    assert answer_headers["content-type"] == "application/json"
    return status, answer_headers, json.loads(body)


def test_a_token_works_over_https_and_loopback_http(server: RunningServer) -> None:
    token = add_token(server, "--scope", "read", "--name", "reader")
    for secure in (True, False):
        status, _, body = me(server, f"Bearer {token}", secure=secure)
        assert (status, body) == (200, {"address": "alice@example.org", "scopes": ["read"]})
        check_response("get", "/me", 200, body)
    # Any token may check itself, a send-only one too (the other routes check scopes:
    # test_api_resource.py).
    status, _, body = me(server, f"Bearer {add_token(server, '--scope', 'send')}")
    assert (status, body) == (200, {"address": "alice@example.org", "scopes": ["send"]})


def test_hostile_authorization_headers_are_401_json(server: RunningServer) -> None:
    token = add_token(server)
    _, token_id, secret = token.split("_")
    revoked = add_token(server)
    admin(server.config_path, "token", "del", revoked.split("_")[1])
    expired, entry = new_token("alice@example.org", "all", int(time.time()) - 3 * 86_400, 1)
    TokensFile(server.data_dir / "api-tokens").add(entry)  # as an old `token add` left it
    headers = {
        "empty": "",
        "scheme only": "Bearer",
        "no scheme": token,
        "wrong prefix": f"Bearer ms2_{token_id}_{secret}",
        "unknown id": f"Bearer ms1_{'a' * 16}_{secret}",
        "wrong secret": f"Bearer ms1_{token_id}_{'a' * 52}",
        "secret cut short": f"Bearer ms1_{token_id}_{secret[:-1]}",
        "upper case": f"Bearer {token.upper()}",
        "non-ASCII": "Bearer ms1_tökén",
        "7 KB": "Bearer " + "a" * 7000,
        "revoked": f"Bearer {revoked}",
        "expired": f"Bearer {expired}",
        "Basic garbage": "Basic !!!",
        "Digest": "Digest username=alice",
    }
    for name, value in headers.items():
        status, answer_headers, body = me(server, value, source=next(_sources))
        assert (status, body["error"]["code"], body["error"]["smtp"]) == (
            401, "unauthenticated", "5.7.8"), name
        assert answer_headers["www-authenticate"].startswith('Bearer realm="mailserver"')
        check_response("get", "/me", 401, body)
    assert me(server, None)[2]["error"]["message"] == \
        "send a Bearer token or HTTP Basic credentials"
    assert me(server, f"Bearer {expired}", source=next(_sources))[2]["error"]["message"] == \
        "the token has expired"
    assert me(server, f"Bearer {token}")[0] == 200  # none of that hurt the real one


def test_a_header_past_the_line_limit_is_431_json(server: RunningServer) -> None:
    with socket.create_connection(server.address("http"), timeout=60) as s:
        s.sendall(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  b"a" * 10_240 + b"\r\n\r\n")
        answer = read_all(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nContent-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "header_too_large"


def test_a_deleted_user_takes_their_tokens_along(server: RunningServer) -> None:
    server.add_user("dora@example.org", "explorer")
    token = admin(server.config_path, "token", "add", "dora@example.org").stdout.strip()
    assert me(server, f"Bearer {token}")[0] == 200
    admin(server.config_path, "user", "del", "dora@example.org")
    time.sleep(RECHECK)  # the last full check of the token is at most this old (README)
    status, _, body = me(server, f"Bearer {token}", source=next(_sources))
    assert (status, body["error"]["message"]) == (
        401, "the token's user no longer exists or may not log in")


def test_failures_lock_the_address_out_before_any_check(server: RunningServer) -> None:
    token = add_token(server)
    source = next(_sources)
    for _ in range(3):
        assert me(server, "Bearer ms1_wrong", source=source)[0] == 401
    status, headers, body = me(server, f"Bearer {token}", source=source)
    assert (status, body["error"]["code"], body["error"]["smtp"]) == (
        429, "too_many_failures", "4.7.0")
    assert LOCKOUT - 30 <= int(headers["retry-after"]) <= LOCKOUT
    check_response("get", "/me", 429, body)
    # The shared lock-out, as every service and the operator see it.
    assert source in admin(server.config_path, "ban", "list").stdout
    assert f"abuse: refused service=api ip={source}" in server.log_path.read_text()
    assert me(server, f"Bearer {token}", source=next(_sources))[0] == 200


def test_requests_past_the_rate_are_429_per_token(server: RunningServer) -> None:
    # The count's window turns each minute: 31 requests and their refusal must fit in
    # one, with room for a loaded machine (10 s was not always enough).
    if time.time() % 60 > 30:
        time.sleep(61 - time.time() % 60)
    busy, other = add_token(server), add_token(server)
    for i in range(RATE):
        assert me(server, f"Bearer {busy}")[0] == 200, i
    status, headers, body = me(server, f"Bearer {busy}")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert body["error"]["message"] == f"more than {RATE} requests a minute with this " \
                                       "credential"
    assert 3 <= int(headers["retry-after"]) <= 62  # the rest of the minute, and 60/30 s
    check_response("get", "/me", 429, body)
    assert me(server, f"Bearer {other}")[0] == 200


def test_a_request_still_authenticating_does_not_make_others_503(
        server: RunningServer) -> None:
    """concurrent_requests is 1 here. The request in progress is a wrong password, which
    is answered late: an account's failures wait 0.75 s, 1.5 s, then 3 s. The token's
    request goes once the server has logged the third refusal, whose answer then waits
    its 3 s: it is answered, as the slot is taken only once a credential checks out (the
    503 itself: test_api_limits_unit.py, where a handler can be held)."""
    token = add_token(server)
    slow: list[int] = []
    import base64

    wrong = "Basic " + base64.b64encode(b"slow@example.org:nope").decode()
    for _ in range(2):
        assert me(server, wrong, source=next(_sources))[0] == 401
    refused = "login refused for slow@example.org"
    assert server.log_path.read_text().count(refused) == 2
    thread = threading.Thread(target=lambda: slow.append(
        me(server, wrong, source=next(_sources))[0]))
    thread.start()
    deadline = time.monotonic() + 30
    while server.log_path.read_text().count(refused) < 3:
        assert time.monotonic() < deadline, "the third wrong password was never refused"
        time.sleep(0.02)
    status, _, body = me(server, f"Bearer {token}")
    thread.join()
    assert slow == [401]
    assert (status, body["address"]) == (200, "alice@example.org")


def _refused(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), head
    assert b"\r\nContent-Type: application/json\r\n" in head
    return json.loads(body)  # type: ignore[no-any-return]


def test_a_body_over_the_cap_is_413_json_by_length_and_chunked(
        server: RunningServer) -> None:
    limit = 30_000 * 4 // 3 + 1024 * 1024  # app/web.py: base64 of a message, and JSON
    with socket.create_connection(server.address("http"), timeout=60) as s:
        s.sendall(b"POST /api/v1/me HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n" % (limit + 1))
        body = _refused(read_all(s))
    assert body == {"error": {"status": 413, "code": "too_large", "smtp": "5.3.4",
                              "message": f"the request body is larger than {limit} bytes"}}
    with socket.create_connection(server.address("http"), timeout=60) as s:
        s.sendall(b"POST /api/v1/me HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        try:
            for _ in range(limit // 0x10000 + 2):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us: the answer is read below
        assert _refused(read_all(s)) == body
