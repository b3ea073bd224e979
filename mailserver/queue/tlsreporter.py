"""Sending the daily TLS reports (RFC 8460) through our own queue.

Every hour (and at start) the queue service looks for past days in the ResultLog
(data_dir/tls-rpt). With [tls_reporting] enabled, each recipient domain of such a day
whose `_smtp._tls` TXT record asks for reports by mail (rua=mailto:...) gets the
day's aggregate report (tlsrpt.build_reports, report_message), DKIM-signed when the
server signs its own DSNs (RFC 8460 5.3: SHOULD), queued like any mail. Then the
day is forgotten; without reporting, past days are only deleted (the records stay
for the current day, for an operator to read).

https: rua URIs (RFC 8460 3, HTTP POST) are not sent: a limit the README names.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dns.exception
import dns.resolver
from twisted.internet import task, threads
from twisted.internet.defer import Deferred

from mailserver.core.diskio import DiskExecutor
from mailserver.core.dns import txt_strings
from mailserver.interfaces import OutboundEnvelope
from mailserver.logs import logger
from mailserver.queue.outbound import OutboundQueue
from mailserver.queue.tlsrpt import (
    ReportRequestError,
    ResultLog,
    build_reports,
    parse_tlsrpt_txt,
    report_message,
)

log = logger(__name__)

#: Seconds between two looks for finished days.
INTERVAL = 3600.0
#: Report addresses used per domain at most (a hostile record listing thousands).
MAX_RUA = 5


def rua_txt(resolver: dns.resolver.Resolver, domain: str) -> list[str] | None:
    """The TXT strings of _smtp._tls.DOMAIN ([] for none; None when the lookup
    failed). Blocking."""
    return txt_strings(resolver, f"_smtp._tls.{domain}.")


class TlsReporter:
    def __init__(self, results: ResultLog, disk: DiskExecutor, queue: OutboundQueue,
                 resolver: Callable[[], dns.resolver.Resolver], enabled: bool,
                 organization: str, contact: str, sender: str, submitter: str,
                 sign: Callable[[], Callable[[bytes], Deferred[bytes]] | None]) -> None:
        self.results = results
        self.disk = disk
        self.queue = queue
        self.resolver = resolver
        self.enabled = enabled
        self.organization = organization
        self.contact = contact or sender
        self.sender = sender
        self.submitter = submitter
        #: The scheduler's sign_dsn, read when sending (app/service.py sets it later).
        self.sign = sign
        self.loop: task.LoopingCall | None = None

    def start(self) -> None:
        self.loop = task.LoopingCall(lambda: Deferred.fromCoroutine(self.run()))
        self.loop.start(INTERVAL, now=True).addErrback(
            lambda f: log.failure("TLS reports: failed", f))

    def stop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()

    async def run(self, today: str | None = None) -> None:
        """Report (or drop) every day before `today` (UTC)."""
        today = today or datetime.now(UTC).strftime("%Y-%m-%d")
        days: list[str] = await self.disk.run(self.results.days_before, today)
        for day in days:
            try:
                if self.enabled:
                    await self._report(day)
            except Exception as e:  # keep the day: the next run tries again
                log.warn("TLS reports for {day}: {error}; trying again later", day=day,
                         error=str(e) or type(e).__name__)
                continue
            await self.disk.run(self.results.forget, day)

    async def _report(self, day: str) -> None:
        results = await self.disk.run(self.results.day, day)
        report_id = f"{day}.{secrets.token_hex(6)}@{self.submitter}"
        reports = build_reports(day, results, self.organization, self.contact, report_id)
        for domain, report in reports.items():
            txt = await threads.deferToThread(rua_txt, self.resolver(), domain)
            if txt is None:
                raise RuntimeError(f"_smtp._tls.{domain}: TXT lookup failed")
            try:
                uris = parse_tlsrpt_txt(txt)
            except ReportRequestError as e:
                log.debug("TLS reports: {domain}: {why}", domain=domain, why=str(e))
                continue
            to = [u.removeprefix("mailto:").split("?", 1)[0] for u in uris
                  if u.startswith("mailto:")][:MAX_RUA]
            if not to:
                log.info("TLS reports: {domain} asks for https: reports only (not sent)",
                         domain=domain)
                continue
            await self._send(report, domain, to)

    async def _send(self, report: dict[str, Any], domain: str, to: list[str]) -> None:
        message = report_message(report, domain, self.submitter, self.sender, to)
        data = message.as_bytes().replace(b"\r\n", b"\n")
        sign = self.sign()
        if sign is not None:
            data = await sign(data) + data
        # The null reverse-path: a report that cannot be delivered must not bounce
        # back to a made-up sender address (and loop).
        queue_id = await self.queue.enqueue(
            OutboundEnvelope(sender="", recipients=tuple(to)), data)
        log.info("TLS reports: {domain}: report {id} for {n} sessions to {to} ({queue})",
                 domain=domain, id=report["report-id"], to=", ".join(to), queue=queue_id,
                 n=sum(p["summary"]["total-successful-session-count"]
                       + p["summary"]["total-failure-session-count"]
                       for p in report["policies"]))
