"""The server's Prometheus metrics, and the one-line hooks the sessions call.

Every process of a server (`processes > 1`) counts for itself; /metrics may be served by
any of them, so the numbers must be the sum over all. We use prometheus-client's
multiprocess mode (docs/decisions/0013-metrics.md): `configure(directory)` is called by
app/service.py before any session runs, and from then on every metric value lives in a
small mmap'ed file per process under data_dir/run/metrics/, which the /metrics resource
merges at scrape time. Without `configure` (unit tests) the metrics are plain in-memory
values in a private registry.

Label values are always from small fixed sets (service names, protocol names, SMTP
enhanced status codes, IMAP command names, TLS versions): a label from client input
would let a client grow our memory and the scrape without bound.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from OpenSSL import SSL
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.cred.error import UnauthorizedLogin
from twisted.python.failure import Failure

T = TypeVar("T")

#: Seconds: SMTP commit (end of data to the 250) and IMAP command latency buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
#: IMAP commands counted by name; any other name is counted as "other".
IMAP_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE", "SELECT",
    "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB",
    "NAMESPACE", "STATUS", "APPEND", "IDLE", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE",
    "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "ID", "GETQUOTAROOT", "GETQUOTA",
})
TLS_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})


class _Metrics:
    """Every metric object; built once per process, against `registry`."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r: dict[str, Any] = {"registry": registry}
        self.connections = Counter(
            "mailserver_connections", "Connections accepted, by service.", ["service"], **r)
        self.refused_connections = Counter(
            "mailserver_connections_refused",
            "Connections refused by the connection limits, by service.", ["service"], **r)
        self.sessions = Gauge(
            "mailserver_sessions", "Sessions open now, by service.", ["service"],
            multiprocess_mode="livesum", **r)
        self.accepted = Counter(
            "mailserver_messages_accepted", "Messages accepted (answered 250), by service.",
            ["service"], **r)
        self.refused = Counter(
            "mailserver_smtp_refusals",
            "SMTP 4xx and 5xx replies (a command, recipient or message refused), by "
            "service and enhanced status code (RFC 3463) as the reason.",
            ["service", "reason"], **r)
        self.deliveries = Counter(
            "mailserver_deliveries", "Queue delivery attempts per recipient, by result.",
            ["result"], **r)
        self.queue_size = Gauge(
            "mailserver_queue_messages", "Messages in the outbound queue.",
            multiprocess_mode="livemax", **r)
        self.queue_oldest = Gauge(
            "mailserver_queue_oldest_age_seconds",
            "Age of the oldest message in the outbound queue (0: empty).",
            multiprocess_mode="livemax", **r)
        self.logins = Counter(
            "mailserver_logins", "Password logins, by protocol and result (ok, failed, error).",
            ["protocol", "result"], **r)
        self.tls = Counter(
            "mailserver_tls_handshakes", "TLS handshakes completed, by protocol version.",
            ["version"], **r)
        self.smtp_commit = Histogram(
            "mailserver_smtp_commit_seconds",
            "From the end of the message data to the reply, by service.", ["service"],
            buckets=LATENCY_BUCKETS, **r)
        self.imap_command = Histogram(
            "mailserver_imap_command_seconds", "IMAP command latency, by command.",
            ["command"], buckets=LATENCY_BUCKETS, **r)
        self.disk_queue = Gauge(
            "mailserver_disk_jobs", "Disk-thread jobs queued or running.",
            multiprocess_mode="livesum", **r)
        self.certificate_expiry = Gauge(
            "mailserver_certificate_expiry_timestamp_seconds",
            "When the certificate our TLS listeners serve expires (Unix time).",
            multiprocess_mode="mostrecent", **r)


_metrics: _Metrics | None = None
#: Where the values of every process live; None: in memory, this process only.
_directory: Path | None = None
_registry: CollectorRegistry | None = None


def configure(directory: Path | None, *, fresh: bool = False) -> None:
    """Count in `directory` (shared with the other processes), or in memory (None).

    `fresh`: the twistd process at start-up empties the directory, so numbers begin at
    zero with every start, as a restarted exporter's do.
    """
    global _metrics, _directory, _registry
    _directory = directory
    if directory is None:
        values.ValueClass = values.MutexValue
        _registry = CollectorRegistry(auto_describe=True)
        _metrics = _Metrics(_registry)
        return
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if fresh:
        for stale in directory.glob("*.db"):
            stale.unlink()
    # prometheus-client reads the directory from the environment when a value is made.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()
    _registry = None
    _metrics = _Metrics(None)


