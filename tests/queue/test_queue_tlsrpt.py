"""TLS reporting as a sender (RFC 8460): the `_smtp._tls` record, the session log, the
aggregate JSON report and the mail that carries it, parsed back as a receiver would."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailserver.queue.tlsrpt import (
    ReportRequestError,
    ResultLog,
    SessionResult,
    build_reports,
    parse_tlsrpt_txt,
    report_message,
)

T = datetime(2026, 12, 6, 10, 0, tzinfo=UTC).timestamp()
STS = ("version: STSv1", "mode: enforce", "mx: *.mx.example.test", "max_age: 86400")


@pytest.mark.parametrize(("texts", "expected"), [
    (["v=TLSRPTv1; rua=mailto:tls@example.test"], ("mailto:tls@example.test",)),
    (["v=TLSRPTv1;rua=mailto:a@x.test,https://r.x.test/v1"],
     ("mailto:a@x.test", "https://r.x.test/v1")),
    (["v=TLSRPTv1; rua=ftp://x.test, mailto:a@x.test"], ("mailto:a@x.test",)),
])
def test_txt_record(texts: list[str], expected: tuple[str, ...]) -> None:
    assert parse_tlsrpt_txt(texts) == expected


@pytest.mark.parametrize(("texts", "error"), [
    ([], "0 v=TLSRPTv1"), (["v=TLSRPTv1; rua=a", "v=TLSRPTv1; rua=b"], "2 v=TLSRPTv1"),
    (["v=TLSRPTv1; rua=ftp://x"], "no usable rua"), (["v=TLSRPTv1"], "no usable rua"),
])
def test_txt_record_refused(texts: list[str], error: str) -> None:
    with pytest.raises(ReportRequestError, match=error):
        parse_tlsrpt_txt(texts)


def results() -> list[SessionResult]:
    sts = dict(domain="example.test", policy_type="sts", policy_string=STS,
               mx_patterns=("*.mx.example.test",), sending_ip="192.0.2.1", time=T)
    return ([SessionResult(result="success", mx_host="a.mx.example.test", **sts)] * 3 +  # type: ignore[arg-type]
            [SessionResult(result="certificate-expired", mx_host="b.mx.example.test",
                           receiving_ip="192.0.2.9", **sts)] * 2 +  # type: ignore[arg-type]
            [SessionResult(domain="other.test", policy_type="no-policy-found",
                           result="starttls-not-supported", mx_host="mx.other.test",
                           time=T)])


def test_log_and_report_round_trip(tmp_path: Path) -> None:
    log = ResultLog(tmp_path)
    for r in results():
        log.record(r)
    with open(next(tmp_path.glob("2026-12-06.*.jsonl")), "ab") as f:
        f.write(b'{"domain": "cut sh')  # a crash mid-line: skipped
    assert log.days_before("2026-12-07") == ["2026-12-06"]
    assert log.day("2026-12-06") == results()
    reports = build_reports("2026-12-06", log.day("2026-12-06"), "Example Mail",
                            "postmaster@mail.example.org", "rid1")
    assert reports["example.test"] == {
        "organization-name": "Example Mail",
        "date-range": {"start-datetime": "2026-12-06T00:00:00Z",
                       "end-datetime": "2026-12-06T23:59:59Z"},
        "contact-info": "postmaster@mail.example.org",
        "report-id": "rid1.example.test",
        "policies": [{
            "policy": {"policy-type": "sts", "policy-domain": "example.test",
                       "policy-string": list(STS), "mx-host": ["*.mx.example.test"]},
            "summary": {"total-successful-session-count": 3,
                        "total-failure-session-count": 2},
            "failure-details": [{"result-type": "certificate-expired",
                                 "sending-mta-ip": "192.0.2.1",
                                 "receiving-mx-hostname": "b.mx.example.test",
                                 "receiving-ip": "192.0.2.9",
                                 "failed-session-count": 2}]}]}
    other = reports["other.test"]["policies"]
    assert other == [{"policy": {"policy-type": "no-policy-found",
                                 "policy-domain": "other.test"},
                      "summary": {"total-successful-session-count": 0,
                                  "total-failure-session-count": 1},
                      "failure-details": [{"result-type": "starttls-not-supported",
                                           "receiving-mx-hostname": "mx.other.test",
                                           "failed-session-count": 1}]}]
    log.forget("2026-12-06")
    assert log.day("2026-12-06") == []


def test_report_mail_as_a_receiver_reads_it() -> None:
    report = build_reports("2026-12-06", results(), "Example Mail", "pm@example.org",
                           "rid1")["example.test"]
    raw = report_message(report, "example.test", "mail.example.org",
                         "tlsrpt@example.org", ["tls@example.test"]).as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "tlsrpt"
    assert parsed["Subject"] == ("Report Domain: example.test Submitter: mail.example.org "
                                 "Report-ID: <rid1.example.test>")
    assert parsed["TLS-Report-Domain"] == "example.test"
    assert parsed["TLS-Report-Submitter"] == "mail.example.org"
    parts = list(parsed.iter_attachments())
    assert [p.get_content_type() for p in parts] == ["application/tlsrpt+gzip"]
    begin, end = 1796515200, 1796601599  # 2026-12-06 00:00:00 and 23:59:59 UTC
    assert parts[0].get_filename() == (
        f"mail.example.org!example.test!{begin}!{end}!rid1.example.test.json.gz")
    assert json.loads(gzip.decompress(parts[0].get_content())) == report


@pytest.mark.parametrize(("field", "value"), [("policy_type", "dmarc"),
                                              ("result", "made-up")])
def test_unknown_types_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        SessionResult(**{"domain": "x.test", "policy_type": "sts", "result": "success",
                         field: value})  # type: ignore[arg-type]


def test_a_policy_fetch_failure_is_recorded_for_the_report(tmp_path: Path) -> None:
    """OutboundTls.policy_failed (told by StsPolicies): one "sts" failure of the domain,
    which the day's report then counts (RFC 8460 4.3 sts-policy-fetch-error)."""
    from mailserver.queue.outtls import OutboundTls

    log = ResultLog(tmp_path)
    outbound = OutboundTls(None, None, None, log, lambda fn, *args: fn(*args),
                           clock=lambda: T)
    outbound.policy_failed("example.test", "sts-policy-fetch-error")
    [result] = log.day("2026-12-06")
    assert (result.domain, result.policy_type, result.result) == (
        "example.test", "sts", "sts-policy-fetch-error")
    report = build_reports("2026-12-06", [result], "o", "c", "r")["example.test"]
    assert report["policies"][0]["failure-details"] == [  # type: ignore[index]
        {"result-type": "sts-policy-fetch-error", "failed-session-count": 1}]
