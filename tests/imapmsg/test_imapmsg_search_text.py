"""SEARCH matching helpers (RFC 3501 6.4.4): decoded, case-insensitive substrings."""

from __future__ import annotations

import datetime

from imapmsg_corpus import message, served

from mailserver.imap.message import ParsedMessage, decode_header_value


def test_header_match_is_case_insensitive_substring() -> None:
    m = message("simple.eml")
    assert m.header_matches("Subject", "friday")
    assert m.header_matches("SUBJECT", "LUNCH ON")
    assert not m.header_matches("Subject", "saturday")
    assert m.header_matches("from", "alice@example.org")
    assert m.header_matches("To", "carol@")
    assert m.address_matches("cc", "Dave, Jr.")


def test_empty_needle_matches_when_the_header_exists() -> None:
    m = message("simple.eml")
    assert m.header_matches("In-Reply-To", "")
    assert not m.header_matches("X-Not-There", "")


def test_encoded_words_are_decoded_before_matching() -> None:
    m = message("encoded_words.eml")
    assert m.header_matches("Subject", "grüße aus münchen")
    assert m.header_matches("Subject", "und Berlin")
    assert m.header_matches("From", "Jürgen")
    assert m.header_matches("To", "renée")   # ISO-8859-1 encoded word
    assert not m.header_matches("Subject", "=?UTF-8?")


def test_raw_utf8_headers_match() -> None:
    m = message("eight_bit.eml")
    assert m.header_matches("subject", "Grüße")
    assert m.header_matches("subject", "GRÜSSE")  # full case folding: ß is ss
    assert not m.header_matches("subject", "Grüße aus Berlin")
    assert m.header_matches("from", "müller")


def test_base64_body_is_decoded() -> None:
    m = message("encoded_words.eml")
    assert m.body_contains("needle im heuhaufen")
    assert m.body_contains("schöne")
    assert not m.body_contains("U2Now7Zu")  # the base64 text itself is not the body text
    assert not m.body_contains("Berlin")    # a header word is not in the body
    assert m.text_contains("Berlin")        # but TEXT covers the header too
    assert m.text_contains("heuhaufen")


def test_quoted_printable_and_charset() -> None:
    m = message("alternative.eml")
    assert m.body_contains("café crème")      # iso-8859-1 quoted-printable
    assert m.body_contains("soft line break")  # soft line break joined
    assert m.body_contains("caf&eacute;")      # the html part is text too


def test_attachments_and_attached_messages() -> None:
    m = message("rfc822_attachment.eml")
    assert m.body_contains("original text")   # text part inside message/rfc822
    assert m.body_contains("carol@example.net")  # header of the attached message
    assert not m.body_contains("AAECAwQF")     # a binary attachment is not text
    assert message("mixed_attachment.eml").body_contains("report attached")
    assert not message("mixed_attachment.eml").body_contains("JVBERi0")


def test_header_only_message_has_no_body_text() -> None:
    m = ParsedMessage.from_header(served("simple.eml").split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert m.header_matches("subject", "lunch")
    assert not m.body_contains("noon")


def test_sent_date_ignores_time_and_zone() -> None:
    assert message("simple.eml").sent_date() == datetime.date(2024, 1, 1)
    assert message("no_content_type.eml").sent_date() == datetime.date(2024, 2, 2)
    assert message("folded_headers.eml").sent_date() == datetime.date(2024, 1, 10)
    late = ParsedMessage(b"Date: Mon, 1 Jan 2024 23:30:00 -1100\r\n\r\n")
    assert late.sent_date() == datetime.date(2024, 1, 1)  # not converted to UTC (2 Jan)
    assert message("malformed.eml").sent_date() is None
    assert message("rfc2231.eml").sent_date() is None


def test_decode_header_value_survives_bad_encoded_words() -> None:
    assert decode_header_value(b"=?x-unknown?Q?abc?=") == "=?x-unknown?Q?abc?="
    assert isinstance(decode_header_value(b"=?utf-8?B?not base64!?="), str)
    assert decode_header_value(b"\xff\xfe raw") == "\xff\xfe raw"
    assert decode_header_value(b"=?utf-8?q?a_b?= =?utf-8?q?c?=") == "a bc"


# Cases of imaptest's search-addresses (Dovecot's compliance tester).
_ADDRESS_MESSAGES = [
    b"From: user-from@domain.org\r\nTo: user-to@domain.org\r\n\r\nbody\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: RealTo <user-to@domain.org>\r\n\r\nb\r\n",
    b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: <user-to@domain.org>\r\n\r\nb\r\n",
    b"From: user-from@domain.org (RealFrom)\r\nTo: user-to@domain.org (RealTo)\r\n\r\nb\r\n",
    b"From: user-from1@domain.org, user-from2@domain.org\r\n\r\nb\r\n",
    b"To: groupname: groupuser1@domain.org, groupuser2@domain.org;,\r\n"
    b"  groupname2: groupuser3@domain.org;\r\n\r\nb\r\n",
]


def _search(field: str, needle: str) -> list[int]:
    return [n for n, raw in enumerate(_ADDRESS_MESSAGES, start=1)
            if ParsedMessage(raw).address_matches(field, needle)]


def test_address_search_like_imaptest() -> None:
    assert _search("from", "user-from@domain.org") == [1, 2, 3, 4]
    assert _search("to", "user-to@domain.org") == [1, 2, 3, 4]
    assert _search("from", "realfrom") == [2, 4]
    assert _search("from", "ealfro") == [2, 4]
    assert _search("from", "ser-fro") == [1, 2, 3, 4, 5]
    assert _search("from", "") == [1, 2, 3, 4, 5]
    assert _search("to", "") == [1, 2, 3, 4, 6]
    assert _search("from", "user-from2") == [5]
    for needle in ("groupname", "groupname2", "groupuser1", "groupuser3"):
        assert _search("to", needle) == [6]
    assert _search("to", "groupuser4") == []


def test_transfer_decoding_is_tolerant() -> None:
    from mailserver.imap.message import decode_transfer
    assert decode_transfer(b"YQ==\r\n", b"base64") == b"a"
    assert decode_transfer(b"YWI\r\n", b"BASE64") == b"ab"        # padding missing
    assert decode_transfer(b"Y W\r\nJj!", b"base64") == b"abc"     # junk ignored
    assert decode_transfer(b"YWJjZ", b"base64") == b"abc"          # leftover sextet
    assert decode_transfer(b"caf=C3=A9=\r\n!", b"quoted-printable") == "café!".encode()
    assert decode_transfer(b"as is", b"8bit") == b"as is"
