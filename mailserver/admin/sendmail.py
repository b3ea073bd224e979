"""`mailserver sendmail [-f SENDER] [-t] [-i] [RCPT...]` (also installed as `sendmail`):
a message on stdin, as cron and scripts hand it to Postfix's sendmail(1).

How it reaches the server: the message is written, with its envelope, into the maildrop
directory data_dir/maildrop/ (write to a dot-name, fsync, rename: a file without a dot
is complete), and the running server's pickup (app/pickup.py) hands it to the delivery
router exactly as a submission is handed (local copies, the relay queue, aliases). This
is Postfix's postdrop/pickup split, chosen over connecting to the submission port
because:

- it works while the server is stopped or restarting: the message waits in maildrop/
  and is picked up at the next start, as cron mail must never be lost to a restart;
- it needs no password (submission requires AUTH; a cron job has none) and no listener
  (submission may be off, or only on a public address);
- the check of who may send is the file system's: data_dir is the server user's, so only
  root and that user can write there, as Postfix's setgid postdrop restricts it.

The envelope sender is the local user (login@hostname) unless -f names one; a recipient
without a domain gets the first local domain (Postfix's myorigin), so `root` reaches
root's alias. Without -i a line holding a single dot ends the message (sendmail(1));
with -t the recipients are taken from To, Cc and Bcc and the Bcc header is removed.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import pwd
import secrets
import sys
import time
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import BinaryIO

from mailserver.admin.commands import Admin, Refused
from mailserver.core.diskio import write_all
from mailserver.core.ownfiles import Owner, give_fd
from mailserver.core.running import running_server

#: Under data_dir: complete messages waiting for the server's pickup.
MAILDROP = "maildrop"


def sendmail(admin: Admin, args: argparse.Namespace) -> None:
    config = admin.config
    stdin = getattr(sys.stdin, "buffer", None)
    if stdin is None:
        raise Refused("no standard input to read the message from")
    limit = config.limits.message_size
    message = read_message(stdin, limit, stop_at_dot=not args.ignore_dots)
    login = pwd.getpwuid(os.getuid()).pw_name
    sender = args.sender if args.sender is not None else f"{login}@{config.hostname}"
    if sender and "@" not in sender:
        sender = f"{sender}@{config.hostname}"
    recipients = list(args.recipients)
    if args.from_headers:
        message, found = recipients_from_headers(message)
        recipients += found
    origin = config.domains.local[0] if config.domains.local else config.hostname
    recipients = [r if "@" in r else f"{r}@{origin}" for r in recipients]
    if not recipients:
        raise Refused("no recipients (name them, or use -t to take them from the headers)")
    for r in recipients:
        if not plausible_address(r):
            raise Refused(f"not an address: {r!r}")
    if sender and not plausible_address(sender):  # "" is the null sender (-f '')
        raise Refused(f"-f: not an address: {sender!r}")
    message = add_missing_headers(message, sender, args.full_name, config.hostname)
    envelope = {"sender": sender, "recipients": recipients, "user": login,
                "uid": os.getuid(), "time": time.time()}
    owner = admin.writing()
    path = drop(config.data_dir / MAILDROP, envelope, message, owner)
    if running_server(config.data_dir / "run") is None:
        print(f"sendmail: note: no server is running; the message waits in {path} "
              "until it starts", file=admin.stderr)


def plausible_address(address: str) -> bool:
    """local@domain without spaces, controls or angle brackets: the envelope goes into
    a Return-Path header and SMTP commands, where a line break would forge a header."""
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(
        c.isspace() or c in "<>" or ord(c) < 32 or ord(c) == 127 for c in address)


def read_message(stream: BinaryIO, limit: int, stop_at_dot: bool) -> bytes:
    """stdin up to `limit` bytes, LF line ends; a lone "." ends it unless -i."""
    lines: list[bytes] = []
    size = 0
    for raw in stream:
        line = raw.rstrip(b"\r\n")
        if stop_at_dot and line == b".":
            break
        size += len(line) + 1
        if size > limit:
            raise Refused(f"the message is larger than limits.message_size ({limit} bytes)")
        lines.append(line + b"\n")
    return b"".join(lines)


def _split(message: bytes) -> tuple[bytes, bytes]:
    """(header section with its final LF, the rest from the empty line on)."""
    if message.startswith(b"\n"):
        return b"", message
    end = message.find(b"\n\n")
    return (message, b"") if end < 0 else (message[:end + 1], message[end + 1:])


def recipients_from_headers(message: bytes) -> tuple[bytes, list[str]]:
    """-t: every address in To, Cc, Bcc; the Bcc header lines removed (sendmail(1))."""
    head, rest = _split(message)
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    fields = [v for name in ("to", "cc", "bcc") for v in parsed.get_all(name, [])]
    found = [address for _, address in email.utils.getaddresses(fields) if address]
    kept: list[bytes] = []
    in_bcc = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not in_bcc:
                kept.append(line)
            continue
        in_bcc = line.lower().startswith(b"bcc:")
        if not in_bcc:
            kept.append(line)
    return b"".join(kept) + rest, found


def add_missing_headers(message: bytes, sender: str, full_name: str | None,
                        hostname: str) -> bytes:
    """From, Date and Message-ID when the message lacks them (RFC 5322 3.6: From and
    Date are required; Postfix's cleanup adds them likewise)."""
    head, rest = _split(message)
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    added = []
    if parsed.get("From") is None:
        shown = email.utils.formataddr((full_name or "", sender)) if full_name else sender
        added.append(f"From: {shown}\n")
    if parsed.get("Date") is None:
        added.append(f"Date: {email.utils.formatdate(localtime=True)}\n")
    if parsed.get("Message-ID") is None:
        added.append(f"Message-ID: <{secrets.token_hex(12)}@{hostname}>\n")
    if not rest:
        rest = b"\n"
    return head + "".join(added).encode("utf-8") + rest


def drop(folder: Path, envelope: dict[str, object], message: bytes,
         owner: Owner | None) -> str:
    """Write one maildrop file (the JSON envelope line, then the message). Returns its
    path. The server sees it only once renamed to a name without a leading dot."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if owner is not None:
            os.chown(folder, owner[0], owner[1])
    name = f"{int(time.time())}.{os.getpid()}.{secrets.token_hex(4)}"
    tmp = folder / f".{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        give_fd(fd, owner)
        write_all(fd, json.dumps(envelope).encode("utf-8") + b"\n" + message)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, folder / name)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return str(folder / name)


def main() -> None:
    """The `sendmail` console script: `mailserver sendmail ARGS`."""
    from mailserver.admin.cli import main as cli_main

    sys.exit(cli_main(["sendmail", *sys.argv[1:]]))
