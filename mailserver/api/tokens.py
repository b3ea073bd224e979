"""API tokens: `ms1_<id>_<secret>`, kept as a keyed hash in api.tokens_file.

A token is made by `mailserver token add` (admin/token_commands.py) and shown once. The
id (80 random bits) names the token in lists, logs and the rate limit; the secret is 256
random bits. The file keeps, one line per token,

    id:address:scope:created:expires:hmac:name

where `hmac` is HMAC-SHA256 of the secret keyed by the id (hex), `created` and `expires`
are seconds since the epoch (expires 0: never) and `name` is the operator's label. A
fast keyed hash, not a password hash: the secret is 256 random bits, so no guessing of
it, fast or slow, can succeed, and Argon2 would only make every request slow
(docs/decisions/0033 has the reasoning and the numbers).

The file is a TableFile (auth/textfile.py), like the users file: a running server
re-reads it after a change (its mtime, size or inode), so a `token add` or `token del`
takes effect without a restart; edits are atomic (tmp, fsync, rename) under a lock;
its mode is 0600 (it holds the hashes). A cluster points every node at one file.
`verify` reads the file as it is now (one stat); the API looks here only once per
RECHECK seconds for a token that checked out (api/auth.py RecentTokens, the one cache:
a revoked token stops working within RECHECK, README says so).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailserver.auth.names import address_key
from mailserver.auth.textfile import LineProblem, TableFile, ensure_newline, numbered_lines
from mailserver.config import Config

PREFIX = "ms1"
#: Random bytes of the id (base32: 16 characters) and of the secret (52 characters).
ID_BYTES, SECRET_BYTES = 10, 32
ID_RE = re.compile(r"[a-z2-7]{16}")
TOKEN_RE = re.compile(rf"{PREFIX}_([a-z2-7]{{16}})_([a-z2-7]{{52}})")
SCOPES = ("send", "read", "all")
#: The file holds hashes of credentials: readable by its owner (the server's user) only.
TOKENS_FILE_MODE = 0o600
HEADER = "# API tokens (mailserver token add): id:address:scope:created:expires:hmac:name\n"
#: Longest label; no colon (the field separator) and no control characters.
MAX_NAME = 64
#: Seconds a token that checked out is taken as checked (api/auth.py RecentTokens):
#: how long a revoked token may still be accepted.
RECHECK = 1.0
#: Compared with when no token has the presented id, so an unknown id costs what a
#: wrong secret does (one HMAC, one constant-time comparison).
_NO_DIGEST = bytes(32)


def tokens_path(config: Config) -> Path:
    return config.api.tokens_file or config.data_dir / "api-tokens"


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def digest(token_id: str, secret: str) -> bytes:
    """HMAC-SHA256 of the secret, keyed by the id: a stored line vouches only for the
    token it was made for (copying a hash to another id gains nothing)."""
    key = f"{PREFIX} api token {token_id}".encode("ascii")
    return hmac.new(key, secret.encode("ascii"), hashlib.sha256).digest()


@dataclass(frozen=True)
class TokenEntry:
    id: str
    address: str
    scope: str
    created: int
    #: Seconds since the epoch; 0: never.
    expires: int
    digest: bytes
    name: str = ""
    line: int = 0

    def expired(self, now: float) -> bool:
        return bool(self.expires) and now >= self.expires


@dataclass(frozen=True)
class TokensTable:
    path: Path
    tokens: Mapping[str, TokenEntry] = field(default_factory=dict)
    problems: tuple[LineProblem, ...] = ()


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a token's label, or None."""
    if len(name) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if any(c == ":" or not c.isprintable() for c in name):
        return "a colon or a control character"
    return None


def format_line(entry: TokenEntry) -> str:
    return (f"{entry.id}:{entry.address}:{entry.scope}:{entry.created}:{entry.expires}:"
            f"{entry.digest.hex()}:{entry.name}\n")


