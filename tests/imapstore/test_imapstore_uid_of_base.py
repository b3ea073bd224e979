"""IMailboxView.uid_of_base: a message named by its Maildir base name (what a webhook's
"received" event gives, before any UID is known) found in a view, through renames."""

from __future__ import annotations

from pathlib import Path

from imapstore_helpers import deliver

from mailserver.store.userstore import UserStore


def test_a_delivered_message_is_found_by_its_base_name(store: UserStore, root: Path) -> None:
    first = deliver(root, "one")
    second = deliver(root, "two")
    view = store.select("INBOX", read_only=True)  # EXAMINE: the files stay in new/
    try:
        by_uid = {m.uid for m in view.messages}
        found = view.uid_of_base(second.split(",")[0])
        assert found is not None and found in by_uid
        assert view.uid_of_base(first.split(",")[0]) == min(by_uid)
        assert view.uid_of_base("1234.M1P1Q1.nowhere") is None
        assert view.uid_of_base(second) is None  # the whole name is not a base
    finally:
        view.close()


def test_found_after_a_flag_rename_and_gone_after_expunge(store: UserStore,
                                                          root: Path) -> None:
    base = deliver(root, "one").split(",")[0]
    view = store.select("INBOX")
    try:
        uid = view.uid_of_base(base)
        assert uid is not None
        view.store([uid], "+", ["\\Seen", "\\Deleted"])
        assert [p.name for p in (root / "cur").iterdir()][0].endswith(":2,ST")
        assert view.uid_of_base(base) == uid
        view.expunge([uid])
        assert view.uid_of_base(base) is None
    finally:
        view.close()


def test_a_message_another_session_expunged_is_not_found(store: UserStore,
                                                         root: Path) -> None:
    base = deliver(root, "one").split(",")[0]
    mine = store.select("INBOX")
    other = store.select("INBOX")
    try:
        uid = mine.uid_of_base(base)
        assert uid is not None
        other.store([uid], "+", ["\\Deleted"])
        other.expunge([uid])
        mine.sync(report_expunges=False)  # vanished, not yet reported to this session
        assert mine.is_vanished(uid)
        assert mine.uid_of_base(base) is None
    finally:
        mine.close()
        other.close()
