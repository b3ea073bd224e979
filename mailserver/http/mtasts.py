"""Our MTA-STS policy (RFC 8461), as the https listener serves it and as
`mailserver dns-records` announces it: one function each, so the policy and the id of
its `_mta-sts` TXT record cannot disagree."""

from __future__ import annotations

import hashlib

from mailserver.config import Config


def mta_sts_policy(config: Config) -> bytes:
    """RFC 8461 3.2: key/value lines, CRLF; our one MX is our hostname."""
    lines = ["version: STSv1", f"mode: {config.mta_sts.mode}", f"mx: {config.hostname}",
             f"max_age: {config.mta_sts.max_age}"]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def policy_id(config: Config) -> str:
    """The `id=` of the `_mta-sts` TXT record (RFC 8461 3.1: 1-32 letters and digits,
    changed whenever the policy changes): taken from the policy text itself, so a new
    mode, MX or max_age gives a new id and senders fetch the policy again."""
    return hashlib.sha256(mta_sts_policy(config)).hexdigest()[:20]
