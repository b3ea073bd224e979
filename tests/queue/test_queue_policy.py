"""Back-off arithmetic (Postfix-like: 300 s doubling to 4000 s, 5 days lifetime)."""

from __future__ import annotations

from mailserver.config import config_from_dict
from mailserver.queue.scheduler import Policy
from mailserver.queue.service import policy_from


def test_defaults_are_postfix_like() -> None:
    policy = policy_from(config_from_dict({}))
    assert policy == Policy(retry_initial=300, retry_max=4000, queue_lifetime=432_000,
                            delay_warning=14_400)


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = Policy()
    assert [policy.backoff(n) for n in range(0, 7)] == [0, 300, 600, 1200, 2400, 4000, 4000]
    assert policy.backoff(10_000) == 4000, "no overflow after many attempts"


def test_next_try_never_passes_the_expiry() -> None:
    policy = Policy(retry_initial=300, retry_max=4000, queue_lifetime=1000)
    assert policy.next_try(created=0, attempts=1, now=10) == 310
    assert policy.next_try(created=0, attempts=3, now=500) == 1000, \
        "the last attempt happens at expiry, so the bounce is on time"


def test_small_test_settings() -> None:
    policy = Policy(retry_initial=1, retry_max=2)
    assert [policy.backoff(n) for n in (1, 2, 3)] == [1, 2, 2]
