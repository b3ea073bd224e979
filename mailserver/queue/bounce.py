"""Delivery status notifications (RFC 3464) for failed and delayed recipients.

A DSN is a multipart/report (RFC 6522) with three parts: a human explanation, the
machine-readable message/delivery-status (one block per recipient, RFC 3463 status
codes), and the original headers as text/rfc822-headers (never the body: it may be
large and the sender has it). It goes from MAILER-DAEMON with the null envelope
sender <>, so that a DSN that cannot be delivered is never bounced again (RFC 5321
6.1, RFC 3464 2.1); the queue never creates a DSN for a message whose sender is <>.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate

from mailserver.logs import printable
from mailserver.queue.envelope import QueueEntry, RecipientState

#: Headers of the original message copied into the DSN at most (bounded memory).
MAX_HEADERS = 64 * 1024


def original_headers(message: bytes) -> bytes:
    """The header block of a stored (LF) message, without the blank line."""
    end = message.find(b"\n\n")
    block = message[:end + 1] if end >= 0 else message
    if len(block) > MAX_HEADERS:
        block = block[:MAX_HEADERS]
        block = block[:block.rfind(b"\n") + 1]
    return block


def build_dsn(entry: QueueEntry, recipients: Sequence[RecipientState], headers: bytes,
              hostname: str, delayed: bool = False, now: float | None = None) -> bytes:
    """The DSN message, LF line ends, ready to queue for `entry.sender`."""
    now = time.time() if now is None else now
    boundary = f"{entry.id}.{secrets.token_hex(8)}/{hostname}"
    action = "delayed" if delayed else "failed"
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{entry.sender}>",
        f"Subject: {subject}",
        f"Date: {formatdate(now, localtime=False)}",
        f"Message-ID: <{entry.id}.{secrets.token_hex(6)}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 5.1: never answer this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {hostname}.",
        "",
    ]
    if delayed:
        lines += ["Your message could not be delivered yet to the recipients below.",
                  "The mail system will keep trying; you do not need to send it again.", ""]
    else:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients. It's attached below.", ""]
    for r in recipients:
        lines += _folded(f"<{r.address}>:", _one_line(r.last_error) or "unknown error")
    # RFC 6533 6: with an internationalized address or header the report parts are
    # their global variants (message/global-delivery-status, message/global-headers),
    # and a UTF-8 address is typed "utf-8", not "rfc822" (which is ASCII only).
    global_status = not all(r.address.isascii() for r in recipients)
    status_type = ("message/global-delivery-status" if global_status
                   else "message/delivery-status")
    lines += ["", f"--{boundary}", "Content-Description: Delivery report",
              f"Content-Type: {status_type}", "",
              f"Reporting-MTA: dns; {hostname}",
              f"X-Mailserver-Queue-ID: {entry.id}"]
    if entry.sender:
        lines.append(f"X-Mailserver-Sender: rfc822; {entry.sender}")
    lines.append(f"Arrival-Date: {_date(entry.created)}")
    for r in recipients:
        address_type = "rfc822" if r.address.isascii() else "utf-8"
        lines += ["", f"Final-Recipient: {address_type}; {r.address}",
                  f"Action: {action}", f"Status: {_status(r.status, delayed)}"]
        if r.remote and r.remote != "local":  # "local": our own Maildir, no MTA name
            lines.append(f"Remote-MTA: dns; {r.remote.split('[', 1)[0]}")
        error = _one_line(r.last_error)
        if error:
            kind = "smtp" if error[:3].isdigit() and error[3:4] == " " else "X-Mailserver"
            lines += _folded(f"Diagnostic-Code: {kind};", error)  # RFC 3464 2.3.6
        lines.append(f"Last-Attempt-Date: {_date(now)}")
    eight_bit = not headers.isascii()
    lines += ["", f"--{boundary}", "Content-Description: Undelivered Message Headers",
              "Content-Type: message/global-headers" if eight_bit
              else "Content-Type: text/rfc822-headers"]
    if eight_bit:
        lines.append("Content-Transfer-Encoding: 8bit")
    body = "\n".join(lines).encode("utf-8") + b"\n\n" + headers
    if not body.endswith(b"\n"):
        body += b"\n"
    return body + f"\n--{boundary}--\n".encode()


def _status(status: str, delayed: bool) -> str:
    """A valid RFC 3463 code for the Status: field, whatever we recorded."""
    parts = status.split(".")
    ok = len(parts) == 3 and parts[0] in "245" and all(p.isdigit() for p in parts)
    if delayed:
        return status if ok and status.startswith("4") else "4.0.0"
    return status if ok and status[0] in "45" else "5.0.0"


def _one_line(text: str) -> str:
    """A recorded error as one line of bounded, printable text. The client records
    remote replies cut and cleaned already; envelopes written before it did, and local
    texts quoting one, are cleaned here again (logs.printable)."""
    return printable(" ".join(text.split()))


#: Folding width (RFC 5322 2.1.1: lines SHOULD be at most 78 characters).
FOLD_WIDTH = 78


def _folded(start: str, text: str) -> list[str]:
    """`start` and the words of `text` as lines of at most FOLD_WIDTH characters,
    broken before a space (RFC 5322 2.2.3 folding: a continuation line starts with
    white space, and unfolding gives the text back). A longer word stays whole on its
    own line; printable() kept every text under 998 octets (RFC 5322 2.1.1)."""
    lines = [start]
    for word in text.split(" "):
        if len(lines[-1]) + 1 + len(word) > FOLD_WIDTH:
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return lines


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))
