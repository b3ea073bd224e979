"""nginx's mail `auth_http` endpoint: GET /nginx-auth on the http listener.

nginx's mail proxy (ngx_mail_auth_http_module) asks, for every login it proxies, an
HTTP server where to send the session. The request carries only headers:

    Auth-Method: plain | login | none | apop | cram-md5 | external
    Auth-User, Auth-Pass  (URL-escaped by nginx: "%" and control bytes as %XX)
    Auth-Protocol: imap | pop3 | smtp      Auth-Login-Attempt: 1, 2, ...
    Client-IP, Client-Host                  Auth-SMTP-Helo, -From, -To (SMTP)

and the answer too (nginx ignores the body): `Auth-Status: OK` with `Auth-Server` (an
IP address) and `Auth-Port`, or `Auth-Status: <text for the client>` with `Auth-Wait:
<seconds>` before the client may try again (no Auth-Wait: nginx closes the session) and,
for SMTP, `Auth-Error-Code: <reply code and enhanced status code>`. nginx prints the
text after the IMAP tag's "NO ", after POP3's "-ERR " and after the SMTP code, so each
failure carries the response code that protocol's own server would give (RFC 5530
[AUTHENTICATIONFAILED], RFC 3206 [AUTH], RFC 4954 535 5.7.8).

What we check: the caller is a trusted proxy (cluster.trusted_proxies, 127.0.0.1, ::1;
anyone else 403: the endpoint answers password guesses) and, with
cluster.auth_secret_file set, sends its secret in X-Auth-Key (nginx's
`auth_http_header X-Auth-Key ...`, the header nginx's own documentation shows; compared
in constant time; wrong or missing: 403, no password checked); the real client
(Client-IP) is not locked out by the shared login throttle; the password, through the
portal, whose checker hashes in its own thread pool; every failure counts against
Client-IP. Then the user's node: rendezvous hashing of the canonical address over the
nodes that are up (nodes.py, health.py), and the port of the protocol's listener.

Why the secret: the address check alone trusts anything on this host. An HTTP reverse
proxy on it that forwards public requests (a web server's catch-all proxy_pass to our
http listener) would hand the world a password oracle, and the login throttle would
not stop it: it counts failures against Client-IP, a header the caller writes, so every
guess could name a fresh address (the per-account delay of the password checker still
applies, per account). With no secret configured, a request carrying a header that
only an HTTP proxy adds (Forwarded, X-Forwarded-For, X-Real-IP; nginx's mail module
sends none of them) is refused the same way, which closes the usual form of that
mistake by default.

Nothing a client typed ever reaches the answer: every Auth-Status is one of the fixed
texts below, Auth-Server comes from cluster.nodes and Auth-Port is a number, so a user
name holding CR LF or "Auth-Server: ..." can only fail to log in.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from mailserver.address import client_address
from mailserver.auth.realm import IMailUser
from mailserver.cluster.health import HealthView, state_path
from mailserver.cluster.nodes import MX_LISTENER, PROTOCOL_LISTENERS, owner, service_port
from mailserver.config_sections import read_auth_secret
from mailserver.core.context import ServerContext
from mailserver.logs import logger

log = logger(__name__)

PATH = b"/nginx-auth"
#: Seconds nginx makes a client wait after a wrong password before it may try again.
AUTH_WAIT = 3
#: From this attempt on, a failure carries no Auth-Wait, so nginx ends the session:
#: nginx keeps every attempt's memory until the session ends and asks its auth server
#: to stop a session after 10-20 attempts (ngx_mail_auth_http_module, "Protocol").
LAST_ATTEMPT = 10
#: Longest user name and password (decoded) sent to the portal; longer ones fail.
MAX_USER, MAX_PASS = 512, 1024
METHODS = ("plain", "login", "none", "apop", "cram-md5", "external")
#: Where the throttle's log lines say the failure happened (fail2ban reads them).
SERVICES = {"imap": "imap", "pop3": "pop3", "smtp": "submission"}
#: Callers trusted without being listed in cluster.trusted_proxies.
SELF = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
#: The header carrying cluster.auth_secret_file's secret (nginx: auth_http_header).
SECRET_HEADER = b"X-Auth-Key"
#: Headers an HTTP proxy adds and nginx's mail module never sends (RFC 7239 Forwarded
#: and the two older forms): a request carrying one came through an HTTP proxy.
FORWARDED = (b"Forwarded", b"X-Forwarded-For", b"X-Real-IP")


@dataclass(frozen=True)
class Answer:
    """What goes back to nginx: its headers (and the HTTP status, 200 but for a
    malformed request)."""

    status: str
    server: str | None = None
    port: int | None = None
    wait: int | None = None
    error_code: str | None = None
    http_code: int = http.OK


class BadRequest(ValueError):
    """A request nginx would never send: a header missing, doubled or malformed. Its
    text names the header (one of ours), never its value."""


@dataclass(frozen=True)
class AuthRequest:
    method: str
    protocol: str
    user: bytes
    password: bytes
    attempt: int
    client_ip: str


# The fixed texts, with the response code of the protocol where it has one: IMAP's
# RFC 5530 3 (AUTHENTICATIONFAILED, UNAVAILABLE), POP3's RFC 3206 4 (AUTH, SYS/TEMP);
# SMTP's reply codes come in Auth-Error-Code (RFC 4954 6, RFC 3463).
def _failure_text(protocol: str) -> str:
    prefix = {"imap": "[AUTHENTICATIONFAILED] ", "pop3": "[AUTH] "}.get(protocol, "")
    return prefix + "Invalid login or password"


def _temporary_text(protocol: str, text: str) -> str:
    prefix = {"imap": "[UNAVAILABLE] ", "pop3": "[SYS/TEMP] "}.get(protocol, "")
    return prefix + text


def _code(protocol: str, code: str) -> str | None:
    """Auth-Error-Code is SMTP's alone (nginx puts it before the text)."""
    return code if protocol == "smtp" else None


