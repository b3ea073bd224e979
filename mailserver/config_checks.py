"""The semantic checks of a built Config: what the types alone cannot say (a host name,
a readable file, a network, keys that go together), each problem naming its key path.

Kept out of config.py, which had grown past 800 lines; config.py re-exports
uidl_format_problem and the UIDL names (store/uidlformat.py imports them from there).
The [api], [webhooks] and [cluster] sections are checked by config_sections.py, called
from here in the place it has always had in the order of the problems.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TYPE_CHECKING

from mailserver.config_sections import check_sections

if TYPE_CHECKING:
    from mailserver.config import AbuseConfig, Config


#: One variable of Dovecot's var_expand as pop3_uidl_format uses it (store/uidlformat.py
#: reads the groups): "%%", or % [0][width][X L U modifiers] and a letter or {name}.
UIDL_TOKEN = re.compile(r"%(?:(%)|(0?)(\d*)([XLU]*)(?:([uvgmf])|\{([a-z]+)\}))")
UIDL_LONG_NAMES = {"uid": "u", "uidvalidity": "v", "guid": "g", "md5": "m", "filename": "f"}


def uidl_format_problem(text: str) -> str | None:
    """What is wrong with a pop3.uidl_format (None: fine, or "" = base names)."""
    if not text:
        return None
    pos, variables = 0, 0
    while (percent := text.find("%", pos)) >= 0:
        match = UIDL_TOKEN.match(text, percent)
        if match is None or (match[6] is not None and match[6] not in UIDL_LONG_NAMES):
            return (f"unknown variable at {text[percent:percent + 12]!r} "
                    "(known: %u %v %g %m %f, their {long names}, and %%)")
        variables += match[1] is None
        pos = match.end()
    if not variables:
        return "no variable: every message would get the same UIDL"
    return None


def check_semantics(config: Config, problems: list[str]) -> None:
    """Every semantic problem of `config`, appended to `problems` in the order operators
    have always seen them (the steps below run in that order, which is why [relay] is
    checked in four places)."""
    _check_host_and_listeners(config, problems)
    _check_acme(config, problems)
    _check_log_pop3_and_limits(config, problems)
    _check_relay_port_and_nameservers(config, problems)
    _check_senderauth(config, problems)
    _check_smarthost(config, problems)
    _check_http(config, problems)
    check_sections(config, problems)
    _check_relay_limits(config, problems)
    _check_abuse(config.abuse, problems)
    _check_relay_files_and_reporting(config, problems)


def _check_host_and_listeners(config: Config, problems: list[str]) -> None:
    """hostname, domains.local, [listen] and [tls]."""
    if not config.hostname or any(c.isspace() for c in config.hostname):
        problems.append(f"hostname: not a host name: {config.hostname!r}")
    for i, d in enumerate(config.domains.local):
        if not _is_domain(d):
            problems.append(f"domains.local[{i}]: not a domain name: {d!r}")
    for name, desc in config.listen.enabled().items():
        error = _endpoint_problem(desc)
        if error:
            problems.append(f"listen.{name}: {error}")
    tls = config.tls
    if (tls.certificate is None) != (tls.private_key is None):
        problems.append("tls: certificate and private_key go together; set both or neither")
    for key in ("certificate", "private_key"):
        p = getattr(tls, key)
        if p is not None and not os.access(p, os.R_OK):
            problems.append(f"tls.{key}: cannot read {p}")


def _check_log_pop3_and_limits(config: Config, problems: list[str]) -> None:
    """log.format, pop3.uidl_format, [limits] and processes."""
    if config.log.format not in ("text", "json"):
        problems.append(f'log.format: expected "text" or "json", got "{config.log.format}"')
    error = uidl_format_problem(config.pop3.uidl_format)
    if error:
        problems.append(f"pop3.uidl_format: {error}")
    limits = config.limits
    for key in ("message_size", "recipients_per_message", "connections", "connections_per_ip",
                "command_timeout", "errors_per_session", "folders_per_user"):
        if getattr(limits, key) == 0:
            problems.append(f"limits.{key}: must be at least 1")
    if config.processes > 64:
        problems.append(f"processes: at most 64, got {config.processes}")


def _check_relay_port_and_nameservers(config: Config, problems: list[str]) -> None:
    if not 0 < config.relay.port < 65536:
        problems.append(f"relay.port: not a port number: {config.relay.port}")
    for i, ns in enumerate(config.relay.nameservers):
        host, _, port = ns.rpartition(":") if ns.count(":") == 1 else (ns, "", "53")
        if not host or not port.isdigit():
            problems.append(f"relay.nameservers[{i}]: expected \"address[:port]\", got {ns!r}")


def _check_smarthost(config: Config, problems: list[str]) -> None:
    if config.relay.smarthost:
        host, sep, port = config.relay.smarthost.rpartition(":")
        if not sep or not host or not port.isdigit():
            problems.append(f"relay.smarthost: expected \"host:port\", got "
                            f"{config.relay.smarthost!r}")


def _check_relay_limits(config: Config, problems: list[str]) -> None:
    """[relay]'s counts and timeouts, the retry schedule and the source address."""
    relay = config.relay
    for key in ("retry_initial", "retry_max", "queue_lifetime", "connections_total",
                "connections_per_destination", "connect_timeout", "command_timeout",
                "dns_timeout"):
        if getattr(relay, key) == 0:
            problems.append(f"relay.{key}: must be at least 1")
    if relay.retry_max < relay.retry_initial:
        problems.append(f"relay.retry_max: must be at least retry_initial "
                        f"({relay.retry_initial}), got {relay.retry_max}")
    if relay.source_address:
        try:
            ipaddress.ip_address(relay.source_address)
        except ValueError:
            problems.append(f"relay.source_address: not an IP address: "
                            f"{relay.source_address!r}")


