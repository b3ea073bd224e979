"""`mailserver dns-records` also prints what clients and senders discover us by: SRV
records for each client service (RFC 6186, RFC 8314 5.1), and with the web listeners
the autoconfig and mta-sts names, the `_mta-sts` TXT whose id follows the policy we
serve (RFC 8461 3.1) and a TLS-RPT address (RFC 8460 3); --check finds them in DNS."""

from __future__ import annotations

from dataclasses import replace

import pytest
from dns_server import DNSServer

from mailserver.admin.dns_records import Record, _check_one, discovery, listen_port
from mailserver.config import config_from_dict
from mailserver.core.dns import SharedResolver
from mailserver.http.mtasts import mta_sts_policy, policy_id
from mailserver.senderauth.lookups import Lookups

pytestmark = pytest.mark.timeout(60)

LISTEN = {"smtp": "tcp:25", "submissions": "tcp:465", "submission": "tcp:port=587",
          "imaps": "tcp:993:interface=127.0.0.1", "https": "tcp:443"}


def config(**extra: object):  # type: ignore[no-untyped-def]
    return config_from_dict({"hostname": "mail.example.org",
                             "domains": {"local": ["example.org"]},
                             "listen": LISTEN, **extra})


@pytest.mark.parametrize("description,port", [
    ("tcp:465", 465), ("tcp:port=587", 587), ("tcp:993:interface=127.0.0.1", 993),
    ("tcp:interface=\\:\\:1:port=110", 110), ("tcp6:interface=\\:\\:1:995", 995),
    ("tcp:interface=127.0.0.1:port=2143", 2143), ("ssl:995:privateKey=k.pem", 995),
    ("unix:/run/mail.sock", None), ("", None), ("tcp:", None), ("tcp:interface=x", None),
])
def test_listen_port(description: str, port: int | None) -> None:
    assert listen_port(description) == port


def test_srv_for_what_runs_and_dot_for_what_does_not() -> None:
    lines = [r.zone_line() for r in discovery(config(), "example.org")]
    assert "_submissions._tcp.example.org.\t3600\tIN\tSRV\t0 1 465 mail.example.org." in lines
    assert "_submission._tcp.example.org.\t3600\tIN\tSRV\t0 1 587 mail.example.org." in lines
    assert "_imaps._tcp.example.org.\t3600\tIN\tSRV\t0 1 993 mail.example.org." in lines
    # RFC 6186 3.4: a target of "." says the service is not offered at this domain.
    for service in ("_imap", "_pop3s", "_pop3"):
        assert f"{service}._tcp.example.org.\t3600\tIN\tSRV\t0 0 0 ." in lines
    assert "autoconfig.example.org.\t3600\tIN\tCNAME\tmail.example.org." in lines
    assert "_autodiscover._tcp.example.org.\t3600\tIN\tSRV\t0 1 443 mail.example.org." \
        in lines
    assert "mta-sts.example.org.\t3600\tIN\tCNAME\tmail.example.org." in lines
    assert f'_mta-sts.example.org.\t3600\tIN\tTXT\t"v=STSv1; id={policy_id(config())}"' \
        in lines
    assert '_smtp._tls.example.org.\t3600\tIN\tTXT\t"v=TLSRPTv1; rua=mailto:postmaster@' \
           'example.org"' in lines


def test_the_policy_id_changes_with_the_policy() -> None:
    testing, enforce = config(), config(mta_sts={"mode": "enforce"})
    assert mta_sts_policy(testing) != mta_sts_policy(enforce)
    assert policy_id(testing) != policy_id(enforce)
    assert policy_id(testing) == policy_id(config())
    assert policy_id(testing).isalnum() and 1 <= len(policy_id(testing)) <= 32


def test_no_web_names_without_a_web_listener_and_no_mta_sts_when_none() -> None:
    plain = replace(config(), listen=replace(config().listen, https=None))
    names = {r.name for r in discovery(plain, "example.org")}
    assert not {"autoconfig.example.org", "mta-sts.example.org",
                "_mta-sts.example.org"} & names
    off = {r.name for r in discovery(config(mta_sts={"mode": "none"}), "example.org")}
    assert "autoconfig.example.org" in off and "_mta-sts.example.org" not in off


def test_check_finds_srv_cname_and_sts_records() -> None:
    records = discovery(config(), "example.org")
    zone = {
        "_submissions._tcp.example.org": {"SRV": [[0, 1, 465, "mail.example.org"]]},
        "_imap._tcp.example.org": {"SRV": [[0, 0, 0, "."]]},
        "_imaps._tcp.example.org": {"SRV": [[0, 1, 9993, "mail.example.org"]]},
        "autoconfig.example.org": {"CNAME": ["mail.example.org"]},
        "_mta-sts.example.org": {"TXT": [f"v=STSv1; id={policy_id(config())}"]},
        "_smtp._tls.example.org": {"TXT": ["v=TLSRPTv1; rua=mailto:x@example.org"]},
    }
    by_name = {r.name: r for r in records}
    with DNSServer(zone) as dns:
        lookups = Lookups(SharedResolver([dns.nameserver], 5), budget=30)

        def status(name: str) -> str:
            return _check_one(lookups, by_name[name])

        assert status("_submissions._tcp.example.org") == "ok"
        assert status("_imap._tcp.example.org") == "ok"
        assert status("_imaps._tcp.example.org") == \
            "found 0 1 9993 mail.example.org."
        assert status("_pop3._tcp.example.org") == "missing"
        assert status("autoconfig.example.org") == "ok"
        assert status("mta-sts.example.org") == "missing"
        assert status("_mta-sts.example.org") == "ok"
        assert status("_smtp._tls.example.org").startswith('found "v=TLSRPTv1; rua=mailto:x@')
        assert _check_one(lookups, Record("_mta-sts.example.org", "TXT",
                                          "v=STSv1; id=old1")).startswith('found "v=STSv1')
