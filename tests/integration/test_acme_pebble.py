"""ACME end to end against Pebble (Debian `pebble`, Let's Encrypt's test CA) on loopback.

PEBBLE_VA_ALWAYS_VALID is unset: Pebble really fetches
http://NAME:PORT/.well-known/acme-challenge/TOKEN, with NAME resolved by our test DNS
server to 127.0.0.1 and PORT pebble's httpPort, which is the server's own listen.http:
the answer comes from mailserver/http/ (the ACME client puts it in challenges.py's table
and data_dir/run/acme-challenges/), as it would for Let's Encrypt on port 80.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dns_server import DNSServer
from ports import free_port
from server_harness import RunningServer, admin
from test_reload import LOOPBACK, tls_client

NAMES = ["mail.acme.test", "mta-sts.acme.test"]


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1/localhost: Pebble's own HTTPS."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test directory CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "pebble.pem", directory / "pebble.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[dict[str, object]]:
    yield from run_pebble(tmp_path, tls_port=free_port())


def run_pebble(tmp_path: Path, tls_port: int) -> Iterator[dict[str, object]]:
    """Pebble on loopback; HTTP-01 fetched from 127.0.0.1 at the yielded "http" port
    (the test's server listens there: listen.http), TLS-ALPN-01 from 127.0.0.1:tls_port."""
    assert shutil.which("pebble"), "`make tools` installs Debian's pebble"
    ca, cert, key = make_ca(tmp_path)
    http_port = free_port()
    dns = DNSServer({name: {"A": ["127.0.0.1"]} for name in NAMES}).start()
    port, management = free_port(), free_port()
    config = tmp_path / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(cert), "privateKey": str(key),
        "httpPort": http_port, "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
    log = open(tmp_path / "pebble.log", "wb")
    proc = subprocess.Popen(["pebble", "-config", str(config), "-dnsserver",
                             dns.nameserver], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, (tmp_path / "pebble.log").read_text()
            time.sleep(0.1)
    yield {"directory": f"https://127.0.0.1:{port}/dir", "ca": str(ca),
           "http": f"tcp:{http_port}:interface=127.0.0.1", "http_port": http_port,
           "log": tmp_path / "pebble.log", "management": management}
    proc.terminate()
    proc.wait(10)
    log.close()
    dns.stop()


def served_certificate(port: int) -> x509.Certificate:
    with tls_client().wrap_socket(socket.create_connection(("127.0.0.1", port), 10)) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for_certificate(server: RunningServer, port: int, not_serial: int | None,
                         timeout: float = 60) -> x509.Certificate:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cert = served_certificate(port)
        if cert.issuer.rfc4514_string().find("Pebble") >= 0 and cert.serial_number != not_serial:
            return cert
        time.sleep(0.2)
    raise AssertionError(f"no new ACME certificate served:\n{server.log()}")


def test_certificate_from_pebble_served_renewed_and_swapped(server_factory, pebble) -> None:
    server = server_factory(
        "server", hostname=NAMES[0],
        listen={"smtp": LOOPBACK, "imaps": LOOPBACK, "submissions": LOOPBACK,
                "http": pebble["http"]},
        acme={"directory": pebble["directory"], "contact": "mailto:postmaster@acme.test",
              "names": NAMES, "directory_ca": pebble["ca"]},
    )
    imaps, submissions = server.ports["imaps"], server.ports["submissions"]
    first = wait_for_certificate(server, imaps, None)
    san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sorted(san.value.get_values_for_type(x509.DNSName)) == sorted(NAMES)
    assert "Pebble Intermediate" in first.issuer.rfc4514_string()
    validations = pebble["log"].read_text()  # type: ignore[attr-defined]
    for name in NAMES:  # the only thing on that port is our listen.http
        assert (f"Attempting to validate w/ HTTP: http://{name}:{pebble['http_port']}"
                f"/.well-known/acme-challenge/") in validations
    assert served_certificate(submissions).serial_number == first.serial_number
    stored = server.data_dir / "acme" / "certificate.pem"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert (server.data_dir / "acme" / "account.pem").stat().st_mode & 0o777 == 0o600
    assert list((server.data_dir / "run" / "acme-challenges").iterdir()) == [], \
        "answers removed once the order is settled"
    # openssl s_client sees the same chain on SMTPS (submissions).
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{submissions}",
                          "-servername", NAMES[0], "-showcerts"], input="", text=True,
                         capture_output=True, timeout=30).stdout
    assert f"subject=CN = {NAMES[0]}" in out or f"subject=CN={NAMES[0]}" in out, out[:2000]
    assert "Pebble Intermediate CA" in out

    # An IMAPS session open across the renewal keeps its connection and certificate.
    session = tls_client().wrap_socket(socket.create_connection(("127.0.0.1", imaps), 10))
    assert session.recv(4096).startswith(b"* OK")  # the whole greeting
    result = admin(server.config_path, "reload", "--renew")
    assert "certificate renewal requested" in result.stdout
    second = wait_for_certificate(server, imaps, first.serial_number)
    assert served_certificate(submissions).serial_number == second.serial_number
    session.sendall(b"a1 NOOP\r\n")
    assert session.recv(200).startswith(b"a1 OK")
    der = session.getpeercert(binary_form=True)
    assert der is not None
    assert x509.load_der_x509_certificate(der).serial_number == first.serial_number
    session.close()
    status = admin(server.config_path, "status").stdout
    assert f"certificate: {', '.join(NAMES)} (ACME, {stored})" in status

    # A restart uses the stored certificate at once (no new order: not due yet).
    server.stop()
    orders = pebble["log"].read_text().count("Issued certificate")  # type: ignore[attr-defined]
    assert orders == 2, "the first certificate and the forced renewal"
    server.start()
    assert served_certificate(server.ports["imaps"]).serial_number == second.serial_number
    time.sleep(1)
    assert pebble["log"].read_text().count("Issued certificate") == orders  # type: ignore[attr-defined]


