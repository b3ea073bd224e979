"""Reading and changing a user's mail: /api/v1/folders/... (issue 18).

    GET    folders                                   the user's folders, with counts
    GET    folders/{name}/messages                   a page of messages (?since_uid=,
                                                     ?since=, ?limit=) or ?name=BASE
    GET    folders/{name}/messages/{uid}             parsed JSON, or the stored bytes
                                                     (?format=raw, Accept: message/rfc822)
    GET    folders/{name}/messages/{uid}/attachments/{n}   one attachment, decoded
    PATCH  folders/{name}/messages/{uid}             flags (POST does the same)
    POST   folders/{name}/messages/{uid}/move        {"to": folder}
    DELETE folders/{name}/messages/{uid}             expunge (no Trash)

Folder names in paths are percent-encoded IMAP names ("." between levels, modified
UTF-7, or the same name in Unicode). Every route needs the "read" scope and reaches
only the authenticated user's own Maildir (the MailboxId comes from the credential,
never from the path). The store work runs in the disk threads (mailstore.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

from mailserver.api import mailstore
from mailserver.api.resource import ApiAnswer, ApiCall, ApiError, Route, route
from mailserver.auth.names import InvalidAddress, make_mailbox_id
from mailserver.interfaces import IUserStore

T = TypeVar("T")

#: Messages per page: the default, and the most a client may ask for.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Flags one request may name (add + remove, or the set).
MAX_FLAGS = 50
#: RFC 3501 2.3.2 system flags a client may set, by lower-case name. \Recent is not one
#: (the server alone gives it), nor any other backslash name.
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                                       "\\Draft")}
#: RFC 3501 9 flag-keyword = atom: printable ASCII without atom-specials; 64 at most here.
_KEYWORD = re.compile(r'[!#$&\'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]{1,64}')
_UID = re.compile(r"[1-9][0-9]{0,9}")
#: A number in a query (ten digits at most: int() of a huge string costs, or raises).
_DIGITS = re.compile(r"[0-9]{1,10}")
#: A Maildir file name as a webhook names it (its name in new/): ",S=" size fields and
#: a ":2," info part, if any, are dropped here (the store keys a message by its base).
_BASE = re.compile(r"[!-.0-~]{1,255}")

#: A type/subtype as RFC 2045 5.1 allows it (tokens), safe to send as Content-Type.
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}")

_FOLDER = r"folders/(?P<folder>[^/]+)"
_MESSAGE = _FOLDER + r"/messages/(?P<uid>[^/]+)"


def parse_uid(text: str) -> int:
    """A UID from the path (RFC 3501 2.3.1.1: 1 to 2^32-1), or 400."""
    if not _UID.fullmatch(text) or int(text) > mailstore.MAX_UID:
        raise ApiError(400, "bad_uid", "a UID is a number from 1 to 4294967295")
    return int(text)


def _number(call: ApiCall, name: str, default: int, low: int, high: int) -> int:
    text = call.arg(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise ApiError(400, "bad_parameter", f"{name}: a number from {low} to {high}")
    return int(text)


def _since(call: ApiCall) -> float | None:
    text = call.arg("since")
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ApiError(400, "bad_parameter",
                       "since: an RFC 3339 date-time with its zone, e.g. 2026-12-07T10:00:00Z")
    return when.timestamp()


def parse_flags(value: Any, key: str) -> list[str]:
    """A JSON list of flags, canonical: system flags spelled as RFC 3501 does."""
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise ApiError(400, "bad_request", f"{key}: a list of strings")
    flags = []
    for flag in value:
        if flag.startswith("\\"):
            system = SYSTEM_FLAGS.get(flag.lower())
            if system is None:
                why = ("the server alone sets \\Recent (RFC 3501 2.3.2)"
                       if flag.lower() == "\\recent" else "not a system flag")
                raise ApiError(400, "bad_flag", f"{key}: {flag[:70]!r}: {why}")
            flags.append(system)
        elif _KEYWORD.fullmatch(flag):
            flags.append(flag)
        else:
            raise ApiError(400, "bad_flag", f"{key}: {flag[:70]!r} is not a keyword "
                           "(1-64 printable ASCII characters, no ( ) { } % * \" \\ or ])")
    return flags


def flag_changes(body: Any) -> list[tuple[str, list[str]]]:
    """{"flags": [...]} (set), or {"add_flags": [...], "remove_flags": [...]}, as
    (STORE mode, flags) pairs."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body is a JSON object")
    unknown = set(body) - {"flags", "add_flags", "remove_flags"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown member {sorted(unknown)[0][:40]!r}")
    if "flags" in body and len(body) > 1:
        raise ApiError(400, "bad_request", "flags sets them all: not with add_flags "
                                           "or remove_flags")
    if not body:
        raise ApiError(400, "bad_request", "give flags, add_flags or remove_flags")
    changes = [(mode, parse_flags(body[key], key)) for mode, key in
               (("=", "flags"), ("+", "add_flags"), ("-", "remove_flags")) if key in body]
    if sum(len(flags) for _, flags in changes) > MAX_FLAGS:
        raise ApiError(400, "bad_request", f"at most {MAX_FLAGS} flags a request")
    return changes


async def _in_store(call: ApiCall, fn: Callable[..., T], *args: Any) -> T:
    """`fn(store, *args)` in a disk thread (the read pool IMAP uses), on the
    credential's own Maildir."""
    context = call.context
    try:
        mailbox = make_mailbox_id(call.principal.address, context.config.domains.local)
    except InvalidAddress:
        raise ApiError(403, "forbidden", "this user has no mailbox here") from None

    def work() -> T:
        store: IUserStore = context.mailboxes.open_user_store(mailbox)
        return fn(store, *args)

    result: T = await context.disk.reads.run(work)
    return result


def _folder(call: ApiCall) -> str:
    return mailstore.folder_name(call.params["folder"])


# --------------------------------------------------------------------------- handlers


async def list_folders(call: ApiCall) -> ApiAnswer:
    return ApiAnswer(200, {"folders": await _in_store(call, mailstore.folders)})


async def list_messages(call: ApiCall) -> ApiAnswer:
    folder = _folder(call)
    base = call.arg("name")
    if base is not None and not _BASE.fullmatch(base):
        raise ApiError(400, "bad_parameter", "name: a Maildir file name (printable ASCII, "
                                             "no /)")
    since_uid = _number(call, "since_uid", 0, 0, mailstore.MAX_UID)
    limit = _number(call, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    since = _since(call)
    if base is not None:
        base = base.partition(":")[0].split(",")[0]
        if not base:
            raise ApiError(400, "bad_parameter", "name: a Maildir base name")
    page = await _in_store(call, mailstore.messages, folder, since_uid, since, limit, base,
                           _next_link(call))
    return ApiAnswer(200, None, raw=page)


def _next_link(call: ApiCall) -> Callable[[int], str]:
    """since_uid -> the same query with the cursor moved on (a path under /api/v1/)."""
    rest = "".join(f"&{key}={quote(value, safe='')}" for key in ("since", "limit")
                   if (value := call.arg(key)) is not None)
    prefix = f"/api/v1/folders/{quote(call.params['folder'], safe='')}/messages?since_uid="
    return lambda since_uid: f"{prefix}{since_uid}{rest}"


def _wants_raw(call: ApiCall) -> bool:
    fmt = call.arg("format")
    if fmt is not None:
        if fmt not in ("raw", "json"):
            raise ApiError(400, "bad_parameter", "format: raw or json")
        return fmt == "raw"
    accept = call.request.getHeader(b"accept") or ""
    if isinstance(accept, bytes):
        accept = accept.decode("latin-1")
    types = [t.split(";")[0].strip().lower() for t in accept.split(",")]
    return "message/rfc822" in types and "application/json" not in types


async def get_message(call: ApiCall) -> ApiAnswer:
    folder = _folder(call)
    uid = parse_uid(call.params["uid"])
    raw = _wants_raw(call)
    download = (f"/api/v1/folders/{quote(call.params['folder'], safe='')}/messages/{uid}"
                "/attachments")
    info, body = await _in_store(call, mailstore.message, folder, uid, raw, download)
    if isinstance(body, bytes):
        return ApiAnswer(200, None, raw=body, content_type="message/rfc822")
    return ApiAnswer(200, body)


async def get_attachment(call: ApiCall) -> ApiAnswer:
    folder = _folder(call)
    uid = parse_uid(call.params["uid"])
    number = call.params["n"]
    if not _UID.fullmatch(number) or int(number) > mailstore.MAX_UID:
        raise ApiError(400, "bad_parameter", "an attachment number from 1")
    data, ctype, name = await _in_store(call, mailstore.attachment, folder, uid,
                                        int(number))
    if not _MEDIA_TYPE.fullmatch(ctype):
        ctype = "application/octet-stream"
    # Mail is someone else's content on our origin: never rendered, never sniffed, and
    # sandboxed should a browser open it anyway (an HTML attachment is a script).
    headers = {"Content-Disposition": "attachment", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "sandbox; default-src 'none'"}
    if name:
        # RFC 6266 4.3 / RFC 8187: the name percent-encoded, so no byte of it can break
        # out of the header (CR, LF, quotes).
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    return ApiAnswer(200, None, headers=headers, raw=data, content_type=ctype)


async def change_flags(call: ApiCall) -> ApiAnswer:
    folder = _folder(call)
    uid = parse_uid(call.params["uid"])
    changes = flag_changes(call.json())
    return ApiAnswer(200, await _in_store(call, mailstore.set_flags, folder, uid, changes))


async def move_message(call: ApiCall) -> ApiAnswer:
    folder = _folder(call)
    uid = parse_uid(call.params["uid"])
    body = call.json()
    if not isinstance(body, dict) or set(body) != {"to"} or not isinstance(body["to"], str):
        raise ApiError(400, "bad_request", 'the body is {"to": "FOLDER"}')
    dest = mailstore.folder_name(body["to"])
    if not dest:
        raise ApiError(400, "bad_folder_name", "to: a folder name")
    return ApiAnswer(200, await _in_store(call, mailstore.move, folder, uid, dest))


async def delete_message(call: ApiCall) -> ApiAnswer:
    folder = _folder(call)
    uid = parse_uid(call.params["uid"])
    return ApiAnswer(200, await _in_store(call, mailstore.delete, folder, uid))


ROUTES: list[Route] = [
    route("GET", r"folders", "read", list_folders),
    route("GET", _FOLDER + r"/messages", "read", list_messages),
    route("GET", _MESSAGE, "read", get_message),
    # Changes need `all`: a `read` token (a dashboard, an archiver) never destroys mail.
    route("PATCH", _MESSAGE, "all", change_flags),
    route("POST", _MESSAGE, "all", change_flags),
    route("DELETE", _MESSAGE, "all", delete_message),
    route("POST", _MESSAGE + r"/move", "all", move_message),
    route("GET", _MESSAGE + r"/attachments/(?P<n>[^/]+)", "read", get_attachment),
]
