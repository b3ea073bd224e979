"""A reload cannot add tls-alpn-01 to a server running several processes: with the
default `processes = 0` that challenge means one process, which takes a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from mailserver.app.reload import LoadedConfig, Reloader, ReloadTargets, process_count_problem
from mailserver.config import config_from_dict

ALPN = {"directory": "https://ca.test/dir", "challenge": "tls-alpn-01"}


@pytest.fixture(autouse=True)
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})


def test_adding_tls_alpn_to_two_processes_is_refused(tmp_path: Path) -> None:
    old = config_from_dict({"data_dir": str(tmp_path)})
    new = config_from_dict({"data_dir": str(tmp_path), "acme": ALPN})
    assert (old.process_count, new.process_count) == (2, 1)
    assert process_count_problem(old, new) == (
        "acme.challenge: tls-alpn-01 needs one process and this server runs 2: "
        "set processes = 1 and restart")


def test_what_the_running_processes_can_honour_is_not_refused(tmp_path: Path) -> None:
    one = config_from_dict({"data_dir": str(tmp_path), "processes": 1})
    assert process_count_problem(
        one, config_from_dict({"data_dir": str(tmp_path), "processes": 1, "acme": ALPN})) is None
    default = config_from_dict({"data_dir": str(tmp_path)})
    http = config_from_dict({"data_dir": str(tmp_path),
                             "acme": {**ALPN, "challenge": "http-01"}})
    assert process_count_problem(default, http) is None
    # Dropping tls-alpn-01 (1 -> 2 processes) or changing `processes` waits for a
    # restart like every restart key (logged), not refused.
    alpn = config_from_dict({"data_dir": str(tmp_path), "acme": ALPN})
    assert process_count_problem(alpn, default) is None
    assert process_count_problem(default, one) is None


def test_the_reloader_refuses_it_and_keeps_the_config(tmp_path: Path) -> None:
    old = config_from_dict({"data_dir": str(tmp_path)})
    new = config_from_dict({"data_dir": str(tmp_path), "acme": ALPN})

    class Untouchable:
        def swap(self, tls: object) -> None:
            raise AssertionError("a refused reload swaps nothing")

    applied: list[object] = []
    reloader = Reloader(old, ReloadTargets(tls=Untouchable(),  # type: ignore[arg-type]
                                           apply_listeners=applied.append),
                        record=False)
    errors: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_level") == LogLevel.error:
            errors.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
    try:
        reloader._apply(LoadedConfig(new, None), 0.0)  # type: ignore[arg-type]
    finally:
        globalLogPublisher.removeObserver(observe)  # type: ignore[arg-type]
    assert reloader.config is old and applied == []
    assert errors == [
        "reload refused: acme.challenge: tls-alpn-01 needs one process and this server "
        "runs 2: set processes = 1 and restart",
        "reload refused: the previous config stays in force"]
