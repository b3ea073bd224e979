"""A look at the header section of a message while it streams through (RFC 5322 2.2).

The session passes decoded message bytes (LF line ends) through a HeaderInspector on
their way to the delivery transaction. The inspector only parses the header section,
line by line, holding at most one partial line; once the section ends everything else
streams through untouched. It learns:

- how many `Received:` fields there are: RFC 5321 6.3 asks a server to detect loops by
  counting them; like Postfix (hopcount_limit = 50) we refuse more than HOP_LIMIT;
- whether `Message-ID:` and `Date:` are present: a submission server adds them when
  missing (RFC 6409 8.2 and 8.3). They are inserted where the header section ends, so
  nothing has to be buffered: RFC 5322 3.6 puts no order on these fields;
- the `From:` fields, unfolded, so submission can check them against the user
  (from_addresses() parses one; smtp/submission.py decides).

Memory stays bounded: a header section longer than MAX_HEADER_SECTION octets is not
inspected further (the rest passes as it is, and no field is added into it), which is
also where Postfix stops reading headers (header_size_limit-like).
"""

from __future__ import annotations

import email.utils
import re
from email.errors import NonASCIILocalPartDefect
from email.headerregistry import AddressHeader, HeaderRegistry

#: More Received fields than this and the message is refused (Postfix hopcount_limit).
HOP_LIMIT = 50
#: Octets of header section we inspect; past this the inspector steps aside.
MAX_HEADER_SECTION = 256 * 1024

#: Longest From field value (unfolded) we parse. The email package's parser is roughly
#: quadratic on hostile input (measured: 2 KiB of `a.(b)"c"` 55 ms, 8 KiB 440 ms) and runs
#: on the reactor thread; real From fields are under 1000 octets (RFC 5322 2.1.1).
MAX_FROM_FIELD = 2048

#: RFC 5322 3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126, then ":".
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")


