"""cluster.trusted_proxies and cluster.proxy_protocol: who may send XCLIENT and PROXY
headers, and where a trusted proxy must send one; every mistake names its key."""

from __future__ import annotations

import pytest

from mailserver.config import ConfigError, config_from_dict


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.problems


def test_proxy_protocol_names_listeners() -> None:
    config = config_from_dict({"cluster": {"trusted_proxies": ["10.0.0.100/32"],
                                           "proxy_protocol": ["imap", "pop3s"]}})
    assert config.cluster.proxy_protocol == ("imap", "pop3s")
    assert config.cluster.trusted_proxies == ("10.0.0.100/32",)


def test_unknown_listener_is_named() -> None:
    found = problems({"cluster": {"trusted_proxies": ["10.0.0.100/32"],
                                  "proxy_protocol": ["imap", "lmtp"]}})
    assert found == ["cluster.proxy_protocol[1]: no listener named 'lmtp' (one of smtp, "
                     "submission, submissions, pop3, pop3s, imap, imaps, http, https)"]


def test_proxy_protocol_needs_trusted_proxies() -> None:
    assert problems({"cluster": {"proxy_protocol": ["imap"]}}) == [
        "cluster.proxy_protocol: needs cluster.trusted_proxies (who may send the header)"]


def test_bad_proxy_network_is_named() -> None:
    assert problems({"cluster": {"trusted_proxies": ["10.0.0.300/32"]}}) == [
        "cluster.trusted_proxies[0]: not a network: '10.0.0.300/32'"]
