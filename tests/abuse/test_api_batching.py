"""The JSON API's shared-table work in batches (abuse/control.py): a credential's
requests reach the table within API_BATCH_SECONDS or API_BATCH_REQUESTS, and an address
seen not locked out is taken as such for at most API_BATCH_SECONDS. Two AbuseControls
over one table file are two worker processes."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from mailserver.abuse.control import (
    API_BATCH_REQUESTS,
    API_BATCH_SECONDS,
    AbuseControl,
    open_table,
)
from mailserver.config import config_from_dict

IP, ACCOUNT = "192.0.2.7", "a@example.org"


def processes(tmp_path: Path, timer: bool = True, **abuse: int
              ) -> tuple[Clock, AbuseControl, AbuseControl]:
    clock = Clock()
    clock.advance(1_800_000_000)  # hh:mm:00: the minute's window does not turn here
    config = config_from_dict({"data_dir": str(tmp_path / "data"), "abuse": abuse})
    one = AbuseControl(config, open_table(config, clock=clock), 0)
    two = AbuseControl(config, open_table(config, clock=clock), 1)
    if timer:
        one.call_later = two.call_later = clock.callLater
    return clock, one, two


def admitted(control: AbuseControl, limit: int, most: int = 1000) -> int:
    """Requests of token:t admitted until the first refusal."""
    for n in range(most):
        if control.api_request("token:t", limit, IP, ACCOUNT):
            return n
    return most


def test_one_process_refuses_exactly_at_the_limit_and_the_table_has_every_request(
        tmp_path: Path) -> None:
    _, one, two = processes(tmp_path)
    assert admitted(one, 10) == 10
    assert admitted(two, 10) == 0  # the refusal told the table of the batch


def test_requests_admitted_in_memory_reach_the_table_within_the_batch_time(
        tmp_path: Path) -> None:
    clock, one, two = processes(tmp_path)
    for _ in range(5):
        assert one.api_request("token:t", 10, IP, ACCOUNT) == 0
    clock.advance(API_BATCH_SECONDS)  # the flush one scheduled at its first batched request
    assert admitted(two, 10) == 5


def test_without_a_timer_the_next_request_after_the_batch_time_tells_the_table(
        tmp_path: Path) -> None:
    clock, one, two = processes(tmp_path, timer=False)
    for _ in range(5):
        assert one.api_request("token:t", 10, IP, ACCOUNT) == 0
    clock.advance(API_BATCH_SECONDS)
    assert one.api_request("token:t", 10, IP, ACCOUNT) == 0
    assert admitted(two, 10) == 4


def test_the_batch_is_told_to_the_table_at_its_last_request(tmp_path: Path) -> None:
    _, one, two = processes(tmp_path, timer=False)
    limit = 2 * API_BATCH_REQUESTS + 10
    for _ in range(API_BATCH_REQUESTS + 1):  # the first alone, then one batch
        assert one.api_request("token:t", limit, IP, ACCOUNT) == 0
    assert admitted(two, limit) == limit - API_BATCH_REQUESTS - 1


def test_flush_forgets_idle_credentials(tmp_path: Path) -> None:
    clock, one, _ = processes(tmp_path)
    one.api_request("token:t", 10, IP, ACCOUNT)
    one.api_request("token:t", 10, IP, ACCOUNT)
    clock.advance(API_BATCH_SECONDS)  # flushes the second
    clock.advance(API_BATCH_SECONDS)
    one.flush_api_counts()
    assert one._api == {}


def test_a_lock_out_by_another_process_applies_within_the_batch_time(
        tmp_path: Path) -> None:
    clock, one, two = processes(tmp_path, login_failures=3)
    assert not one.locked_until(IP, cached=True)
    for _ in range(3):
        two.login_failed("imap", IP)
    assert two.locked_until(IP)
    assert one.locked_until(IP) > 0  # uncached lookups (every other service) at once
    clock.advance(API_BATCH_SECONDS - 0.5)
    assert not one.locked_until(IP, cached=True)  # the remembered "not locked"
    clock.advance(0.5)
    assert one.locked_until(IP, cached=True) > 0


def test_this_process_failures_and_lock_outs_apply_at_once(tmp_path: Path) -> None:
    _, one, two = processes(tmp_path, login_failures=3)
    assert not one.locked_until(IP, cached=True)
    for _ in range(2):
        two.login_failed("imap", IP)
    one.login_failed("api", IP)  # the third, here: locked out, and seen so at once
    assert one.locked_until(IP, cached=True) > 0
    # An IPv6 lock-out covers the /64: another address of it seen before is not reused.
    other, locked = "2001:db8::1", "2001:db8::2"
    assert not one.locked_until(other, cached=True)
    for _ in range(3):
        one.login_failed("api", locked)
    assert one.locked_until(other, cached=True) > 0


def test_a_lock_out_is_never_remembered_so_an_unban_applies_at_once(
        tmp_path: Path) -> None:
    _, one, two = processes(tmp_path)
    two.ban(IP, 600)
    assert one.locked_until(IP, cached=True) > 0
    assert two.unban(IP)
    assert not one.locked_until(IP, cached=True)
