"""Webhook delivery rate: events POSTed per second to a receiver on loopback, and what
publishing "received" costs SMTP acceptance. Postfix and Dovecot have no webhooks, so
the counterpart is our own tree before webhooks (`--before DIR`, the base commit).

  drain        N events spooled while the server is down (the spool's own writer, one
               user hook in hooks.json), then the server starts and POSTs them all:
               events/s from the first POST to the N-th, and the server's CPU per event
  smtp+hook    SMTP acceptance (bench/loadgen.py: 10 connections, 4 KiB) into a
               Maildir with a domain hook on every arrival: msgs/s, and the events/s
               the receiver saw over the same run
  smtp         the same without any hook (this tree), and with --before, the old tree

The receiver is asyncio HTTP/1.1 with keep-alive in a process of its own, answering 200 at once
and checking every signature (Standard Webhooks HMAC-SHA256). Each round has a fresh
data_dir; `--repeat 3` reports medians. Everything on 127.0.0.1.

    .venv/bin/python bench/webhooks.py [--events 5000] [--messages 2000] [--repeat 3]
                                       [--before /tmp/webhooks-before]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proctree  # noqa: E402
from loadgen import run_load  # noqa: E402
from ours_instance import DOMAIN, USER, OursInstance  # noqa: E402

from mailserver.config import load_config  # noqa: E402
from mailserver.webhooks.hooks import HookStore  # noqa: E402
from mailserver.webhooks.signing import new_secret, verify  # noqa: E402
from mailserver.webhooks.spool import Record, WebhookSpool, new_id  # noqa: E402

HOST = "127.0.0.1"
RESULTS = Path(__file__).resolve().parent / "results" / "api.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Receiver:
    """HTTP/1.1 keep-alive on loopback in a process of its own (not to take the load
    generator's GIL); counts and verifies POSTs into shared values."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = free_port()
        ctx = multiprocessing.get_context("fork")
        self.shared = {name: ctx.Value("d", 0.0) for name in ("count", "bad", "ids",
                                                                "first", "last")}
        ready = ctx.Event()
        self.proc = ctx.Process(target=self._run, args=(ready,), daemon=True)
        self.proc.start()
        ready.wait(10)

    def _get(self, name: str) -> float:
        return float(self.shared[name].value)

    count = property(lambda self: int(self._get("count")))
    bad = property(lambda self: int(self._get("bad")))
    distinct = property(lambda self: int(self._get("ids")))
    first = property(lambda self: self._get("first"))
    last = property(lambda self: self._get("last"))

    def _run(self, ready: Any) -> None:
        ids: set[str] = set()
        shared = self.shared

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    headers: dict[str, str] = {}
                    for line in head.decode("latin-1").split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                    if not verify(self.secret, headers.get("webhook-id", ""),
                                  int(headers.get("webhook-timestamp", "0")), body,
                                  headers.get("webhook-signature", "")):
                        shared["bad"].value += 1
                    now = time.perf_counter()
                    if not shared["first"].value:
                        shared["first"].value = now
                    shared["last"].value = now
                    ids.add(headers.get("webhook-id", ""))
                    shared["ids"].value = len(ids)
                    shared["count"].value += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def serve() -> None:
            await asyncio.start_server(client, HOST, self.port, backlog=256)
            ready.set()
            await asyncio.Event().wait()

        asyncio.run(serve())

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count >= n

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


class HookedInstance(OursInstance):
    """Our server with [webhooks] (loopback allowed) and, optionally, a domain hook."""

    def __init__(self, root: Path, port: int, extra: str = "", **kw: Any) -> None:
        super().__init__(root, port, **kw)
        self.extra = extra

    def write_config(self) -> None:
        super().write_config()
        with open(self.config, "a") as f:
            f.write(self.extra)


def webhooks_config(receiver: Receiver | None, secret_file: Path | None) -> str:
    text = '\n[webhooks]\nallowed_networks = ["127.0.0.0/8"]\n'
    if receiver is not None and secret_file is not None:
        text += (f'\n[[webhooks.domain]]\ndomain = "{DOMAIN}"\n'
                 f'url = "http://{HOST}:{receiver.port}/events"\nevents = ["received"]\n'
                 f'secret_file = "{secret_file}"\n')
    return text


def profile(pid: int, path: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy's raw stacks of the server for 8 s (bench/profile_summary.py reads them)."""
    if not path:
        return None
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                             "--format", "raw", "-o", path, "--pid", str(pid),
                             "--duration", "8", "--rate", "200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drain_round(events: int, profile_to: str | None = None) -> dict[str, float]:
    """Spool `events` records with the server down, then time their delivery."""
    secret = new_secret()
    receiver = Receiver(secret)
    with tempfile.TemporaryDirectory(prefix="bench-wh-") as tmp:
        root = Path(tmp)
        server = HookedInstance(root, free_port(), webhooks_config(None, None))
        server.write_config()
        config = load_config(str(server.config))
        spool = WebhookSpool(config.data_dir / "webhooks")
        spool.ensure_dirs()
        hook = HookStore(spool.root, config).add(f"{USER}@{DOMAIN}",
                                                 f"http://{HOST}:{receiver.port}/events",
                                                 ["received"], secret, 0)
        data = {"queue_id": "", "message_id": "bench@example.org", "sender":
                "loadgen@client.test", "recipient": f"{USER}@{DOMAIN}", "mailbox":
                f"{USER}@{DOMAIN}", "folder": "INBOX", "size": 4096,
                "stored_as": "1.M1P1Q1.bench,S=4096", "fetch": "https://bench.local/x" * 4}
        batch = []
        for i in range(events):
            record_id = new_id()
            batch.append(Record(record_id, hook.id, f"{hook.id}/{i}", "received",
                                time.time(), {"id": record_id, "type": "received",
                                              "time": "2026-12-07T00:00:00.000Z",
                                              "data": data}))
        spool.write(batch)
        try:
            server.start()
            spy = profile(server.master_pid, profile_to)
            # CPU from the first POST on: the server's start-up is not the webhooks'.
            receiver.wait_for(1, 60)
            cpu0 = proctree.cpu_seconds(server.master_pid)
            ok = receiver.wait_for(events, 300)
            cpu = proctree.cpu_seconds(server.master_pid) - cpu0
            if spy is not None:
                spy.wait(60)
        finally:
            server.stop()
            receiver.stop()
        if not ok or receiver.bad or receiver.distinct != events:
            raise SystemExit(f"drain: got {receiver.count}/{events} (bad signatures "
                             f"{receiver.bad}, distinct ids {receiver.distinct})"
                             f"{server.log_tail()}")
        elapsed = receiver.last - receiver.first
        return {"rate": (events - 1) / elapsed if elapsed > 0 else 0.0,
                "cpu_ms": cpu * 1000 / events}


def smtp_round(messages: int, hook: bool, tree: str | None,
               profile_to: str | None = None) -> dict[str, float]:
    """loadgen into our Maildir, with a domain hook on each arrival or none."""
    secret = new_secret()
    receiver = Receiver(secret) if hook else None
    with tempfile.TemporaryDirectory(prefix="bench-wh-") as tmp:
        root = Path(tmp)
        secret_file = root / "secret"
        secret_file.write_text(secret + "\n")
        extra = webhooks_config(receiver, secret_file) if tree is None else ""
        server = HookedInstance(root, free_port(), extra, tree=tree)
        try:
            server.start()
            spy = profile(server.master_pid, profile_to)
            result = asyncio.run(run_load(HOST, server.port, 10, messages, 4096))
            if spy is not None:
                spy.wait(60)
            if receiver is not None:
                receiver.wait_for(messages, 120)
            cpu = proctree.cpu_seconds(server.master_pid)
        finally:
            server.stop()
            if receiver is not None:
                receiver.stop()
        if result.failed:
            raise SystemExit(f"smtp: {result.failed} failed: {result.first_error}")
        out = {"rate": result.rate, "cpu_ms": cpu * 1000 / messages,
               "p99": result.percentile(99)}
        if receiver is not None:
            if receiver.count < messages or receiver.bad:
                raise SystemExit(f"smtp+hook: {receiver.count}/{messages} events, "
                                 f"{receiver.bad} bad signatures{server.log_tail()}")
            out["events"] = messages / (receiver.last - result.start)
        return out


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", metavar="DIR", help="the tree before webhooks")
    parser.add_argument("--profile", metavar="FILE", help="py-spy raw stacks of one "
                        "phase (then only that runs)")
    parser.add_argument("--phase", choices=("drain", "smtp+hook"), default="drain")
    args = parser.parse_args()
    if args.profile:
        print(drain_round(args.events, args.profile) if args.phase == "drain" else
              smtp_round(args.messages, True, None, args.profile))
        return
    load = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"drain": [], "smtp+hook": [], "smtp": [],
                                               "smtp (before)": []}
    for i in range(args.repeat):  # interleaved, so the machine's load hits all alike
        runs["drain"].append(drain_round(args.events))
        runs["smtp+hook"].append(smtp_round(args.messages, True, None))
        runs["smtp"].append(smtp_round(args.messages, False, None))
        if args.before:
            runs["smtp (before)"].append(smtp_round(args.messages, False, args.before))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]['rate']:.0f}/s"
                                             for k, v in runs.items() if v), flush=True)
    lines = [f"Load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
             f"({os.cpu_count()} CPUs); medians of {args.repeat}.", "",
             "| run | rate | server CPU per event/message | events/s at the receiver |",
             "|---|---|---|---|"]
    for name, rows in runs.items():
        if not rows:
            continue
        unit = "events/s" if name == "drain" else "msgs/s"
        events = f"{median(rows, 'events'):.0f}" if "events" in rows[0] else \
            (f"{median(rows, 'rate'):.0f}" if name == "drain" else "-")
        lines.append(f"| {name} | {median(rows, 'rate'):.0f} {unit} | "
                     f"{median(rows, 'cpu_ms'):.2f} ms | {events} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
