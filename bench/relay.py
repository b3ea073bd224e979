"""Relay throughput: how fast a full outbound queue drains to a remote MX.

Both servers relay the same N messages to the same receiver, Postfix's smtp-sink
(accepts everything, PIPELINING, no TLS; each message dumped to a file so we can count
arrivals), on the same machine, in the same script:

  ours     a throw-away `twistd -n mailserver` with `relay.smarthost` = the sink.
           N entries are written into queue/held/ with the spool API (what a session's
           commit leaves), then released at once (renamed into queue/envelopes/, as
           a session's release does); the clock runs from the release to the N-th
           message at the sink.
  postfix  a throw-away Postfix (bench/postfix_instance.py) with relayhost = the sink.
           N messages are injected over SMTP with `smtpd_end_of_data_restrictions =
           check_client_access static:HOLD`, so they wait in the hold queue; the clock
           runs from `postsuper -H ALL; postqueue -f` to the N-th message at the sink.

So both measure queue -> scheduler -> SMTP client -> remote, with the messages already
durable on disk, and both record each delivery durably (ours rewrites the envelope,
Postfix marks the queue file). Connection limits are made equal (20 per destination,
Postfix's default_destination_concurrency_limit).

    sudo .venv/bin/python bench/relay.py --messages 1000 --size 4096 --runs 3

Prints msgs/s (median of the runs) and the peak RSS of each server's process tree.
Needs root for Postfix; without Postfix only our numbers are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

import loadgen  # noqa: E402
import proctree  # noqa: E402
from postfix_instance import PostfixError, PostfixInstance  # noqa: E402

HOST = "127.0.0.1"
SMTP_SINK = "/usr/sbin/smtp-sink"
RCPT = "user@sink.test"
SENDER = "loadgen@client.test"
PER_DESTINATION = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class CountingSink:
    """smtp-sink dumping every transaction into its own file in one directory."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.dump = root / "sink"
        self.dump.mkdir(parents=True)
        os.chmod(self.dump, 0o777)
        os.chmod(root, 0o755)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CountingSink:
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-d", f"{self.dump}/%H%M%S.", f"{HOST}:{self.port}",
             "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def count(self) -> int:
        return len(os.listdir(self.dump))

    def clear(self) -> None:
        for name in os.listdir(self.dump):
            os.unlink(self.dump / name)

    def wait(self, n: int, timeout: float, root_pid: int) -> tuple[float, int]:
        """Seconds until n messages arrived; and the peak RSS (KiB) of the server's
        process tree meanwhile."""
        start = time.perf_counter()
        peak = 0
        while self.count() < n:
            peak = max(peak, proctree.rss_kib([root_pid, *proctree.descendants(root_pid)]))
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"only {self.count()} of {n} arrived in {timeout}s")
            time.sleep(0.02)
        return time.perf_counter() - start, peak

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def message(i: int, size: int) -> bytes:
    prefix, rest = loadgen.make_message(size, RCPT, SENDER)
    data = prefix + b"%d" % i + rest
    return data[:-3].replace(b"\r\n", b"\n")  # stored form: LF, no final dot


# -- ours ----------------------------------------------------------------------------------


def run_ours(root: Path, sink: CountingSink, n: int, size: int, runs: int) -> list[float]:
    from server_harness import make_server

    from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id
    from mailserver.queue.spool import Spool

    server = make_server(
        root / "ours", start=True, hostname="bench.local",
        domains={"local": ["bench.local"]}, listen={"smtp": f"tcp:0:interface={HOST}"},
        relay={"smarthost": f"{HOST}:{sink.port}",
               "connections_per_destination": PER_DESTINATION, "connections_total": 100})
    rates = []
    try:
        spool = Spool(server.data_dir / "queue")
        for run in range(runs):
            sink.clear()
            ids = []
            for i in range(n):
                data = message(i, size)
                entry = QueueEntry(new_queue_id(), SENDER, [RecipientState(RCPT)],
                                   size=len(data))
                tmp = spool.tmp_path(entry.id, "msg")
                tmp.write_bytes(data)
                spool.commit(entry, tmp)
                ids.append(entry.id)
            pid = server.proc.pid if server.proc else 0
            t0 = time.perf_counter()
            for queue_id in ids:
                spool.release(queue_id)
            _, peak = sink.wait(n, 600, pid)
            total = time.perf_counter() - t0
            while spool.ids():  # finished entries removed too
                time.sleep(0.02)
            rates.append(n / total)
            print(f"  ours     run {run + 1}: {n / total:7.1f} msgs/s "
                  f"({total:.2f} s; last removal {time.perf_counter() - t0:.2f} s) "
                  f"peak RSS {peak / 1024:.0f} MiB", flush=True)
    finally:
        server.stop()
    return rates


