"""Instance 0's health checks: down after N failures, up after one success, the file."""

from __future__ import annotations

import json
from pathlib import Path

from fakes import FakeDisk
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mailserver.cluster.health import HealthChecker, HealthView, NodeHealth, read_state
from mailserver.config import config_from_dict

NODES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}


class Network:
    """Which addresses accept a connection; records every attempt."""

    def __init__(self) -> None:
        self.refusing: set[str] = set()
        self.attempts: list[tuple[str, int, float]] = []

    def connect(self, address: str, port: int, timeout: float) -> Deferred[None]:
        self.attempts.append((address, port, timeout))
        if address in self.refusing:
            return fail(ConnectionRefusedError("Connection refused"))
        return succeed(None)


def checker(tmp_path: Path, **cluster: object) -> tuple[HealthChecker, Network, Clock]:
    (tmp_path / "run").mkdir()
    config = config_from_dict({
        "data_dir": str(tmp_path), "domains": {"local": ["example.org"]},
        "listen": {"imap": "tcp:0", "submission": "tcp:587"},
        "cluster": {"node": "n1", "nodes": NODES, "health_interval": 5,
                    "health_failures": 3, **cluster}})
    network, clock = Network(), Clock()
    clock.advance(1_000_000)
    health = HealthChecker(config, FakeDisk(), lambda: {"imap": 40143},  # type: ignore[arg-type]
                           connect=network.connect, clock=clock)
    return health, network, clock


def test_every_node_is_checked_on_the_live_imap_port_every_interval(tmp_path: Path) -> None:
    health, network, clock = checker(tmp_path)
    health.startService()
    assert network.attempts == [(a, 40143, 5.0) for a in NODES.values()]
    clock.advance(5)
    assert len(network.attempts) == 6
    state = read_state(health.path)
    assert state is not None and all(n.up and n.last_check == 1_000_005 for n in
                                     state.values())
    health.stopService()
    clock.advance(50)
    assert len(network.attempts) == 6


def test_down_after_n_failures_up_after_one_success(tmp_path: Path) -> None:
    health, network, clock = checker(tmp_path)
    health.startService()  # check 1 at t0: all up
    network.refusing.add("10.0.0.2")
    for _ in range(2):
        clock.advance(5)
        state = read_state(health.path)
        assert state is not None and state["n2"].up  # one or two failures: still up
    assert state["n2"].failures == 2
    assert state["n2"].error == "ConnectionRefusedError: Connection was refused by other " \
                                "side: Connection refused."
    clock.advance(5)  # the third failure in a row
    state = read_state(health.path)
    assert state is not None
    assert (state["n2"].up, state["n2"].since, state["n2"].failures) == (False, 1_000_015, 3)
    assert state["n1"].up and state["n3"].up and state["n1"].since == 1_000_000
    clock.advance(5)
    assert read_state(health.path)["n2"].since == 1_000_015  # type: ignore[index]
    network.refusing.clear()
    clock.advance(5)  # one success
    state = read_state(health.path)
    assert state is not None
    assert (state["n2"].up, state["n2"].since, state["n2"].failures,
            state["n2"].error) == (True, 1_000_025, 0, "")
    health.stopService()


def test_the_file_is_whole_json_and_replaces_a_stale_one(tmp_path: Path) -> None:
    health, network, _clock = checker(tmp_path, health_service="submission")
    health.path.write_text(json.dumps({"nodes": [
        {"name": "n2", "address": "10.0.0.2", "up": False, "since": 5.0}]}))
    health.startService()
    state = read_state(health.path)
    assert state is not None and state["n2"].up  # the previous run's "down" is gone
    assert {port for _, port, _ in network.attempts} == {587}  # submission's port
    assert [p.name for p in health.path.parent.iterdir()] == ["cluster-health.json"]
    health.stopService()


