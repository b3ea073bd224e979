"""Config sections of the HTTP API, its webhooks and the cluster ([api], [webhooks],
[cluster]), kept out of config.py, which had grown past 800 lines.

config.py embeds these dataclasses in Config and calls `check_sections` from its
semantic checks; every problem names its key path, as there.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mailserver.configdoc import doc

if TYPE_CHECKING:
    from mailserver.config import Config


#: Listeners the cluster's health check may connect to (cluster.health_service).
HEALTH_SERVICES = ("imap", "submission", "pop3", "smtp", "http")


@dataclass(frozen=True)
class APIConfig:
    """The JSON API under /api/v1/ on the https listener (and http from loopback only)."""

    enabled: bool = doc("Serve /api/v1/ on the http/https listeners.", default=True)
    requests_per_minute: int = doc("Requests one token (or one user by password) may make "
                                   "a minute; more are answered 429.", default=600)
    concurrent_requests: int = doc("Authenticated requests one process works on at "
                                   "once; more are answered 503 (requests still being "
                                   "authenticated are not counted).", default=64)
    tokens_file: Path | None = doc(
        "API tokens (`mailserver token add`), stored hashed; default data_dir/api-tokens. "
        "Point every node of a cluster at one shared file.", default=None)


#: Webhook event types (events.KINDS, repeated here: config is a base module too).
WEBHOOK_EVENTS = ("delivered", "deferred", "failed", "delay_warning", "received")

_DOMAIN_EXAMPLE = """[[webhooks.domain]]
domain = "example.org"
url = "https://app.example.org/mail-events"
events = ["delivered", "failed", "received"]
secret_file = "/etc/mailserver/webhook-example.org.secret"
raw_limit = 65536"""


@dataclass(frozen=True)
class WebhookDomain:
    """One operator-defined hook: every user of `domain` (what they send, what they get)."""

    domain: str = doc("The local domain whose users' events this hook gets.", default="")
    url: str = doc("Where the events are POSTed (https://, or http:// to an allowed "
                   "network).", default="")
    events: tuple[str, ...] = doc("Event types wanted (empty: all).", default=())
    secret_file: str = doc("File whose first line is the signing secret (whsec_...).",
                           default="")
    raw_limit: int = doc("received: the raw message is included up to this many bytes; "
                         "larger ones get a fetch link.", default=0)


@dataclass(frozen=True)
class WebhooksConfig:
    """Webhooks: events POSTed as signed JSON to applications' URLs."""

    allowed_networks: tuple[str, ...] = doc(
        "Private, loopback or link-local networks a webhook URL may point at (SSRF: "
        'by default only public addresses), e.g. ["10.1.0.0/16"].', default=())
    timeout: int = doc("Seconds a receiver has to answer a POST; later is a failure, "
                       "retried.", default=10)
    retry_initial: int = doc("Seconds before the first retry; doubled after each failure "
                             "up to retry_max.", default=10)
    retry_max: int = doc("Longest wait between two tries, in seconds.", default=3600)
    retry_for: int = doc("Seconds an event is retried before it is given up (kept in "
                         "data_dir/webhooks/failed/ for `mailserver webhook retry`).",
                         default=86400)
    concurrency: int = doc("POSTs in flight at once (all hooks together).", default=16)
    max_per_user: int = doc("Hooks one user may register through the API.", default=10)
    domain: tuple[WebhookDomain, ...] = doc(
        "Operator-defined hooks, one [[webhooks.domain]] table each.", default=(),
        example=_DOMAIN_EXAMPLE)


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes over one shared Maildir tree behind nginx's mail proxy."""

    node: str = doc("This node's name (a key of nodes); empty: one node, no cluster.",
                    default="")
    nodes: dict[str, str] = doc("Node name -> address; every node listens on the same "
                                "ports.", default_factory=dict)
    trusted_proxies: tuple[str, ...] = doc(
        "Networks XCLIENT and the PROXY protocol are accepted from; from any other "
        "address they are refused.", default=())
    health_interval: int = doc("Seconds between instance 0's health checks of every node "
                               "(a TCP connect to its health_service port).", default=5)
    health_failures: int = doc("Failed checks in a row after which a node is down (one "
                               "success brings it back).", default=3)
    health_service: str = doc("The listener whose port the health check connects to "
                              "(imap, submission, pop3, smtp or http); empty: the first "
                              "of these this node listens on.", default="")
    proxy_protocol: tuple[str, ...] = doc(
        "Listeners where a trusted proxy opens each connection with a PROXY protocol "
        'header (v1 or v2; nginx: proxy_protocol on), e.g. ["imap", "pop3"]; from a '
        "trusted proxy there it is required. nginx sends XCLIENT, not PROXY, to SMTP.",
        default=())
    mail_dir: Path | None = doc(
        "The Maildir tree every node shares (an NFS mount); default data_dir/mail. "
        "data_dir itself (queue, run/, caches, logs) must be each node's own disk.",
        default=None)
    cache_dir: Path | None = doc(
        "With node set: where this node keeps its SQLite caches (folder index, modseqs), "
        "mirroring the Maildir tree; node-local disk only; default data_dir/cache.",
        default=None)
    lock_timeout: int = doc(
        "With node set: seconds a dotlock may go unrefreshed (its holder's node died) "
        "before another node takes it over.", default=30)
    auth_secret_file: Path | None = doc(
        "File whose first line is a secret (at least 16 printable ASCII characters, no "
        "spaces) every /nginx-auth request must carry in its X-Auth-Key header (nginx: "
        "auth_http_header X-Auth-Key ...); unset: callers are trusted by address "
        "alone (trusted_proxies, 127.0.0.1, ::1).", default=None,
        example='auth_secret_file = "/etc/mailserver/nginx-auth.secret"')


