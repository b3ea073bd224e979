"""Rendezvous hashing: one node per user while it is up; only its users move."""

from __future__ import annotations

import pytest

from mailserver.cluster.health import health_service
from mailserver.cluster.nodes import description_port, owner, ranked, service_port, weight

NODES = ("n1", "n2", "n3")
USERS = [f"user{i}@example.org" for i in range(3000)]


def test_the_owner_is_the_same_every_time_and_in_every_process() -> None:
    # Fixed values: BLAKE2b, not Python's per-process salted hash().
    assert weight("n1", "alice@example.org") == weight("n1", "alice@example.org")
    assert [owner(u, NODES) for u in USERS[:5]] == [owner(u, reversed(NODES))
                                                    for u in USERS[:5]]
    assert weight("n1", "alice@example.org") != weight("n2", "alice@example.org")


def test_users_spread_about_evenly_over_three_nodes() -> None:
    counts = {n: 0 for n in NODES}
    for user in USERS:
        found = owner(user, NODES)
        assert found is not None
        counts[found] += 1
    # 1000 expected each; 3 sigma of a binomial(3000, 1/3) is about 77.
    assert all(900 <= c <= 1100 for c in counts.values()), counts


def test_removing_one_of_three_nodes_moves_its_users_and_no_others() -> None:
    before = {u: owner(u, NODES) for u in USERS}
    after = {u: owner(u, NODES, down={"n2"}) for u in USERS}
    moved = [u for u in USERS if before[u] != after[u]]
    assert {before[u] for u in moved} == {"n2"}  # only n2's users moved ...
    assert all(before[u] == "n2" for u in moved)
    assert len(moved) == sum(1 for u in USERS if before[u] == "n2")  # ... all of them
    assert 0.28 < len(moved) / len(USERS) < 0.39  # about a third
    # Each went to its second choice, and they come back when n2 does.
    assert all(after[u] == ranked(u, NODES)[1] for u in moved)
    assert {u: owner(u, NODES) for u in USERS} == before


def test_adding_a_fourth_node_takes_about_a_quarter_from_each() -> None:
    before = {u: owner(u, NODES) for u in USERS}
    after = {u: owner(u, (*NODES, "n4")) for u in USERS}
    moved = [u for u in USERS if before[u] != after[u]]
    assert all(after[u] == "n4" for u in moved)
    assert 0.20 < len(moved) / len(USERS) < 0.30


def test_no_live_node_is_none() -> None:
    assert owner("alice@example.org", NODES, down=set(NODES)) is None
    assert owner("alice@example.org", ()) is None


@pytest.mark.parametrize(("description", "port"), [
    ("tcp:143", 143), ("tcp:143:interface=10.0.0.1", 143), ("tcp:port=587", 587),
    ("tcp:interface=10.0.0.1:port=110", 110), ("tcp6:993:interface=\\:\\:1", 993),
    ("ssl:993:privateKey=k.pem", 993), ("tcp:0:interface=127.0.0.1", 0),
    ("unix:/run/x.sock", None), ("systemd:domain=INET:index=0", None), ("tcp:", None),
    ("tcp:99999", None), ("tcp:abc", None), ("", None),
])
def test_the_port_of_an_endpoint_description(description: str, port: int | None) -> None:
    assert description_port(description) == port


def test_the_live_port_wins_over_the_description_and_port_0_is_none() -> None:
    listen = {"imap": "tcp:143", "pop3": "tcp:0:interface=127.0.0.1"}
    assert service_port("imap", listen, {}) == 143
    assert service_port("imap", listen, {"imap": 40143}) == 40143
    assert service_port("pop3", listen, {}) is None  # port 0 and not listening
    assert service_port("submission", listen, {}) is None


def test_the_health_keys_are_checked_by_name() -> None:
    from mailserver.config import config_from_dict
    from mailserver.errors import ConfigError

    base = {"domains": {"local": ["example.org"]}, "listen": {"submission": "tcp:587"}}
    with pytest.raises(ConfigError) as refused:
        config_from_dict({**base, "cluster": {
            "node": "n1", "nodes": {"n1": "10.0.0.1"}, "health_interval": 0,
            "health_failures": 0, "health_service": "imaps"}})
    assert set(refused.value.problems) >= {
        "cluster.health_interval: must be at least 1 (seconds)",
        "cluster.health_failures: must be at least 1",
        "cluster.health_service: 'imaps' is not one of imap, submission, pop3, smtp, http"}
    with pytest.raises(ConfigError) as refused:
        config_from_dict({**base, "cluster": {"node": "n1", "nodes": {"n1": "10.0.0.1"},
                                              "health_service": "imap"}})
    assert "cluster.health_service: listen.imap is not configured: the health check " \
           "would have no port" in refused.value.problems
    config = config_from_dict({**base, "cluster": {"node": "n1", "nodes": {"n1": "10.0.0.1"}}})
    assert (config.cluster.health_interval, config.cluster.health_failures) == (5, 3)
    assert health_service(config) == "submission"  # the default: imap's if listened
    config = config_from_dict({**base, "listen": {"imap": "tcp:143", "smtp": "tcp:25"},
                               "cluster": {"node": "n1", "nodes": {"n1": "10.0.0.1"}}})
    assert health_service(config) == "imap"
