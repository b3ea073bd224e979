"""The shared counter table (mailserver/abuse/table.py) and the policies over it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from mailserver.abuse.control import (
    LOGIN_IP,
    AbuseControl,
    lockouts,
    open_table,
)
from mailserver.abuse.table import SLOT, SharedTable, ip_key, name_key
from mailserver.config import config_from_dict


def make(tmp_path: Path, slots: int = 4096, **abuse: object) -> tuple[AbuseControl, Clock]:
    config = config_from_dict({"data_dir": str(tmp_path),
                               "abuse": {"tracked_keys": slots, **abuse}})
    clock = Clock()
    clock.advance(1_800_000_000)
    return AbuseControl(config, open_table(config, clock=clock)), clock


def test_sliding_window_limit(tmp_path: Path) -> None:
    control, clock = make(tmp_path)
    key = ip_key(LOGIN_IP, "192.0.2.1")
    table = control.table
    clock.advance(3600 - clock.seconds() % 3600)  # the start of a window
    for _ in range(5):
        assert table.hit(key, 3600, limit=5)[0]
    assert table.hit(key, 3600, limit=5) == (False, 5.0)
    clock.advance(3600 + 1800)  # half the previous window still counts: 2.5
    assert table.count(key, 3600) == 2.5
    assert table.hit(key, 3600, limit=5)[0]
    clock.advance(7200)  # both windows gone
    assert table.count(key, 3600) == 0


def test_ipv6_counts_per_64(tmp_path: Path) -> None:
    control, _ = make(tmp_path)
    a = ip_key(LOGIN_IP, "2001:db8:1:2::1")
    b = ip_key(LOGIN_IP, "2001:db8:1:2:ffff::9")
    c = ip_key(LOGIN_IP, "2001:db8:1:3::1")
    assert a == b != c
    assert ip_key(LOGIN_IP, "::ffff:192.0.2.1") == ip_key(LOGIN_IP, "192.0.2.1")
    assert a.text() == "2001:db8:1:2::/64"


def test_memory_is_bounded(tmp_path: Path) -> None:
    """10,000 distinct addresses in a 1,024-slot table: the file never grows, the
    newest addresses are still counted, the oldest forgotten."""
    control, clock = make(tmp_path, slots=1024)
    table = control.table
    size = table.path.stat().st_size
    for i in range(10_000):
        table.hit(ip_key(LOGIN_IP, f"10.0.{i >> 8}.{i & 255}"), 900)
        clock.advance(0.01)
    assert table.path.stat().st_size == size == 64 + 1024 * SLOT.size
    assert table.count(ip_key(LOGIN_IP, "10.0.39.15"), 900) == 1  # the last one
    live = sum(1 for _ in table.records(LOGIN_IP))
    assert live <= 1024


def test_lockout_after_failures_and_unban(tmp_path: Path) -> None:
    control, _ = make(tmp_path, login_failures=3, lockout=600)
    for _ in range(2):
        control.login_failed("imap", "192.0.2.9", "alice@example.org")
    assert not control.locked_until("192.0.2.9")
    control.login_failed("pop3", "192.0.2.9", "nobody@example.org")
    assert control.locked_until("192.0.2.9") > 0
    assert not control.locked_until("192.0.2.10")  # only that address
    assert [ip for ip, _, _ in lockouts(control.table)] == ["192.0.2.9"]
    assert control.unban("192.0.2.9")
    assert not control.locked_until("192.0.2.9")


def test_account_delay_doubles_and_is_capped(tmp_path: Path) -> None:
    control, _ = make(tmp_path, login_delay_max=5)
    delays = [control.account_failure_delay("alice@example.org") for _ in range(6)]
    assert delays == [0.75, 1.5, 3.0, 5.0, 5.0, 5.0]
    # Another account (existing or not) starts from the floor.
    assert control.account_failure_delay("NoSuch@example.org") == 0.75
    assert control.account_failure_delay("nosuch@EXAMPLE.org") == 1.5


def test_concurrent_gauges_per_process_column(tmp_path: Path) -> None:
    config = config_from_dict({"data_dir": str(tmp_path)})
    one = AbuseControl(config, open_table(config), instance=0)
    two = AbuseControl(config, open_table(config), instance=1)
    assert one.connection_opened("imap", "192.0.2.5", 2) is None
    assert two.connection_opened("imap", "192.0.2.5", 2) is None
    refused = one.connection_opened("imap", "192.0.2.5", 2)
    assert refused is not None and refused.reason == "too-many-connections"
    two.table.reset_gauges(1)  # worker 1 crashed and restarts: its connection is gone
    assert one.connection_opened("imap", "192.0.2.5", 2) is None


def test_refused_and_trusted_networks(tmp_path: Path) -> None:
    control, _ = make(tmp_path, trusted_networks=["192.0.2.0/24"],
                      refused_networks=["198.51.100.0/24"], connections_per_minute=1)
    verdict = control.connection_opened("smtp", "198.51.100.7", 10)
    assert verdict is not None and verdict.reason == "refused-network"
    for _ in range(5):
        assert control.connection_opened("smtp", "192.0.2.7", 1) is None
    assert control.connection_opened("smtp", "203.0.113.1", 10) is None
    verdict = control.connection_opened("smtp", "203.0.113.1", 10)
    assert verdict is not None and verdict.reason == "connection-rate"


def test_counts_are_shared_with_another_process(tmp_path: Path) -> None:
    """A second Python process sees and adds to the same counts."""
    control = AbuseControl(config_from_dict({"data_dir": str(tmp_path),
                                             "abuse": {"tracked_keys": 4096}}),
                           open_table(config_from_dict({"data_dir": str(tmp_path),
                                                        "abuse": {"tracked_keys": 4096}})))
    control.table.hit(name_key(7, "alice@example.org"), 10**9)
    code = (
        "import sys; from pathlib import Path;"
        "from mailserver.abuse.table import SharedTable, name_key;"
        f"t = SharedTable(Path({str(control.table.path)!r}), 4096);"
        "print(t.hit(name_key(7, 'ALICE@example.org'), 10**9)[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert float(out.stdout) == 2.0
    assert control.table.count(name_key(7, "alice@example.org"), 10**9) == 2.0


def test_quota_reservations_stop_at_the_limit(tmp_path: Path) -> None:
    control, _ = make(tmp_path)
    assert [control.reserve_message("bob@example.org", 3) for _ in range(4)] == [
        True, True, True, False]
    assert control.reserve_message("bob@example.org", 0)  # 0: no limit
    assert control.usage("bob@example.org")[0] == 3


def test_table_of_another_size_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "t"
    first = SharedTable(path, 64)
    first.hit(name_key(1, "x"), 60)
    first.close()
    again = SharedTable(path, 128)
    assert again.count(name_key(1, "x"), 60) == 0


@pytest.mark.parametrize("bad, message", [
    ({"trusted_networks": ["10.0.0.300/8"]}, "abuse.trusted_networks[0]: not a network"),
    ({"dnsbl_zones": ["zen.spamhaus.org=x"]}, "abuse.dnsbl_zones[0]: expected"),
    ({"dnsbl_zones": ["ok.test=2", "wl.test=--3"]}, "abuse.dnsbl_zones[1]: expected"),
    ({"lockout": 0}, "abuse.lockout: must be at least 1"),
])
def test_config_problems_name_the_key(bad: dict[str, object], message: str) -> None:
    from mailserver.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        config_from_dict({"abuse": bad})
    assert any(message in p for p in e.value.problems), e.value.problems


def test_negative_weights_are_allowlists() -> None:
    from mailserver.abuse.dnsbl import parse_zones

    config = config_from_dict({"abuse": {"dnsbl_zones": ["bl.test=3", "list.dnswl.org=-5"]}})
    assert [(z.name, z.weight) for z in parse_zones(config.abuse.dnsbl_zones)] == [
        ("bl.test", 3), ("list.dnswl.org", -5)]


def test_greylisting_triplets(tmp_path: Path) -> None:
    control, clock = make(tmp_path, greylist_delay=300, trusted_networks=["192.0.2.0/24"])
    args = ("198.51.100.7", "a@sender.example", "bob@example.org")
    assert control.greylisted(*args)  # first attempt
    clock.advance(299)
    assert control.greylisted(*args)  # too early
    clock.advance(2)
    # The retry passes, from another address of the same /24 too.
    assert not control.greylisted("198.51.100.9", *args[1:])
    # The client is now allowed: a new triplet from it passes at once.
    assert not control.greylisted("198.51.100.9", "other@x.example", "carol@example.org")
    # Another network starts from scratch; trusted networks never wait.
    assert control.greylisted("203.0.113.1", *args[1:])
    assert not control.greylisted("192.0.2.1", "new@x.example", "bob@example.org")
    # A first attempt never retried is forgotten after the retry window.
    assert control.greylisted("203.0.113.50", "z@z.example", "bob@example.org")
    clock.advance(3 * 86_400)
    assert control.greylisted("203.0.113.50", "z@z.example", "bob@example.org")


@pytest.mark.parametrize("given, seen", [
    ("192.0.2.1", "192.0.2.1"), ("::ffff:192.0.2.1", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::1"), ("2001:db8::7", "2001:db8::7"),
    ("unknown", None), ("", None),
])
def test_client_address_as_the_checks_compare_it(given: str, seen: str | None) -> None:
    from mailserver.address import client_address

    address = client_address(given)
    assert (None if address is None else str(address)) == seen
