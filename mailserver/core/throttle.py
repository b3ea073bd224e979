"""Failed logins per client address, across connections: the guesser who reconnects.

The checker delays every failure (0.75 s) and a session closes after a few failures,
but a guesser simply opens new connections. This keeps, per client IP, its recent
failed logins; past the limit the address gets no more password checks for a while.
One throttle (the ServerContext's) is shared by submission, POP3 and IMAP, so failures
over one protocol block the others too; each refuses in its own words and closes: SMTP
421 4.7.0, POP3 -ERR [SYS/TEMP], IMAP NO [UNAVAILABLE]. Only failures count, so a user
whose client logs in a thousand times a day is never affected; a successful login does
not wipe the slate, so one valid account does not let a guesser try others
indefinitely. Postfix has the blunter
smtpd_client_auth_rate_limit (every AUTH counts); fail2ban is what most sites add.

Memory is bounded: at most MAX_CLIENTS addresses are tracked (the least recently
failing one is forgotten first) and at most LIMIT times each.

In the server the throttle is backed by the abuse control (mailserver/abuse/): one
count for every service and every worker process, with a timed lock-out sized by
abuse.login_failures, login_window and lockout. The in-process counts below (LIMIT
failures within WINDOW seconds, until the oldest ages out) serve sessions built without
one: the protocols' StringTransport tests.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailserver.abuse.control import AbuseControl

from mailserver.config import AbuseConfig

#: Failed logins from one address within WINDOW after which it is refused, when no
#: abuse control backs the throttle (the default of abuse.login_failures).
LIMIT: int = AbuseConfig.login_failures
#: Seconds a failure is remembered (the default of abuse.login_window).
WINDOW: float = AbuseConfig.login_window
#: Addresses tracked at most.
MAX_CLIENTS = 10_000


class LoginThrottle:
    """Failed logins per client address (`failed`), and whether one is refused now
    (`blocked`)."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW,
                 max_clients: int = MAX_CLIENTS, clock: Any = None,
                 control: AbuseControl | None = None) -> None:
        self.control = control
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return float(self._clock.seconds())

    def _recent(self, ip: str) -> deque[float] | None:
        times = self._failures.get(ip)
        if times is None:
            return None
        horizon = self._now() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[ip]
            return None
        return times

    def blocked(self, ip: str, service: str = "login", account: str | None = None,
                cached: bool = False) -> bool:
        """True while `ip` is locked out (LIMIT or more failures in the window).
        With a control, a True answer is logged as one refusal; `cached`: see
        AbuseControl.locked_until (the API's every request)."""
        if self.control is not None:
            if not self.control.locked_until(ip, cached):
                return False
            self.control.login_refused(service, ip, account)
            return True
        times = self._recent(ip)
        return times is not None and len(times) >= self.limit

    def failed(self, ip: str, service: str = "login", account: str | None = None) -> None:
        """One more failed login from `ip` (logged, and counted towards a lock-out)."""
        if self.control is not None:
            self.control.login_failed(service, ip, account)
            return
        times = self._recent(ip)
        if times is None:
            times = self._failures[ip] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(ip)
        times.append(self._now())
