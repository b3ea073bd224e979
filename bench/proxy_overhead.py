"""What the PROXY protocol wrapper (app/proxyproto.py) costs a connection.

Starts our server from each given tree (PYTHONPATH=TREE twistd mailserver; the tree
before the wrapper and the one with it), port 25 on 127.0.0.1, and measures short SMTP
sessions (connect, 220, EHLO, 250, QUIT, 221, close) from 20 parallel clients:

  plain   from 127.0.1.1-250 (untrusted: the wrapper only looks at the first octets)
  proxied from 127.0.0.2, each connection opened with a PROXY v1 header naming one of
          192.0.2.1-250 (trusted; only on a tree that has cluster.proxy_protocol)

Sessions per second and the server's CPU seconds (utime+stime from /proc) per 1000
sessions, medians of 3 runs, runs interleaved between the trees. On a loaded machine
the CPU time is the steadier number: other processes stretch the wall clock, not it.

    python bench/proxy_overhead.py --tree before=/tmp/before --tree after=.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CLIENTS = 20
SESSIONS = 3000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tree: Path, root: Path, proxy: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = (f'hostname = "bench.local"\ndata_dir = "{root}/data"\nprocesses = 1\n'
              f'[domains]\nlocal = ["bench.test"]\n'
              f'[listen]\nsmtp = "tcp:{port}:interface=127.0.0.1"\n'
              f'[limits]\nconnections_per_ip = 1000\n')
    if proxy:
        config += ('[cluster]\ntrusted_proxies = ["127.0.0.2/32"]\n'
                   'proxy_protocol = ["smtp"]\n')
    (root / "mailserver.toml").write_text(config)
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "mailserver",
                             "--config", str(root / "mailserver.toml")], cwd=root, env=env,
                            stdout=open(root / "log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{tree}: server did not start:\n{(root / 'log').read_text()[-2000:]}")


async def session(port: int, source: str, header: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(source, 0))
    writer.write(header)
    line = await reader.readline()
    assert line.startswith(b"220 "), line
    writer.write(b"EHLO bench.client\r\n")
    while not (line := await reader.readline()).startswith(b"250 "):
        assert line.startswith(b"250-"), line
    writer.write(b"QUIT\r\n")
    assert (await reader.readline()).startswith(b"221 ")
    writer.close()
    await writer.wait_closed()


async def load(port: int, proxied: bool) -> float:
    count = iter(range(SESSIONS))

    async def client() -> None:
        for n in count:
            header = (f"PROXY TCP4 192.0.2.{n % 250 + 1} 127.0.0.1 {10000 + n} 25\r\n"
                      .encode() if proxied else b"")
            # 250 client addresses either way: the per-address counters cost the same.
            await session(port, "127.0.0.2" if proxied else f"127.0.1.{n % 250 + 1}",
                          header)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return SESSIONS / (time.perf_counter() - began)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(proc: subprocess.Popen[bytes], port: int, proxied: bool) -> tuple[float, float]:
    """(sessions/s, CPU s per 1000 sessions) of one run."""
    cpu = cpu_seconds(proc.pid)
    rate = asyncio.run(load(port, proxied))
    return rate, (cpu_seconds(proc.pid) - cpu) * 1000 / SESSIONS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=3000)
    args = parser.parse_args()
    global SESSIONS
    SESSIONS = args.sessions
    load_before = os.getloadavg()
    trees = [(name, Path(path).resolve()) for name, path in
             (t.split("=", 1) for t in args.tree)]
    servers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tree in trees:
            proxy = (tree / "mailserver" / "app" / "proxyproto.py").exists()
            root = Path(tmp) / name
            root.mkdir()
            servers[name] = (*start(tree, root, proxy), proxy)
        results: dict[str, list[tuple[float, float]]] = {}
        try:
            for _ in range(args.runs):
                for name, (proc, port, proxy) in servers.items():
                    results.setdefault(f"{name} plain", []).append(
                        measure(proc, port, False))
                    if proxy:
                        results.setdefault(f"{name} proxied", []).append(
                            measure(proc, port, True))
        finally:
            for proc, _port, _proxy in servers.values():
                proc.terminate()
                proc.wait(15)
    print(f"load average (1 min) before: {load_before[0]:.2f}, after: "
          f"{os.getloadavg()[0]:.2f}; {SESSIONS} sessions per run, {CLIENTS} clients")
    print("| server | sessions/s | runs | CPU s / 1000 sessions | runs |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        rates, cpus = [r for r, _ in runs], [c for _, c in runs]
        print(f"| {name} | {statistics.median(rates):.0f} | "
              f"{', '.join(f'{r:.0f}' for r in rates)} | {statistics.median(cpus):.3f} | "
              f"{', '.join(f'{c:.3f}' for c in cpus)} |")


if __name__ == "__main__":
    main()
