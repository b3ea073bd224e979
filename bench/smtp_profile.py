"""Profile our SMTP server under the smtp_accept.py load: py-spy on the server processes.

Starts our server from a throw-away config (bench/ours_instance.py), warms it up, then
runs the load generator (bench/loadgen.py: C connections, N messages of S bytes) while
`py-spy record` samples the twistd process (and, with `--processes` > 1, each worker:
one output per process, suffixed .pN). Prints the rate and the server's CPU per message
and writes py-spy's output (`--format flamegraph`: SVG; `raw`: collapsed stacks that
`--top` summarises by function, self and total).

    .venv/bin/python bench/smtp_profile.py --connections 50 --messages 4000 \\
        --out bench/results/profiles/smtp-50.svg
    .venv/bin/python bench/smtp_profile.py --format raw --out /tmp/s.txt --top 40
    .venv/bin/python bench/smtp_profile.py --tree /tmp/base-worktree ...   # A/B
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import loadgen
import proctree
from ours_instance import OursInstance
from smtp_accept import HOST, RCPT, SENDER, free_port


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the server's processes so far."""
    user = system = 0
    for p in proctree.descendants(pid):
        fields = proctree._stat_fields(p)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / proctree.CLK_TCK, system / proctree.CLK_TCK


def top(raw: Path, n: int) -> str:
    """Self and total samples per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        samples += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for frame in set(frames):
            total[frame] += k
    out = [f"{samples} samples", "", "self % | total % | function", "--:|--:|---"]
    for frame, k in own.most_common(n):
        out.append(f"{100 * k / samples:.1f} | {100 * total[frame] / samples:.1f} | {frame}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--out", help="py-spy output (none: no profile, just the rate)")
    ap.add_argument("--format", default="flamegraph", help="py-spy format: flamegraph, raw")
    ap.add_argument("--spy-args", default="", help="more py-spy options, e.g. --gil")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=0, help="with --format raw: print the top N")
    ap.add_argument("--tree", help="run our server from this source tree (PYTHONPATH)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="smtp-profile-") as tmp:
        inst = OursInstance(Path(tmp) / "ours", free_port(22526), processes=args.processes,
                            tree=args.tree)
        with inst:
            warm = asyncio.run(loadgen.run_load(HOST, inst.port, 5, 200, args.size, SENDER, RCPT))
            assert warm.ok, warm.first_error
            time.sleep(1)
            pids = proctree.descendants(inst.master_pid)  # the twistd process first
            spies = []
            if args.out:
                tool = Path(sys.executable).parent / "py-spy"
                for i, pid in enumerate(pids):
                    out = args.out if i == 0 else f"{args.out}.p{i}"  # .pN: worker N
                    spies.append(subprocess.Popen(
                        [str(tool), "record", "-r", str(args.rate), "--nonblocking", "--threads",
                         *args.spy_args.split(), "-f", args.format, "-o", out, "-p", str(pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(1)
            cpu0 = tree_cpu(inst.master_pid)
            r = asyncio.run(loadgen.run_load(HOST, inst.port, args.connections, args.messages,
                                             args.size, SENDER, RCPT))
            cpu1 = tree_cpu(inst.master_pid)
            user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            for spy in spies:
                spy.send_signal(2)
            for spy in spies:
                spy.wait(30)
    print(f"{r.ok} ok, {r.failed} failed ({r.first_error}); {r.rate:.1f} msgs/s, "
          f"p50 {r.percentile(50):.2f} ms, p99 {r.percentile(99):.2f} ms, "
          f"server CPU s/1000 msgs: user {1000 * user / max(r.ok, 1):.3f}, "
          f"system {1000 * system / max(r.ok, 1):.3f}")
    if args.out and args.format == "raw" and args.top:
        print(top(Path(args.out), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
