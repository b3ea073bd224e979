"""Profile our IMAP server under the bench/imap.py load: py-spy on the server process.

Starts our server alone on a folder of `--size` messages for `--clients` users, runs each
phase once (cold: its time and CPU are printed too), then records py-spy while the phases run `--repeat` more
times (`--cold`: from the first login on, so the cold phases are in it), and prints each phase's warm wall time, the server's CPU time (all threads) and the
client's during it. The flame graph (SVG) and py-spy's raw
collapsed stacks go to `--out`; `--phases` picks phases by a substring of their label.

    .venv/bin/python bench/imap_profile.py --size 10000 --clients 10 --out bench/results/x.svg
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proctree
from imap import Client, OursImap, link_maildir, make_master, phases, run_phase


def _cpu(pid: int) -> float:
    """utime + stime of `pid` and of its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _warm(port: int, pid: int, logins: list[str], count: int, wanted: list[str], repeat: int,
                spy: list[str] | None, cold: bool = False) -> dict[str, list[float]]:
    proc = subprocess.Popen(spy) if spy and cold else None
    await asyncio.sleep(1 if proc else 0)
    clients = [await Client.connect(port, u) for u in logins]
    chosen = [p for p in phases(count) if not wanted or any(w in p[0] for w in wanted)]
    out: dict[str, list[float]] = {}
    for label, command, check in chosen:  # cold: fills the caches
        cpu0 = _cpu(pid)
        out[label + " (cold)"] = [await run_phase(clients, command, check)]
        out[label + " (cold) cpu"] = [_cpu(pid) - cpu0]
    if not cold:
        proc = subprocess.Popen(spy) if spy else None
        await asyncio.sleep(1 if spy else 0)
    for _ in range(repeat):
        for label, command, check in chosen:
            cpu0, mine0 = _cpu(pid), time.process_time()
            out.setdefault(label, []).append(await run_phase(clients, command, check))
            out.setdefault(label + " cpu", []).append(_cpu(pid) - cpu0)
            out.setdefault(label + " client cpu", []).append(time.process_time() - mine0)
    if proc is not None:
        proc.send_signal(2)
        proc.wait()
    for c in clients:
        await c.logout()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--phases", default="", help="comma-separated label substrings")
    ap.add_argument("--out", default="", help="output path prefix (no profile if empty)")
    ap.add_argument("--format", default="flamegraph", help="py-spy format: flamegraph, raw")
    ap.add_argument("--spy-args", default="", help="more py-spy options, e.g. --gil")
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--cold", action="store_true",
                    help="record from the first login (the cold phases) instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imapprof-"))
    users = [f"u{i}" for i in range(args.clients)]
    try:
        master = make_master(tmp / "master", args.size)
        ours = OursImap(tmp / "ours", users)
        ours.write_config()
        for u in users:
            link_maildir(master, ours.mail_root() / u)
        with ours:
            pids = [ours.master_pid, *proctree.descendants(ours.master_pid)]
            spy = None
            if args.out:
                tool = Path(sys.executable).parent / "py-spy"
                if not tool.exists():
                    print(f"--out needs py-spy ({tool}): .venv/bin/pip install py-spy",
                          file=sys.stderr)
                    return 2
                spy = [str(tool), "record", "-r",
                       str(args.rate), "--nonblocking", "--threads", *args.spy_args.split(), "-f", args.format, "-o", args.out,
                       "--pid", str(pids[-1])]
            t0 = time.perf_counter()
            got = asyncio.run(_warm(ours.imap_port, pids[-1], [ours.login_name(u) for u in users],
                                    args.size, [w for w in args.phases.split(",") if w],
                                    args.repeat, spy, args.cold))
            print(f"{args.clients} clients, {args.size} messages, "
                  f"{time.perf_counter() - t0:.1f} s")
            for label, times in got.items():
                print(f"  {label:22} " + " ".join(f"{t * 1000:8.1f}" for t in times) + " ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
