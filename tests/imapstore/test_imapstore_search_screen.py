"""A header SEARCH first asks the folder's index, in SQL, which cached header blocks can
hold its word at all (store/index.py screen_headers); only those messages are evaluated.
The answer must be exactly the one without the pre-test, whatever the headers hold:
encoded words, other cases, non-ASCII octets, NULs, address comments and quoting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from imapstore_helpers import deliver

from mailserver.imap import fetch
from mailserver.imap import search as search_module
from mailserver.imap.grammar import Search, parse_command
from mailserver.imap.search import run_search
from mailserver.store.index import FolderIndex
from mailserver.store.userstore import UserStore
from mailserver.store.view import MailboxView

HEADERS = [
    b"Subject: invoice 42\nFrom: a@example.org\n",
    b"Subject: Your INVOICE\nFrom: b@example.org\n",
    b"Subject: =?utf-8?b?SW52b2ljZSDDqXTDqQ==?=\nFrom: c@example.org\n",  # Invoice été
    b"Subject: Inv\xe9 oice \xe9t\xe9\nFrom: d@example.org\n",       # latin-1, no match
    b"Subject: facture\xc3\xa9 invoice\nFrom: e@example.org\n",      # UTF-8 and a match
    b"Subject: lunch\nFrom: f@example.org\n",
    b"Subject: lunch\nX-Note: invoice elsewhere\nFrom: g@example.org\n",
    b"Subject: in\x00voice\nFrom: h@example.org\n",
    b"Subject: report\nFrom: Bill <bill (the boss)@ example.org>\n",
    b"Subject: report\nFrom: \"bill\"@example.org\n",
    b"Subject: report\nFrom: someone@example.org\n",
    b"Subject: report\nTo: x@example.org\nFrom: Billy <billy@example.org>\n",
]
SEARCHES = [b'SUBJECT "invoice"', b'HEADER SUBJECT "INVOICE"', b'HEADER X-NOTE "invoice"',
            b'FROM "bill@example.org"', b'FROM "bill"', b'SUBJECT "invoice" UNSEEN',
            b'SUBJECT "oice 4"', b'NOT SUBJECT "invoice"', b'OR SUBJECT "lunch" FROM "bill"',
            b'SUBJECT "t\xc3\xa9"', b'SUBJECT ""']


@pytest.fixture(autouse=True)
def empty_item_cache() -> Iterator[None]:
    fetch.CACHE.clear()
    yield
    fetch.CACHE.clear()


def search(view: MailboxView, criteria: bytes, cached: bool) -> list[int]:
    command = parse_command(b"a UID SEARCH CHARSET UTF-8 " + criteria + b"\r\n")
    assert isinstance(command, Search)
    key = ("location", "alice@example.org", "INBOX", view.uid_validity) if cached else None
    return run_search(view, command.program, True, key)


@pytest.fixture
def view(store: UserStore, root: Path) -> Iterator[MailboxView]:
    for n, header in enumerate(HEADERS):
        deliver(root, data=header + b"\nbody %d\n" % n)
    view = store.select("INBOX")
    for info in view.messages:  # the header blocks go into the index (as FETCH does)
        view.header(info.uid)
    view.state.index.flush()
    yield view
    view.close()


@pytest.mark.parametrize("criteria", SEARCHES)
def test_the_pre_test_changes_no_answer(view: MailboxView, criteria: bytes) -> None:
    fetch.CACHE.clear()
    plain = search(view, criteria, cached=False)  # evaluates every message
    assert search(view, criteria, cached=True) == plain
    fetch.CACHE.clear()
    assert search(view, criteria, cached=True) == plain  # again, from the kept fields


def test_the_expected_messages_match(view: MailboxView) -> None:
    uids = [info.uid for info in view.messages]
    assert search(view, b'SUBJECT "invoice"', True) == [uids[i] for i in (0, 1, 2, 4)]
    assert search(view, b'FROM "bill@example.org"', True) == [uids[8], uids[9]]


def test_only_messages_that_may_match_are_evaluated(
        view: MailboxView, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated: list[int] = []
    real = search_module._Message._field_block

    def counting(self: search_module._Message, name: str) -> bytes | None:
        evaluated.append(self.seq)
        return real(self, name)
    monkeypatch.setattr(search_module._Message, "_field_block", counting)
    search(view, b'SUBJECT "invoice"', True)
    # 1, 2 hold the word; 3 an encoded word; 4, 5 non-ASCII octets; 7 the word in
    # another field; a NUL-split word (8) is not the word.
    assert evaluated == [1, 2, 3, 4, 5, 7]
    evaluated.clear()
    search(view, b'SUBJECT "invoice"', False)
    assert evaluated == list(range(1, 13))


def test_headers_not_yet_written_are_screened_too(root: Path) -> None:
    folder = FolderIndex(root)
    folder.bind(3)
    folder.put_header("pending", b"Subject: lunch\r\n\r\n")
    folder.put_header("held", b"Subject: invoice\r\n\r\n")
    try:
        assert folder.screen_headers(["pending", "held", "unknown"], "invoice", False) == {
            "pending": b"Subject: lunch\r\n\r\n", "held": b"Subject: invoice\r\n\r\n"}
        folder.flush()
        assert folder.screen_headers(["pending", "held", "unknown"], "invoice", False) == {
            "pending": None, "held": b"Subject: invoice\r\n\r\n"}
    finally:
        folder.close()
