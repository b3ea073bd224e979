"""What IMAP clients fetch first of a new message, rendered while APPEND has its bytes.

ENVELOPE, BODYSTRUCTURE and BODY of an APPENDed message go into the folder's index
(store/index.py `items`, with its header block) in the disk thread that writes the
file (UserStore.append), so its first FETCH of them, or a SEARCH on its header, opens
no file. Rendered exactly as fetch.py renders them from the file (the same
ParsedMessage over the bytes a read gives), so a kept value never differs from a
computed one.
"""

from __future__ import annotations

from mailserver.imap.message import ParsedMessage


def append_items(message: bytes) -> dict[str, bytes]:
    """The kept FETCH items of `message` (CRLF line ends, as MailboxView.read gives it)."""
    parsed = ParsedMessage(message)
    return {
        "ENVELOPE": parsed.envelope(),
        "BODYSTRUCTURE": parsed.body_structure(True),
        "BODY": parsed.body_structure(False),
    }
