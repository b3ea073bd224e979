"""events.IWebhookRegistry for the API: users' hooks (hooks.HookStore) and the URL check.

The API may not import webhooks/ (tests/test_layering.py); app/ puts this object in
ServerContext.webhooks. Store methods block (a disk thread); `check_url` resolves in a
thread itself and answers with a Deferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mailserver.events import IWebhookRegistry
from mailserver.webhooks.dispatcher import Checker
from mailserver.webhooks.hooks import HookStore
from mailserver.webhooks.urlcheck import Refused


@implementer(IWebhookRegistry)
class Registry:
    def __init__(self, store: HookStore, check: Checker) -> None:
        self.store = store
        self.check = check

    def list_hooks(self, owner: str) -> list[dict[str, object]]:
        return [h.public() for h in self.store.users().get(owner.lower(), [])]

    def get_hook(self, owner: str, hook_id: str) -> dict[str, object] | None:
        for hook in self.store.users().get(owner.lower(), []):
            if hook.id == hook_id:
                return hook.public()
        return None

    def add_hook(self, owner: str, url: str, events: Sequence[str], secret: str | None,
                 raw_limit: int) -> dict[str, object]:
        hook = self.store.add(owner, url, events, secret, raw_limit)
        return {**hook.public(), "secret": hook.secret}

    def update_hook(self, owner: str, hook_id: str,
                    changes: dict[str, object]) -> dict[str, object] | None:
        hook = self.store.update(owner, hook_id, changes)
        return None if hook is None else hook.public()

    def delete_hook(self, owner: str, hook_id: str) -> bool:
        return self.store.delete(owner, hook_id)

    def check_url(self, url: str) -> Deferred[Any]:
        def check() -> str | None:
            try:
                self.check(url)
            except Refused as e:
                return str(e)
            return None

        return threads.deferToThread(check)
