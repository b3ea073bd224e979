"""IMAP benchmark: our server beside Dovecot's imap, on identical Maildirs, in one run.

Phases, on folders of 1k and 10k messages (and `--big`, 100k: fewer phases):

  login+SELECT     connect, LOGIN, SELECT INBOX (time to the tagged OK), LOGOUT
  FETCH flags      FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)
  FETCH headers    FETCH 1:* BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)]
  FETCH ENVELOPE   FETCH 1:* ENVELOPE
  FETCH BODYSTR.   FETCH 1:* BODYSTRUCTURE
  FETCH bodies     FETCH 1:* BODY.PEEK[]
  UID SEARCH       UID SEARCH HEADER SUBJECT "invoice"   (~3% of the messages match)
  STORE            STORE 1:* +FLAGS (\\Flagged)   (undone, untimed, before the next run)
  SORT by date     SORT (DATE) UTF-8 ALL             (RFC 5256)
  SORT by subject  SORT (SUBJECT) UTF-8 ALL
  THREAD REFS      THREAD REFERENCES UTF-8 ALL
  QRESYNC resync   another session changes the flags of 100 messages (untimed), then
                   SELECT INBOX (QRESYNC (uidvalidity highestmodseq)) of a client that had
                   the folder before: the 100 FETCH answers (RFC 7162; one client)
  COMPRESS'd FETCH FETCH 1:* BODY.PEEK[] on a session with COMPRESS=DEFLATE (RFC 4978;
                   Dovecot with its imap_zlib plugin), the client inflating as it reads;
                   the octets on the wire are reported beside the times

"cold" is each phase's first run on a freshly started server over a Maildir it has
never seen (no dovecot.index / no index of ours yet: both build their index and header
cache then); the page cache is warm for both (the files were just written; dropping it
would disturb the other people on this machine). "warm" is the median of `--repeat`
later runs. With C clients, C sessions (users u0..uC-1, each its own hard-linked copy of
the folder) run the phase at the same moment; the wall time until all are done is
reported.

Last, RSS: 1,000 sessions (users u0..u9, 100 each) log in, SELECT and IDLE; the growth of
the server's process-tree RSS (and PSS, which divides shared pages fairly among
Dovecot's one-process-per-session tree) divided by 1,000.

Messages are realistic: varied senders, subjects, text/plain, multipart/alternative and
multipart/mixed with a base64 attachment, 1-40 KiB, named as our delivery names them,
70% already \\Seen. The client is one asyncio process that reads whole responses in big
chunks (imaplib's per-line reads would be the bottleneck for both servers).

    .venv/bin/python bench/imap.py                       # 1k and 10k, 1 and 10 clients
    .venv/bin/python bench/imap.py --sizes 1000 --clients 1 --repeat 1 --idle 100 --no-big
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.header
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import proctree
from dovecot_instance import DovecotError, DovecotInstance, free_port
from ours_instance import OursError, OursInstance

HOST = "127.0.0.1"
DOMAIN = "bench.test"
PASSWORD = "pw"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "imap.md"
TIMEOUT = 120  # seconds a single command may take before the run is abandoned
#: --only: words of the phase labels to run (empty: all).
ONLY: list[str] = []
HEADER_FIELDS = b"BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)]"

sys.path.insert(0, str(BENCH_DIR.parent))
from mailserver.store.maildir import crlf_size, unique_name  # noqa: E402

# -- the folders -------------------------------------------------------------------------------

_WORDS = ("meeting report budget draft review lunch travel invoice release notes patch "
          "question update schedule weekend project launch photos contract minutes plan "
          "server backup holiday agenda summary feedback").split()
_NAMES = ("Alice Martin", "Bob Nguyen", "Carol Schmidt", "Dave O'Brien", "Eve Rossi",
          "Frank Müller", "Grace Hopper", "Heidi Klum", "Ivan Petrov", "Judy Chen")


def _text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14)))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def make_message(rng: random.Random, n: int) -> bytes:
    name = rng.choice(_NAMES)
    sender = name.split()[0].lower() + "@example.net"
    display = f'"{name}"' if "'" in name else name
    if not display.isascii():  # an RFC 2047 encoded word, as mail clients send it
        display = email.header.Header(name, "utf-8").encode()
    subject = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))
    head = (f"Return-Path: <{sender}>\n"
            f"Received: from mx.example.net (mx.example.net [192.0.2.{n % 250}])\n"
            f"\tby bench.local with ESMTPS id {n:08x}; Sun, 22 Nov 2026 12:00:00 +0000\n"
            f"From: {display} <{sender}>\nTo: User <user@{DOMAIN}>\n"
            + (f"Cc: team@{DOMAIN}\n" if n % 5 == 0 else "")
            + f"Subject: {subject} #{n}\n"
            f"Date: Sun, 22 Nov 2026 {n % 24:02d}:{n % 60:02d}:00 +0000\n"
            f"Message-ID: <{n}.{rng.randrange(10**9)}@example.net>\n"
            + (f"In-Reply-To: <{n - 1}.1@example.net>\n" if n % 3 == 0 else "")
            + "MIME-Version: 1.0\n")
    kind = n % 10
    if kind < 7:
        body = _text(rng, rng.randint(800, 6000))
        return (head + "Content-Type: text/plain; charset=utf-8\n\n" + body).encode()
    if kind < 9:
        text = _text(rng, rng.randint(800, 4000))
        html = "<html><body><p>" + text.replace("\n", "</p><p>") + "</p></body></html>\n"
        return (head + 'Content-Type: multipart/alternative; boundary="alt"\n\n'
                "--alt\nContent-Type: text/plain; charset=utf-8\n\n" + text +
                "--alt\nContent-Type: text/html; charset=utf-8\n\n" + html +
                "--alt--\n").encode()
    blob = base64.encodebytes(rng.randbytes(rng.randint(4000, 30000))).decode()
    return (head + 'Content-Type: multipart/mixed; boundary="mix"\n\n'
            "--mix\nContent-Type: text/plain; charset=utf-8\n\n" + _text(rng, 600) +
            '--mix\nContent-Type: application/pdf; name="doc.pdf"\n'
            'Content-Disposition: attachment; filename="doc.pdf"\n'
            "Content-Transfer-Encoding: base64\n\n" + blob + "--mix--\n").encode()


def make_master(root: Path, count: int, seed: int = 1) -> list[Path]:
    """`count` message files in root/, named as our delivery names them."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    distinct = [make_message(rng, i) for i in range(min(count, 1000))]
    paths = []
    for i in range(count):
        data = distinct[i % len(distinct)]
        flags = "S" if i % 10 < 7 else ""
        path = root / (unique_name(len(data), crlf_size(data), host="bench.local") + ":2," + flags)
        path.write_bytes(data)
        paths.append(path)
    return paths