class HeaderInspector:
    """Feed decoded message bytes, write what comes out; finish() at the end."""

    def __init__(self, *, add_missing: bool, hostname: str, message_id: str) -> None:
        #: Add Message-ID and Date when the message has none (submission only).
        self.add_missing = add_missing
        self.hostname = hostname
        self.message_id = message_id
        #: Received fields seen in the header section.
        self.received = 0
        self.has_message_id = False
        self.has_date = False
        #: The first Message-ID field's value as it stands on its first line (or the
        #: one we added), "" before: what the API answers the client with.
        self.message_id_value = ""
        #: Fields we added, for the log and the tests.
        self.added: list[str] = []
        #: The value of each From field, unfolded (RFC 5322 2.2.3), in order.
        self.from_fields: list[bytes] = []
        #: The header section was longer than MAX_HEADER_SECTION: fields past that point
        #: (a From among them) were not seen.
        self.gave_up = False
        self._in_from = False
        self._in_header = True
        self._partial = bytearray()
        self._inspected = 0

    @property
    def too_many_hops(self) -> bool:
        return self.received > HOP_LIMIT

    def feed(self, data: bytes) -> bytes:
        """The bytes to write for `data` (the same bytes, maybe with fields inserted)."""
        if not self._in_header or not data:
            return data
        self._inspected += len(data)
        if self._inspected > MAX_HEADER_SECTION:
            # Give up on this header section; everything held so far goes out unchanged.
            self._in_header = False
            self.gave_up = True
            held = bytes(self._partial)
            self._partial.clear()
            return held + data
        self._partial += data
        out = bytearray()
        start = 0
        buffer = self._partial
        while self._in_header:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start : end + 1])
            start = end + 1
            out += self._line(line)
        if self._in_header:
            del buffer[:start]
        else:
            out += buffer[start:]
            buffer.clear()
        return bytes(out)

    def finish(self) -> bytes:
        """At the end of the message: what is still held, and the added fields when
        the message ended inside its header section."""
        if not self._in_header:
            return b""
        self._in_header = False
        rest = bytes(self._partial)
        self._partial.clear()
        if rest[:1] in (b" ", b"\t"):
            self._continue(rest)
        elif rest:
            self._note(rest)
        missing = self._missing_fields()
        if missing and rest and not rest.endswith(b"\n"):
            rest += b"\n"
        return rest + missing

    def _line(self, line: bytes) -> bytes:
        if line == b"\n":
            # RFC 5322 2.1: the empty line ends the header section.
            self._in_header = False
            return self._missing_fields() + line
        if line[:1] in (b" ", b"\t"):
            self._continue(line)
            return line  # a folded continuation (RFC 5322 2.2.3)
        if _FIELD.match(line) is None:
            # Not a header field: the header section ended without its empty line. We
            # add our fields and the empty line, so the line stays in the body. On
            # submission (add_missing) the empty line goes in even when no field is
            # missing: a lenient reader might otherwise skip the odd line and take a
            # `From:` after it for a header field, one the From check never saw.
            self._in_header = False
            missing = self._missing_fields()
            return (missing + b"\n" + line) if self.add_missing else line
        self._note(line)
        return line

    def _continue(self, line: bytes) -> None:
        if self._in_from:
            # Unfolding (RFC 5322 2.2.3) removes the line break and keeps the WSP.
            self.from_fields[-1] += line.rstrip(b"\n")

    def _note(self, line: bytes) -> None:
        match = _FIELD.match(line)
        self._in_from = False
        if match is None:
            return
        name = match.group(1).lower()
        if name == b"from":
            self._in_from = True
            self.from_fields.append(line[match.end():].rstrip(b"\n"))
        elif name == b"received":
            self.received += 1
        elif name == b"message-id":
            if not self.has_message_id:
                self.message_id_value = line[match.end():].strip().decode("utf-8",
                                                                          "replace")
            self.has_message_id = True
        elif name == b"date":
            self.has_date = True

    def _missing_fields(self) -> bytes:
        if not self.add_missing:
            return b""
        out = b""
        if not self.has_message_id:
            # RFC 6409 8.3 / RFC 5322 3.6.4: globally unique, with our host name.
            value = f"<{self.message_id.lower()}@{self.hostname}>"
            self.message_id_value = value
            out += f"Message-ID: {value}\n".encode("ascii", "replace")
            self.added.append("Message-ID")
        if not self.has_date:
            # RFC 6409 8.2 / RFC 5322 3.3: the time of submission, with its zone.
            out += f"Date: {email.utils.formatdate(localtime=True)}\n".encode("ascii")
            self.added.append("Date")
        self.has_message_id = self.has_date = True
        return out


class BadFromField(ValueError):
    """A From field that cannot be read as RFC 5322 3.6.2 mailbox-list; the text says why."""


_REGISTRY = HeaderRegistry()


def from_addresses(value: bytes) -> list[str]:
    """The addr-specs (`local@domain`) of one From field's value, every one of them.

    Strict on purpose: a submission server must read the field as every receiving
    client would, so anything a parser has to guess about is refused (BadFromField):
    - not UTF-8 (RFC 6532 allows UTF-8 in header fields, nothing else);
    - any defect the RFC 5322 parser of the email package reports: text after an
      address (`<a@x> <b@y>`, `a@x; b@y`), obsolete routes, control characters, an
      encoded-word where an address belongs (RFC 2047 5 forbids it in an addr-spec);
    - group syntax (RFC 5322 3.6.2: From is a mailbox-list, no groups), no address;
    - longer than MAX_FROM_FIELD.
    Comments and display names (encoded-words included) are fine: only the addr-spec
    names the sender, and a display name cannot change it.
    """
    if len(value) > MAX_FROM_FIELD:
        raise BadFromField(f"longer than {MAX_FROM_FIELD} octets")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadFromField("not UTF-8") from None
    try:
        header = _REGISTRY("From", text)
    except Exception:  # the parser's own errors on hostile input
        raise BadFromField("cannot be parsed") from None
    assert isinstance(header, AddressHeader)
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if defects:
        raise BadFromField("cannot be parsed") from None
    if any(group.display_name is not None for group in header.groups):
        raise BadFromField("group syntax is not allowed in From")
    addresses = [a.addr_spec for a in header.addresses]
    if not addresses:
        raise BadFromField("no address")
    for address in header.addresses:
        if not address.username or not address.domain:
            raise BadFromField("cannot be parsed")
    return addresses
