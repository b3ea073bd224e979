"""What every benchmarked server instance shares: a temp root, start/stop, `with`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Self


class ServerInstance:
    """A throw-away server in its own directory; `with` starts it and always stops it."""

    root: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