def _parse_line(line: str, number: int) -> TokenEntry | str:
    fields = line.split(":")
    if len(fields) != 7:
        return "expected id:address:scope:created:expires:hmac:name"
    token_id, address, scope, created, expires, hexdigest, name = fields
    if not ID_RE.fullmatch(token_id):
        return f"not a token id: {token_id!r}"
    if "@" not in address:
        return f"not an address: {address!r}"
    if scope not in SCOPES:
        return f"unknown scope {scope!r}"
    if not (created.isdigit() and expires.isdigit()):
        return "created and expires must be seconds since the epoch"
    if not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        return "not an HMAC-SHA256 in hex"
    return TokenEntry(token_id, address_key(address), scope, int(created), int(expires),
                      bytes.fromhex(hexdigest), name, number)


def parse_tokens(text: str, path: Path) -> TokensTable:
    tokens: dict[str, TokenEntry] = {}
    problems: list[LineProblem] = []
    for number, line in numbered_lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parsed = _parse_line(line, number)
        if isinstance(parsed, str):
            problems.append(LineProblem(path, number, parsed))
        elif parsed.id in tokens:
            problems.append(LineProblem(path, number, f"token {parsed.id} again (ignored)"))
        else:
            tokens[parsed.id] = parsed
    return TokensTable(path, tokens, tuple(problems))


def new_token(address: str, scope: str, now: int, days: int | None = None,
              name: str = "") -> tuple[str, TokenEntry]:
    """(the token to show once, its entry for the file)."""
    token_id = _b32(secrets.token_bytes(ID_BYTES))
    secret = _b32(secrets.token_bytes(SECRET_BYTES))
    expires = now + days * 86_400 if days else 0
    entry = TokenEntry(token_id, address_key(address), scope, now, expires,
                       digest(token_id, secret), name)
    return f"{PREFIX}_{token_id}_{secret}", entry


class TokensFile(TableFile[TokensTable]):
    """The tokens file: looked up by the API, edited by `mailserver token`."""

    kind = "API tokens"
    mode = TOKENS_FILE_MODE

    def parse(self, text: str) -> TokensTable:
        return parse_tokens(text, self.path)

    def count(self, table: TokensTable) -> int:
        return len(table.tokens)

    def entries(self) -> list[TokenEntry]:
        return sorted(self.table().tokens.values(), key=lambda e: (e.address, e.created))

    def verify(self, presented: str) -> TokenEntry | None:
        """The entry of the presented token if its secret is right, else None.

        One path for an unknown id and a wrong secret: one HMAC and one constant-time
        comparison each (against a zero digest when no token has the id), so the time
        an answer takes does not tell a guesser which ids exist. A string that is not
        of the token's form at all says nothing secret and is refused at once.
        """
        match = TOKEN_RE.fullmatch(presented)
        if match is None:
            return None
        token_id, secret = match.groups()
        entry = self.table().tokens.get(token_id)
        stored = entry.digest if entry is not None else _NO_DIGEST
        same = hmac.compare_digest(digest(token_id, secret), stored)
        return entry if same and entry is not None else None

    def add(self, entry: TokenEntry) -> None:
        self._edit(lambda text: ensure_newline(text or HEADER) + format_line(entry))

    def remove(self, which: Callable[[TokenEntry], bool]) -> list[TokenEntry]:
        """Take out every token `which` selects (revoked at once); returns them."""
        removed: list[TokenEntry] = []

        def transform(text: str) -> str:
            removed.clear()
            kept = []
            for number, line in numbered_lines(text):
                parsed = _parse_line(line, number) if line.strip() and \
                    not line.lstrip().startswith("#") else None
                if isinstance(parsed, TokenEntry) and which(parsed):
                    removed.append(parsed)
                else:
                    kept.append(line + "\n")
            return "".join(kept)

        self._edit(transform)
        return removed


_files: dict[Path, TokensFile] = {}


def tokens_file(config: Config) -> TokensFile:
    """This process's reader of the config's tokens file (one per path, so a reload that
    keeps the path keeps the parsed table)."""
    path = tokens_path(config)
    found = _files.get(path)
    if found is None:
        found = _files[path] = TokensFile(path)
    return found
