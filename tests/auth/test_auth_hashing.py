"""auth/hashing.py: password checks run on a pool of one thread per core, never more.

What a user would notice without it: ten logins at once hashing ten Argon2id passwords
side by side, each holding 19 MiB, for no gain in wall time on two cores.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial import unittest

import mailserver.auth.checker as checker_module
from mailserver.auth.checker import PasswordChecker
from mailserver.auth.directory import RecipientDirectory
from mailserver.auth.hashing import HashingPool, hashing_threads
from tests.auth.test_auth_checker import make_config


def test_one_thread_per_core(monkeypatch: Any) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert hashing_threads() == 6
    assert HashingPool().pool.max == 6
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert hashing_threads() == 1


class BoundedPoolTests(unittest.TestCase):
    def test_ten_logins_hash_two_at_a_time(self) -> Deferred[None]:
        """Ten logins at once through a pool of two: at most two hashes run together,
        and all ten are answered (eight waited in the queue, not in memory)."""
        import tempfile

        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp, True)
        hashing = HashingPool(threads=2)
        hashing.startService()
        self.addCleanup(hashing.stopService)
        checker = PasswordChecker(RecipientDirectory(make_config(tmp)),
                                  threadpool=hashing.pool, failure_delay=0)
        running = 0
        started = 0
        most = 0
        together = threading.Condition()
        real = checker_module.verify_password

        def counting(password: Any, stored: str) -> bool:
            nonlocal running, started, most
            with together:
                running += 1
                started += 1
                most = max(most, running)
                together.notify_all()
                # Hold this hash until a second one runs beside it (or none is left to
                # start): a pool that allowed more would show a third here. A fixed
                # 0.02 s sleep let a loaded machine start the second thread too late.
                together.wait_for(lambda: running >= 2 or started == 10, timeout=30)
            try:
                return real(password, stored)
            finally:
                with together:
                    running -= 1

        self.patch(checker_module, "verify_password", counting)
        logins = [checker.requestAvatarId(UsernamePassword(b"alice@example.org",
                                                           b"alice's password"))
                  for _ in range(10)]

        def check(results: list[tuple[bool, Any]]) -> None:
            self.assertEqual([r for r in results], [(True, "alice@example.org")] * 10)
            self.assertEqual(most, 2)

        return DeferredList(logins).addCallback(check)


def test_the_server_checks_passwords_on_its_hashing_pool(tmp_path: Path) -> None:
    """make_service wires the one HashingPool into the portal every protocol uses (not
    the reactor's pool of ten)."""
    from mailserver.app.service import make_service
    from mailserver.queue.service import QueueService

    top = make_service(make_config(tmp_path))  # no listeners configured
    hashing = top.getServiceNamed("password-hashing")
    assert isinstance(hashing, HashingPool)
    assert hashing.threads == hashing_threads()
    queue = next(s for s in top if isinstance(s, QueueService))  # holds the context
    checkers = list(queue.context.portal.checkers.values())
    assert [c._threadpool for c in checkers] == [hashing.pool]
