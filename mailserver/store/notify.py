"""Telling IDLE sessions that a folder changed on disk (RFC 2177), cheaply.

One watch per folder, shared by every session of the process watching it: thousands of
IDLE connections on one mailbox cost one inotify watch pair (new/ and cur/) and a set
of callbacks. Events are coalesced: the first one of a burst schedules a single round
of callbacks a few milliseconds later (a delivery is a link into new/ plus, soon after,
a session's rename into cur/: one wake-up, not three). Callbacks run in the reactor
thread; they should only schedule work (the session then syncs in a disk thread).

Linux has inotify (twisted.internet.inotify); elsewhere, or when the kernel refuses a
watch (max_user_watches), the folder is polled once a second: two stat() calls, run on
the reactor thread because they are cheap and only a timer tick apart.

In cluster mode (store/sharedfs.py: several nodes over NFS) inotify sees only this
machine's changes, so a watched folder is also polled every RESCAN_SECONDS, beside
inotify: another node's delivery reaches IDLE within that (plus the network file
system's attribute cache, which a cluster mount turns off). There the two stat() calls
run in a thread: an NFS server that stalls must not stall the reactor, and a tick
whose previous stat has not returned is skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.filepath import FilePath

from mailserver.logs import logger
from mailserver.store import sharedfs

log = logger(__name__)

#: Delay between the first event of a burst and the callbacks.
COALESCE_SECONDS = 0.005
POLL_SECONDS = 1.0
#: Cluster mode: the timed rescan beside inotify (IDLE sees another node's changes).
RESCAN_SECONDS = 2.0

try:  # pragma: no cover - platform dependent
    from twisted.internet import inotify as _inotify

    _MASK = (_inotify.IN_CREATE | _inotify.IN_MOVED_TO | _inotify.IN_MOVED_FROM
             | _inotify.IN_DELETE | _inotify.IN_DELETE_SELF | _inotify.IN_MOVE_SELF)
except ImportError:  # pragma: no cover
    _inotify = None  # type: ignore[assignment]
    _MASK = 0


class _FolderWatch:
    """The callbacks of one folder and the one mechanism that triggers them."""

    def __init__(self, path: Path, clock: IReactorTime, poll_seconds: float,
                 rescan_seconds: float | None = None) -> None:
        self.path = path
        self.clock = clock
        self.poll_seconds = poll_seconds
        #: Poll beside inotify this often, stat()ing in a thread (cluster mode).
        self.rescan_seconds = rescan_seconds
        self._checking = False
        self._rescanned = False
        self._racy = False
        self.callbacks: dict[int, Callable[[], None]] = {}
        self._pending: IDelayedCall | None = None
        self._watched: list[FilePath[str]] = []
        self._poll: LoopingCall | None = None
        self._stamp: tuple[int, ...] | None = None

    def start(self, notifier: Any | None) -> None:
        if notifier is not None:
            try:
                for sub in ("new", "cur"):
                    fp = FilePath(os.fspath(self.path / sub))
                    notifier.watch(fp, mask=_MASK, callbacks=[self._event])
                    self._watched.append(fp)
                if self.rescan_seconds is None:
                    return
            except Exception as e:  # noqa: BLE001 - ENOSPC (watch limit), ENOENT...
                log.info("inotify unavailable for {path} ({error}): polling",
                         path=str(self.path), error=str(e))
                self._unwatch(notifier)
        if self.rescan_seconds is not None:
            self._poll = LoopingCall(self._check_in_thread)
            interval = self.rescan_seconds if self._watched else min(
                self.poll_seconds, self.rescan_seconds)
        else:
            self._stamp = self._dir_stamp()
            self._poll = LoopingCall(self._check)
            interval = self.poll_seconds
        self._poll.clock = self.clock
        self._poll.start(interval, now=self.rescan_seconds is not None)

    def stop(self, notifier: Any | None) -> None:
        self._unwatch(notifier)
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()

    def _unwatch(self, notifier: Any | None) -> None:
        if notifier is None:
            self._watched = []
            return
        for fp in self._watched:
            try:
                notifier.ignore(fp)
            except KeyError:
                pass
        self._watched = []

    def _dir_stamp(self) -> tuple[int, ...] | None:
        try:
            a = os.stat(self.path / "new")
            b = os.stat(self.path / "cur")
        except OSError:
            return None
        return (a.st_ino, a.st_mtime_ns, a.st_size, b.st_ino, b.st_mtime_ns, b.st_size)

    def _check(self) -> None:
        stamp = self._dir_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self.changed()

    def _check_in_thread(self) -> None:
        if self._checking:
            return  # the last stat has not come back (a stalled server): skip a tick
        self._checking = True
        d = threads.deferToThread(self._dir_stamp)

        def done(stamp: tuple[int, ...] | None) -> None:
            self._checking = False
            if self._poll is None or not self._poll.running:
                return
            # The first result wakes the sessions once (they sync and find nothing, or
            # a change made between their last sync and this watch): none is missed.
            # So does every tick while the last stamp was racy (see _is_racy).
            if not self._rescanned or stamp != self._stamp or self._racy:
                self.changed()
            self._rescanned, self._stamp = True, stamp
            self._racy = _is_racy(stamp)

        def failed(_failure: object) -> None:
            self._checking = False

        d.addCallbacks(done, failed)

    def _event(self, _watch: object, _path: object, _mask: int) -> None:
        self.changed()

    def changed(self) -> None:
        if self._pending is None or not self._pending.active():
            self._pending = self.clock.callLater(COALESCE_SECONDS, self._fire)

    def _fire(self) -> None:
        self._pending = None
        for callback in list(self.callbacks.values()):
            try:
                callback()
            except Exception:  # noqa: BLE001 - one session's bug must not starve others
                log.failure("watch callback failed for {path}", path=str(self.path))


#: A directory changed this recently may change again within its mtime's granularity.
RACY_SECONDS = 3.0


def _is_racy(stamp: tuple[int, ...] | None) -> bool:
    """Whether a change could hide behind an equal stamp: sshfs reports whole-second
    mtimes (SFTP v3) and a directory's inode and size rarely change, so a delivery in
    the same second as the stamp leaves it as it was. Until the newer mtime is
    RACY_SECONDS old (by our clock: node clocks must agree to a second, NTP), every
    tick wakes the sessions, which sync and usually find nothing (git's "racy
    index" rule)."""
    if stamp is None:
        return False
    return time.time() - max(stamp[1], stamp[4]) / 1e9 < RACY_SECONDS


class Notifier:
    """The process's folder watches (one per folder) over one inotify descriptor."""

    def __init__(self, clock: IReactorTime | None = None, use_inotify: bool = True,
                 poll_seconds: float = POLL_SECONDS,
                 rescan_seconds: float | None = None) -> None:
        self.poll_seconds = poll_seconds
        #: The timed rescan beside inotify; None: RESCAN_SECONDS in cluster mode only.
        self.rescan_seconds = rescan_seconds
        self.clock: IReactorTime = clock if clock is not None else _reactor  # type: ignore[assignment]
        self._use_inotify = use_inotify and _inotify is not None
        self._inotify: Any | None = None
        self._watches: dict[Path, _FolderWatch] = {}
        self._next_id = 0

    def _notifier(self) -> Any | None:
        if not self._use_inotify:
            return None
        if self._inotify is None:
            try:
                notifier = _inotify.INotify(reactor=self.clock)
                notifier.startReading()
            except Exception as e:  # noqa: BLE001 - no inotify here
                log.info("inotify unavailable ({error}): polling folders", error=str(e))
                self._use_inotify = False
                return None
            self._inotify = notifier
        return self._inotify

    def watch(self, path: Path, callback: Callable[[], None]) -> Callable[[], None]:
        watch = self._watches.get(path)
        if watch is None:
            rescan = self.rescan_seconds
            if rescan is None and sharedfs.shared() is not None:
                rescan = RESCAN_SECONDS
            watch = self._watches[path] = _FolderWatch(path, self.clock, self.poll_seconds,
                                                       rescan)
            watch.start(self._notifier())
        self._next_id += 1
        key = self._next_id
        watch.callbacks[key] = callback

        def stop() -> None:
            if watch.callbacks.pop(key, None) is None:
                return
            if not watch.callbacks and self._watches.get(path) is watch:
                del self._watches[path]
                watch.stop(self._inotify)
                if not self._watches:
                    self.close()

        return stop

    def close(self) -> None:
        """Close the inotify descriptor once nothing is watched (tests need a clean
        reactor; a server with no IDLE session holds no descriptor)."""
        for watch in list(self._watches.values()):
            watch.stop(self._inotify)
        self._watches.clear()
        if self._inotify is not None:
            self._inotify.loseConnection()
            self._inotify = None

    @property
    def watched_folders(self) -> int:
        return len(self._watches)


_default: Notifier | None = None


def default_notifier() -> Notifier:
    global _default
    if _default is None:
        _default = Notifier()
    return _default


def watch(path: Path, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` (reactor thread, coalesced) after changes in the folder at `path`."""
    return default_notifier().watch(path, callback)


def reset_default_notifier() -> None:
    """Drop every watch of the process's notifier and close its inotify descriptor.

    For test harnesses: a session that was never disconnected keeps its watch, and the
    inotify reader then leaves trial's reactor "unclean" for the tests that follow.
    """
    global _default
    if _default is not None:
        _default.close()
        _default = None
