"""Names a client chose reach the log cut and printable (logs.printable)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeReactor
from twisted.cred.credentials import UsernamePassword
from twisted.logger import formatEvent, globalLogPublisher

from mailserver.auth.checker import PasswordChecker
from mailserver.auth.directory import RecipientDirectory
from mailserver.config import config_from_dict
from mailserver.logs import ELLIPSIS, MAX_PEER_TEXT, printable


def test_refused_login_name_is_logged_without_controls(tmp_path: Path) -> None:
    """A SASL PLAIN or IMAP literal login name may hold CR, LF and ESC: a forged log
    line or a terminal escape if logged raw."""
    config = config_from_dict({"hostname": "mail.example.org", "data_dir": str(tmp_path),
                               "domains": {"local": ["example.org"]}})
    config.users_file.write_text("")
    reactor = FakeReactor()
    checker = PasswordChecker(RecipientDirectory(config), reactor=reactor, failure_delay=0)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = checker.requestAvatarId(UsernamePassword(
            "x@example.org\r\n2026-12-07 login accepted for root\x1b[2J" + "y" * 2000,
            "pw"))
        refused: list[Any] = []
        d.addErrback(refused.append)
        reactor.advance(1)
        assert len(refused) == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = [formatEvent(e) for e in events if "login refused" in str(e.get("log_format"))]
    # (lower case: the name is looked up as an address key)
    assert line.startswith("login refused for x@example.org??2026-12-07 login accepted "
                           "for root?[2jyyy")
    assert line.endswith(ELLIPSIS) and len(line) < MAX_PEER_TEXT + 30
    assert re.search("[\x00-\x1f\x7f-\x9f]", line) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("550 5.1.1 plain", "550 5.1.1 plain"),
    ("a\r\nb\tc\x00d\x1b[0m\x7f\x9b", "a??b?c?d?[0m??"),
    (b"raw \xff bytes\x1b", "raw \ufffd bytes?"),
    ("x" * MAX_PEER_TEXT, "x" * MAX_PEER_TEXT),
    ("x" * (MAX_PEER_TEXT + 1), "x" * (MAX_PEER_TEXT - 3) + ELLIPSIS),
    ("\u00e9" * MAX_PEER_TEXT, "\u00e9" * ((MAX_PEER_TEXT - 3) // 2) + ELLIPSIS),
])
def test_printable(text: str | bytes, expected: str) -> None:
    out = printable(text)
    assert out == expected
    assert len(out.encode()) <= MAX_PEER_TEXT
