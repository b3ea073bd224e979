"""TokensFile.verify reads the file as it is now: a new token works at once and a
revoked one is refused at once, at one stat per check. The API's one cache in front of
it (api/auth.py RecentTokens: a checked token taken as such for RECHECK, no stat) is
tested in test_api_limits_unit.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.api import tokens as tokens_module
from mailserver.api.tokens import TokensFile, new_token
from mailserver.auth import textfile


def accepted(tokens: TokensFile, token: str) -> str | None:
    """The id of the token `verify` accepts, None if refused."""
    entry = tokens.verify(token)
    return entry.id if entry is not None else None


@pytest.fixture()
def stats(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every stat of a watched file, in order."""
    seen: list[Path] = []
    real = textfile._signature

    def counted(path: Path) -> textfile.Signature | None:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(textfile, "_signature", counted)
    return seen


def test_a_revoked_token_is_refused_at_once(tmp_path: Path, stats: list[Path]) -> None:
    path = tmp_path / "api-tokens"
    server = TokensFile(path)
    cli = TokensFile(path)  # `mailserver token del` is another process
    token, entry = new_token("alice@example.org", "send", 1)
    cli.add(entry)
    assert accepted(server, token) == entry.id
    cli.remove(lambda e: e.id == entry.id)
    assert server.verify(token) is None


def test_a_new_token_works_at_once_at_one_stat_a_check(tmp_path: Path,
                                                        stats: list[Path]) -> None:
    path = tmp_path / "api-tokens"
    server = TokensFile(path)
    cli = TokensFile(path)
    first, first_entry = new_token("alice@example.org", "send", 1)
    cli.add(first_entry)
    assert accepted(server, first) == first_entry.id
    second, second_entry = new_token("bob@example.org", "all", 2)
    cli.add(second_entry)
    assert accepted(server, second) == second_entry.id
    stats.clear()
    assert accepted(server, first) == first_entry.id
    assert stats == [path]


def test_an_unknown_id_and_a_wrong_secret_take_one_path(tmp_path: Path, stats: list[Path],
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Both failures look at the file once and compute one HMAC: the time an answer
    takes does not tell a guesser which ids exist."""
    path = tmp_path / "api-tokens"
    server = TokensFile(path)
    token, entry = new_token("alice@example.org", "send", 1)
    TokensFile(path).add(entry)
    assert accepted(server, token) == entry.id
    hmacs: list[str] = []
    real = tokens_module.digest
    monkeypatch.setattr(tokens_module, "digest",
                        lambda token_id, secret: hmacs.append(token_id) or real(token_id,
                                                                                secret))
    costs = []
    for presented in (f"ms1_{entry.id}_{'a' * 52}", f"ms1_{'b' * 16}_{'a' * 52}"):
        stats.clear()
        hmacs.clear()
        assert server.verify(presented) is None
        costs.append((len(stats), len(hmacs)))
    assert costs == [(1, 1), (1, 1)]
