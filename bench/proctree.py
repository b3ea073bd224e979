"""Resource accounting for a server's process tree, read from /proc.

A server is a root process and all its descendants (Postfix: master and every daemon it
forks; ours: the twistd process and whatever it forks).

CPU: utime+stime of every live process in the tree, plus cutime+cstime of the root. The
root's c*time holds the CPU of children it has reaped, so a Postfix smtpd or cleanup that
exits during the run is still counted (the master reaps all Postfix daemons).

Memory: the sum of VmRSS over the tree (what the benchmark reports, as the brief asks) and
the sum of Pss from smaps_rollup (shared pages divided among the processes that map them,
which is fairer to multi-process servers like Postfix).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    end = data.rfind(")")
    # fields[0] is state (field 3 of proc(5)); field N of proc(5) is fields[N - 3].
    return data[end + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process on the machine."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def descendants(root: int) -> list[int]:
    """root and all its descendants that are alive now."""
    tree = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    return out


def pid_alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by the tree (live processes + what the root reaped)."""
    ticks = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) 14, 15)
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (16, 17)
    return ticks / CLK_TCK


def _status_kib(pid: int, key: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kib(pids: list[int]) -> int:
    return sum(_status_kib(pid, b"VmRSS:") for pid in pids)


def pss_kib(pids: list[int]) -> int:
    return sum(_pss_kib(pid) for pid in pids)


@dataclass
class Usage:
    cpu_s: float = 0.0
    max_rss_kib: int = 0
    max_pss_kib: int = 0
    max_procs: int = 0


class TreeSampler:
    """Samples a process tree's RSS in a background thread while a run is under way.

    The thread spends most of its time asleep; the tree (a scan of /proc) is refreshed every
    `tree_every` samples, RSS every `interval` seconds, PSS every 4th sample (it is costlier:
    the kernel walks the page tables).
    """

    def __init__(self, root: int, interval: float = 0.1, tree_every: int = 5) -> None:
        self.root = root
        self.interval = interval
        self.tree_every = tree_every
        self.usage = Usage()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._cpu0 = 0.0

    def __enter__(self) -> TreeSampler:
        self._cpu0 = cpu_seconds(self.root)
        self._sample(descendants(self.root), pss=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        pids = descendants(self.root)
        self._sample(pids, pss=True)
        self.usage.cpu_s = cpu_seconds(self.root) - self._cpu0

    def _sample(self, pids: list[int], pss: bool) -> None:
        u = self.usage
        u.max_procs = max(u.max_procs, len(pids))
        u.max_rss_kib = max(u.max_rss_kib, rss_kib(pids))
        if pss:
            u.max_pss_kib = max(u.max_pss_kib, pss_kib(pids))

    def _loop(self) -> None:
        n = 0
        pids = descendants(self.root)
        while not self._stop.wait(self.interval):
            n += 1
            if n % self.tree_every == 0:
                pids = descendants(self.root)
            self._sample(pids, pss=n % 4 == 0)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of pids is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def reap(pids: list[int], timeout: float) -> None:
    """Give `pids` `timeout` seconds to exit, then SIGKILL what is left and wait for it.

    Only these pids are touched: the processes of one server instance, never others.
    """
    left = wait_gone(pids, timeout)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(left, 5)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server (SIGKILL after 15 s), then reap everything it had forked (worker
    processes, Dovecot's login/auth/mail processes) by pid."""
    pids = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    reap(pids, 5)
