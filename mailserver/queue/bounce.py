"""Delivery status notifications (RFC 3464) for failed, delayed and delivered recipients.

A DSN is a multipart/report (RFC 6522) with three parts: a human explanation, the
machine-readable message/delivery-status (one block per recipient, RFC 3463 status
codes), and the original headers as text/rfc822-headers, or the whole message as
message/rfc822 when the sender asked for it with RET=FULL (RFC 3461 4.3) and the report
is about a failure and the message is at most MAX_RETURNED bytes. The DSN parameters of
RFC 3461 show as Original-Envelope-Id (ENVID) and Original-Recipient (ORCPT), decoded
(RFC 3461 6.3). It goes from MAILER-DAEMON with the null envelope sender <>, so that a
DSN that cannot be delivered is never bounced again (RFC 5321 6.1, RFC 3464 2.1); the
queue never creates a DSN for a message whose sender is <>.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate

from mailserver.logs import printable
from mailserver.queue.dsnwire import utf8_addr_xtext
from mailserver.queue.envelope import QueueEntry, RecipientState

#: Headers of the original message copied into the DSN at most (bounded memory).
MAX_HEADERS = 64 * 1024
#: RET=FULL returns messages up to this size; larger ones get their headers only, and
#: the report says so (Postfix's bounce_size_limit does the same, at 50 kB).
MAX_RETURNED = 1024 * 1024


def original_headers(message: bytes) -> bytes:
    """The header block of a stored (LF) message, without the blank line."""
    end = message.find(b"\n\n")
    block = message[:end + 1] if end >= 0 else message
    if len(block) > MAX_HEADERS:
        block = block[:MAX_HEADERS]
        block = block[:block.rfind(b"\n") + 1]
    return block


def build_dsn(entry: QueueEntry, recipients: Sequence[RecipientState], headers: bytes,
              hostname: str, delayed: bool = False, now: float | None = None, *,
              success: bool = False, full: bytes | None = None) -> bytes:
    """The DSN message, LF line ends, ready to queue for `entry.sender`.

    `success`: a report of delivered/relayed/expanded recipients (each one's Action is
    its `report`); `full`: the whole message, returned instead of `headers` (RET=FULL
    on a failure report, RFC 3461 4.3)."""
    now = time.time() if now is None else now
    boundary = f"{entry.id}.{secrets.token_hex(8)}/{hostname}"
    subject = ("Successful Mail Delivery Report" if success
               else "Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    returned = full is not None and not success and not delayed
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
        *_notification(entry, recipients, hostname, delayed, success, returned),
        "",
        f"--{boundary}",
        *_delivery_status(entry, recipients, hostname, now, delayed, success),
    ]
    returning = full if returned and full is not None else headers
    eight_bit = not returning.isascii()
    if returned:
        # RFC 6532 3.7 / RFC 6533: a message with UTF-8 headers is message/global.
        utf8_head = not original_headers(returning).isascii()
        lines += ["", f"--{boundary}", "Content-Description: Undelivered Message",
                  "Content-Type: message/global" if utf8_head
                  else "Content-Type: message/rfc822"]
    else:
        lines += ["", f"--{boundary}", "Content-Description: "
                  + ("Message Headers" if success or delayed else "Undelivered Message Headers"),
                  "Content-Type: message/global-headers" if eight_bit
                  else "Content-Type: text/rfc822-headers"]
    if eight_bit:
        lines.append("Content-Transfer-Encoding: 8bit")
    body = "\n".join(lines).encode("utf-8") + b"\n\n" + returning
    if not body.endswith(b"\n"):
        body += b"\n"
    return body + f"\n--{boundary}--\n".encode()


def _notification(entry: QueueEntry, recipients: Sequence[RecipientState], hostname: str,
                  delayed: bool, success: bool, returned: bool) -> list[str]:
    """The first part, for people: what happened, one line per recipient."""
    lines = ["Content-Description: Notification", "Content-Type: text/plain; charset=utf-8",
             "", f"This is the mail system at host {hostname}.", ""]
    if success:
        lines += ["Your message was delivered to the recipients below (\"relayed\": handed",
                  "to a mail system that sends no further notifications).", ""]
    elif delayed:
        lines += ["Your message could not be delivered yet to the recipients below.",
                  "The mail system will keep trying; you do not need to send it again.", ""]
    else:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients. It's attached below.", ""]
        if entry.ret == "FULL" and not returned:
            lines += [f"(The message is larger than {MAX_RETURNED} bytes: only its "
                      "headers are attached.)", ""]
    for r in recipients:
        text = _one_line(r.last_error) or ("delivered" if success else "unknown error")
        lines += _folded(f"<{r.address}>:", text)
    return lines


def _delivery_status(entry: QueueEntry, recipients: Sequence[RecipientState], hostname: str,
                     now: float, delayed: bool, success: bool) -> list[str]:
    """The second part, for programs: RFC 3464 2.2's per-message fields, then 2.3's
    per-recipient ones, in the order the RFC's grammar gives them."""
    # RFC 6533 6: with an internationalized address the report is its global variant,
    # and a UTF-8 address is typed "utf-8", not "rfc822" (which is ASCII only).
    global_status = not all(r.address.isascii() and r.orcpt.isascii() for r in recipients)
    status_type = ("message/global-delivery-status" if global_status
                   else "message/delivery-status")
    lines = ["Content-Description: Delivery report", f"Content-Type: {status_type}", ""]
    if entry.envid:
        # RFC 3461 6.3: decoded. One line whatever a hand-edited envelope holds.
        lines.append(f"Original-Envelope-Id: {_one_line(entry.envid)}")
    lines += [f"Reporting-MTA: dns; {hostname}", f"Arrival-Date: {_date(entry.created)}",
              f"X-Mailserver-Queue-ID: {entry.id}"]
    if entry.sender:
        lines.append(f"X-Mailserver-Sender: rfc822; {entry.sender}")
    for r in recipients:
        lines.append("")
        if r.orcpt_type:  # RFC 3461 6.3 (b): only from ORCPT, decoded
            lines.append(f"Original-Recipient: {_orcpt_field(r, global_status)}")
        address_type = "rfc822" if r.address.isascii() else "utf-8"
        action = (r.report or "delivered") if success else "delayed" if delayed else "failed"
        lines += [f"Final-Recipient: {address_type}; {r.address}",
                  f"Action: {action}", f"Status: {_status(r.status, delayed, success)}"]
        if r.remote and r.remote != "local":  # "local": our own Maildir, no MTA name
            lines.append(f"Remote-MTA: dns; {r.remote.split('[', 1)[0]}")
        error = _one_line(r.last_error)
        if error:
            kind = "smtp" if error[:3].isdigit() and error[3:4] == " " else "X-Mailserver"
            lines += _folded(f"Diagnostic-Code: {kind};", error)  # RFC 3464 2.3.6
        lines.append(f"Last-Attempt-Date: {_date(now)}")
    return lines


def _orcpt_field(r: RecipientState, global_status: bool) -> str:
    """RFC 3464 2.3.1's address-type; generic-address of an ORCPT; a utf-8 address in
    a plain delivery-status in its \\x{HEX} form (RFC 6533 3, utf-8-addr-xtext)."""
    address = r.orcpt
    if r.orcpt_type == "utf-8" and not global_status:
        address = utf8_addr_xtext(address)
    return f"{r.orcpt_type}; {_one_line(address)}"


def _status(status: str, delayed: bool, success: bool = False) -> str:
    """A valid RFC 3463 code for the Status: field, whatever we recorded."""
    parts = status.split(".")
    ok = len(parts) == 3 and parts[0] in "245" and all(p.isdigit() for p in parts)
    if success:
        return status if ok and status.startswith("2") else "2.0.0"
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
