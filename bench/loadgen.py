"""An asyncio SMTP load generator: N connections sending messages back to back.

Each connection says EHLO once, then loops: MAIL FROM + RCPT TO + DATA in one write
(RFC 2920 PIPELINING; DATA is the last command of the group), reads the three replies,
sends the message and the terminating <CRLF>.<CRLF> in one go, and reads the final reply.
The latency of a message runs from the write of MAIL FROM to the reply after the end of
data. Connections take messages from one shared counter until `total` have been sent, so
the total is exact whatever the number of connections. The clock starts once every
connection has been greeted and said EHLO.

Usable from the command line against any SMTP listener on loopback:

    python bench/loadgen.py --port 2525 --connections 10 --messages 1000 --size 4096
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass, field

LINE = 76  # body line length without CRLF


def make_message(size: int, rcpt: str, sender: str) -> tuple[bytes, bytes]:
    """A (header-prefix, rest) pair; the message is prefix + b"%d" % n + rest, whose
    length is `size` bytes (give or take the digits of n) before the final ".\\r\\n".

    No line starts with ".", so no dot-stuffing is needed.
    """
    prefix = b"Message-ID: <bench."
    head = (
        f"@loadgen.test>\r\nFrom: Load Generator <{sender}>\r\nTo: <{rcpt}>\r\n"
        f"Subject: benchmark message\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    used = len(prefix) + 8 + len(head)
    body_len = max(size - used, LINE + 2)
    line = (b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:LINE]
    full, rest = divmod(body_len, LINE + 2)
    body = (line + b"\r\n") * full
    if rest > 2:
        body += line[: rest - 2] + b"\r\n"
    return prefix, head + body + b".\r\n"


@dataclass
class LoadResult:
    connections: int
    size: int
    requested: int
    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0  # first MAIL FROM to the last final reply
    latencies: list[float] = field(default_factory=list)  # seconds, successful messages
    first_error: str | None = None
    pipelining: bool = True
    loadgen_cpu_s: float = 0.0  # CPU of this process during the timed part
    start: float = 0.0  # time.perf_counter() when the timed part began

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in milliseconds (nearest rank)."""
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        k = max(0, min(len(xs) - 1, round(p / 100 * len(xs) + 0.5) - 1))
        return xs[k] * 1000