def link_maildir(files: list[Path], maildir: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for f in files:
        os.link(f, maildir / "cur" / f.name)


# -- the servers -------------------------------------------------------------------------------


class OursImap(OursInstance):
    """Our server with imap on a loopback port, users u0..uN-1, plaintext allowed."""

    def __init__(self, root: Path, users: list[str], code: Path | None = None) -> None:
        super().__init__(root, free_port(), HOST, 1)
        self.users = users
        self.imap_port = free_port()
        self.limits = False  # our own [limits] below: room for 1,000 IDLE sessions
        self.code = code  # run another tree's code (PYTHONPATH), None: this one

    def start(self) -> None:
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(self.code or BENCH_DIR.parent)
        try:
            super().start()
        finally:
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text()
        text = text.replace("[listen]\n", f'[listen]\nimap = "tcp:{self.imap_port}:'
                                          f'interface={HOST}"\n')
        text += ("\n[auth]\nallow_plaintext_without_tls = true\n"
                 "\n[limits]\nconnections = 1200\nconnections_per_ip = 1200\n")
        self.config.write_text(text)

    def add_user(self) -> None:
        """{PLAIN} passwords, as the Dovecot side has: this measures IMAP, not Argon2id."""
        self.data.mkdir(parents=True, exist_ok=True)
        users = self.data / "users"
        users.write_text("".join(f"{u}@{DOMAIN}:{{PLAIN}}{PASSWORD}\n" for u in self.users))
        os.chmod(users, 0o600)

    def mail_root(self) -> Path:
        return self.data / "mail" / DOMAIN

    def login_name(self, user: str) -> str:
        return f"{user}@{DOMAIN}"


class DovecotImap(DovecotInstance):
    """Dovecot with room for 1,000 sessions of 10 users from one address."""

    def write_config(self) -> None:
        super().write_config()
        with open(self.config, "a") as f:
            f.write("default_client_limit = 2400\ndefault_process_limit = 1200\n"
                    "service imap {\n  process_limit = 1200\n}\n"
                    # COMPRESS=DEFLATE (Debian's dovecot-imapd ships the plugin).
                    "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n")

    def login_name(self, user: str) -> str:
        return user


# -- the client --------------------------------------------------------------------------------


class ImapError(Exception):
    pass


class Client:
    """A minimal IMAP client: one command at a time, whole responses read in big chunks.

    A response is complete when the buffer ends with a line that starts with the tag.
    (A literal whose last line looks like our tag would fool it; the benchmark's
    messages never contain one.)
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.n = 0

    @classmethod
    async def connect(cls, port: int, user: str, select: bool = True) -> Client:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
        client = cls(reader, writer)
        greeting = await reader.readuntil(b"\r\n")
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting {greeting!r}")
        await client.command(f"LOGIN {user} {PASSWORD}".encode())
        if select:
            await client.command(b"SELECT INBOX")
        return client

    def _send(self, data: bytes) -> None:
        self.writer.write(data)

    def _decode(self, chunk: bytes) -> bytes:
        """What a read chunk carries (DeflateClient inflates it)."""
        return chunk

    async def command(self, line: bytes) -> bytes:
        self.n += 1
        tag = b"a%d" % self.n
        self._send(tag + b" " + line + b"\r\n")
        buf = bytearray()
        marker = tag + b" "
        while True:
            try:
                chunk = await asyncio.wait_for(self.reader.read(1 << 20), TIMEOUT)
            except TimeoutError:
                raise ImapError(f"no complete answer to {line[:60]!r} in {TIMEOUT} s: "
                                f"{bytes(buf[-300:])!r}") from None
            if not chunk:
                raise ImapError(f"connection closed during {line[:60]!r}")
            buf += self._decode(chunk)
            if buf.endswith(b"\r\n"):
                start = buf.rfind(b"\r\n", 0, len(buf) - 2)
                start = 0 if start < 0 else start + 2
                if buf.startswith(marker, start):
                    if not buf.startswith(marker + b"OK", start):
                        raise ImapError(f"{line[:60]!r}: {bytes(buf[start:])!r}")
                    return bytes(buf)

    async def idle(self) -> None:
        self.n += 1
        self.writer.write(b"a%d IDLE\r\n" % self.n)
        line = await self.reader.readuntil(b"\r\n")
        while not line.startswith(b"+"):
            line = await self.reader.readuntil(b"\r\n")

    async def logout(self) -> None:
        try:
            await self.command(b"LOGOUT")
        except (ImapError, ConnectionError):
            pass
        self.writer.close()


class DeflateClient(Client):
    """A Client after COMPRESS DEFLATE: raw deflate both ways, inflated as it is read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.out: zlib._Compress | None = None  # plain until COMPRESS's OK
        self.inflate = zlib.decompressobj(-15)
        self.wire = 0  # octets read after COMPRESS
        self.raw = 0  # and what they inflated to

    @classmethod
    async def connect(cls, port: int, user: str, select: bool = True) -> Client:
        client = await super().connect(port, user, select=False)
        assert isinstance(client, DeflateClient)
        await client.command(b"COMPRESS DEFLATE")
        client.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        if select:
            await client.command(b"SELECT INBOX")
        return client

    def _send(self, data: bytes) -> None:
        if self.out is None:
            super()._send(data)
        else:
            self.writer.write(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def _decode(self, chunk: bytes) -> bytes:
        if self.out is None:
            return chunk
        self.wire += len(chunk)
        plain = self.inflate.decompress(chunk)
        self.raw += len(plain)
        return plain


def fetch_count(response: bytes) -> int:
    return response.count(b" FETCH (")


# -- the phases --------------------------------------------------------------------------------

Phase = Callable[[Client], Awaitable[None]]


def phases(count: int) -> list[tuple[str, bytes, Callable[[bytes], bool]]]:
    """(label, command, check of the response) for the phases run on a selected session."""
    return [
        ("FETCH flags", b"FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)",
         lambda r: fetch_count(r) == count),
        ("FETCH headers", b"FETCH 1:* " + HEADER_FIELDS, lambda r: fetch_count(r) == count),
        ("FETCH ENVELOPE", b"FETCH 1:* ENVELOPE", lambda r: fetch_count(r) == count),
        ("FETCH BODYSTRUCTURE", b"FETCH 1:* BODYSTRUCTURE", lambda r: fetch_count(r) == count),
        ("FETCH bodies", b"FETCH 1:* BODY.PEEK[]", lambda r: fetch_count(r) == count),
        ("UID SEARCH", b'UID SEARCH HEADER SUBJECT "invoice"', lambda r: b"* SEARCH" in r),
        ("STORE +FLAGS", b"STORE 1:* +FLAGS (\\Flagged)", lambda r: fetch_count(r) >= 1),
        ("SORT by date", b"SORT (DATE) UTF-8 ALL", lambda r: sort_count(r) == count),
        ("SORT by subject", b"SORT (SUBJECT) UTF-8 ALL", lambda r: sort_count(r) == count),
        ("THREAD REFERENCES", b"THREAD REFERENCES UTF-8 ALL", lambda r: b"* THREAD (" in r),
    ]


def sort_count(response: bytes) -> int:
    """Numbers in the `* SORT` line."""
    line = response[response.find(b"* SORT"):].split(b"\r\n", 1)[0]
    return len(line.split()) - 2


async def timed_select(port: int, user: str) -> float:
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
    client = Client(reader, writer)
    t0 = time.perf_counter()
    await reader.readuntil(b"\r\n")
    await client.command(f"LOGIN {user} {PASSWORD}".encode())
    await client.command(b"SELECT INBOX")
    elapsed = time.perf_counter() - t0
    await client.logout()
    return elapsed


async def run_select(port: int, users: list[str]) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(timed_select(port, u) for u in users))
    return time.perf_counter() - t0


async def run_phase(clients: list[Client], command: bytes,
                    check: Callable[[bytes], bool]) -> float:
    async def one(c: Client) -> None:
        response = await c.command(command)
        if not check(response):
            raise ImapError(f"{command!r}: unexpected answer {response[:300]!r}...")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in clients))
    elapsed = time.perf_counter() - t0
    if command.startswith(b"STORE"):  # undo, untimed, so every run does the same work
        await asyncio.gather(*(c.command(b"STORE 1:* -FLAGS.SILENT (\\Flagged)")
                               for c in clients))
    return elapsed


