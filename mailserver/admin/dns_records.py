"""`mailserver dns-records [--check] DOMAIN` and `mailserver dkim ...`.

dns-records prints, in zone-file syntax, what a domain needs so that the big
providers accept its mail: MX, SPF, each DKIM selector's TXT (split into strings of
at most 255 octets, RFC 1035 3.3.14 / RFC 6376 3.6.2.2), DMARC, and advice on the PTR
of the server's address; and what lets clients and senders find the rest: SRV records
for each client service (RFC 6186, RFC 8314 5.1: configured ones point at us, the
others say "not offered" with target "."), and with the web listeners the
autoconfig and mta-sts names, the `_mta-sts` TXT whose id follows our policy (RFC 8461
3.1) and a TLS-RPT address (RFC 8460 3). --check asks the configured resolver ([dns])
for each record and says what is missing or different; exit 1 if anything is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailserver.address import domain_key
from mailserver.admin.commands import Admin, Refused
from mailserver.config import Config
from mailserver.core.dns import SharedResolver
from mailserver.http.mtasts import policy_id
from mailserver.senderauth.dmarc import parse_record
from mailserver.senderauth.keys import KeyStore
from mailserver.senderauth.lookups import Lookups, TempFail

TTL = 3600


@dataclass(frozen=True)
class Record:
    name: str
    rtype: str
    value: str  # the RDATA as one string (TXT: unsplit, unquoted)

    def zone_line(self) -> str:
        if self.rtype == "TXT":
            data = txt_rdata(self.value)
        else:
            data = self.value
        return f"{self.name}.\t{TTL}\tIN\t{self.rtype}\t{data}"


def txt_rdata(value: str) -> str:
    """Quoted character-strings of at most 255 octets, in parentheses if several."""
    raw = value.encode("ascii")
    pieces = [raw[i:i + 255].decode() for i in range(0, len(raw), 255)] or [""]
    quoted = [f'"{p}"' for p in pieces]
    return quoted[0] if len(quoted) == 1 else "( " + "\n\t\t".join(quoted) + " )"


def _domain(admin: Admin, domain: str) -> str:
    domain = domain_key(domain)
    if not admin.config.is_local_domain(domain):
        raise Refused(f"{domain} is not in domains.local")
    return domain


def wanted(admin: Admin, domain: str) -> list[Record]:
    config = admin.config
    host = config.hostname.rstrip(".")
    spf = "v=spf1 mx -all"
    if config.relay.source_address:
        kind = "ip6" if ":" in config.relay.source_address else "ip4"
        spf = f"v=spf1 mx {kind}:{config.relay.source_address} -all"
    records = [Record(domain, "MX", f"10 {host}."), Record(domain, "TXT", spf)]
    store = KeyStore(config)
    if domain in store.domains():
        if domain not in store.external:
            store.ensure()
        for key in store.published_keys(domain):
            records.append(Record(f"{key.selector}._domainkey.{domain}", "TXT", key.record))
    records.append(Record(f"_dmarc.{domain}", "TXT",
                          f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"))
    return records + discovery(config, domain)


#: RFC 6186 3.1 / RFC 8314 5.1 service names, each with the listener serving it.
SRV_SERVICES = (("_submissions._tcp", "submissions"), ("_submission._tcp", "submission"),
                ("_imaps._tcp", "imaps"), ("_imap._tcp", "imap"),
                ("_pop3s._tcp", "pop3s"), ("_pop3._tcp", "pop3"))


def discovery(config: Config, domain: str) -> list[Record]:
    """SRV records for the client services, and with an http(s) listener the names
    autoconfig and MTA-STS are fetched from (each a CNAME to our host)."""
    host = config.hostname.rstrip(".")
    enabled = config.listen.enabled()
    records = []
    for service, listener in SRV_SERVICES:
        port = listen_port(enabled.get(listener, ""))
        # RFC 6186 3.4 / RFC 2782: target "." says the service is not offered here.
        value = f"0 1 {port} {host}." if port else "0 0 0 ."
        records.append(Record(f"{service}.{domain}", "SRV", value))
    if "http" in enabled or "https" in enabled:
        records.append(Record(f"autoconfig.{domain}", "CNAME", f"{host}."))
    https = listen_port(enabled.get("https", ""))
    if https:
        # Outlook looks for its Autodiscover service here (MS-OXDSCLI 3.1.5.2).
        records.append(Record(f"_autodiscover._tcp.{domain}", "SRV",
                              f"0 1 {https} {host}."))
    if "https" in enabled and config.mta_sts.mode != "none":
        records.append(Record(f"mta-sts.{domain}", "CNAME", f"{host}."))
        records.append(Record(f"_mta-sts.{domain}", "TXT",
                              f"v=STSv1; id={policy_id(config)}"))
        records.append(Record(f"_smtp._tls.{domain}", "TXT",
                              f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"))
    return records


def listen_port(description: str) -> int | None:
    """The port of a Twisted endpoint description ("tcp:465", "tcp:port=993:interface=
    \\:\\:1", "ssl:995:..."), or None when it has none (a unix socket, or not
    configured). Colons escaped with a backslash (IPv6 addresses) separate nothing."""
    parts = re.split(r"(?<!\\):", description)
    if len(parts) < 2 or parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        key, _, value = part.partition("=")
        candidate = value if value and key == "port" else (key if not value else "")
        if candidate.isdigit():
            return int(candidate)
    return None


def dns_records(admin: Admin, domain: str, check: bool) -> None:
    domain = _domain(admin, domain)
    records = wanted(admin, domain)
    if not check:
        admin.say(f"; DNS records for {domain} (mailserver dns-records)")
        for record in records:
            admin.say(record.zone_line())
        host = admin.config.hostname
        admin.say(f"; PTR: the address {host} sends from needs a PTR record naming "
                  f"{host},\n; and {host} an A (AAAA) record with that address "
                  f"(forward-confirmed reverse DNS); your hosting provider sets the PTR.")
        return
    lookups = Lookups(SharedResolver.from_config(admin.config), budget=60)
    problems = 0
    for record in records:
        try:
            status = _check_one(lookups, record)
        except TempFail as e:
            status = f"lookup failed: {e}"
        ok = status == "ok"
        problems += not ok
        admin.say(f"{'ok' if ok else 'MISSING' if status == 'missing' else 'DIFFERENT'}"
                  f"\t{record.rtype}\t{record.name}" + ("" if ok else f"\t{status}"))
    try:
        ptr = _check_ptr(lookups, admin.config.hostname.rstrip("."))
    except TempFail as e:
        ptr = f"lookup failed: {e}"
    problems += ptr != "ok"
    admin.say(f"{'ok' if ptr == 'ok' else 'DIFFERENT'}\tPTR\t{admin.config.hostname}"
              + ("" if ptr == "ok" else f"\t{ptr}"))
    if problems:
        raise Refused(f"{problems} record(s) missing or different for {domain}")


def _check_one(lookups: Lookups, record: Record) -> str:
    if record.rtype in ("SRV", "CNAME"):
        found = [r.to_text().lower() for r in lookups.query(record.name, record.rtype)]
        if not found:
            return "missing"
        return "ok" if record.value.lower() in found else f"found {', '.join(found)}"
    if record.rtype == "MX":
        want = record.value.split()[1].rstrip(".").lower()
        found = [r.exchange.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
                 for r in lookups.query(record.name, "MX")]
        if not found:
            return "missing"
        return "ok" if want in found else f"MX is {', '.join(found)}, not {want}"
    texts = [t.decode("ascii", "replace") for t in lookups.txt(record.name)]
    if record.name.startswith("_dmarc."):
        dmarc = [t for t in texts if t.lower().startswith("v=dmarc1")]
        if not dmarc:
            return "missing"
        policy = parse_record(dmarc[0].encode()) if len(dmarc) == 1 else None
        if policy is None:
            return "several or invalid DMARC records"
        return "ok" if policy.p in ("quarantine", "reject") else (
            f"p={policy.p} asks receivers to do nothing with forged mail")
    if record.value.startswith(("v=STSv1", "v=TLSRPTv1")):
        version = record.value.split(";")[0]
        ours = [t for t in texts if t.startswith(version)]
        if not ours:
            return "missing"
        return "ok" if _tags(ours[0]) == _tags(record.value) else f'found "{ours[0]}"'
    if record.value.startswith("v=spf1"):
        spf = [t for t in texts if t.lower().startswith("v=spf1")]
        if not spf:
            return "missing"
        if len(spf) > 1:
            return "several SPF records (RFC 7208 4.5: permerror)"
        return "ok" if spf[0].split() == record.value.split() else f'found "{spf[0]}"'
    if not texts:
        return "missing"
    tags = _tags(record.value)
    return "ok" if any(_tags(t) == tags for t in texts) else "key differs"


def _tags(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        key, _, value = part.partition("=")
        out[key.strip()] = "".join(value.split())
    out.setdefault("k", "rsa")
    out.setdefault("v", "DKIM1")
    return out


def _check_ptr(lookups: Lookups, host: str) -> str:
    addresses = lookups.addresses(host, "A") + lookups.addresses(host, "AAAA")
    if not addresses:
        return f"{host} has no A or AAAA record"
    for address in addresses:
        names = lookups.ptr(address)
        if host.lower() not in names:
            return f"PTR of {address} is {', '.join(names) or 'missing'}, not {host}"
    return "ok"


# ---------------------------------------------------------------------- dkim commands


def dkim_list(admin: Admin) -> None:
    """Every domain's selectors; keys not made yet are made now, as at first start."""
    store = KeyStore(admin.config)
    store.ensure()
    for domain in store.domains():
        if domain in store.external:
            selector, path = store.external[domain]
            admin.say(f"{domain}\texternal\t{selector}\t{path}")
            continue
        for state in ("active", "pending", "retired"):
            for selector in store.state(domain, state):
                admin.say(f"{domain}\t{state}\t{selector}")


