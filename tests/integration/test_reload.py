"""Reload without restart (app/reload.py): SIGHUP and `mailserver reload` re-read the
config and certificate; established sessions go on; a broken config is refused."""

from __future__ import annotations

import json
import os
import poplib
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from server_harness import PASSWORD, RunningServer, admin, toml_dumps
from test_workers import wait_for_log, workers_of

LOOPBACK = "tcp:0:interface=127.0.0.1"


def rewrite(server: RunningServer, **changes: Any) -> None:
    """The server's config file with `changes` (a table replaces the old table; None
    removes the key)."""
    server.config = {k: v for k, v in {**server.config, **changes}.items() if v is not None}
    server.config_path.write_text(toml_dumps(server.config))


def reloads(server: RunningServer) -> dict[str, Any]:
    return json.loads((server.data_dir / "run" / "reload.json").read_text())


def wait_reload(server: RunningServer, since: float, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            outcome = reloads(server)
        except (OSError, ValueError):
            outcome = {}
        if outcome.get("time", 0) >= since:
            return outcome
        time.sleep(0.05)
    raise AssertionError(f"no reload reported:\n{server.log()}")


def ehlo_size(server: RunningServer) -> int:
    with smtplib.SMTP(*server.address(), timeout=60) as client:
        client.ehlo("client.test")
        return int(client.esmtp_features["size"])


def listeners(server: RunningServer) -> dict[str, list[Any]]:
    return json.loads((server.data_dir / "run" / "listeners.json").read_text())


def test_reload_changes_limits_and_listeners_sessions_stay(server_factory) -> None:
    server = server_factory("r1", limits={"message_size": 100_000})
    assert ehlo_size(server) == 100_000
    # A session established before the reload, in the middle of a transaction.
    old = smtplib.SMTP(*server.address(), timeout=60)
    old.ehlo("old.test")
    old.mail("alice@example.org")
    old.rcpt("bob@example.org")
    rewrite(server, limits={"message_size": 200_000},
            listen={"smtp": LOOPBACK, "imap": LOOPBACK})
    result = admin(server.config_path, "reload")
    assert result.stdout.startswith("reloaded (pid ")
    assert ehlo_size(server) == 200_000, "new sessions get the new limits"
    imap_port = listeners(server)["imap"][1]
    with socket.create_connection(("127.0.0.1", imap_port), timeout=60) as imap:
        assert imap.recv(200).startswith(b"* OK")
    code, _ = old.data(b"Subject: across a reload\r\n\r\nbody\r\n")
    assert code == 250, "the established session finished its transaction"
    old.quit()
    assert b"Subject: across a reload" in server.messages("bob@example.org")[-1]

    # A domain added by reload is local at once: its postmaster is accepted on port 25.
    rewrite(server, domains={"local": ["example.org", "example.net", "new.test"]})
    admin(server.config_path, "reload")
    with smtplib.SMTP(*server.address(), timeout=60) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        assert client.rcpt("bob@new.test")[0] == 550, "unknown user of a local domain"
    server.add_alias("@new.test", "bob@example.org")
    with smtplib.SMTP(*server.address(), timeout=60) as client:
        client.sendmail("someone@sender.test", ["anyone@new.test"],
                        b"Subject: new domain\r\n\r\nx\r\n")
    assert b"Subject: new domain" in server.messages("bob@example.org")[-1]

    # The imap listener removed again: no longer listening, and listeners.json says so.
    rewrite(server, listen={"smtp": LOOPBACK})
    admin(server.config_path, "reload")
    assert "imap" not in listeners(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", imap_port), timeout=60).close()


def test_reload_rebuilds_what_the_factories_made_from_the_config(server_factory) -> None:
    """Each listener's factory is built anew from the new config: POP3's UIDL format,
    the web side's /metrics networks and the [abuse] networks follow a reload for new
    connections; a session opened before it goes on."""
    server = server_factory("r5", listen={"smtp": LOOPBACK, "pop3s": LOOPBACK,
                                          "submissions": LOOPBACK, "http": LOOPBACK})
    with smtplib.SMTP(*server.address(), timeout=60) as client:
        client.sendmail("a@sender.test", ["bob@example.org"], b"Subject: x\r\n\r\nx\r\n")

    def uidl() -> bytes:
        pop = poplib.POP3_SSL(*server.address("pop3s"), context=tls_client(), timeout=60)
        pop.user("bob@example.org")
        pop.pass_(PASSWORD)
        line = pop.uidl(1)
        pop.quit()
        return line

    def metrics_status() -> int:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{server.ports['http']}/metrics", timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code

    assert re.fullmatch(rb"\+OK 1 \d+\.\S+", uidl()), "the Maildir base name"
    assert metrics_status() == 200, "loopback may read /metrics by default"
    old = smtplib.SMTP(*server.address(), timeout=60)
    old.ehlo("old.test")
    rewrite(server, pop3={"uidl_format": "%08Xu%08Xv"},
            http={"metrics_networks": ["192.0.2.0/24"]})
    admin(server.config_path, "reload")
    assert re.fullmatch(rb"\+OK 1 00000001[0-9a-f]{8}", uidl()), "Dovecot's UID form"
    assert metrics_status() == 403
    # The rebuilt site still describes the ports really listened on (autoconfig).
    with urllib.request.urlopen(
            f"http://127.0.0.1:{server.ports['http']}/.well-known/autoconfig/mail/"
            f"config-v1.1.xml?emailaddress=bob@example.org", timeout=10) as r:
        assert f"<port>{server.ports['pop3s']}</port>".encode() in r.read()

    rewrite(server, abuse={"refused_networks": ["127.0.0.0/8"]})
    admin(server.config_path, "reload")
    with server.connect() as refused:
        reply = refused.recv(200)
    assert reply.startswith(b"421 4.7.0 ") and reply.endswith(b"too many connections\r\n")
    assert old.noop()[0] == 250, "the session from before both reloads goes on"
    old.quit()


def test_broken_config_is_refused_and_the_old_one_stays(server_factory) -> None:
    server = server_factory("r2", limits={"message_size": 100_000})
    rewrite(server, colour="blue", limits={"message_size": "big"})
    asked = time.time()
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    outcome = wait_reload(server, asked)
    assert outcome["ok"] is False
    assert outcome["problems"] == [
        f"{server.config_path}: colour: unknown key",
        f'{server.config_path}: limits.message_size: expected an integer, got "big"',
    ]
    wait_for_log(server, "reload refused: the previous config stays in force")
    log = server.log_path.read_text()
    assert f"reload refused: {server.config_path}: colour: unknown key" in log
    assert "Traceback" not in log
    assert server.is_running()
    assert ehlo_size(server) == 100_000, "the old config stays in force"
    # The admin command checks the file first and does not even signal.
    result = admin(server.config_path, "reload", check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{server.config_path}: colour: unknown key",
        f'{server.config_path}: limits.message_size: expected an integer, got "big"',
        "reload: not sent; the running server keeps its config",
    ]
    # A port in use: that listener is refused in the log, the others go on.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        rewrite(server, colour=None, limits={"message_size": 100_000},
                listen={"smtp": LOOPBACK, "pop3": f"tcp:{port}:interface=127.0.0.1"})
        admin(server.config_path, "reload")
        wait_for_log(server, f"reload: listen.pop3: cannot listen on tcp:{port}:"
                             "interface=127.0.0.1: address already in use")
        assert ehlo_size(server) == 100_000
    finally:
        busy.close()


def _load(server: RunningServer, clients: int, per_client: int,
          failures: list[str], stop: threading.Event) -> list[threading.Thread]:
    def work(n: int) -> None:
        for i in range(per_client):
            try:
                with smtplib.SMTP(*server.address(), timeout=30) as client:
                    client.sendmail("alice@example.org", ["bob@example.org"],
                                    b"Subject: load %d-%d\r\n\r\nbody\r\n" % (n, i))
            except Exception as e:  # any failed transaction fails the test
                failures.append(f"{n}-{i}: {e!r}")

    pool = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
    for t in pool:
        t.start()
    return pool


@pytest.mark.parametrize("processes", [1, 2])
def test_reload_during_50_connection_load(server_factory, processes: int) -> None:
    server = server_factory(f"load{processes}", processes=processes,
                            limits={"connections_per_ip": 200})
    if processes > 1:
        workers_of(server)
        wait_for_log(server, "smtp accepting on the inherited socket")
    failures: list[str] = []
    stop = threading.Event()
    pool = _load(server, 50, 6, failures, stop)
    assert server.proc is not None
    sizes = [100_000, 200_000]
    for i in range(10):  # a reload every 0.2 s while the 50 clients send
        rewrite(server, limits={"connections_per_ip": 200, "message_size": sizes[i % 2]})
        os.kill(server.proc.pid, signal.SIGHUP)
        time.sleep(0.2)
    for t in pool:
        t.join(180)
    assert failures == []
    subjects = {m.split(b"Subject: ", 1)[1].split(b"\n", 1)[0]
                for m in server.messages("bob@example.org")}
    assert len(subjects) == 300, "every transaction delivered once"
    # After the last reload settles, every process serves its config (200_000).
    rewrite(server, limits={"connections_per_ip": 200, "message_size": 300_000})
    admin(server.config_path, "reload")
    # The workers reload on the forwarded SIGHUP, a moment later (a 1 s sleep was not
    # always enough under load): wait until a dozen connections all see the new size.
    deadline = time.monotonic() + 30
    while (sizes_seen := {ehlo_size(server) for _ in range(12)}) != {300_000}:
        assert time.monotonic() < deadline, sizes_seen
        time.sleep(0.1)
    if processes > 1:
        assert "worker1 " in server.log_path.read_text()
        assert server.log_path.read_text().count("reload: config") >= 2


def test_sighup_storm(server_factory) -> None:
    server = server_factory("storm")
    session = smtplib.SMTP(*server.address(), timeout=60)
    session.ehlo("storm.test")
    assert server.proc is not None
    for _ in range(200):
        os.kill(server.proc.pid, signal.SIGHUP)
    wait_for_log(server, "reload: config")  # not a fixed 1.5 s: under load it was later
    assert server.is_running()
    count = server.log_path.read_text().count("reload: config")
    assert 1 <= count < 200, "signals during a reload are folded into one more"
    session.sendmail("alice@example.org", ["bob@example.org"], b"Subject: storm\r\n\r\nx\r\n")
    session.quit()
    assert ehlo_size(server) > 0


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def peer_name(sock: ssl.SSLSocket) -> str:
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def tls_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_new_certificate_for_new_connections_only(server_factory, tmp_path: Path) -> None:
    first = _certificate(tmp_path, "one.test")
    second = _certificate(tmp_path, "two.test")
    server = server_factory("certs", listen={"smtp": LOOPBACK, "imaps": LOOPBACK},
                            tls={"certificate": str(first[0]), "private_key": str(first[1])})
    server.wait_for = ("smtp", "imaps")
    port = server.ports["imaps"]
    old = tls_client().wrap_socket(socket.create_connection(("127.0.0.1", port), 10))
    assert old.recv(4096).startswith(b"* OK")  # the whole greeting
    assert peer_name(old) == "CN=one.test"
    rewrite(server, tls={"certificate": str(second[0]), "private_key": str(second[1])})
    admin(server.config_path, "reload")
    with tls_client().wrap_socket(socket.create_connection(("127.0.0.1", port), 10)) as new:
        assert new.recv(200).startswith(b"* OK")
        assert peer_name(new) == "CN=two.test"
    old.sendall(b"a1 NOOP\r\n")
    assert old.recv(200).startswith(b"a1 OK"), "the open session keeps going"
    assert peer_name(old) == "CN=one.test"
    old.close()
    # A certificate that does not load: refused, the second one keeps serving.
    second[1].write_text("garbage\n")
    rewrite(server, tls={"certificate": str(second[0]), "private_key": str(second[1])})
    asked = time.time()
    result = admin(server.config_path, "reload", check=False)
    assert result.returncode == 1
    assert f"tls.private_key: unreadable private key in {second[1]}" in result.stderr
    assert wait_reload(server, asked)["ok"] is False
    with tls_client().wrap_socket(socket.create_connection(("127.0.0.1", port), 10)) as new:
        assert peer_name(new) == "CN=two.test"


def test_a_removed_listener_closes_in_the_workers_too(server_factory) -> None:
    server = server_factory("wrm", processes=2, listen={"smtp": LOOPBACK, "pop3": LOOPBACK})
    server.wait_for = ("smtp", "pop3")
    workers_of(server)
    wait_for_log(server, "pop3 accepting on the inherited socket")
    port = server.ports["pop3"]
    rewrite(server, listen={"smtp": LOOPBACK})
    admin(server.config_path, "reload")
    deadline = time.monotonic() + 60
    while True:  # the worker handles the forwarded SIGHUP a moment later
        try:
            socket.create_connection(("127.0.0.1", port), timeout=60).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "a process still accepts on the removed port"
        time.sleep(0.1)
    for _ in range(20):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=60).close()
    assert ehlo_size(server) > 0
