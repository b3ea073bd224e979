#!/usr/bin/env python3
"""Measure durable-delivery strategies: thread pool vs group commit, by thread count.

Delivers --messages messages of --size bytes through MaildirDelivery (the real code:
write, fsync, link, fsync new/), --concurrency transactions at a time, into
--mailboxes Maildirs, for each strategy of mailserver.core.diskio and each thread
count; prints msgs/s and p50/p99 commit latency. The decision it informed is
docs/decisions/0002-durable-delivery.md.

    .venv/bin/python bench/fsync_strategies.py                 # the 0002 run
    .venv/bin/python bench/fsync_strategies.py --dir /srv/mail --threads 4,8 --repeat 5

Run it on the file system the server will use (--dir): fsync cost is all that matters.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402

from mailserver.core.diskio import make_disk  # noqa: E402
from mailserver.interfaces import MailboxId  # noqa: E402
from mailserver.store.delivery import MaildirDelivery  # noqa: E402
from mailserver.store.maildir import create_maildir  # noqa: E402

STRATEGIES = {
    "pool": "thread pool, dir fsyncs group-committed per directory",
    "pool-plain": "thread pool, one dir fsync per commit",
    "batch": "reactor-side batches: all stages, then one fsync per dir",
}


def make_message(size: int) -> bytes:
    head = b"From: bench@example.com\nTo: user@example.org\nSubject: bench\n\n"
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_one(args: argparse.Namespace, strategy: str, threads: int) -> dict[str, float]:
    """One measurement on a fresh directory: throughput and commit latencies."""
    base = Path(tempfile.mkdtemp(prefix="fsync-bench-", dir=args.dir))
    mail_dir = base / "mail"
    try:
        mailboxes = [MailboxId("example.org", f"user{i}") for i in range(args.mailboxes)]
        for mailbox in mailboxes:
            create_maildir(mail_dir, mailbox)
        disk = make_disk(strategy, threads)
        disk.startService()
        target = MaildirDelivery(mail_dir, "bench.example.org", disk)
        message = make_message(args.size)
        latencies: list[float] = []
        remaining = iter(range(args.messages))

        async def worker() -> None:
            for n in remaining:
                rcpts = [mailboxes[(n + k) % len(mailboxes)] for k in range(args.recipients)]
                txn = target.begin(rcpts)
                txn.write(message)
                started = time.perf_counter()
                await txn.commit()
                latencies.append(time.perf_counter() - started)

        started, cpu = time.perf_counter(), os.times()
        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(args.concurrency)])
        elapsed = time.perf_counter() - started
        cpu_after = os.times()
        cpu_used = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
        disk.stopService()
        delivered = sum(len(os.listdir(mail_dir / "example.org" / m.localpart / "new"))
                        for m in mailboxes)
        assert delivered == args.messages * args.recipients, delivered
        return {
            "rate": args.messages / elapsed,
            "p50": percentile(latencies, 0.50) * 1000,
            "p99": percentile(latencies, 0.99) * 1000,
            "cpu": cpu_used / args.messages * 1000,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def main(reactor: object, args: argparse.Namespace) -> None:
    print(f"{args.messages} messages x {args.size} B, {args.concurrency} concurrent, "
          f"{args.mailboxes} mailboxes, {args.recipients} recipient(s) each, "
          f"dir={args.dir or tempfile.gettempdir()}, best of {args.repeat}")
    print(f"{'strategy':<11} {'threads':>7} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'cpu ms/msg':>10}")
    # Rounds outermost, so every cell is sampled across the same stretches of time: on a
    # shared or noisy machine that spreads the noise evenly; the best round is kept.
    cells = [(s, t) for s in args.strategies for t in args.threads]
    results: dict[tuple[str, int], list[dict[str, float]]] = {cell: [] for cell in cells}
    for _ in range(args.repeat):
        for strategy, threads in cells:
            results[strategy, threads].append(await run_one(args, strategy, threads))
    for strategy, threads in cells:
        best = max(results[strategy, threads], key=lambda r: r["rate"])
        print(f"{strategy:<11} {threads:>7} {best['rate']:>8.0f} {best['p50']:>8.2f} "
              f"{best['p99']:>8.2f} {best['cpu']:>10.2f}", flush=True)
    print()
    for name, text in STRATEGIES.items():
        if name in args.strategies:
            print(f"  {name:<11} {text}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--recipients", type=int, default=1)
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")],
                        default=[2, 4, 8, 16])
    parser.add_argument("--strategies", type=lambda s: s.split(","),
                        default=list(STRATEGIES))
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each cell's best kept")
    parser.add_argument("--dir", default=None, help="where to put the Maildirs")
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
