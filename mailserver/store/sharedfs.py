"""The store on a file system several nodes share (cluster mode: cluster.node is set).

One node (the default) changes nothing here: locks stay flock(2), caches stay beside the
Maildir. In cluster mode (docs/decisions/0039):

- Locks are dotlocks: a file made with O_CREAT|O_EXCL, which is atomic over NFSv3+ and
  over SFTP (sshfs), where flock(2) is local to one machine: two nodes could each "hold"
  an flock and give one UID to two messages. The file holds "node pid time nonce". It is
  refreshed (its mtime touched) while held, by one thread per process, so a waiter that
  sees it unchanged for `stale_seconds` of its own monotonic clock takes it over (no
  clock comparison between machines: the holder died, or its node is gone). A lock of
  this node whose pid no longer runs is taken over at once. A takeover renames the stale
  file aside and checks that what it moved is what it judged stale (else it links it
  back), so two waiters breaking one stale lock cannot both win. Dovecot takes the same
  approach for dovecot-uidlist.lock on NFS (lib/file-dotlock.c).
- The SQLite caches (store/index.py, store/modseq.py) live under cache_dir, a node-local
  directory mirroring the Maildir tree: SQLite's own locking does not work over sshfs and
  most NFS setups, and a cache is per node anyway.
- New Maildir file names carry the node's name (maildir.unique_name's host part).

Everything here is blocking file-system work: callers are in disk threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mailserver.logs import logger

if TYPE_CHECKING:
    from mailserver.config import Config

log = logger(__name__)

#: A dotlock not refreshed for this long (seen unchanged by a waiter) is taken over.
STALE_SECONDS = 30.0
#: Suffix of a dotlock beside the file it guards.
DOTLOCK_SUFFIX = ".dotlock"


@dataclass(frozen=True)
class SharedStore:
    """How this process uses the shared tree (set once at start-up by `configure`)."""

    node: str
    mail_dir: Path
    cache_dir: Path
    stale_seconds: float = STALE_SECONDS


_shared: SharedStore | None = None


def configure(shared: SharedStore | None) -> None:
    """Cluster mode on (or off with None) for this process; the server and the admin
    commands call it after loading the config, before touching the store."""
    global _shared
    _shared = shared


def configure_from(config: Config) -> None:
    """Cluster mode as `config` says: on when cluster.node is set."""
    cluster = config.cluster
    configure(SharedStore(
        node=cluster.node, mail_dir=config.mail_dir,
        cache_dir=cluster.cache_dir or config.data_dir / "cache",
        stale_seconds=float(cluster.lock_timeout)) if cluster.node else None)


def node_host(hostname: str) -> str:
    """The host part of new Maildir file names: `hostname`, with the node's name
    before it in cluster mode (nodes often share one configured hostname)."""
    return f"{_shared.node}.{hostname}" if _shared is not None else hostname


def shared() -> SharedStore | None:
    """The cluster settings, or None on one node."""
    return _shared


# --------------------------------------------------------------------------- node-local

#: File system types whose files other machines share (/proc/self/mountinfo names).
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "ceph", "glusterfs",
                        "fuse.glusterfs", "9p", "afs", "lustre", "gpfs", "fuse.s3fs"})


def network_fs(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the network file system `path` lies on, or None (local, or unknown:
    no /proc). The abuse table (an mmap), the queue and SQLite need a local one."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or not tail:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, tail[0]
    return best_type if best_type in NETWORK_FS else None


def check_local(config: Config) -> list[str]:
    """In cluster mode, data_dir and cluster.cache_dir must be node-local disk."""
    if not config.cluster.node:
        return []
    problems = []
    cache = config.cluster.cache_dir or config.data_dir / "cache"
    for key, path in (("data_dir", config.data_dir), ("cluster.cache_dir", cache)):
        kind = network_fs(path)
        if kind is not None:
            problems.append(f"{key}: {path} is on a network file system ({kind}); each "
                            f"node's own disk is needed (queue, abuse table, SQLite)")
    return problems


# --------------------------------------------------------------------------- caches


def cache_path(folder: Path, name: str) -> Path:
    """Where the cache file `name` of the Maildir folder `folder` lives: beside it on
    one node; in cluster mode under cache_dir, at the folder's path below mail_dir."""
    if _shared is None:
        return folder / name
    try:
        relative = folder.relative_to(_shared.mail_dir)
    except ValueError:  # a folder outside the shared tree (an import's work directory)
        return folder / name
    return _shared.cache_dir / relative / name


