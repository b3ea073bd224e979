"""APPEND keeps the new message's header block, ENVELOPE, BODYSTRUCTURE and BODY in the
folder's index while it has the bytes (imap/precompute.py), so its first FETCH or
header SEARCH opens no file, and the kept values are exactly what a FETCH computes from
the file (whatever line ends the client sent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from imapstore_helpers import deliver, restart

from mailserver.imap import fetch
from mailserver.imap.grammar import Fetch, SearchKey, flatten, parse_command
from mailserver.imap.precompute import append_items
from mailserver.imap.search import run_search
from mailserver.store import userstore
from mailserver.store.userstore import UserStore
from mailserver.store.view import MailboxView

ITEMS = (b"(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER] "
         b"BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
MIXED = (b"From: Ann <ann@example.org>\r\nTo: bob@example.net\r\nSubject: report\r\n"
         b"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
         b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
         b"--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n")
#: Bare LF and bare CR in what the client sent: stored with LF ends, read with CRLF.
ODD = b"Subject: odd\nFrom: x@example.org\r\n\r\nline one\rstill one\nline two\r\n"
NO_BODY = b"Subject: only a header\r\nFrom: y@example.org"


@pytest.fixture(autouse=True)
def empty_item_cache() -> Iterator[None]:
    fetch.CACHE.clear()
    yield
    fetch.CACHE.clear()


def fetch_all(view: MailboxView, cache: bool = True) -> bytes:
    command = parse_command(b"a FETCH 1:* " + ITEMS + b"\r\n")
    assert isinstance(command, Fetch)
    entries = [(n + 1, info) for n, info in enumerate(view.messages)]
    key = ("location", "alice@example.org", view.name, view.uid_validity) if cache else None
    data, missing = fetch.build(view, fetch.plan(flatten(command.items)), entries,
                                cache_key=key)
    assert missing == []
    return data


def refuse_files(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record (and refuse) every open of a message file from now on."""
    opened: list[int] = []

    def refuse(self: MailboxView, uid: int) -> tuple[object, int]:
        opened.append(uid)
        raise AssertionError(f"message file of UID {uid} opened")
    monkeypatch.setattr(MailboxView, "_open_file", refuse)
    return opened


def test_first_fetch_after_append_opens_no_file(
        store: UserStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(root, subject="already there")
    view = store.select("INBOX")
    for message in (MIXED, ODD, NO_BODY):
        store.append("INBOX", message, ("\\Seen",), None, append_items)
    view.sync()
    computed = fetch_all(view, cache=False)  # from the files, nothing kept
    assert b'BODYSTRUCTURE (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 ' \
        in computed
    assert b"* 3 FETCH (ENVELOPE (NIL \"odd\" " in computed
    # as read back: CRLF ends, so the bare CR and LF lines count as CRLF ones
    assert b'"7bit" 30 2 NIL NIL NIL NIL) BODY ' in computed
    assert b"BODY[HEADER] {43}\r\nSubject: only a header\r\nFrom: y@example.org BODY[" \
        in computed
    opened = refuse_files(monkeypatch)
    first_uid = view.messages[0].uid
    # The message delivered before the session knew it is read; the appended ones not.
    with pytest.raises(AssertionError):
        fetch_all(view)
    assert opened == [first_uid]
    monkeypatch.undo()
    fetch.CACHE.clear()
    fetch_all(view)  # the delivered one's items are kept now
    opened = refuse_files(monkeypatch)
    assert fetch_all(view) == computed
    program = parse_command(b'a SEARCH SUBJECT "odd"\r\n').program  # type: ignore[attr-defined]
    assert isinstance(program, SearchKey)
    key = ("location", "alice@example.org", "INBOX", view.uid_validity)
    assert run_search(view, program, False, key) == [3]
    assert opened == []
    view.close()


def test_kept_values_survive_a_restart(store: UserStore, root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    view = store.select("INBOX")
    store.append("INBOX", MIXED, (), None, append_items)
    view.close()
    restart()
    view = store.select("INBOX")
    opened = refuse_files(monkeypatch)
    data = fetch_all(view)
    assert b'("application" "pdf" ("name" "a.pdf") NIL NIL "base64" 4 NIL NIL NIL NIL)' \
        in data
    assert opened == []
    view.close()


def test_big_or_unrenderable_messages_are_left_to_their_first_fetch(
        store: UserStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over MAX_KEPT_AT_APPEND nothing is rendered at APPEND; a renderer that fails
    does not fail the APPEND (the message is stored, its FETCH computes the items)."""
    view = store.select("INBOX")
    monkeypatch.setattr(userstore, "MAX_KEPT_AT_APPEND", len(MIXED) - 1)
    rendered: list[bytes] = []
    store.append("INBOX", MIXED, (), None, lambda m: rendered.append(m) or {})
    assert rendered == []

    def broken(message: bytes) -> dict[str, bytes]:
        raise ValueError("no")
    monkeypatch.setattr(userstore, "MAX_KEPT_AT_APPEND", 1 << 20)
    result = store.append("INBOX", MIXED, (), None, broken)
    assert len(result.dest_uids) == 1
    view.sync()
    assert len(view.messages) == 2
    assert b"ENVELOPE (\"Sun, 22 Nov 2026 12:00:00 +0000\" \"report\"" in fetch_all(view)
    view.close()
