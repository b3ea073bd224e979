"""A Maildir Dovecot served, opened in place: its UIDVALIDITY, UIDs, keywords and
subscriptions are ours from the first open, Dovecot's files stay as they were, and no
damage in them makes one UID name two messages (RFC 3501 2.3.1.1)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from imapstore_helpers import deliver, restart
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

from mailserver.store.dovecot import DovecotFormatError, parse_uidlist
from mailserver.store.uidlist import UIDLIST_FILE, UidList
from mailserver.store.userstore import UserStore

V = 1796625284
#: Three messages Dovecot numbered 1, 3, 7 (2 and 4-6 expunged), next UID 9.
NAMES = ["1700000001.M1P10.vm", "1700000002.M1P10.vm", "1700000003.M1P10.vm"]


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))
    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    yield seen
    globalLogPublisher.removeObserver(cast(ILogObserver, observe))


def dovecot_folder(folder: Path, uidlist: str, flags: dict[str, str] | None = None,
                   names: list[str] | None = None) -> dict[str, str]:
    """Files as Dovecot leaves them (cur/, `,S=..,W=..:2,FLAGS`) and its uidlist;
    returns base -> file name."""
    made = {}
    for base in names if names is not None else NAMES:
        data = f"Subject: {base}\n\nbody\n".encode()
        letters = (flags or {}).get(base, "")
        made[base] = deliver(folder, sub="cur", data=data,
                             name=f"{base},S={len(data)},W={len(data) + 3}:2,{letters}")
    (folder / "dovecot-uidlist").write_text(uidlist)
    return made


V3 = (f"3 V{V} N9 Ge46372258353166bff47000083ecc375\n"
      f"1 :{NAMES[0]},S=31,W=34\n"
      f"3 G5a1b W34 :{NAMES[1]},S=31,W=34\n"
      f"7 :{NAMES[2]},S=31,W=34\n")


def uid_map(store: UserStore, folder: str = "INBOX") -> tuple[int, int, dict[int, bytes]]:
    view = store.select(folder, read_only=True)
    try:
        subjects = {m.uid: view.header(m.uid).split(b"Subject: ")[1].split(b"\r\n")[0]
                    for m in view.messages}
        return view.uid_validity, view.uid_next, subjects
    finally:
        view.close()


def test_version_3_uids_taken_over_and_dovecots_file_untouched(root: Path) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, V3)
    before = (root / "dovecot-uidlist").read_bytes()
    validity, uid_next, subjects = uid_map(UserStore(root))
    assert validity == V
    assert subjects == {1: NAMES[0].encode(), 3: NAMES[1].encode(), 7: NAMES[2].encode()}
    assert uid_next == 9
    assert (root / "dovecot-uidlist").read_bytes() == before
    # New mail continues Dovecot's sequence, after a restart too.
    deliver(root, "new one")
    restart()
    validity, uid_next, subjects = uid_map(UserStore(root))
    assert (validity, subjects[9], uid_next) == (V, b"new one", 10)


def test_version_1_courier_form(root: Path) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, f"1 {V} 12\n2 {NAMES[0]}:2,S\n5 {NAMES[1]}\n6 {NAMES[2]}\n")
    validity, uid_next, subjects = uid_map(UserStore(root))
    assert (validity, sorted(subjects), uid_next) == (V, [2, 5, 6], 12)


def test_unlisted_files_get_uids_from_dovecots_next_uid_in_delivery_order(root: Path) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, f"3 V{V} N20\n1 :{NAMES[1]}\n", names=NAMES)
    _, uid_next, subjects = uid_map(UserStore(root))
    assert subjects == {1: NAMES[1].encode(), 20: NAMES[0].encode(), 21: NAMES[2].encode()}
    assert uid_next == 22


def test_flags_and_keywords_with_dovecots_letters(root: Path) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, V3, flags={NAMES[0]: "FSb", NAMES[1]: "Ra"})
    (root / "dovecot-keywords").write_text("0 $Label1\n1 Junk\n")
    view = UserStore(root).select("INBOX", read_only=True)
    flags = {m.uid: set(m.flags) for m in view.messages}
    view.close()
    assert flags == {1: {"\\Flagged", "\\Seen", "Junk"}, 3: {"\\Answered", "$Label1"},
                     7: set()}


def test_more_than_26_keywords_the_first_26_have_letters(root: Path) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, V3, flags={NAMES[0]: "z"})
    (root / "dovecot-keywords").write_text("".join(f"{i} kw{i}\n" for i in range(30)))
    view = UserStore(root).select("INBOX", read_only=True)
    assert set(view.messages[0].flags) == {"kw25"}
    assert "kw26" not in view.keywords
    view.close()


def test_dovecot_2_3_subscriptions_file(root: Path) -> None:
    (root / "subscriptions").write_text("V\t2\n\nWork\nINBOX\nWork\tSub\nA\x01tB\n")
    assert UserStore(root).subscriptions() == ["Work", "INBOX", "Work.Sub", "A\tB"]


def test_version_1_subscriptions_file(root: Path) -> None:
    (root / "subscriptions").write_text("Work\nWork.Sub\n")
    assert UserStore(root).subscriptions() == ["Work", "Work.Sub"]


# ----------------------------------------------------------------- hostile uidlists


def test_damaged_lines_skipped_their_files_get_new_uids(root: Path,
                                                        warnings: list[str]) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, f"3 V{V} N9\n1 :{NAMES[0]}\nx7 :{NAMES[1]}\n"
                         f"4 no colon here\n5 :{NAMES[2][:10]}")  # last line cut short
    _, _, subjects = uid_map(UserStore(root))
    assert subjects == {1: NAMES[0].encode(), 9: NAMES[1].encode(), 10: NAMES[2].encode()}
    assert any("not a UID: 'x7'" in w for w in warnings)
    assert any("no ':<file name>'" in w for w in warnings)
    assert any("incomplete last line" in w for w in warnings)


def test_duplicate_uid_first_kept_other_file_numbered_anew(root: Path,
                                                           warnings: list[str]) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, f"3 V{V} N9\n3 :{NAMES[0]}\n3 :{NAMES[1]}\n7 :{NAMES[2]}\n"
                         f"8 :{NAMES[2]}\n")
    _, uid_next, subjects = uid_map(UserStore(root))
    assert subjects == {3: NAMES[0].encode(), 7: NAMES[2].encode(), 9: NAMES[1].encode()}
    assert uid_next == 10
    assert any("UID 3 listed again" in w for w in warnings)
    assert any(f"{NAMES[2]} listed again (UID 8)" in w for w in warnings)


def test_uids_above_next_uid_raise_it(root: Path, warnings: list[str]) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, f"3 V{V} N2\n1 :{NAMES[0]}\n50 :{NAMES[1]}\n")
    _, uid_next, subjects = uid_map(UserStore(root))
    assert subjects == {1: NAMES[0].encode(), 50: NAMES[1].encode(), 51: NAMES[2].encode()}
    assert uid_next == 52
    assert any("UID 50 is not below the next UID N2" in w for w in warnings)


def test_names_of_files_gone_keep_their_uids_used(root: Path) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, f"3 V{V} N5\n1 :{NAMES[0]}\n4 :1600000000.M9P9.gone\n",
                   names=NAMES[:1])
    deliver(root, "later")
    _, uid_next, subjects = uid_map(UserStore(root))
    assert subjects == {1: NAMES[0].encode(), 5: b"later"}  # 4 is never reused


@pytest.mark.parametrize("header", ["", "3 N5\n", "3 V0 N5\n", "9 V5 N5\n", "1 abc 5\n"])
def test_unusable_header_means_a_new_uidvalidity(root: Path, header: str,
                                                 warnings: list[str]) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, header + f"1 :{NAMES[0]}\n")
    validity, _, subjects = uid_map(UserStore(root))
    assert validity not in (0, 5, V)
    assert sorted(subjects) == [1, 2, 3]
    assert any("not taking over Dovecot's UIDs" in w for w in warnings)


def test_parse_rejects_nothing_silently() -> None:
    with pytest.raises(DovecotFormatError, match="no valid UIDVALIDITY"):
        parse_uidlist(Path("x"), b"3 N5 G1\n")
    parsed = parse_uidlist(Path("x"), b"3 V1 N2\n1 G0a W9 :a.b,S=1:2,S\n2 :../x\n")
    assert parsed.records == [(1, "a.b")]
    assert parsed.extensions == {"a.b": {"G": "0a", "W": "9"}}
    assert parsed.warnings == ["line 3: not a Maildir file name: '../x'"]


@pytest.mark.parametrize("line", ["\u00b2 :a.b", "1" * 5000 + " :a.b", "4294967296 :a.b",
                                  "07 :a.b", "3 G:x :a.b", "3 :.hidden"])
def test_hostile_numbers_and_names_are_warned_not_fatal(line: str) -> None:
    """A superscript digit passes str.isdigit() and int() refuses it; 5000 digits are
    past what int() parses; 2^32 is not a UID; each is a warning and the line is
    skipped (or, for "07" and a field with ":", read by the careful parser)."""
    parsed = parse_uidlist(Path("x"), f"3 V1 N9\n1 :c.d\n{line}\n".encode())
    assert parsed.records[0] == (1, "c.d")
    if line.startswith("07"):
        assert parsed.records[1:] == [(7, "a.b")] and not parsed.warnings
    else:
        assert len(parsed.records) == 1 and len(parsed.warnings) == 1, parsed.warnings
    with pytest.raises(DovecotFormatError, match="no valid UIDVALIDITY"):
        parse_uidlist(Path("x"), b"3 V\xc2\xb2 N9\n")
    with pytest.raises(DovecotFormatError, match="no valid UIDVALIDITY"):
        parse_uidlist(Path("x"), b"1 " + b"9" * 5000 + b" 9\n")


@pytest.mark.parametrize("text", [
    "3 V1 N9\n1 :a.b\n2 W5 G00 P9z :c.d,S=5:2,S\n8 :e.f\n",
    "3 V1 N2\n1 :a.b\n8 :e.f\n",                       # above N: raised, warned
    "3 V1 N9\n1 :a.b\n1 :c.d\n",                       # a UID twice
    "3 V1 N9\n1 :a.b\n2 :a.b,S=3\n",                   # a base name twice
    "3 V1 N9\n\n1 :a.b\n",                             # an empty line
])
def test_the_fast_path_reads_what_the_careful_loop_reads(text: str) -> None:
    """_parse_clean_v3 (every record well formed) gives exactly what the line-by-line
    parser gives, warnings included; anything else falls back to the latter."""
    import mailserver.store.dovecot as dovecot

    fast = parse_uidlist(Path("x"), text.encode())
    real = dovecot._parse_clean_v3
    try:
        dovecot._parse_clean_v3 = lambda result, lines: False  # type: ignore[assignment]
        careful = parse_uidlist(Path("x"), text.encode())
    finally:
        dovecot._parse_clean_v3 = real  # type: ignore[assignment]
    assert (fast.records, fast.extensions, fast.next_uid, fast.warnings) == (
        careful.records, careful.extensions, careful.next_uid, careful.warnings)


def test_our_list_wins_once_it_exists(root: Path) -> None:
    """A dovecot-uidlist appearing beside our list later (Dovecot run again by
    mistake) changes nothing: UIDs already given stay."""
    deliver(root, "ours")
    validity, _, subjects = uid_map(UserStore(root))
    (root / "dovecot-uidlist").write_text(f"3 V{V} N9\n")
    restart()
    assert uid_map(UserStore(root)) == (validity, 2, subjects)


def _take_over(folder: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    uidlist = UidList(Path(folder), Path(folder))
    uidlist.refresh()
    out.put((uidlist.validity, sorted(uidlist.by_base.items())))


def test_processes_opening_at_once_agree(root: Path) -> None:
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, V3)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_over, args=(str(root), out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    expected = (V, sorted({NAMES[0]: 1, NAMES[1]: 3, NAMES[2]: 7}.items()))
    assert results == [expected] * 4
    assert os.listdir(root).count(UIDLIST_FILE) == 1


def test_unreadable_dovecot_uidlist_keeps_the_folder_closed(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dovecot's file owned by vmail, mode 0600: a new UIDVALIDITY now could never be
    undone, so the open fails (and works once the owner is fixed)."""
    (root / UIDLIST_FILE).unlink(missing_ok=True)
    dovecot_folder(root, V3)
    import mailserver.store.dovecot as dovecot_module

    real_open = os.open

    def denied(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith("dovecot-uidlist"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(dovecot_module.os, "open", denied)
    with pytest.raises(PermissionError):
        UserStore(root).select("INBOX")
    assert not (root / UIDLIST_FILE).exists()
    monkeypatch.undo()
    restart()
    assert uid_map(UserStore(root))[0] == V
