"""The shared resolver ([dns], its TTL cache, relay.nameservers as the older spelling)
and the DKIM key store (files, modes, rotation)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from dns_server import DNSServer
from sa_helpers import make_store
from server_harness import admin

from mailserver.config import config_from_dict
from mailserver.core.dns import SharedResolver, parse_nameserver
from mailserver.errors import ConfigError
from mailserver.senderauth.lookups import Lookups, TempFail
from mailserver.senderauth.signing import Signer

pytestmark = pytest.mark.timeout(60)


def test_dns_nameservers_and_the_older_relay_spelling() -> None:
    old = config_from_dict({"relay": {"nameservers": ["127.0.0.1:5353"]}})
    assert SharedResolver.from_config(old).nameservers == ("127.0.0.1:5353",)
    both = config_from_dict({"relay": {"nameservers": ["127.0.0.1:5353"]},
                             "dns": {"nameservers": ["[::1]:53"], "timeout": 3}})
    shared = SharedResolver.from_config(both)
    assert shared.nameservers == ("[::1]:53",) and shared.timeout == 3
    assert parse_nameserver("[::1]:5300") == ("::1", 5300)
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"dns": {"nameservers": ["no:port:here:x"], "timeout": 0},
                          "checks": {"temperror": "maybe",
                                     "trusted_networks": ["10.0.0.0/33"]},
                          "dkim": {"external_keys": ["example.org:sel"]}})
    text = "\n".join(e.value.problems)
    for key in ("dns.timeout", "checks.temperror", "checks.trusted_networks[0]",
                "dkim.external_keys[0]"):
        assert key in text


def test_cache_keeps_answers_for_their_ttl_only() -> None:
    zone = {"short.test": {"TXT": ["short"], "TTL": 1},
            "long.test": {"TXT": ["long"], "TTL": 600}}
    shared = SharedResolver(["127.0.0.1:9"], 1, cache_size=100)
    with DNSServer(zone) as dns:
        shared = SharedResolver([dns.nameserver], 1, cache_size=100)
        lookups = Lookups(shared, budget=10)
        assert lookups.txt("short.test") == [b"short"]
        assert lookups.txt("long.test") == [b"long"]
    time.sleep(1.5)
    # The server is gone: only what the cache still holds can be answered.
    lookups = Lookups(shared, budget=10)
    assert lookups.txt("long.test") == [b"long"]
    with pytest.raises(TempFail):
        lookups.txt("short.test")


def until_mtime_moves(path: Path, probe: Path) -> None:
    """Wait until a file written now (`probe`, on the same file system) gets another
    mtime than `path` has."""
    deadline = time.monotonic() + 30
    while True:
        probe.write_bytes(b"")  # a new file each time
        written = probe.stat().st_mtime_ns
        probe.unlink()
        if written != path.stat().st_mtime_ns:
            return
        assert time.monotonic() < deadline, "the file system's clock stands still"
        time.sleep(0.001)


def test_keys_are_made_once_private_and_rotated(tmp_path: Path) -> None:
    store = make_store(tmp_path, ("example.org",))
    directory = store.directory("example.org")
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    active = store.state("example.org", "active")
    assert [s[-1] for s in active] == ["e", "r"]
    for selector in active:
        assert stat.S_IMODE(os.stat(directory / f"{selector}.key").st_mode) == 0o600
    assert store.ensure() == []  # nothing new on the next start
    signer = Signer(store)
    assert len(signer.keys_for("example.org")) == 2
    made = store.rotate("example.org")
    assert made and not set(made) & set(active)
    assert {k.selector for k in signer.keys_for("example.org")} == set(active)
    # The signer notices a new `active` file by its mtime, which the kernel's coarse
    # clock (one tick, up to 10 ms) may leave unchanged: a 0.01 s sleep was a guess.
    until_mtime_moves(directory / "active", tmp_path / "probe")
    now, retired = store.activate("example.org")
    assert now == made and retired == active
    assert {k.selector for k in signer.keys_for("example.org")} == set(made)
    assert {k.selector for k in store.published_keys("example.org")} == set(made + active)
    store.forget("example.org", active[0])
    assert not (directory / f"{active[0]}.key").exists()


def test_dkim_commands(tmp_path: Path) -> None:
    config = tmp_path / "mailserver.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nhostname = "mx.test"\n'
                      f'[domains]\nlocal = ["example.org"]\n'
                      f'[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 1\n')
    listed = admin(config, "dkim", "list").stdout
    assert len([line for line in listed.splitlines() if "\tactive\t" in line]) == 2
    rotated = admin(config, "dkim", "rotate", "example.org").stdout
    assert "pending" in rotated
    refused = admin(config, "dkim", "activate", "example.org", check=False)
    assert refused.returncode == 1
    assert "publish it first" in refused.stderr and "Traceback" not in refused.stderr
    forced = admin(config, "dkim", "activate", "--force", "example.org")
    assert "now signing with" in forced.stdout
    other = admin(config, "dkim", "rotate", "example.net", check=False)
    assert other.returncode == 1 and "not in domains.local" in other.stderr
