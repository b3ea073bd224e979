"""app/balance.py: a process holding more sessions than the least busy one stops
accepting until the others catch up; the least busy one always accepts."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from mailserver.app.balance import (
    ABSENT,
    RECHECK,
    SessionBalancer,
    mark_absent,
    sessions_path,
)


class Port:
    """What the balancer uses of a listening port: whether it reads."""

    def __init__(self) -> None:
        self.reading = True

    def startReading(self) -> None:  # noqa: N802 - Twisted's name
        self.reading = True

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        self.reading = False


def pair(tmp_path: Path) -> tuple[SessionBalancer, Port, SessionBalancer, Port, Clock]:
    clock = Clock()
    path = sessions_path(tmp_path)
    port0, port1 = Port(), Port()
    zero = SessionBalancer(path, 0, lambda: [("smtp", port0)], fresh=True, clock=clock)
    one = SessionBalancer(path, 1, lambda: [("smtp", port1)], clock=clock)
    return zero, port0, one, port1, clock


def test_a_busier_process_defers_until_the_other_catches_up(tmp_path: Path) -> None:
    zero, port0, one, port1, clock = pair(tmp_path)
    zero.changed(1)
    assert port0.reading, "1 vs 0 is within the slack"
    zero.changed(2)
    assert not port0.reading, "2 vs 0: leave the next connection to the other process"
    assert port1.reading, "the least busy process never defers"
    one.changed(1)
    assert not port0.reading, "2 vs 1 is within the slack, but process 0 looks again later"
    clock.advance(RECHECK)
    assert port0.reading
    assert zero.others() == [1] and one.others() == [2]


def test_a_session_ending_resumes_at_once(tmp_path: Path) -> None:
    zero, port0, _one, _port1, _clock = pair(tmp_path)
    zero.changed(3)
    assert not port0.reading
    zero.changed(1)
    assert port0.reading


def test_processes_not_running_are_left_out(tmp_path: Path) -> None:
    """A worker not started yet, or dead (the supervisor marks it), holds no sessions
    that others should wait for: they accept whatever their own count."""
    clock = Clock()
    path = sessions_path(tmp_path)
    port0 = Port()
    zero = SessionBalancer(path, 0, lambda: [("smtp", port0)], fresh=True, clock=clock)
    zero.changed(40)
    assert port0.reading, "no other process is running"
    one = SessionBalancer(path, 1, lambda: [], clock=clock)
    zero.changed(41)
    assert not port0.reading, "the new worker (0 sessions) takes the next ones"
    mark_absent(path, 1)
    clock.advance(RECHECK)
    assert port0.reading, "the worker died: process 0 accepts again"
    assert one.others() == [41]


def test_a_stopped_process_says_it_is_gone(tmp_path: Path) -> None:
    zero, port0, one, _port1, _clock = pair(tmp_path)
    one.startService()
    one.changed(0)
    zero.changed(5)
    assert not port0.reading
    one.stopService()
    one.changed(0)  # its last sessions end after the stop: no longer counted
    assert zero.others() == []
    zero.changed(5)
    assert port0.reading


def test_the_supervisor_hold_wins_over_the_balance(tmp_path: Path) -> None:
    zero, port0, _one, _port1, _clock = pair(tmp_path)
    zero.hold(True)
    assert not port0.reading, "workers still starting"
    zero.changed(0)
    assert not port0.reading
    zero.hold(False)
    assert port0.reading


def test_thousands_of_sessions_get_more_slack(tmp_path: Path) -> None:
    zero, port0, one, _port1, _clock = pair(tmp_path)
    one.changed(1600)
    zero.changed(1700)
    assert port0.reading, "100 above 1,600 is within a sixteenth"
    zero.changed(1702)
    assert not port0.reading


def test_a_fresh_file_starts_every_slot_absent(tmp_path: Path) -> None:
    path = sessions_path(tmp_path)
    path.write_bytes(b"\x07" * 12)  # a stale or short file from an older run
    zero = SessionBalancer(path, 0, lambda: [], fresh=True, clock=Clock())
    data = path.read_bytes()
    assert len(data) == 256
    assert data[:4] == b"\0\0\0\0"
    assert data[4:] == ABSENT.to_bytes(4, "little") * 63
    assert zero.others() == []


def test_a_listener_only_this_process_has_never_waits(tmp_path: Path) -> None:
    """A listener a reload added is served by the twistd process alone (workers keep
    the sockets they inherited): deferring would leave its clients in the backlog."""
    clock = Clock()
    path = sessions_path(tmp_path)
    smtp, added = Port(), Port()
    zero = SessionBalancer(path, 0, lambda: [("smtp", smtp), ("pop3", added)], fresh=True,
                           clock=clock)
    zero.shared = {"smtp"}
    SessionBalancer(path, 1, lambda: [], clock=clock)
    zero.changed(5)
    assert not smtp.reading, "the worker takes the next SMTP sessions"
    assert added.reading, "nobody else accepts on the added listener"
    zero.hold(True)
    assert not added.reading, "the supervisor's hold covers every listener"
    zero.hold(False)
    zero.changed(0)
    assert smtp.reading and added.reading
