"""DATA and BDAT decoders: output and flags for any chunking, smuggling look-alikes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.smtp.data import ChunkDecoder, DotDecoder

END = b"\r\n.\r\n"
BIG = 1 << 40


# ------------------------------------------------------------------ reference models


@dataclass
class Decoded:
    output: bytes
    remainder: bytes | None
    size: int
    #: RFC 1870 3: octets as transmitted, CRLF pairs counted, stuffing dots not.
    wire_size: int
    bare_newline: bool
    nul: bool
    eight_bit: bool


def reference_dot(stream: bytes) -> Decoded:
    """A byte-at-a-time reading of RFC 5321 4.1.1.4 / 4.5.2, slow and obvious."""
    out = bytearray()
    wire = 0
    bare = False
    line_start = True
    i = 0
    while i < len(stream):
        if line_start and stream[i : i + 3] == b".\r\n":
            content = stream[:i]
            return Decoded(
                bytes(out),
                stream[i + 3 :],
                len(out),
                wire,
                bare,
                b"\0" in content,
                any(b >= 0x80 for b in content),
            )
        if line_start and stream[i : i + 1] == b".":
            i += 1  # dot-stuffing
        line_start = False
        if stream[i : i + 2] == b"\r\n":
            out += b"\n"
            wire += 2
            i += 2
            line_start = True
            continue
        if stream[i] in b"\r\n":
            bare = True
        out.append(stream[i])
        wire += 1
        i += 1
    raise AssertionError("reference_dot needs a stream with an end marker")


def run_dot(pieces: list[bytes], max_size: int = BIG) -> tuple[Decoded, DotDecoder]:
    decoder = DotDecoder(max_size, strict_8bit=False)
    out = bytearray()
    remainder: bytes | None = None
    for index, piece in enumerate(pieces):
        chunk, remainder = decoder.feed(piece)
        out += chunk
        if remainder is not None:
            remainder += b"".join(pieces[index + 1 :])
            break
    decoded = Decoded(
        bytes(out),
        remainder,
        decoder.size,
        decoder.wire_size,
        decoder.bare_newline,
        decoder.nul,
        decoder.eight_bit,
    )
    return decoded, decoder


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


# Streams rich in the bytes that matter: CR, LF, ".", NUL, 8-bit, and the marker itself.
_atoms = st.sampled_from(
    [b"\r", b"\n", b".", b"a", b"\0", b"\xc3\xa9", b"\r\n", b"\r\n.", b"..", b"\r\n.\r", END]
)
streams = st.lists(_atoms, max_size=40).map(b"".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


# ------------------------------------------------------------------ DotDecoder: basics


def test_simple_message() -> None:
    decoded, decoder = run_dot([b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"])
    assert decoded.output == b"Subject: hi\n\nbody\n"
    assert decoded.remainder == b"QUIT\r\n"
    assert decoded.size == len(b"Subject: hi\n\nbody\n")
    assert not (decoded.bare_newline or decoded.nul or decoded.eight_bit)
    assert decoder.done and decoder.rejection() is None


def test_empty_message_ends_at_the_very_start() -> None:
    decoded, _ = run_dot([b".\r\nMAIL FROM:<a@b>\r\n"])
    assert decoded.output == b""
    assert decoded.remainder == b"MAIL FROM:<a@b>\r\n"


def test_remainder_is_empty_bytes_when_nothing_follows() -> None:
    decoded, _ = run_dot([b"x\r\n.\r\n"])
    assert decoded.remainder == b""


def test_dot_unstuffing_rfc5321_4_5_2() -> None:
    decoded, _ = run_dot([b"..\r\n...x\r\n.y\r\na.b\r\n..\r\n.\r\n"])
    assert decoded.output == b".\n..x\ny\na.b\n.\n"


def test_first_line_dot_is_unstuffed() -> None:
    decoded, _ = run_dot([b".x\r\n.\r\n"])
    assert decoded.output == b"x\n"


def test_continues_until_the_end_and_returns_none() -> None:
    decoder = DotDecoder(BIG, strict_8bit=False)
    assert decoder.feed(b"line one\r\n") == (b"line one\n", None)
    assert decoder.feed(b"line two") == (b"line two", None)
    assert decoder.feed(b"\r") == (b"", None)
    assert decoder.feed(b"\n.") == (b"\n", None)
    assert decoder.feed(b"\r") == (b"", None)
    assert decoder.feed(b"\nNOOP\r\n") == (b"", b"NOOP\r\n")


def test_carried_state_is_a_few_bytes() -> None:
    decoder = DotDecoder(BIG, strict_8bit=False)
    decoder.feed(b"x" * 100_000 + b"\r\n.\r")
    assert len(decoder._held) <= 2  # noqa: SLF001 - the O(1) promise


def test_feed_after_end_is_an_error() -> None:
    decoder = DotDecoder(BIG, strict_8bit=False)
    decoder.feed(b".\r\n")
    with pytest.raises(RuntimeError):
        decoder.feed(b"more")


def test_flags() -> None:
    decoded, decoder = run_dot([b"a\0b\r\n\xe2\x82\xac\r\n.\r\n"])
    assert decoded.nul and decoded.eight_bit and not decoded.bare_newline
    rejection = decoder.rejection()
    assert rejection is not None
    assert (rejection.reply.code, rejection.reply.enhanced) == (550, "5.6.0")
    lenient = DotDecoder(BIG, strict_8bit=False)
    lenient.feed(b"\xff\r\n.\r\n")
    assert lenient.eight_bit and lenient.rejection() is None
    strict = DotDecoder(BIG, strict_8bit=True)
    strict.feed(b"\xff\r\n.\r\n")
    rejection = strict.rejection()
    assert rejection is not None
    assert (rejection.reply.code, rejection.reply.enhanced) == (550, "5.6.1")


def test_too_big_discards_output_but_finds_the_end() -> None:
    decoder = DotDecoder(10, strict_8bit=False)
    assert decoder.feed(b"0123456789") == (b"0123456789", None)
    assert not decoder.too_big
    assert decoder.feed(b"abc\r\n") == (b"", None)
    assert decoder.too_big
    assert decoder.feed(b"more\r\n.\r\nRSET\r\n") == (b"", b"RSET\r\n")
    assert decoder.size == len(b"0123456789abc\nmore\n")
    assert decoder.wire_size == len(b"0123456789abc\r\nmore\r\n")
    rejection = decoder.rejection()
    assert rejection is not None
    assert (rejection.reply.code, rejection.reply.enhanced) == (552, "5.3.4")


def test_exactly_max_size_is_not_too_big() -> None:
    # RFC 1870 3: "ab" CRLF is four octets as transmitted; the ".CRLF" marker is not counted.
    decoder = DotDecoder(4, strict_8bit=False)
    assert decoder.feed(b"ab\r\n.\r\n") == (b"ab\n", b"")
    assert not decoder.too_big and decoder.wire_size == 4 and decoder.size == 3


def test_one_octet_over_counts_the_cr_of_each_crlf() -> None:
    """The defect: the limit was applied to the LF form, one octet per line short. Three
    CRLF-ended lines ("a", "", "b") are 2 + 6 = 8 octets as sent (5 stored): over 7."""
    decoder = DotDecoder(7, strict_8bit=False)
    assert decoder.feed(b"a\r\n\r\nb\r\n.\r\n") == (b"", b"")
    assert decoder.too_big and (decoder.wire_size, decoder.size) == (8, 5)
    rejection = decoder.rejection()
    assert rejection is not None
    assert rejection.reply.encode() == b"552 5.3.4 Error: message too big\r\n"


def test_stuffing_dots_are_not_counted() -> None:
    """RFC 1870 3: "not ... doubled quoting dots": ".." CRLF counts as three octets."""
    decoder = DotDecoder(3, strict_8bit=False)
    assert decoder.feed(b"..\r\n.\r\n") == (b".\n", b"")
    assert not decoder.too_big and decoder.wire_size == 3


def test_chunk_limit_counts_the_chunk_octets() -> None:
    decoder = ChunkDecoder(5, strict_8bit=False)
    decoder.begin_chunk(6)
    assert decoder.feed(b"\r\n\r\n\r\n") == (b"", b"")
    assert decoder.too_big and (decoder.wire_size, decoder.size) == (6, 3)


# ------------------------------------------------------------------ SMTP smuggling

# End-of-data look-alikes that some receivers honour (SMTP smuggling, CVE-2023-51764/5/6):
# none may end the message; those holding a bare CR or LF must set bare_newline.
LOOKALIKES = [
    (b"\n.\n", True),
    (b"\n.\r\n", True),
    (b"\r.\r", True),
    (b"\r.\r\n", True),
    (b"\r\n.\n", True),
    (b"\r\n.\r", True),
    (b"\n.\r", True),
    (b"\r\n.\r\r\n", True),
    (b"\r\r\n.\r\r\n", True),
    (b"\r\n.\n\r\n", True),
    (b"\n\n.\n\n", True),
    (b"\r\r.\r\r", True),
    (b"\r\n\x00.\r\n", False),
    (b"\r\n.\x00\r\n", False),
    (b"\r\n .\r\n", False),
    (b"\r\n..\r\n", False),
]


@pytest.mark.parametrize(("lookalike", "bare"), LOOKALIKES, ids=[repr(x[0]) for x in LOOKALIKES])
def test_smuggling_lookalikes_do_not_end_the_message(lookalike: bytes, bare: bool) -> None:
    smuggled = b"MAIL FROM:<admin@victim.example>\r\nRCPT TO:<x@y>\r\nDATA\r\nforged"
    stream = b"Subject: hi\r\n\r\nbody" + lookalike + smuggled + END + b"QUIT\r\n"
    for pieces in ([stream], [bytes([b]) for b in stream]):
        decoded, decoder = run_dot(pieces)
        assert decoded.remainder == b"QUIT\r\n"  # the smuggled commands stay message text
        assert smuggled.replace(b"\r\n", b"\n") in decoded.output
        assert decoded.bare_newline is bare
        if bare:
            rejection = decoder.rejection()
            assert rejection is not None
            assert (rejection.reply.code, rejection.reply.enhanced) == (550, "5.5.2")


def test_bare_cr_right_before_the_real_end_still_ends_it() -> None:
    # "\r" + "\r\n.\r\n": a bare CR, then a genuine end of data.
    decoded, decoder = run_dot([b"x\r\r\n.\r\nQUIT\r\n"])
    assert decoded.remainder == b"QUIT\r\n"
    assert decoder.bare_newline


# ------------------------------------------------------------------ properties


@settings(max_examples=500)
@given(streams, streams, cut_lists)
def test_dot_decoder_matches_reference_for_any_split(
    body: bytes, tail: bytes, cuts: list[int]
) -> None:
    stream = body + END + tail
    expected = reference_dot(stream)
    decoded, decoder = run_dot(split_at(stream, cuts))
    assert decoded == expected
    assert decoder.done


@settings(max_examples=300)
@given(streams, cut_lists, st.integers(min_value=0, max_value=60))
def test_dot_decoder_size_limit_for_any_split(body: bytes, cuts: list[int], limit: int) -> None:
    stream = body + END
    expected = reference_dot(stream)
    decoded, decoder = run_dot(split_at(stream, cuts), max_size=limit)
    assert decoder.too_big is (expected.wire_size > limit)
    assert (decoded.size, decoded.wire_size) == (expected.size, expected.wire_size)
    assert decoded.remainder == expected.remainder
    assert (decoded.bare_newline, decoded.nul, decoded.eight_bit) == (
        expected.bare_newline,
        expected.nul,
        expected.eight_bit,
    )
    if not decoder.too_big:
        assert decoded.output == expected.output
    else:
        assert expected.output.startswith(decoded.output)


@settings(max_examples=300)
@given(streams, cut_lists)
def test_dot_decoder_without_end_holds_at_most_two_bytes(body: bytes, cuts: list[int]) -> None:
    pieces = split_at(body, cuts)
    decoder = DotDecoder(BIG, strict_8bit=False)
    for piece in pieces:
        _, remainder = decoder.feed(piece)
        assert len(decoder._held) <= 2  # noqa: SLF001
        if remainder is not None:
            break


def stuff(text: bytes) -> bytes:
    """A reference client: LF text -> dot-stuffed CRLF lines + end marker (RFC 5321 4.5.2)."""
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return wire + b".\r\n"


_text_lines = st.lists(
    st.lists(
        st.sampled_from([b".", b"..", b"a", b" ", b"\xc3\xa9", b"\0", b"x.y"]), max_size=6
    ).map(b"".join),
    max_size=12,
)


@settings(max_examples=300)
@given(_text_lines, cut_lists)
def test_dot_stuffing_round_trip(lines: list[bytes], cuts: list[int]) -> None:
    text = b"".join(line + b"\n" for line in lines)
    decoded, decoder = run_dot(split_at(stuff(text) + b"NEXT", cuts))
    assert decoded.output == text
    assert decoded.remainder == b"NEXT"
    assert not decoder.bare_newline


# ------------------------------------------------------------------ ChunkDecoder


def run_chunks(
    message: bytes, sizes: list[int], cuts: list[int], max_size: int = BIG
) -> tuple[bytes, ChunkDecoder]:
    """Send `message` as BDAT chunks of `sizes` (the rest in a last chunk), each chunk's
    bytes split at `cuts` and followed by the next command, which must come back."""
    decoder = ChunkDecoder(max_size, strict_8bit=False)
    out = bytearray()
    chunks, offset = [], 0
    for size in sizes:
        chunks.append(message[offset : offset + size])
        offset += size
    chunks.append(message[offset:])
    for chunk in chunks:
        decoder.begin_chunk(len(chunk))
        wire = chunk + b"BDAT next\r\n"
        leftover: bytes | None = None
        for piece in split_at(wire, cuts):
            if leftover is not None:
                leftover += piece
                continue
            produced, leftover = decoder.feed(piece)
            out += produced
        if not chunk:
            produced, leftover = decoder.feed(b"BDAT next\r\n")
            out += produced
        assert leftover == b"BDAT next\r\n"
        assert decoder.remaining == 0
    out += decoder.finish()
    return bytes(out), decoder


def bare_in(message: bytes) -> bool:
    pairs = message.count(b"\r\n")
    return message.count(b"\r") != pairs or message.count(b"\n") != pairs


@settings(max_examples=500)
@given(
    streams,
    st.lists(st.integers(min_value=0, max_value=12), max_size=6),
    cut_lists,
)
def test_chunk_decoder_for_any_chunking(message: bytes, sizes: list[int], cuts: list[int]) -> None:
    output, decoder = run_chunks(message, sizes, cuts)
    assert output == message.replace(b"\r\n", b"\n")  # no dot-unstuffing in BDAT
    assert decoder.size == len(output)
    assert decoder.wire_size == len(message)  # RFC 1870 3 / RFC 3030 2: the chunk octets
    assert decoder.bare_newline is bare_in(message)
    assert decoder.nul is (b"\0" in message)
    assert decoder.eight_bit is (not message.isascii())


@settings(max_examples=200)
@given(
    streams,
    st.lists(st.integers(min_value=0, max_value=12), max_size=6),
    cut_lists,
    st.integers(min_value=0, max_value=40),
)
def test_chunk_decoder_size_limit(
    message: bytes, sizes: list[int], cuts: list[int], limit: int
) -> None:
    output, decoder = run_chunks(message, sizes, cuts, max_size=limit)
    expected = message.replace(b"\r\n", b"\n")
    assert decoder.too_big is (len(message) > limit)  # RFC 1870 3: as transmitted
    assert decoder.size == len(expected)
    if not decoder.too_big:
        assert output == expected


def test_crlf_split_across_bdat_chunks_is_a_crlf() -> None:
    decoder = ChunkDecoder(BIG, strict_8bit=False)
    decoder.begin_chunk(3)
    assert decoder.feed(b"ab\rRSET") == (b"ab", b"RSET")
    decoder.begin_chunk(3)
    assert decoder.feed(b"\ncd") == (b"\ncd", b"")
    assert decoder.finish() == b""
    assert not decoder.bare_newline


def test_dangling_cr_at_the_end_is_bare() -> None:
    decoder = ChunkDecoder(BIG, strict_8bit=False)
    decoder.begin_chunk(2)
    assert decoder.feed(b"a\r") == (b"a", b"")
    assert decoder.finish() == b"\r"
    assert decoder.bare_newline
    rejection = decoder.rejection()
    assert rejection is not None and rejection.reply.code == 550


def test_bdat_does_not_unstuff_or_end_at_dot() -> None:
    decoder = ChunkDecoder(BIG, strict_8bit=False)
    data = b"..x\r\n.\r\nafter\r\n"
    decoder.begin_chunk(len(data))
    assert decoder.feed(data) == (b"..x\n.\nafter\n", b"")


def test_zero_size_chunk_is_complete_at_once() -> None:
    decoder = ChunkDecoder(BIG, strict_8bit=False)
    decoder.begin_chunk(0)
    assert decoder.remaining == 0
    assert decoder.feed(b"QUIT\r\n") == (b"", b"QUIT\r\n")
    assert decoder.finish() == b""


def test_chunk_decoder_misuse() -> None:
    decoder = ChunkDecoder(BIG, strict_8bit=False)
    decoder.begin_chunk(5)
    with pytest.raises(RuntimeError):
        decoder.begin_chunk(5)
    with pytest.raises(RuntimeError):
        decoder.finish()
    decoder.feed(b"12345")
    decoder.finish()
    with pytest.raises(RuntimeError):
        decoder.feed(b"x")
    with pytest.raises(RuntimeError):
        decoder.begin_chunk(1)
