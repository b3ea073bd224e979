"""Fakes shared by the tests: a delivery target and a reactor clock, each in one place.

FakeTarget stands in for any of the three delivery seams (interfaces.py): the server's
IDeliveryTarget (begin(DeliveryEnvelope)), local delivery ILocalDelivery
(begin(mailboxes)) and the relay queue IOutboundQueue (begin(OutboundEnvelope), with
release). As maddy's test target does, it fails on demand per phase (begin, write,
commit), and by default holds each commit until the test fires it, so a test decides
when the "disk" answers. Several fakes can share one Events list, which then tells in
which order the copies of one message were committed, released and aborted.

FakeReactor is twisted.internet.task.Clock plus what twisted.cred's threaded checker
needs from a reactor (a thread pool, callFromThread): time only moves when the test
advances it, and the "thread" runs at once unless the pool is told to hold.

FakeDisk is the sessions' DiskExecutor the same way: a job runs at once, or is held
until release() when `hold` is set (a slow disk), so a test sees what a session does
while it waits. MailRealm gives the avatar POP3 and IMAP log in as, for any address.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.auth.realm import IMailUser, MailUser
from mailserver.interfaces import (
    DeliveryEnvelope,
    IDeliveryTarget,
    IDeliveryTransaction,
    ILocalDelivery,
    ILocalTransaction,
    IOutboundQueue,
    IQueueTransaction,
    MailboxId,
    OutboundEnvelope,
)


class Events(list[str]):
    """What happened to which copy, in order ("queue.commit", "local.abort", ...)."""


@implementer(IDeliveryTransaction, ILocalTransaction, IQueueTransaction)
class FakeTransaction:
    """One message given to a FakeTarget: every byte written and what became of it."""

    def __init__(self, target: FakeTarget, request: object) -> None:
        self.target = target
        #: What begin() was given: a DeliveryEnvelope, a list of MailboxId or an
        #: OutboundEnvelope, depending on which seam the fake stands in for.
        self.request = request
        self.data = b""
        #: The Deferred commit() returned (None: commit was never called).
        self.commit_deferred: Deferred[Any] | None = None
        #: "open", "committed" (commit called), "released", "aborted".
        self.state = "open"

    @property
    def mailboxes(self) -> list[MailboxId]:
        if isinstance(self.request, DeliveryEnvelope):
            return list(self.request.mailboxes)
        assert isinstance(self.request, list), self.request
        return self.request

    @property
    def envelope(self) -> Any:
        assert isinstance(self.request, (DeliveryEnvelope, OutboundEnvelope)), self.request
        return self.request

    @property
    def aborted(self) -> bool:
        return self.state == "aborted"

    def write(self, data: bytes) -> None:
        if self.target.fail_write is not None:
            raise self.target.fail_write
        self.data += data

    def commit(self) -> Deferred[Any]:
        self.target.events.append(f"{self.target.name}.commit")
        self.state = "committed"
        if self.target.fail_commit is not None:
            self.commit_deferred = defer.fail(self.target.fail_commit)
        elif self.target.hold:
            self.commit_deferred = Deferred()
        else:
            self.commit_deferred = defer.succeed(self.target.commit_result)
        return self.commit_deferred

    def release(self) -> None:
        self.target.events.append(f"{self.target.name}.release")
        self.state = "released"

    def abort(self) -> None:
        self.target.events.append(f"{self.target.name}.abort")
        assert self.state != "released", "abort after release"
        self.state = "aborted"


@implementer(IDeliveryTarget, ILocalDelivery, IOutboundQueue)
class FakeTarget:
    """A delivery target in memory; see the module docstring."""

    def __init__(self, name: str = "target", events: Events | None = None, *,
                 hold: bool = True, fail_begin: Exception | None = None,
                 fail_write: Exception | None = None, fail_commit: Exception | None = None,
                 commit_result: object = None) -> None:
        self.name = name
        self.events = events if events is not None else Events()
        #: Commits wait for the test to fire commit_deferred (else they succeed at once).
        self.hold = hold
        self.fail_begin = fail_begin
        self.fail_write = fail_write
        self.fail_commit = fail_commit
        #: What an unheld commit fires with (a queue id for a queue fake).
        self.commit_result = commit_result
        self.transactions: list[FakeTransaction] = []

    @property
    def copies(self) -> list[FakeTransaction]:
        return self.transactions

    def begin(self, request: DeliveryEnvelope | Sequence[MailboxId] | OutboundEnvelope,
              ) -> FakeTransaction:
        if self.fail_begin is not None:
            raise self.fail_begin
        if not isinstance(request, (DeliveryEnvelope, OutboundEnvelope)):
            request = list(request)
        self.transactions.append(FakeTransaction(self, request))
        return self.transactions[-1]


class FakeThreadPool:
    """The thread pool of FakeReactor: runs a call at once, or keeps it until run() when
    `hold` is set (a slow password hash)."""

    def __init__(self) -> None:
        self.calls = 0
        self.hold = False
        self.held: list[Callable[[], None]] = []

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None],
                                 func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.calls += 1

        def call() -> None:
            try:
                result = func(*args, **kw)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)

        if self.hold:
            self.held.append(call)
        else:
            call()

    def run(self) -> None:
        calls, self.held = self.held, []
        for call in calls:
            call()


class FakeReactor(Clock):
    """A Clock that twisted.cred's threaded checker and TimeoutMixin can both use."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = FakeThreadPool()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def getThreadPool(self) -> FakeThreadPool:
        return self.pool


class FakeDisk:
    """The sessions' disk threads: runs a job at once (its result or failure in a fired
    Deferred) or, with `hold` set, keeps it until release()."""

    def __init__(self) -> None:
        self.hold = False
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if not self.hold:
            return maybeDeferred(fn, *args)
        d: Deferred[Any] = Deferred()
        self.held.append((d, fn, args))
        return d

    def release(self) -> None:
        """Run the jobs held so far, in order. `hold` stays as it is: jobs those start
        are held again, so a test can step through a session's disk calls."""
        held, self.held = self.held, []
        for d, fn, args in held:
            maybeDeferred(fn, *args).chainDeferred(d)


@implementer(IRealm)
class MailRealm:
    """Logs anyone in as the IMailUser of their address (the mailbox is its parts)."""

    def requestAvatar(self, avatar_id: Any, mind: object, *interfaces: Any) -> Any:
        address = avatar_id.decode() if isinstance(avatar_id, bytes) else avatar_id
        local, _, domain = address.partition("@")
        return IMailUser, MailUser(address, MailboxId(domain, local)), lambda: None
