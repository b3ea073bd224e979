"""SMTP TLS Reporting (RFC 8460) as a sender: the outcome of every outbound TLS session
recorded, and the daily aggregate report for each recipient domain that asks for one.

- Asking (3): the `_smtp._tls.DOMAIN` TXT record, exactly one "v=TLSRPTv1;" record
  with `rua=` a comma-separated list of mailto: and https: URIs.
- Recording: one JSON line per session outcome in data_dir/tls-rpt/DAY.PID.jsonl (a
  file per process and day: no lock between processes; appended, never rewritten).
- The report (4.3, 4.4): JSON, per recipient domain and policy: the policy (type
  sts | tlsa | no-policy-found, its text, domain and MX patterns), the count of
  successful and failed sessions, and failure details grouped by result type, sending
  and receiving address and MX host.
- By mail (5.3): multipart/report; report-type="tlsrpt", the report gzipped as
  application/tlsrpt+gzip named "submitter!domain!begin!end!id.json.gz", subject
  "Report Domain: D Submitter: S Report-ID: <ID>", TLS-Report-Domain and
  TLS-Report-Submitter headers. Signed with DKIM where signing exists (5.3: SHOULD).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

#: RFC 8460 4.3 result types of failures (success is counted, not detailed).
RESULT_TYPES = frozenset({
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid"})
POLICY_TYPES = frozenset({"sts", "tlsa", "no-policy-found"})
#: Lines read per recorded file at most (a report of a busy day stays bounded).
MAX_LINES = 1_000_000
_URI = re.compile(r"(mailto:[^,;!\s]+@[^,;!\s]+|https://[^,;\s]+)\Z")


class ReportRequestError(Exception):
    """A `_smtp._tls` record that asks for nothing usable."""


def parse_tlsrpt_txt(texts: Sequence[str]) -> tuple[str, ...]:
    """The rua URIs of the one "v=TLSRPTv1" record (RFC 8460 3); ReportRequestError
    when there is not exactly one, or it names no usable URI."""
    records = [t for t in texts if t.startswith("v=TLSRPTv1;") or t == "v=TLSRPTv1"]
    if len(records) != 1:
        raise ReportRequestError(f"{len(records)} v=TLSRPTv1 TXT records (one needed)")
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            fields.setdefault(key.strip(), value.strip())
    uris = tuple(u.strip() for u in fields.get("rua", "").split(",") if u.strip())
    usable = tuple(u for u in uris if _URI.match(u))
    if not usable:
        raise ReportRequestError(f"no usable rua URI in {records[0][:120]!r}")
    return usable


@dataclass(frozen=True)
class SessionResult:
    """One outbound TLS session's outcome, as recorded and reported."""

    domain: str  # the recipient (policy) domain
    policy_type: str  # "sts", "tlsa" or "no-policy-found"
    result: str  # "success" or one of RESULT_TYPES
    mx_host: str = ""
    sending_ip: str = ""
    receiving_ip: str = ""
    policy_string: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()
    time: float = 0.0  # when (seconds since the epoch)

    def __post_init__(self) -> None:
        if self.policy_type not in POLICY_TYPES:
            raise ValueError(f"policy type {self.policy_type!r}")
        if self.result != "success" and self.result not in RESULT_TYPES:
            raise ValueError(f"result type {self.result!r}")


