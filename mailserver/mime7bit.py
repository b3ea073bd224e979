"""8-bit to 7-bit: a message for a peer without 8BITMIME (RFC 6152 3), converted rather
than bounced, as RFC 6152 and RFC 1652 allow ("...convert the message to 7bit").

Byte-level and minimal, so what is not 8-bit is left exactly as it was (headers are
not refolded, 7-bit parts not re-encoded, boundaries kept): every leaf part whose body
has octets above 0x7F and no encoding (7bit, 8bit or none) is re-encoded, text/* as
quoted-printable (readable, RFC 2045 6.7) and anything else as base64 (6.8), and its
Content-Transfer-Encoding header replaced (or added). Multiparts are walked by their
boundaries (RFC 2046 5.1.1), message/rfc822 bodies as messages (RFC 2046 5.2.1).

Headers with 8-bit octets cannot be made 7-bit this way (that is SMTPUTF8's business,
RFC 6531): DowngradeError, and the caller bounces with 5.6.7. So does a part already
declared `binary` (RFC 3030), and nesting deeper than MAX_DEPTH (hostile input).

Why before DKIM signing: a signature covers the body as sent; converting after
signing would break it. The submission path converts our users' 8-bit mail before it
signs, and the relay converts what it must for peers without 8BITMIME.
"""

from __future__ import annotations

import base64
import binascii
import re

MAX_DEPTH = 32
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_PARAM = re.compile(rb';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]+)')


class DowngradeError(Exception):
    """A message that cannot be sent as 7-bit without changing its meaning."""


def to_7bit(message: bytes) -> bytes:
    """`message` with every 8-bit leaf part re-encoded (see the module docstring);
    the same bytes when it has no 8-bit octet."""
    if message.isascii():
        return message
    return _entity(message, depth=0, top=True)


def _entity(data: bytes, depth: int, top: bool = False) -> bytes:
    if depth > MAX_DEPTH:
        raise DowngradeError(f"MIME nesting deeper than {MAX_DEPTH}")
    newline = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
    match = _HEADER_END.search(data)
    if match is None:
        head, sep, body = data, b"", b""
    else:
        head, sep, body = data[:match.start()], data[match.start():match.end()], \
            data[match.end():]
    if not head.isascii():
        raise DowngradeError("a header holds 8-bit octets (needs SMTPUTF8)")
    fields = _fields(head)
    ctype = fields.get(b"content-type", b"text/plain")  # RFC 2045 5.2's default
    kind = ctype.split(b";")[0].strip().lower()
    cte = fields.get(b"content-transfer-encoding", b"").strip().lower()
    if body.isascii():
        return data
    if kind.startswith(b"multipart/"):
        boundary = _param(ctype, b"boundary")
        if not boundary:
            raise DowngradeError("a multipart without a boundary holds 8-bit octets")
        return head + sep + _multipart(body, boundary, depth)
    if kind in (b"message/rfc822", b"message/global"):
        if kind == b"message/global":
            raise DowngradeError("message/global holds 8-bit octets (needs SMTPUTF8)")
        return head + sep + _entity(body, depth + 1, top=True)
    if cte not in (b"", b"7bit", b"8bit"):
        raise DowngradeError(f"a {cte.decode('ascii', 'replace')} part holds 8-bit octets"
                             if cte == b"binary" else "an encoded part holds 8-bit octets")
    if kind.startswith(b"text/"):
        encoded, name = _quoted_printable(body, newline), b"quoted-printable"
    else:
        encoded, name = _base64(body, newline), b"base64"
    return _set_cte(head, name, newline) + sep + encoded


def _fields(head: bytes) -> dict[bytes, bytes]:
    """Header fields by lower-case name, unfolded (the first of each)."""
    fields: dict[bytes, bytes] = {}
    for line in re.split(rb"\r?\n(?![ \t])", head):
        name, colon, value = line.partition(b":")
        if colon:
            fields.setdefault(name.strip().lower(), re.sub(rb"\r?\n[ \t]", b" ", value)
                              .strip())
    return fields


def _param(ctype: bytes, name: bytes) -> bytes:
    for key, value in _PARAM.findall(ctype):
        if key.lower() == name:
            return value[1:-1].replace(b'\\"', b'"') if value.startswith(b'"') else value
    return b""


def _multipart(body: bytes, boundary: bytes, depth: int) -> bytes:
    """RFC 2046 5.1.1: parts between "--boundary" lines; preamble and epilogue kept."""
    delimiter = re.compile(rb"(^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r?\n|$)")
    out: list[bytes] = []
    pos = 0
    inside = False
    for m in delimiter.finditer(body):
        chunk = body[pos:m.start()]
        if inside:
            part_start = 2 if chunk.startswith(b"\r\n") else 1 if chunk.startswith(b"\n") else 0
            out.append(chunk[:part_start] + _entity(chunk[part_start:], depth + 1))
        else:
            out.append(chunk)  # the preamble
        out.append(m.group(0))
        pos = m.end()
        inside = not m.group(2)
        if not inside:
            break
    out.append(body[pos:])  # the epilogue (or an unterminated last part, as it was)
    if inside and not out[-1].isascii():
        tail = out.pop()
        part_start = 2 if tail.startswith(b"\r\n") else 1 if tail.startswith(b"\n") else 0
        out.append(tail[:part_start] + _entity(tail[part_start:], depth + 1))
    result = b"".join(out)
    if not result.isascii():
        raise DowngradeError("8-bit octets outside any part (preamble or epilogue)")
    return result


def _quoted_printable(body: bytes, newline: bytes) -> bytes:
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    encoded = [binascii.b2a_qp(line, quotetabs=False, istext=False) for line in lines]
    return newline.join(e.replace(b"=\n", b"=" + newline) for e in encoded)


def _base64(body: bytes, newline: bytes) -> bytes:
    text = base64.encodebytes(body)  # 76-character lines, "\n" ends
    return text.replace(b"\n", newline)


def _set_cte(head: bytes, name: bytes, newline: bytes) -> bytes:
    """Replace the Content-Transfer-Encoding field (folded lines included), or add it."""
    pattern = re.compile(rb"(^|\r?\n)content-transfer-encoding[ \t]*:[^\r\n]*(\r?\n[ \t][^\r\n]*)*",
                         re.IGNORECASE)
    line = b"Content-Transfer-Encoding: " + name
    if pattern.search(head):
        return pattern.sub(lambda m: m.group(1) + line, head, count=1)
    return head + newline + line if head else line
