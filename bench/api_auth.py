"""What authenticating an API request costs: GET /api/v1/me with a Bearer token against
the same request with HTTP Basic (the user's Argon2id password), in one run.

`GET /me` does nothing but authenticate, so its rate is the ceiling the credential check
puts on every route. C clients (threads, each with one keep-alive connection on the
loopback `http` listener) ask for DURATION seconds; each point is run --repeat times
(default 3) and the median is reported, with p50 latency and the load average.

The server is started with the tests' harness (tests/server_harness.py), one process,
the rate limit raised out of the way.

    .venv/bin/python bench/api_auth.py                  # 10 clients, 5 s, 3 repeats
    .venv/bin/python bench/api_auth.py --clients 1 --duration 3 --repeat 1
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_harness import admin, make_server  # noqa: E402

PASSWORD = "correct horse battery staple"


def run_point(port: int, authorization: str, clients: int, duration: float
              ) -> tuple[float, float]:
    """(requests per second, p50 latency in ms) of `clients` threads for `duration`."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(mine: list[float]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        while time.monotonic() < stop_at[0]:
            began = time.monotonic()
            conn.request("GET", "/api/v1/me", headers={"Authorization": authorization,
                                                       "Host": "mail.example.org"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(str(response.status))
                return
            mine.append(time.monotonic() - began)
        conn.close()

    threads = [threading.Thread(target=client, args=(lat,)) for lat in latencies]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + duration
    start.wait()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"answers other than 200: {sorted(set(errors))}")
    every = [x for lat in latencies for x in lat]
    return len(every) / duration, statistics.median(every) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="api-auth-bench-") as tmp:
        server = make_server(Path(tmp), listen={"http": "tcp:0:interface=127.0.0.1"},
                             api={"requests_per_minute": 10_000_000},
                             abuse={"connections_per_minute": 0},
                             limits={"connections_per_ip": 1000})
        try:
            server.add_user("alice@example.org", PASSWORD)
            token = admin(server.config_path, "token", "add", "alice@example.org"
                          ).stdout.strip()
            basic = base64.b64encode(f"alice@example.org:{PASSWORD}".encode()).decode()
            kinds = {"Bearer token": f"Bearer {token}", "Basic (Argon2id)": f"Basic {basic}"}
            results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
            for _ in range(args.repeat):
                for name, value in kinds.items():  # back to back, same load
                    results[name].append(run_point(server.ports["http"], value, args.clients,
                                                   args.duration))
        finally:
            server.stop()
    print(f"GET /api/v1/me, {args.clients} clients, {args.duration:g} s, median of "
          f"{args.repeat}")
    print(f"{'credential':<18} {'req/s':>9} {'p50 ms':>8}")
    for name, points in results.items():
        rate = statistics.median(p[0] for p in points)
        p50 = statistics.median(p[1] for p in points)
        print(f"{name:<18} {rate:>9.1f} {p50:>8.2f}")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
