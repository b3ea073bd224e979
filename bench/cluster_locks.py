"""What the store's cluster-mode locks cost (docs/decisions/0039): one UID assignment
(UidList.assign of one new name: lock, re-read the tail, append, fdatasync, unlock) and
one quota change, with flock on one node and with the dotlock of cluster mode, on local
disk and on an sshfs mount of a loopback sshd (tests/sshfs_mount.py, mounted as a
cluster node must mount: no caching, synchronous writes).

    sudo python bench/cluster_locks.py [--before /path/to/old/tree] [-n 200]

--before: a checkout of the previous tree (git worktree add), measured in the same run
for the one-node flock path (the code path one node keeps). Medians of 3 runs, in
milliseconds per operation. Needs root (sshd, FUSE) for the sshfs rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

_WORKER = r"""
import json, os, sys, time
from pathlib import Path
directory, mode, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if mode == "dotlock":
    from mailserver.store import sharedfs
    sharedfs.configure(sharedfs.SharedStore("n1", directory, directory / "cache"))
from mailserver.store import quota
from mailserver.store.uidlist import UidList
for sub in ("new", "cur", "tmp"):
    (directory / sub).mkdir(parents=True, exist_ok=True)
uids = UidList(directory, directory)
uids.refresh()
start = time.perf_counter()
for i in range(n):
    uids.assign([f"{time.time_ns()}.M{i}P1.bench"])
assign = (time.perf_counter() - start) / n * 1000
quota.change(directory, 0, 1)
start = time.perf_counter()
for i in range(n):
    quota.change(directory, 100, 1)
change = (time.perf_counter() - start) / n * 1000
print(json.dumps({"assign_ms": assign, "quota_ms": change}))
"""


def run(tree: Path, directory: Path, mode: str, n: int) -> dict[str, float]:
    directory.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", _WORKER, str(directory), mode, str(n)],
                         env={**os.environ, "PYTHONPATH": str(tree)}, check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path)
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE / "tests"))
    from sshfs_mount import SshfsServer, available

    top = Path(tempfile.mkdtemp(prefix="cluster-locks-"))
    cases: list[tuple[str, Path, str, Path]] = []
    if args.before:
        cases.append(("before, flock, local disk", args.before, "flock", top / "local"))
    cases += [("after, flock, local disk", HERE, "flock", top / "local"),
              ("after, dotlock, local disk", HERE, "dotlock", top / "local")]
    server = None
    if available() is None:
        (top / "export").mkdir()
        server = SshfsServer(top / "sshd")
        server.start()
        mount = server.mount(top / "export", top / "mnt")
        cases += [("after, flock, sshfs (one node only!)", HERE, "flock", mount),
                  ("after, dotlock, sshfs", HERE, "dotlock", mount)]
    try:
        print(f"load: {os.getloadavg()}, n={args.n}, medians of 3 (ms per operation)")
        results: dict[str, list[dict[str, float]]] = {c[0]: [] for c in cases}
        for round_ in range(3):
            for label, tree, mode, base in cases:
                results[label].append(run(tree, base / f"{mode}-{round_}-{len(label)}",
                                          mode, args.n))
        for label, runs in results.items():
            assign = statistics.median(r["assign_ms"] for r in runs)
            change = statistics.median(r["quota_ms"] for r in runs)
            print(f"{label:40} uid assign {assign:7.3f}   quota change {change:7.3f}")
        print(f"load after: {os.getloadavg()}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
