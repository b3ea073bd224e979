"""Sessions, not just accepts, spread over the server processes (`processes` > 1).

Every process polls the same listening sockets and whichever runs first accepts; one
accept per wake-up (listeners.accept_one_at_a_time) spreads the accepts, but not the
sessions: a process whose sessions last (IMAP IDLE, a slow sender) goes on taking its
share of new ones while another's sessions end, and the first process to wake after a
burst takes most of it. So each process publishes its number of live sessions in
data_dir/run/sessions, a shared memory map with one 4-byte slot per instance, and a
process holding more than the least busy other one (plus a little slack) stops reading
its listening sockets. The kernel keeps the connections in the one shared backlog, where
the others accept them. It looks again when one of its sessions ends and every RECHECK
seconds while it defers.

Some process always accepts: the least busy one never defers. A slot of a process that
is not running holds ABSENT and is left out: a worker writes its count when it starts
and ABSENT when it stops; the supervisor writes ABSENT for one that died. Slots are
written by their owner only and read without a lock: a torn read (there is none for
an aligned 4-byte word on the platforms we run on) would only misplace one session.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.application import service
from twisted.internet import reactor
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Slots in the file: `processes` is at most 64 (config.py).
SLOTS = 64
#: A slot's value while its process is not running.
ABSENT = 0xFFFFFFFF
#: Seconds between two looks while this process defers.
RECHECK = 0.05
_WORD = struct.Struct("=I")


def sessions_path(run_dir: Path) -> Path:
    return run_dir / "sessions"


def slack(least: int) -> int:
    """Sessions a process may hold above the least busy one and still accept: 1 (two
    processes then differ by 2 at most), a sixteenth more for thousands of sessions, so
    that a process does not stop and start reading at every session that ends."""
    return 1 + least // 16


class SessionBalancer(service.Service):
    """This process's slot, and whether it should accept now; stopping the service
    leaves the slot ABSENT."""

    def __init__(self, path: Path, instance: int,
                 ports: Callable[[], Iterable[tuple[str, object]]],
                 fresh: bool = False, clock: IReactorTime | None = None) -> None:
        """`fresh` (the twistd process, before any worker starts): every slot ABSENT.
        `ports`: (service name, listening port) of this process now (a reload changes
        them)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        try:
            if fresh or os.fstat(fd).st_size != SLOTS * _WORD.size:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, SLOTS * _WORD.size)
                os.pwrite(fd, _WORD.pack(ABSENT) * SLOTS, 0)
            self.map = mmap.mmap(fd, SLOTS * _WORD.size)
        finally:
            os.close(fd)
        self.instance = instance
        self.ports = ports
        self.clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self.sessions = 0
        #: Accepting is held off by the supervisor until the workers are ready.
        self.held = False
        self.deferring = False
        self.accepting = True
        self._recheck: IDelayedCall | None = None
        self.closed = False
        #: The services other processes accept on too (the supervisor sets it to those
        #: its workers inherited); None: all. A listener a reload added is the twistd
        #: process's alone, so deferring on it would leave its clients waiting.
        self.shared: set[str] | None = None
        self._write(0)

    def _write(self, value: int) -> None:
        _WORD.pack_into(self.map, self.instance * _WORD.size, value)

    def others(self) -> list[int]:
        """The live session counts of the other running processes."""
        counts = [v for (v,) in _WORD.iter_unpack(self.map)]
        return [v for i, v in enumerate(counts) if i != self.instance and v != ABSENT]

    def changed(self, sessions: int) -> None:
        """This process now has `sessions` live sessions (every listener together)."""
        self.sessions = sessions
        if self.closed:  # stopping: its last sessions end, it takes no new ones
            return
        self._write(sessions)
        self._decide()

    def hold(self, on: bool) -> None:
        """The supervisor's switch: no accepting at all while on (workers starting)."""
        self.held = on
        self._apply()

    def _decide(self) -> None:
        others = self.others()
        least = min(others, default=self.sessions)
        self.deferring = self.sessions > least + slack(least)
        if self.deferring and (self._recheck is None or not self._recheck.active()):
            self._recheck = self.clock.callLater(RECHECK, self._look_again)
        self._apply()

    def _look_again(self) -> None:
        self._recheck = None
        self._decide()

    def _apply(self) -> None:
        """Every port reads unless held, or unless we defer and others accept on it
        too. (start/stopReading on a port already so is a set lookup, no syscall.)"""
        self.accepting = not self.held and not self.deferring
        for name, port in self.ports():
            shared = self.shared is None or name in self.shared
            if self.held or (self.deferring and shared):
                port.stopReading()  # type: ignore[attr-defined]
            else:
                port.startReading()  # type: ignore[attr-defined]

    def sync_ports(self) -> None:
        """Ports opened by a reload start reading: make them agree with us."""
        self._apply()

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        """This process stops: leave it out of the others' minimum."""
        service.Service.stopService(self)
        if self._recheck is not None and self._recheck.active():
            self._recheck.cancel()
        self._recheck = None
        self.closed = True
        self._write(ABSENT)


def mark_absent(path: Path, instance: int) -> None:
    """A worker died without closing its slot (the supervisor's part)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        if instance < SLOTS:
            os.pwrite(fd, _WORD.pack(ABSENT), instance * _WORD.size)
    finally:
        os.close(fd)
