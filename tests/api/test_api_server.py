"""The API on the real server: Basic authentication, JSON errors, the loopback http port."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
sys.path.insert(0, str(Path(__file__).parent))
from http_helpers import ALL_LISTENERS, request  # noqa: E402
from openapi_check import check_response  # noqa: E402
from server_harness import RunningServer, make_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root: Path = tmp_path_factory.mktemp("api")
    running = make_server(root, listen=ALL_LISTENERS)
    running.add_user("alice@example.org", "wonderland")
    yield running
    running.stop()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_me_with_the_users_password(server: RunningServer) -> None:
    status, headers, body = request(server, "GET", "/api/v1/me", secure=True,
                                    headers=basic("alice@example.org", "wonderland"))
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(body) == {"address": "alice@example.org", "scopes": ["all"]}
    check_response("get", "/me", 200, json.loads(body))


def test_a_wrong_password_is_401_with_a_challenge(server: RunningServer) -> None:
    status, headers, body = request(server, "GET", "/api/v1/me", secure=True,
                                    headers=basic("alice@example.org", "wrong"))
    assert status == 401
    assert "Basic" in headers["www-authenticate"]
    assert json.loads(body)["error"]["code"] == "unauthenticated"
    check_response("get", "/me", 401, json.loads(body))
    status, _, body = request(server, "GET", "/api/v1/me", secure=True)
    assert status == 401


def test_garbage_basic_credentials_are_401_not_500(server: RunningServer) -> None:
    for value in ("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Digest x",
                  "Basic"):
        status, _, body = request(server, "GET", "/api/v1/me", secure=True,
                                  headers={"Authorization": value})
        assert status == 401, value
        assert json.loads(body)["error"]["status"] == 401