async def bench_server(port: int, users: list[str], count: int, repeat: int,
                       label_rows: dict[str, dict[str, float]], prefix: str) -> None:
    """Cold (first) and warm (median) times of every phase for len(users) clients."""
    record = label_rows.setdefault
    times = [await run_select(port, users) for _ in range(repeat + 1)]
    record(f"{prefix}login+SELECT", {})["cold"] = times[0]
    record(f"{prefix}login+SELECT", {})["warm"] = statistics.median(times[1:])
    clients = [await Client.connect(port, u) for u in users]
    try:
        for label, command, check in phases(count):
            if ONLY and not any(word.lower() in label.lower() for word in ONLY):
                continue
            runs = [await run_phase(clients, command, check) for _ in range(repeat + 1)]
            record(prefix + label, {})["cold"] = runs[0]
            record(prefix + label, {})["warm"] = statistics.median(runs[1:])
    finally:
        for c in clients:
            await c.logout()
    # COMPRESS'd full FETCH: after the plain phases, so the index is warm for both.
    deflating = [await DeflateClient.connect(port, u) for u in users]
    try:
        runs = [await run_phase(deflating, b"FETCH 1:* BODY.PEEK[]",
                                lambda r: fetch_count(r) == count) for _ in range(repeat + 1)]
        row = record(prefix + "COMPRESS'd FETCH bodies", {})
        row["cold"] = runs[0]
        row["warm"] = statistics.median(runs[1:])
        wire = sum(c.wire for c in deflating if isinstance(c, DeflateClient))
        raw = sum(c.raw for c in deflating if isinstance(c, DeflateClient))
        print(f"    COMPRESS'd FETCH: {wire / (repeat + 1) / len(users) / 1e6:.1f} MB on "
              f"the wire per client and run, {wire / raw * 100:.0f} % of "
              f"{raw / (repeat + 1) / len(users) / 1e6:.1f} MB", flush=True)
    finally:
        for c in deflating:
            await c.logout()


