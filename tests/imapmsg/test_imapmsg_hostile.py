"""Hostile messages: every one gives a well-formed answer, bounded work, no exception."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.imap import mime
from mailserver.imap.envelope import MAX_ADDRESS_OCTETS, MAX_ADDRESSES, parse_addresses
from mailserver.imap.message import ParsedMessage, header_fields

# A crude well-formedness check of a BODY/BODYSTRUCTURE/ENVELOPE answer: balanced
# parentheses outside strings and literals, and strings closed.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|\{(\d+)\}\r\n|[()]|[^"(){]+', re.S)


def balanced(wire: bytes) -> bool:
    depth = 0
    i = 0
    while i < len(wire):
        m = _TOKEN.match(wire, i)
        if m is None:
            return False
        if m.group(1) is not None:
            i = m.end() + int(m.group(1))
            continue
        tok = m.group()
        depth += tok == b"(" and 1 or tok == b")" and -1 or 0
        if depth < 0:
            return False
        i = m.end()
    return depth == 0


def nested_multipart(depth: int) -> bytes:
    # Boundaries b1 and b10 are prefixes of each other: only whole lines delimit.
    head = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                    for i in range(depth))
    return (b"Subject: deep\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n" + head
            + b"--b%d\r\nContent-Type: text/plain\r\n\r\nbottom\r\n" % depth)


def test_deep_multipart_nesting_is_cut_at_the_limit() -> None:
    m = ParsedMessage(nested_multipart(5000))
    structure = m.body_structure(True)
    assert balanced(structure)
    # MAX_DEPTH multiparts are expanded, the one at the limit is an opaque leaf.
    assert structure.count(b'"mixed"') == mime.MAX_DEPTH
    assert b'("application" "octet-stream" NIL NIL NIL "7bit" ' in structure
    path = (1,) * (mime.MAX_DEPTH - 1)
    assert m.section(path, "MIME").startswith(b"Content-Type: multipart/mixed")
    assert m.body_contains("bottom") is False  # beyond the limit: not searched
    assert m.body_structure(False).count(b"(") == m.body_structure(False).count(b")")


def test_deep_message_rfc822_nesting() -> None:
    raw = b"Subject: x\r\n\r\nbody\r\n"
    for _ in range(300):
        raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
    m = ParsedMessage(raw)
    assert balanced(m.body_structure(True))
    assert balanced(m.envelope())


def test_boundary_that_never_closes() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\none\r\n--x\r\n"
           b"Content-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\n\r\ntwo")
    m = ParsedMessage(raw)
    assert balanced(m.body_structure(True))
    assert m.section((2, 1), "") == b"two"
    assert m.section((1,), "") == b"one"


def test_boundary_flood_is_bounded() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n" * 50_000
    m = ParsedMessage(raw)
    assert m.body_structure(False).count(b'("text" "plain"') <= mime.MAX_PARTS + 1


def test_ten_megabyte_header_line_without_crlf() -> None:
    raw = b"Subject: " + b"A" * (10 * 1024 * 1024)
    m = ParsedMessage(raw)
    env = m.envelope()
    assert env.startswith(b"(NIL {10485760}\r\nAAAA")
    assert m.section((), "TEXT") == b""
    assert m.section((), "HEADER.FIELDS", ("FROM",)) == b"\r\n"
    assert len(header_fields(raw, ("subject",), False)) == len(raw) + 4
    assert m.body_structure(True).endswith(b'"7bit" 0 0 NIL NIL NIL NIL)')


def test_nul_bytes_everywhere() -> None:
    raw = (b"From: a\x00b <x\x00@example.com>\r\nSubject: nul\x00here\r\n"
           b"Content-Type: text/pl\x00ain; charset=\"a\x00b\"\r\n\r\nbo\x00dy\r\n")
    m = ParsedMessage(raw)
    env = m.envelope()
    assert b'{8}\r\nnul\x00here' in env  # NUL is never inside a quoted string
    assert balanced(env) and balanced(m.body_structure(True))
    assert m.section((1,), "") == b"bo\x00dy\r\n"
    assert m.body_contains("bo\x00dy")


def test_address_flood_is_bounded() -> None:
    value = b", ".join(b"u%d@example.com" % i for i in range(MAX_ADDRESSES + 500))
    parsed = parse_addresses(value)
    assert len(parsed) <= MAX_ADDRESSES
    assert len(parsed) == value[:MAX_ADDRESS_OCTETS].count(b"@")  # 64 KiB read, no more
    assert len(parse_addresses(b"," * 100_000)) == 0


def test_garbage_addresses_never_raise() -> None:
    for value in (b"<<<>>>", b"@@@", b":;:;:;", b"((((((", b'"""', b"a:b:c;d;", b"<a@b",
                  b"\\", b"\xff\xfe@\x80", b"(unclosed comment", b"[", b"a@[1.2.3.4]",
                  b"Group: <a@b>, (c) d@e;, f@g", b";;;", b"<@a,@b>", b"x@"):
        addresses = parse_addresses(value)
        for name, adl, _mailbox, host in addresses:
            # A NIL host only ever comes with group syntax (RFC 3501 7.4.2).
            assert host is not None or name is None and adl is None
        m = ParsedMessage(b"To: " + value + b"\r\n\r\n")
        assert balanced(m.envelope())


