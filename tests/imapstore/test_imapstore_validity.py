"""A folder deleted and made again at the same path, or whose UID list was replaced:
nothing the process knew of the old UIDVALIDITY may describe a message of the new one
(RFC 3501 2.3.1.1). The bug: RFC822.SIZE (and INTERNALDATE) of the first folder's
messages stayed, because the new UID 1 was taken for a rename of the old UID 1 when
something else (APPEND, STATUS) had read the new UID list first."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from imapstore_helpers import deliver

from mailserver.interfaces import StoreError
from mailserver.store.index import INDEX_FILE, FolderIndex
from mailserver.store.registry import acquire_state, release_state
from mailserver.store.uidlist import UIDLIST_FILE
from mailserver.store.userstore import UserStore


def message(n: int, body_size: int) -> bytes:
    return b"Subject: round %d\r\n\r\n" % n + b"x" * body_size + b"\r\n"


def sizes(store: UserStore, name: str) -> list[int]:
    view = store.select(name)
    try:
        return [m.size for m in view.messages]
    finally:
        view.close()


def test_recreated_folder_shows_the_new_sizes(store: UserStore) -> None:
    """CREATE, APPEND, DELETE three times with messages of different sizes."""
    validities = []
    for n, body in enumerate((100, 2000, 50)):
        store.create("Again")
        data = message(n, body)
        validities.append(store.append("Again", data).uid_validity)
        assert sizes(store, "Again") == [len(data)]
        view = store.select("Again")
        assert view.read(view.messages[0].uid) == data
        view.close()
        store.delete("Again")
    assert validities == sorted(set(validities))


def test_a_session_holding_the_old_folder_does_not_keep_its_sizes(store: UserStore) -> None:
    """Another session has the folder selected while it is deleted and made again: its
    state is shared (not idle), so only the UIDVALIDITY check can tell."""
    store.create("Held")
    first = message(1, 300)
    store.append("Held", first)
    holder = store.select("Held")
    assert [m.size for m in holder.messages] == [len(first)]
    store.delete("Held")
    store.create("Held")
    second = message(2, 40)
    result = store.append("Held", second)
    assert result.uid_validity > holder.uid_validity
    assert sizes(store, "Held") == [len(second)]
    # Until its next sync, the holder must not be served the new UID 1 as its own.
    for attempt in (lambda: holder.read(1), lambda: holder.header(1),
                    lambda: holder.store([1], "+", ["\\Flagged"]),
                    lambda: holder.copy([1], "INBOX")):
        with pytest.raises(StoreError) as e:
            attempt()
        assert e.value.code == "NONEXISTENT"
    holder.sync()
    assert holder.validity_changed  # the session ends with * BYE (server.sync)
    holder.close()
    view = store.select("Held")
    assert view.messages[0].flags == frozenset() and view.read(1) == second
    view.close()
    assert sizes(store, "INBOX") == []


def test_replaced_uid_list_with_the_same_directory_times(root: Path, store: UserStore) -> None:
    """Deterministic, whatever the file system does with inode numbers: the folder's
    directories stay (same inodes) and keep their times (os.utime), its files and UID
    list are replaced behind the process's back, as a restore or another tool would."""
    store.create("Same")
    folder = root / ".Same"
    first = message(1, 500)
    store.append("Same", first)
    view = store.select("Same")
    assert [m.size for m in view.messages] == [len(first)]
    old_uid = view.messages[0].uid
    view.close()
    times = {sub: os.stat(folder / sub).st_mtime_ns for sub in ("new", "cur")}
    for sub in ("new", "cur"):
        for name in os.listdir(folder / sub):
            os.unlink(folder / sub / name)
    os.unlink(folder / UIDLIST_FILE)
    second = message(2, 20)
    result = store.append("Same", second)  # reads the new list first (new UIDVALIDITY)
    assert result.dest_uids == (old_uid,)
    for sub, mtime in times.items():
        os.utime(folder / sub, ns=(mtime, mtime))
    view = store.select("Same")
    try:
        assert [m.size for m in view.messages] == [len(second)]
        assert view.uid_validity == result.uid_validity
        assert view.read(old_uid) == second
    finally:
        view.close()


