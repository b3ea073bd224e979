"""Modified UTF-7 for mailbox names (RFC 3501 5.1.3).

Printable US-ASCII (0x20-0x7e) stands for itself except "&", which is "&-". Any other
run of characters is UTF-16BE, base64-encoded with "," instead of "/" and no padding,
between "&" and "-".

`decode` is strict, as the RFC asks of a receiver: it refuses bad base64, a shifted run
that only holds printable ASCII (which must be sent as itself), "&" written bare,
two adjacent shifted runs, a run that does not end in "-", leftover non-zero bits, and
unpaired surrogates. Mailbox names that pass decode() round-trip through encode().
"""

from __future__ import annotations

import base64
import binascii
import re

_B64_ALPHABET = re.compile(r"\A[A-Za-z0-9+,]*\Z")


def _is_direct(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def _encode_run(run: str) -> str:
    data = run.encode("utf-16-be")
    return "&" + base64.b64encode(data).rstrip(b"=").replace(b"/", b",").decode("ascii") + "-"


def encode(name: str) -> str:
    """A Unicode mailbox name as modified UTF-7."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _is_direct(ch):
            if run:
                out.append(_encode_run("".join(run)))
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def _decode_run(b64: str, where: int) -> str:
    if not b64:
        raise ValueError(f"empty shifted run at {where}")
    if not _B64_ALPHABET.match(b64) or len(b64) % 4 == 1:
        raise ValueError(f"bad base64 in shifted run at {where}")
    padded = b64.replace(",", "/") + "=" * (-len(b64) % 4)
    try:
        data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"bad base64 in shifted run at {where}") from None
    # Leftover bits after the last whole octet must be zero, and the octets must be
    # whole UTF-16 units; else the sender did not produce this with an encoder.
    if len(data) % 2:
        raise ValueError(f"odd number of octets in shifted run at {where}")
    if base64.b64encode(data).rstrip(b"=").decode("ascii") != b64.replace(",", "/"):
        raise ValueError(f"non-zero padding bits in shifted run at {where}")
    try:
        text = data.decode("utf-16-be")
    except UnicodeDecodeError:
        raise ValueError(f"invalid UTF-16 in shifted run at {where}") from None
    if any(_is_direct(ch) for ch in text):
        raise ValueError(f"printable ASCII encoded in shifted run at {where}")
    return text


def decode(name: str) -> str:
    """Modified UTF-7 to Unicode; ValueError when `name` is not valid modified UTF-7."""
    out: list[str] = []
    i = 0
    n = len(name)
    previous_was_run = False
    while i < n:
        ch = name[i]
        if ch == "&":
            end = name.find("-", i + 1)
            if end < 0:
                raise ValueError(f"unterminated shifted run at {i}")
            if end == i + 1:
                out.append("&")
                previous_was_run = False
            else:
                if previous_was_run:
                    # "&AOQ-&AOQ-" must have been one run (RFC 3501 5.1.3: the
                    # shortest encoding).
                    raise ValueError(f"adjacent shifted runs at {i}")
                out.append(_decode_run(name[i + 1:end], i))
                previous_was_run = True
            i = end + 1
            continue
        if not _is_direct(ch):
            raise ValueError(f"character {ch!r} must be encoded (at {i})")
        out.append(ch)
        previous_was_run = False
        i += 1
    return "".join(out)
