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
    deadline = time.monotonic() + 20
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


def send_many(server: RunningServer, count: int, threads: int = 8) -> None:
    def work(n: int) -> None:
        for i in range(count // threads):
            with smtplib.SMTP(*server.address(), timeout=20) as client:
                client.sendmail("alice@example.org", ["bob@example.org"],
                                b"Subject: %d-%d\r\n\r\nbody\r\n" % (n, i))

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
    send_many(server, 80)
    stored = server.messages("bob@example.org")
    assert len(stored) == 80
    subjects = {m.split(b"Subject: ", 1)[1].split(b"\n", 1)[0] for m in stored}
    assert len(subjects) == 80, "each message once"
    log = server.log_path.read_text()
    # Both processes accept on the shared socket; 80 connections all landing on one
    # of them would be a broken worker, not bad luck (2**-79).
    assert "w1-smtp-" in log and "] smtp-" in log, "both processes took connections"
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
    deadline = time.monotonic() + 10
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
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = workers_of(server)
        if pids and pids != [worker]:
            break
        time.sleep(0.1)
    assert workers_of(server) != [worker]
    assert "worker 1 ended unexpectedly" in server.log()
    send_many(server, 16, threads=4)
    assert len(server.messages("bob@example.org")) == 16
