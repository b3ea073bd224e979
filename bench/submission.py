"""Submission benchmark: messages per second over STARTTLS + AUTH PLAIN, ours next to
Postfix's submission service (SASL through a throw-away Dovecot auth server), in one run.

Two workloads, both on 127.0.0.1 only, every message to user@bench.test (a local
Maildir on both sides; nothing is relayed):

  session per message   connect, EHLO, STARTTLS, EHLO, AUTH PLAIN, one message, QUIT:
                        what a desktop client does when it sends one mail; the TLS
                        handshake and the password hash dominate
  reused session        each connection authenticates once and then sends messages back
                        to back (MAIL/RCPT/DATA pipelined, RFC 2920)

Both servers hold the same Argon2id password hash (ours: `mailserver user add`; Dovecot
reads the same `{ARGON2ID}` string from its passwd-file) with Dovecot's auth cache off,
so each AUTH costs one hash on both sides. Postfix is configured like Debian's
master.cf submission entry: smtpd_tls_security_level=encrypt, smtpd_sasl_auth_enable,
reject_sender_login_mismatch, permit_sasl_authenticated.

Reported per server: msgs/s, latency p50/p99 (ms) of one message (whole session in the
first workload, MAIL..250 in the second), max RSS of the process tree (MiB; for Postfix
plus Dovecot's auth processes, which do its hashing). Argon2id takes 32 MiB per hash
while it runs, so concurrent logins show up in the peak RSS on both sides. The machine
is shared and noisy: a single run reports ratios, `--repeat 3` reports medians.

    sudo .venv/bin/python bench/submission.py [--sessions 100] [--messages 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import grp
import os
import pwd
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import proctree
from instance import ServerInstance
from ours_instance import OursInstance
from postfix_instance import DOMAIN, USER, PostfixInstance

HOST = "127.0.0.1"
ADDRESS = f"{USER}@{DOMAIN}"
PASSWORD = "pw"  # ours_instance.add_user sets this password
DOVECOT = "/usr/sbin/dovecot"
RESULTS = Path(__file__).resolve().parent / "results" / "submission.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- the servers ---------------------------------------------------------------------------


class OursSubmission(OursInstance):
    """Our server with a `submission` listener (its self-signed certificate)."""

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'hostname = "bench.local"\ndata_dir = "{self.data}"\n\n'
            f'[domains]\nlocal = ["{DOMAIN}"]\n\n'
            f'[listen]\nsubmission = "tcp:{self.port}:interface={self.host}"\n\n'
            "[limits]\nconnections_per_ip = 1000\n")

    def password_hash(self) -> str:
        users = (self.data / "users").read_text()
        return users.split("\n")[0].split(":", 1)[1].split(":")[0]


DOVECOT_AUTH = """\
# Throw-away SASL server for Postfix (bench/submission.py): auth only, no mail protocols.
protocols =
base_dir = {root}/run
state_dir = {root}/state
instance_name = bench-sasl-{tag}
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 0
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home=/nonexistent
}}
service auth {{
  unix_listener {root}/auth-client {{
    mode = 0666
  }}
}}
"""


class DovecotSASL(ServerInstance):
    def __init__(self, root: Path, password_hash: str) -> None:
        self.root = root
        self.socket = root / "auth-client"
        self.password_hash = password_hash
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
        (self.root / "passwd").write_text(f"{ADDRESS}:{self.password_hash}\n")
        config = self.root / "dovecot.conf"
        config.write_text(DOVECOT_AUTH.format(root=self.root, user="nobody", group=group,
                                              tag=os.getpid()))
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(config)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                raise RuntimeError(f"dovecot auth did not start: {err.decode()[-500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = proctree.descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        proctree.reap(pids, 5)
        self.proc = None


class PostfixSubmission(PostfixInstance):
    """Postfix with Debian's submission settings: TLS required, SASL via Dovecot."""

    def __init__(self, root: Path, port: int, sasl_socket: Path) -> None:
        super().__init__(root, port)
        self.sasl_socket = sasl_socket

    def main_cf(self, uid: int, gid: int) -> str:
        cert, key = self.root / "cert.pem", self.root / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "2",
                        "-subj", "/CN=bench.local"], check=True, capture_output=True)
        (self.config / "senders").write_text(f"{ADDRESS} {ADDRESS}\n")
        return super().main_cf(uid, gid).replace(
            "smtpd_tls_security_level = none\n",
            f"smtpd_tls_security_level = encrypt\nsmtpd_tls_auth_only = yes\n"
            f"smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
            f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\n"
            f"smtpd_sasl_path = {self.sasl_socket}\n"
            f"smtpd_sender_login_maps = texthash:{self.config}/senders\n"
            "smtpd_client_restrictions = permit_sasl_authenticated, reject\n"
            "smtpd_sender_restrictions = reject_sender_login_mismatch\n"
            "smtpd_relay_restrictions = permit_sasl_authenticated, reject\n"
        ).replace("smtpd_recipient_restrictions = permit_mynetworks, reject\n",
                  "smtpd_recipient_restrictions = permit_sasl_authenticated, reject\n")


# -- the load ------------------------------------------------------------------------------


@dataclass
class Result:
    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000 if xs else float("nan")


MESSAGE = (f"From: <{ADDRESS}>\r\nTo: <{ADDRESS}>\r\nSubject: bench\r\n"
           "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{n}@bench.test>\r\n\r\n")
BODY = ("abcdefghijklmnopqrstuvwxyz0123456789" * 2 + "\r\n") * 50  # ~3.7 KiB


