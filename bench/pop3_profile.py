"""Profile our POP3 server under the bench/pop3.py RETR-all load: py-spy on the server.

Starts our server alone with `--clients` users on maildrops of `--size` messages (the
bench's messages, hard-linked), warms each maildrop once, then records py-spy while
RETR-all (every client downloads every message, 32 RETR in flight) runs `--repeat`
times, and prints each run's rate and the server's CPU seconds. `--out PREFIX` writes
PREFIX.txt (py-spy's collapsed stacks) and PREFIX-top.txt (the functions with the
most samples, self and total), which is what the closing notes quote; with
`--format flamegraph`, PREFIX.svg (a flame graph) instead.

    .venv/bin/python bench/pop3_profile.py --size 1000 --clients 10 \\
        --out bench/results/profiles/pop3-retr-10clients
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pop3
import proctree
from dovecot_instance import free_port
from pop3 import OursPop3, link_maildrop, login_uidl, make_master, run_retr


def summarize(collapsed: Path, top: int = 40) -> str:
    """The functions with the most samples in py-spy's collapsed stacks: self (the
    innermost frame) and total (anywhere in the stack, counted once per stack)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].rsplit(":", 1)[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    lines = [f"{samples} samples", "", "self %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="", help="output path prefix (no profile if empty)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--spy-args", default="", help="more py-spy options, e.g. --gil")
    ap.add_argument("--attach", default="",
                    help="another tool to attach instead of py-spy, {pid} = the server's, "
                         "e.g. 'strace -c -f -p {pid} -o /tmp/syscalls.txt'")
    ap.add_argument("--seen-first", action="store_true",
                    help="one RETR-all before recording (the renames for Seen)")
    ap.add_argument("--tls", action="store_true",
                    help="the clients use POP3S (our self-signed certificate)")
    ap.add_argument("--tree", default="", help="run ours from this source tree")
    ap.add_argument("--format", default="raw", choices=["raw", "flamegraph"],
                    help="py-spy's output: collapsed stacks (+ summary) or an SVG")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pop3prof-"))
    users = [f"u{i}" for i in range(args.clients)]
    try:
        master = make_master(tmp / "master", args.size)
        ours = OursPop3(tmp / "ours", users, tree=args.tree)
        port = ours.pop3_port
        if args.tls:
            port = ours.pop3s_port = free_port()
            pop3.CLIENT_TLS = ssl.create_default_context()
            pop3.CLIENT_TLS.check_hostname = False
            pop3.CLIENT_TLS.verify_mode = ssl.CERT_NONE
        ours.write_config()
        for u in users:
            link_maildrop(master, ours.mail_root() / u)
        with ours:
            pid = ours.master_pid
            for u in users:  # warm-up: page cache, name cache
                asyncio.run(login_uidl(port, u, args.size))
            if args.seen_first:
                # The first download renames every message (Seen, at QUIT); the
                # bench's median of 3 is two runs without that: profile those.
                r = asyncio.run(run_retr(port, users, args.size))
                print(f"first RETR-all (sets Seen): {r.rate:9.1f} msgs/s", flush=True)
            spy = None
            if args.out:
                tool = Path(sys.executable).parent / "py-spy"
                if not tool.exists():
                    print(f"--out needs py-spy ({tool}): .venv/bin/pip install py-spy",
                          file=sys.stderr)
                    return 2
                spy = [str(tool), "record", "-r", str(args.rate), "--nonblocking",
                       "--threads", *args.spy_args.split(), "-f", args.format,
                       "-o", args.out + (".txt" if args.format == "raw" else ".svg"),
                       "--pid", str(pid)]
            if args.attach:
                spy = args.attach.format(pid=pid).split()
            proc = subprocess.Popen(spy) if spy else None
            time.sleep(1 if spy else 0)
            for _ in range(args.repeat):
                mine = time.process_time()
                with proctree.TreeSampler(pid) as sampler:
                    r = asyncio.run(run_retr(port, users, args.size))
                mine = time.process_time() - mine
                print(f"RETR-all {args.clients} clients x {args.size}: {r.rate:9.1f} msgs/s "
                      f"{r.mb_s:6.1f} MB/s, server CPU {sampler.usage.cpu_s:.2f} s, "
                      f"client CPU {mine:.2f} s, "
                      f"RSS {sampler.usage.max_rss_kib / 1024:.0f} MiB", flush=True)
            if proc is not None:
                proc.send_signal(2)
                proc.wait()
                if args.format == "raw" and not args.attach:
                    Path(args.out + "-top.txt").write_text(summarize(Path(args.out + ".txt")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
