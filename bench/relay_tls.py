"""Relay throughput with MTA-STS verification on vs opportunistic TLS, in one run.

One server of ours relays N queued messages by MX (a twisted.names server on
loopback) to a STARTTLS sink (asyncio, in its own process, certificate from a test
CA) in two ways that differ only in verification:

  opportunistic  to plain.test: no policy; STARTTLS, nothing checked
  mta-sts        to sts.test: an enforce policy (fetched once over HTTPS before the
                 first run, then cached): the MX must match, the chain is verified
                 against relay.ca_file and the name checked, the outcome recorded

Both do the same TLS handshakes, so the difference is what verification costs: the
policy lookup per connection (cached TXT, a thread hop), the PKIX check and the
TLS-RPT record. The modes alternate (order flipped each run); medians of the runs.

    .venv/bin/python bench/relay_tls.py --messages 1000 --size 4096 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent / "tests" / "queue"))

import proctree  # noqa: E402
from dns_server import DNSServer  # noqa: E402
from relay import free_port, message  # noqa: E402
from tls_support import PolicyServer, make_cert, server_context  # noqa: E402

HOST = "127.0.0.1"
SENDER = "loadgen@bench.local"
PER_DESTINATION = 20


def _sink(port: int, cert: str, key: str, count: Any, ready: Any) -> None:
    """A STARTTLS SMTP sink: PIPELINING, every message counted (a process of its own)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        writer.write(b"220 sink ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    extra = b"" if tls else b"250-STARTTLS\r\n"
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n" + extra + b"250 8BITMIME\r\n")
                elif verb == b"STAR":
                    writer.write(b"220 2.0.0 go\r\n")
                    await writer.drain()
                    await writer.start_tls(context)
                    tls = True
                    continue
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    with count.get_lock():
                        count.value += 1
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 ok\r\n")
                if not reader._buffer:  # type: ignore[attr-defined]  # pipelined: answer in one go
                    await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(session, HOST, port, backlog=256)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from server_harness import make_server

    from mailserver.queue.envelope import QueueEntry, RecipientState, new_queue_id
    from mailserver.queue.spool import Spool

    root = Path(tempfile.mkdtemp(prefix="bench-relay-tls-"))
    ca = make_cert(["Bench CA"], ca=True)
    ca_file, _ = ca.write(root / "ca", "ca")
    cert, key = make_cert(["mx.sink.test"], ca).write(root / "sink", "sink")
    port = free_port()
    count = multiprocessing.Value("i", 0)
    ready = multiprocessing.Event()
    sink = multiprocessing.Process(target=_sink, args=(port, str(cert), str(key), count,
                                                       ready), daemon=True)
    sink.start()
    ready.wait(10)
    policies = PolicyServer(
        {"sts.test": "version: STSv1\nmode: enforce\nmx: mx.sink.test\nmax_age: 86400\n"},
        server_context(make_cert(["mta-sts.sts.test"], ca), root / "web", "web"))
    dns = DNSServer({
        "plain.test": {"MX": [[10, "mx.sink.test"]]},
        "sts.test": {"MX": [[10, "mx.sink.test"]]},
        "mx.sink.test": {"A": [HOST]},
        "_mta-sts.sts.test": {"TXT": ["v=STSv1; id=bench1"]},
        "mta-sts.sts.test": {"A": [HOST]},
    }).start()
    server = make_server(
        root / "ours", hostname="bench.local", domains={"local": ["bench.local"]},
        # Not on the sink's address: the MX would be "ourselves" (a loop).
        listen={"smtp": "tcp:0:interface=127.0.0.2"},
        relay={"nameservers": [dns.nameserver], "port": port, "ca_file": str(ca_file),
               "https_port": policies.port, "connections_per_destination": PER_DESTINATION,
               "connections_total": 100})
    spool = Spool(server.data_dir / "queue")
    while "entries to deliver" not in server.log():  # recovery done: held/ is ours
        time.sleep(0.05)
    pid = server.proc.pid if server.proc else 0

    def drain(domain: str, n: int) -> float:
        with count.get_lock():
            count.value = 0
        ids = []
        for i in range(n):
            data = message(i, args.size)
            entry = QueueEntry(new_queue_id(), SENDER, [RecipientState(f"user@{domain}")],
                               size=len(data))
            tmp = spool.tmp_path(entry.id, "msg")
            tmp.write_bytes(data)
            spool.commit(entry, tmp)
            ids.append(entry.id)
        cpu0 = proctree.cpu_seconds(pid)
        t0 = time.perf_counter()
        for queue_id in ids:
            spool.release(queue_id)
        deadline = time.monotonic() + 600
        while count.value < n and time.monotonic() < deadline:
            time.sleep(0.01)
            if count.value < n and not spool.ids():  # bounced or deferred for ever
                break
        total = time.perf_counter() - t0
        while spool.ids():
            time.sleep(0.02)
        if count.value < n:
            raise SystemExit(f"{domain}: only {count.value} of {n} arrived\n{server.log()}")
        return total, proctree.cpu_seconds(pid) - cpu0

    try:
        drain("sts.test", 20)  # fetch and cache the policy; warm both paths
        drain("plain.test", 20)
        results: dict[str, list[float]] = {"opportunistic": [], "mta-sts": []}
        cpu: dict[str, list[float]] = {"opportunistic": [], "mta-sts": []}
        for run in range(args.runs):
            order = [("opportunistic", "plain.test"), ("mta-sts", "sts.test")]
            for label, domain in order if run % 2 == 0 else order[::-1]:
                seconds, used = drain(domain, args.messages)
                results[label].append(args.messages / seconds)
                cpu[label].append(used)
                print(f"  run {run + 1} {label:13} {args.messages / seconds:7.1f} msgs/s "
                      f"({seconds:.2f} s, server CPU {used:.2f} s)", flush=True)
        base = statistics.median(results["opportunistic"])
        for label in results:
            rate = statistics.median(results[label])
            print(f"{label:13} median {rate:7.1f} msgs/s ({rate / base:.2f}x), server CPU "
                  f"median {statistics.median(cpu[label]):.2f} s")
        verified = sum(1 for line in server.log_path.read_text().splitlines()
                       if "TLS mta-sts (policy mta-sts)" in line)
        print(f"verified sessions in the log: {verified}")
    finally:
        server.stop()
        dns.stop()
        policies.stop()
        sink.terminate()


if __name__ == "__main__":
    main()
