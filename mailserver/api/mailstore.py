"""The JSON API's blocking store work: every function here runs in a disk thread
(ServerContext.disk.reads, the pool IMAP sessions use) and reaches the mail only
through interfaces.IUserStore and IMailboxView, as an IMAP session does.

Each call opens the folder as one short IMAP session would: EXAMINE (a read-only
view, which claims no \\Recent and renames nothing) to read, SELECT to change, and
closes it before it returns. Changes therefore reach IMAP sessions as another client's:
flag renames and expunges in the Maildir, which their next sync (NOOP, IDLE) reports.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mailserver.api import mimejson
from mailserver.api.resource import ApiError
from mailserver.interfaces import IMailboxView, IUserStore, MessageInfo, StoreError

T = TypeVar("T")

#: The folder index item (store/index.py `items`, the IMAP FETCH cache) that keeps each
#: message's envelope fields as JSON, so a warm listing opens no file and parses no
#: header. The version is in the name: a change of rendering starts a new item.
ENVELOPE_ITEM = "X-API-ENVELOPE-1"
#: The largest UID (RFC 3501 2.3.1.1: a 32-bit number).
MAX_UID = 2**32 - 1


def store_error(e: StoreError, what: str = "message") -> ApiError:
    """The HTTP refusal for a store refusal (its IMAP response code)."""
    if e.code in ("NONEXISTENT", "TRYCREATE"):
        return ApiError(404, "not_found", f"no such {what}: {e.text}")
    if e.code == "OVERQUOTA":
        return ApiError(507, "over_quota", e.text, smtp="4.2.2")
    if e.code == "INUSE":
        return ApiError(503, "busy", e.text, smtp="4.3.0", headers={"Retry-After": "1"})
    if e.code == "ALREADYEXISTS":
        return ApiError(409, "conflict", e.text)
    if e.code in ("CANNOT", "LIMIT", ""):
        return ApiError(400, "refused", e.text)
    return ApiError(500, "store_error", e.text, smtp="4.3.0")


def folder_name(name: str) -> str:
    """A folder name from a URL as the store spells it: IMAP's modified UTF-7 (RFC 3501
    5.1.3) with "." between levels; a name holding non-ASCII characters is its
    Unicode form and is encoded here, so "Entwürfe" and "Entw&APw-rfe" are one folder."""
    if len(name) > 1000:
        raise ApiError(400, "bad_folder_name", "folder name too long")
    if name.isascii():
        return name
    out: list[str] = []
    run: list[str] = []
    for ch in name + "\x20":  # a trailing space flushes the last run
        if "\x20" <= ch <= "\x7e":
            if run:
                data = "".join(run).encode("utf-16-be", "surrogatepass")
                out.append("&" + base64.b64encode(data).rstrip(b"=")
                           .replace(b"/", b",").decode("ascii") + "-")
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    return "".join(out)[:-1]


def display_name(name: str) -> str:
    """A stored folder name in Unicode (modified UTF-7 decoded); as it is if broken."""
    if "&" not in name:
        return name
    out: list[str] = []
    i = 0
    try:
        while i < len(name):
            start = name.find("&", i)
            if start < 0:
                out.append(name[i:])
                break
            end = name.index("-", start)
            out.append(name[i:start])
            run = name[start + 1:end]
            if run:
                data = base64.b64decode(run.replace(",", "/") + "=" * (-len(run) % 4))
                out.append(data.decode("utf-16-be"))
            else:
                out.append("&")
            i = end + 1
    except (ValueError, UnicodeDecodeError):
        return name
    return "".join(out)


def _opened(store: IUserStore, folder: str, read_only: bool,
            work: Callable[[IMailboxView], T]) -> T:
    """`work` on the folder opened as a short session (EXAMINE or SELECT), closed after."""
    try:
        view: IMailboxView = store.select(folder, read_only)
    except StoreError as e:
        raise store_error(e, "folder") from None
    try:
        return work(view)
    except StoreError as e:
        raise store_error(e) from None
    finally:
        view.close()


# --------------------------------------------------------------------------- folders


def folders(store: IUserStore) -> list[dict[str, Any]]:
    """Every folder with its counts (STATUS), INBOX first, placeholders marked."""
    out = []
    for info in store.folders():
        entry: dict[str, Any] = {
            "name": info.name, "display_name": display_name(info.name),
            "special_use": info.special_use, "selectable": info.selectable,
            "subscribed": info.subscribed}
        if info.selectable:
            try:
                status = store.status(info.name)
            except StoreError:
                continue  # deleted between the listing and now
            entry.update(messages=status.messages, unseen=status.unseen,
                         size=status.size, uidvalidity=status.uid_validity,
                         uidnext=status.uid_next)
        out.append(entry)
    return out


# --------------------------------------------------------------------------- messages


def _envelopes(view: IMailboxView, uids: Sequence[int]) -> dict[int, bytes]:
    """uid -> envelope fields as a JSON object (bytes), from the folder's item cache where
    it has them; the rest from the header blocks (themselves cached by the index), then
    kept for next time. Kept as JSON so a page is spliced together, not re-parsed."""
    found = {uid: value for uid, value in view.cached_items(ENVELOPE_ITEM, uids).items()
             if value.startswith(b'{"') and value.endswith(b"}")}
    new: list[tuple[int, bytes]] = []
    for uid in uids:
        if uid in found:
            continue
        try:
            header = view.header(uid)
        except StoreError:
            continue  # expunged meanwhile
        found[uid] = _json(mimejson.envelope(header))
        new.append((uid, found[uid]))
    if new:
        view.remember_items(ENVELOPE_ITEM, new)
    return found


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


#: The envelope of a message whose header could not be read (expunged meanwhile).
_NO_ENVELOPE = _json(dict.fromkeys(mimejson.ENVELOPE_FIELDS))


def _summary_json(info: MessageInfo, envelope: bytes,
                  flag_memo: dict[frozenset[str], bytes]) -> bytes:
    """One message of a page as JSON: its own fields, then the envelope's members.
    `flag_memo`: a folder has a few distinct flag sets, each rendered once a page."""
    flags = flag_memo.get(info.flags)
    if flags is None:
        flags = flag_memo[info.flags] = _json(sorted(info.flags))
    return b'{"uid": %d, "flags": %s, "size": %d, "internal_date": "%s", %s' % (
        info.uid, flags, info.size, mimejson.rfc3339(info.internal_date).encode(),
        envelope[1:])


def messages(store: IUserStore, folder: str, since_uid: int, since: float | None,
             limit: int, base: str | None, next_link: Callable[[int], str]) -> bytes:
    """One page of a folder's messages as JSON: UID > since_uid, arrived at or after
    `since`, at most `limit`, in UID order; or the one message whose file name starts
    `base`. Rendered here, in the disk thread: a page of 1,000 is ~0.5 MB of JSON,
    which the reactor should not spend its time on."""
    def work(view: IMailboxView) -> bytes:
        infos: list[MessageInfo] = view.messages
        more = False
        if base is not None:
            uid = view.uid_of_base(base)
            page = [i for i in infos if i.uid == uid] if uid is not None else []
        else:
            start = bisect.bisect_right([i.uid for i in infos], since_uid)
            page = []
            for info in infos[start:]:
                if since is not None and info.internal_date < since:
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(info)
        env = _envelopes(view, [i.uid for i in page])
        memo: dict[frozenset[str], bytes] = {}
        items = b", ".join(_summary_json(i, env.get(i.uid, _NO_ENVELOPE), memo)
                           for i in page)
        last = page[-1].uid if more else None
        head = _json({"folder": folder, "uidvalidity": view.uid_validity,
                      "uidnext": view.uid_next, "next_since_uid": last,
                      "next": next_link(last) if last is not None else None})
        return head[:-1] + b', "messages": [' + items + b"]}"
    return _opened(store, folder, True, work)


def _info(view: IMailboxView, uid: int) -> MessageInfo:
    seq = view.seq_of(uid)
    if seq is None or view.is_vanished(uid):
        raise ApiError(404, "not_found", f"no message with UID {uid} in this folder")
    info: MessageInfo = view.messages[seq - 1]
    return info


def message(store: IUserStore, folder: str, uid: int, raw: bool,
            download: str) -> tuple[MessageInfo, bytes | dict[str, Any]]:
    """The stored bytes (CRLF, as IMAP's BODY[] gives them), or the parsed JSON."""
    def work(view: IMailboxView) -> tuple[MessageInfo, bytes | dict[str, Any]]:
        info = _info(view, uid)
        data = view.read(uid)
        if raw:
            return info, data
        head = data.partition(b"\r\n\r\n")
        body = {"uid": info.uid, "flags": sorted(info.flags), "size": info.size,
                "internal_date": mimejson.rfc3339(info.internal_date),
                **mimejson.envelope(head[0] + head[1]), **mimejson.parsed(data, download)}
        return info, body
    return _opened(store, folder, True, work)


def attachment(store: IUserStore, folder: str, uid: int,
               number: int) -> tuple[bytes, str, str | None]:
    def work(view: IMailboxView) -> tuple[bytes, str, str | None]:
        _info(view, uid)
        found = mimejson.attachment(view.read(uid), number)
        if found is None:
            raise ApiError(404, "not_found", f"message {uid} has no attachment {number}")
        return found
    return _opened(store, folder, True, work)


# --------------------------------------------------------------------------- changes


def set_flags(store: IUserStore, folder: str, uid: int,
              changes: Sequence[tuple[str, Sequence[str]]]) -> dict[str, Any]:
    """Apply each (mode, flags) as IMAP's UID STORE does ("+", "-" or "=")."""
    def work(view: IMailboxView) -> dict[str, Any]:
        _info(view, uid)
        for mode, flags in changes:
            view.store([uid], mode, flags)
        info = _info(view, uid)
        return {"uid": uid, "flags": sorted(info.flags)}
    return _opened(store, folder, False, work)


def move(store: IUserStore, folder: str, uid: int, dest: str) -> dict[str, Any]:
    """RFC 6851 MOVE of one message; the answer names its new UID in `dest`."""
    def work(view: IMailboxView) -> dict[str, Any]:
        _info(view, uid)
        try:
            result, _ = view.move([uid], dest)
        except StoreError as e:
            raise store_error(e, "destination folder") from None
        if not result.dest_uids:
            raise ApiError(404, "not_found", f"message {uid} was expunged meanwhile")
        return {"folder": dest, "uid": result.dest_uids[0],
                "uidvalidity": result.uid_validity}
    return _opened(store, folder, False, work)


def delete(store: IUserStore, folder: str, uid: int) -> dict[str, Any]:
    """\\Deleted, then UID EXPUNGE of this one message (RFC 4315 2.1): other messages
    marked \\Deleted stay where they are."""
    def work(view: IMailboxView) -> dict[str, Any]:
        _info(view, uid)
        view.store([uid], "+", ["\\Deleted"])
        view.expunge([uid])
        return {"uid": uid, "deleted": True}
    return _opened(store, folder, False, work)
