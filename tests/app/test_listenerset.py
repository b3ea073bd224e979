"""ListenerSet on reload (app/listenerset.py): a kept listener gets a factory built
from the new config; sessions of the replaced one are still told goodbye at shutdown,
and session numbers go on from where the old factory stopped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.application import service
from twisted.internet.protocol import Factory, Protocol

from mailserver.app.limits import ConnectionCounter
from mailserver.app.listenerset import ListenerSet
from mailserver.core.context import ListenerFactory


class Sessions(Factory[Protocol]):
    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log
        self.sessions: set[object] = set()
        self.sessions_started = 0

    def shut_down(self) -> None:
        self.log.append(f"{self.label}: goodbye to {len(self.sessions)}")


def config(limit: int) -> Any:
    return SimpleNamespace(
        limits=SimpleNamespace(connections=limit, connections_per_ip=limit),
        listen=SimpleNamespace(enabled=lambda: {"smtp": "tcp:25"}),
        cluster=SimpleNamespace(trusted_proxies=(), proxy_protocol=()))


def test_a_reload_replaces_the_factory_and_shutdown_reaches_both() -> None:
    log: list[str] = []
    made: list[Sessions] = []

    def build(label: str) -> Any:
        def make(name: str) -> ListenerFactory:
            factory = Sessions(label, log)
            made.append(factory)
            return ListenerFactory(factory, b"421 busy\r\n", on_stop=factory.shut_down)
        return make

    counter = ConnectionCounter(10, 5)
    listeners = ListenerSet(service.MultiService(), build("old"), counter, None,
                            inherited={"smtp": -1})
    listener = listeners._make("smtp", "tcp:25")
    assert listener is not None
    old = made[0]
    old.sessions.add(object())  # a session open across the reload
    old.sessions_started = 7
    listeners.apply(config(20), build("new"))
    new = made[1]
    assert listeners.limited["smtp"].wrappedFactory is new
    assert listeners.limited["smtp"].refusal == b"421 busy\r\n"
    assert (counter.total_limit, counter.per_ip_limit) == (20, 20)
    assert new.sessions_started == 7, "smtp-8 next, not smtp-1 again"
    listener.on_stop()  # type: ignore[attr-defined]
    assert log == ["old: goodbye to 1", "new: goodbye to 0"]


def test_a_replaced_factory_without_sessions_is_let_go() -> None:
    made: list[Sessions] = []

    def build(name: str) -> ListenerFactory:
        factory = Sessions(str(len(made)), [])
        made.append(factory)
        return ListenerFactory(factory, b"", on_stop=factory.shut_down)

    listeners = ListenerSet(service.MultiService(), build, ConnectionCounter(1, 1), None,
                            inherited={"smtp": -1})
    listeners._make("smtp", "tcp:25")
    for _ in range(3):
        listeners.apply(config(1))
    assert listeners.retired["smtp"] == [], "no sessions: nothing to keep for shutdown"
    assert len(made) == 4


def test_a_reload_applies_new_trusted_proxies_to_kept_listeners() -> None:
    def build(name: str) -> ListenerFactory:
        factory = Sessions("x", [])
        return ListenerFactory(factory, b"", on_stop=factory.shut_down)

    listeners = ListenerSet(service.MultiService(), build, ConnectionCounter(1, 1), None,
                            inherited={"smtp": -1})
    listeners._make("smtp", "tcp:25")
    outer = listeners.proxied["smtp"]
    assert not outer.trusted.contains("10.0.0.100") and not outer.expect_header
    new = config(1)
    new.cluster = SimpleNamespace(trusted_proxies=("10.0.0.100/32",),
                                  proxy_protocol=("smtp",))
    listeners.apply(new)
    assert listeners.proxied["smtp"] is outer, "the same port, the same outer factory"
    assert outer.trusted.contains("10.0.0.100") and outer.expect_header
    assert outer.wrappedFactory is listeners.limited["smtp"]
