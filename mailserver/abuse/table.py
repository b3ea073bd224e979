"""The counters of the abuse defences: one fixed-size table in a shared memory map.

Every worker process (docs/decisions/0004) maps the same file, data_dir/run/abuse.table,
so a guesser who lands on another process, or reconnects after a worker crashed, meets
the same counts (docs/decisions/0012 says why a map and not the parent process or
SQLite). The file is a header and `slots` records of SLOT bytes; a record is one key
(a client address, an account, a user) of one kind, with:

- a sliding-window counter: the count of the current fixed window and of the previous
  one, weighted by how much of the previous window still overlaps (the estimate nginx
  and Cloudflare use; exact enough for limits and 12 bytes instead of a list of times);
- `until`: a lock-out's end (seconds since the epoch), 0 for none;
- GAUGES concurrent-connection gauges, one per process instance, so a restarted worker
  can zero its own column (its connections died with it) without touching the others'.

Memory is bounded by construction: a key's slot is within PROBE slots of its hash; when
those are all taken, the one that expires soonest is reused (an approximate LRU that
never walks the table). Writes take one flock on the file (microseconds; a process
that dies holding it releases it), never fsync: the counters are worth keeping across a
worker crash, not across a power cut. All calls are synchronous and touch memory only:
the page cache backs the map, so they are safe on the reactor thread, and belong there:
flock excludes other processes, not other threads of this one.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailserver.address import client_address

MAGIC = b"MSABUSE1"
HEADER = struct.Struct("<8sII48x")  # magic, slots, slot size
#: kind, key type, key (16), expires, until, window index, current, previous, spare,
#: then GAUGES u16 gauges.
GAUGES = 14
SLOT = struct.Struct(f"<BBH16sIIIIII{GAUGES}H")
PROBE = 8

#: Key types: the 16 key bytes are a packed address (IPv4, IPv6 /64) or a digest.
KEY_IPV4, KEY_IPV6, KEY_NAME = 4, 6, 1


@dataclass(frozen=True)
class Key:
    kind: int
    type: int
    data: bytes

    def text(self) -> str:
        """The address a key stands for (names are digests: shown as such)."""
        if self.type == KEY_IPV4:
            return str(ipaddress.IPv4Address(self.data[:4]))
        if self.type == KEY_IPV6:
            return str(ipaddress.IPv6Network((self.data, 64)))
        return "#" + self.data.hex()[:12]


def ip_key(kind: int, ip: str) -> Key:
    """An IPv4 address is its own key; IPv6 counts per /64, the smallest prefix a
    site gets (RFC 6177), so an attacker cannot walk through 2**64 addresses."""
    address = client_address(ip)
    if address is None:
        return name_key(kind, ip)
    if isinstance(address, ipaddress.IPv4Address):
        return Key(kind, KEY_IPV4, address.packed + bytes(12))
    return Key(kind, KEY_IPV6, address.packed[:8] + bytes(8))


def name_key(kind: int, name: str) -> Key:
    """An account or user: case-insensitive, stored as a digest (no names on disk)."""
    digest = hashlib.blake2b(name.strip().lower().encode("utf-8", "replace"),
                             digest_size=16).digest()
    return Key(kind, KEY_NAME, digest)


@dataclass
class Record:
    key: Key
    expires: int
    until: int
    window: int
    current: int
    previous: int
    gauges: list[int]


class SharedTable:
    """The table file, mapped. `clock` returns seconds (float)."""

    def __init__(self, path: Path, slots: int, clock: object = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _same_owner_as_data_dir(path)
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = HEADER.size + slots * SLOT.size
            head = os.pread(fd, HEADER.size, 0)
            if len(head) == HEADER.size and HEADER.unpack(head)[:3] == (MAGIC, slots,
                                                                        SLOT.size):
                pass  # the table of a running (or earlier) server: keep its counts
            else:  # new, or another size: start afresh
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
                os.pwrite(fd, HEADER.pack(MAGIC, slots, SLOT.size), 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.slots = slots
        self._clock = clock

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def now(self) -> float:
        if self._clock is None:
            import time

            return time.time()
        return float(self._clock.seconds())  # type: ignore[attr-defined]

    # -- slots -----------------------------------------------------------------------------

    def _offset(self, index: int) -> int:
        return HEADER.size + (index % self.slots) * SLOT.size

    def _read(self, index: int) -> tuple[Any, ...]:
        return SLOT.unpack_from(self._map, self._offset(index))

    def _write(self, index: int, values: tuple[int | bytes, ...]) -> None:
        SLOT.pack_into(self._map, self._offset(index), *values)

    def _home(self, key: Key) -> int:
        return zlib.crc32(key.data, key.kind)

    def _find(self, key: Key, now: int, create: bool) -> tuple[int, tuple[Any, ...]] | None:
        """The slot of `key` (index, fields); with `create`, a fresh or reused slot."""
        home = self._home(key)
        victim, victim_expires = -1, 1 << 40
        for i in range(home, home + PROBE):
            fields = self._read(i)
            if fields[1] and fields[0] == key.kind and fields[1] == key.type \
                    and fields[3] == key.data:
                return i, fields
            live = fields[1] and (fields[4] >= now or any(fields[10:]))
            score = fields[4] + (1 << 34 if any(fields[10:]) else 0) if live else -1
            if score < victim_expires:
                victim, victim_expires = i, score
        if not create:
            return None
        fresh = (key.kind, key.type, 0, key.data, now, 0, 0, 0, 0, 0) + (0,) * GAUGES
        return victim, fresh

    def _locked(self) -> _Lock:
        return _Lock(self._fd)

    # -- operations --------------------------------------------------------------------------

    def hit(self, key: Key, window: int, amount: int = 1, limit: int | None = None,
            ttl: int = 0) -> tuple[bool, float]:
        """Add `amount` to the key's window count, unless that would pass `limit`
        (then nothing is added). Returns (added, the estimate after)."""
        now = self.now()
        with self._locked():
            index, fields = self._find(key, int(now), create=True)  # type: ignore[misc]
            widx, cur, prev = _roll(fields, now, window)
            estimate = cur + prev * (1 - (now % window) / window)
            if limit is not None and estimate + amount > limit:
                added = False
            else:
                cur += amount
                estimate += amount
                added = True
            expires = max(fields[4], int(now) + 2 * window, int(now) + ttl)
            self._write(index, (*fields[:4], expires, fields[5], widx, cur, prev,
                                fields[9], *fields[10:]))
        return added, estimate

    def count(self, key: Key, window: int) -> float:
        now = self.now()
        with self._locked():
            found = self._find(key, int(now), create=False)
        if found is None:
            return 0.0
        _widx, cur, prev = _roll(found[1], now, window)
        return cur + prev * (1 - (now % window) / window)

    def until(self, key: Key) -> int:
        """The end of the key's lock-out (0: none or over)."""
        now = int(self.now())
        with self._locked():
            found = self._find(key, now, create=False)
        if found is None or found[1][5] <= now:
            return 0
        return int(found[1][5])

    def set_until(self, key: Key, until: int) -> None:
        now = int(self.now())
        with self._locked():
            index, fields = self._find(key, now, create=True)  # type: ignore[misc]
            expires = max(fields[4], until)
            self._write(index, (*fields[:4], expires, until, *fields[6:]))

    def forget(self, key: Key) -> bool:
        with self._locked():
            found = self._find(key, int(self.now()), create=False)
            if found is None:
                return False
            self._write(found[0], (0, 0, 0, bytes(16), 0, 0, 0, 0, 0, 0) + (0,) * GAUGES)
        return True

    def gauge(self, key: Key, column: int, delta: int, limit: int | None = None
              ) -> tuple[bool, int]:
        """Add `delta` to this process's gauge unless the total would pass `limit`.
        Returns (added, the total after)."""
        column %= GAUGES
        now = int(self.now())
        with self._locked():
            index, fields = self._find(key, now, create=True)  # type: ignore[misc]
            gauges = list(fields[10:])
            total = sum(gauges)
            if limit is not None and delta > 0 and total + delta > limit:
                return False, total
            gauges[column] = max(0, min(0xFFFF, gauges[column] + delta))
            self._write(index, (*fields[:4], max(fields[4], now + 60), *fields[5:10],
                                *gauges))
            return True, sum(gauges)

    def greylist(self, key: Key, delay: int, retry_window: int, allow_for: int) -> bool:
        """One delivery attempt of a greylisting triplet: True to accept it.

        A new (or forgotten) triplet is deferred and remembered for `retry_window`; a
        retry after `delay` passes, and the triplet is then allowed for `allow_for`
        seconds from its last use (the `current` count marks it passed).
        """
        now = int(self.now())
        with self._locked():
            index, fields = self._find(key, now, create=True)  # type: ignore[misc]
            fresh = fields[4] < now or (fields[5] == 0 and fields[7] == 0)
            if fresh:
                self._write(index, (*fields[:4], now + retry_window, now + delay, 0, 0, 0,
                                    0, *fields[10:]))
                return False
            if fields[7] or now >= fields[5]:
                self._write(index, (*fields[:4], now + allow_for, fields[5], 0, 1, 0, 0,
                                    *fields[10:]))
                return True
            return False

    def reset_gauges(self, column: int | None = None) -> None:
        """A process (re)starts: the connections it counted are gone. None: all."""
        with self._locked():
            for i in range(self.slots):
                fields = self._read(i)
                if not fields[1] or not any(fields[10:]):
                    continue
                gauges = list(fields[10:])
                if column is None:
                    gauges = [0] * GAUGES
                else:
                    gauges[column % GAUGES] = 0
                self._write(i, (*fields[:10], *gauges))

    def records(self, kind: int) -> Iterator[Record]:
        """Every live record of `kind` (for `mailserver ban list`)."""
        now = int(self.now())
        with self._locked():
            found = [self._read(i) for i in range(self.slots)]
        for f in found:
            if f[1] and f[0] == kind and (f[4] >= now or f[5] > now):
                yield Record(Key(f[0], f[1], f[3]), f[4], f[5], f[6], f[7], f[8],
                             list(f[10:]))


def _same_owner_as_data_dir(path: Path) -> None:
    """An admin command run as root must not leave the server (its own user) a table
    it cannot open: give the file, and data_dir/run, the owner of data_dir."""
    if os.geteuid() != 0:
        return
    owner = os.stat(path.parent.parent)
    for target in (path.parent, path):
        st = os.stat(target)
        if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(target, owner.st_uid, owner.st_gid)


def _roll(fields: tuple[Any, ...], now: float, window: int) -> tuple[int, int, int]:
    """The window index and the (current, previous) counts as of `now`."""
    widx = int(now // window)
    stored, cur, prev = fields[6], fields[7], fields[8]
    if widx == stored:
        return widx, cur, prev
    if widx == stored + 1:
        return widx, 0, cur
    return widx, 0, 0


class _Lock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