def _m() -> _Metrics:
    if _metrics is None:
        configure(None)
    assert _metrics is not None
    return _metrics


def exposition_registry() -> CollectorRegistry:
    """What /metrics renders: every process's values (multiprocess), or this one's."""
    _m()
    if _directory is None:
        assert _registry is not None
        return _registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(_directory))
    return registry


def process_ended(pid: int) -> None:
    """A worker process is gone: drop its live gauges (its counters still count)."""
    if _directory is not None:
        mark_process_dead(pid, str(_directory))


# -- the hooks: one call each, from the sessions and services ------------------------

def connection_opened(service: str) -> None:
    m = _m()
    m.connections.labels(service).inc()
    m.sessions.labels(service).inc()


def connection_closed(service: str) -> None:
    _m().sessions.labels(service).dec()


def connection_refused(service: str) -> None:
    _m().refused_connections.labels(service).inc()


def message_accepted(service: str, commit_seconds: float) -> None:
    """A message answered 250; `commit_seconds` from the end of its data to the reply."""
    m = _m()
    m.accepted.labels(service).inc()
    m.smtp_commit.labels(service).observe(commit_seconds)


def smtp_refusal(service: str, enhanced: str) -> None:
    """Any 4xx or 5xx reply: a command, a recipient or a message refused."""
    _m().refused.labels(service, enhanced if _is_enhanced(enhanced) else "other").inc()


def delivery(result: str) -> None:
    """`result`: sent, deferred or bounced (the queue log's status= words)."""
    _m().deliveries.labels(result).inc()


def queue_state(size: int, oldest_age: float) -> None:
    m = _m()
    m.queue_size.set(size)
    m.queue_oldest.set(oldest_age)


def login(protocol: str, ok: bool) -> None:
    _m().logins.labels(protocol, "ok" if ok else "failed").inc()  # "error": the server's


def counted_login(protocol: str, d: Any) -> Any:
    """Count the outcome of a `portal.login` Deferred; returns it unchanged."""
    def ok(result: T) -> T:
        login(protocol, True)
        return result

    def failed(failure: Failure) -> Failure:
        if failure.check(UnauthorizedLogin):
            login(protocol, False)
        else:
            _m().logins.labels(protocol, "error").inc()
        return failure

    return d.addCallbacks(ok, failed)


def tls_handshake(version: str) -> None:
    _m().tls.labels(version if version in TLS_VERSIONS else "other").inc()


def imap_command(name: str, seconds: float) -> None:
    name = name.upper()
    _m().imap_command.labels(name if name in IMAP_COMMANDS else "other").observe(seconds)


def timed_imap_command(name: str, d: Any) -> Any:
    """Observe how long the command's Deferred `d` takes; returns it unchanged."""
    started = now()

    def done(result: T) -> T:
        imap_command(name, now() - started)
        return result

    return d.addBoth(done)


def disk_job(delta: int) -> None:
    _m().disk_queue.inc(delta)


def certificate_expiry(timestamp: float) -> None:
    _m().certificate_expiry.set(timestamp)


def watch_tls(creator: object) -> None:
    """Count the TLS handshakes of a CertificateOptions by version, and export the
    expiry of its certificate. Whoever swaps the TLS options (a renewed certificate,
    a reload) calls this on the new ones. Anything without an OpenSSL context is
    left alone."""
    get_context = getattr(creator, "getContext", None)
    if get_context is None:
        return
    context = get_context()
    seen: weakref.WeakSet[Any] = weakref.WeakSet()

    def info(connection: Any, where: int, _ret: int) -> None:
        # TLS 1.3 reports a "handshake done" again after post-handshake messages
        # (session tickets): count each connection once.
        if where & SSL.SSL_CB_HANDSHAKE_DONE and connection not in seen:
            seen.add(connection)
            tls_handshake(connection.get_protocol_version_name())

    context.set_info_callback(info)
    certificate = getattr(creator, "certificate", None)
    if certificate is not None:
        certificate_expiry(certificate.to_cryptography().not_valid_after_utc.timestamp())


now: Callable[[], float] = time.monotonic


def _is_enhanced(text: str) -> bool:
    """RFC 3463 class.subject.detail, each at most three digits."""
    parts = text.split(".")
    return (len(parts) == 3 and parts[0] in ("2", "4", "5")
            and all(p.isdigit() and len(p) <= 3 for p in parts[1:]))
