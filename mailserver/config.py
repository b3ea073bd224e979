"""The configuration: one TOML file read into frozen dataclasses.

Every operator mistake is collected, not just the first: `load_config` raises one
ConfigError whose `problems` each name the file and the key path (`limits.message_size:
expected an integer, got "big"`). The field docs below also generate etc/mailserver.toml
(`render_example`), so the example can never drift from what the code accepts.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailserver.address import domain_key
from mailserver.config_checks import (  # noqa: F401 - UIDL_*: store/uidlformat.py's import
    UIDL_LONG_NAMES,
    UIDL_TOKEN,
    check_semantics,
    uidl_format_problem,
)
from mailserver.config_sections import APIConfig, ClusterConfig, WebhooksConfig
from mailserver.configdoc import doc
from mailserver.errors import ConfigError

SERVICES = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps", "http",
            "https")

#: Where each service listens in the embedded default (no config file): loopback only.
DEFAULT_LISTEN = {
    "smtp": "tcp:2525:interface=127.0.0.1",
    "submission": "tcp:2587:interface=127.0.0.1",
    "submissions": "tcp:2465:interface=127.0.0.1",
    "pop3": "tcp:2110:interface=127.0.0.1",
    "pop3s": "tcp:2995:interface=127.0.0.1",
    "imap": "tcp:2143:interface=127.0.0.1",
    "imaps": "tcp:2993:interface=127.0.0.1",
}


@dataclass(frozen=True)
class DomainsConfig:
    local: tuple[str, ...] = doc(
        "Domains whose mail is delivered to Maildirs here; every other domain is remote.",
        default=(),
    )


@dataclass(frozen=True)
class ListenConfig:
    """Twisted endpoint descriptions ("tcp:25", "tcp:587:interface=192.0.2.1").

    A missing key turns that service off.
    """

    smtp: str | None = doc("MX: inbound mail for the local domains; never relays.", default=None)
    submission: str | None = doc("Mail from our users: STARTTLS, then AUTH.", default=None)
    submissions: str | None = doc("Submission with implicit TLS (RFC 8314).", default=None)
    pop3: str | None = doc("POP3 with STLS.", default=None)
    pop3s: str | None = doc("POP3 with implicit TLS.", default=None)
    imap: str | None = doc("IMAP4 with STARTTLS.", default=None)
    imaps: str | None = doc("IMAP4 with implicit TLS.", default=None)
    http: str | None = doc("HTTP: ACME HTTP-01, client autoconfiguration, /metrics.",
                           default=None)
    https: str | None = doc("HTTPS: the same, and the MTA-STS policy (RFC 8461 3.3).",
                            default=None)

    def enabled(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in SERVICES if getattr(self, name)}


@dataclass(frozen=True)
class TLSConfig:
    certificate: Path | None = doc(
        "PEM certificate chain; omitted: a self-signed one made under data_dir/tls.",
        default=None,
    )
    private_key: Path | None = doc("PEM private key for `certificate`.", default=None)


@dataclass(frozen=True)
class AuthConfig:
    users_file: Path | None = doc(
        "Users in Dovecot passwd-file form (user@domain:{SCHEME}hash); default data_dir/users.",
        default=None,
    )
    aliases_file: Path | None = doc(
        "Aliases (address: target, target; `@domain` is a catch-all); default data_dir/aliases.",
        default=None,
    )
    allow_plaintext_without_tls: bool = doc(
        "Accept passwords on connections without TLS. Only for loopback tests.", default=False
    )


@dataclass(frozen=True)
class LimitsConfig:
    message_size: int = doc("Largest message accepted, in bytes (advertised as SIZE).",
                            default=36_700_160)
    recipients_per_message: int = doc("RCPT commands accepted per transaction (RFC 5321 "
                                      "4.5.3.1.8 asks for at least 100).", default=100)
    connections: int = doc("Connections served at once, all services together.", default=1000)
    connections_per_ip: int = doc("Connections served at once from one client address.",
                                  default=50)
    command_timeout: int = doc("Seconds a session may stay silent (RFC 5321 4.5.3.2: 5 min).",
                               default=300)
    errors_per_session: int = doc("Protocol errors after which a session is closed.",
                                  default=20)
    strict_8bitmime: bool = doc(
        "Refuse 8-bit message data sent without BODY=8BITMIME or SMTPUTF8 (RFC 6152).",
        default=True,
    )
    folders_per_user: int = doc(
        "IMAP folders one user may have besides INBOX; a CREATE or RENAME that would "
        "make more is refused with NO [LIMIT] (RFC 5530).", default=1000,
    )


@dataclass(frozen=True)
class RelayConfig:
    nameservers: tuple[str, ...] = doc(
        'Resolvers for MX lookups ("127.0.0.1:5353"); empty: the system resolver.', default=()
    )
    port: int = doc("Destination port of outbound SMTP (tests change it).", default=25)
    smarthost: str = doc('"host:port" that takes all remote mail; empty: MX routing.',
                         default="")
    smarthost_user: str = doc("User name for AUTH PLAIN at the smarthost (only over TLS); "
                              "empty: no AUTH.", default="")
    smarthost_password_file: str = doc(
        "Absolute path of a file whose first line is the smarthost password (kept out of "
        "the config file); needed with smarthost_user.", default="")
    retry_initial: int = doc("Seconds before the first retry of a deferred recipient "
                             "(Postfix minimal_backoff_time); doubled after each attempt.",
                             default=300)
    retry_max: int = doc("Longest wait between two attempts, in seconds "
                         "(Postfix maximal_backoff_time).", default=4000)
    queue_lifetime: int = doc("Seconds a message may stay queued before what is left "
                              "bounces (Postfix maximal_queue_lifetime: 5 days).",
                              default=432_000)
    delay_warning: int = doc("Seconds after which the sender is told once that delivery "
                             "is delayed (RFC 3464 Action: delayed); 0: never.",
                             default=14_400)
    connections_total: int = doc("Outbound SMTP connections open at once.", default=50)
    connections_per_destination: int = doc(
        "Outbound SMTP connections open at once to one destination domain.", default=10
    )
    source_address: str = doc("Local IP address outbound SMTP connects from (Postfix "
                              "smtp_bind_address); empty: the system chooses.", default="")
    connect_timeout: int = doc("Seconds to wait for a TCP connection to a remote server.",
                               default=30)
    command_timeout: int = doc("Seconds to wait for each remote reply (RFC 5321 4.5.3.2 "
                               "asks for 5 to 10 minutes).", default=300)
    dns_timeout: int = doc("Seconds one DNS lookup may take before the attempt is "
                           "deferred.", default=30)
    mta_sts: bool = doc(
        "Honour recipient domains' MTA-STS policies (RFC 8461): fetched over verified "
        "HTTPS, cached in data_dir/mta-sts; in enforce mode mail goes only to the MX "
        "hosts the policy names, over TLS with a certificate valid for the host name.",
        default=True)
    ca_file: str = doc(
        "Absolute path of a PEM file of the root certificates trusted for MTA-STS "
        "policy servers and MX hosts; empty: the system's (/etc/ssl/certs).", default="")
    https_port: int = doc("Port of MTA-STS policy servers (443; tests change it).",
                          default=443)


@dataclass(frozen=True)
class SubmissionConfig:
    """Message submission (RFC 6409): the `submission` and `submissions` listeners."""

    check_from_header: bool = doc(
        "Refuse (550 5.7.1) a message whose From header names an address the user may "
        "not send as (the rule of the envelope sender).",
        default=True,
    )


@dataclass(frozen=True)
class Pop3Config:
    uidl_format: str = doc(
        'UIDLs as Dovecot\'s pop3_uidl_format makes them (e.g. "%08Xu%08Xv": UID and '
        "UIDVALIDITY in hex), so POP3 clients moving from Dovecot keep theirs; empty: "
        "the Maildir base name.", default="")


@dataclass(frozen=True)
class AbuseConfig:
    """Defences shared by every service and worker process (README "Defences").

    Times are in seconds; a count of 0 turns that check off.
    """

    trusted_networks: tuple[str, ...] = doc(
        'Networks exempt from the connection and port-25 checks (never from the login '
        'lock-out): ["192.0.2.0/24", "2001:db8::/32"].', default=())
    refused_networks: tuple[str, ...] = doc(
        "Networks whose connections are refused on every service.", default=())
    login_failures: int = doc(
        "Failed logins from one address (IPv6: one /64), all services together, after "
        "which it is locked out.", default=10)
    login_window: int = doc("Seconds a failed login is counted.", default=900)
    lockout: int = doc("Seconds a locked-out address is refused.", default=900)
    login_delay_max: int = doc(
        "Longest delay before a failed login is answered; the delay (0.75 s) doubles with "
        "each recent failure for the same account, from any address; 0: no doubling.",
        default=15)
    connections_per_minute: int = doc(
        "New connections per minute from one address, all services together.", default=0)
    smtp_messages_per_hour: int = doc("Messages per hour from one address on port 25.",
                                      default=0)
    smtp_recipients_per_hour: int = doc("Recipients per hour from one address on port 25.",
                                        default=0)
    unknown_recipients: int = doc(
        "RCPTs to unknown users per hour from one address on port 25 (directory harvest) "
        "after which each one is delayed (tarpit), and at twice this the session ends "
        "with 421.", default=10)
    tarpit_delay: int = doc("Seconds each unknown RCPT waits past `unknown_recipients`.",
                            default=2)
    pregreet_wait: int = doc(
        "Seconds port 25 waits before its banner; a client that talks first is refused "
        "(postscreen's pregreet test; 6 is Postfix's value).", default=0)
    greylist_delay: int = doc(
        "Seconds a new (client /24, sender, recipient) must wait before its retry is "
        "accepted on port 25 (RFC 6647 greylisting; 300 is usual); a passed retry "
        "allows that client for 35 days. Never for trusted networks.", default=0)
    messages_per_hour: int = doc(
        "Messages one submission user may send per hour (default for every user; "
        "data_dir/sending_limits sets per-domain and per-user values).", default=0)
    recipients_per_day: int = doc("Recipients one submission user may send to per day.",
                                  default=0)
    tracked_keys: int = doc(
        "Counters kept (addresses, accounts, users); 72 bytes each, the least recently "
        "used are forgotten first.", default=262_144)
    dnsbl_zones: tuple[str, ...] = doc(
        'DNS blocklists for port 25 as "zone=weight" ("zen.spamhaus.org=2"); a negative '
        'weight makes an allowlist ("list.dnswl.org=-5"): a listing there lowers the '
        "client's total. None by default.", default=())
    dnsbl_threshold: int = doc("Total weight at which a client is refused.", default=1)


@dataclass(frozen=True)
class HTTPConfig:
    """The http and https listeners (listen.http, listen.https)."""

    request_timeout: int = doc("Seconds a client may take to send one whole request "
                               "(slowloris), and to stay idle between requests.", default=30)
    metrics_networks: tuple[str, ...] = doc(
        'Client networks that may read /metrics ("192.0.2.0/24"); the default is loopback.',
        default=("127.0.0.0/8", "::1/128"),
    )
    metrics_token_file: str = doc(
        "Absolute path of a file whose first line is a bearer token that also admits "
        "/metrics from anywhere (Authorization: Bearer TOKEN); empty: no token.", default="",
    )


@dataclass(frozen=True)
class MTASTSConfig:
    """Our MTA-STS policy (RFC 8461), served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt."""

    mode: str = doc('"enforce", "testing" or "none" (RFC 8461 5).', default="testing")
    max_age: int = doc("Seconds senders may cache the policy (RFC 8461 3.2: at most "
                       "31557600).", default=604_800)


@dataclass(frozen=True)
class TLSReportingConfig:
    """Daily TLS reports (RFC 8460) to recipient domains that ask for them in their
    _smtp._tls TXT record (mailto: rua only). Outcomes are recorded in
    data_dir/tls-rpt either way; without reports, past days are deleted."""

    enabled: bool = doc("Send the daily aggregate reports.", default=False)
    organization: str = doc('"organization-name" of the reports; needed when enabled.',
                            default="")
    contact: str = doc('"contact-info" of the reports (an address or URI); empty: the '
                       "sender address.", default="")
    sender: str = doc("From and envelope sender of the reports; empty: "
                      "noreply-smtp-tls-reporting@HOSTNAME.", default="")


@dataclass(frozen=True)
class DNSConfig:
    """The one resolver every lookup uses (queue routing, SPF, DKIM, DMARC, iprev)."""

    nameservers: tuple[str, ...] = doc(
        'Resolvers ("127.0.0.1:5353", "[::1]:53"); empty: relay.nameservers, else the '
        "system resolver (/etc/resolv.conf).", default=())
    timeout: int = doc("Seconds one lookup may take (every retry included).", default=10)
    cache_size: int = doc("Answers kept in the shared cache, each for its TTL; 0: none.",
                          default=5000)
    dnssec: bool = doc(
        "The nameservers validate DNSSEC and are trusted (loopback or a trusted network): "
        "their AD bit is believed, which turns on DANE for outbound mail (RFC 7672). "
        "As Postfix's smtp_dns_support_level = dnssec.", default=False)


@dataclass(frozen=True)
class ChecksConfig:
    """Sender authentication of mail arriving on the smtp listener (never submission):
    SPF, DKIM, DMARC, ARC and iprev, reported in one Authentication-Results header."""

    enabled: bool = doc("Check mail arriving on the smtp listener.", default=True)
    dmarc_reject: bool = doc("Refuse (550 5.7.1) mail failing DMARC whose domain asks "
                             "p=reject; false: deliver it to Junk instead.", default=True)
    dmarc_quarantine: bool = doc("Deliver mail failing DMARC under p=quarantine (or an "
                                 "unhonoured reject) to the recipient's Junk folder.",
                                 default=True)
    temperror: str = doc('When a DNS failure decides the DMARC verdict: "defer" answers '
                         '451 4.7.5 (the sender retries), "accept" delivers with '
                         "dmarc=temperror.", default="defer")
    time_budget: int = doc("Seconds all lookups of one message may take together.",
                           default=20)
    max_signatures: int = doc("DKIM signatures verified per message (the rest: "
                              "neutral).", default=5)
    no_reject_domains: tuple[str, ...] = doc(
        "Local domains whose recipients get DMARC p=reject failures in Junk instead of "
        "a 550 (one such recipient is enough: a refusal would refuse them all).",
        default=())
    trusted_networks: tuple[str, ...] = doc(
        "Client networks whose mail is not checked (Postfix's mynetworks): local "
        "programs handing mail to port 25.", default=("127.0.0.0/8", "::1/128"))


@dataclass(frozen=True)
class DKIMConfig:
    """Signing of mail we send: submitted, forwarded, and our bounces (RFC 6376)."""

    sign: bool = doc("Sign outgoing mail of the local domains.", default=True)
    unsigned_domains: tuple[str, ...] = doc(
        "Local domains whose mail is not signed (their own signer does it).", default=())
    external_keys: tuple[str, ...] = doc(
        '"domain:selector:/path/key.pem": sign that domain with this key only (RSA or '
        "Ed25519 PKCS#8) instead of the keys made under data_dir/dkim.", default=())


@dataclass(frozen=True)
class SRSConfig:
    """Forwarding (an alias to a remote address) with the Sender Rewriting Scheme."""

    enabled: bool = doc("Rewrite the envelope sender of forwarded copies (SRS0) and "
                        "accept bounces to such addresses on port 25.", default=True)
    domain: str = doc("Our domain in rewritten senders; empty: the first of "
                      "domains.local.", default="")


@dataclass(frozen=True)
class AcmeConfig:
    """Certificates from an ACME CA (RFC 8555), e.g. Let's Encrypt; omitted: no ACME.

    Obtained on first start (HTTP-01: needs listen.http reachable on port 80 of every
    name), kept under data_dir/acme/, renewed at two thirds of their lifetime and served
    by every TLS listener without a restart. Until the first one exists, the self-signed
    certificate serves. Excludes [tls] certificate/private_key.
    """

    directory: str = doc("The CA's directory URL; empty: no ACME.", default="")
    contact: str = doc('Account contact, "mailto:postmaster@example.org".', default="")
    names: tuple[str, ...] = doc(
        "Names on the certificate (hostname, mta-sts.DOMAIN, autoconfig.DOMAIN); "
        "empty: the hostname.", default=())
    directory_ca: str = doc("A CA file to trust for the directory's own HTTPS (test "
                            "servers such as Pebble); empty: the system's CAs.", default="")
    challenge: str = doc('"http-01" (answered on listen.http, port 80) or "tls-alpn-01" '
                         "(RFC 8737: answered by every TLS listener, port 443 must reach "
                         "one; needs processes = 1).", default="http-01")

    def certificate_names(self, hostname: str) -> tuple[str, ...]:
        return self.names or (hostname,)


@dataclass(frozen=True)
class LogConfig:
    format: str = doc('"text" (twistd\'s lines) or "json" (one object per line: time, '
                      'level, service, session, client, event, fields).', default="text")


@dataclass(frozen=True)
class Config:
    hostname: str = doc("Name in the banner, EHLO reply and Received headers.",
                        default_factory=socket.getfqdn)
    data_dir: Path = doc("Maildirs, queue and state; created if missing.",
                         default=Path("/var/lib/mailserver"))
    processes: int = doc(
        "Server processes sharing the listeners (one Python process uses about one core; "
        "0 = one per CPU this process may run on, 1 with acme.challenge = tls-alpn-01). "
        "limits.connections counts per process; the per-address limits and [abuse] count "
        "across all of them.",
        default=0,
    )
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    abuse: AbuseConfig = field(default_factory=AbuseConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    mta_sts: MTASTSConfig = field(default_factory=MTASTSConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    dns: DNSConfig = field(default_factory=DNSConfig)
    tls_reporting: TLSReportingConfig = field(default_factory=TLSReportingConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    dkim: DKIMConfig = field(default_factory=DKIMConfig)
    srs: SRSConfig = field(default_factory=SRSConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    log: LogConfig = field(default_factory=LogConfig)
    api: APIConfig = field(default_factory=APIConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    #: The file this came from (None: the embedded default). Not a config key.
    source: Path | None = field(default=None, metadata={"internal": True})

    @property
    def users_file(self) -> Path:
        return self.auth.users_file or self.data_dir / "users"

    @property
    def aliases_file(self) -> Path:
        return self.auth.aliases_file or self.data_dir / "aliases"

    @property
    def mail_dir(self) -> Path:
        return self.cluster.mail_dir or self.data_dir / "mail"

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    @property
    def process_count(self) -> int:
        """`processes`, with 0 meaning one per CPU we may run on (a container's or
        taskset's share, not the machine's), or 1 where only one process works: the
        tls-alpn-01 answer lives in the process that asked for it (app/acme.py)."""
        if self.processes:
            return self.processes
        if self.acme.directory and self.acme.challenge == "tls-alpn-01":
            return 1
        return min(64, _usable_cpus())

    def is_local_domain(self, domain: str) -> bool:
        return domain_key(domain) in self.domains.local


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_config() -> Config:
    """The embedded default of CONTRACT.md: loopback listeners, ./var, domain localhost."""
    return Config(
        data_dir=Path("var").absolute(),
        domains=DomainsConfig(local=("localhost",)),
        listen=ListenConfig(**DEFAULT_LISTEN),
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """`path`, else $MAILSERVER_CONFIG, else the embedded default. Raises ConfigError."""
    if path is None:
        path = os.environ.get("MAILSERVER_CONFIG") or None
    if path is None:
        return default_config()
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such config file"]) from None
    except OSError as e:
        raise ConfigError([f"{file}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{file}: not valid TOML: {e}"]) from None
    return config_from_dict(raw, source=file)


def config_from_dict(raw: dict[str, Any], source: Path | None = None) -> Config:
    """Build and validate a Config from parsed TOML; every problem is reported at once."""
    problems: list[str] = []
    base = source.parent.absolute() if source else Path.cwd()
    values = _build(Config, raw, "", problems, base)
    check_semantics(values, problems)
    if problems:
        where = f"{source}: " if source else ""
        raise ConfigError([where + p for p in problems])
    # Domains normalised (lower case, no trailing dot) so lookups need not care.
    domains = DomainsConfig(local=tuple(domain_key(d) for d in values.domains.local))
    return dataclasses.replace(values, domains=domains, source=source)


def _build(cls: type, raw: Any, path: str, problems: list[str], base: Path) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{path or 'top level'}: expected a table")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in raw:
        if key not in fields:
            problems.append(f"{_join(path, key)}: unknown key")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name not in raw:
            continue
        kwargs[name] = _convert(hints[name], raw[name], _join(path, name), problems, base)
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not _INVALID})
    except TypeError as e:  # pragma: no cover - defensive: a field without default
        problems.append(f"{path}: {e}")
        return None


_INVALID = object()


def _convert(hint: Any, value: Any, path: str, problems: list[str], base: Path) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, problems, base)  # type: ignore[arg-type]
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner[0], value, path, problems, base)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_show(value)}")
            return _INVALID
        item = typing.get_args(hint)[0]
        items = [_convert(item, v, f"{path}[{i}]", problems, base) for i, v in enumerate(value)]
        return tuple(i for i in items if i is not _INVALID)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a table, got {_show(value)}")
            return _INVALID
        item = typing.get_args(hint)[1]
        pairs = {k: _convert(item, v, _join(path, k), problems, base) for k, v in value.items()}
        return {k: v for k, v in pairs.items() if v is not _INVALID}
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {_show(value)}")
            return _INVALID
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {_show(value)}")
            return _INVALID
        if value < 0:
            problems.append(f"{path}: must not be negative, got {value}")
            return _INVALID
        return value
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {_show(value)}")
            return _INVALID
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"{path}: expected a path string, got {_show(value)}")
            return _INVALID
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    raise AssertionError(f"unsupported config type {hint!r} at {path}")  # pragma: no cover


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def render_example() -> str:
    """The commented example config (etc/mailserver.toml): config_example.py builds it
    (imported here, not at the top, as it imports this module)."""
    from mailserver.config_example import render_example as render

    return render()


if __name__ == "__main__":
    print(render_example(), end="")
