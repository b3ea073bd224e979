"""The independent judges: mailauth (Node.js, npm) and Perl's Mail::DKIM (Debian
libmail-dkim-perl), both installed by `make tools`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
MAILAUTH = ROOT / "tests" / "tools" / "node_modules" / ".bin" / "mailauth"

VERIFY_PL = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my ($port, $file) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ['127.0.0.1'],
    port => $port, recurse => 1, tcp_timeout => 5, udp_timeout => 5));
my $v = Mail::DKIM::Verifier->new();
open(my $fh, '<', $file) or die; binmode $fh;
while (<$fh>) { s/\r?\n\z/\r\n/; $v->PRINT($_); }
$v->CLOSE;
foreach my $sig ($v->signatures) {
    print join("\t", $sig->domain, $sig->selector, $sig->algorithm, $sig->result), "\n";
}
"""

SIGN_PL = r"""
use strict; use warnings;
use Mail::DKIM::Signer; use Mail::DKIM::TextWrap;
my ($key, $domain, $selector, $file) = @ARGV;
my $s = Mail::DKIM::Signer->new(Algorithm => 'rsa-sha256', Method => 'relaxed',
    Domain => $domain, Selector => $selector, KeyFile => $key,
    Headers => 'from:to:subject:date:message-id');
open(my $fh, '<', $file) or die; binmode $fh;
while (<$fh>) { s/\r?\n\z/\r\n/; $s->PRINT($_); }
$s->CLOSE;
print $s->signature->as_string, "\r\n";
"""


def mail_dkim_verify(port: int, message: Path) -> list[list[str]]:
    out = subprocess.run(["perl", "-e", VERIFY_PL, str(port), str(message)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def mail_dkim_sign(key: Path, domain: str, selector: str, message: Path) -> bytes:
    out = subprocess.run(["perl", "-e", SIGN_PL, str(key), domain, selector, str(message)],
                         capture_output=True, timeout=60, check=True).stdout
    return out.replace(b"\r\n", b"\n")


def dns_cache(zone: dict[str, dict[str, list[Any]]], path: Path) -> Path:
    """mailauth's --dns-cache file: {name: {TXT: [[strings...]], ...}}."""
    cache: dict[str, dict[str, Any]] = {}
    for name, records in zone.items():
        entry = cache.setdefault(name, {})
        for txt in records.get("TXT", []):
            data = txt.encode() if isinstance(txt, str) else "".join(txt).encode()
            entry.setdefault("TXT", []).append(
                [data[i:i + 255].decode() for i in range(0, len(data), 255)])
        for key in ("A", "AAAA", "PTR"):
            if key in records:
                entry[key] = list(records[key])
        if "MX" in records:
            entry["MX"] = [{"priority": p, "exchange": h} for p, h in records["MX"]]
    path.write_text(json.dumps(cache))
    return path


def mailauth_report(message: Path, cache: Path, ip: str, sender: str, helo: str
                    ) -> dict[str, Any]:
    out = subprocess.run([str(MAILAUTH), "report", "-n", str(cache), "-i", ip, "-f", sender,
                          "-e", helo, "-m", "mx.test", str(message)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def mailauth_sign(message: Path, key: Path, domain: str, selector: str,
                  algorithm: str) -> bytes:
    """The message signed by mailauth (`sign` prints the whole signed message)."""
    out = subprocess.run([str(MAILAUTH), "sign", "-a", algorithm, "-k", str(key), "-d",
                          domain, "-s", selector, str(message)],
                         capture_output=True, timeout=60, check=True).stdout
    return out.replace(b"\r\n", b"\n")