class ResultLog:
    """Appends SessionResults under `root` (data_dir/tls-rpt), a file per day and
    process. Blocking: run it in a disk thread."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def record(self, result: SessionResult) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
        day = datetime.fromtimestamp(result.time, UTC).strftime("%Y-%m-%d")
        data = asdict(result)
        line = (json.dumps(data, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.root / f"{day}.{os.getpid()}.jsonl",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
        try:
            os.write(fd, line)  # one write of one line: whole lines only
        finally:
            os.close(fd)

    def day(self, day: str) -> list[SessionResult]:
        """Every result recorded on `day` (YYYY-MM-DD) by any process; unreadable
        lines (a crash mid-write) are skipped."""
        results = []
        for path in sorted(self.root.glob(f"{day}.*.jsonl")):
            with open(path, "rb") as f:
                for number, line in enumerate(f):
                    if number >= MAX_LINES:
                        break
                    try:
                        data = json.loads(line)
                        data["policy_string"] = tuple(data.get("policy_string", ()))
                        data["mx_patterns"] = tuple(data.get("mx_patterns", ()))
                        results.append(SessionResult(**data))
                    except (ValueError, TypeError):
                        continue
        return results

    def days_before(self, day: str) -> list[str]:
        """Days with records older than `day`: the reports still to send."""
        found = {p.name.split(".", 1)[0] for p in self.root.glob("*.jsonl")}
        return sorted(d for d in found if d < day)

    def forget(self, day: str) -> None:
        for path in self.root.glob(f"{day}.*.jsonl"):
            path.unlink(missing_ok=True)


@dataclass
class _Policy:
    results: list[SessionResult] = field(default_factory=list)


def build_reports(day: str, results: Iterable[SessionResult], organization: str,
                  contact: str, report_id: str) -> dict[str, dict[str, object]]:
    """RFC 8460 4.4: domain -> its report (one object per recipient domain, every
    policy seen for it on that day)."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    end = start + timedelta(days=1) - timedelta(seconds=1)
    by_domain: dict[str, dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Policy]] = {}
    for r in results:
        key = (r.policy_type, r.policy_string, r.mx_patterns)
        by_domain.setdefault(r.domain, {}).setdefault(key, _Policy()).results.append(r)
    reports: dict[str, dict[str, object]] = {}
    for domain, policies in sorted(by_domain.items()):
        entries = []
        for (ptype, pstring, patterns), group in policies.items():
            ok = sum(1 for r in group.results if r.result == "success")
            failures = Counter((r.result, r.sending_ip, r.mx_host, r.receiving_ip)
                               for r in group.results if r.result != "success")
            policy: dict[str, object] = {"policy-type": ptype, "policy-domain": domain}
            if pstring:
                policy["policy-string"] = list(pstring)
            if patterns:
                policy["mx-host"] = list(patterns)
            entry: dict[str, object] = {
                "policy": policy,
                "summary": {"total-successful-session-count": ok,
                            "total-failure-session-count": len(group.results) - ok}}
            if failures:
                entry["failure-details"] = [
                    {k: v for k, v in (("result-type", kind), ("sending-mta-ip", sip),
                                       ("receiving-mx-hostname", mx),
                                       ("receiving-ip", rip),
                                       ("failed-session-count", n)) if v != ""}
                    for (kind, sip, mx, rip), n in sorted(failures.items())]
            entries.append(entry)
        reports[domain] = {
            "organization-name": organization,
            "date-range": {"start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "end-datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "contact-info": contact,
            "report-id": f"{report_id}.{domain}",
            "policies": entries,
        }
    return reports


def report_message(report: dict[str, object], domain: str, submitter: str,
                   sender: str, to: Sequence[str]) -> EmailMessage:
    """RFC 8460 5.3: the report as a mail to the domain's mailto: URIs."""
    date_range = report["date-range"]
    assert isinstance(date_range, dict)
    begin = _epoch(date_range["start-datetime"])
    end = _epoch(date_range["end-datetime"])
    report_id = str(report["report-id"])
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = (f"Report Domain: {domain} Submitter: {submitter} "
                          f"Report-ID: <{report_id}>")
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=submitter)
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = submitter
    message.set_content(f"This is an aggregate TLS report from {submitter} for {domain} "
                        "(RFC 8460).\n")
    body = gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)
    message.add_attachment(body, maintype="application", subtype="tlsrpt+gzip",
                           filename=f"{submitter}!{domain}!{begin}!{end}!{report_id}"
                                    ".json.gz")
    message.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"; '
                           f'boundary="{message.get_boundary()}"')
    return message


def _epoch(text: object) -> int:
    return int(datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC).timestamp())
