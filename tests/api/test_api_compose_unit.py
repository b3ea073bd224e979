"""compose.b64: strict base64 (RFC 4648 4) with line breaks allowed, decoded at once when
unbroken; anything else the same 400 whichever way it was tried."""

from __future__ import annotations

import base64

import pytest

from mailserver.api.compose import b64
from mailserver.api.resource import ApiError

DATA = bytes(range(256)) * 3
ENCODED = base64.b64encode(DATA).decode()


@pytest.mark.parametrize("text", [
    ENCODED,
    base64.encodebytes(DATA).decode(),                  # 76-character lines, LF
    base64.encodebytes(DATA).decode().replace("\n", "\r\n"),
    " " + ENCODED[:40] + "\t" + ENCODED[40:] + "\n",
])
def test_decodes_unbroken_and_wrapped(text: str) -> None:
    assert b64(text, "raw") == DATA


@pytest.mark.parametrize("text", ["!!!notbase64", "eA", "eA==\x00", "ZüZ=",
                                  ENCODED[:-4] + "-_" + ENCODED[-2:], 5])
def test_refuses_what_is_not_base64(text: object) -> None:
    with pytest.raises(ApiError) as refused:
        b64(text, "raw")
    assert (refused.value.status, refused.value.code) == (400, "bad_base64")
    assert refused.value.message.startswith("raw: ")