class SMTPError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (possibly multi-line) reply: (code, last line)."""
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPError("connection closed by server")
        if len(line) < 4 or line[3:4] != b"-":
            try:
                return int(line[:3]), line
            except ValueError as e:
                raise SMTPError(f"bad reply {line!r}") from e


async def _lines(reader: asyncio.StreamReader) -> list[bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPError("connection closed by server")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


class _Run:
    def __init__(
        self, host: str, port: int, conns: int, total: int, size: int, sender: str, rcpt: str
    ) -> None:
        self.host, self.port = host, port
        self.conns, self.total = conns, total
        self.prefix, self.rest = make_message(size, rcpt, sender)
        self.envelope = f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        self.next = 0
        self.result = LoadResult(connections=conns, size=size, requested=total)
        self.ready = 0
        self.go = asyncio.Event()
        self.all_ready = asyncio.Event()
        self.t_end = 0.0
        self.started: asyncio.Event | None = None

    def _fail(self, msg: str) -> None:
        self.result.failed += 1
        if self.result.first_error is None:
            self.result.first_error = msg

    async def session(self, cid: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        except OSError as e:
            self._fail(f"connect: {e}")
            self._mark_ready()
            return
        try:
            code, line = await _reply(reader)
            if code != 220:
                raise SMTPError(f"greeting {line!r}")
            writer.write(b"EHLO loadgen.test\r\n")
            ehlo = await _lines(reader)
            if not ehlo[-1].startswith(b"250"):
                raise SMTPError(f"EHLO {ehlo[-1]!r}")
            pipelining = any(x[4:].strip().upper() == b"PIPELINING" for x in ehlo)
            if not pipelining:
                self.result.pipelining = False
        except (OSError, SMTPError) as e:
            self._fail(f"conn {cid} setup: {e}")
            writer.close()
            self._mark_ready()
            return
        self._mark_ready()
        await self.go.wait()
        await self._send_loop(reader, writer, pipelining)

    def _mark_ready(self) -> None:
        self.ready += 1
        if self.ready == self.conns:
            self.all_ready.set()

    async def _send_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipelining: bool
    ) -> None:
        r = self.result
        clock = time.perf_counter
        try:
            while self.next < self.total:
                n = self.next
                self.next += 1
                t0 = clock()
                if pipelining:
                    writer.write(self.envelope)
                    codes = [(await _reply(reader)) for _ in range(3)]
                else:  # lock-step fallback, for servers that do not offer PIPELINING
                    codes = []
                    for cmd in self.envelope.split(b"\r\n")[:3]:
                        writer.write(cmd + b"\r\n")
                        codes.append(await _reply(reader))
                        if codes[-1][0] >= 400:
                            break
                if [c for c, _ in codes] != [250, 250, 354]:
                    self._fail(f"envelope replies {[x for _, x in codes]!r}")
                    if codes and codes[-1][0] == 354:  # DATA went through: end it empty
                        writer.write(b".\r\n")
                        await _reply(reader)
                    writer.write(b"RSET\r\n")
                    await _reply(reader)
                    continue
                writer.writelines((self.prefix, b"%d" % n, self.rest))
                await writer.drain()
                code, line = await _reply(reader)
                if code == 250:
                    r.ok += 1
                    r.latencies.append(clock() - t0)
                    self.t_end = clock()
                else:
                    self._fail(f"end of data {line!r}")
            writer.write(b"QUIT\r\n")
            await writer.drain()
            try:
                await asyncio.wait_for(_reply(reader), 5)
            except (TimeoutError, SMTPError):
                pass
        except (OSError, SMTPError) as e:
            self._fail(f"session: {e}")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def run(self) -> LoadResult:
        tasks = [asyncio.create_task(self.session(i)) for i in range(self.conns)]
        await self.all_ready.wait()
        cpu0 = sum(os.times()[:2])
        t0 = time.perf_counter()
        self.t_end = t0
        self.result.start = t0
        self.go.set()
        if self.started is not None:
            self.started.set()
        await asyncio.gather(*tasks)
        self.result.elapsed = self.t_end - t0
        self.result.loadgen_cpu_s = sum(os.times()[:2]) - cpu0
        return self.result


async def run_load(
    host: str,
    port: int,
    connections: int,
    total: int,
    size: int,
    sender: str = "loadgen@client.test",
    rcpt: str = "user@bench.test",
    started: asyncio.Event | None = None,
) -> LoadResult:
    """Send `total` messages of `size` bytes over `connections` connections.

    If `started` is given it is set the moment the timed part begins (every connection
    greeted); the result's `start` is the perf_counter() of that moment.
    """
    run = _Run(host, port, connections, total, size, sender, rcpt)
    run.started = started
    return await run.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--sender", default="loadgen@client.test")
    ap.add_argument("--rcpt", default="user@bench.test")
    a = ap.parse_args()
    if not a.host.startswith("127."):
        ap.error("loopback only (127.0.0.0/8)")
    r = asyncio.run(run_load(a.host, a.port, a.connections, a.messages, a.size, a.sender, a.rcpt))
    print(
        f"ok={r.ok} failed={r.failed} elapsed={r.elapsed:.3f}s rate={r.rate:.1f} msg/s "
        f"p50={r.percentile(50):.2f}ms p99={r.percentile(99):.2f}ms "
        f"loadgen_cpu={r.loadgen_cpu_s:.2f}s pipelining={r.pipelining}"
    )
    if r.first_error:
        print("first error:", r.first_error)


if __name__ == "__main__":
    main()
