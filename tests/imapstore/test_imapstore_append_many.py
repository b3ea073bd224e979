"""UserStore.append_many (MULTIAPPEND, RFC 3502): every message or none, also when the
disk fails in the middle of writing or of renaming."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from mailserver.interfaces import StoreError
from mailserver.store import transfer
from mailserver.store.userstore import UserStore

MESSAGES = [(b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i), ("\\Seen",) if i == 1 else (), None)
            for i in range(3)]


def files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "new")) + sorted(os.listdir(root / "tmp"))


def test_all_are_stored_in_order(store: UserStore, root: Path) -> None:
    result = store.append_many("INBOX", MESSAGES)
    assert result.dest_uids == (1, 2, 3)
    view = store.select("INBOX")
    try:
        assert [view.read(uid) for uid in (1, 2, 3)] == [m for m, _, _ in MESSAGES]
        assert [sorted(info.flags) for info in view.messages] == [[], ["\\Seen"], []]
    finally:
        view.close()


def test_full_disk_while_writing_leaves_nothing(store: UserStore, root: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the third message's data
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(transfer.os, "fsync", fsync)
    with pytest.raises(StoreError) as caught:
        store.append_many("INBOX", MESSAGES)
    assert caught.value.code == "OVERQUOTA"
    assert files(root) == []


def test_failure_while_renaming_takes_back_the_renamed(store: UserStore, root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.rename
    calls = {"n": 0}

    def rename(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(transfer.os, "rename", rename)
    with pytest.raises(OSError):
        store.append_many("INBOX", MESSAGES)
    assert files(root) == []
    monkeypatch.undo()
    assert store.status("INBOX").messages == 0


def test_missing_folder_is_trycreate(store: UserStore) -> None:
    with pytest.raises(StoreError) as caught:
        store.append_many("Nowhere", MESSAGES)
    assert caught.value.code == "TRYCREATE"
