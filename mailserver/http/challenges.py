"""ACME HTTP-01 challenge responses (RFC 8555 8.3): the table the ACME client fills and
the http listener answers from.

The ACME client (one per server, in the twistd process) calls `set(token,
key_authorization)` before it tells the CA to validate, and `remove(token)` once the
challenge is settled; the listener answers GET /.well-known/acme-challenge/TOKEN with
`get(token)`. With `processes > 1` every process accepts on listen.http, so the CA's
request may land in a worker that never saw `set`: the table is therefore also written
to files under `data_dir/run/acme-challenges/` (one per token, written to a temporary
name and renamed, so a reader never sees half a file), and `get` falls back to them.

`set` and `remove` touch the disk: call them off the reactor thread (the ACME client
does its work in threads anyway). `lookup` answers from memory only and never blocks;
the listener calls `get` in a disk thread only when memory has no answer.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

#: RFC 8555 8.3: the token is base64url (RFC 4648 5) without padding, at least 128 bits
#: of entropy (22 characters); a key authorization is token "." base64url thumbprint.
#: Anything else is refused before it can name a file (no "/", no "..", no NUL).
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{1,256}")

#: Under data_dir: where the table lives on disk for the other processes.
CHALLENGE_DIR = Path("run") / "acme-challenges"


def valid_token(token: str) -> bool:
    return TOKEN.fullmatch(token) is not None


class ChallengeResponses:
    """token -> key authorization, in memory and (with a directory) on disk.

    Thread-safe: the ACME client sets from a thread while the reactor reads.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._table: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def under(cls, data_dir: Path) -> ChallengeResponses:
        """The table every process of the server on `data_dir` shares."""
        return cls(data_dir / CHALLENGE_DIR)

    def set(self, token: str, key_authorization: str) -> None:
        """Answer `key_authorization` for `token` from now on. Blocking (disk).

        ValueError for a token or key authorization outside RFC 8555's alphabet.
        """
        if not valid_token(token):
            raise ValueError(f"not an ACME token: {token!r}")
        if KEY_AUTHORIZATION.fullmatch(key_authorization) is None:
            raise ValueError(f"not a key authorization: {key_authorization!r}")
        with self._lock:
            self._table[token] = key_authorization
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = self.directory / f".{token}.{os.getpid()}.tmp"
            temporary.write_text(key_authorization, encoding="ascii")
            os.replace(temporary, self.directory / token)

    def remove(self, token: str) -> None:
        """Stop answering for `token` (unknown tokens are ignored). Blocking (disk)."""
        with self._lock:
            self._table.pop(token, None)
        if self.directory is not None and valid_token(token):
            try:
                (self.directory / token).unlink()
            except FileNotFoundError:
                pass

    def lookup(self, token: str) -> str | None:
        """The answer this process was given itself; never touches the disk."""
        with self._lock:
            return self._table.get(token)

    def get(self, token: str) -> str | None:
        """The key authorization for `token`, or None. May read a file: blocking."""
        if not valid_token(token):
            return None
        known = self.lookup(token)
        if known is not None or self.directory is None:
            return known
        try:
            with open(self.directory / token, "rb") as f:
                data = f.read(1024)
        except (FileNotFoundError, NotADirectoryError):
            return None
        text = data.decode("ascii", "replace")
        return text if KEY_AUTHORIZATION.fullmatch(text) else None
