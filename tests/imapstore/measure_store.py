"""Timings of the IMAP store on big folders (not a test: run it by hand).

    .venv/bin/python tests/imapstore/measure_store.py [1000 10000 100000]

Builds a Maildir of N messages in cur/ (names as our delivery writes them), then times:
first SELECT ever (UIDs assigned), cold SELECT (new process state, UID list and index
on disk), warm SELECT (another session holds the folder), sync after one delivery,
header of every message (cold: files; warm: index), read of every message, STORE
+FLAGS \\Seen on all, and the same STORE again (no change). Median of 3 where the
operation can be repeated. The bench/ IMAP benchmark measures the wire end to end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from imapstore_helpers import ALICE, deliver, message  # noqa: E402

from mailserver.store.maildir import create_maildir, unique_name  # noqa: E402
from mailserver.store.registry import drop_idle_states  # noqa: E402
from mailserver.store.userstore import UserStore  # noqa: E402


def build(root: Path, count: int) -> None:
    body = b"Some text of a typical message body.\n" * 40
    for i in range(count):
        data = message(f"message {i}", body)
        name = unique_name(len(data), len(data) + data.count(b"\n"))
        with open(root / "cur" / (name + ":2,"), "wb") as f:
            f.write(data)


#: time.process_time (CPU of this process) by default: the machine is shared and
#: loaded, and wall-clock times swing by 3x with the neighbours' load.
CLOCK = time.process_time


def ms(fn: Callable[[], object], repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        times.append((CLOCK() - start) * 1000)
    return statistics.median(times)


def measure(count: int) -> dict[str, float]:
    top = Path(tempfile.mkdtemp(prefix="measure-store-"))
    try:
        root = create_maildir(top / "mail", ALICE)
        build(root, count)
        time.sleep(1.2)  # let the directories settle (see folderstate: _SETTLE_NS)
        store = UserStore(root)
        out: dict[str, float] = {}
        out["select first ever"] = ms(lambda: store.select("INBOX").close())
        drop_idle_states()

        def cold() -> None:
            drop_idle_states()
            store.select("INBOX").close()
        out["select cold"] = ms(cold, 3)
        holder = store.select("INBOX")
        out["select warm"] = ms(lambda: store.select("INBOX").close(), 3)
        view = store.select("INBOX")
        out["sync, nothing new"] = ms(view.sync, 3)
        deliver(root)
        out["sync after 1 delivery"] = ms(view.sync)
        uids = [m.uid for m in view.messages]
        out["fetch flags (walk infos)"] = ms(
            lambda: [(m.uid, m.flags, m.size, m.internal_date) for m in view.messages], 3)
        out["headers, cold (files)"] = ms(lambda: [view.header(u) for u in uids])
        view.close()
        holder.close()
        drop_idle_states()
        view = store.select("INBOX")
        out["headers, warm (index)"] = ms(lambda: [view.header(u) for u in uids], 3)
        out["read all bodies"] = ms(lambda: [view.read(u) for u in uids])
        out["store +\\Seen all"] = ms(lambda: view.store(uids, "+", ["\\Seen"]))
        out["store +\\Seen all again"] = ms(lambda: view.store(uids, "+", ["\\Seen"]), 3)
        out["sync after own store"] = ms(view.sync)
        out["status"] = ms(lambda: store.status("INBOX"), 3)
        view.close()
        return out
    finally:
        drop_idle_states()
        shutil.rmtree(top, ignore_errors=True)


def main() -> None:
    global CLOCK
    args = sys.argv[1:]
    if "--wall" in args:
        CLOCK = time.perf_counter
        args.remove("--wall")
    counts = [int(a) for a in args] or [1000, 10000, 100000]
    results = {n: measure(n) for n in counts}
    names = list(next(iter(results.values())))
    clock = "wall" if CLOCK is time.perf_counter else "CPU"
    print(f"{clock + ' ms':28}" + "".join(f"{n:>12,}" for n in counts))
    for name in names:
        print(f"{name:28}" + "".join(f"{results[n][name]:12.1f}" for n in counts))
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
