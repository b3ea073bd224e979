"""The twisted.web site behind listen.http and listen.https.

One leaf resource dispatches on the exact path (and, where the name matters, the Host),
so no path is ever mapped onto the file system or a resource tree: `..`, `%2e%2e`, a
doubled slash, all are simply paths we do not serve (404).

Hostile clients are bounded by the channel (`BoundedChannel`): the request line and each
header line at most 8 KiB, all headers at most 16 KiB and 100 of them (twisted.web
answers 400 beyond), a body at most 64 KiB (413; no endpoint needs more: an Autodiscover
request is a few hundred bytes), and a whole request within `http.request_timeout`
seconds of its first byte however slowly it trickles in (slowloris: twisted.web's own
timeout is an idle one, which a byte every few seconds resets forever).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import threads
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from mailserver.address import client_address
from mailserver.config import Config
from mailserver.core import metrics
from mailserver.core.diskio import DiskExecutor
from mailserver.http import clientconfig
from mailserver.http.challenges import ChallengeResponses, valid_token
from mailserver.http.mtasts import mta_sts_policy
from mailserver.logs import logger

log = logger(__name__)

MAX_BODY = 64 * 1024
CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
AUTOCONFIG_PATHS = (b"/mail/config-v1.1.xml", b"/.well-known/autoconfig/mail/config-v1.1.xml")
AUTODISCOVER_PATHS = (b"/autodiscover/autodiscover.xml", b"/Autodiscover/Autodiscover.xml")
MOBILECONFIG_PATH = b"/apple/mobileconfig"
MTA_STS_PATH = b"/.well-known/mta-sts.txt"
METRICS_PATH = b"/metrics"

#: RFC 5322 3.2.3 atext (and UTF-8, RFC 6531 3.3) in dot-atom form, then a domain.
#: Quoted local parts are refused: no client autoconfigures one, and it keeps <, >, "
#: and whitespace out of everything we build.
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+"
                      r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+)*"
                      r"@[A-Za-z0-9.-]+")


def parse_address(text: str) -> tuple[str, str] | None:
    """(address, lower-cased domain) if `text` is a plain address, else None."""
    if len(text) > 254 or _ADDRESS.fullmatch(text) is None:
        return None
    domain = text.rpartition("@")[2].rstrip(".").lower()
    return text, domain


class MailSiteResource(resource.Resource):
    """Every endpoint of the http and https listeners."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self, config: Config, disk: DiskExecutor, challenges: ChallengeResponses,
                 metrics_token: str | None, secure: bool,
                 mounts: Mapping[bytes, Any] | None = None) -> None:
        super().__init__()
        #: Path prefix -> resource (ServerContext.web_resources): the API, /nginx-auth.
        self.mounts = dict(mounts or {})
        self.config = config
        self.disk = disk
        self.challenges = challenges
        self.metrics_token = metrics_token
        self.metrics_networks = [ipaddress.ip_network(n, strict=False)
                                 for n in config.http.metrics_networks]
        self.secure = secure
        #: name -> port of every listener of this server; app/service.py fills it in
        #: once the ports are bound (port 0 in tests: the real port).
        self.listening: Callable[[], dict[str, int]] = dict

    # -- dispatch -----------------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:  # type: ignore[override]
        path = request.path
        method = request.method
        request.setHeader(b"x-content-type-options", b"nosniff")
        for prefix, mounted in self.mounts.items():
            if path.startswith(prefix):
                return mounted.render(request)  # type: ignore[no-any-return]
        if path.startswith(CHALLENGE_PREFIX) and method in (b"GET", b"HEAD"):
            return self._challenge(request, path[len(CHALLENGE_PREFIX):])
        if path in AUTOCONFIG_PATHS and method in (b"GET", b"HEAD"):
            return self._autoconfig(request)
        if path in AUTODISCOVER_PATHS:
            if method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _plain(request, http.NOT_ALLOWED, "use POST\n")
            return self._autodiscover(request)
        if path == MOBILECONFIG_PATH and method in (b"GET", b"HEAD"):
            return self._mobileconfig(request)
        if path == MTA_STS_PATH and method in (b"GET", b"HEAD"):
            return self._mta_sts(request)
        if path == METRICS_PATH and method in (b"GET", b"HEAD"):
            return self._metrics(request)
        return _plain(request, http.NOT_FOUND, "not found\n")

    def refusal(self, path: bytes, status: int) -> tuple[bytes, bytes] | None:
        """(content type, body) of a refusal the channel makes for `path` (408, 413,
        431) when a mounted resource words it itself (the API: its JSON error)."""
        for prefix, mounted in self.mounts.items():
            if path.startswith(prefix) and hasattr(mounted, "refusal"):
                body = mounted.refusal(status)
                return None if body is None else (b"application/json", body)
        return None

    def body_limit(self, path: bytes) -> int:
        """The largest body a request for `path` may carry (MAX_BODY, or more for a
        mounted resource that says so: the API's send takes a whole message)."""
        for prefix, mounted in self.mounts.items():
            if path.startswith(prefix):
                return max(MAX_BODY, getattr(mounted, "max_body", MAX_BODY))
        return MAX_BODY

    # -- ACME HTTP-01 (RFC 8555 8.3) ----------------------------------------------

    def _challenge(self, request: server.Request, raw: bytes) -> bytes | int:
        token = raw.decode("ascii", "replace")
        if not valid_token(token):
            return _plain(request, http.NOT_FOUND, "not found\n")
        known = self.challenges.lookup(token)
        if known is not None:
            return _plain(request, http.OK, known, "application/octet-stream")
        # Another process may have set it: its file is read in a disk thread.
        d = self.disk.run(self.challenges.get, token)
        d.addCallback(lambda found: _finish(
            request, http.OK if found else http.NOT_FOUND, (found or "not found\n").encode(),
            "application/octet-stream" if found else "text/plain; charset=utf-8"))
        d.addErrback(_fail, request)
        return server.NOT_DONE_YET

    # -- client configuration -----------------------------------------------------

    def _host(self, request: server.Request) -> str:
        return request.getRequestHostname().decode("ascii", "replace").rstrip(".").lower()

    def _autoconfig(self, request: server.Request) -> bytes:
        """Thunderbird asks autoconfig.DOMAIN/mail/config-v1.1.xml and then
        DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml, with ?emailaddress=."""
        given = _argument(request, b"emailaddress")
        if given is not None:
            parsed = parse_address(given)
            if parsed is None:
                return _plain(request, http.BAD_REQUEST, "emailaddress: not an address\n")
            domain = parsed[1]
        else:
            host = self._host(request)
            domain = host.removeprefix("autoconfig.") if request.path == AUTOCONFIG_PATHS[0] \
                else host
        if not self.config.is_local_domain(domain):
            return _plain(request, http.NOT_FOUND, "not a domain of this server\n")
        try:
            body = clientconfig.thunderbird(domain, self.config.hostname, self.listening())
        except LookupError as e:
            return _plain(request, http.NOT_FOUND, f"{e}\n")
        return _plain(request, http.OK, body, "application/xml; charset=utf-8")

    def _address_for(self, request: server.Request, given: str | None) -> tuple[str, str] | bytes:
        if given is None:
            return _plain(request, http.BAD_REQUEST, "no email address given\n")
        parsed = parse_address(given)
        if parsed is None:
            return _plain(request, http.BAD_REQUEST, "not an email address\n")
        if not self.config.is_local_domain(parsed[1]):
            return _plain(request, http.NOT_FOUND, "not a domain of this server\n")
        return parsed

    def _autodiscover(self, request: server.Request) -> bytes:
        assert request.content is not None
        body = request.content.read(MAX_BODY + 1)
        try:
            given = clientconfig.autodiscover_address(body)
        except clientconfig.BadRequest as e:
            return _plain(request, http.BAD_REQUEST, f"{e}\n")
        parsed = self._address_for(request, given)
        if isinstance(parsed, bytes):
            return parsed
        xml = clientconfig.autodiscover(parsed[0], self.config.hostname, self.listening())
        return _plain(request, http.OK, xml, "application/xml; charset=utf-8")

    def _mobileconfig(self, request: server.Request) -> bytes:
        parsed = self._address_for(request, _argument(request, b"emailaddress"))
        if isinstance(parsed, bytes):
            return parsed
        try:
            profile = clientconfig.mobileconfig(parsed[0], self.config.hostname,
                                                self.listening())
        except LookupError as e:
            return _plain(request, http.NOT_FOUND, f"{e}\n")
        request.setHeader(b"content-disposition",
                          b'attachment; filename="mail.mobileconfig"')
        return _plain(request, http.OK, profile, "application/x-apple-aspen-config")

    # -- MTA-STS (RFC 8461) -------------------------------------------------------

    def _mta_sts(self, request: server.Request) -> bytes:
        """RFC 8461 3.3: the policy is fetched with HTTPS only, from mta-sts.DOMAIN;
        on plain http, or for a domain not ours, there is none (404)."""
        host = self._host(request)
        domain = host.removeprefix("mta-sts.")
        if not self.secure or domain == host or not self.config.is_local_domain(domain):
            return _plain(request, http.NOT_FOUND, "not found\n")
        request.setHeader(b"cache-control", b"max-age=300")
        return _plain(request, http.OK, mta_sts_policy(self.config), "text/plain")

    # -- /metrics -----------------------------------------------------------------

    def _metrics_allowed(self, request: server.Request) -> bool:
        if self.metrics_token is not None:
            given = request.getHeader(b"authorization") or b""
            scheme, _, token = given.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(
                    token.strip(), self.metrics_token.encode()):
                return True
        host = getattr(request.getClientAddress(), "host", "")
        ip = client_address(host)
        return ip is not None and any(ip in net for net in self.metrics_networks)

    def _metrics(self, request: server.Request) -> bytes | int:
        if not self._metrics_allowed(request):
            return _plain(request, http.FORBIDDEN, "forbidden\n")
        # The other processes' values are files, merged in a thread: the reactor's
        # pool, not the disk threads, whose queue depth is one of the numbers.
        d = threads.deferToThread(lambda: generate_latest(metrics.exposition_registry()))
        d.addCallback(lambda text: _finish(request, http.OK, text, CONTENT_TYPE_LATEST))
        d.addErrback(_fail, request)
        return server.NOT_DONE_YET


