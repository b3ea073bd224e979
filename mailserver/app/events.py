"""Where delivery events go (ServerContext.events): every listener, in turn.

A minimal fan-out so the API's state records (api/states.py) and the webhook spool can
both listen; each listener's `publish` returns once its events are durable, so the
fan-out returns once all of them are.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from mailserver.events import DeliveryEvent, IDeliveryEvents


@implementer(IDeliveryEvents)
class FanOut:
    def __init__(self, listeners: Sequence[IDeliveryEvents]) -> None:
        self.listeners = list(listeners)

    def publish(self, events: Sequence[DeliveryEvent]) -> None:
        for listener in self.listeners:
            listener.publish(events)


def with_listener(current: IDeliveryEvents | None,
                  listener: IDeliveryEvents) -> IDeliveryEvents:
    """`current` (None, one listener or a FanOut) with `listener` added."""
    if current is None:
        return listener
    if isinstance(current, FanOut):
        return FanOut([*current.listeners, listener])
    return FanOut([current, listener])