def check_sections(config: Config, problems: list[str]) -> None:
    """Semantic checks of [api], [webhooks] and [cluster]."""
    if config.api.requests_per_minute == 0:
        problems.append("api.requests_per_minute: must be at least 1")
    if config.api.concurrent_requests == 0:
        problems.append("api.concurrent_requests: must be at least 1")
    _check_networks("webhooks.allowed_networks", config.webhooks.allowed_networks, problems)
    _check_webhooks(config, problems)
    cluster = config.cluster
    _check_networks("cluster.trusted_proxies", cluster.trusted_proxies, problems)
    for name, address in cluster.nodes.items():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            problems.append(f"cluster.nodes.{name}: not an IP address: {address!r}")
    if cluster.node and cluster.node not in cluster.nodes:
        problems.append(f"cluster.node: {cluster.node!r} is not one of cluster.nodes")
    if cluster.nodes and not cluster.node:
        problems.append("cluster.node: needed with cluster.nodes (this node's name)")
    _check_health(config, problems)
    _check_proxy_protocol(cluster, problems)
    _check_cluster_store(config, problems)
    _check_auth_secret(cluster, problems)


def _check_health(config: Config, problems: list[str]) -> None:
    """cluster.health_*: the health checks of the nginx auth endpoint (cluster/health.py)."""
    cluster = config.cluster
    if cluster.health_interval < 1:
        problems.append("cluster.health_interval: must be at least 1 (seconds)")
    if cluster.health_failures < 1:
        problems.append("cluster.health_failures: must be at least 1")
    if not cluster.health_service:
        return
    if cluster.health_service not in HEALTH_SERVICES:
        problems.append(f"cluster.health_service: {cluster.health_service!r} is not one of "
                        f"{', '.join(HEALTH_SERVICES)}")
    elif cluster.nodes and getattr(config.listen, cluster.health_service) is None:
        problems.append(f"cluster.health_service: listen.{cluster.health_service} is not "
                        "configured: the health check would have no port")


