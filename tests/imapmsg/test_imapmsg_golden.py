"""ENVELOPE, BODY, BODYSTRUCTURE and BODY[section]<partial> against Dovecot's answers.

The golden files are what Dovecot 2.3 (Debian) sent for the same message (see
make_golden.py); the messages are stored with LF line ends and served with CRLF, as our
Maildir store does. DEVIATIONS lists the few items where we answer differently on
purpose, with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from imapmsg_corpus import served

from mailserver.imap.message import ParsedMessage, partial

HERE = Path(__file__).resolve().parent
MESSAGES = sorted((HERE / "messages").glob("*.eml"))

#: (message stem, item) -> why our answer differs from Dovecot's.
DEVIATIONS: dict[tuple[str, str], str] = {
    ("folded_headers", "ENVELOPE"):
        "Message-ID folded onto its own line: Dovecot keeps the leading space of the "
        "continuation line; we strip it (the value is '<folded@example.org>').",
    ("malformed", "ENVELOPE"):
        "Cc: 'real@example.com (Real Name), <>, ,,, (just a comment)': Dovecot lists 4 "
        "MISSING_MAILBOX@MISSING_DOMAIN placeholders, we list the one for '<>' and skip "
        "empty list elements (RFC 5322 4.4 obs-addr-list allows them).",
    ("malformed", "BODYSTRUCTURE"):
        "'Content-Type: text' without subtype: Dovecot sends subtype \"\"; we use the "
        "RFC 2045 5.2 default text/plain for a syntactically invalid Content-Type.",
    ("malformed", "BODY"): "as BODYSTRUCTURE",
}

_SECTION = re.compile(r"\ABODY\.PEEK\[([0-9.]*?)\.?([A-Z.]*)(?: \((.*)\))?\](?:<(\d+)\.(\d+)>)?\Z")


_LITERAL = re.compile(r"\{(\d+)\}\r\n")


def canonical(value: str) -> str:
    """Literals that could be quoted strings written as quoted strings.

    A server may send any string either way (RFC 3501 4.3); Dovecot sends some strings
    it normalised as literals. Comparing canonical forms checks the content.
    """
    out = []
    i = 0
    while (m := _LITERAL.search(value, i)) is not None:
        content = value[m.end():m.end() + int(m.group(1))]
        out.append(value[i:m.start()])
        if any(c in content for c in "\r\n\0") or any(ord(c) > 127 for c in content):
            out.append(value[m.start():m.end() + len(content)])
        else:
            out.append('"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"')
        i = m.end() + len(content)
    out.append(value[i:])
    return "".join(out)


def our_answer(message: ParsedMessage, item: str) -> str | None:
    if item == "ENVELOPE":
        return message.envelope().decode("latin-1")
    if item == "BODYSTRUCTURE":
        return message.body_structure(True).decode("latin-1")
    if item == "BODY":
        return message.body_structure(False).decode("latin-1")
    m = _SECTION.match(item)
    assert m is not None, item
    numbers, spec, fields, origin, length = m.groups()
    part = tuple(int(n) for n in numbers.split(".") if n)
    content = message.section(part, spec, tuple(fields.split()) if fields else ())
    if content is not None and origin is not None:
        content = partial(content, int(origin), int(length))
    return None if content is None else content.decode("latin-1")


def _cases() -> list[tuple[str, str]]:
    cases = []
    for path in MESSAGES:
        golden = json.loads((HERE / "golden" / (path.stem + ".json")).read_text())
        cases.extend((path.stem, item) for item in golden)
    return cases


@pytest.mark.parametrize("stem", [p.stem for p in MESSAGES])
def test_matches_dovecot(stem: str) -> None:
    golden = json.loads((HERE / "golden" / (stem + ".json")).read_text())
    message = ParsedMessage(served(stem + ".eml"))
    mismatches = []
    for item, expected in golden.items():
        if (stem, item) in DEVIATIONS:
            continue
        ours = our_answer(message, item)
        if not item.startswith("BODY.PEEK") and ours is not None and expected is not None:
            ours, expected = canonical(ours), canonical(expected)
        if ours != expected:
            mismatches.append(f"{item}:\n  dovecot {expected!r}\n  ours    {ours!r}")
    assert not mismatches, "\n".join(mismatches)


def test_every_message_has_golden_answers() -> None:
    for path in MESSAGES:
        assert (HERE / "golden" / (path.stem + ".json")).exists(), path.name
