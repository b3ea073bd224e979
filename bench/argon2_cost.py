"""What one login's password check costs, per argon2id parameter set, alone and with
N logins at once (threads, as the checker's pool runs them: argon2-cffi drops the GIL).

Prints, per (m, t): median ms of one verify alone, the wall time of N verifies started
together, and the RSS growth while they ran (each hash holds m KiB until it ends).

    .venv/bin/python bench/argon2_cost.py --concurrency 10 --threads 10 2

--threads: the sizes of the pool the N verifies share (10 = the reactor's default pool,
which the checker used until 2026-12-07; 2 = auth/hashing.py's one thread per core here).
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
if "--quick" in sys.argv:  # the old and the new default only
    sys.argv.remove("--quick")
    PARAMS = [(32768, 2), (19456, 2)]


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
    ap.add_argument("--threads", type=int, nargs="+", default=[10])
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # "m,t,threads": one row
    args = ap.parse_args()
    if not args.one:  # each set in a fresh process: VmHWM only ever grows
        print(f"| m KiB | t | pool threads | 1 verify, ms (median of {args.rounds}) | "
              f"{args.concurrency} at once, ms wall | peak RSS growth MiB |")
        print("|---|---|---|---|---|---|", flush=True)
        for m, t in PARAMS:
            for threads in args.threads:
                subprocess.run([sys.executable, __file__, "--one", f"{m},{t},{threads}",
                                "--concurrency", str(args.concurrency),
                                "--rounds", str(args.rounds)], check=True)
        return 0
    m, t, threads = (int(x) for x in args.one.split(","))
    hasher = argon2.PasswordHasher(time_cost=t, memory_cost=m, parallelism=1, type=Type.ID)
    value = hasher.hash("correct horse")
    alone = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        hasher.verify(value, "correct horse")
        alone.append(time.perf_counter() - t0)
    before = rss_kib()
    barrier = threading.Barrier(min(threads, args.concurrency))

    def one(index: int) -> None:
        if index < threads:  # the first wave starts together; the rest queue behind it
            barrier.wait()
        hasher.verify(value, "correct horse")

    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(one, range(args.concurrency)))
        wall = time.perf_counter() - t0
    grown = (rss_kib() - before) / 1024
    print(f"| {m} | {t} | {threads} | {statistics.median(alone) * 1000:.1f} | "
          f"{wall * 1000:.0f} | "
          f"{grown:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
