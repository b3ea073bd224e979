"""A worker that cannot be started (the service user may not run this Python): one
log line, and the twistd process serves alone instead of never accepting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import reactor
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

from mailserver.app import workers
from mailserver.app.balance import SessionBalancer, sessions_path
from mailserver.config import config_from_dict


class Port:
    def __init__(self) -> None:
        self.reading = True
        self.numberAccepts = 100

    def fileno(self) -> int:
        return 99

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        pass

    def startReading(self) -> None:  # noqa: N802 - Twisted's name
        self.reading = True

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        self.reading = False


class Listener:
    service_name = "smtp"

    def __init__(self) -> None:
        self.port = Port()


@pytest.fixture
def errors() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.error:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    yield seen
    globalLogPublisher.removeObserver(cast(ILogObserver, observe))


def test_a_worker_that_cannot_start_leaves_the_server_accepting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errors: list[str]) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reactor, "spawnProcess", refuse)
    monkeypatch.setattr(workers.sys, "executable", "/opt/py/bin/python")
    config = config_from_dict({"data_dir": str(tmp_path), "processes": 2})
    listener = Listener()
    balancer = SessionBalancer(sessions_path(tmp_path), 0, lambda: [("smtp", listener.port)],
                               fresh=True)
    supervisor = workers.WorkerSupervisor(config, [listener], balancer)  # type: ignore[list-item]
    supervisor.startService()
    try:
        assert listener.port.reading, "accepting at once, not after READY_TIMEOUT"
        assert supervisor.workers == {}
        assert errors == ["worker 1: cannot start /opt/py/bin/python: Permission denied; "
                          "serving with fewer processes"]
        assert balancer.others() == [], "the worker that never ran is left out"
    finally:
        supervisor.stopService()
        balancer.stopService()
