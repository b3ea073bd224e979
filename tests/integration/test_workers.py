"""`processes = 2`: worker processes share the listener, deliver into the same Maildirs,
stop with the server, and never outlive it."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import threading
import time
from pathlib import Path

from server_harness import RunningServer


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for_log(server: RunningServer, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_path.read_text():
        assert time.monotonic() < deadline, f"no {text!r} in the log"
        time.sleep(0.05)


def workers_of(server: RunningServer) -> list[int]:
    assert server.proc is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [p for p in children(server.proc.pid)
                if b"mailserver.app.worker" in _cmdline(p)]
        if pids:
            return pids
        time.sleep(0.1)
    raise AssertionError("no worker process")


def _cmdline(pid: int) -> bytes:
    """A process's command line; b"" once it has gone (it may exit between the scan of
    /proc and this read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def send_many(server: RunningServer, count: int, threads: int = 8, tag: str = "") -> None:
    """`count` messages over `threads` connections at once, subjects TAG N-I."""

    def work(n: int) -> None:
        for i in range(count // threads):
            with smtplib.SMTP(*server.address(), timeout=60) as client:
                client.sendmail("alice@example.org", ["bob@example.org"],
                                b"Subject: %s%d-%d\r\n\r\nbody\r\n" % (tag.encode(), n, i))

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)


def test_two_processes_share_the_work(server_factory) -> None:
    server = server_factory("multi", processes=2)
    [worker] = workers_of(server)
    wait_for_log(server, "worker1 ")
    wait_for_log(server, "smtp accepting on the inherited socket")

    def both_took_some() -> bool:
        log = server.log_path.read_text()
        return "w1-smtp-" in log and "] smtp-" in log

    # Both processes accept on the shared socket. Which one a connection reaches is the
    # kernel's choice (whichever is waiting in accept, not a coin: a busy first process
    # can leave them all to the worker), so more rounds are sent until both have taken
    # some; a worker that never accepts fails here.
    send_many(server, 80)
    sent = 80
    while not both_took_some():
        assert sent < 400, "both processes took connections"
        send_many(server, 8, tag=f"more{sent}-")
        sent += 8
    stored = server.messages("bob@example.org")
    assert len(stored) == sent
    subjects = {m.split(b"Subject: ", 1)[1].split(b"\n", 1)[0] for m in stored}
    assert len(subjects) == sent, "each message once"
    # SIGTERM stops the worker too, cleanly.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    assert gone(worker)


def test_worker_does_not_outlive_a_killed_server(server_factory) -> None:
    server = server_factory("orphan", processes=2)
    [worker] = workers_of(server)
    port = server.ports["smtp"]
    server.kill()  # SIGKILL: no chance to stop its workers
    assert gone(worker), "the worker noticed its parent is gone"
    # Nobody listens any more.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("something still accepts on the port")


def test_crashed_worker_is_restarted(server_factory) -> None:
    server = server_factory("restart", processes=2)
    [worker] = workers_of(server)
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = workers_of(server)
        if pids and pids != [worker]:
            break
        time.sleep(0.1)
    assert workers_of(server) != [worker]
    assert "worker 1 ended unexpectedly" in server.log()
    send_many(server, 16, threads=4)
    assert len(server.messages("bob@example.org")) == 16


def sessions_by_process(pids: list[int], port: int) -> dict[int, int]:
    """Established connections to `port` that each process holds: the server side of
    every socket in /proc/net/tcp whose local port is `port`, found by inode among the
    process's file descriptors."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
            established.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        links = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:
                continue
        counts[pid] = sum(link in established for link in links)
    return counts


def settled_counts(pids: list[int], port: int, total: int) -> dict[int, int]:
    """sessions_by_process once it finds all `total` (/proc/net/tcp is read in pages,
    and a page may miss a line that moved while it was read)."""
    deadline = time.monotonic() + 60
    while sum((counts := sessions_by_process(pids, port)).values()) != total:
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)
    return counts


def open_sessions(server: RunningServer, count: int) -> list[socket.socket]:
    """`count` SMTP sessions, each greeted (so some process has accepted it)."""
    opened = []
    for _ in range(count):
        client = socket.create_connection(server.address(), timeout=60)
        assert client.recv(512).startswith(b"220 "), "greeted"
        opened.append(client)
    return opened


def test_sessions_are_balanced_not_just_accepts(server_factory) -> None:
    """Twenty sessions spread over two processes; those of the worker (about ten) end;
    the next ten go to it, so both hold about ten again. Spreading accepts alone (each
    process takes one per wake-up) would give the busy process half of them: ~15 / ~5."""
    server = server_factory("balance", processes=2, limits={"connections_per_ip": 100})
    [worker] = workers_of(server)
    wait_for_log(server, "smtp accepting on the inherited socket")
    assert server.proc is not None
    pids, port = [server.proc.pid, worker], server.ports["smtp"]
    first = open_sessions(server, 20)
    counts = settled_counts(pids, port, 20)
    assert max(counts.values()) - min(counts.values()) <= 2, \
        counts
    # End every session of the worker: find its sockets by the client's port.
    held = _peer_ports(worker, port)
    for client in first:
        if client.getsockname()[1] in held:
            client.sendall(b"QUIT\r\n")
            client.recv(512)
            client.close()
    deadline = time.monotonic() + 60
    while sessions_by_process([worker], port)[worker] and time.monotonic() < deadline:
        time.sleep(0.05)
    kept = sessions_by_process(pids, port)[server.proc.pid]
    assert sessions_by_process(pids, port)[worker] == 0
    second = open_sessions(server, 10)
    counts = settled_counts(pids, port, kept + 10)
    assert max(counts.values()) - min(counts.values()) <= 2, counts
    for client in first + second:
        client.close()


def _peer_ports(pid: int, port: int) -> set[int]:
    """The client ports of the connections to `port` that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
            peers.add(int(fields[2].rsplit(":", 1)[1], 16))
    return peers