def test_unbalanced_parameters_never_raise() -> None:
    for ct in (b"multipart/mixed; boundary=", b'multipart/mixed; boundary="', b"text/plain;;;;",
               b"text/plain; charset", b"/", b"text/", b"(((((", b"text/plain; a*0=x; a*1",
               b'text/plain; name*=utf-8\'\'%E2; name*0="a"'):
        m = ParsedMessage(b"Content-Type: " + ct + b"\r\n\r\nbody\r\n")
        assert balanced(m.body_structure(True))


_PIECES = [b"From: ", b"To: ", b"Subject: ", b"Content-Type: ", b"multipart/mixed; boundary=b",
           b"message/rfc822", b"text/plain", b"--b", b"--b--", b"\r\n", b"\n", b"\r\n\r\n",
           b" ", b"\t", b"<", b">", b"@", b",", b";", b":", b'"', b"(", b")", b"\\", b"\x00",
           b"\xff", b"=?utf-8?q?x?=", b"a", b"group:", b"charset*0=", b"boundary=\"b\""]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=60))
def test_fuzzed_messages_render(pieces: list[bytes]) -> None:
    m = ParsedMessage(b"".join(pieces))
    assert balanced(m.envelope())
    assert balanced(m.body_structure(True))
    assert balanced(m.body_structure(False))
    for part in ((), (1,), (1, 1), (2,), (1, 2, 1)):
        for spec in ("", "MIME", "HEADER", "TEXT"):
            if part or spec != "MIME":
                assert isinstance(m.section(part, spec), bytes)
    m.body_contains("a")
    m.text_contains("x")
    m.sent_date()


def test_huge_address_and_encoded_word_headers_stay_cheap() -> None:
    # Bounded work: only the first 64 KiB of an address header are parsed, and
    # RFC 2047 decoding for SEARCH stops at 64 KiB of header text (else it is raw).
    m = ParsedMessage(b"To: " + b"a " * 200_000 + b"x@y\r\nSubject: "
                      + b"=?utf-8?q?a?= " * 50_000 + b"\r\n\r\n")
    assert balanced(m.envelope())
    assert b'"x"' not in m.envelope()  # beyond the parsed prefix
    assert m.header_matches("to", "x@y")  # the raw value is still searched
    assert m.header_matches("to", "a a a")
    assert m.header_matches("subject", "=?utf-8?q?a?=")  # too long to decode: raw
    small = ParsedMessage(b"Subject: " + b"=?utf-8?q?a?= " * 1000 + b"\r\n\r\n")
    assert small.header_matches("subject", "a" * 1000)


# -- memory: the tree shares the message's one buffer ------------------------------------

