"""The message of a POST /api/v1/send, from its JSON: structured fields built into an
RFC 5322 message with the email package, or a raw message taken as it is.

Both forms end as a `Composed`: the envelope (sender, recipients), the message bytes
with LF line ends (as every message is stored here: IDeliveryTransaction.write) and
whether it needs SMTPUTF8. Everything after that (the sender rule, Message-ID and
Date, limits, signing, delivery) is api/submit.py's, the same for both forms.

Structured (docs/api/openapi.yaml SendStructured):
    {"from": ADDR?, "to": [ADDR], "cc": [ADDR], "bcc": [ADDR], "reply_to": [ADDR],
     "subject": "...", "text": "...", "html": "...",
     "attachments": [{"filename", "content_type", "content": BASE64}],
     "headers": {"In-Reply-To": "..."}, "idempotency_key": "..."}
  ADDR is "local@domain" or {"address", "name"} (api/addresses.py). Bcc recipients get
  the message but no Bcc field (RFC 5322 3.6.3: what `sendmail -t` does). "from"
  defaults to the user's own address. Extra headers may not set the fields the request
  has keys for, nor MIME structure or trace fields (FIXED_FIELDS).
Raw:
    {"raw": BASE64 of an RFC 5322 message, "to": [ADDR] (the envelope recipients),
     "from": ADDR? (the envelope sender; default the user), "idempotency_key": "..."}
  The message's own From is checked like submission's; CRLF or LF line ends; a bare CR
  or a NUL is refused (RFC 5322 2.3, 2.1).

Hostile input: every string that goes into a header (subject, names, filenames, extra
header names and values, content types) is refused with 400 if it holds CR, LF or NUL:
the email package would fold or reject some of these, but the refusal must be ours and
must name the field. Unknown keys are refused too, so a misspelt "bcc" never sends a
message to fewer people than the application meant.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from typing import Any

from mailserver.api import mimebuild
from mailserver.api.addresses import Mailbox, mailbox, mailboxes, no_injection
from mailserver.api.resource import ApiError

STRUCTURED_KEYS = frozenset({"from", "to", "cc", "bcc", "reply_to", "subject", "text",
                             "html", "attachments", "headers", "idempotency_key"})
RAW_KEYS = frozenset({"raw", "from", "to", "idempotency_key"})
#: Fields the request sets through its own keys, or that describe the MIME structure
#: (RFC 2045) or the trace (RFC 5321 4.4): never through "headers".
FIXED_FIELDS = frozenset({"from", "to", "cc", "bcc", "reply-to", "subject", "sender",
                          "mime-version", "content-type", "content-transfer-encoding",
                          "content-disposition", "received", "return-path",
                          "dkim-signature", "authentication-results"})
#: RFC 5322 3.6.8 field-name.
_FIELD_NAME = re.compile(r"[!-9;-~]{1,76}")
#: RFC 2045 5.1 type "/" subtype, tokens only (no parameters: the filename is its own key).
_MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
MAX_ATTACHMENTS = 100
MAX_EXTRA_HEADERS = 50
MAX_KEY = 255
#: Whitespace a client may wrap base64 with (RFC 2045 6.8 lines); nothing else.
_B64_SPACE = re.compile(rb"[ \t\r\n]+")


@dataclass
class Composed:
    sender: str
    recipients: list[Mailbox]
    #: The message with LF line ends, without trace fields.
    message: bytes
    #: Any address or header field needs SMTPUTF8 / RFC 6532.
    smtputf8: bool
    idempotency_key: str | None = None
    #: The From mailbox the request gave (structured), for the log.
    author: Mailbox | None = field(default=None)


def compose(request: Any, user: str, max_recipients: int) -> Composed:
    """The request's message and envelope, or ApiError 400 naming what is wrong."""
    if not isinstance(request, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    key = _idempotency_key(request.get("idempotency_key"))
    if "raw" in request:
        return _raw(request, user, max_recipients, key)
    return _structured(request, user, max_recipients, key)


def _idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY or not value.isprintable():
        raise ApiError(400, "bad_request", f"idempotency_key: 1 to {MAX_KEY} printable "
                                           "characters")
    return value


def _unknown(request: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown key {unknown[0]!r}")


def _string(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, "bad_request", f"{name}: must be a string")
    return value


def b64(value: Any, where: str) -> bytes:
    """Strict base64 (RFC 4648 4), line breaks allowed; 400 for anything else."""
    if not isinstance(value, str):
        raise ApiError(400, "bad_base64", f"{where}: must be a base64 string")
    try:
        # One unbroken line, as most clients send it: no copy without the line breaks
        # first (that regex pass cost seven times the decoding).
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(_B64_SPACE.sub(b"", value.encode("ascii")), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{where}: not valid base64") from None


def _recipients(request: dict[str, Any], keys: tuple[str, ...],
                limit: int) -> dict[str, list[Mailbox]]:
    found = {k: mailboxes(request.get(k), k, limit) for k in keys}
    if not any(found.values()):
        raise ApiError(400, "bad_request", "no recipient: give " + ", ".join(keys))
    return found


def _envelope(lists: list[list[Mailbox]], limit: int) -> list[Mailbox]:
    """Every recipient once (addresses compare case-insensitively, as RCPT does)."""
    seen: dict[str, Mailbox] = {}
    for group in lists:
        for m in group:
            seen.setdefault(m.address.lower(), m)
    if len(seen) > limit:
        raise ApiError(400, "too_many_recipients", f"at most {limit} recipients per "
                                                   "message", smtp="5.5.3")
    return list(seen.values())


def _raw(request: dict[str, Any], user: str, limit: int, key: str | None) -> Composed:
    _unknown(request, RAW_KEYS)
    found = _recipients(request, ("to",), limit)
    sender = mailbox(request["from"], "from").address if request.get("from") else user
    data = b64(request["raw"], "raw")
    if b"\x00" in data:
        raise ApiError(400, "bad_message", "raw: the message holds a NUL (RFC 5322 2.1)",
                       smtp="5.6.0")
    data = data.replace(b"\r\n", b"\n")
    if b"\r" in data:
        raise ApiError(400, "bad_message", "raw: a bare CR (RFC 5322 2.3: CR and LF only "
                                           "together)", smtp="5.6.0")
    if not data.strip():
        raise ApiError(400, "bad_message", "raw: the message is empty", smtp="5.6.0")
    head = data.split(b"\n\n", 1)[0]
    recipients = _envelope([found["to"]], limit)
    smtputf8 = (not head.isascii() or not sender.isascii()
                or not all(m.is_ascii for m in recipients))
    return Composed(sender, recipients, data, smtputf8, key)


def _structured(request: dict[str, Any], user: str, limit: int,
                key: str | None) -> Composed:
    _unknown(request, STRUCTURED_KEYS)
    found = _recipients(request, ("to", "cc", "bcc"), limit)
    author = mailbox(request["from"], "from") if request.get("from") else Mailbox(user)
    reply_to = mailboxes(request.get("reply_to"), "reply_to", limit)
    subject = _string(request, "subject")
    text, html = _string(request, "text"), _string(request, "html")
    if text is None and html is None:
        raise ApiError(400, "bad_request", "give text, html or both")
    if subject is not None:
        no_injection(subject, "subject")
    extra = _extra_headers(request.get("headers"))
    attachments = _attachments(request.get("attachments"))
    everyone = [author, *reply_to, *found["to"], *found["cc"], *found["bcc"]]
    smtputf8 = not all(m.is_ascii for m in everyone)
    try:
        data = _build(author, found, reply_to, subject, text, html, extra, attachments,
                      smtputf8)
    except (ValueError, TypeError, UnicodeError) as e:
        # What the email package cannot write: lone surrogates (JSON "\ud800"),
        # a header value it cannot encode. Ours to refuse, never a 500.
        raise ApiError(400, "bad_request", f"cannot build the message: {e}") from None
    recipients = _envelope([found["to"], found["cc"], found["bcc"]], limit)
    return Composed(author.address, recipients, data, smtputf8, key, author)


def _build(author: Mailbox, found: dict[str, list[Mailbox]], reply_to: list[Mailbox],
           subject: str | None, text: str | None, html: str | None,
           extra: list[tuple[str, str]], attachments: list[tuple[str, str, bytes]],
           smtputf8: bool) -> bytes:
    """The message as the email package writes it, LF line ends (as stored here); the
    common shapes written directly to the same bytes (api/mimebuild.py)."""
    if not attachments and not smtputf8:
        direct = mimebuild.build(author, found["to"], found["cc"], reply_to, subject, text,
                                 html, extra)
        if direct is not None:
            return direct
    return build_with_email(author, found, reply_to, subject, text, html, extra,
                            attachments, smtputf8)


def build_with_email(author: Mailbox, found: dict[str, list[Mailbox]],
                     reply_to: list[Mailbox], subject: str | None, text: str | None,
                     html: str | None, extra: list[tuple[str, str]],
                     attachments: list[tuple[str, str, bytes]], smtputf8: bool) -> bytes:
    """Any structured message, through email.message.EmailMessage."""
    # RFC 6532 3.2: UTF-8 in addresses only where the whole path has SMTPUTF8; without
    # it display names and the subject become RFC 2047 encoded-words.
    policy = email_policy.default.clone(linesep="\n", utf8=smtputf8)
    message = EmailMessage(policy=policy)
    message["From"] = author.header()
    if found["to"]:
        message["To"] = [m.header() for m in found["to"]]
    if found["cc"]:
        message["Cc"] = [m.header() for m in found["cc"]]
    if reply_to:
        message["Reply-To"] = [m.header() for m in reply_to]
    if subject is not None:
        message["Subject"] = subject
    for name, value in extra:
        message[name] = value
    if text is not None and html is not None:
        message.set_content(text)
        message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    else:
        message.set_content(text or "")
    for filename, content_type, content in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(content, maintype=maintype, subtype=subtype,
                               filename=filename)
    for part in message.walk():
        if part is not message:
            # The email package copies MIME-Version into parts it converts to
            # multipart; RFC 2045 4 wants it at the top level only.
            del part["MIME-Version"]
    return message.as_bytes(policy=policy)


def _extra_headers(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict) or len(value) > MAX_EXTRA_HEADERS:
        raise ApiError(400, "bad_request", f"headers: an object of at most "
                                           f"{MAX_EXTRA_HEADERS} name: value pairs")
    out = []
    seen: set[str] = set()
    for name, text in value.items():
        no_injection(name, "headers")
        if not _FIELD_NAME.fullmatch(name):
            raise ApiError(400, "bad_request", f"headers: {name[:80]!r} is not a field "
                                               "name (RFC 5322 3.6.8)")
        if name.lower() in FIXED_FIELDS:
            raise ApiError(400, "bad_request", f"headers: {name} is set by the request "
                                               "itself, not by extra headers")
        if name.lower() in seen:
            # JSON keys differ by case where field names do not (RFC 5322 1.2.2): two
            # In-Reply-To or References fields (at most one each, RFC 5322 3.6).
            raise ApiError(400, "bad_request", f"headers: {name} given twice (field "
                                               "names are case-insensitive)")
        seen.add(name.lower())
        if not isinstance(text, str):
            raise ApiError(400, "bad_request", f"headers.{name}: must be a string")
        out.append((name, no_injection(text, f"headers.{name}")))
    return out


def _attachments(value: Any) -> list[tuple[str, str, bytes]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        raise ApiError(400, "bad_request", f"attachments: a list of at most "
                                           f"{MAX_ATTACHMENTS}")
    out = []
    for i, item in enumerate(value):
        where = f"attachments[{i}]"
        if not isinstance(item, dict) or set(item) - {"filename", "content_type",
                                                       "content"}:
            raise ApiError(400, "bad_request", f"{where}: an object with filename, "
                                               "content_type and content")
        filename = item.get("filename")
        if not isinstance(filename, str) or not filename:
            raise ApiError(400, "bad_request", f"{where}.filename: a non-empty string")
        no_injection(filename, f"{where}.filename")
        content_type = item.get("content_type", "application/octet-stream")
        if not isinstance(content_type, str):
            raise ApiError(400, "bad_request", f"{where}.content_type: must be a string")
        no_injection(content_type, f"{where}.content_type")
        if not _MIME_TYPE.fullmatch(content_type) or content_type.lower().startswith(
                ("multipart/", "message/")):
            # RFC 2046 5.2.1 and 5.1: message/* and multipart/* may not be base64; a
            # message to forward goes as application/octet-stream or in "raw".
            raise ApiError(400, "bad_request", f"{where}.content_type: type/subtype "
                                               "(RFC 2045 5.1), not multipart/ or message/")
        out.append((filename, content_type.lower(), b64(item.get("content"),
                                                         f"{where}.content")))
    return out
