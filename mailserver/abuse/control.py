"""The abuse-control policies every service asks, over the shared table (table.py).

One object per process (ServerContext.abuse), all of them over one table file, so
the counts are the server's, not a worker's. Each check is a few microseconds of
memory work under one flock (docs/decisions/0012 has the measurement).

Every refusal and every lock-out is logged once, in one stable form that the shipped
fail2ban filter (etc/fail2ban/filter.d/mailserver.conf) matches:

    abuse: refused service=imap ip=192.0.2.7 account=alice@example.org reason=locked-out
    abuse: lockout service=pop3 ip=192.0.2.7 account=- reason=login-failures until=...

`account` is `-` when there is none; a password never appears.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailserver.abuse.table import Key, SharedTable, ip_key, name_key
from mailserver.address import client_address
from mailserver.config import AbuseConfig, Config
from mailserver.logs import logger, printable

log = logger(__name__)

# Kinds of record in the table.
LOGIN_IP, LOGIN_ACCOUNT, CONNECTIONS, SMTP_MESSAGES, SMTP_RECIPIENTS, HARVEST, \
    SEND_MESSAGES, SEND_RECIPIENTS, GREY_TRIPLET, GREY_CLIENT = range(1, 11)
#: Requests to the JSON API per credential (api/auth.py).
API_REQUESTS = 11

HOUR, DAY, MINUTE = 3600, 86_400, 60
#: Greylisting: how long a first attempt is remembered, waiting for its retry (RFC
#: 6647 4.1: retries come for days), and how long a passed triplet or client stays
#: allowed after its last use (postgrey's max-age: 35 days).
GREY_RETRY_WINDOW, GREY_ALLOW = 2 * DAY, 35 * DAY
#: Seconds before a failed login is answered the first time (auth/checker.py's floor).
BASE_DELAY = 0.75
#: The JSON API's per-request shared-table work, batched per process (api_request,
#: locked_until): a credential's admitted requests reach the table at most this many
#: seconds, or requests, after they were made, and an address seen not locked out is
#: taken as such for at most this many seconds (another process's lock-out applies
#: within that time; this process's own failures and lock-outs at once).
API_BATCH_SECONDS, API_BATCH_REQUESTS = 1.0, 60
#: Credentials and addresses remembered so at most (each table is forgotten wholesale).
API_TRACKED = 4096


def table_path(config: Config) -> Path:
    return config.data_dir / "run" / "abuse.table"


def open_table(config: Config, clock: Any = None) -> SharedTable:
    return SharedTable(table_path(config), config.abuse.tracked_keys, clock=clock)


def _networks(items: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                             ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in items)


def _in(ip: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not networks:
        return False
    address = client_address(ip)
    return address is not None and any(address in n for n in networks)


def event(action: str, service: str, ip: str, reason: str, account: str | None = None,
          **extra: object) -> None:
    """The one log line of a refusal or a lock-out (format above; fail2ban reads it)."""
    tail = "".join(f" {k}={v}" for k, v in extra.items())
    # The account is whatever a client typed (a Basic user name may hold CR LF): one
    # field, never a forged second line for fail2ban to read.
    account_text = printable(account or "-", 256).replace(" ", "_") or "-"
    log.info("abuse: {action} service={service} ip={ip} account={account} "
             "reason={reason}{tail}", action=action, service=service, ip=ip,
             account=account_text, reason=reason, tail=tail)


@dataclass
class _ApiCount:
    """One credential's requests as this process knows them: the table's estimate at
    the last exchange with it (table time `synced`), and the requests admitted since
    that the table has not been told of."""

    key: Key
    synced: float
    estimate: float
    pending: int = 0


@dataclass(frozen=True)
class Verdict:
    """A refused step: why (the log's reason) and whether it is temporary."""

    reason: str
    temporary: bool = True


class AbuseControl:
    """The policies; `instance` is this process's number (its gauge column)."""

    def __init__(self, config: Config, table: SharedTable, instance: int = 0) -> None:
        self.settings: AbuseConfig = config.abuse
        self.table = table
        self.instance = instance
        self.trusted = _networks(config.abuse.trusted_networks)
        self.refused = _networks(config.abuse.refused_networks)
        #: Schedules the flush of the API's pending counts (reactor.callLater in the
        #: server); None: they are flushed by the credential's next request only.
        self.call_later: Callable[[float, Callable[[], None]], object] | None = None
        self._api: dict[str, _ApiCount] = {}
        self._flush_due = False
        #: Address -> table time at which it was last seen not locked out (the API's).
        self._unlocked: dict[str, float] = {}

    def reconfigure(self, config: Config) -> None:
        """A reload (app/reload.py): the new [abuse] policies for what comes next; the
        table and its counts stay (its size, abuse.tracked_keys, waits for a restart)."""
        self.settings = config.abuse
        self.trusted = _networks(config.abuse.trusted_networks)
        self.refused = _networks(config.abuse.refused_networks)

    def is_trusted(self, ip: str) -> bool:
        return _in(ip, self.trusted)

    # -- connections ---------------------------------------------------------------------

    def connection_opened(self, service: str, ip: str, per_ip: int) -> Verdict | None:
        """Admit a connection (None) or say why not; admitted ones must be closed."""
        if _in(ip, self.refused):
            event("refused", service, ip, "refused-network")
            return Verdict("refused-network", temporary=False)
        if self.is_trusted(ip):
            return None
        rate = self.settings.connections_per_minute
        if rate:
            added, _ = self.table.hit(ip_key(CONNECTIONS, ip), MINUTE, limit=rate)
            if not added:
                event("refused", service, ip, "connection-rate")
                return Verdict("connection-rate")
        added, _total = self.table.gauge(ip_key(CONNECTIONS, ip), self.instance, 1,
                                         limit=per_ip)
        if not added:
            event("refused", service, ip, "too-many-connections")
            return Verdict("too-many-connections")
        return None

    def connection_closed(self, ip: str) -> None:
        if not self.is_trusted(ip) and not _in(ip, self.refused):
            self.table.gauge(ip_key(CONNECTIONS, ip), self.instance, -1)

    # -- logins --------------------------------------------------------------------------

    def locked_until(self, ip: str, cached: bool = False) -> int:
        """The end of `ip`'s lock-out, 0 if it may try a password. `cached` (the API's
        every request): a "not locked" answer less than API_BATCH_SECONDS old is
        reused. Only that answer: a lock-out is always looked up, and one this process
        makes (login_failed, ban) forgets every remembered answer at once."""
        now = self.table.now() if cached else 0.0
        if cached:
            seen = self._unlocked.get(ip)
            if seen is not None and 0 <= now - seen < API_BATCH_SECONDS:
                return 0
        until = self.table.until(ip_key(LOGIN_IP, ip))
        if cached and not until:
            if len(self._unlocked) >= API_TRACKED:
                self._unlocked.clear()
            self._unlocked[ip] = now
        return until

    def login_refused(self, service: str, ip: str, account: str | None = None) -> None:
        """Log a login turned away because `ip` is locked out."""
        event("refused", service, ip, "locked-out", account)

    def login_failed(self, service: str, ip: str, account: str | None = None) -> None:
        """Count a failed login against the address; lock it out past the limit."""
        s = self.settings
        event("refused", service, ip, "auth-failed", account)
        if not s.login_failures:
            return
        _, failures = self.table.hit(ip_key(LOGIN_IP, ip), s.login_window)
        if failures >= s.login_failures and not self.locked_until(ip):
            until = int(self.table.now()) + s.lockout
            self.table.set_until(ip_key(LOGIN_IP, ip), until)
            self._unlocked.clear()  # an IPv6 lock-out covers its /64's other addresses
            event("lockout", service, ip, "login-failures", account,
                  failures=int(failures), until=until)

    def account_failure_delay(self, account: str) -> float:
        """Count a failure for `account` (whether it exists or not) and return how long
        to wait before answering it: BASE_DELAY doubled per recent failure, capped.

        Per account, from every address: a spray over many addresses at one account
        slows down, and a right password is never delayed (only failures wait), so
        the account's owner logging in from elsewhere is not penalised.
        """
        s = self.settings
        _, failures = self.table.hit(name_key(LOGIN_ACCOUNT, account), s.login_window)
        steps = max(0, int(failures) - 1)
        return float(min(max(float(s.login_delay_max), BASE_DELAY),
                         BASE_DELAY * 2 ** min(steps, 16)))

    def ban(self, ip: str, seconds: int) -> int:
        until = int(self.table.now()) + seconds
        self.table.set_until(ip_key(LOGIN_IP, ip), until)
        self._unlocked.clear()
        event("lockout", "admin", ip, "admin-ban", until=until)
        return until

    def unban(self, ip: str) -> bool:
        return self.table.forget(ip_key(LOGIN_IP, ip))

    # -- port 25 -------------------------------------------------------------------------

    def smtp_message(self, ip: str) -> Verdict | None:
        limit = self.settings.smtp_messages_per_hour
        if not limit or self.is_trusted(ip):
            return None
        added, _ = self.table.hit(ip_key(SMTP_MESSAGES, ip), HOUR, limit=limit)
        if added:
            return None
        event("refused", "smtp", ip, "message-rate")
        return Verdict("message-rate")

    def smtp_recipient(self, ip: str) -> Verdict | None:
        limit = self.settings.smtp_recipients_per_hour
        if not limit or self.is_trusted(ip):
            return None
        added, _ = self.table.hit(ip_key(SMTP_RECIPIENTS, ip), HOUR, limit=limit)
        if added:
            return None
        event("refused", "smtp", ip, "recipient-rate")
        return Verdict("recipient-rate")

    def unknown_recipient(self, ip: str, recipient: str) -> tuple[float, bool]:
        """An RCPT to nobody from `ip`: (seconds to delay the answer, end the session).

        Past `unknown_recipients` per hour each answer waits `tarpit_delay`; at twice
        that the session ends with 421 (Postfix smtpd_hard_error_limit does this per
        session only; this counts across sessions and processes).
        """
        limit = self.settings.unknown_recipients
        if not limit or self.is_trusted(ip):
            return 0.0, False
        _, count = self.table.hit(ip_key(HARVEST, ip), HOUR)
        if count > 2 * limit:
            event("refused", "smtp", ip, "directory-harvest", recipient)
            return float(self.settings.tarpit_delay), True
        if count > limit:
            return float(self.settings.tarpit_delay), False
        return 0.0, False

    def greylisted(self, ip: str, sender: str, recipient: str) -> bool:
        """True to defer this RCPT (RFC 6647): the first attempt of a (client network,
        sender, recipient) triplet, or a retry before `greylist_delay`. A passed retry
        also allows the client itself; trusted networks are never greylisted."""
        delay = self.settings.greylist_delay
        if not delay or self.is_trusted(ip):
            return False
        client = ip_key(GREY_CLIENT, ip)
        if self.table.until(client):
            return False
        # Senders' outbound farms retry from other addresses of the same network:
        # IPv4 per /24 (postgrey's default), IPv6 per /64 (ip_key).
        net = client.text().rsplit(".", 1)[0] if client.type == 4 else client.text()
        triplet = name_key(GREY_TRIPLET, f"{net}|{sender}|{recipient}")
        if self.table.greylist(triplet, delay, GREY_RETRY_WINDOW, GREY_ALLOW):
            self.table.set_until(client, int(self.table.now()) + GREY_ALLOW)
            return False
        event("refused", "smtp", ip, "greylisted", recipient)
        return True

    # -- the JSON API ----------------------------------------------------------------------

    def api_request(self, credential: str, limit: int, ip: str, account: str) -> int:
        """Count one API request of `credential` ("token:ID", "password:ADDRESS") unless
        that passes `limit` a minute: 0 if counted, else the seconds to wait. Across
        processes, like every count here, in batches: a request that fits this
        process's last view of the table (its estimate then, plus the requests admitted
        here since) is admitted in memory, and told to the table with the others at the
        latest API_BATCH_SECONDS later (call_later) or with the API_BATCH_REQUESTS'th.
        Anything else, and every refusal, asks the table, so in one process the answers
        are those of a lookup per request (the estimate only falls between lookups);
        across processes each may admit up to one batch the others have not seen yet.

        The wait: the rest of this minute, then 60/limit seconds into the next, where
        the sliding estimate (this minute's count, at most `limit`, weighted by what of
        it still overlaps) has fallen by one request's worth.
        """
        now = self.table.now()
        count = self._api.get(credential)
        if count is not None and count.pending + 1 < API_BATCH_REQUESTS \
                and 0 <= now - count.synced < API_BATCH_SECONDS \
                and count.estimate + count.pending + 1 <= limit:
            count.pending += 1
            self._flush_later()
            return 0
        if count is None:
            if len(self._api) >= API_TRACKED:
                self.flush_api_counts()
                self._api.clear()
            count = self._api[credential] = _ApiCount(name_key(API_REQUESTS, credential),
                                                      now, 0.0)
        pending, count.pending = count.pending, 0
        added, count.estimate = self.table.hit(count.key, MINUTE, amount=pending + 1,
                                               limit=limit)
        if not added and pending:  # those were admitted: they count all the same
            _, count.estimate = self.table.hit(count.key, MINUTE, amount=pending)
        count.synced = now
        if added:
            return 0
        event("refused", "api", ip, "request-rate", account)
        return MINUTE - int(now) % MINUTE + -(-MINUTE // limit)

    def _flush_later(self) -> None:
        if self.call_later is not None and not self._flush_due:
            self._flush_due = True
            self.call_later(API_BATCH_SECONDS, self.flush_api_counts)

    def flush_api_counts(self) -> None:
        """Tell the table of every API request admitted in memory (api_request), and
        forget credentials with nothing pending whose view of the table is stale."""
        self._flush_due = False
        now = self.table.now()
        for credential, count in list(self._api.items()):
            if count.pending:
                _, count.estimate = self.table.hit(count.key, MINUTE, amount=count.pending)
                count.pending, count.synced = 0, now
            elif not 0 <= now - count.synced < API_BATCH_SECONDS:
                del self._api[credential]

    # -- sending quotas ------------------------------------------------------------------

    def reserve_message(self, user: str, limit: int) -> bool:
        """Count one message for `user` this hour unless that passes `limit` (0: none).
        Counted when MAIL is accepted, atomically across processes, so parallel
        sessions cannot together pass the limit."""
        if not limit:
            return True
        added, _ = self.table.hit(name_key(SEND_MESSAGES, user), HOUR, limit=limit)
        return added

    def reserve_recipient(self, user: str, limit: int) -> bool:
        if not limit:
            return True
        added, _ = self.table.hit(name_key(SEND_RECIPIENTS, user), DAY, limit=limit)
        return added

    def usage(self, user: str) -> tuple[float, float]:
        """(messages this hour, recipients today), as the limits see them."""
        return (self.table.count(name_key(SEND_MESSAGES, user), HOUR),
                self.table.count(name_key(SEND_RECIPIENTS, user), DAY))


def lockouts(table: SharedTable) -> list[tuple[str, int, float]]:
    """(address, lock-out end, failures counted) of every locked-out address."""
    now = int(table.now())
    out = []
    for record in table.records(LOGIN_IP):
        if record.until > now:
            out.append((record.key.text(), record.until, float(record.current)))
    return sorted(out, key=lambda r: r[1])


__all__ = ["AbuseControl", "Key", "Verdict", "event", "lockouts", "open_table"]
