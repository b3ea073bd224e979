"""What one login's password check costs, per argon2id parameter set, alone and with
N logins at once (threads, as the checker's pool runs them: argon2-cffi drops the GIL).

Prints, per (m, t): median ms of one verify alone, the wall time of N verifies started
together, and the RSS growth while they ran (each hash holds m KiB until it ends).

    .venv/bin/python bench/argon2_cost.py --concurrency 10
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import argon2
from argon2.low_level import Type

PARAMS = [(32768, 2), (19456, 2), (12288, 3), (47104, 1), (65536, 1), (9216, 4)]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # "m,t": one row, here
    args = ap.parse_args()
    if not args.one:  # each set in a fresh process: VmHWM only ever grows
        print(f"| m KiB | t | 1 verify, ms (median of {args.rounds}) | {args.concurrency} at "
              "once, ms wall | peak RSS growth MiB |")
        print("|---|---|---|---|---|", flush=True)
        for m, t in PARAMS:
            subprocess.run([sys.executable, __file__, "--one", f"{m},{t}", "--concurrency",
                            str(args.concurrency), "--rounds", str(args.rounds)], check=True)
        return 0
    m, t = (int(x) for x in args.one.split(","))
    hasher = argon2.PasswordHasher(time_cost=t, memory_cost=m, parallelism=1, type=Type.ID)
    value = hasher.hash("correct horse")
    alone = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        hasher.verify(value, "correct horse")
        alone.append(time.perf_counter() - t0)
    before = rss_kib()
    barrier = threading.Barrier(args.concurrency)

    def one(_: int) -> None:
        barrier.wait()
        hasher.verify(value, "correct horse")

    with ThreadPoolExecutor(args.concurrency) as pool:
        t0 = time.perf_counter()
        list(pool.map(one, range(args.concurrency)))
        wall = time.perf_counter() - t0
    grown = (rss_kib() - before) / 1024
    print(f"| {m} | {t} | {statistics.median(alone) * 1000:.1f} | {wall * 1000:.0f} | "
          f"{grown:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