def _check_relay_files_and_reporting(config: Config, problems: list[str]) -> None:
    """relay.ca_file, relay.https_port, [tls_reporting] and the smarthost password."""
    relay = config.relay
    if relay.ca_file and not os.access(relay.ca_file, os.R_OK):
        problems.append(f"relay.ca_file: cannot read {relay.ca_file}")
    if not 0 < relay.https_port < 65536:
        problems.append(f"relay.https_port: not a port number: {relay.https_port}")
    if config.tls_reporting.enabled and not config.tls_reporting.organization:
        problems.append("tls_reporting.organization: needed when tls_reporting.enabled")
    if relay.smarthost_user and not relay.smarthost_password_file:
        problems.append("relay.smarthost_password_file: needed with smarthost_user")
    elif relay.smarthost_user and not os.access(relay.smarthost_password_file, os.R_OK):
        problems.append(f"relay.smarthost_password_file: cannot read "
                        f"{relay.smarthost_password_file}")


def _check_acme(config: Config, problems: list[str]) -> None:
    acme = config.acme
    if not acme.directory:
        return  # ACME off; the other keys wait for a directory
    if not acme.directory.startswith("https://"):
        problems.append(f"acme.directory: expected an https:// URL, got \"{acme.directory}\"")
    if acme.contact and not acme.contact.startswith("mailto:"):
        problems.append(f"acme.contact: expected \"mailto:ADDRESS\", got \"{acme.contact}\"")
    for i, name in enumerate(acme.names):
        if not _is_domain(name) or "." not in name:
            problems.append(f"acme.names[{i}]: not a host name: {name!r}")
    if acme.directory_ca and not os.access(acme.directory_ca, os.R_OK):
        problems.append(f"acme.directory_ca: cannot read {acme.directory_ca}")
    if config.tls.certificate is not None:
        problems.append("acme: [tls] certificate and [acme] exclude each other; "
                        "remove one")
    if acme.challenge not in ("http-01", "tls-alpn-01"):
        problems.append(f'acme.challenge: expected "http-01" or "tls-alpn-01", got '
                        f'"{acme.challenge}"')
    elif acme.challenge == "tls-alpn-01" and config.processes > 1:
        problems.append("acme.challenge: tls-alpn-01 needs processes = 1 (the answer "
                        "lives in the process that asked)")


