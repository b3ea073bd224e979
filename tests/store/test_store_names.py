"""store/names.py, the one Maildir file-name parser: what each part of a name means,
hostile and foreign forms, and that the bulk regex (COMMON_NAME) reads common names
exactly as the per-name functions do."""

from __future__ import annotations

import random

import pytest

from mailserver.store import names
from mailserver.store.maildir import crlf_size, unique_name


@pytest.mark.parametrize("name, base, stored, crlf, letters", [
    ("1700000000.M1P2Q3R4.host,S=120,W=124:2,SF", "1700000000.M1P2Q3R4.host", 120, 124, "SF"),
    ("1700000000.M1P2.host", "1700000000.M1P2.host", None, None, ""),
    ("1.M1P2.host,W=7,S=5", "1.M1P2.host", 5, 7, ""),               # any field order
    ("1.M1P2.host,S=5,X=9,W=7:1,experimental", "1.M1P2.host", 5, 7, ""),  # not :2,
    ("1.M1P2.host,W=12abc:2,T", "1.M1P2.host", None, None, "T"),    # not all digits
    ("1.M1P2.host,W=:2,", "1.M1P2.host", None, None, ""),
    ("1.M1P2.host:2,S,W=5", "1.M1P2.host", None, None, "S,W=5"),    # fields after ':'
    ("foreign-file", "foreign-file", None, None, ""),
    ("a,b,c:2,RS", "a", None, None, "RS"),
])
def test_parts_of_a_name(name: str, base: str, stored: int | None, crlf: int | None,
                         letters: str) -> None:
    assert names.base_of(name) == base
    assert names.split_name(name) == (base, letters)
    assert names.flag_letters(name) == letters
    assert names.stored_size_of(name) == stored
    assert names.crlf_size_of(name) == crlf
    parsed = names.parse_name(name)
    assert (parsed.base, parsed.size, parsed.crlf_size) == (base, stored, crlf)
    assert parsed.flags == "".join(sorted(set(letters)))


def test_name_time_and_delivery_order() -> None:
    assert names.name_time("1700000000.M123456P1Q2R3.host") == 1700000000.123456
    assert names.name_time("1700000000.host") == 1700000000.0
    assert names.name_time("host.1700000000") is None
    assert names.name_time("123456789012.M1.host") is None  # 12 digits: not a time
    # Same second: microseconds, then the per-process counter, then the pid decide.
    ordered = ["5.M1P9Q1R0.h", "5.M1P1Q2R0.h", "5.M2P1Q1R0.h", "6.foreign"]
    shuffled = random.Random(5).sample(ordered, len(ordered))
    assert sorted(shuffled, key=names.order_key) == ordered
    assert names.order_key("not-a-time") == 0


def test_with_flags_replaces_the_info() -> None:
    assert names.with_flags("1.M1.h,S=3,W=4", "SRS") == "1.M1.h,S=3,W=4:2,RS"
    assert names.with_flags("1.M1.h,S=3:2,FT", "S") == "1.M1.h,S=3:2,S"


def test_common_name_regex_agrees_with_the_functions() -> None:
    """folderstate's bulk load parses listings with COMMON_NAME; POP3 and the rest use
    the functions. On every name the regex accepts they must say the same."""
    rng = random.Random(8)
    listing = []
    for i in range(300):
        data = b"x\n" * rng.randint(0, 50)
        name = unique_name(len(data), crlf_size(data), host=rng.choice(["h", "a.b", "x:y/z"]))
        if i % 3:
            name += ":2," + "".join(sorted(rng.sample("DFRSTab", rng.randint(0, 3))))
        listing.append(name)
    listing += ["1.M1P2.host,W=7", "1.M1P2.host,S=5,W=7:2,", "123.foreign,W=3"]
    matches = names.COMMON_NAME.findall("\n".join(listing))
    assert len(matches) == len(listing) - 1  # the foreign one takes the slow path
    for name, base, secs, usecs, w, letters in matches:
        assert names.base_of(name) == base
        assert names.crlf_size_of(name) == int(w)
        assert names.flag_letters(name) == letters
        assert names.name_time(name) == int(secs) + int(usecs) / 1e6
