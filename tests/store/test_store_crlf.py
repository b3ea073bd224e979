"""store.folderstate.to_crlf, the LF -> CRLF of IMAP's BODY[] and RFC822: the same bytes
whatever mix of line ends a file has (the fast path skips files with no CR at all)."""

from __future__ import annotations

import random

import pytest

from mailserver.store.folderstate import to_crlf


@pytest.mark.parametrize("stored, sent", [
    (b"a\nb\n", b"a\r\nb\r\n"),             # ours: LF only
    (b"a\r\nb\r\n", b"a\r\nb\r\n"),         # a foreign CRLF file is not doubled
    (b"a\r\nb\nc", b"a\r\nb\r\nc"),         # mixed
    (b"a\rb\n", b"a\rb\r\n"),               # a lone CR stays a lone CR
    (b"\r", b"\r"),
    (b"", b""),
])
def test_to_crlf(stored: bytes, sent: bytes) -> None:
    assert to_crlf(stored) == sent


def test_to_crlf_is_crlf_after_every_line() -> None:
    rng = random.Random(3501)
    for _ in range(3000):
        stored = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randint(0, 30)))
        assert to_crlf(stored) == stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
