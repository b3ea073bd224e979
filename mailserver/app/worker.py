"""Entry point of a worker process (see workers.py): `python -m mailserver.app.worker`.

Not for operators: the twistd process starts workers with the listening sockets it
made, as `--listener NAME=FD`, and the config it was given.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor, stdio
from twisted.internet.protocol import Protocol
from twisted.logger import (
    FileLogObserver,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.python.failure import Failure

from mailserver.config import load_config
from mailserver.errors import ConfigError


class _ParentWatch(Protocol):
    """Our stdin is a pipe from the twistd process; EOF means it is gone: stop."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailserver-worker")
    parser.add_argument("--instance", type=int, required=True)
    parser.add_argument("--config")
    parser.add_argument("--listener", action="append", default=[],
                        help="NAME=FD of an inherited listening socket")
    args = parser.parse_args(argv)
    inherited = {}
    for item in args.listener:
        name, _, fd = item.partition("=")
        inherited[name] = int(fd)

    prefix = f"worker{args.instance} "
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, lambda e: prefix + (formatEventAsClassicLogText(e) or ""))],
        redirectStandardIO=False,
    )
    from mailserver.app.service import make_service

    try:
        top = make_service(load_config(args.config), inherited=inherited,
                           instance=args.instance)
    except ConfigError as e:
        for problem in e.problems:
            print(f"mailserver worker {args.instance}: {problem}", file=sys.stderr)
        return 1
    stdio.StandardIO(_ParentWatch())
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
