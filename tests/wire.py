"""A raw SMTP client for tests that must send exact bytes (smuggling, pipelining, junk)."""

from __future__ import annotations

import socket
import ssl

#: How long a test's client waits for one reply, or for a close, before failing. A
#: passing test never waits it out, so it costs nothing there; it only has to outlast a
#: loaded 2-core CI machine running four workers (a 20 s timeout once did not), where
#: a reply may wait on an Argon2 hash, a disk thread or a process start.
REPLY_TIMEOUT = 60.0


class Wire:
    """Send bytes, read whole replies; nothing clever, so tests see what the server does."""

    def __init__(self, address: tuple[str, int], timeout: float = REPLY_TIMEOUT) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(address, timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def line(self) -> str:
        """One CRLF-ended line, without its CRLF (POP3 and IMAP read one at a time)."""
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed; partial line {self.buffer!r}")
        raw, self.buffer = self.buffer.split(b"\r\n", 1)
        return raw.decode("utf-8", "replace")

    def ask(self, line: str) -> str:
        """Send one command line and read one line back."""
        self.send(line.encode() + b"\r\n")
        return self.line()

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and text lines (without the code)."""
        lines: list[str] = []
        while True:
            line = self.line()
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), lines

    def code(self) -> int:
        return self.reply()[0]

    def text(self) -> str:
        """The last reply as `code text` (first line), e.g. `550 5.1.1 Error: user unknown`."""
        code, lines = self.reply()
        return f"{code} {lines[0]}"

    def command(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.text()

    def greet(self, ehlo: str = "client.test") -> list[str]:
        assert self.code() == 220
        self.send(f"EHLO {ehlo}\r\n".encode())
        code, lines = self.reply()
        assert code == 250, lines
        return lines

    def starttls(self) -> None:
        assert self.command("STARTTLS").startswith("220 2.0.0")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock)

    def closed(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """True once the server has closed the connection (after reading what is left)."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
