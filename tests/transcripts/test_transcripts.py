"""Golden transcripts, as Postfix keeps them: each `NAME.in` is replayed against the
real server (twistd, through tests/server_harness.py) and what went over the wire is
compared with `NAME.ref`, line by line. The .ref files are the readable record of our
exact wire behaviour; a change that alters a byte of it shows up here as a diff.

The .in language (one directive a line; `#` lines are comments, copied to the .ref):

    @service NAME      the listener to connect to (smtp, submission, pop3, imap)
    @messages N        before connecting, alice's INBOX holds exactly N fixed messages
    C: text            send `text` + CRLF, then read one response
    C- text            send `text` + CRLF later (with the next read: pipelining)
    C~ EXPR            send exact bytes, then read one response; EXPR is a bytes
                       literal, or literals joined by `+` and repeated by `* N`
    C~- EXPR           the same, read nothing yet
    read N             read N responses (answers to the commands sent with C-)
    closed             the server must close the connection (all it sends first is kept)

Sends are held until the next read and then written at once, so `C-` lines reach the
server in one segment: a real pipelining client. A response is, per protocol: SMTP, up
to a line `NNN ` (RFC 5321 4.2.1); POP3, one status line, and for +OK to a multi-line
command (CAPA, LIST/UIDL without argument, RETR, TOP, AUTH without argument) up to the
lone dot (RFC 1939 3); IMAP, up to a tagged line or a `+` continuation (RFC 3501 7.5),
reading `{n}` literals whole.

In the .ref, `C:` / `C~` are what was sent, `S:` each line the server sent (without
CRLF), `S~` a line that did not end in CRLF (shown as a Python literal).

What varies between runs is masked, and only that (MASKS): the SMTP queue id in
"queued as", IMAP's UIDVALIDITY and MAILBOXID (RFC 8474). The host name is the harness's fixed mx.test.example,
the peer 127.0.0.1, and the POP3/IMAP messages are placed with fixed file names (fixed
UIDLs) and fixed mtimes, so nothing else moves. Regenerate after a deliberate change
with `TRANSCRIPTS_UPDATE=1` and read the diff before committing it.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))

from server_harness import PASSWORD, USERS, RunningServer, make_server  # noqa: E402

HERE = Path(__file__).parent
CASES = sorted(p.stem for p in HERE.glob("*.in"))

LISTEN = {name: "tcp:0:interface=127.0.0.1" for name in ("smtp", "submission", "pop3",
                                                          "imap")}

#: (pattern, replacement) over each server line: only what differs from run to run.
MASKS = [
    (re.compile(rb"queued as [0-9A-Za-z._@<>-]+"), b"queued as <QUEUE-ID>"),
    (re.compile(rb"UIDVALIDITY \d+"), b"UIDVALIDITY <UIDVALIDITY>"),
    (re.compile(rb"MAILBOXID \([A-Za-z0-9_-]+\)"), b"MAILBOXID (<MAILBOXID>)"),  # random
]

POP3_MULTILINE = {"CAPA", "RETR", "TOP"}
POP3_MULTILINE_WITHOUT_ARG = {"LIST", "UIDL", "AUTH"}


def fixture_message(n: int) -> bytes:
    """The n-th fixed message (LF line ends, as our delivery stores them)."""
    return (f"From: Bob <bob@example.org>\nTo: alice@example.org\nSubject: message {n}\n"
            f"Message-ID: <fixed-{n}@example.org>\nDate: Mon, 7 Dec 2026 06:00:0{n} +0000\n"
            f"\nline one of {n}\n.a line that starts with a dot\nlast line\n").encode()


def place_messages(server: RunningServer, count: int) -> None:
    maildir = server.maildir("alice@example.org")
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
        for f in (maildir / sub).iterdir():
            f.unlink()
    for n in range(1, count + 1):
        content = fixture_message(n)
        wire = content.replace(b"\n", b"\r\n")
        name = (f"1765000000.M00000{n}P1Q{n}R0000000000000000.transcript"
                f",S={len(content)},W={len(wire)}")
        path = maildir / "new" / name
        path.write_bytes(content)
        os.utime(path, (1765000000 + n, 1765000000 + n))


def send_expr(text: str) -> bytes:
    """`b'..'`, `b'..' + b'..'`, `b'x' * 3000`: literals, joined and repeated only."""

    def value(node: ast.AST) -> bytes | int:
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes | int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right  # type: ignore[operator]
        raise ValueError(f"not a bytes expression: {text}")

    result = value(ast.parse(text, mode="eval").body)
    assert isinstance(result, bytes), text
    return result


class Replayer:
    def __init__(self, sock: socket.socket, service: str) -> None:
        self.sock = sock
        self.protocol = {"submission": "smtp"}.get(service, service)
        self.buffer = b""
        self.pending = b""
        self.words: list[str] = []  # command lines awaiting their response
        self.out: list[str] = []

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def _raw_line(self) -> bytes | None:
        """One line as sent (with its line end), or None at the end of the stream."""
        while b"\n" not in self.buffer:
            if not self._fill():
                if self.buffer:
                    rest, self.buffer = self.buffer, b""
                    return rest
                return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def _record(self, raw: bytes) -> bytes:
        for pattern, replacement in MASKS:
            raw = pattern.sub(replacement, raw)
        if raw.endswith(b"\r\n") and b"\r" not in raw[:-2]:
            self.out.append("S: " + raw[:-2].decode("utf-8", "backslashreplace"))
        else:
            self.out.append(f"S~ {raw!r}")
        return raw.rstrip(b"\r\n")

    def _line(self) -> bytes:
        raw = self._raw_line()
        if raw is None:
            raise AssertionError("connection closed before the response ended:\n"
                                 + "\n".join(self.out))
        return self._record(raw)

    def flush(self) -> None:
        if self.pending:
            self.sock.sendall(self.pending)
            self.pending = b""

    def send(self, data: bytes, shown: str) -> None:
        self.out.append(shown)
        self.pending += data
        self.words.append(data.split(b" ", 1)[0].split(b"\r", 1)[0].decode("ascii",
                                                                            "replace"))

    def response(self, command: str | None) -> None:
        self.flush()
        if self.protocol == "smtp":
            while not re.match(rb"\d{3}( |$)", self._line()):
                pass
        elif self.protocol == "pop3":
            first = self._line()
            word, _, arg = (command or "").partition(" ")
            multi = word.upper() in POP3_MULTILINE or (
                word.upper() in POP3_MULTILINE_WITHOUT_ARG and not arg.strip())
            if first.startswith(b"+OK") and multi:
                while self._line() != b".":
                    pass
        else:
            after_literal = False  # the line goes on after a literal's octets
            while True:
                line = self._line()
                literal = re.search(rb"\{(\d+)\}$", line)
                if literal:
                    size = int(literal.group(1))
                    while len(self.buffer) < size and self._fill():
                        pass
                    data, self.buffer = self.buffer[:size], self.buffer[size:]
                    for piece in data.splitlines(keepends=True):
                        self._record(piece)
                    after_literal = True
                    continue
                if not after_literal and (line.startswith(b"+")
                                          or not line.startswith(b"*")):
                    return
                after_literal = False

    def closed(self) -> None:
        self.flush()
        while (raw := self._raw_line()) is not None:
            self._record(raw)
        self.out.append("[closed]")


def replay(server: RunningServer, script: str) -> str:
    service = "smtp"
    commands: list[str] = []
    lines = script.splitlines()
    for line in lines:
        if line.startswith("@service "):
            service = line.split()[1]
        elif line.startswith("@messages "):
            place_messages(server, int(line.split()[1]))
    sock = server.connect(service)
    player = Replayer(sock, service)
    try:
        if service == "imap":
            player._line()  # the greeting: one untagged line (RFC 3501 7.1)
        else:
            player.response(None)  # the greeting
        for line in lines:
            if not line.strip() or line.startswith("@"):
                continue
            if line.startswith("#"):
                player.out.append(line)
            elif line.startswith(("C: ", "C- ")):
                player.send(line[3:].encode("utf-8") + b"\r\n", "C: " + line[3:])
                commands.append(line[3:])
                if line.startswith("C: "):
                    player.response(commands.pop(0))
            elif line.startswith(("C~ ", "C~- ")):
                expr = line.split(" ", 1)[1]
                data = send_expr(expr)
                player.send(data, "C~ " + expr)
                commands.append(data.decode("latin-1").rstrip("\r\n"))
                if line.startswith("C~ "):
                    player.response(commands.pop(0))
            elif line.startswith("read "):
                for _ in range(int(line.split()[1])):
                    player.response(commands.pop(0) if commands else None)
            elif line == "closed":
                player.closed()
            else:
                raise ValueError(f"unknown transcript directive: {line!r}")
    except (OSError, AssertionError) as e:
        raise AssertionError(f"{e!r} after:\n" + "\n".join(player.out)) from e
    finally:
        sock.close()
    return "\n".join(player.out) + "\n"


@pytest.fixture(scope="module")
def transcript_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """SMTP, submission, POP3 and IMAP, all in plaintext: submission's STARTTLS and the
    TLS-only logins would make the transcripts binary, so `allow_plaintext_without_tls`
    is on (what the transcripts show of AUTH is the plaintext-allowed form)."""
    running = make_server(tmp_path_factory.mktemp("transcripts"), start=False,
                          listen=LISTEN, auth={"allow_plaintext_without_tls": True})
    for user in USERS:
        running.add_user(user, PASSWORD)
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize("name", CASES)
def test_transcript(transcript_server: RunningServer, name: str) -> None:
    got = replay(transcript_server, (HERE / f"{name}.in").read_text())
    ref = HERE / f"{name}.ref"
    if os.environ.get("TRANSCRIPTS_UPDATE") == "1":
        ref.write_text(got)
    assert got == ref.read_text(), f"{name}: the wire behaviour changed"
