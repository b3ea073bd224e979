"""Sender authentication: what the checks cost on port 25, and what signing costs.

1. In-process CPU per message (time.process_time over many runs, 4 KiB message):
   signing with Ed25519 and with RSA-2048 (dkimpy, relaxed/relaxed, oversigned
   headers), and verifying one signature of each type with the key in a warm cache.
2. Port-25 acceptance of our server, three instances in the same run: checks off,
   checks on with the DNS cache off (every message asks the loopback DNS server,
   tests/dns_server.py: SPF for HELO and MAIL FROM, iprev, DMARC), and checks on with
   the cache warm. msgs/s and p99 from bench/loadgen.py (the sender's messages are
   unsigned: DKIM verification is part 1's number).

Everything on 127.0.0.1. Results as Markdown on stdout and in
bench/results/senderauth.md. Run: .venv/bin/python bench/senderauth.py
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import loadgen  # noqa: E402
from dns_server import DNSServer  # noqa: E402
from ours_instance import OursInstance  # noqa: E402

from mailserver.config import Config, DomainsConfig  # noqa: E402
from mailserver.core.dns import SharedResolver  # noqa: E402
from mailserver.senderauth.dkimcheck import verify_dkim  # noqa: E402
from mailserver.senderauth.keys import KeyStore  # noqa: E402
from mailserver.senderauth.lookups import Lookups  # noqa: E402
from mailserver.senderauth.signing import sign_with  # noqa: E402

HOST = "127.0.0.1"
SENDER = "loadgen@client.test"


def message(size: int = 4096) -> bytes:
    prefix, rest = loadgen.make_message(size, "user@bench.test", SENDER)
    return (prefix + b"1" + rest[:-3]).replace(b"\r\n", b"\n")


def cpu_per_call(fn: Callable[[], object], n: int) -> float:
    """Milliseconds of CPU per call."""
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1000


def crypto_costs(tmp: Path, n: int) -> list[tuple[str, float, float]]:
    config = Config(hostname="bench.local", data_dir=tmp,
                    domains=DomainsConfig(local=("client.test",)))
    store = KeyStore(config)
    store.ensure()
    keys = {k.kind: k for k in store.signing_keys("client.test")}
    zone = {f"{k.selector}._domainkey.client.test": {"TXT": [k.record]}
            for k in keys.values()}
    msg = message()
    rows = []
    with DNSServer(zone) as dns:
        shared = SharedResolver([dns.nameserver], 2)
        for kind, key in sorted(keys.items()):
            signed = sign_with(msg, [key]) + msg
            sign = cpu_per_call(lambda key=key: sign_with(msg, [key]), n)

            def verify(signed: bytes = signed) -> None:
                result = verify_dkim(signed, Lookups(shared, 5), 5)
                assert result[0].result == "pass", result

            rows.append((kind, sign, cpu_per_call(verify, n)))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class ChecksInstance(OursInstance):
    def __init__(self, root: Path, extra: str) -> None:
        super().__init__(root, free_port())
        self.extra = extra

    def write_config(self) -> None:
        super().write_config()
        with self.config.open("a") as f:
            f.write(self.extra)


def acceptance(tmp: Path, conns: int, n: int) -> list[tuple[str, float, float]]:
    zone = {"client.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "TTL": 3600},
            "_dmarc.client.test": {"TXT": ["v=DMARC1; p=none"], "TTL": 3600},
            "1.0.0.127.in-addr.arpa": {"PTR": ["bench.local"], "TTL": 3600},
            "bench.local": {"A": ["127.0.0.1"], "TXT": ["v=spf1 a -all"], "TTL": 3600}}
    rows = []
    with DNSServer(zone) as dns:
        checks = '\n[checks]\ntrusted_networks = []\n[dkim]\nsign = false\n'
        variants = [
            ("checks off", "\n[checks]\nenabled = false\n[dkim]\nsign = false\n"),
            ("checks on, cache off", checks +
             f'[dns]\nnameservers = ["{dns.nameserver}"]\ncache_size = 0\n'),
            ("checks on, cache warm", checks +
             f'[dns]\nnameservers = ["{dns.nameserver}"]\n'),
        ]
        for label, extra in variants:
            with ChecksInstance(tmp / label.replace(" ", "_").replace(",", ""),
                                extra) as server:
                asyncio.run(loadgen.run_load(HOST, server.port, 2, 50, 4096, SENDER))
                r = asyncio.run(loadgen.run_load(HOST, server.port, conns, n, 4096, SENDER))
                if r.failed:
                    raise SystemExit(f"{label}: {r.failed} failed: {r.first_error}")
                rows.append((label, r.rate, r.percentile(99)))
                print(f"  {label}: {r.rate:.0f} msgs/s p99 {r.percentile(99):.1f} ms",
                      flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--crypto-runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-senderauth-") as tmp:
        crypto = crypto_costs(Path(tmp) / "keys", args.crypto_runs)
        accept = acceptance(Path(tmp), args.connections, args.messages)
    out = ["# Sender authentication (bench/senderauth.py)", "",
           "CPU per message, 4 KiB message, dkimpy:", "",
           "| key | sign ms CPU | verify ms CPU |", "|---|---:|---:|"]
    out += [f"| {kind} | {sign:.2f} | {verify:.2f} |" for kind, sign, verify in crypto]
    out += ["", f"Port-25 acceptance, 4 KiB, {args.connections} connections, "
            f"{args.messages} messages:", "",
            "| instance | msgs/s | p99 ms |", "|---|---:|---:|"]
    out += [f"| {label} | {rate:.0f} | {p99:.1f} |" for label, rate, p99 in accept]
    off = accept[0][1]
    out += ["", "Cost of the checks: " + ", ".join(
        f"{label}: {100 * (1 - rate / off):.0f} % fewer msgs/s"
        for label, rate, _ in accept[1:])]
    text = "\n".join(out) + "\n"
    print(text)
    (ROOT / "bench" / "results" / "senderauth.md").write_text(text)


if __name__ == "__main__":
    main()
