"""Command-line framing for SMTP, POP3 and IMAP: one bounded reader, three rule sets.

The three protocols frame commands the same way (octets up to an LF) and differ in a
few deliberate rules, stated here side by side instead of in three copies of a reader:

    rule                   SMTP (SMTP_LINES)        POP3 (POP3_LINES)       IMAP (IMAP_LINES)
    ---------------------  -----------------------  ----------------------  ----------------------
    longest line, with     2048: RFC 5321           255: RFC 2449 4         65536: RFC 7162 3 asks
    its line end           4.5.3.1.4 asks for 512;  ("255 octets,           for 8192; sync clients'
                           extensions (AUTH=,       including the           UID sets need more
                           SMTPUTF8) need more,     terminating CRLF")      (Dovecot's limit)
                           as in Postfix
    longest SASL line      2048 (RFC 4954 4)        2048: RFC 5034 4 (AUTH  65536 (RFC 3501 6.2.2)
    (AUTH and answers)                              PLAIN of three 255-
                                                    octet fields ~ 1 KiB)
    bare LF ends a line    no: refused, RFC 5321    yes, as Dovecot and     yes, taken as CRLF
                           2.3.8 (smuggling)        most servers do
    CR inside a line       refused (2.3.8)          passed to the grammar   refused (RFC 3501 9:
                                                                            CHAR8, no bare CR)
    NUL inside a line      passed to the grammar    passed to the grammar   refused (RFC 3501 9:
                           (refused there)          (refused there)         CHAR8 excludes %x00)
    overlong line gets     500 5.5.2 Line too long  -ERR Line too long.     <tag> BAD [TOOBIG]
                                                                            Line too long
    bare LF / CR gets      500 5.5.2 Syntax error:  -                       <tag> BAD Bare CR in
                           bare CR or LF in command                         command line
    NUL gets               -                        -                       <tag> BAD NUL in
                                                                            command line
    raw octets instead     DATA (dot-stuffed) and   none                    literals {n} / {n+}
    of lines               BDAT chunks (RFC 3030),                          (RFC 3501 4.3, RFC
                           smtp/reception.py                                7888), imap/server.py

An overlong line never costs more memory than the limit: once the buffer holds more
than that without an LF, it is dropped as it arrives, up to and including the next LF,
and then refused once (so the client's next command is read in step).

Pure: no I/O, no Twisted. core/connection.py drives it; its sessions decide what
follows a refusal (an error count, IMAP's tag).
"""

from __future__ import annotations

from dataclasses import dataclass

#: How much of a discarded line's beginning is kept (IMAP answers with its tag).
HEAD = 100


@dataclass(frozen=True)
class LineError:
    """A framing refusal in protocol-neutral form: SMTP renders it as `status code text`
    (`500 5.5.2 Line too long`), POP3 as `-ERR [code] text`, IMAP as
    `<tag> status [code] text`."""

    status: str
    code: str | None
    text: str


@dataclass(frozen=True)
class LineRules:
    """One protocol's framing rules (the table in this module's docstring)."""

    name: str
    #: Longest line in octets, its line end included.
    max_line: int
    #: Longest SASL line (AUTH with an initial response, and the answers to challenges).
    max_sasl_line: int
    #: A bare LF ends a line as CRLF does; if not, such a line is refused (`bare_lf`).
    bare_lf_ends_line: bool
    #: A CR not followed by LF inside a line is refused (`bare_cr`).
    refuse_cr: bool
    #: A NUL inside a line is refused (`nul`); else it is the grammar's to judge.
    refuse_nul: bool
    too_long: LineError
    bare_lf: LineError | None = None
    bare_cr: LineError | None = None
    nul: LineError | None = None


_SMTP_BARE = LineError("500", "5.5.2", "Syntax error: bare CR or LF in command")

SMTP_LINES = LineRules(
    name="smtp", max_line=2048, max_sasl_line=2048,
    bare_lf_ends_line=False, refuse_cr=True, refuse_nul=False,
    too_long=LineError("500", "5.5.2", "Line too long"),
    bare_lf=_SMTP_BARE, bare_cr=_SMTP_BARE,
)
POP3_LINES = LineRules(
    name="pop3", max_line=255, max_sasl_line=2048,
    bare_lf_ends_line=True, refuse_cr=False, refuse_nul=False,
    too_long=LineError("-ERR", None, "Line too long."),
)
IMAP_LINES = LineRules(
    name="imap", max_line=64 * 1024, max_sasl_line=64 * 1024,
    bare_lf_ends_line=True, refuse_cr=True, refuse_nul=True,
    too_long=LineError("BAD", "TOOBIG", "Line too long"),
    bare_cr=LineError("BAD", None, "Bare CR in command line"),
    nul=LineError("BAD", None, "NUL in command line"),
)


class LineRefused(Exception):
    """A line was read (or discarded) and is refused; the reader is past it."""

    def __init__(self, error: LineError, head: bytes) -> None:
        super().__init__(error.text)
        self.error = error
        #: The refused line's beginning (at least its first HEAD octets): IMAP's tag.
        self.head = head


class LineReader:
    """Takes lines off the front of a session's buffer, by one LineRules."""

    def __init__(self, rules: LineRules) -> None:
        self.rules = rules
        self.discarding = False  # inside an overlong line, dropping it up to its LF
        self._discarded_head = b""

    def reset(self) -> None:
        """Forget a line being discarded (the buffer was thrown away: STARTTLS)."""
        self.discarding = False
        self._discarded_head = b""

    def next_line(self, buffer: bytearray, limit: int | None = None) -> bytes | None:
        """The first complete line of `buffer` without its line end, removed from it;
        None until one is complete. `limit` overrides the rules' max_line for this line
        (a SASL line). Raises LineRefused for a line that is consumed but refused."""
        end = buffer.find(b"\n")
        if self.discarding:
            if end < 0:
                buffer.clear()
                return None
            del buffer[: end + 1]
            self.discarding = False
            head, self._discarded_head = self._discarded_head, b""
            raise LineRefused(self.rules.too_long, head)
        if limit is None:
            limit = self.rules.max_line
        if end < 0:
            if len(buffer) > limit:
                # Memory stays bounded: drop what we have and everything up to the next LF.
                self._discarded_head = bytes(buffer[:HEAD])
                buffer.clear()
                self.discarding = True
            return None
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        rules = self.rules
        if len(line) > limit:
            raise LineRefused(rules.too_long, line)
        if line.endswith(b"\r\n"):
            body = line[:-2]
        elif rules.bare_lf_ends_line:
            body = line[:-1]
        else:
            assert rules.bare_lf is not None
            raise LineRefused(rules.bare_lf, line)
        if rules.refuse_cr and b"\r" in body:
            assert rules.bare_cr is not None
            raise LineRefused(rules.bare_cr, line)
        if rules.refuse_nul and b"\0" in body:
            assert rules.nul is not None
            raise LineRefused(rules.nul, line)
        return body
