"""FETCH values kept in the folder's index (store/index.py `items`): ENVELOPE,
BODYSTRUCTURE and HEADER.FIELDS survive a restart, so the second FETCH opens no message
file; they are never served under another UIDVALIDITY, nor after the rendering changed
(ITEMS_FORMAT), and a client cannot make the index keep unbounded field lists."""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapstore_helpers import deliver, restart

from mailserver.imap import fetch
from mailserver.imap.grammar import Fetch, flatten, parse_command
from mailserver.interfaces import StoreError
from mailserver.store import index
from mailserver.store.index import INDEX_FILE, MAX_ITEM_NAMES, FolderIndex
from mailserver.store.userstore import UserStore
from mailserver.store.view import MailboxView

MIXED = (b"From: Ann <ann@example.org>\nTo: bob@example.net\nSubject: report\n"
         b"Date: Sun, 22 Nov 2026 12:00:00 +0000\nMessage-ID: <1@example.org>\n"
         b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"
         b"--b\nContent-Type: text/plain\n\nhello\n"
         b"--b\nContent-Type: application/pdf; name=\"a.pdf\"\n"
         b"Content-Transfer-Encoding: base64\n\nAAAA\n--b--\n")
ITEMS = b"(ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (Subject FROM)])"


@pytest.fixture(autouse=True)
def empty_item_cache() -> Iterator[None]:
    """The process's in-memory front starts empty, as after a restart."""
    fetch.CACHE.clear()
    yield
    fetch.CACHE.clear()


def fetch_all(view: MailboxView, items: bytes = ITEMS, cache: bool = True) -> bytes:
    command = parse_command(b"a FETCH 1:* " + items + b"\r\n")
    assert isinstance(command, Fetch)
    plan = fetch.plan(flatten(command.items))
    entries = [(n + 1, info) for n, info in enumerate(view.messages)]
    key = ("location", "alice@example.org", view.name, view.uid_validity) if cache else None
    data, missing = fetch.build(view, plan, entries, cache_key=key)
    assert missing == []
    return data


