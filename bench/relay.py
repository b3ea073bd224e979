"""Relay throughput: how fast a full outbound queue drains to a remote MX.

Both servers relay the same N messages to the same receiver, Postfix's smtp-sink
(accepts everything, PIPELINING, no TLS; each message dumped to a file, on tmpfs unless
--sink-dir says otherwise, so we can count arrivals), on the same machine, in the same
script:

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
    git worktree add /tmp/before BASE
    sudo .venv/bin/python bench/relay.py --before /tmp/before     # A/B in one run
    .venv/bin/python bench/relay.py --no-postfix --runs 1 --messages 3000 \
        --profile out.txt && .venv/bin/python bench/profile_summary.py out.txt

Each round drains once on every server, back to back (ours-before, ours, Postfix), so
all see the same weather on a shared machine. Prints msgs/s (median of the runs), the
server's CPU seconds and the peak RSS of each server's process tree per run. Needs root
for Postfix; without Postfix only our numbers are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
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
    """smtp-sink dumping every transaction into its own file in one directory.

    The directory is on tmpfs (/dev/shm) when there is one: on a disk that others load,
    the sink's own file creations waited for the journal and capped every server at
    the sink's rate (3,000 messages from the load generator alone: 670 to 1,300
    msgs/s on the shared machine), so the bench measured the sink."""

    def __init__(self, root: Path, where: str = "/dev/shm") -> None:
        self.port = free_port()
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-relay-sink-", dir=where)) \
            if os.path.isdir(where) and os.access(where, os.W_OK) else root
        self.dump = self.scratch / "sink"
        self.dump.mkdir(parents=True)
        os.chmod(self.dump, 0o777)
        os.chmod(self.scratch, 0o755)
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
        shutil.rmtree(self.scratch, ignore_errors=True)


def message(i: int, size: int) -> bytes:
    prefix, rest = loadgen.make_message(size, RCPT, SENDER)
    data = prefix + b"%d" % i + rest
    return data[:-3].replace(b"\r\n", b"\n")  # stored form: LF, no final dot


# -- ours ----------------------------------------------------------------------------------


def start_profiler(pid: int, out: str, idle: bool = True) -> subprocess.Popen[bytes]:
    """py-spy on the server process, every thread, idle time included unless `idle` is
    False (the drain waits more than it computes): a flame graph if `out` ends in .svg,
    else py-spy's raw collapsed stacks, which bench/profile_summary.py sums per thread."""
    tool = Path(sys.executable).parent / "py-spy"
    if not tool.exists():
        sys.exit(f"--profile needs py-spy ({tool}): .venv/bin/pip install py-spy")
    fmt = "flamegraph" if out.endswith(".svg") else "raw"
    proc = subprocess.Popen([str(tool), "record", "-r", "200", "--nonblocking", "--threads",
                             *(["--idle"] if idle else []), "-f", fmt, "-o", out, "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached
    return proc


class Ours:
    """A throw-away server of ours relaying to the sink; `tree` runs another checkout
    (PYTHONPATH for the twistd process: the A/B of an older tree in the same run)."""

    def __init__(self, label: str, root: Path, sink: CountingSink, tree: str = "",
                 profile: str = "", profile_idle: bool = True) -> None:
        from server_harness import make_server

        self.label = label
        self.sink = sink
        self.profile = profile
        self.profile_idle = profile_idle
        self.spy: subprocess.Popen[bytes] | None = None
        saved = os.environ.get("PYTHONPATH")
        if tree:
            os.environ["PYTHONPATH"] = tree
        try:
            self.server = make_server(
                root / label, start=True, hostname="bench.local",
                domains={"local": ["bench.local"]}, listen={"smtp": f"tcp:0:interface={HOST}"},
                relay={"smarthost": f"{HOST}:{sink.port}",
                       "connections_per_destination": PER_DESTINATION,
                       "connections_total": 100})
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved

    def drain(self, n: int, size: int) -> float:
        from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id
        from mailserver.queue.spool import Spool

        spool = Spool(self.server.data_dir / "queue")
        self.sink.clear()
        ids = []
        for i in range(n):
            data = message(i, size)
            entry = QueueEntry(new_queue_id(), SENDER, [RecipientState(RCPT)], size=len(data))
            tmp = spool.tmp_path(entry.id, "msg")
            tmp.write_bytes(data)
            spool.commit(entry, tmp)
            ids.append(entry.id)
        pid = self.server.proc.pid if self.server.proc else 0
        if self.profile and self.spy is None:
            self.spy = start_profiler(pid, self.profile, self.profile_idle)
        cpu0 = proctree.cpu_seconds(pid)
        t0 = time.perf_counter()
        for queue_id in ids:
            spool.release(queue_id)
        _, peak = self.sink.wait(n, 600, pid)
        total = time.perf_counter() - t0
        while spool.ids():  # finished entries removed too
            time.sleep(0.02)
        print(f"  {self.label:8} {n / total:7.1f} msgs/s ({total:.2f} s; last removal "
              f"{time.perf_counter() - t0:.2f} s; server CPU "
              f"{proctree.cpu_seconds(pid) - cpu0:.2f} s) peak RSS {peak / 1024:.0f} MiB",
              flush=True)
        return n / total

    def close(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(60)
        self.server.stop()


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


class Postfix:
    label = "postfix"

    def __init__(self, root: Path, sink: CountingSink) -> None:
        self.sink = sink
        self.pf = RelayPostfix(root / "postfix", free_port(), sink.port)
        self.pf.__enter__()

    def drain(self, n: int, size: int) -> float:
        pf = self.pf
        self.sink.clear()
        result = asyncio.run(loadgen.run_load(HOST, pf.port, 10, n, size, SENDER, RCPT))
        if result.ok != n:
            raise PostfixError(f"injection failed: {result.first_error}")
        deadline = time.monotonic() + 120
        while pf.held() < n:
            if time.monotonic() > deadline:
                raise PostfixError(f"only {pf.held()} held{pf.log_tail()}")
            time.sleep(0.05)
        cpu0 = proctree.cpu_seconds(pf.master_pid)
        t0 = time.perf_counter()
        pf.release_all()
        _, peak = self.sink.wait(n, 600, pf.master_pid)
        total = time.perf_counter() - t0
        print(f"  {self.label:8} {n / total:7.1f} msgs/s ({total:.2f} s; server CPU "
              f"{proctree.cpu_seconds(pf.master_pid) - cpu0:.2f} s) "
              f"peak RSS {peak / 1024:.0f} MiB", flush=True)
        while not pf.queue_empty():
            time.sleep(0.05)
        return n / total

    def close(self) -> None:
        self.pf.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-postfix", action="store_true")
    parser.add_argument("--before", default="", metavar="TREE",
                        help="also run the server from this checkout (`git worktree add`), "
                        "as ours-before, in the same rounds")
    parser.add_argument("--sink-dir", default="/dev/shm", metavar="DIR",
                        help="where smtp-sink dumps the messages (default tmpfs; a disk "
                        "directory such as /tmp measures as before 2026-12-07)")
    parser.add_argument("--profile", default="", metavar="FILE",
                        help="py-spy our server over all its runs: FILE.svg a flame graph, "
                        "else raw collapsed stacks")
    parser.add_argument("--profile-cpu", action="store_true",
                        help="profile on-CPU samples only (py-spy without --idle)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-relay-", dir="/tmp"))
    print(f"relay drain: {args.messages} messages of {args.size} bytes, {args.runs} runs, "
          f"{os.cpu_count()} CPUs (shared, loaded machine); load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    servers: list[Ours | Postfix] = []
    rates: dict[str, list[float]] = {}
    try:
        with CountingSink(root, args.sink_dir) as sink:
            if args.before:
                servers.append(Ours("ours-before", root, sink, tree=args.before))
            servers.append(Ours("ours", root, sink,
                                profile=os.path.abspath(args.profile) if args.profile else "",
                                profile_idle=not args.profile_cpu))
            if not args.no_postfix and os.geteuid() == 0 and shutil.which("postsuper"):
                try:
                    servers.append(Postfix(root, sink))
                except PostfixError as e:
                    print(f"  postfix: {e}")
            # Each round runs every server once, back to back: the same weather for all.
            for run in range(args.runs):
                print(f" round {run + 1}", flush=True)
                for server in list(servers):
                    try:
                        rates.setdefault(server.label, []).append(
                            server.drain(args.messages, args.size))
                    except PostfixError as e:
                        print(f"  postfix: {e}")
                        servers.remove(server)
            for server in servers:
                server.close()
            servers = []
        print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
        print("| server | msgs/s (median) | runs |")
        print("|---|---|---|")
        for label, got in rates.items():
            print(f"| {label} | {statistics.median(got):.0f} | "
                  f"{', '.join(f'{r:.0f}' for r in got)} |")
        if "postfix" in rates and "ours" in rates:
            for label in [k for k in rates if k != "postfix"]:
                print(f"\n{label} / postfix = "
                      f"{statistics.median(rates[label]) / statistics.median(rates['postfix']):.2f}")
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
