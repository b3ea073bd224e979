"""`mailserver token add|list|del`: the JSON API's tokens (api/tokens.py).

`token add` prints the token alone on stdout, so a script can capture it
(`TOKEN=$(mailserver token add ...)`), and what it made on stderr; the token is never
shown again (only its keyed hash is kept). `token del` revokes at once: the running
server stats the file on every request.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from mailserver.admin.commands import Admin, Refused
from mailserver.api.tokens import ID_RE, TokenEntry, name_problem, new_token, tokens_file
from mailserver.auth.names import address_key

#: `--expires` at most ten years: a bigger number is a typo, not a policy.
MAX_DAYS = 3650


def token_add(admin: Admin, address: str, scope: str, days: int | None, name: str) -> None:
    key = address_key(address)
    if admin.directory.users_file.get(key) is None:
        raise Refused(f"{key}: no such user")
    if days is not None and not 1 <= days <= MAX_DAYS:
        raise Refused(f"--expires: days from 1 to {MAX_DAYS}, got {days}")
    problem = name_problem(name)
    if problem:
        raise Refused(f"--name: {problem}")
    owner = admin.writing()
    tokens = tokens_file(admin.config)
    tokens.owner = owner
    token, entry = new_token(key, scope, int(time.time()), days, name)
    tokens.add(entry)
    admin.say(token)
    until = f"expires {_when(entry.expires)}" if entry.expires else "does not expire"
    print(f"token add: token {entry.id} for {key}, scope {scope}, {until}; it is shown "
          f"only now, store it safely", file=admin.stderr)


def token_list(admin: Admin, address: str | None) -> None:
    tokens = tokens_file(admin.config)
    entries = tokens.entries()
    if tokens.read_error is not None:
        # Not an empty table: the server answers 503 to every token meanwhile.
        raise Refused(tokens.read_error)
    if address is not None:
        key = address_key(address)
        entries = [e for e in entries if e.address == key]
    now = time.time()
    rows = [(e.id, e.address, e.scope, _when(e.created),
             (_when(e.expires) + (" (expired)" if e.expired(now) else "")) if e.expires
             else "never", e.name) for e in entries]
    header = ("ID", "ADDRESS", "SCOPE", "CREATED", "EXPIRES", "NAME")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        admin.say("  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row[:5]))
                  + "  " + row[5])


def token_del(admin: Admin, which: str) -> None:
    """Revoke the token with id `which`, or every token of the address `which`."""
    if "@" in which:
        key = address_key(which)

        def chosen(e: TokenEntry) -> bool:
            return e.address == key
    elif ID_RE.fullmatch(which):
        def chosen(e: TokenEntry) -> bool:
            return e.id == which
    else:
        raise Refused(f"{which!r}: neither a token id (token list shows them) nor an "
                      "address")
    tokens = tokens_file(admin.config)
    tokens.owner = admin.writing()
    removed = tokens.remove(chosen)
    if not removed:
        raise Refused(f"{which}: no such token")
    admin.say(f"token del: revoked {', '.join(e.id for e in removed)}")


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%MZ")
