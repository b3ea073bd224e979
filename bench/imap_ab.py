"""Our IMAP server from two trees, interleaved: an A/B test that load on a shared machine
hits both sides alike.

bench/imap.py runs its servers one after the other, so a load spike on this shared
2-core machine lands on one of them (a phase moves 2-3x between runs minutes apart).
This starts our server from `--before DIR` (e.g. `git worktree add /tmp/x BASE`) and from
this tree, each on its own hard-linked copy of one folder, and runs every phase of
bench/imap.py on one and then the other, `--repeat` times: cold (the first run) and the
median of the warm ones, side by side. No Dovecot: the ratio to it is bench/imap.py's.

    .venv/bin/python bench/imap_ab.py --before /tmp/x-before --size 10000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from imap import Client, OursImap, link_maildir, make_master, phases, run_phase, timed_select

LOGIN = "u0@bench.test"


async def measure(ports: dict[str, int], count: int, repeat: int) -> dict[str, dict[str, list[float]]]:
    res: dict[str, dict[str, list[float]]] = {name: {} for name in ports}
    for name, port in ports.items():
        res[name]["login+SELECT cold"] = [await timed_select(port, LOGIN)]
    for _ in range(repeat):
        for name, port in ports.items():
            res[name].setdefault("login+SELECT", []).append(await timed_select(port, LOGIN))
    clients = {name: await Client.connect(port, LOGIN) for name, port in ports.items()}
    for label, command, check in phases(count):
        for name in ports:
            res[name][label + " cold"] = [await run_phase([clients[name]], command, check)]
        for _ in range(repeat):
            for name in ports:
                res[name].setdefault(label, []).append(
                    await run_phase([clients[name]], command, check))
    for client in clients.values():
        await client.logout()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the other tree (its mailserver/)")
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imap-ab-"))
    servers = {"before": OursImap(tmp / "before", ["u0"], Path(args.before).resolve()),
               "after": OursImap(tmp / "after", ["u0"])}
    try:
        master = make_master(tmp / "master", args.size)
        for server in servers.values():
            server.write_config()
            link_maildir(master, server.mail_root() / "u0")
            server.start()
        res = asyncio.run(measure({n: s.imap_port for n, s in servers.items()}, args.size,
                                  args.repeat))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| phase ({args.size:,} messages, 1 client) | before, ms | after, ms | after / before |")
    print("|---|--:|--:|--:|")
    for label in res["after"]:
        b, a = statistics.median(res["before"][label]), statistics.median(res["after"][label])
        print(f"| {label} | {b * 1000:.1f} | {a * 1000:.1f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
