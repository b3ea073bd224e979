"""POP3 command lines -> typed commands (RFC 1939, RFC 2449, RFC 2595, RFC 5034). Pure.

No I/O and no state: the session decides whether a command is allowed in its state;
this module only decides whether the line is a well-formed command. A malformed line
raises CommandError with the text of the `-ERR` reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailserver.core.lines import POP3_LINES

#: RFC 2449 4: "the maximum length of a command line ... is 255 octets, including the
#: terminating CRLF". SASL initial responses (RFC 5034 4) may be longer: AUTH PLAIN of
#: three 255-octet fields in base64 is ~1 KiB, so AUTH and continuation lines get more.
MAX_COMMAND_LINE = POP3_LINES.max_line  # 255 (core/lines.py has the table)
MAX_AUTH_LINE = POP3_LINES.max_sasl_line  # 2048
#: Message numbers larger than this are refused as syntax errors (no maildrop is that big).
MAX_MESSAGE_NUMBER = 10**9


class CommandError(Exception):
    """A line that is not a valid command; str(e) is the -ERR text."""


@dataclass(frozen=True)
class Command:
    """A parsed command: its upper-case keyword and its arguments, already checked."""

    name: str


@dataclass(frozen=True)
class User(Command):
    user: str


@dataclass(frozen=True)
class Pass(Command):
    password: bytes


@dataclass(frozen=True)
class Auth(Command):
    #: None: AUTH without arguments lists the mechanisms (RFC 5034 does not have it,
    #: but clients such as fetchmail send it, and Dovecot answers with the list).
    mechanism: str | None
    initial_response: bytes | None


@dataclass(frozen=True)
class MessageArg(Command):
    """LIST, UIDL (optional number), RETR, DELE (required number)."""

    number: int | None


@dataclass(frozen=True)
class Top(Command):
    number: int
    lines: int


#: Commands without arguments (RFC 1939 5-7, RFC 2449 5, RFC 2595 4).
NO_ARGUMENTS = frozenset({"QUIT", "STAT", "NOOP", "RSET", "CAPA", "STLS"})
OPTIONAL_NUMBER = frozenset({"LIST", "UIDL"})
REQUIRED_NUMBER = frozenset({"RETR", "DELE"})
KNOWN = NO_ARGUMENTS | OPTIONAL_NUMBER | REQUIRED_NUMBER | {"USER", "PASS", "AUTH", "TOP",
                                                            "APOP"}


def keyword(line: bytes) -> str:
    """The command keyword of a line, upper case ('' for an empty line)."""
    return line.split(b" ", 1)[0].decode("ascii", "replace").upper()


def parse_command(line: bytes) -> Command:
    """One command line without its CRLF -> a Command; CommandError if malformed.

    RFC 1939 3: keywords are case-insensitive, separated from arguments by a single
    space; arguments are printable ASCII. We accept runs of spaces between arguments
    (many clients send a trailing space) but not other whitespace.
    """
    if line[:5].upper() == b"RETR " and line[5:].isdigit():
        # The bulk of a download (a 10,000-message maildrop is 10,000 of these): the
        # same result as the general path below, a quarter of its cost.
        return MessageArg("RETR", message_number(line[5:]))
    if b"\0" in line:
        raise CommandError("NUL octet in command")
    name = keyword(line)
    if not name:
        raise CommandError("Unknown command.")
    if name not in KNOWN:
        raise CommandError("Unknown command.")
    rest = line[len(name) + 1:] if len(line) > len(name) else b""
    if name == "PASS":
        # RFC 1939 7: the password may contain spaces; it is the rest of the line.
        if not rest:
            raise CommandError("PASS: missing password")
        return Pass(name, rest)
    args = rest.split()
    if name in NO_ARGUMENTS:
        if args:
            raise CommandError(f"{name}: no arguments allowed")
        return Command(name)
    if name == "USER":
        if len(args) != 1:
            raise CommandError("USER: one argument required")
        return User(name, _text(args[0]))
    if name == "AUTH":
        return _auth(args)
    if name == "APOP":
        # Needs the clear-text password on the server; we store only hashes.
        raise CommandError("APOP not supported; use USER/PASS or AUTH PLAIN over TLS")
    if name in OPTIONAL_NUMBER:
        if len(args) > 1:
            raise CommandError(f"{name}: at most one argument")
        return MessageArg(name, message_number(args[0]) if args else None)
    if name in REQUIRED_NUMBER:
        if len(args) != 1:
            raise CommandError(f"{name}: one message number required")
        return MessageArg(name, message_number(args[0]))
    # TOP msg n (RFC 1939 7)
    if len(args) != 2:
        raise CommandError("TOP: message number and line count required")
    return Top(name, message_number(args[0]), line_count(args[1]))


def _auth(args: list[bytes]) -> Auth:
    if not args:
        return Auth("AUTH", None, None)
    if len(args) > 2:
        raise CommandError("AUTH: too many arguments")
    mechanism = _text(args[0]).upper()
    initial = args[1] if len(args) == 2 else None
    return Auth("AUTH", mechanism, initial)


def _text(arg: bytes) -> str:
    try:
        text = arg.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("Invalid UTF-8 in argument") from None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise CommandError("Control characters in argument")
    return text


def message_number(arg: bytes) -> int:
    """RFC 1939 3: a message-number is a decimal >= 1. '0', '-1', '+1', '1x' are refused."""
    if not arg.isdigit() or not arg.isascii() or len(arg) > 10:
        raise CommandError("Invalid message number")
    number = int(arg)
    if number < 1 or number > MAX_MESSAGE_NUMBER:
        raise CommandError("Invalid message number")
    return number


def line_count(arg: bytes) -> int:
    """TOP's second argument: a non-negative decimal (RFC 1939 7)."""
    if not arg.isdigit() or not arg.isascii() or len(arg) > 10:
        raise CommandError("Invalid line count")
    return int(arg)


def line_limit(line_start: bytes, auth_pending: bool) -> int:
    """The longest line (with CRLF) we read for a line beginning with `line_start`."""
    if auth_pending or keyword(line_start) == "AUTH":
        return MAX_AUTH_LINE
    return MAX_COMMAND_LINE
