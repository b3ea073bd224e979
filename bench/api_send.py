"""Messages per second through POST /api/v1/send against SMTP submission, the same
messages in the same run (issue 18: "the API at least as fast per message").

One server (processes = 1, DKIM signing on, as configured by default), 10 clients on
127.0.0.1, connections reused on both sides:

  smtp submission     one STARTTLS + AUTH PLAIN session per client, then MAIL/RCPT/DATA
                      back to back (as bench/submission.py "reused session")
  api raw             one TLS connection per client (HTTP/1.1 keep-alive), one
                      POST /api/v1/send per message: {"raw": base64 of the same bytes,
                      "to": [...]}
  api structured      the same, built by the server from {"to", "subject", "text"}

Every message goes to one local user (a Maildir fsync'd before the answer, on both
paths). Credentials: the API checks them on every request, SMTP once per session. With
an Argon2id password that is one 32 MiB hash per API request; API tokens (`mailserver
token add`, cheap to check) are what applications use, so the bench uses a token when
the tree has them and otherwise stores the user's password as {PLAIN} for both sides,
so neither pays a hash per message (`--argon2` keeps Argon2id and shows the cost).

`--before TREE` adds the three paths of an older checkout (PYTHONPATH=TREE) in the same
rounds: before/after of a change to either side, under the same load.
Medians of `--repeat` (3) runs, interleaved per round so load hits all rows alike.

    .venv/bin/python bench/api_send.py [--messages 1000] [--before /tmp/old-tree]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
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
import submission  # its Result and SMTP reply reader, shared with the SMTP side
from ours_instance import DOMAIN, USER, OursInstance, venv_bin
from submission import expect

HOST = "127.0.0.1"
ADDRESS = f"{USER}@{DOMAIN}"
PASSWORD = "pw"
RESULTS = Path(__file__).resolve().parent / "results" / "api.md"
MESSAGE = (f"From: <{ADDRESS}>\r\nTo: <{ADDRESS}>\r\nSubject: bench\r\n"
           "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{n}@bench.test>\r\n\r\n")
BODY = ("abcdefghijklmnopqrstuvwxyz0123456789" * 2 + "\r\n") * 50  # ~3.7 KiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class OursApi(OursInstance):
    """Our server with `submission` (self.port: its banner tells us it is up) and
    `https`; `cheap`: the user's password stored as {PLAIN}."""

    def __init__(self, root: Path, tree: str | None, cheap: bool) -> None:
        super().__init__(root, free_port(), tree=tree)
        self.https = free_port()
        self.cheap = cheap
        self.token = ""

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'hostname = "bench.local"\ndata_dir = "{self.data}"\nprocesses = 1\n\n'
            f'[domains]\nlocal = ["{DOMAIN}"]\n\n'
            f'[listen]\nsubmission = "tcp:{self.port}:interface={self.host}"\n'
            f'https = "tcp:{self.https}:interface={self.host}"\n\n'
            "[limits]\nconnections_per_ip = 1000\n\n"
            "[abuse]\nmessages_per_hour = 0\nrecipients_per_day = 0\n\n"
            # The per-token rate limit (default 600 a minute) would answer 429 long
            # before 10 clients reach the server's speed: the bench measures the server.
            "[api]\nrequests_per_minute = 1000000\n")

    def add_user(self) -> None:
        super().add_user()
        if self.cheap:
            users = self.data / "users"
            users.write_text(f"{ADDRESS}:{{PLAIN}}{PASSWORD}\n")
        made = subprocess.run(
            [venv_bin("mailserver"), "--config", str(self.config), "token", "add", ADDRESS,
             "--scope", "send"], env=self.env, capture_output=True, text=True, timeout=60)
        if made.returncode == 0 and made.stdout.strip():
            self.token = made.stdout.strip().split()[-1]


@dataclass
class Result(submission.Result):
    """bench/submission.py's result (rate, percentiles) and the server's CPU seconds."""

    cpu: float = 0.0


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- SMTP submission -----------------------------------------------------------------------