def nested_bomb(depth: int, size: int) -> bytes:
    """`depth` nested multipart/mixed levels around one text part of about `size` octets:
    the message that once cost 100 times its size (every level copied the rest)."""
    filler = (b"x" * 76 + b"\r\n") * (size // 78)
    return nested_multipart(depth)[:-len(b"bottom\r\n")] + filler + b"bottom\r\n"


def wide_bomb(parts: int, size: int) -> bytes:
    part = b"--w\r\nContent-Type: text/plain\r\n\r\n" + b"y" * (size // parts) + b"\r\n"
    return (b"Subject: wide\r\nContent-Type: multipart/mixed; boundary=w\r\n\r\n"
            + part * parts + b"--w--\r\n")


def peak_while(work: Callable[[], object]) -> int:
    """Peak of Python allocations (tracemalloc) while `work` runs."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_deep_nesting_costs_no_copy_per_level() -> None:
    raw = nested_bomb(99, 4 * 1024 * 1024)
    # The tree and BODYSTRUCTURE: headers and part objects only, never the bodies.
    assert peak_while(lambda: ParsedMessage(raw).body_structure(True)) < len(raw) // 4
    # SEARCH BODY decodes one text leaf at a time: its copy, its text, the folded text.
    assert peak_while(lambda: ParsedMessage(raw).body_contains("bottom")) < 4 * len(raw)
    m = ParsedMessage(raw)
    structure = m.body_structure(True)
    leaf = raw[raw.index(b"xxxx"):]
    assert structure.count(b'"mixed"') == 100
    assert (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d NIL NIL NIL NIL)'
            % (len(leaf), leaf.count(b"\n"))) in structure
    assert m.body_contains("bottom") and not m.body_contains("top")


def test_wide_message_memory_is_bounded() -> None:
    raw = wide_bomb(12_000, 16 * 1024 * 1024)
    # The tree: a few hundred bytes per part (MAX_PARTS of them), no body copied.
    assert peak_while(lambda: ParsedMessage(raw).body_structure(True)) < len(raw)
    # SEARCH BODY may keep every listed text part's decoded text for its other keys.
    assert peak_while(lambda: ParsedMessage(raw).body_contains("zzz")) < 2 * len(raw)


def test_too_deep_is_an_opaque_leaf_with_its_bytes() -> None:
    """Past MAX_DEPTH the client sees application/octet-stream, whose BODY[1.1...1] is
    the raw multipart body it stands for (so nothing is lost, only not listed)."""
    m = ParsedMessage(nested_multipart(mime.MAX_DEPTH + 3))
    path = (1,) * mime.MAX_DEPTH
    opaque = m._find(path)
    assert opaque is not None and opaque.depth == mime.MAX_DEPTH
    assert opaque.children == [] and opaque.content_type == mime.OPAQUE
    assert m.section(path, "MIME") == b"Content-Type: multipart/mixed; boundary=b100\r\n\r\n"
    assert m.section(path, "").startswith(b"--b100\r\nContent-Type: multipart/mixed")
    assert m.section(path, "").endswith(b"--b103\r\nContent-Type: text/plain\r\n\r\nbottom\r\n")
    assert m.section(path + (1,), "") == m.section(path, "")  # a leaf is its own part 1
    assert m.section(path + (2,), "") == b""


def test_part_count_is_capped_across_the_tree() -> None:
    """MAX_PARTS counts every level: two multiparts of 6,000 parts each show 10,000
    parts in all (those two included), in document order, and the rest is not listed."""
    inner = [b"--o\r\nContent-Type: multipart/mixed; boundary=%s\r\n\r\n" % name
             + b"".join(b"--%s\r\n\r\n%s%d\r\n" % (name, name, i) for i in range(6000))
             + b"--%s--\r\n" % name for name in (b"a", b"b")]
    raw = (b"Content-Type: multipart/mixed; boundary=o\r\n\r\n" + b"".join(inner)
           + b"--o--\r\n")
    m = ParsedMessage(raw)
    structure = m.body_structure(False)
    assert balanced(structure)
    assert structure.count(b'("text" "plain"') == mime.MAX_PARTS - 2
    assert m.section((1, 6000), "") == b"a5999"
    listed = mime.MAX_PARTS - 2 - 6000  # the root's two children count too
    assert m.section((2, listed), "") == b"b%d" % (listed - 1)
    assert m.section((2, listed + 1), "") == b""