def no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, any read of a message file or its header fails the test."""
    def refuse(self: MailboxView, uid: int) -> bytes:
        raise AssertionError(f"message file of UID {uid} opened")
    monkeypatch.setattr(MailboxView, "read", refuse)
    monkeypatch.setattr(MailboxView, "header", refuse)


def test_after_a_restart_fetch_opens_no_message_file(
        store: UserStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(root, data=MIXED)
    deliver(root, subject="second")
    view = store.select("INBOX")
    first = fetch_all(view)
    view.close()
    assert first.startswith(b'* 1 FETCH (ENVELOPE ("Sun, 22 Nov 2026 12:00:00 +0000" '
                            b'"report" (("Ann" NIL "ann" "example.org"))')
    assert b'("application" "pdf" ("name" "a.pdf") NIL NIL "base64" 4 NIL NIL NIL NIL)' \
        in first
    assert b"BODY[HEADER.FIELDS (Subject FROM)] {48}\r\nFrom: Ann <ann@example.org>\r\n" \
        b"Subject: report\r\n\r\n" in first
    restart()
    fetch.CACHE.clear()
    no_files(monkeypatch)
    view = store.select("INBOX")
    try:
        assert fetch_all(view) == first
        # The same fields in another order and case are the same item.
        again = fetch_all(view, b"BODY.PEEK[HEADER.FIELDS (from subject)]")
        assert b"From: Ann <ann@example.org>\r\nSubject: report\r\n\r\n" in again
    finally:
        view.close()


def test_without_a_cache_key_nothing_is_kept(store: UserStore, root: Path) -> None:
    deliver(root, data=MIXED)
    view = store.select("INBOX")
    fetch_all(view, cache=False)
    view.close()
    with sqlite3.connect(root / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_a_folder_made_again_does_not_serve_the_old_values(
        store: UserStore, root: Path) -> None:
    """The new folder's UID 1 is another message under another UIDVALIDITY: the kept
    ENVELOPE of the old UID 1 must not describe it, even with the same file name."""
    store.create("Box")
    folder = root / ".Box"
    deliver(folder, name="msg1", data=MIXED)
    view = store.select("Box")
    assert b'"report"' in fetch_all(view)
    view.close()
    saved = (folder / INDEX_FILE).read_bytes()
    store.delete("Box")
    store.create("Box")
    (folder / INDEX_FILE).write_bytes(saved)  # an old copy of the cache put back
    deliver(folder, name="msg1", data=b"Subject: other\n\nx\n")
    fetch.CACHE.clear()
    view = store.select("Box")
    try:
        data = fetch_all(view, b"(ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
        assert b'"other"' in data and b"report" not in data
    finally:
        view.close()


def test_a_view_of_an_older_uidvalidity_gets_no_values(store: UserStore, root: Path) -> None:
    deliver(root, data=MIXED)
    view = store.select("INBOX")
    fetch_all(view)
    uid = view.messages[0].uid
    assert b"report" in view.cached_items("ENVELOPE", [uid])[uid]
    view.uid_validity += 1  # as if the state had been renumbered under it
    try:
        assert view.cached_items("ENVELOPE", [uid]) == {}
        view.remember_items("ENVELOPE", [(uid, b"wrong")])
    finally:
        view.uid_validity -= 1
    try:
        assert view.cached_items("ENVELOPE", [uid]) != {uid: b"wrong"}
    finally:
        view.close()


def test_another_rendering_drops_the_kept_values(
        store: UserStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(root, data=MIXED)
    view = store.select("INBOX")
    fetch_all(view)
    view.close()
    restart()
    monkeypatch.setattr(index, "ITEMS_FORMAT", index.ITEMS_FORMAT + 1)
    view = store.select("INBOX")
    try:
        assert view.cached_items("ENVELOPE", [view.messages[0].uid]) == {}
    finally:
        view.close()
    with sqlite3.connect(root / INDEX_FILE) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (index.ITEMS_FORMAT,)


def test_item_names_per_folder_are_bounded(root: Path) -> None:
    """A client asking for ever new HEADER.FIELDS lists: the first MAX_ITEM_NAMES
    names are kept, the others are served but not written."""
    folder = FolderIndex(root)
    folder.bind(7)
    names = [f"HEADER.FIELDS (X-{n})" for n in range(MAX_ITEM_NAMES + 5)]
    for name in names:
        folder.put_items(name, [("base1", b"X: 1\r\n\r\n")])
        folder.flush()
    folder.close()
    again = FolderIndex(root)
    again.bind(7)
    try:
        kept = [name for name in names if again.items(name, ["base1"])]
        assert len(kept) == MAX_ITEM_NAMES
    finally:
        again.close()


def test_expunged_messages_lose_their_values(store: UserStore, root: Path) -> None:
    deliver(root, data=MIXED)
    view = store.select("INBOX")
    fetch_all(view)
    uid = view.messages[0].uid
    view.store([uid], "+", ["\\Deleted"])
    view.expunge()
    view.close()
    with sqlite3.connect(root / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_a_message_gone_meanwhile_is_reported_missing(store: UserStore, root: Path) -> None:
    """A message expunged by another session, with nothing kept for it, is left out
    of the answer and reported to the caller, as before the index kept items."""
    deliver(root, data=MIXED)
    view = store.select("INBOX")
    other = store.select("INBOX")
    try:
        uid = view.messages[0].uid
        other.store([uid], "+", ["\\Deleted"])
        other.expunge()
        with pytest.raises(StoreError):
            view.read(uid)
        command = parse_command(b"a FETCH 1 ENVELOPE\r\n")
        assert isinstance(command, Fetch)
        plan = fetch.plan(flatten(command.items))
        _, missing = fetch.build(view, plan, [(1, view.messages[0])], cache_key=None)
        assert missing == [1]
    finally:
        other.close()
        view.close()


def test_odd_field_lists_are_answered_but_not_kept(store: UserStore, root: Path) -> None:
    """Hostile HEADER.FIELDS lists (more than 32 names, a name past 76 octets) get
    their answer, computed each time; the index keeps no row for them."""
    deliver(root, data=MIXED)
    many = b" ".join(b"X-F%d" % n for n in range(33)) + b" SUBJECT"
    long_name = b"X-" + b"L" * 80
    view = store.select("INBOX")
    try:
        data = fetch_all(view, b"BODY.PEEK[HEADER.FIELDS (" + many + b")]")
        assert data.endswith(b"{19}\r\nSubject: report\r\n\r\n)\r\n")
        data = fetch_all(view, b"BODY.PEEK[HEADER.FIELDS (" + long_name + b" FROM)]")
        assert data.endswith(b"{31}\r\nFrom: Ann <ann@example.org>\r\n\r\n)\r\n")
    finally:
        view.close()
    with sqlite3.connect(root / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM item_names").fetchone() == (0,)


def _item_queries(folder: FolderIndex) -> list[str]:
    """The statements `folder`'s connection runs from now on that read `items`."""
    seen: list[str] = []
    assert folder._db is not None
    folder._db.set_trace_callback(seen.append)
    return seen


