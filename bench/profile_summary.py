"""Sum py-spy's raw collapsed stacks (`py-spy record -f raw --threads --idle`) per thread
group, into where each group's wall time went: idle (the reactor in epoll, a pool thread
waiting for a job) or the innermost function of ours (mailserver/) on the stack, with the
leaf frame it was in ("Spool.discard > Spool.locked" is discard waiting for the flock).

    .venv/bin/python bench/profile_summary.py profile.txt [--top 12]

Prints Markdown, one table per thread group (threads of one pool are summed).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

_THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\): ?|\s*\(\d+\)$")
_FRAME = re.compile(r"^(?P<func>\S+) \((?P<file>[^:]+):(?P<line>\d+)\)$")


def classify(frames: list[str]) -> str:
    """What one sample was doing, as a short label."""
    parsed = [m for m in (_FRAME.match(f) for f in frames) if m]
    if not parsed:
        return "?"
    leaf = parsed[-1]
    if leaf["func"] == "EPollReactor.doPoll":
        return "idle: reactor waiting in epoll"
    if any(m["func"] == "Queue.get" for m in parsed):
        return "idle: pool thread waiting for a job"
    ours = [m for m in parsed if m["file"].startswith("mailserver/")]
    if not ours:
        return "other: " + leaf["func"]
    inner = ours[-1]["func"]
    outer = ours[0]["func"]
    label = inner if inner == outer else f"{outer} .. {inner}"
    return label if leaf is ours[-1] else f"{label} > {leaf['func']}"


def summarize(path: str) -> dict[str, Counter[str]]:
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            thread = _THREAD.sub("", frames[0]).strip() or "?"
            group = re.sub(r"-\d+$", "", thread)
            groups[group][classify(frames[1:])] += int(count)
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    for group, counts in sorted(summarize(args.profile).items()):
        total = sum(counts.values())
        print(f"\n**{group}** ({total} samples)\n")
        print("| share | samples | doing |")
        print("|---|---|---|")
        for label, n in counts.most_common(args.top):
            print(f"| {100 * n / total:.1f} % | {n} | {label} |")


if __name__ == "__main__":
    main()
