"""LIST/LSUB patterns (RFC 3501 6.3.8): the linear matcher agrees with the backtracking
regular expression it replaced, and its work does not grow with the wildcards."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.imap.listmatch import MAX_PATTERN, MailboxPattern, collapse


def reference_regex(full: str) -> re.Pattern[str]:
    """The old translation (correct, but exponential on many wildcards): the oracle."""
    out = []
    head = re.split(r"[*%]", full, maxsplit=1)[0][:5]
    if head and head.upper() == "INBOX"[:len(head)] and head != "INBOX"[:len(head)]:
        out.append(rf"(?:(?=INBOX(?:\.|\Z)){'INBOX'[:len(head)]}|{re.escape(head)})")
        full = full[len(head):]
    for ch in full:
        out.append(".*" if ch == "*" else "[^.]*" if ch == "%" else re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


@settings(max_examples=3000, deadline=None)
@given(pattern=st.text(alphabet="ab.*%", max_size=8),
       name=st.text(alphabet="ab.", max_size=10))
def test_agrees_with_the_regex(pattern: str, name: str) -> None:
    assert MailboxPattern(pattern).matches(name) == bool(
        reference_regex(pattern).match(name))


@settings(max_examples=1000, deadline=None)
@given(pattern=st.text(alphabet="inbxoINBOX.*%", max_size=9),
       name=st.sampled_from(["INBOX", "INBOX.x", "INBOX.in", "inbox", "Inbound", "inboxes",
                             "in", "x", "INBOXes", "INBO", "iNbOx.x"]))
def test_inbox_in_any_case_agrees_with_the_regex(pattern: str, name: str) -> None:
    assert MailboxPattern(pattern).matches(name) == bool(
        reference_regex(pattern).match(name))


def test_semantics() -> None:
    assert MailboxPattern("*").matches("a.b.c")
    assert MailboxPattern("%").matches("abc") and not MailboxPattern("%").matches("a.b")
    assert MailboxPattern("a.%").matches("a.b") and not MailboxPattern("a.%").matches("a.b.c")
    assert MailboxPattern("a*c").matches("a.b.c") and not MailboxPattern("a%c").matches("a.c")
    assert MailboxPattern("inbox*").matches("INBOX.child")
    assert not MailboxPattern("inbox*").matches("Inbound")
    assert MailboxPattern("Sent").matches("Sent") and not MailboxPattern("Sent").matches("sent")
    assert collapse("a%%*%b**c%%") == "a*b*c%"


def test_hundreds_of_wildcards_cost_one_step_per_character() -> None:
    """`LIST "" "<60 stars>x"` took 16.9 s with the regex. The matcher examines each
    character of each name once per automaton, whatever the pattern."""
    names = ["a" * 240, "a." * 120, ("ab" * 120)[:239] + "x", "x"]
    patterns = ["*" * 600 + "x", "%" * 300 + "*" * 300 + "x", "*a" * 300 + "*b",
                "%a" * 300 + "%", "*%" * 300 + "z", ("*" * 50 + "a") * 10 + "%x"]
    for text in patterns:
        assert len(text) <= MAX_PATTERN
        pattern = MailboxPattern(text)
        found = [name for name in names if pattern.matches(name)]
        assert pattern.steps <= sum(map(len, names))
        assert found == [name for name in names if _slow_but_safe(collapse(text), name)]


def _slow_but_safe(pattern: str, name: str) -> bool:
    """A textbook dynamic programme over (pattern, name) positions: quadratic, no
    backtracking, and independent of the matcher under test."""
    rows = len(pattern) + 1
    ok = [[False] * (len(name) + 1) for _ in range(rows)]
    ok[0][0] = True
    for i in range(1, rows):
        p = pattern[i - 1]
        for j in range(len(name) + 1):
            if p == "*":
                ok[i][j] = ok[i - 1][j] or (j > 0 and ok[i][j - 1])
            elif p == "%":
                ok[i][j] = ok[i - 1][j] or (j > 0 and name[j - 1] != "." and ok[i][j - 1])
            else:
                ok[i][j] = j > 0 and name[j - 1] == p and ok[i - 1][j - 1]
    return ok[-1][-1]
