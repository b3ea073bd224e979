"""HeaderInspector (core/headers.py): the header section seen while it streams, and the
sender rules of the directory (RecipientDirectory.may_send_as)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.auth.directory import RecipientDirectory
from mailserver.config import config_from_dict
from mailserver.core.headers import HOP_LIMIT, MAX_HEADER_SECTION, HeaderInspector


def run(message: bytes, *, add: bool = True, split: int | None = None) -> tuple[bytes,
                                                                             HeaderInspector]:
    inspector = HeaderInspector(add_missing=add, hostname="mx.test", message_id="ABC")
    out = b""
    step = split or len(message) or 1
    for i in range(0, len(message), step):
        out += inspector.feed(message[i : i + step])
    return out + inspector.finish(), inspector


MESSAGE = (b"Received: from a by b;\n\tMon, 1 Jan 2024 00:00:00 +0000\n"
           b"Subject: folded\n and on\n\n"
           b"Body\nMessage-ID: <not-a-header@body>\n\nDate: neither\n")


@pytest.mark.parametrize("split", [None, 1, 2, 3, 7, 64])
def test_any_split_gives_the_same_output(split: int | None) -> None:
    out, inspector = run(MESSAGE, split=split)
    head, body = out.split(b"\n\n", 1)
    assert head.endswith(b"\nMessage-ID: <abc@mx.test>\n" + head.split(b"\n")[-1])
    assert head.split(b"\n")[-1].startswith(b"Date: ")
    assert body == MESSAGE.split(b"\n\n", 1)[1], "the body is never touched"
    assert inspector.received == 1
    assert inspector.added == ["Message-ID", "Date"]


def test_present_fields_are_recognised_in_any_case() -> None:
    message = b"message-id: <a@b>\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\n\nx\n"
    out, inspector = run(message, split=5)
    assert out == message and inspector.added == []


def test_nothing_added_when_not_asked() -> None:
    out, _ = run(MESSAGE, add=False, split=3)
    assert out == MESSAGE


def test_header_section_without_empty_line() -> None:
    out, _ = run(b"Subject: x\nthis is not a header\n")
    lines = out.split(b"\n")
    assert lines[0] == b"Subject: x"
    assert lines[1].startswith(b"Message-ID: ") and lines[2].startswith(b"Date: ")
    assert lines[3:] == [b"", b"this is not a header", b""]


def test_header_section_without_empty_line_gets_one_on_submission() -> None:
    """Even with nothing to add: whatever follows the odd line is body for every reader
    (a `From:` there was not checked as a header field, so it must not become one)."""
    message = (b"Message-ID: <a@b>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nnot a header\n"
               b"From: bob@example.org\n\nbody\n")
    out, inspector = run(message, split=3)
    assert out == message.replace(b"\nnot a header", b"\n\nnot a header")
    assert inspector.from_fields == []
    assert run(message, add=False)[0] == message  # the MX changes nothing


def test_message_of_headers_only() -> None:
    out, _ = run(b"Subject: x")  # BDAT may end without a final line end
    assert out.startswith(b"Subject: x\nMessage-ID: <abc@mx.test>\nDate: ")
    assert run(b"Subject: x", add=False)[0] == b"Subject: x"


def test_empty_message() -> None:
    out, _ = run(b"")
    assert out.startswith(b"Message-ID: <abc@mx.test>\nDate: ")


def test_hops_counted_only_in_the_header() -> None:
    message = b"Received: x\n" * (HOP_LIMIT + 1) + b"\n" + b"Received: y\n" * 100
    _, inspector = run(message, split=10)
    assert inspector.received == HOP_LIMIT + 1 and inspector.too_many_hops
    _, inspector = run(b"Received: x\n" * HOP_LIMIT + b"\n" + b"Received: y\n" * 100)
    assert not inspector.too_many_hops


def test_huge_header_section_passes_through_unchanged() -> None:
    """Memory stays bounded: past the limit the inspector holds nothing and adds nothing."""
    line = b"X-Filler: " + b"a" * 1000 + b"\n"
    message = line * (MAX_HEADER_SECTION // len(line) + 10) + b"\nbody\n"
    inspector = HeaderInspector(add_missing=True, hostname="mx.test", message_id="ABC")
    out = b""
    for i in range(0, len(message), 4096):
        out += inspector.feed(message[i : i + 4096])
        assert len(inspector._partial) <= MAX_HEADER_SECTION
    assert out + inspector.finish() == message


# -- who may send as whom ------------------------------------------------------------------


@pytest.fixture
def directory(tmp_path: Path) -> RecipientDirectory:
    config = config_from_dict({"hostname": "mx.test", "data_dir": str(tmp_path),
                               "domains": {"local": ["example.org", "example.net"]}})
    config.users_file.write_text("alice@example.org:{PLAIN}a\nbob@example.org:{PLAIN}b\n")
    config.aliases_file.write_text(
        "sales@example.org: alice@example.org, bob@example.org\n"
        "info@example.net: sales@example.org\n"          # through another alias
        "boss@example.org: bob@example.org\n"
        "out@example.org: someone@remote.test\n"
        "@example.net: alice@example.org\n")              # a catch-all grants nothing
    return RecipientDirectory(config)


@pytest.mark.parametrize(("user", "sender", "allowed"), [
    ("alice@example.org", "alice@example.org", True),
    ("alice@example.org", "Alice@EXAMPLE.org", True),
    ("alice@example.org", "alice+tag@example.org", True),
    ("alice@example.org", "sales@example.org", True),
    ("alice@example.org", "sales+x@example.org", True),
    ("alice@example.org", "info@example.net", True),
    ("alice@example.org", "boss@example.org", False),
    ("alice@example.org", "bob@example.org", False),
    ("alice@example.org", "out@example.org", False),
    ("alice@example.org", "anything@example.net", False),
    ("alice@example.org", "alice@remote.test", False),
    ("alice@example.org", "", False),
    ("ghost@example.org", "ghost@example.org", False),
    ("bob@example.org", "boss@example.org", True),
])
def test_may_send_as(directory: RecipientDirectory, user: str, sender: str,
                     allowed: bool) -> None:
    assert directory.may_send_as(user, sender) is allowed


def test_sender_addresses(directory: RecipientDirectory) -> None:
    assert directory.sender_addresses("alice@example.org") == [
        "alice@example.org", "info@example.net", "sales@example.org"]
    assert directory.sender_addresses("nobody@example.org") == []


# -- the From fields, for submission's From check ------------------------------------------

FROM_MESSAGE = (b"Received: x\nFROM: Alice\n <alice@example.org>,\n\tsales@example.org\n"
                b"Subject: s\nfrom :bob@example.org\n\nFrom: body@example.org\n")


@pytest.mark.parametrize("split", [None, 1, 2, 5, 13])
def test_from_fields_unfolded_for_any_split(split: int | None) -> None:
    out, inspector = run(FROM_MESSAGE, add=False, split=split)
    assert out == FROM_MESSAGE
    # RFC 5322 2.2.3: unfolding removes the line breaks and keeps the WSP; a From in the
    # body is not a header field.
    assert inspector.from_fields == [b" Alice <alice@example.org>,\tsales@example.org",
                                     b"bob@example.org"]
    assert not inspector.gave_up


def test_from_field_at_the_very_end_without_line_end() -> None:
    _, inspector = run(b"Subject: x\nFrom: a@example.org\n b@example.org", add=False, split=4)
    assert inspector.from_fields == [b" a@example.org b@example.org"]


def test_lookalike_fields_are_not_from() -> None:
    message = (b"Resent-From: r@example.org\nX-From: x@example.org\nFrom-X: y@example.org\n"
               b"From bob@example.org Mon Jan 1\n\n")
    _, inspector = run(message, add=False)
    # The mbox "From " line is no field: the header section ends there.
    assert inspector.from_fields == []


def test_inspector_that_gave_up_says_so() -> None:
    message = b"X: " + b"x" * MAX_HEADER_SECTION + b"\nFrom: bob@example.org\n\n"
    _, inspector = run(message, add=False, split=4096)
    assert inspector.gave_up and inspector.from_fields == []
