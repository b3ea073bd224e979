"""Mailbox access keys of URLAUTH (RFC 4467 7), kept in the user's Maildir root.

One file, `mailserver-urlauth-keys` (mode 0600, readable by the server alone), holds a
random 256-bit key for the user and, for each mailbox RESETKEY named since the last
RESETKEY without a name, a key of that mailbox. A mailbox's access key is derived:

    HMAC-SHA256(base, "urlauth\\0" name "\\0" UIDVALIDITY)

where base is the mailbox's own key if it has one, else the user's. So a URL generated
for a mailbox stops verifying when the mailbox is renamed away (its name is another),
or deleted and made again (another UIDVALIDITY, RFC 3501 2.3.1.1), even when the URL
itself carries no ;UIDVALIDITY; and `RESETKEY box` (RFC 4467 6.1) voids that mailbox's
URLs only, `RESETKEY` every URL of the user.

The file is written with ownfiles.write_atomically (a temp file made with mode 0600,
fsync'd, renamed over it) under an flock of `mailserver-urlauth-keys.lock`, so two
processes resetting keys at once cannot lose one reset, and the key made on first use
is made once (a second maker waits on the lock and reads the first's). Blocking: disk
thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from mailserver.core.ownfiles import open_nofollow, write_atomically
from mailserver.interfaces import StoreError
from mailserver.store import sharedfs

KEY_FILE = "mailserver-urlauth-keys"
LOCK_FILE = KEY_FILE + ".lock"
#: Most per-mailbox keys kept; RESETKEY of one more drops those of mailboxes that no
#: longer exist first (the store passes which exist), then the oldest.
MAX_MAILBOX_KEYS = 10_000


class KeyFileBroken(StoreError):
    """The key file exists but is not ours to read (not JSON, wrong fields): every URL
    fails verification (URLFETCH NIL, GENURLAUTH NO) until RESETKEY writes a new one."""

    def __init__(self, path: str) -> None:
        # The path stays out of the text: the client reads it (NO [SERVERBUG]).
        super().__init__("SERVERBUG", "Unreadable URLAUTH key file; RESETKEY makes a "
                         "new one")
        self.path = path


def _read(path: Path) -> dict[str, object] | None:
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(4 * 1024 * 1024)
    try:
        data = json.loads(raw)
    except ValueError:
        raise KeyFileBroken(str(path)) from None
    if (not isinstance(data, dict) or not isinstance(data.get("user"), str)
            or not isinstance(data.get("mailboxes"), dict)):
        raise KeyFileBroken(str(path))
    return data


def _write(path: Path, data: dict[str, object]) -> None:
    write_atomically(path, json.dumps(data).encode(), 0o600)


class _Locked:
    """flock of the lock file beside the key file (0600, never through a link); in
    cluster mode a dotlock beside that instead (store/sharedfs.py)."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self.fd = -1
        self.dotlock: sharedfs.DotLock | None = None

    def __enter__(self) -> None:
        if sharedfs.shared() is not None:
            self.dotlock = sharedfs.DotLock(sharedfs.dotlock_path(self.path))
            self.dotlock.acquire()
            return
        self.fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.dotlock is not None:
            self.dotlock.release()
            return
        os.close(self.fd)  # closing releases the lock


def _new_key() -> str:
    return secrets.token_hex(32)


def _keys(root: Path) -> dict[str, object]:
    """The file's content, made (once) when there is none yet."""
    path = root / KEY_FILE
    data = _read(path)
    if data is not None:
        return data
    with _Locked(root):
        data = _read(path)  # another process may have made it meanwhile
        if data is None:
            data = {"user": _new_key(), "mailboxes": {}}
            _write(path, data)
    return data


def mailbox_key(root: Path, name: str, uid_validity: int) -> bytes:
    """The access key of mailbox `name` (its normalised name) with this UIDVALIDITY."""
    data = _keys(root)
    boxes = data["mailboxes"]
    assert isinstance(boxes, dict)
    base = boxes.get(name, data["user"])
    if not isinstance(base, str):
        raise KeyFileBroken(str(root / KEY_FILE))
    message = b"urlauth\0" + name.encode("utf-8") + b"\0%d" % uid_validity
    return hmac.new(bytes.fromhex(base), message, hashlib.sha256).digest()


def reset(root: Path, name: str | None, existing: set[str] | None = None) -> None:
    """RESETKEY (RFC 4467 6.1): a new key for mailbox `name`, or with None a new user key
    and no mailbox keys (every URL of the user void). `existing`: the mailboxes that
    exist, to drop keys of gone ones when there are too many."""
    path = root / KEY_FILE
    with _Locked(root):
        try:
            data = _read(path)
        except KeyFileBroken:
            data = None
        if data is None or name is None:
            data = {"user": _new_key(), "mailboxes": {}}
        if name is not None:
            boxes = data["mailboxes"]
            assert isinstance(boxes, dict)
            boxes.pop(name, None)
            if len(boxes) >= MAX_MAILBOX_KEYS and existing is not None:
                for gone in [n for n in boxes if n not in existing]:
                    del boxes[gone]
            while len(boxes) >= MAX_MAILBOX_KEYS:
                del boxes[next(iter(boxes))]  # insertion order: the oldest reset
            boxes[name] = _new_key()
        _write(path, data)
