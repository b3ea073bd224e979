"""POP3 benchmark: our server beside Dovecot's pop3, on identical Maildirs, in one run.

Scenarios (each for every maildrop size and client count given):

  login+UIDL   connect, USER/PASS, UIDL (the whole list), QUIT: what a client polling
               for new mail does. Reported as sessions/s and per-session latency.
  RETR-all     one session per client that downloads every message (RETR 1..N,
               pipelined 32 deep, as RFC 2449 PIPELINING allows), then QUITs without
               deleting. Reported as messages/s, MB/s and wall time.
  100k         login+UIDL on a 100,000-message maildrop (`--big`), one client.

Besides the rates: p50 latency (per session), the largest RSS of each server's process
tree and the CPU seconds the tree used during the run (bench/proctree.py), which is the
fairer comparison on a loaded machine: wall-clock rates there depend on what else runs.

With C clients every client logs in as its own user (u0..u9): POP3 locks a maildrop per
session ([IN-USE]), so parallel clients never share one. All users' Maildirs are hard
links to one master copy of the messages, for both servers, so both read the same inodes
from the same (warm) page cache, and building a 100k maildrop costs no disk space.
Messages are stored in cur/ (`:2,`), 2-8 KiB each, some lines starting with a dot.

Before timing, each user's maildrop is opened once on both servers (Dovecot builds its
index and dovecot-uidlist on the first login; ours lists the directory every login, so
its warm-up only warms the page cache). Every point is run `--repeat` times (default 3)
and the median is reported, Dovecot first then ours, back to back.

The clients are one asyncio process reading whole responses (not poplib, whose per-line
reads would be the bottleneck for both servers). Both servers allow plaintext login
without TLS on loopback (ours: allow_plaintext_without_tls; Dovecot: ssl = no).

    .venv/bin/python bench/pop3.py                 # 1k and 10k, 1 and 10 clients, 100k
    .venv/bin/python bench/pop3.py --sizes 1000 --clients 1 --no-big --repeat 1
    .venv/bin/python bench/pop3.py --extra-processes 2   # + rows for `processes = 2`
    .venv/bin/python bench/pop3.py --before /tmp/old-tree  # + rows for another tree's code
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import proctree
from dovecot_instance import DovecotError, DovecotInstance, free_port
from ours_instance import OursError, OursInstance

HOST = "127.0.0.1"
DOMAIN = "bench.test"
PASSWORD = "pw"
WINDOW = 32  # RETR commands in flight per client
#: The clients' TLS context, None for plain TCP (bench/pop3_profile.py --tls sets it).
CLIENT_TLS: ssl.SSLContext | None = None
ONLY = ""  # --only: "ours" or "dovecot"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "pop3.md"

sys.path.insert(0, str(BENCH_DIR.parent))
from mailserver.store.maildir import crlf_size, unique_name  # noqa: E402

# -- the maildrops ---------------------------------------------------------------------------


def make_message(rng: random.Random, n: int) -> bytes:
    size = rng.randint(2048, 8192)
    head = (f"Return-Path: <sender{n}@example.net>\nFrom: Sender <sender{n}@example.net>\n"
            f"To: user@{DOMAIN}\nSubject: benchmark message {n}\n"
            f"Message-ID: <{n}.bench@example.net>\nDate: Sun, 22 Nov 2026 12:00:00 +0000\n\n")
    lines = [head]
    total = len(head)
    i = 0
    while total < size:
        line = (".dotted " if i % 17 == 5 else "") + f"line {i} " + "x" * rng.randint(20, 70)
        lines.append(line + "\n")
        total += len(line) + 1
        i += 1
    return "".join(lines).encode()


def make_master(root: Path, count: int, seed: int = 1) -> list[Path]:
    """`count` message files named as our delivery names them, in root/."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    distinct = [make_message(rng, i) for i in range(min(count, 500))]
    paths = []
    for i in range(count):
        data = distinct[i % len(distinct)]
        path = root / (unique_name(len(data), crlf_size(data), host="bench.local") + ":2,")
        path.write_bytes(data)
        paths.append(path)
    return paths