def test_unreadable_files_mean_no_node_is_down(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    view = HealthView(path, FakeDisk(), clock=Clock())  # type: ignore[arg-type]

    def down() -> frozenset[str]:
        view._read_at = None
        d = Deferred.fromCoroutine(view.down())
        return d.result  # type: ignore[no-any-return]

    assert down() == frozenset()  # no file yet
    for garbage in ("", "{", '{"nodes": [{"name": "n2"}]}', '["x"]', "\x00" * 10):
        path.write_text(garbage)
        assert down() == frozenset(), garbage
    path.write_text(json.dumps({"nodes": [
        {"name": "n2", "address": "10.0.0.2", "up": False, "since": 5.0}]}))
    assert down() == {"n2"}


def test_the_view_reads_the_file_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    clock = Clock()
    view = HealthView(path, FakeDisk(), clock=clock)  # type: ignore[arg-type]
    down = NodeHealth("n2", "10.0.0.2", False, 5.0)
    path.write_text(json.dumps({"nodes": [down.__dict__]}))
    assert Deferred.fromCoroutine(view.down()).result == {"n2"}
    path.write_text(json.dumps({"nodes": []}))
    clock.advance(0.5)
    assert Deferred.fromCoroutine(view.down()).result == {"n2"}
    clock.advance(0.5)
    assert Deferred.fromCoroutine(view.down()).result == frozenset()


def test_a_reload_adds_drops_and_readdresses_nodes(tmp_path: Path) -> None:
    health, network, clock = checker(tmp_path)
    health.startService()
    network.refusing.add("10.0.0.2")
    for _ in range(3):
        clock.advance(5)
    assert not health.nodes["n2"].up
    health.config = config_from_dict({
        "data_dir": str(tmp_path), "domains": {"local": ["example.org"]},
        "listen": {"imap": "tcp:0"},
        "cluster": {"node": "n1", "nodes": {"n1": "10.0.0.1", "n2": "10.0.0.2",
                                            "n4": "10.0.0.4"}, "health_interval": 2}})
    assert list(health.nodes) == ["n1", "n2", "n4"]
    assert not health.nodes["n2"].up and health.nodes["n4"].up  # n2 keeps its state
    before = len(network.attempts)
    clock.advance(2)  # the new interval
    assert [a for a, _, _ in network.attempts[before:]] == ["10.0.0.1", "10.0.0.2",
                                                             "10.0.0.4"]
    state = read_state(health.path)
    assert state is not None and sorted(state) == ["n1", "n2", "n4"]
    health.stopService()


def test_without_nodes_it_idles_until_a_reload_brings_some(tmp_path: Path) -> None:
    health, network, clock = checker(tmp_path)
    cluster_less = config_from_dict({"data_dir": str(tmp_path),
                                     "domains": {"local": ["example.org"]},
                                     "listen": {"imap": "tcp:0"}})
    health._config = cluster_less
    health.startService()
    clock.advance(30)
    assert network.attempts == [] and not health.path.exists()
    health.config = config_from_dict({
        "data_dir": str(tmp_path), "domains": {"local": ["example.org"]},
        "listen": {"imap": "tcp:0"}, "cluster": {"node": "n1", "nodes": NODES}})
    clock.advance(5)
    assert [a for a, _, _ in network.attempts] == list(NODES.values())
    state = read_state(health.path)
    assert state is not None and sorted(state) == ["n1", "n2", "n3"]
    health.stopService()


def test_no_port_to_check_is_said_once(tmp_path: Path) -> None:
    health, network, clock = checker(tmp_path)
    health.listening = dict  # imap is tcp:0 in this config and not listening
    said: list[str] = []

    def observe(event: dict[str, object]) -> None:
        if "every node counts as up" in str(event.get("log_format", "")):
            said.append(str(event.get("name")))

    globalLogPublisher.addObserver(observe)
    try:
        health.startService()
        clock.advance(5)
        clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(observe)
        health.stopService()
    assert network.attempts == [] and said == ["imap"]