def invalid_login(req: AuthRequest) -> Answer:
    """RFC 4954 6: 535 5.7.8, authentication credentials invalid."""
    return Answer(_failure_text(req.protocol), error_code=_code(req.protocol, "535 5.7.8"),
                  wait=AUTH_WAIT if req.attempt < LAST_ATTEMPT else None)


def locked_out(req: AuthRequest) -> Answer:
    """RFC 4954 454 4.7.0: temporary authentication failure; no Auth-Wait, so nginx
    closes the session, as our own listeners do for a locked-out address."""
    return Answer(_temporary_text(req.protocol, "Too many failed logins from your "
                                  "address; try again later"),
                  error_code=_code(req.protocol, "454 4.7.0"))


def temporary(protocol: str, text: str = "Temporary server problem, try again later",
              ) -> Answer:
    """nginx's own example of a temporary failure: 451 4.3.0 with Auth-Wait."""
    return Answer(_temporary_text(protocol, text), error_code=_code(protocol, "451 4.3.0"),
                  wait=AUTH_WAIT)


def unsupported(req: AuthRequest) -> Answer:
    """APOP and CRAM-MD5 need the stored password in the clear (nginx wants it back
    in Auth-Pass) and EXTERNAL a client certificate we never see: RFC 4954 504 5.5.4;
    Auth-Wait lets the client try PLAIN or LOGIN instead."""
    return Answer(_temporary_text("", "APOP, CRAM-MD5 and EXTERNAL are not supported; "
                                  "use PLAIN or LOGIN"),
                  error_code=_code(req.protocol, "504 5.5.4"),
                  wait=AUTH_WAIT if req.attempt < LAST_ATTEMPT else None)


def bad_request() -> Answer:
    return Answer("Invalid auth request", http_code=http.BAD_REQUEST)


def _header(headers: Any, name: str, required: bool = True) -> bytes | None:
    values = headers.getRawHeaders(name.encode("ascii"))
    if not values:
        if required:
            raise BadRequest(f"{name}: missing")
        return None
    if len(values) > 1:
        raise BadRequest(f"{name}: given more than once")
    value: bytes = values[0]
    return value.strip()


