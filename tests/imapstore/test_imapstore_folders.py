"""Folders (RFC 3501 6.3.3-6.3.9, RFC 6154, RFC 3348): names, Maildir++ directories,
hierarchy, subscriptions; hostile names never create anything outside the Maildir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from imapstore_helpers import deliver, files

from mailserver.interfaces import FolderInfo, StoreError
from mailserver.store.folders import check_mutf7, normalize
from mailserver.store.userstore import UserStore


def listing(store: UserStore) -> dict[str, FolderInfo]:
    return {f.name: f for f in store.folders()}


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_new_user_folders_with_special_use(store: UserStore) -> None:
    folders = store.folders()
    assert [f.name for f in folders] == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    uses = {f.name: f.special_use for f in folders}
    assert uses == {"INBOX": None, "Drafts": "\\Drafts", "Junk": "\\Junk",
                    "Sent": "\\Sent", "Trash": "\\Trash"}
    assert all(f.subscribed for f in folders if f.name != "INBOX")
    assert all(f.selectable and not f.has_children for f in folders)


def test_create_makes_a_maildirplusplus_folder(root: Path, store: UserStore) -> None:
    store.create("Work")
    assert {"cur", "new", "tmp", "maildirfolder"} <= set(os.listdir(root / ".Work"))
    with pytest.raises(StoreError) as e:
        store.create("Work")
    assert e.value.code == "ALREADYEXISTS"


@pytest.mark.parametrize("name", ["INBOX", "inbox", "InBoX"])
def test_create_inbox_is_refused(store: UserStore, name: str) -> None:
    with pytest.raises(StoreError) as e:
        store.create(name)
    assert e.value.code == "ALREADYEXISTS"


def test_create_with_trailing_delimiter_and_superiors(root: Path, store: UserStore) -> None:
    store.create("Projects.")  # RFC 3501 6.3.3: the trailing delimiter is dropped
    assert (root / ".Projects" / "cur").is_dir()
    store.create("A.B.C")  # superiors are created too (RFC 3501 6.3.3 SHOULD)
    folders = listing(store)
    assert folders["A"].selectable and folders["A"].has_children
    assert folders["A.B"].selectable and folders["A.B"].has_children
    assert not folders["A.B.C"].has_children


def test_placeholder_from_a_foreign_tool_is_noselect(root: Path, store: UserStore) -> None:
    os.makedirs(root / ".x.y" / "cur")
    os.makedirs(root / ".x.y" / "new")
    os.makedirs(root / ".x.y" / "tmp")
    folders = listing(store)
    assert not folders["x"].selectable and folders["x"].has_children
    with pytest.raises(StoreError) as e:
        store.select("x")
    assert e.value.code == "NONEXISTENT"
    with pytest.raises(StoreError) as e:
        store.delete("x")  # RFC 3501 6.3.4: a \Noselect name with inferiors
    assert e.value.code == "CANNOT"


def test_inbox_children_and_case(root: Path, store: UserStore) -> None:
    store.create("inbox.Lists")
    assert (root / ".INBOX.Lists").is_dir()
    folders = listing(store)
    assert folders["INBOX"].has_children
    assert "INBOX.Lists" in folders
    store.append("Inbox.lists".replace("lists", "Lists"), b"x\r\n")


HOSTILE = [
    "..", ".", "a..b", ".hidden", "a.", "../../etc", "a/b", "/etc", "x\0y", "x\ry", "x\ny",
    "a\\b", "a*", "b%", "~user", "x" * 1025, "caf\u00e9", "&", "&Jjo", "&AGE-", "&U,BTFw-x&-&ZeVnLIqe",
    "&2D0-",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_and_create_nothing(tmp_path: Path, root: Path,
                                                      store: UserStore, name: str) -> None:
    before = tree(tmp_path)
    if name == "a.":  # the one legal form: CREATE "a." makes "a"
        store.create(name)
        assert tree(tmp_path) - before <= {str((root / ".a").relative_to(tmp_path)) + s
                                           for s in ("", "/cur", "/new", "/tmp",
                                                     "/maildirfolder")}
        return
    if name == "&U,BTFw-x&-&ZeVnLIqe":
        name = "&U,BTFw-x&-&ZeVnLIqe-"  # valid: see test_valid_mutf7_names
        store.create(name)
        return
    for call in (store.create, store.select, store.delete, store.status,
                 lambda n: store.rename("Sent", n), lambda n: store.append(n, b"x\r\n"),
                 store.subscribe):
        with pytest.raises(StoreError) as e:
            call(name)
        assert e.value.code in ("CANNOT", "LIMIT", "NONEXISTENT", "TRYCREATE")
    assert tree(tmp_path) == before


def test_long_name_is_limit(store: UserStore) -> None:
    with pytest.raises(StoreError) as e:
        store.create("x" * 1025)
    assert e.value.code == "LIMIT"


def test_valid_mutf7_names() -> None:
    for name in ("&ZeVnLIqe-", "Entw&APw-rfe", "a&-b", "&U,BTFw-"):
        check_mutf7(name)
    assert normalize("inbox.Entw&APw-rfe") == "INBOX.Entw&APw-rfe"


def test_delete(root: Path, store: UserStore) -> None:
    store.create("Old")
    store.append("Old", b"x\r\n")
    store.delete("Old")
    assert not (root / ".Old").exists()
    assert not [n for n in os.listdir(root) if n.startswith("mailserver-deleting")]
    for name, code in (("Old", "NONEXISTENT"), ("INBOX", "CANNOT")):
        with pytest.raises(StoreError) as e:
            store.delete(name)
        assert e.value.code == code


def test_delete_with_children_leaves_a_noselect_parent(root: Path, store: UserStore) -> None:
    store.create("P.child")
    store.append("P", b"x\r\n")
    store.delete("P")  # RFC 3501 6.3.4: allowed; P becomes \Noselect
    folders = listing(store)
    assert not folders["P"].selectable and folders["P"].has_children
    assert folders["P.child"].selectable
    with pytest.raises(StoreError) as e:
        store.delete("P")
    assert e.value.code == "CANNOT"


def test_rename_moves_children_and_keeps_uids(root: Path, store: UserStore) -> None:
    store.create("A.B")
    store.append("A", b"x\r\n")
    validity = store.status("A").uid_validity
    store.rename("A", "Z.Y")
    folders = listing(store)
    assert "A" not in folders and "A.B" not in folders
    assert folders["Z.Y"].selectable and folders["Z.Y.B"].selectable
    assert folders["Z"].selectable  # superior created
    assert store.status("Z.Y").uid_validity == validity
    assert [m.uid for m in store.select("Z.Y").messages] == [1]


def test_rename_errors(store: UserStore) -> None:
    store.create("A")
    store.create("B")
    cases = [("A", "B", "ALREADYEXISTS"), ("Missing", "C", "NONEXISTENT"),
             ("A", "INBOX", "ALREADYEXISTS"), ("A", "A.sub", "CANNOT")]
    for old, new, code in cases:
        with pytest.raises(StoreError) as e:
            store.rename(old, new)
        assert e.value.code == code, (old, new)


def test_rename_inbox_moves_messages_and_leaves_it_empty(root: Path, store: UserStore) -> None:
    deliver(root, "a")
    deliver(root, "b", sub="cur", name="1700000000.M1P1Q1.host,S=1,W=2:2,S")
    store.create("INBOX.Kid")
    store.rename("INBOX", "Old-Inbox")
    assert files(root, "new") == [] and files(root, "cur") == []
    moved = store.select("Old-Inbox")
    assert len(moved.messages) == 2
    assert frozenset({"\\Seen"}) in [m.flags for m in moved.messages]
    assert "INBOX.Kid" in listing(store)  # inferiors of INBOX stay (RFC 3501 6.3.5)
    assert store.select("INBOX").messages == []


def test_subscriptions_are_independent_of_existence(root: Path, store: UserStore) -> None:
    store.subscribe("Not.There")
    store.subscribe("inbox")
    store.unsubscribe("Junk")
    text = (root / "subscriptions").read_text()
    assert text == "Sent\nDrafts\nTrash\nNot.There\nINBOX\n"
    folders = listing(store)
    assert folders["INBOX"].subscribed and not folders["Junk"].subscribed
    assert "Not.There" not in folders
    assert store.subscriptions() == ["Sent", "Drafts", "Trash", "Not.There", "INBOX"]
    with pytest.raises(StoreError) as e:
        store.unsubscribe("Junk")
    assert e.value.code == "NONEXISTENT"


def test_status_of_missing_folder(store: UserStore) -> None:
    with pytest.raises(StoreError) as e:
        store.status("Missing")
    assert e.value.code == "NONEXISTENT"


def test_foreign_directories_that_are_not_names_are_skipped(root: Path,
                                                             store: UserStore) -> None:
    os.makedirs(root / ".bad&name" / "cur")
    (root / ".notadir").write_text("x")
    names = [f.name for f in store.folders()]
    assert ".bad&name" not in names and "bad&name" not in names and "notadir" not in names


def test_folder_limit_on_create_and_rename(root: Path) -> None:
    """limits.folders_per_user: CREATE (superiors included) and RENAME (the superiors
    it makes, the folder RENAME INBOX makes) beyond it are LIMIT (RFC 5530); names that
    exist already answer as before; the refused command makes no directory."""
    store = UserStore(root, folder_limit=7)
    assert len(store.folders()) == 5  # INBOX (not counted) and four special-use folders
    store.create("a")
    store.create("b.c")  # b and b.c: 7
    before = tree(root)
    for attempt in (lambda: store.create("d"), lambda: store.create("a.x"),
                    lambda: store.rename("a", "x.y"), lambda: store.rename("INBOX", "n")):
        with pytest.raises(StoreError) as e:
            attempt()
        assert (e.value.code, e.value.text) == ("LIMIT", "Too many folders (7 at most)")
    assert tree(root) == before
    with pytest.raises(StoreError) as e:
        store.create("b.c")
    assert e.value.code == "ALREADYEXISTS"
    with pytest.raises(StoreError) as e:
        store.rename("nothere", "q.r")
    assert e.value.code == "NONEXISTENT"
    store.rename("a", "b.a")  # moves, creates no superior: still 7
    store.delete("b.a")
    store.create("d")
    assert sorted(f.name for f in store.folders()) == [
        "Drafts", "INBOX", "Junk", "Sent", "Trash", "b", "b.c", "d"]
