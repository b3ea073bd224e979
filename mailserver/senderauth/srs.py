"""The Sender Rewriting Scheme for forwarded mail, and the two wrappers that use it
(app/service.py builds port 25's DeliveryRouter over them: ServerContext.mx_target).

A copy forwarded to a remote alias target keeps the original envelope sender. The
receiver's SPF check then asks the sender's domain whether our address may send for
it, and the answer is no. So the copy goes out with the envelope sender rewritten
into one of our local domains, in the libsrs2/Postfix-postsrsd format:

    SRS0=HHHH=TT=orig-domain=orig-local@our-domain

TT is the day (days since the epoch, mod 1024, two base32 characters). HHHH is the
start of an HMAC-SHA1, under a secret made on first start (data_dir/srs_secret,
0600), over TT, orig-domain and orig-local. A bounce to that address comes back to
port 25. `SRSDirectory` recognises it, checks the hash and the age (21 days, as
libsrs2), and resolves it to the original sender, so the bounce is relayed back. A
forged or expired one gets 550 5.7.1.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any

from zope.interface import implementer

from mailserver.errors import ReplyError
from mailserver.interfaces import (
    IOutboundQueue,
    IQueueTransaction,
    IRecipientDirectory,
    OutboundEnvelope,
    Resolution,
)

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAX_AGE_DAYS = 21
HASH_LENGTH = 4


def load_secret(path: Path) -> bytes:
    """The secret, made (32 random bytes, 0600) the first time. Blocking: startup."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes()
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data


class SRS:
    def __init__(self, secret: bytes, domain: str, clock: Any = time.time) -> None:
        self.secret = secret
        self.domain = domain.lower()
        self.clock = clock

    def _day(self) -> int:
        return int(self.clock() // 86400) % 1024

    def _hash(self, stamp: str, domain: str, local: str) -> str:
        mac = hmac.new(self.secret, (stamp + domain + local).lower().encode("utf-8"),
                       hashlib.sha1).digest()
        return base64.b64encode(mac).decode("ascii")[:HASH_LENGTH]

    def forward(self, sender: str) -> str:
        """The rewritten envelope sender ("" stays "": a bounce is never rewritten)."""
        if not sender or "@" not in sender or self.is_srs(sender):
            return sender
        local, _, domain = sender.rpartition("@")
        day = self._day()
        stamp = _B32[day >> 5] + _B32[day & 31]
        return (f"SRS0={self._hash(stamp, domain, local)}={stamp}={domain}={local}"
                f"@{self.domain}")

    @staticmethod
    def is_srs(address: str) -> bool:
        return address[:5].upper() in ("SRS0=", "SRS1=")

    def reverse(self, address: str) -> str:
        """The original sender of one of our SRS0 addresses; ValueError if it is
        forged, damaged or too old."""
        local, _, domain = address.rpartition("@")
        if domain.lower() != self.domain or local[:5].upper() != "SRS0=":
            raise ValueError("not one of our SRS addresses")
        parts = local[5:].split("=", 3)
        if len(parts) != 4:
            raise ValueError("malformed SRS address")
        given, stamp, orig_domain, orig_local = parts
        expected = self._hash(stamp, orig_domain, orig_local)
        # Case-insensitive like libsrs2 (some MTAs change the case of local parts).
        if not hmac.compare_digest(given.lower().encode(), expected.lower().encode()):
            raise ValueError("bad SRS hash")
        if len(stamp) != 2 or any(c.upper() not in _B32 for c in stamp):
            raise ValueError("bad SRS timestamp")
        then = (_B32.index(stamp[0].upper()) << 5) | _B32.index(stamp[1].upper())
        if (self._day() - then) % 1024 > MAX_AGE_DAYS:
            raise ValueError("expired SRS address")
        if not orig_domain or not orig_local:
            raise ValueError("malformed SRS address")
        return f"{orig_local}@{orig_domain}"


@implementer(IRecipientDirectory)
class SRSDirectory:
    """The recipient directory of the smtp listener, which also knows SRS bounces."""

    def __init__(self, inner: IRecipientDirectory, srs: SRS) -> None:
        self.inner = inner
        self.srs = srs

    def resolve(self, address: str) -> Resolution:
        local, _, domain = address.rpartition("@")
        if SRS.is_srs(local) and domain.lower() == self.srs.domain:
            try:
                return Resolution(remote=(self.srs.reverse(address),))
            except ValueError as e:
                raise ReplyError(550, "5.7.1", f"Error: invalid SRS address ({e})") from None
        return self.inner.resolve(address)

    def user_exists(self, address: str) -> bool:
        return self.inner.user_exists(address)

    def login_allowed(self, address: str) -> bool:
        return self.inner.login_allowed(address)

    def login_key(self, username: str) -> str:
        return self.inner.login_key(username)

    def unavailable(self) -> str | None:
        return self.inner.unavailable()

    def may_send_as(self, user: str, address: str) -> bool:
        return self.inner.may_send_as(user, address)


@implementer(IOutboundQueue)
class SRSQueue:
    """The smtp listener's view of the queue: every copy it queues is forwarded mail
    (the MX relays for nobody), so its envelope sender is rewritten."""

    def __init__(self, inner: IOutboundQueue, srs: SRS) -> None:
        self.inner = inner
        self.srs = srs

    def begin(self, envelope: OutboundEnvelope) -> IQueueTransaction:
        rewritten = dataclasses.replace(envelope, sender=self.srs.forward(envelope.sender))
        return self.inner.begin(rewritten)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