def test_unreachable_ca_keeps_the_self_signed_certificate(server_factory, tmp_path) -> None:
    # A "CA" that accepts and answers garbage.
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen()

    def answer() -> None:
        while True:
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            conn.sendall(b"\x16\x03\x01 this is no TLS\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        server = server_factory(
            "garbage", hostname="mail.acme.test", listen={"smtp": LOOPBACK, "imaps": LOOPBACK},
            acme={"directory": f"https://127.0.0.1:{garbage.getsockname()[1]}/dir",
                  "names": ["mail.acme.test"]})
        from test_workers import wait_for_log

        wait_for_log(server, "acme: cannot obtain a certificate from https://127.0.0.1:")
        assert "the current certificate stays in use, next attempt in 60 s" in server.log()
        cert = served_certificate(server.ports["imaps"])
        assert cert.issuer == cert.subject, "the self-signed certificate serves"
        status = admin(server.config_path, "status").stdout
        assert "warning: [acme] is configured but no ACME certificate was obtained yet" in status
    finally:
        garbage.close()


def test_acme_added_by_reload(server_factory, pebble) -> None:
    from test_reload import rewrite

    server = server_factory("server", hostname=NAMES[0],  # the fixture serves its data_dir
                            listen={"smtp": LOOPBACK, "imaps": LOOPBACK})
    port = server.ports["imaps"]
    first = served_certificate(port)
    assert first.issuer == first.subject, "self-signed until [acme] exists"
    # The reload opens listen.http and starts the ACME client, which is answered there.
    rewrite(server, listen={**server.config["listen"], "http": pebble["http"]},
            acme={"directory": pebble["directory"], "names": [NAMES[0]],
                  "directory_ca": pebble["ca"]})
    admin(server.config_path, "reload")
    cert = wait_for_certificate(server, port, None)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [NAMES[0]]


def test_tls_alpn_01_answered_by_the_imaps_listener(server_factory, tmp_path: Path) -> None:
    """RFC 8737: Pebble's tlsPort is our IMAPS port; the validation connection (SNI,
    ALPN acme-tls/1) gets the challenge certificate, other clients the usual one."""
    imaps = free_port()
    runner = run_pebble(tmp_path, tls_port=imaps)
    pebble = next(runner)
    try:
        server = server_factory(
            "alpn", hostname=NAMES[0],
            listen={"smtp": LOOPBACK, "imaps": f"tcp:{imaps}:interface=127.0.0.1"},
            acme={"directory": pebble["directory"], "names": [NAMES[0]],
                  "directory_ca": pebble["ca"], "challenge": "tls-alpn-01"})
        cert = wait_for_certificate(server, imaps, None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.DNSName) == [NAMES[0]]
        assert f"acme: TLS-ALPN-01 validation connection for {NAMES[0]}" in server.log()
        # Outside a validation an acme-tls/1 client gets no challenge certificate.
        context = tls_client()
        context.set_alpn_protocols(["acme-tls/1"])
        with context.wrap_socket(socket.create_connection(("127.0.0.1", imaps), 10),
                                 server_hostname=NAMES[0]) as probe:
            assert probe.selected_alpn_protocol() is None
            der = probe.getpeercert(binary_form=True)
        assert der is not None
        assert x509.load_der_x509_certificate(der).serial_number == cert.serial_number
        assert "validate w/ HTTP" not in pebble["log"].read_text(), \
            "no HTTP-01 fetch"  # type: ignore[attr-defined]
        assert server.data_dir.joinpath("acme", "certificate.pem").exists()
    finally:
        next(runner, None)