def dkim_rotate(admin: Admin, domain: str) -> None:
    domain = _domain(admin, domain)
    store = _own_keys(admin, domain)
    made = store.rotate(domain)
    admin.say(f"{domain}: new selectors {', '.join(made)} are pending: publish their "
              f"records (`mailserver dns-records {domain}`), then run `mailserver dkim "
              f"activate {domain}`")


def dkim_activate(admin: Admin, domain: str, force: bool) -> None:
    """Pending keys sign from now on, once their records are published."""
    domain = _domain(admin, domain)
    store = _own_keys(admin, domain)
    pending = store.state(domain, "pending")
    if not pending:
        raise Refused(f"{domain}: no pending keys (run `mailserver dkim rotate {domain}`)")
    if not force:
        lookups = Lookups(SharedResolver.from_config(admin.config), budget=30)
        for selector in pending:
            key = store.load(domain, selector)
            record = Record(f"{selector}._domainkey.{domain}", "TXT", key.record)
            try:
                status = _check_one(lookups, record)
            except TempFail as e:
                status = f"lookup failed: {e}"
            if status != "ok":
                raise Refused(f"{record.name}: {status}; publish it first (or --force)")
    active, retired = store.activate(domain)
    admin.say(f"{domain}: now signing with {', '.join(active)}; retired "
              f"{', '.join(retired) or 'none'} (keep their records until mail signed "
              f"with them has arrived, then `mailserver dkim forget {domain} SELECTOR`)")


def dkim_forget(admin: Admin, domain: str, selector: str) -> None:
    domain = _domain(admin, domain)
    try:
        _own_keys(admin, domain).forget(domain, selector)
    except ValueError as e:
        raise Refused(str(e)) from None
    admin.say(f"{domain}: {selector} forgotten; remove its DNS record")


def _own_keys(admin: Admin, domain: str) -> KeyStore:
    store = KeyStore(admin.config)
    if domain not in store.domains():
        raise Refused(f"{domain}: listed in dkim.unsigned_domains")
    if domain in store.external:
        raise Refused(f"{domain}: uses an external key (dkim.external_keys)")
    store.ensure()
    return store
