"""/nginx-auth's header handling, without a server: nginx's requests, hostile ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakes import FakeDisk, MailRealm
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from mailserver.cluster.health import HealthView, NodeHealth, write_state
from mailserver.cluster.nginx_auth import NginxAuthResource, headers_of
from mailserver.cluster.nodes import owner
from mailserver.config import config_from_dict
from mailserver.core.throttle import LoginThrottle

NODES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}
LISTEN = {"imap": "tcp:143", "pop3": "tcp:110", "submission": "tcp:587", "smtp": "tcp:25",
          "http": "tcp:8080"}
PORTS = {"imap": "143", "pop3": "110", "smtp": "587"}


def make(tmp_path: Path, users: dict[str, bytes] | None = None, **cluster: Any,
         ) -> tuple[NginxAuthResource, LoginThrottle, Path]:
    config = config_from_dict({
        "data_dir": str(tmp_path), "domains": {"local": ["example.org"]}, "listen": LISTEN,
        "cluster": {"node": "n1", "nodes": NODES, "trusted_proxies": ["192.0.2.100/32"],
                    **cluster}})
    checker = InMemoryUsernamePasswordDatabaseDontUse(
        **{k: v for k, v in (users or {"alice@example.org": b"wonderland"}).items()})
    throttle = LoginThrottle(limit=3, clock=Clock())
    context: Any = SimpleNamespace(config=config, portal=Portal(MailRealm(), [checker]),
                                   login_throttle=throttle)
    path = tmp_path / "health.json"
    resource = NginxAuthResource(context, HealthView(path, FakeDisk(), clock=Clock()))  # type: ignore[arg-type]
    resource.listening = dict
    return resource, throttle, path


def nginx(**overrides: str | None) -> Headers:
    """The headers nginx sends for an IMAP LOGIN (ngx_mail_auth_http_module)."""
    fields: dict[str, str | None] = {
        "Auth-Method": "plain", "Auth-User": "alice@example.org", "Auth-Pass": "wonderland",
        "Auth-Protocol": "imap", "Auth-Login-Attempt": "1", "Client-IP": "198.51.100.7",
        "Client-Host": "[UNAVAILABLE]"}
    fields.update(overrides)
    headers = Headers()
    for name, value in fields.items():
        if value is not None:
            headers.addRawHeader(name.encode(), value.encode("latin-1"))
    return headers


def ask(resource: NginxAuthResource, headers: Headers) -> dict[str, str]:
    d = ensureDeferred(resource.answer(headers))
    assert d.called
    answer = d.result
    out = {k.decode(): v.decode() for k, v in headers_of(answer)}
    out["http"] = str(answer.http_code)
    return out


def test_the_right_password_gets_the_owning_nodes_address_and_port(tmp_path: Path) -> None:
    resource, throttle, _ = make(tmp_path)
    node = owner("alice@example.org", NODES)
    assert node is not None
    for protocol, port in PORTS.items():
        assert ask(resource, nginx(**{"Auth-Protocol": protocol})) == {
            "Auth-Status": "OK", "Auth-Server": NODES[node], "Auth-Port": port, "http": "200"}


def test_the_owner_is_keyed_by_the_canonical_address(tmp_path: Path) -> None:
    resource, _, _ = make(tmp_path)
    node = owner("alice@example.org", NODES)
    # nginx escapes the % it passes on; the user as typed, unescaped, is what logs in.
    answer = ask(resource, nginx(**{"Auth-User": "alice%40example.org"}))
    assert (answer["Auth-Status"], answer["Auth-Server"]) == ("OK", NODES[str(node)])


def test_a_wrong_password_waits_and_counts_for_the_real_client(tmp_path: Path) -> None:
    resource, throttle, _ = make(tmp_path)
    assert ask(resource, nginx(**{"Auth-Pass": "guess"})) == {
        "Auth-Status": "[AUTHENTICATIONFAILED] Invalid login or password", "Auth-Wait": "3",
        "http": "200"}
    assert ask(resource, nginx(**{"Auth-Pass": "guess", "Auth-Protocol": "pop3"})) == {
        "Auth-Status": "[AUTH] Invalid login or password", "Auth-Wait": "3", "http": "200"}
    assert ask(resource, nginx(**{"Auth-Pass": "guess", "Auth-Protocol": "smtp"})) == {
        "Auth-Status": "Invalid login or password", "Auth-Error-Code": "535 5.7.8",
        "Auth-Wait": "3", "http": "200"}
    # Three failures from 198.51.100.7 (Client-IP), none from the proxy.
    assert throttle.blocked("198.51.100.7") and not throttle.blocked("127.0.0.1")
    # Locked out: refused before the password is looked at, the right one too.
    assert ask(resource, nginx(**{"Auth-Protocol": "smtp"})) == {
        "Auth-Status": "Too many failed logins from your address; try again later",
        "Auth-Error-Code": "454 4.7.0", "http": "200"}
    assert ask(resource, nginx())["Auth-Status"].startswith("[UNAVAILABLE] Too many")
    # Another client is not affected.
    assert ask(resource, nginx(**{"Client-IP": "198.51.100.8"}))["Auth-Status"] == "OK"


def test_from_the_tenth_attempt_nginx_is_told_to_end_the_session(tmp_path: Path) -> None:
    resource, _, _ = make(tmp_path)
    answer = ask(resource, nginx(**{"Auth-Pass": "x", "Auth-Login-Attempt": "10"}))
    assert "Auth-Wait" not in answer and answer["Auth-Status"].endswith("password")


def test_smtp_without_a_login_goes_to_a_live_nodes_smtp_port(tmp_path: Path) -> None:
    resource, throttle, _ = make(tmp_path)
    headers = nginx(**{"Auth-Method": "none", "Auth-User": None, "Auth-Pass": None,
                       "Auth-Protocol": "smtp"})
    headers.addRawHeader(b"Auth-SMTP-Helo", b"mx.example.net")
    headers.addRawHeader(b"Auth-SMTP-From", b"MAIL FROM:<a@example.net>")
    headers.addRawHeader(b"Auth-SMTP-To", b"RCPT TO:<alice@example.org>")
    node = owner("client:198.51.100.7", NODES)
    assert ask(resource, headers) == {"Auth-Status": "OK", "Auth-Server": NODES[str(node)],
                                      "Auth-Port": "25", "http": "200"}
    assert not throttle.blocked("198.51.100.7")


@pytest.mark.parametrize("method", ["apop", "cram-md5", "external"])
def test_apop_and_cram_md5_are_refused_plainly(tmp_path: Path, method: str) -> None:
    resource, throttle, _ = make(tmp_path)
    answer = ask(resource, nginx(**{"Auth-Method": method, "Auth-Protocol": "smtp",
                                    "Auth-Pass": None}))
    assert answer == {"Auth-Status": "APOP, CRAM-MD5 and EXTERNAL are not supported; use "
                      "PLAIN or LOGIN", "Auth-Error-Code": "504 5.5.4", "Auth-Wait": "3",
                      "http": "200"}
    assert not throttle._failures


def test_a_node_marked_down_sends_its_users_to_their_next_node(tmp_path: Path) -> None:
    resource, _, path = make(tmp_path)
    first = owner("alice@example.org", NODES)
    write_state(path, {n: NodeHealth(n, a, n != first, 0.0) for n, a in NODES.items()})
    second = owner("alice@example.org", NODES, down={str(first)})
    assert ask(resource, nginx())["Auth-Server"] == NODES[str(second)]
    write_state(path, {n: NodeHealth(n, a, False, 0.0) for n, a in NODES.items()})
    resource.view._read_at = None  # the view's second has passed
    assert ask(resource, nginx()) == {
        "Auth-Status": "[UNAVAILABLE] No mail server is available, try again later",
        "Auth-Wait": "3", "http": "200"}


@pytest.mark.parametrize("overrides", [
    {"Auth-Method": None}, {"Auth-Method": "digest-md5"}, {"Auth-Protocol": None},
    {"Auth-Protocol": "nntp"}, {"Client-IP": None}, {"Client-IP": "not-an-ip"},
    {"Client-IP": "198.51.100.7\r\nAuth-Server: 203.0.113.9"}, {"Auth-User": None},
    {"Auth-Login-Attempt": "one"}, {"Auth-Login-Attempt": "99999999999"},
    {"Auth-Method": "none"},  # none is for SMTP only
])
def test_malformed_requests_are_400_and_echo_nothing(tmp_path: Path,
                                                     overrides: dict[str, str | None]) -> None:
    resource, throttle, _ = make(tmp_path)
    assert ask(resource, nginx(**overrides)) == {"Auth-Status": "Invalid auth request",
                                                  "http": "400"}
    assert not throttle._failures


def test_a_doubled_header_is_400(tmp_path: Path) -> None:
    resource, _, _ = make(tmp_path)
    headers = nginx()
    headers.addRawHeader(b"Client-IP", b"127.0.0.1")  # a second, contradicting one
    assert ask(resource, headers)["http"] == "400"


def test_nothing_typed_reaches_the_answer(tmp_path: Path) -> None:
    """A user name or password that tries to add Auth-Server to the answer, escaped as
    nginx escapes CR LF, fails to log in and changes no header."""
    resource, throttle, _ = make(tmp_path, {
        "alice@example.org\r\nAuth-Server: 203.0.113.9": b"x"})
    for i, (user, password) in enumerate([
            ("alice@example.org%0D%0AAuth-Server:%20203.0.113.9", "wrong"),
            ("alice@example.org", "wonderland%0D%0AAuth-Server:%20203.0.113.9"),
            ("Auth-Server: 203.0.113.9", "x"), ("%00%FF%80", "x"), ("x" * 600, "x")]):
        answer = ask(resource, nginx(**{"Auth-User": user, "Auth-Pass": password,
                                        "Client-IP": f"198.51.100.{10 + i}"}))
        assert answer["Auth-Status"].endswith("Invalid login or password"), user
        assert set(answer) == {"Auth-Status", "Auth-Wait", "http"}
    # The in-memory checker knows the CR LF name: logging in as it still names a
    # node from cluster.nodes, never the text.
    answer = ask(resource, nginx(**{"Auth-User": "alice@example.org%0D%0AAuth-Server:"
                                    "%20203.0.113.9", "Auth-Pass": "x"}))
    assert answer["Auth-Server"] in NODES.values()


def test_extra_headers_from_the_request_do_not_change_the_answer(tmp_path: Path) -> None:
    resource, _, _ = make(tmp_path)
    headers = nginx()
    headers.addRawHeader(b"Auth-Server", b"203.0.113.9")
    headers.addRawHeader(b"Auth-Port", b"1")
    headers.addRawHeader(b"Auth-Status", b"OK")
    node = owner("alice@example.org", NODES)
    assert ask(resource, headers) == {"Auth-Status": "OK", "Auth-Server": NODES[str(node)],
                                      "Auth-Port": "143", "http": "200"}


def render(resource: NginxAuthResource, peer: str, path: bytes = b"/nginx-auth",
           method: bytes = b"GET", extra: list[tuple[str, str]] = ()) -> DummyRequest:  # type: ignore[assignment]
    request = DummyRequest([])
    request.path = path
    request.method = method
    request.client = IPv4Address("TCP", peer, 40000)
    request.requestHeaders = nginx()
    for name, value in extra:
        request.requestHeaders.addRawHeader(name.encode(), value.encode())
    finished: Deferred[None] = request.notifyFinish()
    result = resource.render(request)
    if isinstance(result, bytes):
        request.write(result)
        request.finish()
    assert finished.called
    return request


def test_only_trusted_proxies_and_loopback_may_ask(tmp_path: Path) -> None:
    resource, throttle, _ = make(tmp_path)
    for peer in ("127.0.0.1", "192.0.2.100"):  # this host; a trusted proxy
        request = render(resource, peer)
        assert request.responseCode in (None, 200)
        assert request.responseHeaders.getRawHeaders(b"auth-status") == [b"OK"]
    for peer in ("192.0.2.101", "127.0.0.2", "10.0.0.2"):  # the nodes are not proxies
        request = render(resource, peer)
        assert request.responseCode == 403
        assert request.responseHeaders.getRawHeaders(b"auth-status") is None
        assert b"".join(request.written) == b"forbidden: not a trusted proxy\n"


def _auth_headers(request: DummyRequest) -> dict[bytes, list[bytes]]:
    return {k: v for k, v in request.responseHeaders.getAllRawHeaders()
            if k.lower().startswith(b"auth-")}


@pytest.mark.parametrize("header", ["Forwarded", "X-Forwarded-For", "X-Real-IP"])
def test_a_request_an_http_proxy_forwarded_is_403_without_a_secret(
        tmp_path: Path, header: str) -> None:
    """An HTTP reverse proxy on this host forwarding public requests would make the
    endpoint a password oracle whose throttle the caller steers (Client-IP is theirs to
    write): its mark is refused before any password is checked."""
    resource, throttle, _ = make(tmp_path)
    for peer in ("127.0.0.1", "192.0.2.100"):
        request = render(resource, peer, extra=[(header, "203.0.113.5")])
        assert request.responseCode == 403
        assert b"".join(request.written) == b"forbidden: forwarded by an HTTP proxy\n"
        assert _auth_headers(request) == {}
    assert not throttle._failures


def test_with_a_secret_every_caller_must_send_it(tmp_path: Path) -> None:
    secret = "Zq8p2Lr7Wm4Xk9Tf3Hs6"
    (tmp_path / "auth.secret").write_text(secret + "\n")
    resource, throttle, _ = make(tmp_path, auth_secret_file=str(tmp_path / "auth.secret"))
    for peer in ("127.0.0.1", "::1", "192.0.2.100"):
        for extra in ([], [("X-Auth-Key", "Zq8p2Lr7Wm4Xk9Tf3Hs")],
                      [("X-Auth-Key", secret + "x")], [("X-Auth-Key", secret.lower())],
                      [("X-Auth-Key", secret), ("X-Auth-Key", secret)],
                      [("X-Auth-Secret", secret)]):
            request = render(resource, peer, extra=extra)
            assert request.responseCode == 403, (peer, extra)
            assert b"".join(request.written) == b"forbidden: X-Auth-Key missing or wrong\n"
            assert _auth_headers(request) == {}
        request = render(resource, peer, extra=[("X-Auth-Key", secret)])
        assert request.responseCode in (None, 200)
        assert request.responseHeaders.getRawHeaders(b"auth-status") == [b"OK"]
        # Our own nginx, proven by the secret, may come through a proxy it runs.
        request = render(resource, peer, extra=[("X-Auth-Key", secret),
                                                ("X-Forwarded-For", "10.0.0.100")])
        assert request.responseHeaders.getRawHeaders(b"auth-status") == [b"OK"]
    # The secret does not widen who may ask.
    request = render(resource, "192.0.2.101", extra=[("X-Auth-Key", secret)])
    assert request.responseCode == 403
    assert b"".join(request.written) == b"forbidden: not a trusted proxy\n"
    assert not throttle._failures


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cluster.auth_secret_file: cannot read {path}: No such file or directory"),
    ("short\n", "cluster.auth_secret_file: the first line of {path} must be 16 to 256 "
                "printable ASCII characters without spaces"),
    ("with spaces in the secret\n", "cluster.auth_secret_file: the first line of {path} "
     "must be 16 to 256 printable ASCII characters without spaces"),
    ("", "cluster.auth_secret_file: the first line of {path} must be 16 to 256 printable "
         "ASCII characters without spaces"),
])
def test_a_missing_or_malformed_secret_file_is_one_line_naming_the_key(
        tmp_path: Path, content: str | None, problem: str) -> None:
    from mailserver.config import ConfigError

    path = tmp_path / "auth.secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data_dir": str(tmp_path), "cluster": {"auth_secret_file": str(path)}})
    assert [p for p in info.value.problems if "auth_secret" in p] == [
        problem.format(path=path)]


def test_other_paths_and_methods(tmp_path: Path) -> None:
    resource, _, _ = make(tmp_path)
    assert render(resource, "127.0.0.1", path=b"/nginx-authz").responseCode == 404
    assert render(resource, "127.0.0.1", path=b"/nginx-auth/x").responseCode == 404
    request = render(resource, "127.0.0.1", method=b"POST")
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [b"GET"]


def test_a_broken_password_check_is_a_temporary_failure(tmp_path: Path) -> None:
    """The users file unreadable, say: nginx is told to wait, not that the password
    was wrong, and nothing is counted against the client."""
    resource, throttle, _ = make(tmp_path)

    class Broken:
        credentialInterfaces = InMemoryUsernamePasswordDatabaseDontUse.credentialInterfaces

        def requestAvatarId(self, credentials: Any) -> Any:  # noqa: N802 - cred's name
            raise OSError("users file unreadable")

    resource.context.portal = Portal(MailRealm(), [Broken()])  # type: ignore[list-item]
    request = render(resource, "127.0.0.1")
    assert request.responseCode in (None, 200)
    assert {k: v for k, v in request.responseHeaders.getAllRawHeaders()
            if k.lower().startswith(b"auth-")} == {
        b"Auth-Status": [b"[UNAVAILABLE] Temporary server problem, try again later"],
        b"Auth-Wait": [b"3"]}
    assert not throttle._failures
    assert ask(resource, nginx(**{"Auth-Protocol": "smtp"})) == {
        "Auth-Status": "Temporary server problem, try again later",
        "Auth-Error-Code": "451 4.3.0", "Auth-Wait": "3", "http": "200"}
