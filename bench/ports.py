"""Port numbers for the programs tests and benchmarks start (unbound, Pebble, Postfix,
Dovecot, nginx, sshd, a receiver): one allocator instead of a bind-to-0 in every file.

Binding port 0, closing, and handing the number to another program races: the kernel
takes that number from the ephemeral range (ip_local_port_range), so until the program
binds it, any outgoing connection on the machine, or another pytest-xdist worker's own
bind-to-0, may take it. CI saw exactly that (unbound: "can't bind socket: Address already
in use"). Here every worker draws from a block of its own *below* the ephemeral range,
which the kernel never hands out by itself, and a number is given only if TCP and UDP
both bind to it now on every address asked for. Our own server still listens on port 0
and reports what it got (tests/server_harness.py): it binds first, so it cannot race.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Iterator, Sequence

#: Each worker's block; gw0 starts at FIRST_BLOCK, the controller (or a plain run)
#: below it. 16 workers fit under 32768, the usual start of the ephemeral range.
BLOCK_SIZE = 1000
FIRST_BLOCK = 16000


def _worker_index() -> int:
    """-1 for a plain run, N for pytest-xdist's worker gwN."""
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(match.group(1)) if match else -1


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(n) for n in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _block() -> range:
    start = FIRST_BLOCK + _worker_index() * BLOCK_SIZE
    return range(start, start + BLOCK_SIZE)


def _candidates() -> Iterator[int]:
    block = _block()
    # Start where the process id says, so two plain runs side by side rarely meet.
    offset = os.getpid() % len(block)
    return itertools.cycle(list(block[offset:]) + list(block[:offset]))


_next_candidate: Iterator[int] = _candidates()


def _bindable(addresses: Sequence[str], port: int) -> bool:
    """Whether TCP and UDP can both bind `port` on every address right now."""
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                probe = socket.socket(family, kind)
                sockets.append(probe)
                probe.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        for probe in sockets:
            probe.close()


def free_port_on(addresses: Sequence[str]) -> int:
    """A port free for TCP and UDP on every one of `addresses` (a relay peer or a
    resolver listening on several), from this process's own block."""
    low, high = _ephemeral_range()
    block = _block()
    if block.start <= high and low < block.stop:
        # The machine's ephemeral range covers our block: the kernel's pick is then no
        # worse than ours.
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            return int(probe.getsockname()[1])
    for _ in range(len(block)):
        port = next(_next_candidate)
        if _bindable(addresses, port):
            return port
    raise RuntimeError(f"no free port in {block.start}-{block.stop - 1} on {addresses}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP on `host`, for a program the caller starts next."""
    return free_port_on([host])
