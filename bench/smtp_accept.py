"""SMTP acceptance and delivery benchmark: our server side by side with Postfix.

For each server, number of parallel connections and message size, an asyncio load
generator (bench/loadgen.py, PIPELINING, messages back to back on every connection) sends
a fixed number of messages to user@bench.test, and the benchmark reports:

  msgs/s (accept)     messages answered 250 after end-of-data, per second of load
  msgs/s (delivered)  messages per second until the last one is a file in the Maildir
                      (Postfix: queue -> qmgr -> virtual(8); ours: the same moment as 250)
  p50 / p99 ms        latency of one message, MAIL FROM written -> 250 after the final dot
  max RSS MiB         the largest sum of VmRSS over the server's process tree, sampled
                      every 100 ms (Postfix: master, smtpd, cleanup, qmgr, virtual, ...)
  CPU s/1000 msgs     utime+stime of the tree (incl. reaped children) from the start of
                      the load to the last delivery, per 1000 messages
  max PSS MiB         as RSS, with shared pages divided among the processes sharing them

Before the servers, the load generator runs against Postfix's smtp-sink (which accepts
and discards) to show it is not the bottleneck. Optionally smtp-source is run against
both servers as an independent cross-check of the acceptance rate.

Everything listens and connects on 127.0.0.1 only. The Postfix instance is a throw-away
one in a temp dir (bench/postfix_instance.py; bench/README.md lists its settings) and
needs root. Results are printed as Markdown and written to bench/results/smtp_accept.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import loadgen
import proctree
from ours_instance import OursError, OursInstance, plugin_available
from postfix_instance import PostfixError, PostfixInstance

HOST = "127.0.0.1"
SENDER = "loadgen@client.test"
RCPT = "user@bench.test"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "smtp_accept.md"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
DELIVERY_TIMEOUT = 120.0


# -- helpers -------------------------------------------------------------------------------


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def count_files(dirs: list[Path]) -> int:
    n = 0
    for d in dirs:
        try:
            with os.scandir(d) as it:
                n += sum(1 for _ in it)
        except FileNotFoundError:
            pass
    return n


def clear_dirs(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            with os.scandir(d) as it:
                for e in it:
                    os.unlink(e.path)
        except FileNotFoundError:
            pass


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or x != x:  # None or NaN
        return "n/a"
    return f"{x:,.{digits}f}"


# -- one measured point --------------------------------------------------------------------


@dataclass
class Point:
    server: str
    conns: int
    size: int
    messages: int
    accept_rate: float = 0.0
    delivered_rate: float | None = None
    p50: float = float("nan")
    p99: float = float("nan")
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    cpu_per_1000: float = 0.0
    ok: int = 0
    failed: int = 0
    delivered: int = 0
    loadgen_busy: float = 0.0  # % of one core used by the benchmark process
    errors: list[str] = field(default_factory=list)


class Server:
    """What the benchmark needs of a running server (Postfix or ours)."""

    def __init__(self, name: str, inst: PostfixInstance | OursInstance) -> None:
        self.name = name
        self.inst = inst
        self.port = inst.port
        self.maildir = inst.maildir

    @property
    def master_pid(self) -> int:
        return self.inst.master_pid

    @property
    def mail_dirs(self) -> list[Path]:
        return [self.maildir / "new", self.maildir / "cur"]

    def settle(self, timeout: float = 60) -> None:
        """Wait until nothing is queued, then empty the Maildir and flush the disk."""
        if isinstance(self.inst, PostfixInstance):
            deadline = time.monotonic() + timeout
            while not self.inst.queue_empty() and time.monotonic() < deadline:
                time.sleep(0.05)
        clear_dirs(self.mail_dirs)
        os.sync()
        time.sleep(0.2)

    def log_tail(self) -> str:
        return self.inst.log_tail()


async def _measure(server: Server, conns: int, size: int, n: int) -> Point:
    pt = Point(server.name, conns, size, n)
    started = asyncio.Event()
    sampler = proctree.TreeSampler(server.master_pid)
    with sampler:
        load = asyncio.create_task(
            loadgen.run_load(HOST, server.port, conns, n, size, SENDER, RCPT, started=started)
        )
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({load, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        delivered_at: float | None = None
        while True:
            target = load.result().ok if load.done() else n
            count = count_files(server.mail_dirs)
            if count >= target and (load.done() or count >= n):
                delivered_at = time.perf_counter()
                break
            if load.done() and time.perf_counter() - load.result().start > DELIVERY_TIMEOUT:
                break
            # Poll every 10 ms, and at once when the last reply is in.
            await asyncio.wait({load}, timeout=0.01)
        res = await load
    pt.ok, pt.failed = res.ok, res.failed
    if res.first_error:
        pt.errors.append(res.first_error)
    if not res.pipelining:
        pt.errors.append("server did not offer PIPELINING: sent in lock-step")
    pt.accept_rate = res.rate
    pt.loadgen_busy = busy(res)
    pt.p50, pt.p99 = res.percentile(50), res.percentile(99)
    pt.delivered = count_files(server.mail_dirs)
    if delivered_at is not None and res.ok and pt.delivered >= res.ok:
        # A message counts as delivered once it is both in the Maildir and answered 250.
        pt.delivered_rate = res.ok / (max(delivered_at - res.start, res.elapsed) or 1e-9)
    else:
        pt.errors.append(f"only {pt.delivered} of {res.ok} accepted messages reached the Maildir")
    u = sampler.usage
    pt.rss_mib = u.max_rss_kib / 1024
    pt.pss_mib = u.max_pss_kib / 1024
    pt.cpu_per_1000 = u.cpu_s / res.ok * 1000 if res.ok else float("nan")
    return pt


def median_point(points: list[Point]) -> Point:
    if len(points) == 1:
        return points[0]

    def med(get: Callable[[Point], float | None]) -> float | None:
        xs = [v for v in (get(p) for p in points) if v is not None]
        return statistics.median(xs) if xs else None

    first = points[0]
    out = Point(first.server, first.conns, first.size, first.messages)
    out.accept_rate = med(lambda p: p.accept_rate) or 0.0
    out.delivered_rate = med(lambda p: p.delivered_rate)
    out.p50 = med(lambda p: p.p50) or float("nan")
    out.p99 = med(lambda p: p.p99) or float("nan")
    out.rss_mib = med(lambda p: p.rss_mib) or 0.0
    out.pss_mib = med(lambda p: p.pss_mib) or 0.0
    out.cpu_per_1000 = med(lambda p: p.cpu_per_1000) or 0.0
    out.loadgen_busy = med(lambda p: p.loadgen_busy) or 0.0
    out.ok = sum(p.ok for p in points)
    out.failed = sum(p.failed for p in points)
    out.delivered = sum(p.delivered for p in points)
    out.errors = [e for p in points for e in p.errors]
    return out


def new_instance(name: str, root: Path, tag: str) -> PostfixInstance | OursInstance:
    if name == "postfix":
        return PostfixInstance(root / f"postfix-{tag}", free_port(22525))
    return OursInstance(root / f"{name}-{tag}", free_port(22526),
                        processes=ours_processes(name),
                        tree=BEFORE_TREE if name.startswith("before") else None)


#: --before: the tree the `before*` servers run from (PYTHONPATH), for A/B in one run.
BEFORE_TREE: str | None = None


def ours_name(processes: int, prefix: str = "ours") -> str:
    """`ours` is one process; `ours-2p` runs with `processes = 2` (worker processes),
    `ours-default` with `processes = 0` (one per CPU). `before*`: the --before tree."""
    if processes == 1:
        return prefix
    return f"{prefix}-default" if processes == 0 else f"{prefix}-{processes}p"


def ours_processes(name: str) -> int:
    suffix = name.partition("-")[2]
    if not suffix:
        return 1
    return 0 if suffix == "default" else int(suffix.removesuffix("p"))


def is_ours(name: str) -> bool:
    return name.startswith(("ours", "before"))


@contextmanager
def fresh_server(name: str, root: Path, tag: str, keep: bool) -> Iterator[Server]:
    """A newly started server with an empty spool and Maildir, warmed up.

    Every point gets its own instance, so that what one point leaves behind (Postfix's
    idle smtpd processes, a grown heap, a large new/ directory) does not weigh on the next.
    """
    inst = new_instance(name, root, tag)
    try:
        with inst:
            server = Server(name, inst)
            # Warm-up: Postfix spawns its daemons, ours imports and opens what it opens.
            warm = asyncio.run(loadgen.run_load(HOST, server.port, 5, 50, 4096, SENDER, RCPT))
            if warm.ok == 0:
                raise RuntimeError(f"warm-up: no message accepted: {warm.first_error}")
            server.settle()
            try:
                yield server
            except Exception as e:
                raise RuntimeError(f"{e}{server.log_tail()}") from e
            server.settle()
    finally:
        if not keep:
            inst.remove()


def print_point(pt: Point, tag: str = "") -> None:
    print(
        f"  {pt.server:9} conns={pt.conns:<3} size={size_label(pt.size):7} "
        f"accept={fmt(pt.accept_rate)}/s delivered={fmt(pt.delivered_rate)}/s "
        f"p50={fmt(pt.p50, 2)}ms p99={fmt(pt.p99, 2)}ms rss={fmt(pt.rss_mib)}MiB "
        f"cpu={fmt(pt.cpu_per_1000, 2)}s/1000{tag}"
        + (f"  !! {pt.failed} failed: {pt.errors[0]}" if pt.errors else ""),
        flush=True,
    )


def one_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    if not lines:
        return type(e).__name__
    return lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "")


# -- smtp-sink (load generator validation) and smtp-source (cross-check) --------------------


class Sink:
    """Postfix's smtp-sink on a free loopback port: accepts everything, keeps nothing."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sink:
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-c", f"{HOST}:{self.port}", "1000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("smtp-sink did not start")

    def measure(self, conns: int, size: int, n: int) -> loadgen.LoadResult:
        r = asyncio.run(loadgen.run_load(HOST, self.port, conns, n, size, SENDER, RCPT))
        print(
            f"  smtp-sink conns={conns:<3} size={size_label(size):7} "
            f"accept={fmt(r.rate)}/s p50={fmt(r.percentile(50), 2)}ms "
            f"loadgen busy={fmt(busy(r))}%",
            flush=True,
        )
        return r

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def busy(r: loadgen.LoadResult) -> float:
    """CPU of the benchmark process during a load, in percent of one core."""
    return r.loadgen_cpu_s / r.elapsed * 100 if r.elapsed > 0 else float("nan")


