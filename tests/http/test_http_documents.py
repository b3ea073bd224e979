"""The documents and checks of the http package without a server: what is described for
which listeners, the address check, the MTA-STS policy, the metric labels, the config."""

from __future__ import annotations

import plistlib
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from mailserver.config import config_from_dict
from mailserver.core import metrics
from mailserver.errors import ConfigError
from mailserver.http import clientconfig
from mailserver.http.site import mta_sts_policy, parse_address


def test_port_25_is_never_offered_to_clients() -> None:
    described = clientconfig.endpoints({"smtp": 25, "imap": 143, "submission": 587})
    assert described == [clientconfig.Endpoint("imap", 143, "STARTTLS"),
                         clientconfig.Endpoint("smtp", 587, "STARTTLS")]


@pytest.mark.parametrize("listening", [{}, {"imaps": 993}, {"submission": 587, "smtp": 25}])
def test_thunderbird_needs_a_way_in_and_a_way_out(listening: dict[str, int]) -> None:
    """Thunderbird refuses a config-v1.1.xml without both; we serve none (404)."""
    with pytest.raises(LookupError):
        clientconfig.thunderbird("example.org", "mx.example.org", listening)


def test_thunderbird_minimal() -> None:
    root = ET.fromstring(clientconfig.thunderbird("example.org", "mx.example.org",
                                                  {"pop3": 110, "submission": 587}))
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    assert [(s.tag, s.get("type"), s.findtext("port"), s.findtext("socketType"))
            for s in provider if s.tag.endswith("Server")] == [
        ("incomingServer", "pop3", "110", "STARTTLS"),
        ("outgoingServer", "smtp", "587", "STARTTLS")]


def test_mobileconfig_falls_back_to_pop3_and_needs_both_directions() -> None:
    profile = plistlib.loads(clientconfig.mobileconfig(
        "a@example.org", "mx.example.org", {"pop3s": 995, "submission": 587}))
    [account] = profile["PayloadContent"]
    assert (account["EmailAccountType"], account["IncomingMailServerPortNumber"],
            account["OutgoingMailServerUseSSL"]) == ("EmailTypePOP", 995, False)
    with pytest.raises(LookupError):
        clientconfig.mobileconfig("a@example.org", "mx.example.org", {"imaps": 993})


@pytest.mark.parametrize("text,expected", [
    ("alice@example.org", ("alice@example.org", "example.org")),
    ("Alice.B+tag@Example.ORG.", ("Alice.B+tag@Example.ORG.", "example.org")),
    ("o'b&c@example.org", ("o'b&c@example.org", "example.org")),
    ("jörg@example.org", ("jörg@example.org", "example.org")),
    ("<a>@example.org", None), ('"quoted"@example.org', None), ("a@b@example.org", None),
    (".a@example.org", None), ("a..b@example.org", None), ("a@", None), ("@example.org", None),
    ("a@exa mple.org", None), ("a" * 250 + "@example.org", None),
])
def test_parse_address(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_address(text) == expected


def test_mta_sts_policy_text() -> None:
    """RFC 8461 3.2: version first, CRLF line ends; mode none still names the mx."""
    config = config_from_dict({"hostname": "mx.example.org",
                               "mta_sts": {"mode": "none", "max_age": 31557600}})
    assert mta_sts_policy(config) == (b"version: STSv1\r\nmode: none\r\nmx: mx.example.org\r\n"
                                      b"max_age: 31557600\r\n")


def test_config_errors_name_their_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"mta_sts": {"mode": "strict", "max_age": 31557601},
                          "http": {"request_timeout": 0, "metrics_networks": ["10.0.0.0/33"],
                                   "metrics_token_file": str(tmp_path / "missing")}})
    assert info.value.problems == [
        "http.request_timeout: must be at least 1",
        "http.metrics_networks[0]: not a network: '10.0.0.0/33'",
        f"http.metrics_token_file: cannot read {tmp_path / 'missing'}",
        'mta_sts.mode: expected "enforce", "testing" or "none", got \'strict\'',
        "mta_sts.max_age: between 1 and 31557600 seconds (RFC 8461 3.2), got 31557601",
    ]


def test_client_chosen_names_do_not_become_labels() -> None:
    """An IMAP command name or a reply code we did not expect is counted as "other":
    a client cannot grow the number of series."""
    metrics.configure(None)
    for name in ("FETCH", "fetch", "XYZZY", "X" * 1000):
        metrics.imap_command(name, 0.01)
    metrics.smtp_refusal("smtp", "5.1.1")
    metrics.smtp_refusal("smtp", "")
    metrics.smtp_refusal("smtp", "9.9.9")
    registry = metrics.exposition_registry()
    commands = {s.labels["command"] for f in registry.collect() if f.name ==
                "mailserver_imap_command_seconds" for s in f.samples}
    reasons = {s.labels["reason"] for f in registry.collect() if f.name ==
               "mailserver_smtp_refusals" for s in f.samples}
    assert commands == {"FETCH", "other"}
    assert reasons == {"5.1.1", "other"}
    assert registry.get_sample_value("mailserver_imap_command_seconds_count",
                                     {"command": "other"}) == 2