def _check_proxy_protocol(cluster: ClusterConfig, problems: list[str]) -> None:
    from mailserver.config import SERVICES

    for i, name in enumerate(cluster.proxy_protocol):
        if name not in SERVICES:
            problems.append(f"cluster.proxy_protocol[{i}]: no listener named {name!r} "
                            f"(one of {', '.join(SERVICES)})")
    if cluster.proxy_protocol and not cluster.trusted_proxies:
        problems.append("cluster.proxy_protocol: needs cluster.trusted_proxies (who may "
                        "send the header)")


def _check_webhooks(config: Config, problems: list[str]) -> None:
    """[webhooks]: positive timings, and each [[webhooks.domain]] complete and ours."""
    hooks = config.webhooks
    for key in ("timeout", "retry_initial", "retry_max", "retry_for", "concurrency"):
        if getattr(hooks, key) == 0:
            problems.append(f"webhooks.{key}: must be at least 1")
    for i, hook in enumerate(hooks.domain):
        where = f"webhooks.domain[{i}]"
        if not config.is_local_domain(hook.domain):
            problems.append(f"{where}.domain: not one of domains.local: {hook.domain!r}")
        scheme = hook.url.partition("://")[0].lower()
        if scheme not in ("http", "https") or not hook.url.partition("://")[2]:
            problems.append(f"{where}.url: expected an http(s):// URL, got {hook.url!r}")
        for kind in hook.events:
            if kind not in WEBHOOK_EVENTS:
                problems.append(f"{where}.events: unknown event {kind!r} (one of "
                                f"{', '.join(WEBHOOK_EVENTS)})")
        if not hook.secret_file:
            problems.append(f"{where}.secret_file: needed (the signing secret's file)")
        elif not os.access(hook.secret_file, os.R_OK):
            problems.append(f"{where}.secret_file: cannot read {hook.secret_file}")


def _check_cluster_store(config: Config, problems: list[str]) -> None:
    """The shared tree and the node-local cache must be apart (decision 0039)."""
    cluster = config.cluster
    if cluster.node and cluster.lock_timeout < 3:
        problems.append("cluster.lock_timeout: at least 3 seconds (it is refreshed every "
                        "third of it)")
    if any(c.isspace() or not c.isprintable() for c in cluster.node):
        problems.append(f"cluster.node: no spaces or control characters (it goes into "
                        f"Maildir file names and lock files): {cluster.node!r}")
    cache = cluster.cache_dir or config.data_dir / "cache"
    mail = config.mail_dir
    if cluster.node and (cache == mail or mail in cache.parents or cache in mail.parents):
        problems.append(f"cluster.cache_dir: {cache} must not be inside the shared "
                        f"mail tree {mail} or contain it")


#: What cluster.auth_secret_file's first line must be: a header value nginx sends as
#: it is (no quoting needed), long enough not to be guessed through the endpoint.
AUTH_SECRET = re.compile(r"[!-~]{16,256}")


def read_auth_secret(path: Path) -> bytes:
    """cluster.auth_secret_file's secret; ValueError (naming the key) if malformed,
    OSError if unreadable."""
    lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    secret = lines[0].strip() if lines else ""
    if not AUTH_SECRET.fullmatch(secret):
        raise ValueError(f"cluster.auth_secret_file: the first line of {path} must be 16 "
                         "to 256 printable ASCII characters without spaces")
    return secret.encode("ascii")


def _check_auth_secret(cluster: ClusterConfig, problems: list[str]) -> None:
    """cluster.auth_secret_file: readable, and a secret of the right form."""
    if cluster.auth_secret_file is None:
        return
    try:
        read_auth_secret(cluster.auth_secret_file)
    except OSError as e:
        problems.append(f"cluster.auth_secret_file: cannot read {cluster.auth_secret_file}: "
                        f"{e.strerror or e}")
    except ValueError as e:
        problems.append(str(e))


def _check_networks(key: str, networks: tuple[str, ...], problems: list[str]) -> None:
    for i, net in enumerate(networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"{key}[{i}]: not a network: {net!r}")


__all__ = ["APIConfig", "ClusterConfig", "WebhookDomain", "WebhooksConfig", "check_sections"]
