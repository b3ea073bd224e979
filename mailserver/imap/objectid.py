"""OBJECTID (RFC 8474): MAILBOXID, EMAILID, THREADID.

- MAILBOXID: the store's per-folder id (store/mailboxid.py: a file in the folder's
  directory, so RENAME keeps it and DELETE + CREATE makes a new one). Sent in SELECT /
  EXAMINE (`* OK [MAILBOXID (id)]`, 4.2), CREATE's tagged OK (4.1) and STATUS (4.3).
- EMAILID: "M" and the first 24 hex digits (96 bits) of the SHA-256 of the message as
  stored. The bytes of a stored message never change (flags live in the file name), a
  MOVE renames the file and a COPY copies or links it, so the id survives both (5.1);
  two messages with the same EMAILID have the same content, which is what the id
  stands for (Cyrus derives its EMAILID from a content digest too). Computed on first
  use from the whole message and kept like ENVELOPE (fetch.Kept: the process's item
  cache and the folder's index), so each message is read for it once.
- THREADID: NIL for every message (RFC 8474 5.2 allows a server without threads to
  say so); SEARCH THREADID matches nothing.
"""

from __future__ import annotations

import hashlib
import re

#: RFC 8474 7: objectid = 1*255(ALPHA / DIGIT / "_" / "-").
OBJECTID = re.compile(r"[A-Za-z0-9_-]{1,255}")
#: The name under which a message's EMAILID is kept (fetch.Kept / the folder index).
ITEM = "EMAILID"


def email_id(raw: bytes) -> bytes:
    """The EMAILID of a message's stored bytes."""
    return b"M" + hashlib.sha256(raw).hexdigest()[:24].encode("ascii")


def item_value(raw: bytes) -> bytes:
    """The FETCH value as kept: `(Mxxxx)` (RFC 8474 7: fetch-emailid-resp)."""
    return b"(" + email_id(raw) + b")"


def mailbox_code(mailbox_id: str) -> str:
    """`MAILBOXID (id)`: the response code of SELECT/EXAMINE and CREATE (RFC 8474 4)."""
    return f"MAILBOXID ({mailbox_id})"
