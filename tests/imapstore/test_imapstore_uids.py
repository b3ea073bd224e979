"""UIDs and UIDVALIDITY (RFC 3501 2.3.1.1) over real Maildirs: ascending in arrival
order, never reused, stable across restarts, renames (flags, new/ -> cur/) and other
processes; a lost UID list means a new UIDVALIDITY."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from imapstore_helpers import deliver, files, restart

from mailserver.interfaces import IMailboxView, IUserStore
from mailserver.store.index import INDEX_FILE
from mailserver.store.opener import MaildirOpener
from mailserver.store.uidlist import UIDLIST_FILE, UidList
from mailserver.store.userstore import UserStore


def uids(view: IMailboxView) -> list[int]:
    return [m.uid for m in view.messages]


def test_provides_interfaces(store: UserStore) -> None:
    assert IUserStore.providedBy(store)
    view = store.select("INBOX")
    assert IMailboxView.providedBy(view)
    view.close()


def test_open_user_store_creates_the_maildir(tmp_path: Path) -> None:
    from mailserver.config import config_from_dict
    from mailserver.interfaces import MailboxId

    config = config_from_dict({"data_dir": str(tmp_path),
                               "limits": {"folders_per_user": 7}})
    opener = MaildirOpener(config.mail_dir, config.limits.folders_per_user)
    store = opener.open_user_store(MailboxId("example.org", "bob"))
    assert isinstance(store, UserStore)
    assert store.root == tmp_path / "mail" / "example.org" / "bob"
    assert (store.root / "new").is_dir()
    assert [f.name for f in store.folders()][0] == "INBOX"
    assert store.folder_limit == 7


def test_uids_follow_delivery_time_in_the_name(root: Path, store: UserStore) -> None:
    # Names listed in arbitrary order; the time field decides (then the name).
    deliver(root, "third", name="1700000003.M1P1Q1.host,S=10,W=12")
    deliver(root, "first", name="1700000001.M5P1Q1.host,S=10,W=12")
    deliver(root, "second", name="1700000001.M7P1Q1.host,S=10,W=12")
    view = store.select("INBOX")
    subjects = [view.header(m.uid).split(b"Subject: ")[1].split(b"\r\n")[0]
                for m in view.messages]
    assert uids(view) == [1, 2, 3]
    assert subjects == [b"first", b"second", b"third"]
    assert view.uid_next == 4
    assert view.messages[0].internal_date == 1700000001.000005


def test_uids_and_validity_survive_a_restart(root: Path, store: UserStore) -> None:
    for i in range(3):
        deliver(root, f"m{i}")
    view = store.select("INBOX")
    before = [(m.uid, m.size) for m in view.messages]
    validity = view.uid_validity
    view.close()
    restart()
    deliver(root, "later")
    again = UserStore(root).select("INBOX")
    assert again.uid_validity == validity
    assert [(m.uid, m.size) for m in again.messages][:3] == before
    assert uids(again) == [1, 2, 3, 4]


def test_flag_rename_and_move_to_cur_keep_the_uid(root: Path, store: UserStore) -> None:
    name = deliver(root)
    view = store.select("INBOX", read_only=True)  # EXAMINE: leaves it in new/
    assert files(root, "new") == [name]
    # Another process (POP3 RETR) moves it to cur/ with S, as our POP3 does.
    os.rename(root / "new" / name, root / "cur" / (name + ":2,S"))
    changes = view.sync()
    assert changes.expunged == () and changes.exists is None
    assert [(m.uid, m.flags) for m in changes.flags_changed] == [(1, frozenset({"\\Seen"}))]
    assert uids(view) == [1]


def test_expunged_uid_is_never_reused(root: Path, store: UserStore) -> None:
    deliver(root, "a")
    deliver(root, "b")
    view = store.select("INBOX")
    view.store([2], "+", ["\\Deleted"])
    view.expunge()
    view.close()
    restart()
    deliver(root, "c")
    view = UserStore(root).select("INBOX")
    assert uids(view) == [1, 3]
    assert view.uid_next == 4


def test_index_deleted_is_rebuilt_with_the_same_uids(root: Path, store: UserStore) -> None:
    for i in range(4):
        deliver(root, f"m{i}")
    view = store.select("INBOX")
    headers = [view.header(u) for u in uids(view)]
    before = list(view.messages)
    view.close()
    restart()
    assert (root / INDEX_FILE).exists()
    os.unlink(root / INDEX_FILE)
    view = UserStore(root).select("INBOX")
    assert [(m.uid, m.flags, m.size, m.internal_date) for m in view.messages] == \
        [(m.uid, m.flags, m.size, m.internal_date) for m in before]
    assert [view.header(u) for u in uids(view)] == headers


def test_damaged_index_is_dropped_and_rebuilt(root: Path, store: UserStore) -> None:
    deliver(root, "x")
    view = store.select("INBOX")
    view.header(1)
    view.close()
    restart()
    (root / INDEX_FILE).write_bytes(b"this is not an sqlite database" * 100)
    view = UserStore(root).select("INBOX")
    assert view.header(1).startswith(b"From: a@example.com\r\n")


def test_lost_uidlist_means_new_uidvalidity(root: Path, store: UserStore) -> None:
    deliver(root)
    view = store.select("INBOX")
    old = view.uid_validity
    view.close()
    restart()
    os.unlink(root / UIDLIST_FILE)
    view = UserStore(root).select("INBOX")
    assert view.uid_validity != old
    assert view.uid_validity > old
    assert uids(view) == [1]


def test_damaged_uidlist_means_new_uidvalidity(root: Path, store: UserStore) -> None:
    deliver(root)
    view = store.select("INBOX")
    old = view.uid_validity
    view.close()
    restart()
    (root / UIDLIST_FILE).write_text("garbage\n1 something\n")
    view = UserStore(root).select("INBOX")
    assert view.uid_validity not in (0, old)
    assert uids(view) == [1]


def test_recreated_folder_gets_new_uidvalidity(store: UserStore) -> None:
    store.create("Work")
    first = store.status("Work").uid_validity
    store.delete("Work")
    store.create("Work")
    assert store.status("Work").uid_validity > first  # even within the same second


def test_foreign_names_without_sizes(root: Path, store: UserStore) -> None:
    # A file as another tool might leave it: no S=/W=, CRLF already, no time prefix.
    data = b"Subject: crlf\r\n\r\nline one\r\nline two\r\n"
    (root / "cur" / "foreign-message:2,S").write_bytes(data)
    os.utime(root / "cur" / "foreign-message:2,S", (1600000000, 1600000000))
    view = store.select("INBOX")
    [info] = view.messages
    assert info.size == len(data)
    assert info.internal_date == 1600000000
    assert info.flags == frozenset({"\\Seen"})
    assert view.read(info.uid) == data  # CR not doubled


def _assign_many(folder: str, root: str, tag: str, count: int,
                 out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    uidlist = UidList(Path(folder), Path(root))
    got = {}
    for i in range(count):
        got.update(uidlist.assign([f"{tag}-{i}", f"shared-{i}"]))
    out.put(got)


def test_two_processes_never_assign_one_uid_twice(root: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_assign_many, args=(str(root), str(root), tag, 150, out))
             for tag in ("p1", "p2", "p3")]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    merged: dict[str, int] = {}
    for got in results:
        for base, uid in got.items():
            assert merged.setdefault(base, uid) == uid  # one UID per name, everywhere
    assert len(set(merged.values())) == len(merged) == 3 * 150 + 150
    final = UidList(root, root)
    final.refresh()
    assert final.by_base == merged
    assert final.next_uid == max(merged.values()) + 1


def test_compaction_keeps_validity_and_next_uid(root: Path) -> None:
    uidlist = UidList(root, root)
    uidlist.assign(["a", "b", "c"])
    validity = uidlist.validity
    uidlist.compact({"a"})
    fresh = UidList(root, root)
    fresh.refresh()
    assert fresh.by_base == {"a": 1}
    assert fresh.validity == validity
    assert fresh.assign(["d"]) == {"d": 4}


def test_partial_line_from_a_writer_is_not_read(root: Path) -> None:
    uidlist = UidList(root, root)
    uidlist.assign(["a"])
    with open(root / UIDLIST_FILE, "ab") as f:
        f.write(b"2 half-writ")  # an append in progress in another process
    reader = UidList(root, root)
    reader.refresh()
    assert reader.by_base == {"a": 1}
    with open(root / UIDLIST_FILE, "ab") as f:
        f.write(b"ten\n")
    reader.refresh()
    assert reader.by_base == {"a": 1, "half-written": 2}