def _hundred_uids(count: int) -> bytes:
    """100 UIDs spread over the folder (the first `count` UIDs exist: fresh Maildirs)."""
    step = max(count // 100, 1)
    return b",".join(b"%d" % (1 + i * step) for i in range(min(100, count)))


async def qresync_resync(port: int, login: str, count: int, repeat: int) -> tuple[float, float]:
    """(cold, warm) time of a QRESYNC SELECT after another session changed 100 messages'
    flags: what a phone pays to catch up on a big folder (RFC 7162 3.2.5)."""
    reader = await Client.connect(port, login, select=False)
    writer = await Client.connect(port, login)
    await reader.command(b"ENABLE QRESYNC")
    uids = _hundred_uids(count)
    runs = []
    try:
        for n in range(repeat + 1):
            answer = await reader.command(b"SELECT INBOX")
            validity = re.search(rb"UIDVALIDITY (\d+)", answer)
            highest = re.search(rb"HIGHESTMODSEQ (\d+)", answer)
            if validity is None or highest is None:
                raise ImapError(f"SELECT without UIDVALIDITY/HIGHESTMODSEQ: {answer[-300:]!r}")
            await reader.command(b"UNSELECT")
            sign = b"+" if n % 2 == 0 else b"-"  # every run changes the same 100 messages
            await writer.command(b"UID STORE " + uids + b" " + sign
                                 + b"FLAGS.SILENT (\\Answered)")
            t0 = time.perf_counter()
            answer = await reader.command(b"SELECT INBOX (QRESYNC (%s %s))" % (
                validity.group(1), highest.group(1)))
            runs.append(time.perf_counter() - t0)
            if fetch_count(answer) != min(100, count):
                raise ImapError(f"QRESYNC: {fetch_count(answer)} FETCH answers, not 100")
            await reader.command(b"UNSELECT")
    finally:
        await reader.logout()
        await writer.logout()
    return runs[0], statistics.median(runs[1:])


async def idle_rss(port: int, root_pid: int, logins: list[str], sessions: int) -> tuple[float, float]:
    """KiB of RSS and PSS per idle IDLE session (growth of the server tree / sessions)."""
    pids = proctree.descendants(root_pid)
    rss0, pss0 = proctree.rss_kib(pids), proctree.pss_kib(pids)
    gate = asyncio.Semaphore(50)
    clients: list[Client] = []

    async def open_one(i: int) -> None:
        async with gate:
            c = await Client.connect(port, logins[i % len(logins)])
            await c.idle()
            clients.append(c)

    await asyncio.gather(*(open_one(i) for i in range(sessions)))
    await asyncio.sleep(2)
    pids = proctree.descendants(root_pid)
    rss1, pss1 = proctree.rss_kib(pids), proctree.pss_kib(pids)
    for c in clients:
        c.writer.write(b"DONE\r\n")
        c.writer.close()
    await asyncio.sleep(1)
    return (rss1 - rss0) / sessions, (pss1 - pss0) / sessions


# -- the run -----------------------------------------------------------------------------------


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs > 0 else "-"


def bench_size(root: Path, count: int, clients: list[int], repeat: int, idle: int,
               rows: list[str], before: Path | None = None,
               before_rows: list[str] | None = None) -> None:
    n_users = max(max(clients), 10 if idle else 1)
    users = [f"u{i}" for i in range(n_users)]
    print(f"\n== folder of {count:,} messages, users {users[0]}..{users[-1]}", flush=True)
    master = make_master(root / "master", count)
    ours = OursImap(root / "ours", users)
    dovecot = DovecotImap(root / "dovecot", root / "dovecot-mail",
                          {u: PASSWORD for u in users}, protocols=("imap",))
    ours.write_config()
    old_ours = OursImap(root / "ours-before", users, before) if before else None
    if old_ours is not None:
        old_ours.write_config()
    for u in users:
        link_maildir(master, ours.mail_root() / u)
        link_maildir(master, root / "dovecot-mail" / u)
        if old_ours is not None:
            link_maildir(master, old_ours.mail_root() / u)
    results: dict[str, dict[str, dict[str, float]]] = {"Dovecot": {}, "ours": {},
                                                        "ours-before": {}}
    idle_results: dict[str, tuple[float, float]] = {}
    with dovecot, ours, (old_ours or contextlib.nullcontext()):
        servers = [("Dovecot", dovecot, dovecot.ports["imap"]), ("ours", ours, ours.imap_port)]
        if old_ours is not None:
            servers.insert(1, ("ours-before", old_ours, old_ours.imap_port))
        for name, inst, port in servers:
            login = inst.login_name(users[0])
            resync = asyncio.run(qresync_resync(port, login, count, repeat))
            results[name]["1|QRESYNC resync, 100 changed"] = {"cold": resync[0],
                                                             "warm": resync[1]}
            print(f"  {name:8} QRESYNC resync: cold {resync[0] * 1000:9.1f} ms"
                  f"  warm {resync[1] * 1000:9.1f} ms", flush=True)
            for c in clients:
                logins = [inst.login_name(u) for u in users[:c]]
                t0 = time.perf_counter()
                asyncio.run(bench_server(port, logins, count, repeat, results[name],
                                         f"{c}|"))
                print(f"  {name:8} {c:2} clients: {time.perf_counter() - t0:6.1f} s",
                      flush=True)
                for key, v in results[name].items():
                    if key.startswith(f"{c}|"):
                        phase = key.split("|", 1)[1]
                        print(f"    {phase:22}: cold {v['cold'] * 1000:9.1f} ms"
                              f"  warm {v['warm'] * 1000:9.1f} ms", flush=True)
            if idle and name != "ours-before":
                logins = [inst.login_name(u) for u in users[:10]]
                idle_results[name] = asyncio.run(idle_rss(port, inst.master_pid, logins, idle))
                print(f"  {name:8} {idle} IDLE sessions: {idle_results[name][0]:.1f} KiB RSS, "
                      f"{idle_results[name][1]:.1f} KiB PSS per session", flush=True)
    for key in results["ours"]:
        c, label = key.split("|")
        d, o = results["Dovecot"][key], results["ours"][key]
        rows.append(f"| {count:,} | {label} | {c} | {d['cold'] * 1000:.0f} / {o['cold'] * 1000:.0f}"
                    f" | {ratio(o['cold'], d['cold'])} | {d['warm'] * 1000:.1f} / "
                    f"{o['warm'] * 1000:.1f} | {ratio(o['warm'], d['warm'])} |")
    for key in results["ours-before"]:
        c, label = key.split("|")
        d, b, o = results["Dovecot"][key], results["ours-before"][key], results["ours"][key]
        assert before_rows is not None
        before_rows.append(
            f"| {count:,} | {label} | {c} | {d['cold'] * 1000:.0f} / {b['cold'] * 1000:.0f} / "
            f"{o['cold'] * 1000:.0f} | {ratio(b['cold'], d['cold'])} -> "
            f"{ratio(o['cold'], d['cold'])} | {d['warm'] * 1000:.1f} / {b['warm'] * 1000:.1f} / "
            f"{o['warm'] * 1000:.1f} | {ratio(b['warm'], d['warm'])} -> "
            f"{ratio(o['warm'], d['warm'])} |")
    if idle_results:
        d_rss, d_pss = idle_results["Dovecot"]
        o_rss, o_pss = idle_results["ours"]
        rows.append(f"| {count:,} | RSS per IDLE session ({idle} sessions), KiB | {idle} | "
                    f"RSS {d_rss:.0f} / {o_rss:.0f} | {ratio(o_rss, d_rss)} | "
                    f"PSS {d_pss:.0f} / {o_pss:.0f} | {ratio(o_pss, d_pss)} |")


def bench_big(root: Path, count: int, repeat: int, rows: list[str]) -> None:
    """The big folder: login+SELECT and FETCH flags / headers, one client."""
    print(f"\n== folder of {count:,} messages, one client", flush=True)
    master = make_master(root / "master", count)
    ours = OursImap(root / "ours", ["u0"])
    dovecot = DovecotImap(root / "dovecot", root / "dovecot-mail", {"u0": PASSWORD},
                          protocols=("imap",))
    ours.write_config()
    link_maildir(master, ours.mail_root() / "u0")
    link_maildir(master, root / "dovecot-mail" / "u0")
    got: dict[str, dict[str, tuple[float, float]]] = {}
    big_phases = [p for p in phases(count) if p[0] in ("FETCH flags", "FETCH headers")]

    async def run(port: int, login: str) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        sel = [await run_select(port, [login]) for _ in range(repeat + 1)]
        out["login+SELECT"] = (sel[0], statistics.median(sel[1:]))
        client = await Client.connect(port, login)
        for label, command, check in big_phases:
            runs = [await run_phase([client], command, check) for _ in range(repeat + 1)]
            out[label] = (runs[0], statistics.median(runs[1:]))
        await client.logout()
        out["QRESYNC resync, 100 changed"] = await qresync_resync(port, login, count, repeat)
        return out

    with dovecot, ours:
        for name, port, login in (("Dovecot", dovecot.ports["imap"], "u0"),
                                  ("ours", ours.imap_port, f"u0@{DOMAIN}")):
            got[name] = asyncio.run(run(port, login))
            for label, (cold, warm) in got[name].items():
                print(f"  {name:8} {label:14}: cold {cold * 1000:9.1f} ms  warm {warm * 1000:9.1f} ms",
                      flush=True)
    for label in got["ours"]:
        (dc, dw), (oc, ow) = got["Dovecot"][label], got["ours"][label]
        rows.append(f"| {count:,} | {label} | 1 | {dc * 1000:.0f} / {oc * 1000:.0f} | "
                    f"{ratio(oc, dc)} | {dw * 1000:.1f} / {ow * 1000:.1f} | {ratio(ow, dw)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="folder sizes, e.g. 1000,10000")
    ap.add_argument("--clients", default="1,10", help="parallel clients, e.g. 1,10")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs per point (median)")
    ap.add_argument("--idle", type=int, default=1000,
                    help="IDLE sessions for the RSS point, on the smallest folder (0: skip)")
    ap.add_argument("--big", type=int, default=100_000, help="the big folder's size")
    ap.add_argument("--no-big", action="store_true", help="skip the big folder")
    ap.add_argument("--tmpdir", default=None, help="where the Maildirs go")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--output", default=str(RESULTS), help="Markdown file ('' = none)")
    ap.add_argument("--only", default="",
                    help="comma-separated words: run only phases whose label has one")
    ap.add_argument("--before", default=None,
                    help="also run ours from this tree (e.g. a git worktree of the base "
                         "commit): ours-before, ours and Dovecot in one run")
    args = ap.parse_args(argv)
    ONLY[:] = [w for w in args.only.split(",") if w]
    sizes = [int(x) for x in args.sizes.split(",") if x]  # "": only the big folder
    clients = [int(x) for x in args.clients.split(",")]
    rows: list[str] = []
    before_rows: list[str] = []
    before = Path(args.before).resolve() if args.before else None
    tmp = Path(tempfile.mkdtemp(prefix="imapbench-", dir=args.tmpdir))
    try:
        for i, size in enumerate(sizes):
            bench_size(tmp / f"n{size}", size, clients, args.repeat,
                       args.idle if i == 0 else 0, rows, before, before_rows)
            if not args.keep:
                shutil.rmtree(tmp / f"n{size}", ignore_errors=True)
        if not args.no_big:
            bench_big(tmp / "big", args.big, args.repeat, rows)
    except (OursError, DovecotError, ImapError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    version = subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True,
                             text=True).stdout.strip()
    table = "\n".join([
        f"IMAP, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores "
        f"(shared, loaded), warm = median of {args.repeat}; Dovecot {version}; "
        "times in ms, Dovecot / ours; ratio = ours / Dovecot (lower is better)",
        "",
        "| messages | phase | clients | cold D / ours | ratio | warm D / ours | ratio |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    if before_rows:
        table += "\n".join([
            "\n\nThe same run, ours before (the tree at --before) and after: times in ms, "
            "Dovecot / ours-before / ours; ratios ours-before -> ours (over Dovecot)",
            "",
            "| messages | phase | clients | cold D / before / after | ratio | "
            "warm D / before / after | ratio |",
            "|---|---|---|---|---|---|---|",
            *before_rows,
        ])
    print("\n" + table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
