"""Abuse-control benchmark: what the shared counters (mailserver/abuse/table.py) cost.

    .venv/bin/python bench/abuse.py [--keys 100000]

Reports CPU microseconds per connection for the checks a port-25 or IMAP connection
makes (connection rate + concurrent gauge in, gauge out), per failed-login count, and
the resident memory of a process tracking --keys distinct client addresses (the table
is mapped; its touched pages count, as do Python's own objects).
"""

from __future__ import annotations

import argparse
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


def control_key(ip: str) -> object:
    from mailserver.abuse.control import LOGIN_IP
    from mailserver.abuse.table import ip_key

    return ip_key(LOGIN_IP, ip)


if __name__ == "__main__":
    main()
