"""Config: TOML to frozen dataclasses, every mistake named by its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.config import (
    DEFAULT_LISTEN,
    ConfigError,
    config_from_dict,
    default_config,
    load_config,
    render_example,
)

ROOT = Path(__file__).resolve().parents[2]


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.problems


def test_example_file_is_generated_from_the_code() -> None:
    assert (ROOT / "etc" / "mailserver.toml").read_text() == render_example(), \
        "regenerate: python -m mailserver.config > etc/mailserver.toml"


def test_example_file_loads_except_for_missing_certificates() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "etc" / "mailserver.toml")
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "tls.certificate: cannot read /etc/letsencrypt/live/mail.example.org/fullchain.pem",
        "tls.private_key: cannot read /etc/letsencrypt/live/mail.example.org/privkey.pem",
    ]


def test_embedded_default() -> None:
    config = default_config()
    assert config.domains.local == ("localhost",)
    assert config.listen.enabled() == DEFAULT_LISTEN
    assert config.data_dir == Path("var").absolute()
    assert config.users_file == config.data_dir / "users"
    assert config.limits.message_size == 36_700_160


def test_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('hostname = "mx.env.test"\ndata_dir = "state"\n')
    monkeypatch.setenv("MAILSERVER_CONFIG", str(path))
    config = load_config()
    assert config.hostname == "mx.env.test"
    assert config.data_dir == tmp_path / "state", "relative to the config file"
    assert config.listen.enabled() == {}, "a config file lists the services it wants"


def test_every_problem_reported_at_once() -> None:
    found = problems({
        "hostname": 3, "colour": "blue",
        "limits": {"message_size": "big", "connections": True, "nope": 1},
        "listen": {"smtp": "tcpx:25", "pop4": "tcp:1"},
        "domains": {"local": ["Example.ORG", "bad domain", 7]},
        "relay": {"port": 70000, "nameservers": ["x:y"], "smarthost": "nohost"},
        "tls": {"certificate": "/nonexistent.pem"},
    })
    expected = [
        "hostname: expected a string, got 3",
        "colour: unknown key",
        "domains.local[2]: expected a string, got 7",
        "listen.pop4: unknown key",
        "limits.nope: unknown key",
        'limits.message_size: expected an integer, got "big"',
        "limits.connections: expected an integer, got true",
        "domains.local[1]: not a domain name: 'bad domain'",
        "tls: certificate and private_key go together; set both or neither",
        "tls.certificate: cannot read /nonexistent.pem",
        "relay.port: not a port number: 70000",
        "relay.nameservers[0]: expected \"address[:port]\", got 'x:y'",
        "relay.smarthost: expected \"host:port\", got 'nohost'",
    ]
    for line in expected:
        assert line in found
    assert any(p.startswith("listen.smtp: not a Twisted endpoint description: 'tcpx:25'")
               for p in found)
    assert len(found) == len(expected) + 1


def test_domains_normalised() -> None:
    config = config_from_dict({"domains": {"local": ["Example.ORG.", "b.test"]}})
    assert config.domains.local == ("example.org", "b.test")
    assert config.is_local_domain("EXAMPLE.org")
    assert not config.is_local_domain("evil.test")


@pytest.mark.parametrize("key,value,message", [
    ("message_size", 0, "limits.message_size: must be at least 1"),
    ("connections", -5, "limits.connections: must not be negative, got -5"),
    ("strict_8bitmime", "yes", 'limits.strict_8bitmime: expected true or false, got "yes"'),
])
def test_limits_checked(key: str, value: object, message: str) -> None:
    assert message in problems({"limits": {key: value}})


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("hostname = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: not valid TOML: ")


def test_processes_default_is_one_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """0 (the default): one process per CPU this server may run on (its affinity, not
    the machine's count), at most 64; an explicit number is kept."""
    config = config_from_dict({})
    assert config.processes == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert config.process_count == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(100)))
    assert config.process_count == 64
    assert config_from_dict({"processes": 1}).process_count == 1
    assert config_from_dict({"processes": 5}).process_count == 5
    assert "processes: must not be negative, got -1" in problems({"processes": -1})


def test_tls_alpn_challenge_makes_the_default_one_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tls-alpn-01 answer lives in the process that asked (app/acme.py): with the
    default `processes` such a config loads and runs one process; only an explicit
    `processes` above 1 is refused."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    acme = {"directory": "https://ca.test/dir", "challenge": "tls-alpn-01"}
    config = config_from_dict({"data_dir": str(tmp_path), "acme": acme})
    assert config.process_count == 1
    http = config_from_dict({"data_dir": str(tmp_path),
                             "acme": {**acme, "challenge": "http-01"}})
    assert http.process_count == 2
    assert problems({"data_dir": str(tmp_path), "processes": 2, "acme": acme}) == [
        "acme.challenge: tls-alpn-01 needs processes = 1 (the answer lives in the "
        "process that asked)"]