def _argument(request: server.Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _plain(request: server.Request, code: int, body: bytes | str,
           content_type: str = "text/plain; charset=utf-8") -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type.encode("ascii"))
    return body.encode("utf-8") if isinstance(body, str) else body


def _finish(request: server.Request, code: int, body: bytes, content_type: str) -> None:
    if request.finished or request.channel is None:
        return  # the client went away meanwhile (Request.connectionLost clears channel)
    data = _plain(request, code, body, content_type)
    request.setHeader(b"content-length", str(len(data)).encode())
    if request.method != b"HEAD":
        request.write(data)
    request.finish()


def _fail(failure: Failure, request: server.Request) -> None:
    log.failure("http: {path}", failure, path=request.path.decode("ascii", "replace"))
    _finish(request, http.INTERNAL_SERVER_ERROR, b"internal error\n",
            "text/plain; charset=utf-8")


class BoundedChannel(http.HTTPChannel):
    """HTTPChannel with a deadline per request and a cap on the body (module doc)."""

    MAX_LENGTH = 8192
    maxHeaders = 100  # noqa: N815 - Twisted's name
    totalHeadersSize = 16384  # noqa: N815 - Twisted's name

    def __init__(self) -> None:
        super().__init__()
        self._deadline: IDelayedCall | None = None
        self._body_bytes = 0
        self._limit = MAX_BODY
        #: The path of the request whose body is arriving (for a refusal's wording).
        self._body_path = b""

    def _arm(self) -> None:
        from twisted.internet import reactor

        self._disarm()
        timeout = getattr(self.factory, "request_timeout", 30)
        self._deadline = reactor.callLater(timeout, self._too_slow)  # type: ignore[attr-defined]
        self._body_bytes = 0

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        if self.transport is None:
            return
        head, body = b"", b""
        root = getattr(self.factory, "root", None)
        worded = root.refusal(self._refused_path(), int(status[:3])) if root else None
        if worded is not None:
            head = b"Content-Type: " + worded[0] + b"\r\n"
            body = worded[1]
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\n" + head +
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" +
                             body)
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.transport.loseConnection()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        """A request line or header line past MAX_LENGTH (LineReceiver would just
        close): RFC 6585 4."""
        self._refuse(b"431 Request Header Fields Too Large")

    def _body_limit(self) -> int:
        root = getattr(self.factory, "root", None)
        path = getattr(self, "_path", b"") or b""
        return root.body_limit(path) if root is not None else MAX_BODY

    def _refused_path(self) -> bytes:
        """The path of the request being refused: the one being received (known from
        its request line on), else the one whose body is arriving."""
        path = getattr(self, "_path", None) or self._body_path
        return path.split(b"?", 1)[0]

    def allHeadersReceived(self) -> None:  # noqa: N802 - Twisted's name
        # The path is known until super() consumes it: the limit is fixed here.
        self._limit = self._body_limit()
        self._body_path = getattr(self, "_path", b"") or b""
        if self.length is not None and self.length > self._limit:
            self._refuse(b"413 Content Too Large")
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if not self._handlingRequest:
            self._body_bytes += len(data)
            if self._body_bytes > self._limit + 4096:  # chunked framing on top of the body
                self._refuse(b"413 Content Too Large")
                return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:  # noqa: N802 - Twisted's name
        self._disarm()  # the request is in; producing the answer has no deadline
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:  # noqa: N802 - Twisted's name
        super().requestDone(request)
        if self.persistent and self.transport is not None:
            self._arm()  # the next request has its own deadline

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        super().connectionLost(reason)


class MailSite(server.Site):
    """A Site that builds BoundedChannels and does not log every request (the access
    log would name each address asking for autoconfig)."""

    protocol = BoundedChannel  # type: ignore[assignment]

    def __init__(self, root: MailSiteResource, request_timeout: int) -> None:
        # No endpoint takes an HTML form: Twisted would otherwise parse every POST
        # body's Content-Type with the email package and a form or multipart body into
        # request.args (the API's query), on the reactor, before the resource is asked.
        super().__init__(root, timeout=request_timeout, parsePOSTFormSubmission=False)
        self.request_timeout = request_timeout
        self.root = root

    def log(self, request: Any) -> None:
        pass