def test_status_first_then_select(root: Path, store: UserStore) -> None:
    """STATUS reading the new list first must not leave the old entries either."""
    store.create("Poll")
    folder = root / ".Poll"
    deliver(folder, subject="old", body=b"o" * 700 + b"\n")
    assert sizes(store, "Poll") != []
    state = acquire_state(folder, root)  # a watcher keeps the state warm
    try:
        times = {sub: os.stat(folder / sub).st_mtime_ns for sub in ("new", "cur")}
        for sub in ("new", "cur"):
            for name in os.listdir(folder / sub):
                os.unlink(folder / sub / name)
        os.unlink(folder / UIDLIST_FILE)
        name = deliver(folder, subject="new", body=b"n\n")
        os.utime(folder / "new", ns=(times["new"], times["new"]))
        status = store.status("Poll")
        assert status.messages == 1
        data = (folder / "new" / name).read_bytes()
        expected = len(data) + data.count(b"\n")
        assert sizes(store, "Poll") == [expected]
    finally:
        release_state(state)


def test_index_of_an_older_uidvalidity_is_emptied(root: Path, store: UserStore) -> None:
    """The sqlite cache records the UIDVALIDITY it was filled under: a folder made again
    finds the old rows gone, even for a foreign file name (no size in it, so the size
    comes from the index) that the new folder uses again with other content."""
    store.create("Foreign")
    folder = root / ".Foreign"
    deliver(folder, name="msg1", data=b"Subject: old\n\n" + b"o" * 900 + b"\n")
    view = store.select("Foreign")
    assert [m.size for m in view.messages] == [len(b"Subject: old\r\n\r\n") + 902]
    assert view.header(view.messages[0].uid).startswith(b"Subject: old")
    view.close()
    database = folder / INDEX_FILE
    with sqlite3.connect(database) as db:
        old = db.execute("SELECT value FROM validity").fetchall()
    # A copy of the old cache survives next to a folder made again (a stale writer in
    # another process, or a backup put back): its rows must not be believed.
    saved = database.read_bytes()
    store.delete("Foreign")
    store.create("Foreign")
    (folder / INDEX_FILE).write_bytes(saved)
    deliver(folder, name="msg1", data=b"Subject: new\n\nn\n")
    view = store.select("Foreign")
    try:
        assert [m.size for m in view.messages] == [len(b"Subject: new\r\n\r\nn\r\n")]
        assert view.header(view.messages[0].uid) == b"Subject: new\r\n\r\n"
        assert view.uid_validity > old[0][0]
    finally:
        view.close()
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT value FROM validity").fetchall() == [(view.uid_validity,)]
        assert db.execute("SELECT count(*) FROM headers WHERE header LIKE 'Subject: old%'"
                          ).fetchone() == (0,)


def test_index_bound_to_an_older_uidvalidity_reads_and_writes_nothing(root: Path) -> None:
    """A FolderIndex of the old folder (another process's state, not refreshed yet)
    must neither read the new folder's rows nor write its old ones among them; an
    unbound one (UIDVALIDITY not read yet) caches nothing."""
    folder = root
    current = FolderIndex(folder)
    current.bind(200)
    current.put_header("base1", b"Subject: current\r\n\r\n")
    current.put_meta("base1", 123, 1.0)
    current.close()
    stale = FolderIndex(folder)
    stale.bind(100)
    assert stale.headers(["base1"]) == {} and stale.meta("base1") is None
    stale.put_header("base1", b"Subject: stale\r\n\r\n")
    stale.put_meta("base2", 9, 2.0)
    stale.close()
    unbound = FolderIndex(folder)
    assert unbound.headers(["base1"]) == {}
    unbound.put_meta("base3", 1, 3.0)
    unbound.close()
    again = FolderIndex(folder)
    again.bind(200)
    assert again.headers(["base1"]) == {"base1": b"Subject: current\r\n\r\n"}
    assert again.meta("base1") == (123, 1.0)
    assert again.meta("base2") is None and again.meta("base3") is None
    again.close()
    newer = FolderIndex(folder)
    newer.bind(300)
    assert newer.headers(["base1"]) == {} and newer.meta("base1") is None
    newer.close()