def test_an_item_nobody_kept_costs_no_query_per_message(root: Path) -> None:
    """A first FETCH or SEARCH of a cold folder asks for item names the index never
    kept: that is one look at the name table, not a query per 900 messages; a name
    another process adds meanwhile is found (the names are read again; before, a
    process that had once written kept its first list of names for good)."""
    writer = FolderIndex(root)
    writer.bind(7)
    writer.put_items("ENVELOPE", [("base1", b"(NIL)")])
    writer.close()
    folder = FolderIndex(root)  # after a restart
    folder.bind(7)
    folder._connect(create=False)
    queries = _item_queries(folder)
    bases = [f"base{n}" for n in range(5000)]
    assert folder.items("BODYSTRUCTURE", bases) == {}
    assert [q for q in queries if "FROM items" in q] == []
    assert folder.items("ENVELOPE", bases) == {"base1": b"(NIL)"}
    assert len([q for q in queries if "FROM items" in q]) == 6  # 5000 / 900
    other = FolderIndex(root)  # another process keeps BODYSTRUCTURE
    other.bind(7)
    other.put_items("BODYSTRUCTURE", [("base2", b"(\"text\")")])
    other.close()
    try:
        assert folder.items("BODYSTRUCTURE", bases) == {"base2": b"(\"text\")"}
    finally:
        folder.close()


def test_a_full_batch_is_written_by_the_writer_thread(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The FETCH that fills a batch does not wait for sqlite: the writer thread writes
    it, and its rows are served from memory until then (and from the file after)."""
    folder = FolderIndex(root)
    folder.bind(7)
    writers: list[str] = []
    real_flush = FolderIndex._flush

    def flush(self: FolderIndex) -> None:
        writers.append(threading.current_thread().name)
        real_flush(self)
    monkeypatch.setattr(FolderIndex, "_flush", flush)
    rows = [(f"base{n}", b"(%d)" % n) for n in range(index._BATCH)]
    folder.put_items("ENVELOPE", rows)
    assert folder.items("ENVELOPE", ["base0", f"base{index._BATCH - 1}"]) == {
        "base0": b"(0)", f"base{index._BATCH - 1}": b"(%d)" % (index._BATCH - 1)}
    index.wait_for_writer()
    assert writers == ["index-writer"]
    other = FolderIndex(root)  # another process sees them in the file
    other.bind(7)
    try:
        assert len(other.items("ENVELOPE", [b for b, _ in rows])) == index._BATCH
    finally:
        other.close()
        folder.close()


def test_a_lagging_writer_does_not_let_pending_rows_grow(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past _MAX_PENDING rows the session's thread writes them itself."""
    monkeypatch.setattr(index, "_writer", lambda: queue.SimpleQueue())  # never runs
    folder = FolderIndex(root)
    folder.bind(7)
    try:
        for n in range(index._MAX_PENDING // index._BATCH):
            folder.put_items("BODY", [(f"b{n}-{i}", b"()") for i in range(index._BATCH)])
        assert folder._pending_items == []
        assert len(folder.items("BODY", ["b0-0", "b7-499"])) == 2
    finally:
        folder.close()
