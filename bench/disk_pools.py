"""How long a delivery's commit waits while IMAP sessions saturate the disk threads.

Eight "sessions" each run a heavy SEARCH-like job in the disk executor the IMAP
listener uses (parse and decode a multi-megabyte message, over and over), plus as many
again queued; meanwhile one local delivery commits through MaildirDelivery, as the
SMTP session does before its 250. Run with the read pool (today) and without it (all
in one pool, as before docs/decisions/0011), in one process, on a temp dir:

    .venv/bin/python bench/disk_pools.py [--jobs 16] [--job-seconds 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailserver.core.diskio import make_disk  # noqa: E402
from mailserver.imap.message import ParsedMessage  # noqa: E402
from mailserver.interfaces import MailboxId  # noqa: E402
from mailserver.store.delivery import MaildirDelivery  # noqa: E402

MESSAGE = (b"Subject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           + b"".join(b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                      + b"caf=C3=A9 au lait " * 4000 + b"\r\n" for _ in range(20))
           + b"--b--\r\n")


def search_job(seconds: float) -> None:
    """CPU and memory like a SEARCH TEXT over a folder: parse, decode, fold."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ParsedMessage(MESSAGE).body_contains("needle")


async def one_run(reactor: object, read_pool: bool, jobs: int, seconds: float,
                  root: Path) -> float:
    disk = make_disk("pool", read_threads=8 if read_pool else 0)
    disk.startService()
    try:
        reads = [disk.reads.run(search_job, seconds) for _ in range(jobs)]
        await task.deferLater(reactor, 0.2, lambda: None)  # every read thread busy
        target = MaildirDelivery(root / ("split" if read_pool else "shared"),
                                 "bench.example", disk)
        txn = target.begin([MailboxId("example.org", "bob")])
        txn.write(b"Subject: urgent\n\nhello\n" * 100)
        start = time.monotonic()
        await txn.commit()
        waited = time.monotonic() - start
        await defer.gatherResults(reads)
        return waited
    finally:
        disk.stopService()


async def main(reactor: object) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--job-seconds", type=float, default=2.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-pools-"))
    try:
        print(f"| pools | commit latency with {args.jobs} search jobs of "
              f"{args.job_seconds:g} s queued |")
        print("|---|---|")
        for read_pool in (False, True):
            waited = await one_run(reactor, read_pool, args.jobs, args.job_seconds, root)
            label = "durable + reads (8 + 8)" if read_pool else "one pool of 8 (before)"
            print(f"| {label} | {waited * 1000:.0f} ms |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
