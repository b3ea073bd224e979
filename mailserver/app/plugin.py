"""The `twistd mailserver` plugin's options and entry point (imported lazily by twistd)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service
from twisted.python import usage

from mailserver.errors import ConfigError


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = ("Runs every configured mail service (SMTP, submission, POP3, IMAP) in one "
                "reactor. Without --config: $MAILSERVER_CONFIG, else the embedded default "
                "(loopback ports 2525, 2587, 2465, 2110, 2995, 2143, 2993; data in ./var).")
    optParameters = [["config", "c", None, "Path of the TOML config file."]]


class OperatorError(SystemExit):
    """Exits twistd with one readable line per problem and status 1, no traceback."""

    def __init__(self, problems: list[str]) -> None:
        for problem in problems:
            print(f"mailserver: {problem}", file=sys.stderr)
        super().__init__(1)


def makeService(options: Options) -> service.IService:
    from mailserver.app.listeners import ListenError
    from mailserver.app.service import make_service
    from mailserver.config import load_config

    try:
        config = load_config(options["config"])
        top = make_service(config)
    except ConfigError as e:
        raise OperatorError(e.problems) from None
    return _GuardedStart(top, ListenError, json_logs=config.log.format == "json")


class _GuardedStart(service.MultiService):
    """Turns a failure to listen (port in use) into one line and exit status 1; with
    log.format = "json", gives twistd our JSON observer in place of its text lines."""

    def __init__(self, inner: service.MultiService, error_type: type[Exception],
                 json_logs: bool = False) -> None:
        super().__init__()
        self.error_type = error_type
        self.json_logs = json_logs
        inner.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:  # noqa: N802 - Twisted's name
        # twistd's AppLogger takes the application's ILogObserver component when there
        # is one (and no --logger option). JSON goes to standard output: run twistd
        # with --nodaemon (the systemd unit does), as a daemon's stdout is /dev/null.
        if self.json_logs and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            from mailserver.logs import json_observer

            parent.setComponent(ILogObserver, json_observer(sys.stdout))
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except self.error_type as e:
            raise OperatorError([str(e)]) from None
