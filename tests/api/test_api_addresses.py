"""api/addresses.py: an address from JSON in the one form the SMTP grammar gives a path,
and everything a receiving parser might read otherwise refused."""

from __future__ import annotations

import pytest

from mailserver.api.addresses import canonical, mailbox
from mailserver.api.resource import ApiError
from mailserver.smtp.grammar import parse_command


@pytest.mark.parametrize("text", [
    "alice@example.org", "Alice.Smith+tag@EXAMPLE.org", '"john doe"@Example.ORG',
    '"john"@example.org', "jöran@exämple.org", '"a\\"b"@x.org', "a@[127.0.0.1]",
    "o'neil@example.org",
])
def test_the_same_form_as_rcpt_to(text: str) -> None:
    """What RCPT TO:<text> would store is what the API stores (directory, queue)."""
    rcpt = parse_command(f"RCPT TO:<{text}>".encode())
    assert canonical(text, "to") == str(rcpt.recipient)  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", [
    "a@b@c", "Alice <a@b.org>", "a@b.org, c@d.org", "@x.org", "x@", "a..b@x.org",
    "a@x..org", "a@-x.org", "a@x-.org", "group: a@b.org;", " a@b.org", "a@b.org ",
    "x" * 65 + "@example.org", "a@" + "b" * 250 + ".org", "(comment)a@b.org",
    '"unterminated@example.org', "a@b.org\r\nRCPT TO:<x@y.org>",
])
def test_what_a_parser_could_read_otherwise_is_refused(text: str) -> None:
    with pytest.raises(ApiError) as refused:
        canonical(text, "to[0]") if "\r" not in text else mailbox(text, "to[0]")
    assert refused.value.status == 400


def test_a_display_name_travels_in_the_header_only() -> None:
    m = mailbox({"address": '"john doe"@x.org', "name": "Doe, John"}, "to")
    assert m.address == '"john doe"@x.org'
    assert str(m.header()) == '"Doe, John" <"john doe"@x.org>'
