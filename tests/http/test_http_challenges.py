"""The ACME HTTP-01 table (mailserver/http/challenges.py): what the ACME client sets is
what every process answers, and nothing outside RFC 8555's token alphabet names a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.http.challenges import ChallengeResponses

TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


def test_set_get_remove_in_memory() -> None:
    table = ChallengeResponses()
    assert table.get(TOKEN) is None
    table.set(TOKEN, KEYAUTH)
    assert table.get(TOKEN) == KEYAUTH
    assert table.lookup(TOKEN) == KEYAUTH
    table.remove(TOKEN)
    assert table.get(TOKEN) is None
    table.remove(TOKEN)  # twice is harmless


def test_another_process_reads_what_one_wrote(tmp_path: Path) -> None:
    """A worker process has its own (empty) table; the file written by the twistd
    process's ACME client is what it answers from."""
    writer, reader = ChallengeResponses.under(tmp_path), ChallengeResponses.under(tmp_path)
    writer.set(TOKEN, KEYAUTH)
    assert (tmp_path / "run" / "acme-challenges" / TOKEN).read_text() == KEYAUTH
    assert reader.lookup(TOKEN) is None  # not in its memory...
    assert reader.get(TOKEN) == KEYAUTH  # ...but on disk
    writer.remove(TOKEN)
    assert reader.get(TOKEN) is None
    assert list((tmp_path / "run" / "acme-challenges").iterdir()) == []


@pytest.mark.parametrize("token", ["", "..", "../../etc/passwd", "a/b", "a.b", "a\x00b",
                                   "%2e%2e", "x" * 257])
def test_tokens_outside_the_alphabet_name_no_file(tmp_path: Path, token: str) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "server.lock").write_text("1\n")
    table = ChallengeResponses.under(tmp_path)
    assert table.get(token) is None
    with pytest.raises(ValueError):
        table.set(token, KEYAUTH)


@pytest.mark.parametrize("keyauth", ["", "no-dot", "a.b\n", "<script>.x", "a.b.c"])
def test_key_authorization_must_look_like_one(keyauth: str) -> None:
    with pytest.raises(ValueError):
        ChallengeResponses().set(TOKEN, keyauth)