def prepare_cache(folder: Path, path: Path) -> bool:
    """Make the cache file's directory if the folder exists; False if it does not (a
    folder deleted meanwhile gets no cache)."""
    if not folder.is_dir():
        return False
    if path.parent != folder:
        try:
            os.makedirs(path.parent, 0o700, exist_ok=True)
        except OSError as e:
            log.warn("cache directory {path}: {error}; working without the cache",
                     path=str(path.parent), error=e.strerror or str(e))
            return False
    return True


# --------------------------------------------------------------------------- locks


@contextlib.contextmanager
def exclusive(flock_path: Path) -> Iterator[None]:
    """Hold the lock of `flock_path` for the block: an flock of that file on one node,
    a dotlock beside it (`<flock_path>.dotlock`) in cluster mode."""
    if _shared is None:
        fd = os.open(flock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
        return
    with dotlocked(dotlock_path(flock_path)):
        yield


def dotlock_path(path: Path) -> Path:
    return path.with_name(path.name + DOTLOCK_SUFFIX)


@contextlib.contextmanager
def dotlocked_if_shared(path: Path) -> Iterator[bool]:
    """In cluster mode hold the dotlock of `path` (True); on one node do nothing (False:
    the caller flocks as before)."""
    if _shared is None:
        yield False
        return
    with dotlocked(dotlock_path(path)):
        yield True


@contextlib.contextmanager
def dotlocked(path: Path) -> Iterator[None]:
    lock = DotLock(path)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class LockBusy(Exception):
    """A non-blocking acquire found the lock held."""


@dataclass(frozen=True)
class _Seen:
    ino: int
    mtime_ns: int
    content: bytes


class DotLock:
    """One dotlock file. `acquire` blocks (or raises LockBusy with wait=False);
    `release` is idempotent."""

    def __init__(self, path: Path, node: str | None = None,
                 stale_seconds: float | None = None) -> None:
        self.path = path
        self.node = node or (_shared.node if _shared else os.uname().nodename)
        self.stale_seconds = (stale_seconds if stale_seconds is not None
                              else _shared.stale_seconds if _shared else STALE_SECONDS)
        self._content: bytes | None = None

    @property
    def held(self) -> bool:
        return self._content is not None

    def acquire(self, wait: bool = True) -> None:
        delay = 0.001
        seen: _Seen | None = None
        seen_at = time.monotonic()
        while True:
            content = b"%s %d %d %s\n" % (self.node.encode(), os.getpid(), time.time_ns(),
                                          secrets.token_hex(8).encode())
            try:
                fd = _create_exclusive(self.path)
            except FileExistsError:
                now = _look(self.path)
                if now is None:
                    continue  # released meanwhile: try again at once
                if now != seen:
                    seen, seen_at = now, time.monotonic()
                if self._dead(now, time.monotonic() - seen_at, wait):
                    self._break(now)
                    continue
                if not wait:
                    raise LockBusy(str(self.path)) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            self._content = content
            _refresher.add(self)
            return

    def _dead(self, seen: _Seen, unchanged_for: float, wait: bool) -> bool:
        """Whether the lock's holder is gone: a process of this node that no longer
        runs, or no refresh for stale_seconds (watched by us; without waiting, judged by
        the mtime against our clock, with twice the margin for clock differences)."""
        fields = seen.content.split()
        if len(fields) == 4 and fields[0].decode(errors="replace") == self.node:
            pid = int(fields[1]) if fields[1].isdigit() else 0
            if pid and pid != os.getpid() and not _alive(pid):
                return True
        if unchanged_for >= self.stale_seconds:
            return True
        return not wait and time.time() - seen.mtime_ns / 1e9 > 2 * self.stale_seconds

    def _break(self, seen: _Seen) -> None:
        """Take the stale lock away: rename it aside (atomic: of two breakers one gets
        it), then check it is the one judged stale; a fresh lock moved by mistake (its
        maker came between our look and our rename) is linked back."""
        aside = self.path.with_name(f"{self.path.name}.stale.{secrets.token_hex(6)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = _look(aside)
            if moved is not None and moved.content != seen.content:
                try:
                    os.link(aside, self.path)
                except OSError:
                    log.error("dotlock {path}: a live lock was broken by a takeover race",
                              path=str(self.path))
                return
            log.warn("dotlock {path}: took over a stale lock ({holder})",
                     path=str(self.path),
                     holder=seen.content.decode(errors="replace").strip() or "unreadable")
        finally:
            try:
                os.unlink(aside)
            except FileNotFoundError:
                pass
            except OSError:  # not a file (a directory planted there): left aside
                log.warn("dotlock {path}: left {aside} aside", path=str(self.path),
                         aside=str(aside))

    def refresh(self) -> None:
        """Touch the lock (waiters see it alive); a lock found taken over is logged."""
        content = self._content
        if content is None:
            return
        try:
            if _read(self.path) != content:
                log.error("dotlock {path} was taken over while held", path=str(self.path))
                return
            os.utime(self.path)
        except OSError as e:
            log.warn("dotlock {path}: refresh failed ({error})", path=str(self.path),
                     error=str(e))

    def release(self) -> None:
        content, self._content = self._content, None
        if content is None:
            return
        _refresher.discard(self)
        try:
            if _read(self.path) == content:
                os.unlink(self.path)
            else:
                log.error("dotlock {path} was taken over while held", path=str(self.path))
        except FileNotFoundError:
            log.error("dotlock {path} vanished while held", path=str(self.path))


#: Exclusive creates refused with EPERM while no file is there, before EPERM is believed.
EPERM_TRIES = 10


def _create_exclusive(path: Path) -> int:
    """open(O_CREAT|O_EXCL), with sshfs's answer to a lost race made FileExistsError:
    SFTP v3 has no "exists" status, so sshfs reports the server's refusal of an
    exclusive create as EPERM (when the kernel's lookup just before saw no file).
    The holder may release the lock between that refusal and our look (the rig's
    3-node run saw it under load): no file then means try again; a real EPERM (no
    permission) persists through EPERM_TRIES tries."""
    for tries in range(1, EPERM_TRIES + 1):
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o600)
        except PermissionError:
            if os.path.lexists(path):
                raise FileExistsError(path) from None
            if tries == EPERM_TRIES:
                raise
    raise AssertionError("unreachable")


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(256)
    except FileNotFoundError:
        return None


def _look(path: Path) -> _Seen | None:
    """What is at the lock's path now; None if nothing. Anything but a file of ours
    (garbage, an empty file, a directory) is a lock of nobody's: stale once silent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    content = b""
    if stat.S_ISREG(st.st_mode):
        try:
            content = _read(path) or b""
        except OSError:
            pass
    return _Seen(st.st_ino, st.st_mtime_ns, content)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Refresher:
    """One daemon thread per process touching every held dotlock each third of its
    stale time (a POP3 session holds its lock for minutes; a uidlist append for ms)."""

    def __init__(self) -> None:
        self._held: set[DotLock] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def after_fork(self) -> None:
        """A forked child holds none of its parent's locks and has no refresh thread;
        its copy of our mutex may even be held (forked mid-tick)."""
        self._held = set()
        self._lock = threading.Lock()
        self._thread = None

    def add(self, lock: DotLock) -> None:
        with self._lock:
            self._held.add(lock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dotlock-refresh",
                                                daemon=True)
                self._thread.start()

    def discard(self, lock: DotLock) -> None:
        with self._lock:
            self._held.discard(lock)

    def _run(self) -> None:
        while True:
            with self._lock:
                held = list(self._held)
            default = _shared.stale_seconds if _shared else STALE_SECONDS
            interval = min((lock.stale_seconds for lock in held), default=default) / 3
            time.sleep(max(0.1, interval))
            for lock in held:
                if lock.held:
                    lock.refresh()


_refresher = _Refresher()
os.register_at_fork(after_in_child=_refresher.after_fork)
