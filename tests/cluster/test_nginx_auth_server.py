"""/nginx-auth on the real server, spoken to as nginx speaks (ngx_mail_auth_http_module):
one HTTP/1.0 GET per login, everything in headers. Three nodes: this server is n1 on
127.0.0.1; n2 and n3 are listening sockets on 127.0.0.2 and 127.0.0.3 at the same IMAP
port, which the health checks connect to and the tests close and reopen."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
from http_helpers import raw, request  # noqa: E402
from server_harness import RunningServer, admin, make_server  # noqa: E402

from mailserver.cluster.nodes import owner  # noqa: E402

NODES = {"n1": "127.0.0.1", "n2": "127.0.0.2", "n3": "127.0.0.3"}
LISTEN = {name: "tcp:0:interface=127.0.0.1" for name in (
    "smtp", "submission", "pop3", "imap", "http")}
#: On n3, n3, n1, n2, n3, n1 (all three nodes; two users stay when n3 goes).
USERS = [f"user{i}@example.org" for i in range(6)]
PASSWORD = "wonderland"
INTERVAL, FAILURES = 1, 3


class FakeNode:
    """Something listening on address:port, accepting and closing (what the health
    check needs of a node), until closed."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.sock: socket.socket | None = None
        self.open()

    def open(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, self.port))
        sock.listen(16)
        sock.settimeout(0.2)
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while self.sock is sock:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[tuple[RunningServer, dict[str, FakeNode]]]:
    root: Path = tmp_path_factory.mktemp("nginx-auth")
    # Two processes: the worker routes by the file instance 0's checks write.
    server = make_server(root, start=False, listen=LISTEN, processes=2,
                         abuse={"login_failures": 3, "lockout": 600})
    nodes = ", ".join(f'{n} = "{a}"' for n, a in NODES.items())
    with server.config_path.open("a") as f:  # the harness's TOML has no inline tables
        f.write(f'\n[cluster]\nnode = "n1"\nnodes = {{ {nodes} }}\n'
                f"health_interval = {INTERVAL}\nhealth_failures = {FAILURES}\n")
    server.add_user(USERS[0], PASSWORD)
    # The others get the same hash (one argon2id run instead of six): passwd-file lines.
    users_file = server.data_dir / "users"
    line = users_file.read_text()
    users_file.write_text(line + "".join(line.replace(USERS[0], user, 1)
                                         for user in USERS[1:]))
    server.start()
    port = server.ports["imap"]
    fakes = {"n2": FakeNode("127.0.0.2", port), "n3": FakeNode("127.0.0.3", port)}
    yield server, fakes
    for fake in fakes.values():
        fake.close()
    server.stop()


def auth(server: RunningServer, user: str = USERS[0], password: str = PASSWORD,
         protocol: str = "imap", method: str = "plain", client: str = "198.51.100.7",
         attempt: int = 1, source: str | None = None, **extra: str,
         ) -> tuple[int, dict[str, str]]:
    """One nginx auth request; (HTTP status, the Auth-* headers)."""
    headers = {"Auth-Method": method, "Auth-User": user, "Auth-Pass": password,
               "Auth-Protocol": protocol, "Auth-Login-Attempt": str(attempt),
               "Client-IP": client, "Client-Host": "[UNAVAILABLE]", **extra}
    status, answer, _ = request(server, "GET", "/nginx-auth", host="localhost",
                                headers=headers, source=source)
    return status, {k: v for k, v in answer.items() if k.startswith("auth-")}


