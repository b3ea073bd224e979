"""Reload without restart: SIGHUP (or `mailserver reload`) re-reads the config.

What a reload changes, for connections accepted from then on (an established session
keeps the config, certificate and limits it started with, and is never closed):

- the certificate of every TLS listener (the SwappableTLS all of them share);
- the protocol factories of the listeners, built anew from the new config (limits,
  domains, hostname, submission rules, sending limits, blocklists, the web site), the
  [abuse] policies, and the connection limits (the abuse table and its counts stay);
- the listeners: a listener added is opened, one removed stops listening (its sessions
  go on), one whose endpoint changed listens on the new one;
- users and aliases (the directory re-reads its files when they change anyway).

What needs a restart, and is said so in the log: data_dir, processes, auth file paths,
the relay settings of the queue, [dns], [checks], [dkim], [srs] and [log]. With worker processes, the twistd process
forwards SIGHUP to every worker, which reloads the same way; a worker serves the
listeners it inherited, so a listener added by a reload is served by the twistd process
alone until the next restart.

A new config with errors is refused: every problem is logged, and the old config stays
in force. Reading and checking the config and certificate is blocking work and runs in
a thread; applying it, on the reactor thread, is assignments and building the listeners'
factories (objects; the only file reads are the small ones their start-up does too: the
metrics token's first line, resolv.conf with DNS blocklists). Reloads never
overlap: a SIGHUP arriving during one (a storm) is folded into one more reload after it.
The outcome is written to data_dir/run/reload.json for `mailserver status`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from twisted.application import service
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure

from mailserver.app.tls import SwappableTLS, server_tls_options
from mailserver.config import Config, load_config
from mailserver.errors import ConfigError
from mailserver.logs import logger

log = logger(__name__)

#: Keys a reload cannot change in a running process (logged, applied at the restart).
#: [dns], [checks], [dkim] and [srs]: the resolver, checker, signer and SRS secret are
#: built once per process (key generation, file reads: blocking work).
RESTART_KEYS = ("data_dir", "processes", "auth.users_file", "auth.aliases_file", "relay",
                "dns", "checks", "dkim", "srs", "log", "abuse.tracked_keys",
                # The store's mode (sharedfs.configure_from at start): decision 0039.
                "cluster.node", "cluster.mail_dir", "cluster.cache_dir",
                "cluster.lock_timeout")


@dataclass
class LoadedConfig:
    config: Config
    tls: CertificateOptions


@dataclass
class ReloadTargets:
    """What a reload reaches, filled in by app/service.py as it builds the server."""

    tls: SwappableTLS
    #: The objects holding the config new sessions get (`.config` is replaced).
    holders: Callable[[], list[Any]] = list
    #: Applies the new config to the listeners (add, remove, move) and limits.
    apply_listeners: Callable[[Config], None] | None = None
    #: Passes the reload on (the twistd process signals its workers).
    forward: Callable[[], None] | None = None
    #: Told after each successful reload (the ACME client re-checks its certificate).
    after: list[Callable[[Config], None]] = field(default_factory=list)


def read_config(source: str | None) -> LoadedConfig:
    """The new config and its certificate, checked. Blocking; raises ConfigError."""
    config = load_config(source)
    return LoadedConfig(config, server_tls_options(config))


class Reloader(service.Service):
    """Owns SIGHUP in its process and runs reloads one at a time."""

    name = "reloader"

    def __init__(self, config: Config, targets: ReloadTargets, record: bool = True) -> None:
        self.config = config
        self.record = record
        self.targets = targets
        self.in_progress: Deferred[None] | None = None
        self.again = False
        self.previous_handler: Any = None
        self.count = 0

    def privilegedStartService(self) -> None:
        # Before the listeners listen (this service is added first): once listeners.json
        # names a port, a SIGHUP must already be ours, not the default that kills.
        service.Service.privilegedStartService(self)
        self.previous_handler = signal.signal(signal.SIGHUP, self._on_signal)

    def startService(self) -> None:
        service.Service.startService(self)
        if self.again:  # asked before we ran
            self.again = False
            self.request()

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self.previous_handler is not None:
            signal.signal(signal.SIGHUP, self.previous_handler)
            self.previous_handler = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of whatever the main thread was
        # doing: hand the work to the reactor instead of doing it here.
        reactor.callFromThread(self.request)  # type: ignore[attr-defined]

    def request(self) -> Deferred[None] | None:
        """Reload now, or once more after the reload that is running."""
        if not self.running:
            self.again = True
            return None
        if self.targets.forward is not None:
            self.targets.forward()
        if self.in_progress is not None:
            self.again = True
            return self.in_progress
        source = str(self.config.source) if self.config.source is not None else None
        started = time.time()
        d: Deferred[LoadedConfig] = threads.deferToThread(read_config, source)
        self.in_progress = d.addCallbacks(self._apply, self._refused,
                                          callbackArgs=(started,), errbackArgs=(started,))
        self.in_progress.addErrback(self._broken)
        self.in_progress.addBoth(self._done)
        return self.in_progress

    def _apply(self, loaded: LoadedConfig, started: float) -> None:
        old, new = self.config, loaded.config
        problem = process_count_problem(old, new)
        if problem is not None:
            self._refused(Failure(ConfigError([problem])), started)
            return
        changed = _changed_restart_keys(old, new)
        for key in changed:
            log.warn("reload: {key} changed; that takes effect at the next restart",
                     key=key)
        # Everything rebuilt from `new` (the listeners' factories) sees the values in
        # force, not ones the process cannot honour yet (a mail_dir under a new data_dir).
        new = _keep(old, new, changed)
        self.targets.tls.swap(loaded.tls)
        for holder in self.targets.holders():
            holder.config = new
        if self.targets.apply_listeners is not None:
            self.targets.apply_listeners(new)
        self.config = new
        self.count += 1
        for hook in self.targets.after:
            hook(new)
        log.info("reload: config {source} in force (reload {n})",
                 source=str(new.source or "embedded default"), n=self.count)
        if self.record:
            _write_outcome(new, started, [])

    def _refused(self, failure: Any, started: float) -> None:
        if failure.check(ConfigError):
            problems = list(failure.value.problems)
        else:
            problems = [f"{type(failure.value).__name__}: {failure.value}"]
        for problem in problems:
            log.error("reload refused: {problem}", problem=problem)
        log.error("reload refused: the previous config stays in force")
        if self.record:
            _write_outcome(self.config, started, problems)

    def _broken(self, failure: Any) -> None:
        """A bug while applying (not a config problem): logged with its traceback; the
        server goes on with whatever was applied."""
        log.failure("reload: failed while applying the new config", failure)

    def _done(self, result: object) -> None:
        self.in_progress = None
        if self.again:
            self.again = False
            self.request()


def process_count_problem(old: Config, new: Config) -> str | None:
    """Why `new` cannot be put in force in the processes running now, if it cannot.

    `processes = 0` means one process per CPU, but one with acme.challenge =
    "tls-alpn-01" (config.py): a reload that adds that challenge to a server running
    several processes would have a worker answer the CA's validation without the
    challenge certificate. `processes` itself waits for a restart (RESTART_KEYS); this
    is the one change the same `processes` value cannot absorb.
    """
    if new.processes == old.processes and new.process_count < old.process_count:
        return (f"acme.challenge: tls-alpn-01 needs one process and this server runs "
                f"{old.process_count}: set processes = 1 and restart")
    return None


def _changed_restart_keys(old: Config, new: Config) -> list[str]:
    changed = []
    for key in RESTART_KEYS:
        section, _, name = key.partition(".")
        a, b = getattr(old, section, None), getattr(new, section, None)
        if name:
            a, b = getattr(a, name, None), getattr(b, name, None)
        if a != b:
            changed.append(key)
    return changed


def _keep(old: Config, new: Config, keys: list[str]) -> Config:
    """`new` with the restart-only `keys` as they are in `old`."""
    for key in keys:
        section, _, name = key.partition(".")
        value = getattr(old, section)
        if name:
            value = dataclasses.replace(getattr(new, section), **{name: getattr(value, name)})
        new = dataclasses.replace(new, **{section: value})
    return new


def _write_outcome(config: Config, started: float, problems: list[str]) -> None:
    """data_dir/run/reload.json, for `mailserver status`. Small; a failure is logged."""
    run_dir = config.data_dir / "run"
    record = {"time": started, "pid": os.getpid(), "ok": not problems,
              "problems": problems}
    try:
        tmp = run_dir / f".reload.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, run_dir / "reload.json")
    except OSError as e:
        log.warn("reload: cannot write {path}: {why}", path=str(run_dir / "reload.json"),
                 why=e.strerror)