async def reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed by server")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def expect(reader: asyncio.StreamReader, code: int) -> None:
    got, line = await reply(reader)
    if got != code:
        raise ConnectionError(f"expected {code}, got {line!r}")


async def open_authenticated(port: int, context: ssl.SSLContext) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    await expect(reader, 220)
    writer.write(b"EHLO bench.test\r\n")
    await expect(reader, 250)
    writer.write(b"STARTTLS\r\n")
    await expect(reader, 220)
    await writer.start_tls(context)
    writer.write(b"EHLO bench.test\r\n")
    await expect(reader, 250)
    token = base64.b64encode(f"\0{ADDRESS}\0{PASSWORD}".encode()).decode()
    writer.write(f"AUTH PLAIN {token}\r\n".encode())
    await expect(reader, 235)
    return reader, writer


async def send_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(f"MAIL FROM:<{ADDRESS}>\r\nRCPT TO:<{ADDRESS}>\r\nDATA\r\n".encode())
    for code in (250, 250, 354):
        await expect(reader, code)
    writer.write(MESSAGE.replace("{n}", str(n)).encode() + BODY.encode() + b".\r\n")
    await expect(reader, 250)


async def run(port: int, conns: int, total: int, per_message: bool) -> Result:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    result = Result()
    counter = iter(range(total))
    clock = time.perf_counter

    async def worker() -> None:
        session = None
        for n in counter:
            t0 = clock()
            try:
                if session is None:
                    session = await open_authenticated(port, context)
                    if not per_message:
                        t0 = clock()
                await send_one(*session, n)
                if per_message:
                    session[1].write(b"QUIT\r\n")
                    await reply(session[0])
                    session[1].close()
                    session = None
                result.latencies.append(clock() - t0)
                result.ok += 1
            except (OSError, ConnectionError, ssl.SSLError) as e:
                result.failed += 1
                result.first_error = result.first_error or str(e)
                session = None
        if session is not None:
            session[1].write(b"QUIT\r\n")
            session[1].close()

    start = clock()
    await asyncio.gather(*(worker() for _ in range(conns)))
    result.elapsed = clock() - start
    return result


# -- the comparison ------------------------------------------------------------------------


def measure(port: int, pids: list[int], maildir: Path, conns: int, total: int,
            per_message: bool) -> tuple[Result, float]:
    """One run; the RSS is the sum of each process tree's maximum (Postfix + Dovecot's
    auth server, which does Postfix's password hashing: an upper bound)."""
    with contextlib.ExitStack() as stack:
        samplers = [stack.enter_context(proctree.TreeSampler(pid)) for pid in pids]
        result = asyncio.run(run(port, conns, total, per_message))
    for sub in ("new", "cur"):
        for p in (maildir / sub).glob("*"):
            p.unlink()
    return result, sum(s.usage.max_rss_kib for s in samplers) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100,
                        help="messages in the session-per-message workload")
    parser.add_argument("--messages", type=int, default=1000,
                        help="messages in the reused-session workload")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-postfix", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-submission-", dir="/tmp"))
    os.chmod(root, 0o755)
    rows: list[tuple[str, str, Result, float]] = []
    try:
        ours = OursSubmission(root / "ours", free_port())
        servers: list[tuple[str, ServerInstance, int, Path]] = []
        with ours:
            hash_ = ours.password_hash()
            servers.append(("ours", ours, ours.port, ours.maildir))
            for workload, total, per in (("session per message", args.sessions, True),
                                         ("reused session", args.messages, False)):
                runs = [measure(ours.port, [ours.master_pid], ours.maildir,
                                args.connections, total, per) for _ in range(args.repeat)]
                rows.append(("ours", workload, *median(runs)))
        if not args.no_postfix and os.geteuid() == 0 and shutil.which("postfix"):
            with DovecotSASL(root / "sasl", hash_) as sasl:
                pf = PostfixSubmission(root / "postfix", free_port(), sasl.socket)
                with pf:
                    for workload, total, per in (("session per message", args.sessions, True),
                                                 ("reused session", args.messages, False)):
                        runs = [measure(pf.port, [pf.master_pid, sasl.pid], pf.maildir,
                                        args.connections, total, per)
                                for _ in range(args.repeat)]
                        rows.append(("postfix", workload, *median(runs)))
        else:
            print("Postfix side skipped (needs root, postfix and dovecot)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(rows, args)
    return 0


def median(runs: list[tuple[Result, float]]) -> tuple[Result, float]:
    ordered = sorted(runs, key=lambda r: r[0].rate)
    return ordered[len(ordered) // 2][0], statistics.median(r[1] for r in runs)


def report(rows: list[tuple[str, str, Result, float]], args: argparse.Namespace) -> None:
    """Print the table as Markdown and keep it in bench/results/submission.md."""
    out = [f"Submission over STARTTLS + AUTH PLAIN, {args.connections} connections, "
           f"~4 KiB messages, {os.cpu_count()} CPUs (shared, loaded machine), "
           f"median of {args.repeat}", "",
           "| server | workload | msgs/s | p50 ms | p99 ms | max RSS MiB | failed |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for server, workload, r, rss in rows:
        out.append(f"| {server} | {workload} | {r.rate:,.1f} | {r.pct(50):,.1f} | "
                   f"{r.pct(99):,.1f} | {rss:,.1f} | {r.failed}"
                   + (f" ({r.first_error})" if r.first_error else "") + " |")
    by = {(s, w): r.rate for s, w, r, _ in rows}
    for workload in ("session per message", "reused session"):
        if ("ours", workload) in by and by.get(("postfix", workload)):
            out.append(f"\n{workload}: ours / postfix = "
                       f"{by[('ours', workload)] / by[('postfix', workload)]:.2f}")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
