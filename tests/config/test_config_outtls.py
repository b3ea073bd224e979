"""The outbound TLS keys: relay.mta_sts, relay.ca_file, relay.https_port, [tls_reporting]."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.config import config_from_dict
from mailserver.errors import ConfigError
from mailserver.queue.outtls_setup import _roots


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.problems


def test_defaults() -> None:
    config = config_from_dict({})
    assert (config.relay.mta_sts, config.relay.ca_file, config.relay.https_port) == (
        True, "", 443)
    assert config.tls_reporting.enabled is False


def test_problems_name_the_key(tmp_path: Path) -> None:
    assert problems({"relay": {"ca_file": str(tmp_path / "missing.pem"), "https_port": 70000},
                     "tls_reporting": {"enabled": True}}) == [
        f"relay.ca_file: cannot read {tmp_path / 'missing.pem'}",
        "relay.https_port: not a port number: 70000",
        "tls_reporting.organization: needed when tls_reporting.enabled",
    ]


def test_a_ca_file_without_certificates_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "roots.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        _roots(str(path))
    assert info.value.problems == [f"relay.ca_file: no readable PEM certificate in {path}"]