def link_maildrop(files: list[Path], maildir: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    cur = maildir / "cur"
    for f in files:
        os.link(f, cur / f.name)


# -- the servers -----------------------------------------------------------------------------


class OursPop3(OursInstance):
    """Our server with pop3 on a loopback port, users u0..uN-1, plaintext allowed."""

    def __init__(self, root: Path, users: list[str], processes: int = 1,
                 tree: str = "") -> None:
        super().__init__(root, free_port(), HOST, processes)
        self.users = users
        self.pop3_port = free_port()
        #: Run the mailserver package of this source tree (PYTHONPATH), e.g. the
        #: branch's base commit checked out by `git worktree add`, for before/after.
        self.tree = tree
        #: A POP3S listener too when set (bench/pop3_profile.py --tls).
        self.pop3s_port = 0

    def _spawn(self) -> bool:
        if not self.tree:
            return super()._spawn()
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = self.tree
        try:
            return super()._spawn()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text()
        text = text.replace("[listen]\n", f'[listen]\npop3 = "tcp:{self.pop3_port}:'
                                          f'interface={HOST}"\n')
        if self.pop3s_port:
            text = text.replace("[listen]\n", f'[listen]\npop3s = "tcp:{self.pop3s_port}:'
                                              f'interface={HOST}"\n')
        text += "\n[auth]\nallow_plaintext_without_tls = true\n"
        self.config.write_text(text)

    def add_user(self) -> None:
        """{PLAIN} passwords, as the Dovecot side has: this measures POP3, not Argon2id
        (`mailserver user add` would store an Argon2id hash, ~60 ms per login)."""
        self.data.mkdir(parents=True, exist_ok=True)
        users = self.data / "users"
        users.write_text("".join(f"{u}@{DOMAIN}:{{PLAIN}}{PASSWORD}\n" for u in self.users))
        os.chmod(users, 0o600)

    def mail_root(self) -> Path:
        return self.data / "mail" / DOMAIN


# -- the client ------------------------------------------------------------------------------


class Pop3Client:
    """A minimal pipelining POP3 client that reads whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, port: int, user: str) -> Pop3Client:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24,
                                                       ssl=CLIENT_TLS)
        client = cls(reader, writer)
        await client.status()
        writer.write(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        await client.status()
        await client.status()
        return client

    async def status(self) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"server said {line!r}")
        return line

    async def uidl(self) -> int:
        self.writer.write(b"UIDL\r\n")
        await self.status()
        data = await self.reader.readuntil(b"\n.\r\n")
        return data.count(b"\n") - 1

    async def stat(self) -> int:
        self.writer.write(b"STAT\r\n")
        return int((await self.status()).split()[1])

    async def retr_all(self, count: int) -> int:
        """RETR 1..count, WINDOW in flight; the octets received."""
        octets = 0
        sent = 0
        for _ in range(min(WINDOW, count)):
            sent += 1
            self.writer.write(f"RETR {sent}\r\n".encode())
        for _ in range(count):
            await self.status()
            octets += len(await self.reader.readuntil(b"\r\n.\r\n"))
            if sent < count:
                sent += 1
                self.writer.write(f"RETR {sent}\r\n".encode())
        return octets

    async def quit(self) -> None:
        self.writer.write(b"QUIT\r\n")
        await self.status()
        self.writer.close()
        await self.writer.wait_closed()


async def login_uidl(port: int, user: str, expect: int) -> float:
    t0 = time.perf_counter()
    client = await Pop3Client.login(port, user)
    n = await client.uidl()
    await client.quit()
    if n != expect:
        raise RuntimeError(f"UIDL listed {n} messages, expected {expect}")
    return time.perf_counter() - t0


@dataclass
class Result:
    seconds: float
    rate: float  # sessions/s or messages/s
    p50_ms: float
    mb_s: float = 0.0
    rss_mib: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the server's process tree during the run


async def run_uidl(port: int, users: list[str], count: int, sessions: int) -> Result:
    latencies: list[float] = []

    async def one_client(user: str) -> None:
        for _ in range(sessions):
            latencies.append(await login_uidl(port, user, count))

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(u) for u in users))
    wall = time.perf_counter() - t0
    return Result(wall, len(latencies) / wall, statistics.median(latencies) * 1000)


async def run_retr(port: int, users: list[str], count: int) -> Result:
    latencies: list[float] = []
    octets = 0

    async def one_client(user: str) -> None:
        nonlocal octets
        t0 = time.perf_counter()
        client = await Pop3Client.login(port, user)
        n = await client.stat()
        if n != count:
            raise RuntimeError(f"STAT says {n}, expected {count}")
        received = await client.retr_all(n)
        octets += received
        await client.quit()
        latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(u) for u in users))
    wall = time.perf_counter() - t0
    return Result(wall, count * len(users) / wall, statistics.median(latencies) * 1000,
                  octets / wall / 1e6)


def measured(pid: int, fn: Callable[[], Result]) -> Result:
    with proctree.TreeSampler(pid) as sampler:
        result = fn()
    result.rss_mib = sampler.usage.max_rss_kib / 1024
    result.cpu_s = sampler.usage.cpu_s
    return result


def median(results: list[Result]) -> Result:
    return Result(*(statistics.median(getattr(r, f) for r in results)
                    for f in ("seconds", "rate", "p50_ms", "mb_s", "rss_mib", "cpu_s")))


# -- the run ---------------------------------------------------------------------------------


def bench_size(root: Path, count: int, clients: list[int], repeat: int, uidl_sessions: int,
               rows: list[str], processes: int = 1, extra_processes: int = 0,
               before: str = "") -> None:
    n_users = max(clients)
    users = [f"u{i}" for i in range(n_users)]
    print(f"\n== maildrop of {count} messages, users {users[0]}..{users[-1]}", flush=True)
    master = make_master(root / "master", count)
    ours = OursPop3(root / "ours", users, processes)
    # --extra-processes N: a second instance of ours with `processes = N`, measured
    # in the same run on its own hard-linked copy; reported as extra rows.
    extra = OursPop3(root / "ours-extra", users, extra_processes) if extra_processes \
        else None
    # --before TREE: the same server from another source tree, in the same run.
    old = OursPop3(root / "ours-before", users, processes, tree=before) if before else None
    dovecot = DovecotInstance(root / "dovecot", root / "dovecot-mail",
                              {u: PASSWORD for u in users}, protocols=("pop3",))
    ours.write_config()
    if extra is not None:
        extra.write_config()
    if old is not None:
        old.write_config()
    for u in users:
        link_maildrop(master, ours.mail_root() / u)
        link_maildrop(master, root / "dovecot-mail" / u)
        if extra is not None:
            link_maildrop(master, extra.mail_root() / u)
        if old is not None:
            link_maildrop(master, old.mail_root() / u)
    servers: list[tuple[str, int, object]] = []
    with dovecot, ours, (extra if extra is not None else contextlib.nullcontext()), \
            (old if old is not None else contextlib.nullcontext()):
        servers = [("Dovecot", dovecot.ports["pop3"], dovecot)]
        if old is not None:
            servers.append(("ours-before", old.pop3_port, old))
        servers.append(("ours", ours.pop3_port, ours))
        if extra is not None:
            servers.append((f"ours-{extra_processes}p", extra.pop3_port, extra))
        if ONLY:
            servers = [s for s in servers if s[0].lower().startswith(ONLY)]
        for _name, port, _inst in servers:  # warm-up: indexes, page cache
            for u in users:
                asyncio.run(login_uidl(port, u, count))
        for c in clients:
            for label, runner in (
                (f"login+UIDL x{uidl_sessions}", lambda p, c=c: run_uidl(p, users[:c], count,
                                                                         uidl_sessions)),
                ("RETR-all", lambda p, c=c: run_retr(p, users[:c], count)),
            ):
                got: dict[str, Result] = {}
                for name, port, inst in servers:
                    if inst is extra and c != max(clients):
                        continue  # more processes only matter with many clients
                    pid = inst.master_pid  # type: ignore[attr-defined]
                    got[name] = median([measured(pid, lambda r=runner, p=port: asyncio.run(r(p)))
                                        for _ in range(repeat)])
                    r = got[name]
                    print(f"  {name:8} {label:16} {c:2} clients: {r.seconds:7.3f} s "
                          f"{r.rate:9.1f}/s p50 {r.p50_ms:8.1f} ms {r.mb_s:6.1f} MB/s "
                          f"RSS {r.rss_mib:6.1f} MiB CPU {r.cpu_s:6.2f} s", flush=True)
                if "Dovecot" not in got:
                    continue
                unit = "sessions/s" if "UIDL" in label else "msgs/s"
                d = got["Dovecot"]
                for name, o in got.items():
                    if name == "Dovecot":
                        continue
                    what = label if name == "ours" else f"{label} ({name})"
                    rows.append(
                        f"| {count:,} | {what} | {c} | {d.rate:.1f} {unit} | "
                        f"{o.rate:.1f} {unit} | {o.rate / d.rate:.2f} | "
                        f"{d.p50_ms:.1f} / {o.p50_ms:.1f} | "
                        f"{d.rss_mib:.0f} / {o.rss_mib:.0f} | "
                        f"{d.cpu_s:.2f} / {o.cpu_s:.2f} |")


def bench_big(root: Path, count: int, repeat: int, rows: list[str]) -> None:
    print(f"\n== login+UIDL on a {count:,}-message maildrop", flush=True)
    master = make_master(root / "master", count)
    ours = OursPop3(root / "ours", ["u0"])
    dovecot = DovecotInstance(root / "dovecot", root / "dovecot-mail", {"u0": PASSWORD},
                              protocols=("pop3",))
    ours.write_config()
    link_maildrop(master, ours.mail_root() / "u0")
    link_maildrop(master, root / "dovecot-mail" / "u0")
    with dovecot, ours:
        got: dict[str, Result] = {}
        for name, port, pid in (("Dovecot", dovecot.ports["pop3"], dovecot.master_pid),
                                ("ours", ours.pop3_port, ours.master_pid)):
            t0 = time.perf_counter()
            asyncio.run(login_uidl(port, "u0", count))
            print(f"  {name:8} first login (cold index): {time.perf_counter() - t0:.3f} s")
            got[name] = median([measured(pid, lambda p=port: asyncio.run(
                run_uidl(p, ["u0"], count, 1))) for _ in range(repeat)])
            print(f"  {name:8} login+UIDL: {got[name].p50_ms:.1f} ms, RSS "
                  f"{got[name].rss_mib:.1f} MiB", flush=True)
        ratio = got["ours"].p50_ms / got["Dovecot"].p50_ms
        rows.append(f"| {count:,} | login+UIDL (latency) | 1 | {got['Dovecot'].p50_ms:.0f} ms"
                    f" | {got['ours'].p50_ms:.0f} ms | {ratio:.2f}x the time | - | "
                    f"{got['Dovecot'].rss_mib:.0f} / {got['ours'].rss_mib:.0f} | "
                    f"{got['Dovecot'].cpu_s:.2f} / {got['ours'].cpu_s:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="maildrop sizes, e.g. 1000,10000")
    ap.add_argument("--clients", default="1,10", help="parallel clients, e.g. 1,10")
    ap.add_argument("--repeat", type=int, default=3, help="runs per point (median)")
    ap.add_argument("--uidl-sessions", type=int, default=20,
                    help="login+UIDL sessions per client per run")
    ap.add_argument("--big", type=int, default=100_000, help="the big maildrop's size")
    ap.add_argument("--no-big", action="store_true", help="skip the big maildrop")
    ap.add_argument("--processes", type=int, default=1,
                    help="our server's processes (config `processes`; Dovecot forks per "
                         "connection)")
    ap.add_argument("--extra-processes", type=int, default=0,
                    help="also run a second instance of ours with this many processes "
                         "(extra rows, e.g. 2)")
    ap.add_argument("--before", default="",
                    help="also run ours from this source tree (rows marked ours-before)")
    ap.add_argument("--tmpdir", default=None, help="where the Maildirs go")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--output", default=str(RESULTS), help="Markdown file ('' = none)")
    ap.add_argument("--only", choices=["ours", "dovecot"], help="run one server only")
    args = ap.parse_args(argv)
    global ONLY
    ONLY = args.only or ""
    sizes = [int(x) for x in args.sizes.split(",")]
    clients = [int(x) for x in args.clients.split(",")]
    rows: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="pop3bench-", dir=args.tmpdir))
    try:
        for size in sizes:
            bench_size(tmp / f"n{size}", size, clients, args.repeat, args.uidl_sessions,
                       rows, args.processes, args.extra_processes, args.before)
            if not args.keep:
                shutil.rmtree(tmp / f"n{size}", ignore_errors=True)
        if not args.no_big:
            bench_big(tmp / "big", args.big, args.repeat, rows)
    except (OursError, DovecotError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    table = "\n".join([
        f"POP3, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} "
        f"cores (shared, loaded), median of {args.repeat}, ours with "
        f"processes = {args.processes}"
        f"{f' (rows marked ours-{args.extra_processes}p: processes = {args.extra_processes})' if args.extra_processes else ''}"
        f"; Dovecot "
        f"{subprocess.run(['/usr/sbin/dovecot', '--version'], capture_output=True, text=True).stdout.strip()}",
        "",
        "| messages | scenario | clients | Dovecot | ours | ours/Dovecot | p50 ms D / ours | "
        "max RSS MiB D / ours | CPU s D / ours |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print("\n" + table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
