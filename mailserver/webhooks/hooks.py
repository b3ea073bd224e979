"""Who gets which events: users' hooks (registered through the API) and domains' hooks
(the operator's [[webhooks.domain]] tables).

Users' hooks live in data_dir/webhooks/hooks.json, one JSON object for every user,
changed under an flock of hooks.lock and replaced by tmp+fsync+rename, so the API in
any worker process and the dispatcher in instance 0 see whole files only. Readers keep
the parsed file until its mtime or size changes.

Matching (issue 18): a user's hooks get the queue's events of messages that user
submitted and "received" for mail put in that user's mailbox; a domain's hooks the same
for every user of the domain.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mailserver.config import Config
from mailserver.events import KINDS, RECEIVED, DeliveryEvent
from mailserver.webhooks.signing import new_secret


@dataclass(frozen=True)
class Hook:
    id: str
    #: The user's address, or "@domain" for the operator's hooks.
    owner: str
    url: str
    #: Event types wanted (all of KINDS when registered without a list).
    events: tuple[str, ...]
    secret: str
    #: received: the raw message goes in the body up to this size; above it, a link.
    raw_limit: int = 0
    active: bool = True
    created: float = 0.0

    def wants(self, kind: str) -> bool:
        return self.active and kind in self.events

    def public(self) -> dict[str, Any]:
        """As the API shows it (never the secret)."""
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "raw_limit": self.raw_limit, "active": self.active,
                "created": _iso(self.created)}


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def domain_hooks(config: Config) -> list[Hook]:
    """The operator's hooks; ids stable as long as domain and URL are."""
    hooks = []
    for table in config.webhooks.domain:
        try:
            secret = Path(table.secret_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            secret = ""  # check-config says so; a send without a secret is refused
        digest = hashlib.sha256(f"{table.domain}\0{table.url}".encode()).hexdigest()[:12]
        hooks.append(Hook(f"dom_{digest}", "@" + table.domain.lower(), table.url,
                          tuple(table.events) or KINDS, secret, table.raw_limit))
    return hooks


def affected(event: DeliveryEvent) -> str:
    """The user an event is about: the mailbox for "received", else the submitter."""
    return (event.mailbox if event.kind == RECEIVED else event.submitter).lower()


class HookStore:
    """Users' hooks in data_dir/webhooks/hooks.json, plus the config's domain hooks."""

    def __init__(self, root: Path, config: Config) -> None:
        self.path = root / "hooks.json"
        self.lock_path = root / "hooks.lock"
        self.config = config
        self.domain = domain_hooks(config)
        self._cache: tuple[tuple[int, int], dict[str, list[Hook]]] | None = None
        self._guard = threading.Lock()

    # -- reading -------------------------------------------------------------------

    def users(self) -> dict[str, list[Hook]]:
        """owner -> hooks, as on disk now (blocking)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._guard:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        parsed = _parse(self.path.read_bytes())
        with self._guard:
            self._cache = (stamp, parsed)
        return parsed

    def for_event(self, event: DeliveryEvent) -> list[Hook]:
        """Every hook that wants this event (user's first, then the domain's)."""
        who = affected(event)
        if not who:
            return []
        domain = "@" + who.rpartition("@")[2]
        found = [h for h in self.users().get(who, []) if h.wants(event.kind)]
        found += [h for h in self.domain if h.owner == domain and h.wants(event.kind)]
        return found

    def find(self, hook_id: str) -> Hook | None:
        for hook in self.domain:
            if hook.id == hook_id:
                return hook
        for hooks in self.users().values():
            for hook in hooks:
                if hook.id == hook_id:
                    return hook
        return None

    # -- changing (the API) -----------------------------------------------------------

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, list[Hook]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                hooks = {k: list(v) for k, v in _parse(self.path.read_bytes()).items()}
            except FileNotFoundError:
                hooks = {}
            yield hooks
            self._write(hooks)
        finally:
            os.close(fd)

    def _write(self, hooks: dict[str, list[Hook]]) -> None:
        data = {owner: [asdict(h) for h in items] for owner, items in hooks.items() if items}
        tmp = self.path.with_name(f"hooks.json.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(json.dumps(data, indent=1, ensure_ascii=False).encode())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def add(self, owner: str, url: str, events: Sequence[str], secret: str | None,
            raw_limit: int) -> Hook:
        owner = owner.lower()
        with self._changing() as hooks:
            mine = hooks.setdefault(owner, [])
            if len(mine) >= self.config.webhooks.max_per_user:
                raise ValueError(f"at most {self.config.webhooks.max_per_user} webhooks "
                                 "per user (webhooks.max_per_user)")
            hook = Hook("wh_" + secrets.token_hex(8), owner, url,
                        tuple(dict.fromkeys(events)) or KINDS, secret or new_secret(),
                        raw_limit, True, time.time())
            mine.append(hook)
        return hook

    def update(self, owner: str, hook_id: str, changes: dict[str, Any]) -> Hook | None:
        owner = owner.lower()
        with self._changing() as hooks:
            mine = hooks.get(owner, [])
            for i, hook in enumerate(mine):
                if hook.id == hook_id:
                    fields = asdict(hook)
                    fields.update(changes)
                    fields["events"] = tuple(fields["events"]) or KINDS
                    mine[i] = Hook(**fields)
                    return mine[i]
        return None

    def delete(self, owner: str, hook_id: str) -> bool:
        owner = owner.lower()
        with self._changing() as hooks:
            mine = hooks.get(owner, [])
            kept = [h for h in mine if h.id != hook_id]
            hooks[owner] = kept
            return len(kept) != len(mine)


def _parse(raw: bytes) -> dict[str, list[Hook]]:
    """hooks.json; a damaged file reads as no hooks rather than stopping delivery."""
    try:
        data = json.loads(raw)
        return {owner: [Hook(**{**h, "events": tuple(h["events"])}) for h in items]
                for owner, items in data.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