def _check_abuse(abuse: AbuseConfig, problems: list[str]) -> None:
    for key in ("trusted_networks", "refused_networks"):
        for i, net in enumerate(getattr(abuse, key)):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                problems.append(f"abuse.{key}[{i}]: not a network: {net!r}")
    for i, item in enumerate(abuse.dnsbl_zones):
        zone, _, weight = item.partition("=")
        if not _is_domain(zone) or (weight and not weight.removeprefix("-").isdigit()):
            problems.append(f"abuse.dnsbl_zones[{i}]: expected \"zone\" or "
                            f"\"zone=weight\", got {item!r}")
    for key in ("login_window", "lockout", "tracked_keys"):
        if getattr(abuse, key) == 0:
            problems.append(f"abuse.{key}: must be at least 1")
    if abuse.tracked_keys > 16_777_216:
        problems.append(f"abuse.tracked_keys: at most 16777216, got {abuse.tracked_keys}")


def _check_http(config: Config, problems: list[str]) -> None:
    if config.http.request_timeout == 0:
        problems.append("http.request_timeout: must be at least 1")
    for i, net in enumerate(config.http.metrics_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"http.metrics_networks[{i}]: not a network: {net!r}")
    token = config.http.metrics_token_file
    if token and not os.access(token, os.R_OK):
        problems.append(f"http.metrics_token_file: cannot read {token}")
    if config.mta_sts.mode not in ("enforce", "testing", "none"):
        problems.append(f'mta_sts.mode: expected "enforce", "testing" or "none", got '
                        f"{config.mta_sts.mode!r}")
    if not 0 < config.mta_sts.max_age <= 31_557_600:
        problems.append(f"mta_sts.max_age: between 1 and 31557600 seconds (RFC 8461 3.2), "
                        f"got {config.mta_sts.max_age}")


def _check_senderauth(config: Config, problems: list[str]) -> None:
    """[dns], [checks] and [dkim]."""
    for i, ns in enumerate(config.dns.nameservers):
        host, _, port = ns.rpartition(":") if ns.count(":") == 1 else (ns, "", "53")
        if not host or not port.isdigit():
            problems.append(f"dns.nameservers[{i}]: expected \"address[:port]\", got {ns!r}")
    if config.dns.timeout == 0:
        problems.append("dns.timeout: must be at least 1")
    if config.checks.temperror not in ("defer", "accept"):
        problems.append(f'checks.temperror: expected "defer" or "accept", got '
                        f"{config.checks.temperror!r}")
    for i, net in enumerate(config.checks.trusted_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"checks.trusted_networks[{i}]: not a network: {net!r}")
    if config.checks.time_budget == 0:
        problems.append("checks.time_budget: must be at least 1")
    if config.srs.domain and not _is_domain(config.srs.domain):
        problems.append(f"srs.domain: not a domain name: {config.srs.domain!r}")
    for i, entry in enumerate(config.dkim.external_keys):
        domain, _, rest = entry.partition(":")
        selector, _, path = rest.partition(":")
        if not (_is_domain(domain) and selector and path.startswith("/")):
            problems.append(f'dkim.external_keys[{i}]: expected "domain:selector:/path", '
                            f"got {entry!r}")
        elif not os.access(path, os.R_OK):
            problems.append(f"dkim.external_keys[{i}]: cannot read {path}")


def _endpoint_problem(desc: str) -> str | None:
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, desc)
    except Exception as e:  # the parser raises a variety of ValueErrors/KeyErrors
        return f"not a Twisted endpoint description: {desc!r} ({e})"
    return None


def _is_domain(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return bool(text) and all(
        0 < len(label) < 64 and all(c.isalnum() or c == "-" for c in label)
        and not label.startswith("-") and not label.endswith("-")
        for label in labels
    )
