"""The common structured message written as bytes directly: the same octets the email
package writes for it (api/compose.py _build), at a tenth of the cost.

Why: building a message through email.message.EmailMessage parses every header we set
back through the header registry, folds each one through the policy's token machinery
and runs the content manager: about 0.4 ms of CPU on the reactor thread for a plain
text message, a third of what POST /api/v1/send costs there (bench/api_send.py, issue
18's target). What most applications send is simple: ASCII addresses, an ASCII
subject, a text and/or an HTML body. For exactly that shape this module writes the
fields from templates; for anything else (attachments, a non-ASCII or long header,
a display name that needs quoting or RFC 2047 encoding, a field the email package
parses specially) `build` answers None and the email package builds the message as
before. tests/api/test_api_mimebuild.py checks, over many inputs, that both give the
same bytes (the multipart boundary aside, which is random in both).

The body encoding is the email package's own rule (email.contentmanager, used by
set_content): 7bit when ASCII with lines of at most 78 octets (RFC 5322 2.1.1), 8bit
for other short-lined UTF-8 (the submission hook makes it 7-bit before signing, RFC
6152), else quoted-printable or base64 (RFC 2045 6.7, 6.8), whichever a sniff of the
first ten lines finds shorter; done here with the stdlib encoders it calls.
"""

from __future__ import annotations

import binascii
import random
import re
import sys
from email import quoprimime

from mailserver.api.addresses import Mailbox

#: RFC 5322 2.1.1: the line length the email package folds at (policy.max_line_length).
MAX_LINE = 78
#: A display name the email package writes as it is: atext words (RFC 5322 3.2.3),
#: single spaces. Anything else it quotes or encodes: left to it.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
#: An unstructured value written as it is: printable ASCII words, single spaces, no
#: encoded-word look-alike (the email package would decode "=?...?=" and encode it
#: again).
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
#: Fields the email package's header registry parses (and may rewrite) when set.
_PARSED_FIELDS = frozenset({"date", "message-id", "orig-date", "resent-bcc", "resent-cc",
                            "resent-date", "resent-from", "resent-sender", "resent-to",
                            "bcc", "cc", "from", "reply-to", "sender", "subject", "to",
                            "content-disposition", "content-transfer-encoding",
                            "content-type", "mime-version"})
#: email.generator's boundary: 15 "=", 19 digits, "==".
_DIGITS = len(repr(sys.maxsize - 1))


def build(author: Mailbox, to: list[Mailbox], cc: list[Mailbox], reply_to: list[Mailbox],
          subject: str | None, text: str | None, html: str | None,
          extra: list[tuple[str, str]]) -> bytes | None:
    """The message with LF line ends, or None when the email package must build it
    (module docstring). No attachments here: the caller asks only without them."""
    fields = [_addresses("From", [author]), _addresses("To", to), _addresses("Cc", cc),
              _addresses("Reply-To", reply_to)]
    if subject is not None:
        fields.append(_plain("Subject", subject))
    for name, value in extra:
        # Content-* fields: set_content clears them (a Content-Language is dropped).
        special = name.lower() in _PARSED_FIELDS or name.lower().startswith("content-")
        fields.append(None if special else _plain(name, value))
    if None in fields:
        return None
    head = "".join(f for f in fields if f).encode("ascii")
    if text is not None and html is not None:
        parts = [_part("plain", text), _part("html", html)]
        boundary = _boundary(b"\n".join(parts))
        delimiter = b"\n--" + boundary + b"\n"
        return (head + b"MIME-Version: 1.0\nContent-Type: multipart/alternative;\n"
                b' boundary="' + boundary + b'"\n\n--' + boundary + b"\n"
                + delimiter.join(parts) + b"\n--" + boundary + b"--\n")
    if html is not None:
        return head + _part("html", html, top=True)
    return head + _part("plain", text or "", top=True)


def _addresses(name: str, boxes: list[Mailbox]) -> str | None:
    """`Name: a, b` when every mailbox is written as it is and the line fits; "" for no
    mailbox; None otherwise."""
    if not boxes:
        return ""
    written = []
    for box in boxes:
        if (not box.address.isascii() or box.address.startswith('"') or "[" in box.address
                or "=?" in box.address):
            return None
        if box.name and (not _PLAIN_NAME.fullmatch(box.name) or "=?" in box.name):
            return None  # quoted, or an encoded-word look-alike the package decodes
        written.append(f"{box.name} <{box.address}>" if box.name else box.address)
    line = f"{name}: {', '.join(written)}\n"
    return line if len(line) <= MAX_LINE + 1 else None


def _plain(name: str, value: str) -> str | None:
    line = f"{name}: {value}\n"
    if len(line) > MAX_LINE + 1 or not _PLAIN_TEXT.fullmatch(value) or "=?" in value:
        return None
    return line


def _part(subtype: str, content: str, top: bool = False) -> bytes:
    """A text part's fields and body (set_content's, in its order: at the top level
    MIME-Version comes last)."""
    cte, body = encode_text(content)
    return (b"Content-Type: text/" + subtype.encode() + b'; charset="utf-8"\n'
            b"Content-Transfer-Encoding: " + cte + b"\n"
            + (b"MIME-Version: 1.0\n" if top else b"") + b"\n" + body)


def encode_text(content: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, body with LF line ends) by email.contentmanager's
    rule for UTF-8 text (module docstring)."""
    lines = content.encode("utf-8").splitlines()
    body = b"\n".join(lines) + b"\n"
    if max((len(x) for x in lines), default=0) <= MAX_LINE:
        return (b"7bit" if body.isascii() else b"8bit"), body
    sniff = b"\n".join(lines[:10]) + b"\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), MAX_LINE)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        # RFC 2045 6.8: lines of 76 characters (MAX_LINE // 4 * 3 octets each).
        step = MAX_LINE // 4 * 3
        return b"base64", b"".join(binascii.b2a_base64(body[i:i + step])
                                   for i in range(0, len(body), step))
    if len(lines) <= 10:
        return b"quoted-printable", sniff_qp.encode("ascii")
    return b"quoted-printable", quoprimime.body_encode(body.decode("latin-1"),
                                                       MAX_LINE).encode("ascii")


def _boundary(text: bytes) -> bytes:
    """email.generator's boundary form, not a line of `text` (RFC 2046 5.1.1)."""
    boundary = f"{'=' * 15}{random.randrange(sys.maxsize):0{_DIGITS}d}=="
    candidate, counter = boundary, 0
    while re.search(b"^--" + re.escape(candidate.encode()) + b"(--)?$", text, re.MULTILINE):
        candidate = f"{boundary}.{counter}"
        counter += 1
    return candidate.encode("ascii")