class SmtpClient:
    def __init__(self, port: int) -> None:
        self.port = port
        self.io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)
        await expect(reader, 220)
        writer.write(b"EHLO bench.test\r\n")
        await expect(reader, 250)
        writer.write(b"STARTTLS\r\n")
        await expect(reader, 220)
        await writer.start_tls(tls())
        writer.write(b"EHLO bench.test\r\n")
        await expect(reader, 250)
        token = base64.b64encode(f"\0{ADDRESS}\0{PASSWORD}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
        await expect(reader, 235)
        self.io = reader, writer

    async def send(self, n: int) -> None:
        assert self.io is not None
        reader, writer = self.io
        writer.write(f"MAIL FROM:<{ADDRESS}>\r\nRCPT TO:<{ADDRESS}>\r\nDATA\r\n".encode())
        for code in (250, 250, 354):
            await expect(reader, code)
        writer.write(MESSAGE.replace("{n}", str(n)).encode() + BODY.encode() + b".\r\n")
        await expect(reader, 250)

    def close(self) -> None:
        if self.io is not None:
            self.io[1].write(b"QUIT\r\n")
            self.io[1].close()


# -- the API -------------------------------------------------------------------------------


class ApiClient:
    """HTTP/1.1 over one TLS connection, kept alive: a request, then its answer."""

    def __init__(self, port: int, authorization: str, structured: bool,
                 keyed: bool = False) -> None:
        self.port = port
        self.authorization = authorization
        self.structured = structured
        #: Send an idempotency_key (unique per message): what careful applications do.
        self.keyed = keyed
        self.io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> None:
        self.io = await asyncio.open_connection(HOST, self.port, ssl=tls(),
                                                limit=1 << 20)

    def body(self, n: int) -> bytes:
        if self.structured:
            request = {"to": [ADDRESS], "subject": "bench", "text": BODY.replace("\r\n",
                                                                                 "\n")}
        else:
            raw = MESSAGE.replace("{n}", str(n)).encode() + BODY.encode()
            request = {"raw": base64.b64encode(raw).decode(), "to": [ADDRESS]}
        if self.keyed:
            request["idempotency_key"] = f"bench-{os.getpid()}-{time.time_ns()}-{n}"
        return json.dumps(request).encode()

    async def send(self, n: int) -> None:
        assert self.io is not None
        reader, writer = self.io
        body = self.body(n)
        writer.write(b"POST /api/v1/send HTTP/1.1\r\nHost: bench.local\r\n"
                     b"Authorization: " + self.authorization.encode() + b"\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        status = await reader.readline()
        length = 0
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed by server")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = await reader.readexactly(length)
        if status.split()[1:2] not in ([b"200"], [b"202"]):
            raise ConnectionError(f"{status!r} {answer[:200]!r}")

    def close(self) -> None:
        if self.io is not None:
            self.io[1].close()


# -- running -------------------------------------------------------------------------------


async def drive(make: Callable[[], SmtpClient | ApiClient], clients: int,
                total: int) -> Result:
    result = Result()
    counter = iter(range(total))
    clock = time.perf_counter

    async def worker() -> None:
        client = make()
        await client.open()
        try:
            for n in counter:
                t0 = clock()
                try:
                    await client.send(n)
                except (OSError, ConnectionError, ssl.SSLError,
                        asyncio.IncompleteReadError) as e:
                    result.failed += 1
                    result.first_error = result.first_error or str(e)[:200]
                    client.close()
                    client = make()
                    await client.open()
                    continue
                result.latencies.append(clock() - t0)
                result.ok += 1
        finally:
            client.close()

    start = clock()
    await asyncio.gather(*(worker() for _ in range(clients)))
    result.elapsed = clock() - start
    return result


def measure(server: OursApi, make: Callable[[], SmtpClient | ApiClient], clients: int,
            total: int, profile: str = "") -> Result:
    spy = None
    if profile:
        # py-spy's raw stacks of the server while this row runs (bench/profile_summary.py).
        spy = subprocess.Popen([venv_bin("py-spy"), "record", "--pid", str(server.master_pid),
                                "--format", "raw", "--output", profile, "--rate", "250",
                                "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1)
    with proctree.TreeSampler(server.master_pid) as sampler:
        result = asyncio.run(drive(make, clients, total))
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    result.cpu = sampler.usage.cpu_s
    for sub in ("new", "cur"):
        for p in (server.maildir / sub).glob("*"):
            p.unlink()
    return result


Row = tuple[str, Callable[[], SmtpClient | ApiClient], OursApi]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", help="another source tree: its three paths too")
    parser.add_argument("--profile", default="",
                        help="PREFIX: py-spy raw stacks of each row's last run, PREFIX-ROW.txt")
    parser.add_argument("--keyed", action="store_true",
                        help="add rows: raw with an idempotency_key per message")
    parser.add_argument("--argon2", action="store_true",
                        help="keep the Argon2id password (HTTP Basic hashes per request)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-api-", dir="/tmp"))
    here = str(Path(__file__).resolve().parent.parent)
    load = os.getloadavg()
    runs: dict[str, list[Result]] = {}
    try:
        after = OursApi(root / "after", here, cheap=not args.argon2)
        servers = [after]
        before = None
        if args.before:
            before = OursApi(root / "before", args.before, cheap=not args.argon2)
            servers.append(before)
        for s in servers:
            s.start()
        if after.token:
            credential = f"Bearer {after.token}"
            how = "Bearer token"
        else:
            credential = "Basic " + base64.b64encode(f"{ADDRESS}:{PASSWORD}".encode()
                                                     ).decode()
            how = "HTTP Basic, " + ("Argon2id hash" if args.argon2 else "{PLAIN} password")
        rows: list[Row] = []
        if before is not None:
            # The older tree's three paths too: the API's before/after in one run.
            before_credential = (f"Bearer {before.token}" if before.token else credential)
            rows += [
                ("smtp submission (before)", lambda: SmtpClient(before.port), before),
                ("api raw (before)",
                 lambda: ApiClient(before.https, before_credential, False), before),
                ("api structured (before)",
                 lambda: ApiClient(before.https, before_credential, True), before),
            ]
            if args.keyed:
                rows.append(("api raw keyed (before)",
                             lambda: ApiClient(before.https, before_credential, False,
                                               True), before))
        rows += [
            ("smtp submission", lambda: SmtpClient(after.port), after),
            ("api raw", lambda: ApiClient(after.https, credential, False), after),
            ("api structured", lambda: ApiClient(after.https, credential, True), after),
        ]
        if args.keyed:
            rows.append(("api raw keyed",
                         lambda: ApiClient(after.https, credential, False, True), after))
        for round_ in range(args.repeat):
            for name, make, server in rows:
                profile = (f"{args.profile}-{name.replace(' ', '_')}.txt"
                           if args.profile and round_ == args.repeat - 1 else "")
                r = measure(server, make, args.clients, args.messages, profile)
                runs.setdefault(name, []).append(r)
                print(f"round {round_ + 1} {name}: {r.rate:,.1f} msgs/s "
                      f"(failed {r.failed})", flush=True)
    finally:
        for s in locals().get("servers", []):
            s.stop()
        shutil.rmtree(root, ignore_errors=True)
    report(runs, args, how, load)
    return 0


def report(runs: dict[str, list[Result]], args: argparse.Namespace, how: str,
           load: tuple[float, float, float]) -> None:
    out = [f"POST /api/v1/send vs SMTP submission: {args.clients} clients, connections "
           f"reused, ~3.7 KiB messages to a local Maildir, DKIM signing on, processes = 1, "
           f"{os.cpu_count()} CPUs (shared), load average at start "
           f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; API credential: {how}; "
           f"median of {args.repeat} (runs interleaved)", "",
           "| path | msgs/s (median) | runs | p50 ms | p99 ms | server CPU ms/msg | failed |",
           "|---|---:|---|---:|---:|---:|---:|"]
    medians: dict[str, float] = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r.rate)
        mid = ordered[len(ordered) // 2]
        medians[name] = statistics.median(r.rate for r in results)
        out.append(f"| {name} | {medians[name]:,.1f} | "
                   + " / ".join(f"{r.rate:,.0f}" for r in results)
                   + f" | {mid.pct(50):,.1f} | {mid.pct(99):,.1f} | "
                   + f"{1000 * mid.cpu / max(mid.ok, 1):,.2f} | "
                   + f"{sum(r.failed for r in results)}"
                   + (f" ({mid.first_error})" if mid.first_error else "") + " |")
    smtp = medians.get("smtp submission")
    if smtp:
        for name in ("api raw", "api structured", "api raw keyed",
                     "smtp submission (before)", "api raw (before)",
                     "api structured (before)", "api raw keyed (before)"):
            if name in medians:
                out.append(f"\n{name} / smtp submission = {medians[name] / smtp:.2f}")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    # A new dated section after the earlier ones (they are the record of earlier trees).
    RESULTS.parent.mkdir(exist_ok=True)
    old = RESULTS.read_text() if RESULTS.exists() else "# HTTP API benchmarks\n"
    RESULTS.write_text(old.rstrip("\n") + "\n\n## POST /api/v1/send vs SMTP submission, "
                       + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                       + " (bench/api_send.py)\n\n" + text)


if __name__ == "__main__":
    sys.exit(main())
