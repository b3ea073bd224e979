"""A session's view of a folder: \\Recent, EXPUNGE numbering, flags, reading, and what
other sessions and processes did, over real Maildir files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from imapstore_helpers import deliver, files

from mailserver.interfaces import StoreError
from mailserver.store.flags import KEYWORDS_FILE
from mailserver.store.userstore import UserStore


def test_recent_is_claimed_by_exactly_one_session(root: Path, store: UserStore) -> None:
    deliver(root, "a")
    deliver(root, "b")
    examine = store.select("INBOX", read_only=True)
    # RFC 3501 6.3.2: EXAMINE shows \Recent like SELECT but takes it from nobody
    assert examine.recent_count == 2 and [m.recent for m in examine.messages] == [True] * 2
    assert len(files(root, "new")) == 2  # EXAMINE renames nothing
    first = store.select("INBOX")
    second = store.select("INBOX")
    assert first.recent_count == 2 and [m.recent for m in first.messages] == [True, True]
    assert second.recent_count == 0 and [m.recent for m in second.messages] == [False, False]
    assert files(root, "new") == []
    assert all(name.endswith(":2,") for name in files(root, "cur"))
    deliver(root, "c")
    changes = second.sync()
    assert (changes.exists, changes.recent) == (3, 1)
    changes = first.sync()
    assert (changes.exists, changes.recent) == (3, 0)
    assert first.recent_count == 2 and second.recent_count == 1
    assert store.status("INBOX").recent == 0


def test_status_counts_without_selecting(root: Path, store: UserStore) -> None:
    deliver(root, "a")
    deliver(root, "b", sub="cur", name="1700000000.M1P2Q3.host,S=1,W=2:2,S")
    status = store.status("inbox")
    assert (status.messages, status.recent, status.unseen, status.uid_next) == (2, 1, 1, 3)
    assert status.uid_validity > 0
    assert files(root, "new") != []  # STATUS claims nothing


def test_expunge_sequence_numbers_account_for_earlier_ones(root: Path,
                                                          store: UserStore) -> None:
    for i in range(6):
        deliver(root, f"m{i}")
    view = store.select("INBOX")
    other = store.select("INBOX")
    view.store([2, 3, 5], "+", ["\\Deleted"])
    changes = view.expunge()
    assert changes.expunged == (2, 2, 3)  # RFC 3501 7.4.1: each one after the earlier
    assert [m.uid for m in view.messages] == [1, 4, 6]
    # The other session keeps them during FETCH/STORE/SEARCH, then hears of them.
    quiet = other.sync(report_expunges=False)
    assert quiet.expunged == () and len(other.messages) == 6
    with pytest.raises(StoreError) as e:
        other.read(3)
    assert e.value.code == "NONEXISTENT"
    assert other.store([3], "+", ["\\Seen"]) == []  # gone elsewhere: skipped
    assert other.sync().expunged == (2, 2, 3)
    assert [m.uid for m in other.messages] == [1, 4, 6]


def test_uid_expunge_only_touches_given_uids(root: Path, store: UserStore) -> None:
    for i in range(3):
        deliver(root, f"m{i}")
    view = store.select("INBOX")
    view.store([1, 2, 3], "+", ["\\Deleted"])
    assert view.expunge([2]).expunged == (2,)
    assert [m.uid for m in view.messages] == [1, 3]
    assert len(files(root, "cur")) == 2


def test_expunge_by_pop3_or_another_process(root: Path, store: UserStore) -> None:
    names = [deliver(root, f"m{i}", sub="cur", name=None) for i in range(4)]
    view = store.select("INBOX")
    os.unlink(root / "cur" / names[0])
    os.unlink(root / "cur" / names[2])
    changes = view.sync()
    assert changes.expunged == (1, 2)
    assert [m.uid for m in view.messages] == [2, 4]


def test_flags_of_other_sessions_are_reported_not_own(root: Path, store: UserStore) -> None:
    deliver(root)
    mine = store.select("INBOX")
    other = store.select("INBOX")
    stored = mine.store([1], "+", ["\\Seen", "\\flagged"])
    assert [m.flags for m in stored] == [frozenset({"\\Seen", "\\Flagged"})]
    assert mine.sync().flags_changed == ()
    [changed] = other.sync().flags_changed
    assert changed.uid == 1 and changed.flags == frozenset({"\\Seen", "\\Flagged"})
    [name] = files(root, "cur")
    assert name.endswith(":2,FS")


def test_store_modes_and_case_insensitive_flags(root: Path, store: UserStore) -> None:
    deliver(root)
    view = store.select("INBOX")
    view.store([1], "=", ["\\SEEN", "\\Answered", "$Forwarded"])
    assert view.messages[0].flags == frozenset({"\\Seen", "\\Answered", "$Forwarded"})
    assert files(root, "cur")[0].endswith(":2,PRS")
    assert view.store([1], "+", ["\\seen"]) == []  # no change, nothing to report
    view.store([1], "-", ["\\answered", "$forwarded"])
    assert view.messages[0].flags == frozenset({"\\Seen"})
    assert view.messages[0].recent  # \Recent survives flag changes in this session
    view.store([1], "=", [])
    assert files(root, "cur")[0].endswith(":2,")


def test_keywords_use_the_dovecot_keywords_file(root: Path, store: UserStore) -> None:
    deliver(root)
    deliver(root)
    view = store.select("INBOX")
    view.store([1], "+", ["Work", "$Label1"])
    view.store([2], "+", ["work"])  # same keyword, first spelling kept
    assert (root / KEYWORDS_FILE).read_text() == "0 Work\n1 $Label1\n"
    assert view.messages[1].flags == frozenset({"Work"})
    names = files(root, "cur")
    assert sorted(n.rpartition(",")[2] for n in names) == ["a", "ab"]
    assert view.keywords == ("Work", "$Label1")
    view.store([1], "-", ["WORK"])
    assert view.messages[0].flags == frozenset({"$Label1"})


def test_keyword_letters_from_another_tool_are_read(root: Path, store: UserStore) -> None:
    (root / KEYWORDS_FILE).write_text("0 Important\n3 $Junk\n")
    deliver(root, sub="cur", name="1700000000.M1P1Q1.host,S=1,W=2:2,Sad")
    view = store.select("INBOX")
    assert view.messages[0].flags == frozenset({"\\Seen", "Important", "$Junk"})


def test_twenty_seventh_keyword_is_refused(root: Path, store: UserStore) -> None:
    deliver(root)
    view = store.select("INBOX")
    view.store([1], "+", [f"k{i}" for i in range(26)])
    assert len(view.messages[0].flags) == 26
    assert not view.can_create_keywords
    with pytest.raises(StoreError) as e:
        view.store([1], "+", ["one-too-many"])
    assert e.value.code == "LIMIT"


def test_unknown_letters_survive_flag_changes(root: Path, store: UserStore) -> None:
    deliver(root, sub="cur", name="1700000000.M1P1Q1.host,S=1,W=2:2,SZ")
    view = store.select("INBOX")
    view.store([1], "+", ["\\Flagged"])
    assert files(root, "cur")[0].endswith(":2,FSZ")


def test_store_follows_a_rename_by_another_process(root: Path, store: UserStore) -> None:
    name = deliver(root, sub="cur", name=None)
    view = store.select("INBOX")
    os.rename(root / "cur" / name, root / "cur" / (name + ":2,F"))  # e.g. mutt
    [info] = view.store([1], "+", ["\\Seen"])
    assert info.flags == frozenset({"\\Seen", "\\Flagged"})
    assert files(root, "cur") == [name + ":2,FS"]


def test_read_converts_to_crlf_and_follows_renames(root: Path, store: UserStore) -> None:
    name = deliver(root, body=b"line\n\nlast\n", sub="cur")
    view = store.select("INBOX")
    os.rename(root / "cur" / name, root / "cur" / (name + ":2,S"))
    data = view.read(1)
    assert data == b"From: a@example.com\r\nSubject: hi\r\n\r\nline\r\n\r\nlast\r\n"
    assert view.messages[0].size == len(data)
    assert view.header(1) == b"From: a@example.com\r\nSubject: hi\r\n\r\n"


def test_header_without_body_and_empty_header(root: Path, store: UserStore) -> None:
    deliver(root, data=b"Subject: only\n")
    deliver(root, data=b"\nbody only\n")
    view = store.select("INBOX")
    assert view.header(1) == b"Subject: only\r\n"
    assert view.header(2) == b"\r\n"


def test_headers_come_from_the_index_after_first_read(root: Path, store: UserStore) -> None:
    names = [deliver(root, f"m{i}", sub="cur") for i in range(5)]
    view = store.select("INBOX")
    first = [view.header(u) for u in range(1, 6)]
    view.close()
    from imapstore_helpers import restart
    restart()
    for name in names:  # unreadable files: only the cache can answer now
        os.chmod(root / "cur" / name, 0)
    try:
        again = UserStore(root).select("INBOX")
        if os.geteuid() == 0:  # root reads anything: check via rename instead
            for name in names:
                os.rename(root / "cur" / name, root / "cur" / ("x" + name))
        assert [again.header(u) for u in range(1, 6)] == first
    finally:
        for path in (root / "cur").iterdir():
            os.chmod(path, 0o600)


def test_append_with_flags_and_date(root: Path, store: UserStore) -> None:
    result = store.append("Sent", b"Subject: sent\r\n\r\nbody\r\n", ["\\Seen", "Done"],
                          internal_date=1000000000.0)
    assert result.dest_uids == (1,) and result.source_uids == ()
    assert result.uid_validity == store.status("Sent").uid_validity
    folder = root / ".Sent"
    [name] = files(folder, "new")
    assert (folder / "new" / name).read_bytes() == b"Subject: sent\n\nbody\n"  # stored LF
    assert name.startswith("1000000000.") and name.endswith(":2,Sa")
    assert os.stat(folder / "new" / name).st_mtime == 1000000000.0
    view = store.select("Sent")
    [info] = view.messages
    assert info.flags == frozenset({"\\Seen", "Done"}) and info.recent
    assert info.internal_date == 1000000000.0
    assert info.size == len(b"Subject: sent\r\n\r\nbody\r\n")
    assert view.read(1) == b"Subject: sent\r\n\r\nbody\r\n"
    assert store.append("Sent", b"x\r\n").dest_uids == (2,)


def test_append_to_missing_folder_is_trycreate(store: UserStore) -> None:
    with pytest.raises(StoreError) as e:
        store.append("Nope", b"x\r\n")
    assert e.value.code == "TRYCREATE"


def test_copy_keeps_flags_and_dates_and_gives_copyuid(root: Path, store: UserStore) -> None:
    for i in range(3):
        deliver(root, f"m{i}")
    view = store.select("INBOX")
    view.store([1, 3], "+", ["\\Flagged", "Tag"])
    result = view.copy([3, 1], "Trash")
    assert result.source_uids == (1, 3) and result.dest_uids == (1, 2)
    assert result.uid_validity == store.status("Trash").uid_validity
    trash = store.select("Trash")
    assert [m.flags for m in trash.messages] == [frozenset({"\\Flagged", "Tag"})] * 2
    assert [m.internal_date for m in trash.messages] == \
        [view.messages[0].internal_date, view.messages[2].internal_date]
    assert trash.read(1) == view.read(1)
    assert len(files(root, "cur")) == 3  # sources untouched
    with pytest.raises(StoreError) as e:
        view.copy([1], "Missing")
    assert e.value.code == "TRYCREATE"


def test_move_expunges_sources(root: Path, store: UserStore) -> None:
    for i in range(4):
        deliver(root, f"m{i}")
    view = store.select("INBOX")
    other = store.select("INBOX")
    view.store([2], "+", ["\\Seen"])
    result, changes = view.move([2, 4], "Junk")
    assert (result.source_uids, result.dest_uids) == ((2, 4), (1, 2))
    assert changes.expunged == (2, 3)
    assert [m.uid for m in view.messages] == [1, 3]
    assert other.sync().expunged == (2, 3)
    junk = store.select("Junk")
    assert [m.flags for m in junk.messages] == [frozenset({"\\Seen"}), frozenset()]
    assert len(files(root, "cur")) == 2


def test_moved_away_and_back_gets_a_new_uid(root: Path, store: UserStore) -> None:
    deliver(root)
    inbox = store.select("INBOX")
    inbox.move([1], "Trash")
    trash = store.select("Trash")
    trash.move([1], "INBOX")
    assert [m.uid for m in inbox.sync() and inbox.messages] == [2]


def test_read_only_view_refuses_changes(root: Path, store: UserStore) -> None:
    deliver(root)
    view = store.select("INBOX", read_only=True)
    for call in (lambda: view.store([1], "+", ["\\Seen"]), view.expunge,
                 lambda: view.move([1], "Trash")):
        with pytest.raises(StoreError) as e:
            call()
        assert e.value.code == "CANNOT"


def test_folder_deleted_under_a_session(store: UserStore, root: Path) -> None:
    store.create("Work")
    store.append("Work", b"a\r\n")
    store.append("Work", b"b\r\n")
    view = store.select("Work")
    store.delete("Work")
    assert view.sync().expunged == (1, 1)
    assert view.messages == []


def test_change_within_the_same_timestamp_tick_is_still_seen(
        root: Path, store: UserStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailserver.store.folderstate as folderstate

    # However loaded the machine, the listing below counts as "too soon after the
    # last change to trust the mtime".
    monkeypatch.setattr(folderstate, "_FINE_SETTLE_NS", 60 * 10**9)
    monkeypatch.setattr(folderstate, "_SETTLE_NS", 60 * 10**9)
    deliver(root, sub="cur")
    view = store.select("INBOX")
    st = os.stat(root / "cur")
    # Another process adds a file in the same timestamp tick as the last change: the
    # directory's mtime does not move. The listing was too close to that mtime to be
    # trusted, so the next sync lists again.
    deliver(root, sub="cur")
    os.utime(root / "cur", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert view.sync().exists == 2


def test_unchanged_settled_folder_is_not_listed_again(root: Path, store: UserStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import mailserver.store.folderstate as folderstate

    deliver(root, sub="cur")
    os.utime(root / "cur", (time.time() - 5, time.time() - 5))
    os.utime(root / "new", (time.time() - 5, time.time() - 5))
    view = store.select("INBOX")
    listed: list[Path] = []
    real = folderstate._listdir
    monkeypatch.setattr(folderstate, "_listdir", lambda p: listed.append(p) or real(p))
    assert view.sync().exists is None
    assert store.select("INBOX").messages == view.messages  # warm SELECT: no listing
    assert listed == []
    deliver(root, sub="new")
    assert view.sync().exists == 2
    assert root / "new" in listed


def test_symlink_planted_in_the_maildir_is_not_followed(root: Path, store: UserStore,
                                                        tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0\n")
    os.symlink(secret, root / "cur" / "1700000000.M1P1Q1.evil:2,S")
    view = store.select("INBOX")
    [info] = view.messages
    for call in (view.read, view.header):
        with pytest.raises(StoreError) as e:
            call(info.uid)
        assert e.value.code == "SERVERBUG"


def test_undecodable_file_name_is_served_uncached(root: Path, store: UserStore) -> None:
    raw = os.fsencode(str(root / "cur")) + b"/1700000000.M1P1Q1.h\xff\xfe:2,S"
    with open(raw, "wb") as f:
        f.write(b"Subject: odd\n\nbody\n")
    view = store.select("INBOX")
    [info] = view.messages
    assert info.size == len(b"Subject: odd\r\n\r\nbody\r\n")
    assert view.header(info.uid) == b"Subject: odd\r\n\r\n"
    view.store([info.uid], "+", ["\\Flagged"])
    assert view.messages[0].flags == frozenset({"\\Seen", "\\Flagged"})
    view.close()
    from imapstore_helpers import restart
    restart()
    assert [m.uid for m in UserStore(root).select("INBOX").messages] == [info.uid]


def test_session_learns_that_uidvalidity_changed(root: Path, store: UserStore) -> None:
    from mailserver.store.uidlist import UIDLIST_FILE

    deliver(root)
    view = store.select("INBOX")
    assert not view.validity_changed
    os.unlink(root / UIDLIST_FILE)  # an operator "cleaning up"
    deliver(root)
    view.sync()
    assert view.validity_changed  # the IMAP session ends with BYE: its UIDs are void
    assert store.status("INBOX").uid_validity > view.uid_validity


def test_append_converts_crlf_in_pieces_without_splitting_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_new turns CRLF into LF a piece at a time (the message is never in memory
    twice); a CRLF across a piece boundary, a bare CR, or CR CR LF stay exact."""
    from mailserver.store import transfer

    monkeypatch.setattr(transfer, "_WRITE_CHUNK", 7)
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    message = bytearray(b"Subject: x\r\n\r\nab\r\r\ncd\re\r\n" * 5 + b"end\r")
    name = transfer.write_new(tmp_path, message, "S", None)
    expected = bytes(message).replace(b"\r\n", b"\n")
    assert (tmp_path / "new" / name).read_bytes() == expected
    crlf_size = len(expected) + expected.count(b"\n")
    assert f",S={len(expected)},W={crlf_size}:2,S" in name