def run_points(
    servers: list[str],
    root: Path,
    args: argparse.Namespace,
    counts: dict[int, int],
    sink: Sink | None,
    notes: list[str],
) -> tuple[list[Point], list[tuple[int, int, loadgen.LoadResult]]]:
    """Every point, the servers one after the other at each point (and smtp-sink first),
    so that all of them see the same weather on a shared machine."""
    alive = list(servers)
    runs: dict[tuple[str, int, int], list[Point]] = {}
    sink_runs: dict[tuple[int, int], list[loadgen.LoadResult]] = {}
    for size in args.sizes:
        for conns in args.connections:
            for rep in range(args.repeat):
                tag = f" (run {rep + 1}/{args.repeat})" if args.repeat > 1 else ""
                if sink is not None:
                    r = sink.measure(conns, size, max(counts[size], 1000))
                    sink_runs.setdefault((conns, size), []).append(r)
                for name in list(alive):
                    key = (name, conns, size)
                    try:
                        with fresh_server(
                            name, root, f"c{conns}-s{size}-r{rep + 1}", args.keep
                        ) as server:
                            pt = asyncio.run(_measure(server, conns, size, counts[size]))
                    except (PostfixError, OursError, RuntimeError, OSError) as e:
                        if not any(k[0] == name for k in runs):
                            # The first point failed: this server does not work at all.
                            print(f"  {name}: not measured: {e}", flush=True)
                            notes.append(f"{name}: not measured: {one_line(e)}")
                            alive.remove(name)
                        else:
                            msg = f"{name} {conns} conns {size_label(size)}: run failed: {e}"
                            print("  " + msg, flush=True)
                            notes.append(
                                f"{name} {conns} conns {size_label(size)}: run failed: "
                                + one_line(e)
                            )
                        continue
                    print_point(pt, tag)
                    runs.setdefault(key, []).append(pt)
    points = [median_point(v) for k, v in runs.items()]
    order = {name: i for i, name in enumerate(servers)}
    points.sort(
        key=lambda p: (order[p.server], args.sizes.index(p.size), args.connections.index(p.conns))
    )
    sink_out = []
    for (conns, size), rs in sink_runs.items():
        rs = sorted(rs, key=lambda r: r.rate)
        sink_out.append((conns, size, rs[len(rs) // 2]))
    return points, sink_out


def run_smtp_source(
    server: Server, conns: int, size: int, n: int
) -> tuple[float, float | None, str]:
    """smtp-source's acceptance rate (wall clock of the whole run, connection set-up
    included) and, waiting for the Maildir, its delivered rate."""
    server.settle()
    cmd = [
        SMTP_SOURCE, "-d", "-s", str(conns), "-m", str(n), "-l", str(size),
        "-f", SENDER, "-t", RCPT, "-M", "loadgen.test", f"{HOST}:{server.port}",
    ]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    t1 = time.perf_counter()
    note = (
        "" if p.returncode == 0 else f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[:200]}"
    )
    delivered: float | None = None
    while time.perf_counter() - t1 < DELIVERY_TIMEOUT:
        if count_files(server.mail_dirs) >= n:
            delivered = n / (time.perf_counter() - t0)
            break
        time.sleep(0.01)
    got = count_files(server.mail_dirs)
    if got < n and not note:
        note = f"only {got} of {n} reached the Maildir"
    server.settle()
    return n / (t1 - t0), delivered, note


# -- report --------------------------------------------------------------------------------


def git_head() -> str:
    try:
        p = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return p.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def postfix_version() -> str:
    try:
        p = subprocess.run(
            ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return p.stdout.strip() or "unknown"
    except OSError:
        return "not installed"


def report(
    args: argparse.Namespace,
    counts: dict[int, int],
    sink: list[tuple[int, int, loadgen.LoadResult]],
    points: list[Point],
    cross: list[tuple[str, int, int, int, float, float | None, str]],
    notes: list[str],
    wall: float,
) -> str:
    L: list[str] = []  # noqa: N806 - the report as a list of lines
    L.append("# SMTP acceptance: ours vs Postfix")
    L.append("")
    L.append(
        f"Run {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {os.cpu_count()} CPUs, Linux "
        f"{platform.release()}, Python {platform.python_version()}, Postfix {postfix_version()}, "
        f"our tree at {git_head()}. Messages per point: "
        + ", ".join(f"{counts[s]} x {size_label(s)}" for s in args.sizes)
        + f"; {args.repeat} run(s) per point"
        + (", median shown" if args.repeat > 1 else "")
        + f"; total wall time {wall:.0f} s. Maildir on {args.tmpdir or tempfile.gettempdir()}."
    )
    L.append("")
    L.append(
        "| server | conns | size | msgs/s (accept) | msgs/s (delivered) | p50 ms | p99 ms "
        "| max RSS MiB | CPU s/1000 msgs | max PSS MiB |"
    )
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for p in points:
        L.append(
            f"| {p.server} | {p.conns} | {size_label(p.size)} | {fmt(p.accept_rate)} "
            f"| {fmt(p.delivered_rate)} | {fmt(p.p50, 2)} | {fmt(p.p99, 2)} | {fmt(p.rss_mib)} "
            f"| {fmt(p.cpu_per_1000, 2)} | {fmt(p.pss_mib)} |"
        )
    L.append("")
    by = {(p.server, p.conns, p.size): p for p in points}
    ratios = []
    ours_names = [n for n in dict.fromkeys(p.server for p in points) if is_ours(n)]
    for size in args.sizes:
        for conns in args.connections:
            for ours in ours_names:
                o, f = by.get((ours, conns, size)), by.get(("postfix", conns, size))
                if o and f and f.accept_rate:
                    d = (
                        f"{o.delivered_rate / f.delivered_rate:.2f}x"
                        if o.delivered_rate and f.delivered_rate
                        else "n/a"
                    )
                    ratios.append(
                        f"- {ours}/Postfix, {conns} conns, {size_label(size)}: accept "
                        f"{o.accept_rate / f.accept_rate:.2f}x, delivered {d}, "
                        f"p99 {o.p99 / f.p99:.2f}x, CPU/msg {o.cpu_per_1000 / f.cpu_per_1000:.2f}x"
                        if f.p99 and f.cpu_per_1000
                        else f"- {ours}/Postfix, {conns} conns, {size_label(size)}: accept "
                        f"{o.accept_rate / f.accept_rate:.2f}x, delivered {d}"
                    )
    if ratios:
        L.append("Ratios (ours / Postfix; above 1 is better for msgs/s, worse for p99 and CPU):")
        L.append("")
        L.extend(ratios)
        L.append("")
    failures = [p for p in points if p.errors]
    for p in failures:
        L.append(
            f"- **{p.server} {p.conns} conns {size_label(p.size)}**: {p.failed} failed, "
            f"{p.delivered} delivered of {p.ok} accepted; first: `{p.errors[0]}`"
        )
    if failures:
        L.append("")
    if sink:
        L.append(
            "Load generator check against Postfix's `smtp-sink` (accepts and discards), run "
            "just before the servers at each point. The generator is not the bottleneck when "
            "the sink rate is well above the servers' and the benchmark process is far from "
            "100 % of a core (busy = its CPU time / wall time, in % of one core):"
        )
        L.append("")
        L.append(
            "| conns | size | msgs/s | p50 ms | p99 ms | loadgen CPU s/1000 msgs "
            "| loadgen busy % | headroom vs fastest server |"
        )
        L.append("|--:|--:|--:|--:|--:|--:|--:|--:|")
        for conns, size, r in sink:
            best = max(
                (p.accept_rate for p in points if p.conns == conns and p.size == size), default=0.0
            )
            head = f"{r.rate / best:.1f}x" if best else "n/a"
            L.append(
                f"| {conns} | {size_label(size)} | {fmt(r.rate)} | {fmt(r.percentile(50), 2)} "
                f"| {fmt(r.percentile(99), 2)} | {fmt(r.loadgen_cpu_s / max(r.ok, 1) * 1000, 2)} "
                f"| {fmt(busy(r))} | {head} |"
            )
        L.append("")
    if points:
        worst = max(points, key=lambda p: p.loadgen_busy)
        L.append(
            f"During the server runs the benchmark process (load generator, Maildir polling, "
            f"/proc sampling) was at most {fmt(worst.loadgen_busy)} % busy "
            f"({worst.server}, {worst.conns} conns, {size_label(worst.size)})."
        )
        L.append("")
    if cross:
        L.append(
            "Cross-check with Postfix's `smtp-source` (no PIPELINING, `-d` keeps connections; "
            "rate over its whole wall time, connection set-up included):"
        )
        L.append("")
        L.append("| server | conns | size | msgs | msgs/s (accept) | msgs/s (delivered) | note |")
        L.append("|---|--:|--:|--:|--:|--:|---|")
        for name, conns, size, n, rate, dl, note in cross:
            L.append(
                f"| {name} | {conns} | {size_label(size)} | {n} | {fmt(rate)} | {fmt(dl)} | {note} |"
            )
        L.append("")
    for note in notes:
        L.append(f"- {note}")
    return "\n".join(L).rstrip() + "\n"


# -- main ----------------------------------------------------------------------------------


def int_list(s: str) -> list[int]:
    try:
        xs = [int(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e
    if not xs or min(xs) <= 0:
        raise argparse.ArgumentTypeError("expected positive integers")
    return xs


def int_list0(s: str) -> list[int]:
    """As int_list, 0 allowed (`processes = 0`)."""
    try:
        xs = [int(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e
    if not xs or min(xs) < 0:
        raise argparse.ArgumentTypeError("expected integers >= 0")
    return xs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="SMTP acceptance benchmark: ours vs a throw-away Postfix, on 127.0.0.1.",
        epilog="Default messages per point: 2000 for sizes <= 16 KiB, 500 above "
        "(--quick: 300 and 100). Needs root for the Postfix side.",
    )
    ap.add_argument("--quick", action="store_true", help="fewer messages per point")
    ap.add_argument("--messages", type=int, help="messages per point, for every size")
    ap.add_argument("--connections", type=int_list, default=[1, 10, 50], help="e.g. 1,10,50")
    ap.add_argument("--sizes", type=int_list, default=[4096, 65536], help="bytes, e.g. 4096,65536")
    ap.add_argument("--only", choices=["ours", "postfix"], help="benchmark one server only")
    ap.add_argument("--processes", type=int_list0, default=[1, 0],
                    help="our server's `processes` settings to measure, e.g. 1,0,2 "
                    "(0: the default, one per CPU)")
    ap.add_argument("--before", metavar="TREE",
                    help="also measure our server run from TREE (e.g. a `git worktree` of "
                    "the base commit) as `before*`, in the same run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per point; the median is reported")
    ap.add_argument(
        "--no-sink", action="store_true", help="skip the smtp-sink load generator check"
    )
    ap.add_argument(
        "--no-cross-check",
        dest="cross_check",
        action="store_false",
        help="skip the smtp-source cross-check (10 conns, first size, against each server)",
    )
    ap.add_argument(
        "--tmpdir", help="where the servers' spools and Maildirs go (default: $TMPDIR or /tmp)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("--output", default=str(RESULTS), help="Markdown file to write ('' = none)")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    if a.messages is not None and a.messages < 1:
        ap.error("--messages must be at least 1")
    return a


def message_counts(a: argparse.Namespace) -> dict[int, int]:
    if a.messages:
        return dict.fromkeys(a.sizes, a.messages)
    small, large = (300, 100) if a.quick else (2000, 500)
    return {s: small if s <= 16384 else large for s in a.sizes}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = message_counts(args)
    # A SIGTERM (make interrupted, CI timeout) unwinds through the finally blocks below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    notes: list[str] = []
    cross: list[tuple[str, int, int, int, float, float | None, str]] = []
    points: list[Point] = []
    sink_results: list[tuple[int, int, loadgen.LoadResult]] = []
    root = Path(tempfile.mkdtemp(prefix="smtp-bench-", dir=args.tmpdir))
    os.chmod(root, 0o755)  # Postfix's daemons (user postfix) and virtual(8) go through it
    print(f"temp dir {root}", flush=True)
    try:
        global BEFORE_TREE
        BEFORE_TREE = args.before
        ours = [ours_name(n) for n in args.processes]
        if args.before:
            ours = [ours_name(n, "before") for n in args.processes] + ours
        servers = {None: ["postfix", *ours], "ours": ours, "postfix": ["postfix"]}[args.only]
        if any(is_ours(s) for s in servers):
            why = plugin_available()
            if why:
                print(f"ours: not measured: {why}", flush=True)
                notes.append(f"ours: not measured: {one_line(OursError(why))}")
                servers = [s for s in servers if not is_ours(s)]
        with contextlib.ExitStack() as stack:
            sink: Sink | None = None
            if args.no_sink:
                pass
            elif os.path.exists(SMTP_SINK):
                sink = stack.enter_context(Sink())
            else:
                notes.append(
                    f"{SMTP_SINK} missing (apt-get install postfix): no load generator check"
                )
            points, sink_results = run_points(servers, root, args, counts, sink, notes)
        measured = [n for n in servers if any(p.server == n for p in points)]
        if args.cross_check and os.path.exists(SMTP_SOURCE):
            size = args.sizes[0]
            n = min(counts[size], 1000)
            for name in measured:
                try:
                    with fresh_server(name, root, "smtp-source", args.keep) as server:
                        rate, dl, note = run_smtp_source(server, 10, size, n)
                except (PostfixError, OursError, RuntimeError, OSError) as e:
                    rate, dl, note = float("nan"), None, f"failed: {one_line(e)}"
                print(f"  smtp-source {name}: 10 conns {size_label(size)}: {fmt(rate)}/s {note}")
                cross.append((name, 10, size, n, rate, dl, note))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = report(args, counts, sink_results, points, cross, notes, time.monotonic() - t_start)
    print()
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")
    return 0 if points else 1


if __name__ == "__main__":
    sys.exit(main())
