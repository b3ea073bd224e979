"""ImapTest's stress mode against our server and a throw-away Dovecot, in one run.

Runs ../shared/tools/imaptest/run.sh (SUITE=0: the bounded stress run only; 10 clients,
30 s by default) against each server `--repeat` times, alternating, and reports the
median commands/s and the errors ImapTest reported. Both servers have the same users
(alice, bob) with the same password scheme ({PLAIN} in a passwd-file on both sides: this
measures IMAP, not the password hash; bench/argon2_cost.py measures that) and the same
mbox to APPEND from (generated once by run.sh, then reused). ImapTest's stress mode puts
all clients on one user's INBOX: they APPEND, FETCH, STORE, SEARCH, EXPUNGE the same
folder at once. run.sh empties that INBOX before every run.

`--before DIR` also runs our server from another tree (e.g. `git worktree add
/tmp/x-before BASE`), so ours-before, ours-after and Dovecot are measured in one run.
`--profile FILE` records py-spy on our server during one extra run (collapsed stacks to
FILE, top functions printed).

    .venv/bin/python bench/imaptest_stress.py                      # 3 x 30 s each
    .venv/bin/python bench/imaptest_stress.py --secs 10 --repeat 1 --no-dovecot
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dovecot_instance import DovecotError, DovecotInstance, free_port
from ours_instance import OursError, OursInstance, venv_bin

HOST = "127.0.0.1"
DOMAIN = "bench.test"
PASSWORD = "pw"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TOOLS = REPO.parent / "shared" / "tools" / "imaptest"
if not TOOLS.exists():  # a git worktree beside the main checkout
    TOOLS = REPO.parent.parent / "shared" / "tools" / "imaptest"
RESULTS = BENCH_DIR / "results" / "imaptest_stress.md"
USERS = ("alice", "bob")


class OursStress(OursInstance):
    """Our server with imap on a loopback port; alice and bob with {PLAIN} passwords."""

    def __init__(self, root: Path, code: Path | None = None, processes: int = 1) -> None:
        super().__init__(root, free_port(), HOST, processes)
        self.imap_port = free_port()
        self.code = code  # another tree's code (PYTHONPATH), None: this one
        self.limits = False

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text().replace(
            "[listen]\n", f'[listen]\nimap = "tcp:{self.imap_port}:interface={HOST}"\n')
        text += ("\n[auth]\nallow_plaintext_without_tls = true\n"
                 "\n[limits]\nconnections_per_ip = 1000\n"
                 "\n[abuse]\nlogin_failures = 100000\n")
        self.config.write_text(text)

    def add_user(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        users = self.data / "users"
        users.write_text("".join(f"{u}@{DOMAIN}:{{PLAIN}}{PASSWORD}\n" for u in USERS))
        os.chmod(users, 0o600)

    def start(self) -> None:
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(self.code or REPO)
        try:
            super().start()
        finally:
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old

    def login(self, user: str) -> str:
        return f"{user}@{DOMAIN}"


class DovecotStress(DovecotInstance):
    def login(self, user: str) -> str:
        return user


def run_stress(port: int, user: str, user2: str, secs: int, clients: int, mbox: Path,
               out: Path) -> tuple[float, int, str]:
    """(commands/s, errors, run.sh's summary) of one stress run."""
    env = dict(os.environ, SUITE="0", STRESS="1", SECS=str(secs), CLIENTS=str(clients),
               MBOX=str(mbox), OUT=str(out), USER2=user2)
    p = subprocess.run([str(TOOLS / "run.sh"), str(TOOLS / "imaptest"), HOST, str(port),
                        user, PASSWORD], env=env, capture_output=True, text=True,
                       timeout=secs + 300)
    text = p.stdout + p.stderr
    rate = re.search(r"all commands: \d+ in \S+s = ([\d.]+)/s", text)
    errors = re.search(r"stress errors reported by imaptest: (\d+)", text)
    if rate is None or errors is None:
        raise RuntimeError(f"run.sh gave no summary (exit {p.returncode}):\n{text[-2000:]}")
    return float(rate.group(1)), int(errors.group(1)), text


@contextmanager
def spy(pid: int, out: Path) -> Iterator[None]:
    """py-spy on `pid` (all threads, including idle ones off) while the block runs."""
    proc = subprocess.Popen([venv_bin("py-spy"), "record", "--pid", str(pid), "--rate", "200",
                             "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(timeout=120)


def top_functions(collapsed: Path, n: int = 25) -> str:
    """Self and total sample shares of the hottest frames of py-spy's raw output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        samples += k
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            total[f] = total.get(f, 0) + k
    lines = [f"{samples} samples; frame: self % / total %"]
    for f, k in sorted(total.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{own.get(f, 0) * 100 / samples:5.1f} {k * 100 / samples:5.1f}  {f}")
    lines.append("-- by self time")
    for f, k in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{k * 100 / samples:5.1f}  {f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secs", type=int, default=30)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="runs per server (median)")
    ap.add_argument("--before", default=None, help="also run ours from this tree")
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--processes", default="1",
                    help="ours with these `processes` settings, comma-separated (0: the "
                         "default, one per core)")
    ap.add_argument("--profile", default=None, help="py-spy collapsed stacks of ours to FILE")
    ap.add_argument("--output", default=str(RESULTS), help="Markdown file ('' = none)")
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="imapstress-", dir=args.tmpdir))
    mbox = tmp / "sample.mbox"
    servers: list[tuple[str, object]] = []
    if args.before:
        servers.append(("ours-before", OursStress(tmp / "before", Path(args.before))))
    for n in (int(p) for p in args.processes.split(",")):
        name = "ours" if n == 1 else f"ours, processes = {n}"
        servers.append((name, OursStress(tmp / f"ours{n}", processes=n)))
    if not args.no_dovecot:
        servers.append(("Dovecot", DovecotStress(tmp / "dovecot", tmp / "dovecot-mail",
                                                 {u: PASSWORD for u in USERS},
                                                 protocols=("imap",))))
    results: dict[str, list[tuple[float, int]]] = {name: [] for name, _ in servers}
    profile = ""
    try:
        for _, inst in servers:
            inst.start()  # type: ignore[attr-defined]
        for r in range(args.repeat + (1 if args.profile else 0)):
            for name, inst in servers:
                if r == args.repeat and name != "ours":
                    continue
                port = inst.imap_port if isinstance(inst, OursStress) else \
                    inst.ports["imap"]  # type: ignore[attr-defined]
                login = inst.login  # type: ignore[attr-defined]
                out = tmp / f"{name}-{r}"
                if r == args.repeat:  # the extra, profiled run
                    with spy(inst.master_pid, Path(args.profile)):  # type: ignore[attr-defined]
                        rate, errors, _ = run_stress(port, login("alice"), login("bob"),
                                                     args.secs, args.clients, mbox, out)
                    profile = top_functions(Path(args.profile))
                    print(f"  profiled run: {rate:.1f} commands/s\n{profile}", flush=True)
                    continue
                rate, errors, text = run_stress(port, login("alice"), login("bob"),
                                                args.secs, args.clients, mbox, out)
                results[name].append((rate, errors))
                print(f"  {name:12} run {r + 1}: {rate:8.1f} commands/s, {errors} errors",
                      flush=True)
                if errors:
                    print("\n".join(line for line in text.splitlines() if " x " in line), flush=True)
    except (OursError, DovecotError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for _, inst in servers:
            inst.stop()  # type: ignore[attr-defined]
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    rows = [f"| {name} | {statistics.median(r for r, _ in runs):.0f} | "
            f"{' / '.join(f'{r:.0f}' for r, _ in runs)} | {sum(e for _, e in runs)} |"
            for name, runs in results.items() if runs]
    table = "\n".join([
        f"ImapTest stress, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (shared; load average {load[0]:.1f} at the end), "
        f"{args.clients} clients on one INBOX, {args.secs} s per run, median of "
        f"{args.repeat}; same users and {{PLAIN}} passwords on both sides; \"ours\" is "
        "processes = 1",
        "",
        "| server | commands/s (median) | runs | errors (all runs) |",
        "|---|---|---|---|",
        *rows,
    ])
    print("\n" + table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
