"""Failed logins per client address, across connections: the guesser who reconnects.

The checker delays every failure (0.75 s) and a session closes after a few failures,
but a guesser simply opens new connections. This keeps, per client IP, the times of
its recent failed logins; past LIMIT failures within WINDOW seconds the address gets no
more password checks until the oldest failure ages out. One throttle per process (the
ServerContext's, sized by limits.login_failures_per_ip and login_failure_window) is
shared by submission, POP3 and IMAP, so failures over one protocol block the others
too; each refuses in its own words and closes: SMTP 421 4.7.0, POP3 -ERR [SYS/TEMP],
IMAP NO [UNAVAILABLE]. With `processes = N` each process counts on its own. Only
failures count, so a user whose client logs in a thousand times a day is never
affected; a successful login does not wipe the slate, so one valid account does not let
a guesser try others indefinitely. Postfix has the blunter
smtpd_client_auth_rate_limit (every AUTH counts); fail2ban is what most sites add.

Memory is bounded: at most MAX_CLIENTS addresses are tracked (the least recently
failing one is forgotten first) and at most LIMIT times each.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from mailserver.config import LimitsConfig

#: Failed logins from one address within WINDOW after which it is refused (the default
#: of limits.login_failures_per_ip, which app/service.py passes in).
LIMIT: int = LimitsConfig.login_failures_per_ip
#: Seconds a failure is remembered (the default of limits.login_failure_window).
WINDOW: float = LimitsConfig.login_failure_window
#: Addresses tracked at most.
MAX_CLIENTS = 10_000


class LoginThrottle:
    """Failed logins per client address (`failed`), and whether one is refused now
    (`blocked`)."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW,
                 max_clients: int = MAX_CLIENTS, clock: Any = None) -> None:
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

    def blocked(self, ip: str) -> bool:
        """True while `ip` has LIMIT or more failures in the window."""
        times = self._recent(ip)
        return times is not None and len(times) >= self.limit

    def failed(self, ip: str) -> None:
        times = self._recent(ip)
        if times is None:
            times = self._failures[ip] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(ip)
        times.append(self._now())
