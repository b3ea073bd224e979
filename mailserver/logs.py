"""Loggers for our modules: structured twisted.logger events, debug dropped by default.

twistd's log observer writes every level; formatting a debug event costs as much as an
info one, and the per-message debug lines measurably slowed the reactor thread. Our
loggers publish through a level filter instead, so debug output is one call away
(`set_level(LogLevel.debug)`) without costing anything when off.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(namespace: str) -> Logger:
    """A Logger for `namespace` (pass __name__) that honours our level filter."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(level: LogLevel, namespace: str = "") -> None:
    """Change the lowest level published, for all our modules or one namespace."""
    _predicate.setLogLevelForNamespace(namespace, level)
