"""The Authentication-Results header (RFC 8601) we add, and the ones we remove.

RFC 8601 5: a border MTA must remove (or rename) every Authentication-Results field
that claims its own authserv-id before adding its own, or anyone could send a message
pre-marked "dkim=pass" by us. We remove them, wherever they sit in the header section,
whatever the case or spacing of the id.
"""

from __future__ import annotations

import re

#: RFC 5322 2.2 field name at a line start.
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def _header_end(message: bytes) -> int:
    """Offset of the empty line ending the header section (len(message) if none)."""
    if message.startswith(b"\n"):
        return 0
    end = message.find(b"\n\n")
    return len(message) if end < 0 else end + 1


def authserv_id(value: bytes) -> bytes:
    """The authserv-id of an Authentication-Results value (before the first ;),
    comments and whitespace removed, lower case."""
    head = value.split(b";", 1)[0]
    head = re.sub(rb"\([^()]*\)", b" ", head)
    parts = head.split()
    return parts[0].lower().rstrip(b".") if parts else b""


def strip_our_results(message: bytes, our_id: str) -> tuple[bytes, int]:
    """`message` without Authentication-Results fields naming `our_id`; (bytes, count).

    Works on the header section as it is (LF line ends, folded lines kept whole).
    ARC-Authentication-Results are signed by their ARC set and are left alone.
    """
    end = _header_end(message)
    header, body = message[:end], message[end:]
    ours = our_id.lower().encode("ascii", "replace").rstrip(b".")
    out: list[bytes] = []
    removed = 0
    for field in _split_fields(header):
        match = _FIELD.match(field)
        if match and match.group(1).lower() == b"authentication-results":
            # The id may sit on a continuation line: look at the whole field unfolded.
            value = re.sub(rb"\r?\n[ \t]", b" ", field[match.end():])
            if authserv_id(value) == ours:
                removed += 1
                continue
        out.append(field)
    return b"".join(out) + body, removed


def _split_fields(header: bytes) -> list[bytes]:
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


#: RFC 2045 5.1 token (RFC 8601 2.2 value): no tspecials ()<>@,;:\"/[]?=
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
#: RFC 8601 2.2 pvalue's other form: [local-part] "@" domain-name (dot-atom local part).
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]*@[A-Za-z0-9](?:[A-Za-z0-9.-]*"
                      r"[A-Za-z0-9])?")


def _value(text: str) -> str:
    """A property value as RFC 8601 2.2 allows it: a token or an address as it is,
    anything else quoted (a header.b= of base64 holds "/" and "=")."""
    text = text.replace("\r", "").replace("\n", "")
    if text and (_TOKEN.fullmatch(text) or _ADDRESS.fullmatch(text)):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    """A comment, with anything that could end it early or fold the line removed."""
    clean = re.sub(r"[()\\\r\n]", "", text)
    clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in clean)
    return f" ({clean[:100]})" if clean else ""


def build_header(our_id: str, entries: list[str]) -> bytes:
    """One Authentication-Results field, one method per folded line."""
    if not entries:
        entries = ["none"]
    lines = [f"Authentication-Results: {our_id};"]
    for i, entry in enumerate(entries):
        lines.append(f"\t{entry}" + (";" if i < len(entries) - 1 else ""))
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")


def entry(method: str, result: str, reason: str = "", **props: str) -> str:
    """"dkim=pass (reason) header.d=example.com" (props use _ for the dot)."""
    text = f"{method}={result}{_comment(reason)}"
    for key, value in props.items():
        if value:
            text += f" {key.replace('_', '.', 1)}={_value(value)}"
    return text