def wait_for(check: object, timeout: float) -> float:
    """Seconds until check() is true (AssertionError after `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s")


def test_the_right_password_gets_the_owning_node_for_every_protocol(
        cluster: tuple[RunningServer, dict[str, FakeNode]]) -> None:
    server, _ = cluster
    seen = set()
    for user in USERS:
        node = owner(user, NODES)
        assert node is not None
        seen.add(node)
        for protocol, listener in (("imap", "imap"), ("pop3", "pop3"),
                                   ("smtp", "submission")):
            assert auth(server, user, protocol=protocol) == (200, {
                "auth-status": "OK", "auth-server": NODES[node],
                "auth-port": str(server.ports[listener])}), (user, protocol)
    assert seen == set(NODES)  # six users land on all three nodes
    # The user as typed in another case: the canonical address decides.
    assert auth(server, USERS[0].upper())[1]["auth-server"] == NODES[str(owner(USERS[0],
                                                                               NODES))]


def test_mx_traffic_goes_to_a_nodes_smtp_port_without_a_password(
        cluster: tuple[RunningServer, dict[str, FakeNode]]) -> None:
    server, _ = cluster
    status, answer = auth(server, "", "", protocol="smtp", method="none",
                          **{"Auth-SMTP-Helo": "mx.example.net",
                             "Auth-SMTP-From": "MAIL FROM:<a@example.net>",
                             "Auth-SMTP-To": "RCPT TO:<user1@example.org>"})
    assert (status, answer["auth-status"], answer["auth-port"]) == (
        200, "OK", str(server.ports["smtp"]))
    assert answer["auth-server"] in NODES.values()


def test_wrong_passwords_wait_then_lock_the_real_client_out(
        cluster: tuple[RunningServer, dict[str, FakeNode]]) -> None:
    server, _ = cluster
    client = "198.51.100.66"
    assert auth(server, password="guess", client=client) == (200, {
        "auth-status": "[AUTHENTICATIONFAILED] Invalid login or password",
        "auth-wait": "3"})
    assert auth(server, password="guess", client=client, protocol="pop3",
                attempt=2) == (200, {"auth-status": "[AUTH] Invalid login or password",
                                     "auth-wait": "3"})
    assert auth(server, password="guess", client=client, protocol="smtp",
                attempt=10) == (200, {"auth-status": "Invalid login or password",
                                      "auth-error-code": "535 5.7.8"})  # no more waits
    # abuse.login_failures = 3 failures from Client-IP: the right password is refused.
    assert auth(server, client=client, protocol="smtp") == (200, {
        "auth-status": "Too many failed logins from your address; try again later",
        "auth-error-code": "454 4.7.0"})
    assert auth(server, client=client)[1]["auth-status"].startswith("[UNAVAILABLE] Too many")
    # Counted in the shared table under the client nginx named, not under nginx.
    listed = admin(server.config_path, "ban", "list").stdout
    assert client in listed and "127.0.0.1" not in listed
    assert "abuse: lockout service=submission ip=198.51.100.66" in server.log() or \
        "abuse: lockout service=imap ip=198.51.100.66" in server.log() or \
        "abuse: lockout service=pop3 ip=198.51.100.66" in server.log()
    assert auth(server, client="198.51.100.67")[1]["auth-status"] == "OK"


def test_apop_and_cram_md5_are_refused(cluster: tuple[RunningServer, dict[str, FakeNode]],
                                       ) -> None:
    server, _ = cluster
    assert auth(server, method="cram-md5", protocol="smtp", password="",
                **{"Auth-Salt": "<1.2@x>"}) == (200, {
        "auth-status": "APOP, CRAM-MD5 and EXTERNAL are not supported; use PLAIN or LOGIN",
        "auth-error-code": "504 5.5.4", "auth-wait": "3"})
    assert auth(server, method="apop", protocol="pop3")[1]["auth-status"].startswith("APOP")


def test_an_untrusted_caller_is_403(cluster: tuple[RunningServer, dict[str, FakeNode]],
                                    ) -> None:
    server, _ = cluster
    status, answer = auth(server, source="127.0.0.9")
    assert (status, answer) == (403, {})


def test_malformed_and_missing_headers_are_400(
        cluster: tuple[RunningServer, dict[str, FakeNode]]) -> None:
    server, _ = cluster
    for extra in ({"Auth-Protocol": "nntp"}, {"Client-IP": "nowhere"},
                  {"Auth-Method": "kerberos"}, {"Auth-Login-Attempt": "-1"}):
        assert auth(server, **extra) == (400, {"auth-status": "Invalid auth request"}), extra
    reply = raw(server, b"GET /nginx-auth HTTP/1.0\r\nHost: localhost\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400 ")
    assert b"\r\nAuth-Status: Invalid auth request\r\n" in reply


def test_a_forged_auth_server_in_the_request_changes_nothing(
        cluster: tuple[RunningServer, dict[str, FakeNode]]) -> None:
    server, _ = cluster
    node = NODES[str(owner(USERS[1], NODES))]
    # Headers named like the answer's, and a user name carrying an escaped CR LF.
    reply = raw(server, (
        "GET /nginx-auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\n"
        f"Auth-User: {USERS[1]}\r\nAuth-Pass: {PASSWORD}\r\nAuth-Protocol: imap\r\n"
        "Auth-Login-Attempt: 1\r\nClient-IP: 198.51.100.7\r\n"
        "Auth-Server: 203.0.113.9\r\nAuth-Port: 1\r\nAuth-Status: OK\r\n\r\n").encode())
    head = reply.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert [line for line in head if line.lower().startswith(b"auth-")] == [
        b"Auth-Status: OK", f"Auth-Server: {node}".encode(),
        f"Auth-Port: {server.ports['imap']}".encode()]
    status, answer = auth(server, f"{USERS[1]}%0D%0AAuth-Server:%20203.0.113.9",
                          client="198.51.100.70")
    assert (status, answer) == (200, {
        "auth-status": "[AUTHENTICATIONFAILED] Invalid login or password", "auth-wait": "3"})


def test_a_100_kb_header_is_refused_and_the_server_carries_on(
        cluster: tuple[RunningServer, dict[str, FakeNode]]) -> None:
    server, _ = cluster
    reply = raw(server, b"GET /nginx-auth HTTP/1.0\r\nAuth-User: " + b"a" * 100_000
                + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Auth-Status" not in reply
    assert auth(server)[1]["auth-status"] == "OK"


def status_lines(server: RunningServer) -> dict[str, str]:
    result = admin(server.config_path, "cluster", "status")
    assert result.returncode == 0
    return {line.split()[0]: line for line in result.stdout.splitlines()}


def test_cluster_status_and_a_health_flip(
        cluster: tuple[RunningServer, dict[str, FakeNode]]) -> None:
    server, fakes = cluster
    lines = status_lines(server)
    assert list(lines) == ["n1", "n2", "n3"]
    assert lines["n1"].split()[1:3] == ["127.0.0.1", "up"]
    assert lines["n1"].endswith("(this node)") and "(this node)" not in lines["n2"]
    assert "since 20" in lines["n2"] and "last check 20" in lines["n2"]
    users = [u for u in USERS if owner(u, NODES) == "n3"]
    others = [u for u in USERS if owner(u, NODES) != "n3"]
    assert users and others
    fakes["n3"].close()
    # Down after FAILURES checks, INTERVAL apart, and the file's second (with slack for
    # two cores shared by many tests).
    wait_for(lambda: auth(server, users[0])[1]["auth-server"] != "127.0.0.3",
             FAILURES * INTERVAL + 4)
    down = status_lines(server)["n3"]
    assert down.split()[1:3] == ["127.0.0.3", "down"] and "ConnectionRefusedError" in down
    time.sleep(1)  # the other process's copy of the file is at most a second old
    for user in users * 3:  # each to its node among the live ones, in both processes
        assert auth(server, user)[1]["auth-server"] == NODES[str(owner(user, NODES,
                                                                      down={"n3"}))]
    for user in others:  # nobody else moves
        assert auth(server, user)[1]["auth-server"] == NODES[str(owner(user, NODES))]
    fakes["n3"].open()
    wait_for(lambda: auth(server, users[0])[1]["auth-server"] == "127.0.0.3",
             2 * INTERVAL + 3)
    assert status_lines(server)["n3"].split()[2] == "up"
    log = server.log_path.read_text()
    assert "node n3 (127.0.0.3) is down: ConnectionRefusedError" in log
    assert "node n3 (127.0.0.3) is up" in log
    assert "Factory" not in log.split("is down")[1].split("Stopping factory")[0]


def test_cluster_status_without_a_cluster_section_is_1(tmp_path: Path) -> None:
    config = tmp_path / "single.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[domains]\nlocal = ["example.org"]\n')
    result = admin(config, "cluster", "status", check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("cluster status: this node has no [cluster] section "
                             "(cluster.node, cluster.nodes)\n")
