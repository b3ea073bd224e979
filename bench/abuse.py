"""Abuse-control benchmark: what the shared counters (mailserver/abuse/table.py) cost.

    .venv/bin/python bench/abuse.py [--keys 100000] [--sessions 1500]

1. In-process: CPU microseconds per connection for the checks a connection makes
   (connection rate + concurrent gauge in, gauge out), per lock-out check and per
   failed-login count, and the resident memory of tracking --keys distinct addresses
   (the table is mapped; its touched pages count, as do Python's own objects).
2. The real server, port 25: SMTP sessions per second (banner, EHLO, MAIL, RCPT, RSET,
   QUIT; 20 at once) with the checks off, on, and on for an allowlisted client, in the
   same run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailserver.abuse.control import AbuseControl, open_table  # noqa: E402
from mailserver.config import config_from_dict  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--sessions", type=int, default=1500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = config_from_dict({"data_dir": tmp, "abuse": {"connections_per_minute": 1000}})
        before = rss_mib()
        control = AbuseControl(config, open_table(config))
        ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(args.keys)]
        cpu = time.process_time()
        for ip in ips:
            control.connection_opened("smtp", ip, 50)
            control.connection_closed(ip)
        per_conn = (time.process_time() - cpu) / len(ips) * 1e6
        cpu = time.process_time()
        for ip in ips:
            control.locked_until(ip)
        per_check = (time.process_time() - cpu) / len(ips) * 1e6
        cpu = time.process_time()
        for ip in ips[:20_000]:
            control.table.hit(control_key(ip), 900)
        per_fail = (time.process_time() - cpu) / 20_000 * 1e6
        after = rss_mib()
        print(f"{args.keys} distinct addresses, table of {config.abuse.tracked_keys} slots "
              f"({(config.abuse.tracked_keys * 72) / 2**20:.1f} MiB file)")
        print(f"  connection checks (rate + gauge in, gauge out): {per_conn:.1f} us CPU")
        print(f"  lock-out check (locked_until): {per_check:.1f} us CPU")
        print(f"  failed-login count: {per_fail:.1f} us CPU")
        print(f"  resident memory: {after - before:.1f} MiB more "
              f"(of it the address strings of this benchmark: "
              f"{sum(sys.getsizeof(i) for i in ips) / 2**20:.1f} MiB); "
              f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
    if args.sessions:
        server_rates(args.sessions)


async def _session(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"EHLO bench.test\r\n")
    while not (await reader.readline())[3:4] == b" ":
        pass
    for line in (b"MAIL FROM:<b@bench.test>", b"RCPT TO:<bob@example.org>", b"RSET",
                 b"QUIT"):
        writer.write(line + b"\r\n")
        reply = await reader.readline()
        assert reply[:1] == b"2", reply
    writer.close()


async def _sessions(port: int, count: int, parallel: int = 20) -> float:
    todo = iter(range(count))

    async def worker() -> None:
        for _ in todo:
            await _session(port)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return count / (time.perf_counter() - started)


def server_rates(sessions: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from server_harness import make_server

    on = {"connections_per_minute": 1_000_000, "smtp_messages_per_hour": 1_000_000,
          "smtp_recipients_per_hour": 1_000_000}
    cases = [("checks off", {"login_failures": 0, "unknown_recipients": 0}),
             ("checks on", on),
             ("checks on, client allowlisted", {**on, "trusted_networks": ["127.0.0.1/32"]})]
    with tempfile.TemporaryDirectory() as tmp:
        for name, abuse in cases:
            root = Path(tmp) / name.replace(" ", "_").replace(",", "")
            server = make_server(root, start=False, abuse=abuse,
                                 limits={"connections_per_ip": 1000})
            server.add_user("bob@example.org", "correct horse battery staple")
            server.start()
            try:
                asyncio.run(_sessions(server.ports["smtp"], 200))  # warm up
                rate = asyncio.run(_sessions(server.ports["smtp"], sessions))
            finally:
                server.stop()
            print(f"  port 25, {name}: {rate:.0f} sessions/s")


def control_key(ip: str) -> object:
    from mailserver.abuse.control import LOGIN_IP
    from mailserver.abuse.table import ip_key

    return ip_key(LOGIN_IP, ip)


if __name__ == "__main__":
    main()