def parse_request(headers: Any) -> AuthRequest:
    """The request's headers, checked (BadRequest for one nginx would not send)."""
    method = (_header(headers, "Auth-Method") or b"").decode("latin-1").lower()
    if method not in METHODS:
        raise BadRequest("Auth-Method: not plain, login, none, apop, cram-md5 or external")
    protocol = (_header(headers, "Auth-Protocol") or b"").decode("latin-1").lower()
    if protocol not in PROTOCOL_LISTENERS:
        raise BadRequest("Auth-Protocol: not imap, pop3 or smtp")
    if method == "none" and protocol != "smtp":
        raise BadRequest("Auth-Method: none is for SMTP only")
    ip = client_address((_header(headers, "Client-IP") or b"").decode("latin-1"))
    if ip is None:
        raise BadRequest("Client-IP: not an IP address")
    attempt_text = _header(headers, "Auth-Login-Attempt", required=False) or b"1"
    if not attempt_text.isdigit() or len(attempt_text) > 6:
        raise BadRequest("Auth-Login-Attempt: not a number")
    user = password = b""
    if method != "none":
        # nginx escapes "%", space and control bytes as %XX (ngx_escape_uri's
        # NGX_ESCAPE_MAIL_AUTH); "+" stays itself.
        user = unquote_to_bytes(_header(headers, "Auth-User") or b"")
        password = unquote_to_bytes(_header(headers, "Auth-Pass", required=False) or b"")
    return AuthRequest(method, protocol, user, password, int(attempt_text), str(ip))


def _loggable(user: bytes) -> str:
    """A user name as the logs may show it: printable ASCII, at most 100 characters."""
    text = user[:100].decode("utf-8", "replace")
    return "".join(c if c.isprintable() and c != " " else "?" for c in text) or "-"


