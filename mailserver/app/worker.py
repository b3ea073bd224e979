"""Entry point of a worker process (see workers.py): `python -m mailserver.app.worker`.

Not for operators: the twistd process starts workers with the listening sockets it
made, as `--listener NAME=FD`, and the config it was given.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import (
    FileLogObserver,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.config import load_config
from mailserver.errors import ConfigError
from mailserver.logs import json_observer


@implementer(IReadDescriptor)
class _ParentWatch:
    """Our stdin is a pipe from the twistd process; EOF means it is gone: stop.

    A bare reader on fd 0 (not stdio.StandardIO, which would also make fd 1 non-blocking:
    fd 1 is the log stream we share with the parent, and EAGAIN there loses log lines).
    """

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Failure | None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        return None if data else Failure(ConnectionDone("the twistd process is gone"))

    def connectionLost(self, reason: Failure) -> None:
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]

    def logPrefix(self) -> str:
        return "parent-pipe"


def main(argv: list[str] | None = None) -> int:
    # The twistd process forwards SIGHUP (reload) to its workers; until our Reloader
    # owns it (once the services start), SIGHUP must not end us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="mailserver-worker")
    parser.add_argument("--instance", type=int, required=True)
    parser.add_argument("--config")
    parser.add_argument("--listener", action="append", default=[],
                        help="NAME=FD of an inherited listening socket")
    parser.add_argument("--ready-fd", type=int,
                        help="a pipe to the parent, told 'ready' once we accept")
    args = parser.parse_args(argv)
    inherited = {}
    for item in args.listener:
        name, _, fd = item.partition("=")
        inherited[name] = int(fd)

    prefix = f"worker{args.instance} "
    try:
        config = load_config(args.config)
    except ConfigError as e:
        for problem in e.problems:
            print(f"mailserver worker {args.instance}: {problem}", file=sys.stderr)
        return 1
    if config.log.format == "json":
        observer = json_observer(sys.stdout, process=f"worker{args.instance}")
    else:
        observer = FileLogObserver(
            sys.stdout, lambda e: prefix + (formatEventAsClassicLogText(e) or ""))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    from mailserver.app.service import make_service

    try:
        top = make_service(config, inherited=inherited, instance=args.instance)
    except ConfigError as e:
        for problem in e.problems:
            print(f"mailserver worker {args.instance}: {problem}", file=sys.stderr)
        return 1
    try:
        os.set_blocking(0, False)
        reactor.addReader(_ParentWatch())  # type: ignore[attr-defined]
        top.privilegedStartService()
        top.startService()
    except Exception as e:
        # The disk threads are not daemons: a plain exit would wait for them forever.
        print(f"mailserver worker {args.instance}: cannot start: {e}", file=sys.stderr)
        os._exit(1)
    if args.ready_fd is not None:
        try:
            os.write(args.ready_fd, b"ready\n")
            os.close(args.ready_fd)
        except OSError:
            pass  # the parent is gone already; _ParentWatch stops us
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
