"""Whether a server is running on a data_dir: data_dir/run/server.lock, flock'ed.

Why a lock and not a pid file alone: the kernel drops the lock when the process ends,
however it ends (SIGKILL, a crash), and a pid left in a file can be reused by an
unrelated process. The server takes a shared lock when it builds its listeners and
keeps it for its whole life (a daemonising twistd forks after that; the forked child
holds the same open file, hence the lock). The admin tool asks with a non-blocking
exclusive lock: refused means a server holds it. The file also carries the server's pid,
for the operator's messages only.

Blocking file-system work, done once at start-up and by the admin tool (never on the
reactor thread of a running server).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "server.lock"


def hold_running_lock(run_dir: Path) -> int:
    """Take the shared lock for this process's life; returns the (never closed) fd.

    Blocking: an admin command holds the exclusive lock only for the instant it asks.
    """
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def running_server(run_dir: Path) -> int | None:
    """The pid of the server running on this run_dir (0 if it did not say), else None.

    Raises OSError (with the path) when the lock file exists but cannot be opened.
    """
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None  # no server ever started here
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        return None  # nobody holds it: the last server has ended
    finally:
        os.close(fd)  # releases our lock, if we got it