class NginxAuthResource(resource.Resource):
    """GET /nginx-auth (module docstring)."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self, context: ServerContext, view: HealthView | None = None) -> None:
        super().__init__()
        self.context = context
        config = context.config
        self.view = view or HealthView(state_path(config), context.disk.reads)
        self.trusted = [ipaddress.ip_network(n, strict=False)
                        for n in config.cluster.trusted_proxies]
        #: cluster.auth_secret_file's secret (read once; the config check made sure it
        #: reads), None: callers are trusted by address alone.
        secret_file = config.cluster.auth_secret_file
        self.secret = read_auth_secret(secret_file) if secret_file is not None else None
        #: Listener name -> port this process listens on; None: the site's (the
        #: http listener knows the bound ports; tests set it).
        self.listening: Callable[[], Mapping[str, int]] | None = None

    def _trusted(self, request: server.Request) -> bool:
        """From cluster.trusted_proxies, or from this host itself (127.0.0.1, ::1: an
        nginx beside the node); the rest of 127/8 is not implied, so an operator who
        runs untrusted services on other loopback addresses can keep them out."""
        ip = client_address(str(getattr(request.getClientAddress(), "host", "")))
        return ip is not None and (ip in SELF or any(ip in n for n in self.trusted))

    def _unproven(self, request: server.Request) -> bytes | None:
        """Why a caller at a trusted address is still not taken to be our nginx (the
        403's text), or None (module docstring: the secret, or no HTTP proxy's mark)."""
        headers = request.requestHeaders
        peer = str(getattr(request.getClientAddress(), "host", ""))
        if self.secret is not None:
            given = headers.getRawHeaders(SECRET_HEADER) or []
            if len(given) == 1 and hmac.compare_digest(given[0].strip(), self.secret):
                return None
            log.warn("nginx-auth: refused {peer}: {header} missing or wrong "
                     "(cluster.auth_secret_file)", peer=peer, header=SECRET_HEADER.decode())
            return b"forbidden: " + SECRET_HEADER + b" missing or wrong\n"
        forwarded = next((h for h in FORWARDED if headers.hasHeader(h)), None)
        if forwarded is None:
            return None
        log.warn("nginx-auth: refused {peer}: the request carries {header}, so an HTTP "
                 "proxy forwarded it; nginx's mail module sends none (set "
                 "cluster.auth_secret_file to allow a proxy you run)", peer=peer,
                 header=forwarded.decode())
        return b"forbidden: forwarded by an HTTP proxy\n"

    def render(self, request: server.Request) -> bytes | int:  # type: ignore[override]
        if request.path != PATH:
            return _plain(request, http.NOT_FOUND, b"not found\n")
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return _plain(request, http.NOT_ALLOWED, b"use GET\n")
        if not self._trusted(request):
            return _plain(request, http.FORBIDDEN, b"forbidden: not a trusted proxy\n")
        refusal = self._unproven(request)
        if refusal is not None:
            return _plain(request, http.FORBIDDEN, refusal)
        d = defer.ensureDeferred(self.answer(request.requestHeaders, request))
        d.addErrback(self._internal_error)
        d.addCallback(_write, request)
        return server.NOT_DONE_YET

    def _internal_error(self, failure: Failure) -> Answer:
        log.failure("nginx-auth: internal error", failure)
        return temporary("")

    async def answer(self, headers: Any, request: server.Request | None = None) -> Answer:
        """The answer to one auth request (its headers)."""
        try:
            req = parse_request(headers)
        except BadRequest as e:
            log.warn("nginx-auth: bad request: {why}", why=str(e))
            return bad_request()
        if req.method in ("apop", "cram-md5", "external"):
            return unsupported(req)
        if req.method == "none":
            # MX traffic: no login, any live node; by client, so one sender's
            # connections meet one node's counters.
            return await self._route(req, "client:" + req.client_ip, MX_LISTENER, request)
        throttle = self.context.login_throttle
        service = SERVICES[req.protocol]
        account = _loggable(req.user)
        if throttle.blocked(req.client_ip, service, account):
            return locked_out(req)
        if not req.user or len(req.user) > MAX_USER or len(req.password) > MAX_PASS:
            throttle.failed(req.client_ip, service, account)
            return invalid_login(req)
        try:
            result: Any = await self.context.portal.login(
                UsernamePassword(req.user, req.password), None, IMailUser)
        except UnauthorizedLogin:
            throttle.failed(req.client_ip, service, account)
            return invalid_login(req)
        except Exception:  # noqa: BLE001 - the users file, a hashing thread: our fault
            log.failure("nginx-auth: the password check failed for {account}",
                        account=account)
            return temporary(req.protocol)
        address: str = result[1].address
        return await self._route(req, address, PROTOCOL_LISTENERS[req.protocol], request)

    async def _route(self, req: AuthRequest, key: str, listener: str,
                     request: server.Request | None) -> Answer:
        cluster = self.context.config.cluster
        down = await self.view.down()
        node = owner(key, cluster.nodes, down)
        if node is None:
            log.warn("nginx-auth: every node is down; {protocol} login refused",
                     protocol=req.protocol)
            return temporary(req.protocol, "No mail server is available, try again later")
        port = service_port(listener, self.context.config.listen.enabled(),
                            self._listening(request))
        if port is None:
            log.error("nginx-auth: listen.{name} is not configured: cannot route {protocol}",
                      name=listener, protocol=req.protocol)
            return temporary(req.protocol)
        return Answer("OK", server=cluster.nodes[node], port=port)

    def _listening(self, request: server.Request | None) -> Mapping[str, int]:
        if self.listening is not None:
            return self.listening()
        root = getattr(getattr(request, "site", None), "resource", None)
        ports = getattr(root, "listening", None)
        return ports() if callable(ports) else {}


def headers_of(answer: Answer) -> list[tuple[bytes, bytes]]:
    """The answer's headers, in the order nginx's documentation shows them."""
    out = [(b"Auth-Status", answer.status.encode("ascii"))]
    if answer.server is not None and answer.port is not None:
        out += [(b"Auth-Server", answer.server.encode("ascii")),
                (b"Auth-Port", str(answer.port).encode("ascii"))]
    if answer.error_code is not None:
        out.append((b"Auth-Error-Code", answer.error_code.encode("ascii")))
    if answer.wait is not None:
        out.append((b"Auth-Wait", str(answer.wait).encode("ascii")))
    return out


def _write(answer: Answer, request: server.Request) -> None:
    if request.finished or getattr(request, "channel", True) is None:
        return  # nginx gave up meanwhile (auth_http_timeout)
    for name, value in headers_of(answer):
        request.setHeader(name, value)
    body = b"OK\n" if answer.status == "OK" else b"refused\n"
    _plain(request, answer.http_code, body)
    request.setHeader(b"content-length", str(len(body)).encode())
    request.write(body)
    request.finish()


def _plain(request: server.Request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return body


__all__ = ["NginxAuthResource", "parse_request"]
