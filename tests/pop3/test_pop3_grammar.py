"""POP3 command lines -> commands (pure)."""

from __future__ import annotations

import pytest

from mailserver.pop3 import grammar
from mailserver.pop3.grammar import Auth, Command, CommandError, MessageArg, Pass, Top, User


@pytest.mark.parametrize("line, command", [
    (b"QUIT", Command("QUIT")),
    (b"quit", Command("QUIT")),
    (b"capa", Command("CAPA")),
    (b"STLS", Command("STLS")),
    (b"USER alice@example.org", User("USER", "alice@example.org")),
    (b"USER alice ", User("USER", "alice")),  # a trailing space, as some clients send
    (b"PASS pass word with spaces", Pass("PASS", b"pass word with spaces")),
    (b"LIST", MessageArg("LIST", None)),
    (b"LIST 7", MessageArg("LIST", 7)),
    (b"UIDL 12", MessageArg("UIDL", 12)),
    (b"RETR 1", MessageArg("RETR", 1)),
    (b"retr 42", MessageArg("RETR", 42)),  # the RETR fast path, case-insensitive
    (b"Retr 007", MessageArg("RETR", 7)),
    (b"RETR  1", MessageArg("RETR", 1)),  # not the fast path: the general one agrees
    (b"dele 3", MessageArg("DELE", 3)),
    (b"TOP 2 0", Top("TOP", 2, 0)),
    (b"AUTH", Auth("AUTH", None, None)),
    (b"AUTH plain", Auth("AUTH", "PLAIN", None)),
    (b"AUTH PLAIN AGEAYg==", Auth("AUTH", "PLAIN", b"AGEAYg==")),
])
def test_valid_commands(line: bytes, command: Command) -> None:
    assert grammar.parse_command(line) == command


@pytest.mark.parametrize("line, error", [
    (b"", "Unknown command."),
    (b"FOO", "Unknown command."),
    (b"RETR", "RETR: one message number required"),
    (b"RETR 0", "Invalid message number"),
    (b"RETR -1", "Invalid message number"),
    (b"RETR 1.5", "Invalid message number"),
    (b"RETR \xd9\xa1", "Invalid message number"),  # ARABIC-INDIC DIGIT ONE is not ASCII
    (b"RETR 12345678901", "Invalid message number"),
    (b"RETR 1 2", "RETR: one message number required"),
    (b"RETR 1\0", "NUL octet in command"),
    (b"RETR 99999999999", "Invalid message number"),  # digits, but past the limit
    (b"TOP 1 x", "Invalid line count"),
    (b"NOOP x", "NOOP: no arguments allowed"),
    (b"USER", "USER: one argument required"),
    (b"USER a b", "USER: one argument required"),
    (b"USER \xff", "Invalid UTF-8 in argument"),
    (b"PASS", "PASS: missing password"),
    (b"AUTH PLAIN a b", "AUTH: too many arguments"),
    (b"USER a\0", "NUL octet in command"),
    (b"APOP a b", "APOP not supported; use USER/PASS or AUTH PLAIN over TLS"),
])
def test_malformed_commands(line: bytes, error: str) -> None:
    with pytest.raises(CommandError) as e:
        grammar.parse_command(line)
    assert str(e.value) == error


def test_line_limits() -> None:
    assert grammar.line_limit(b"RETR 1", False) == 255  # RFC 2449 4
    assert grammar.line_limit(b"AUTH PL", False) == grammar.MAX_AUTH_LINE
    assert grammar.line_limit(b"AGFsaWNl", True) == grammar.MAX_AUTH_LINE
