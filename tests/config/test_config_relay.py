"""The [relay] keys of the outbound queue (mailserver/queue)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.config import config_from_dict
from mailserver.errors import ConfigError


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.problems


def test_relay_defaults_are_postfix_like() -> None:
    relay = config_from_dict({}).relay
    assert (relay.retry_initial, relay.retry_max) == (300, 4000)
    assert relay.queue_lifetime == 5 * 86400
    assert relay.delay_warning == 4 * 3600
    assert (relay.connections_total, relay.connections_per_destination) == (50, 10)
    assert (relay.connect_timeout, relay.command_timeout, relay.dns_timeout) == (30, 300, 30)
    assert relay.smarthost_user == "" and relay.smarthost_password_file == ""


def test_relay_keys_are_read() -> None:
    relay = config_from_dict({"relay": {
        "retry_initial": 1, "retry_max": 2, "queue_lifetime": 60, "delay_warning": 0,
        "connections_total": 3, "connections_per_destination": 1}}).relay
    assert (relay.retry_initial, relay.retry_max, relay.queue_lifetime) == (1, 2, 60)
    assert relay.delay_warning == 0, "0 turns the delay warning off"
    assert (relay.connections_total, relay.connections_per_destination) == (3, 1)


def test_relay_problems_reported_with_key_paths() -> None:
    assert problems({"relay": {"retry_initial": 0, "retry_max": "soon",
                               "connections_total": -1, "command_timeout": 0}}) == [
        "relay.retry_max: expected an integer, got \"soon\"",
        "relay.connections_total: must not be negative, got -1",
        "relay.retry_initial: must be at least 1",
        "relay.command_timeout: must be at least 1",
    ]


def test_retry_max_not_below_retry_initial() -> None:
    assert problems({"relay": {"retry_initial": 600, "retry_max": 300}}) == [
        "relay.retry_max: must be at least retry_initial (600), got 300"]


def test_smarthost_auth_needs_a_readable_password_file(tmp_path: Path) -> None:
    assert problems({"relay": {"smarthost": "smtp.example.com:587",
                               "smarthost_user": "me"}}) == [
        "relay.smarthost_password_file: needed with smarthost_user"]
    missing = tmp_path / "nope"
    assert problems({"relay": {"smarthost": "smtp.example.com:587", "smarthost_user": "me",
                               "smarthost_password_file": str(missing)}}) == [
        f"relay.smarthost_password_file: cannot read {missing}"]
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    relay = config_from_dict({"relay": {"smarthost": "smtp.example.com:587",
                                        "smarthost_user": "me",
                                        "smarthost_password_file": str(secret)}}).relay
    assert relay.smarthost_password_file == str(secret)


def test_source_address() -> None:
    assert config_from_dict({"relay": {"source_address": "192.0.2.7"}}).relay.source_address \
        == "192.0.2.7"
    assert problems({"relay": {"source_address": "mail.example.org"}}) == [
        "relay.source_address: not an IP address: 'mail.example.org'"]