# -- postfix -------------------------------------------------------------------------------


class RelayPostfix(PostfixInstance):
    """bench/postfix_instance.py's Postfix, relaying everything to the sink, holding
    whatever arrives until `postsuper -H ALL`."""

    def __init__(self, root: Path, port: int, sink_port: int) -> None:
        super().__init__(root, port)
        self.sink_port = sink_port

    def main_cf(self, uid: int, gid: int) -> str:
        return super().main_cf(uid, gid) + (
            f"relayhost = [{HOST}]:{self.sink_port}\n"
            "smtpd_end_of_data_restrictions = check_client_access static:HOLD\n"
            f"default_destination_concurrency_limit = {PER_DESTINATION}\n"
        )

    def held(self) -> int:
        return sum(len(f) for _, _, f in os.walk(self.queue / "hold"))

    def release_all(self) -> None:
        # -H moves them to the deferred queue; the flush makes qmgr try them now.
        subprocess.run(["/usr/sbin/postsuper", "-c", str(self.config), "-H", "ALL"],
                       check=True, capture_output=True)
        subprocess.run(["/usr/sbin/postqueue", "-c", str(self.config), "-f"],
                       check=True, capture_output=True)


def run_postfix(root: Path, sink: CountingSink, n: int, size: int, runs: int) -> list[float]:
    rates = []
    with RelayPostfix(root / "postfix", free_port(), sink.port) as pf:
        for run in range(runs):
            sink.clear()
            result = asyncio.run(loadgen.run_load(HOST, pf.port, 10, n, size, SENDER, RCPT))
            if result.ok != n:
                raise PostfixError(f"injection failed: {result.first_error}")
            deadline = time.monotonic() + 120
            while pf.held() < n:
                if time.monotonic() > deadline:
                    raise PostfixError(f"only {pf.held()} held{pf.log_tail()}")
                time.sleep(0.05)
            t0 = time.perf_counter()
            pf.release_all()
            _, peak = sink.wait(n, 600, pf.master_pid)
            total = time.perf_counter() - t0
            rates.append(n / total)
            print(f"  postfix  run {run + 1}: {n / total:7.1f} msgs/s ({total:.2f} s) "
                  f"peak RSS {peak / 1024:.0f} MiB", flush=True)
            while not pf.queue_empty():
                time.sleep(0.05)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-postfix", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-relay-", dir="/tmp"))
    print(f"relay drain: {args.messages} messages of {args.size} bytes, {args.runs} runs, "
          f"{os.cpu_count()} CPUs (shared, loaded machine)", flush=True)
    try:
        with CountingSink(root) as sink:
            ours = run_ours(root, sink, args.messages, args.size, args.runs)
            postfix: list[float] = []
            if not args.no_postfix and os.geteuid() == 0 and shutil.which("postsuper"):
                try:
                    postfix = run_postfix(root, sink, args.messages, args.size, args.runs)
                except PostfixError as e:
                    print(f"  postfix: {e}")
        print()
        print("| server | msgs/s (median) | runs |")
        print("|---|---|---|")
        print(f"| ours | {statistics.median(ours):.0f} | {', '.join(f'{r:.0f}' for r in ours)} |")
        if postfix:
            print(f"| postfix | {statistics.median(postfix):.0f} | "
                  f"{', '.join(f'{r:.0f}' for r in postfix)} |")
            print(f"\nours / postfix = {statistics.median(ours) / statistics.median(postfix):.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
