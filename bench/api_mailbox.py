"""The JSON API's mailbox reading beside IMAP on the same server and Maildir, in one run.

On a folder of `--size` messages (10,000 by default; bench/imap.py's realistic mix):

  API list         GET /api/v1/folders/INBOX/messages?limit=1000, following `next` to
                   the end (uid, flags, size, internal date, envelope fields)
  IMAP list        FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE): the same
                   facts over IMAP, one session
  API parsed       GET .../messages/{uid} of 200 messages (parsed JSON), one by one
  API raw          GET .../messages/{uid}?format=raw of the same 200
  IMAP BODY[]      UID FETCH n BODY.PEEK[] of the same 200, one by one

"cold" is the first run on a freshly started server over a Maildir it has never seen
(no index yet: the API reads each header once and keeps its envelope as JSON in the
folder index; IMAP keeps its rendered ENVELOPE there); "warm" is the median of
`--repeat` later runs. API requests go over one kept-alive HTTP/1.1 connection on the
loopback http listener with HTTP Basic ({PLAIN} passwords, as bench/imap.py: this
measures the mailbox work, not Argon2id).

    .venv/bin/python bench/api_mailbox.py [--size 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from dovecot_instance import free_port  # noqa: E402
from imap import DOMAIN, HOST, PASSWORD, Client, OursImap, link_maildir, make_master  # noqa: E402

USER = "u0"
SAMPLE = 200


class OursApi(OursImap):
    """OursImap with the http listener (the API answers there from loopback)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, [USER])
        self.http_port = free_port()

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text().replace(
            "[listen]\n", f'[listen]\nhttp = "tcp:{self.http_port}:interface={HOST}"\n')
        # Thousands of requests a minute from one credential: measured, not refused.
        text += "\n[api]\nrequests_per_minute = 1000000\n"
        self.config.write_text(text)


class Api:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=300)
        token = base64.b64encode(f"{USER}@{DOMAIN}:{PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Host": "bench.local"}

    def get(self, path: str) -> bytes:
        self.conn.request("GET", "/api/v1/" + path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
        return body


def api_list(api: Api) -> list[int]:
    uids: list[int] = []
    path: str | None = "folders/INBOX/messages?limit=1000"
    while path:
        page = json.loads(api.get(path))
        uids += [m["uid"] for m in page["messages"]]
        path = page["next"].removeprefix("/api/v1/") if page["next"] else None
    return uids


def get_all(api: Api, paths: list[str]) -> None:
    for path in paths:
        api.get(path)


def timed(fn, *args):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


async def imap_list(port: int) -> tuple[float, int]:
    client = await Client.connect(port, f"{USER}@{DOMAIN}")
    started = time.perf_counter()
    answer = await client.command(b"FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    elapsed = time.perf_counter() - started
    await client.logout()
    return elapsed, answer.count(b" FETCH (")


async def imap_bodies(port: int, uids: list[int]) -> float:
    client = await Client.connect(port, f"{USER}@{DOMAIN}")
    started = time.perf_counter()
    for uid in uids:
        await client.command(b"UID FETCH %d BODY.PEEK[]" % uid)
    elapsed = time.perf_counter() - started
    await client.logout()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-apimailbox-"))
    master = make_master(root / "master", args.size)
    server = OursApi(root / "ours")
    server.write_config()
    server.add_user()
    link_maildir(master, server.mail_root() / USER)
    server.start()
    rows: dict[str, list[float]] = {}
    try:
        api = Api(server.http_port)
        for _ in range(args.repeat + 1):
            t, uids = timed(api_list, api)
            assert len(uids) == args.size, len(uids)
            rows.setdefault("API list", []).append(t)
            t, count = asyncio.run(imap_list(server.imap_port))
            assert count == args.size, count
            rows.setdefault("IMAP list", []).append(t)
            sample = uids[:: max(1, len(uids) // SAMPLE)][:SAMPLE]
            t, _ = timed(get_all, api, [f"folders/INBOX/messages/{u}" for u in sample])
            rows.setdefault("API parsed", []).append(t)
            t, _ = timed(get_all, api, [f"folders/INBOX/messages/{u}?format=raw"
                                        for u in sample])
            rows.setdefault("API raw", []).append(t)
            rows.setdefault("IMAP BODY[]", []).append(
                asyncio.run(imap_bodies(server.imap_port, sample)))
    finally:
        server.stop()
    print(f"{args.size} messages; load average {os.getloadavg()[0]:.2f}")
    print(f"{'phase':<14}{'cold s':>10}{'warm s (median)':>18}")
    for name, times in rows.items():
        print(f"{name:<14}{times[0]:>10.3f}{statistics.median(times[1:]):>18.3f}")


if __name__ == "__main__":
    main()
