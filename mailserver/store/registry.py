"""The process's shared FolderStates: one per folder, kept while sessions use it.

Sessions of one process share a folder's state (see folderstate.py); a state nobody
uses stays warm for a while, so a client that reconnects (or a STATUS poll) finds it
loaded, within bounds on count and total messages.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from mailserver.store.folderstate import FolderState

#: Folder states nobody uses any more are kept for a while (a client reconnecting
#: finds its folder warm), up to this many per process and this many messages in all
#: (about 300 bytes each).
IDLE_STATES = 64
IDLE_MESSAGES = 300_000

_registry: dict[Path, FolderState] = {}
_idle: OrderedDict[Path, None] = OrderedDict()
_registry_lock = threading.Lock()


def acquire_state(path: Path, root: Path) -> FolderState:
    """The shared state of the folder at `path`; pair with `release_state`."""
    with _registry_lock:
        state = _registry.get(path)
        if state is None:
            state = _registry[path] = FolderState(path, root)
        state.users += 1
        _idle.pop(path, None)
        return state


def release_state(state: FolderState) -> None:
    with _registry_lock:
        state.users -= 1
        if state.users > 0 or _registry.get(state.path) is not state:
            return
        _idle[state.path] = None
        state.index.close()  # its connection and page cache; reopened when needed
        state.modseqs.close()
        while _idle and (len(_idle) > IDLE_STATES or sum(
                len(_registry[p].uids) for p in _idle if p in _registry) > IDLE_MESSAGES):
            path, _ = _idle.popitem(last=False)
            old = _registry.pop(path, None)
            if old is not None:
                old.index.close()
                old.modseqs.close()


def drop_idle_states() -> None:
    """Forget every state no session holds, as a restart would (tests, benchmarks)."""
    with _registry_lock:
        for path in list(_idle):
            old = _registry.pop(path, None)
            if old is not None:
                old.index.close()
                old.modseqs.close()
        _idle.clear()


def forget_folders(paths: Iterable[Path]) -> None:
    """The folders at `paths` were deleted or renamed away: drop their idle states.

    A state a session still holds stays (that session sees the messages expunged at its
    next sync); a folder made again at the same path gets a new UIDVALIDITY, which a
    state notices by itself (FolderState.refresh), so this is about memory and open
    files, not about correctness.
    """
    with _registry_lock:
        for path in paths:
            state = _registry.get(path)
            if state is None or state.users > 0:
                continue
            del _registry[path]
            _idle.pop(path, None)
            state.index.discard()
            state.modseqs.close()
