"""The ACME client's decisions without a CA: when a certificate is due, what a CA that
answers garbage or never answers does, the back-off, and the [acme] config checks."""

from __future__ import annotations

import datetime
import socket
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailserver.app import acme
from mailserver.app.reload import ReloadTargets
from mailserver.app.tls import SwappableTLS, server_tls_options
from mailserver.config import config_from_dict
from mailserver.errors import ConfigError
from mailserver.http.challenges import ChallengeResponses
from mailserver.logs import json_event


def config(tmp_path: Path, **acme_keys: object):
    keys = {"directory": "https://127.0.0.1:1/dir", **acme_keys}
    return config_from_dict({"hostname": "mail.example.org", "data_dir": str(tmp_path),
                             "acme": keys})


def store(tmp_path: Path, names: list[str], age_days: float, life_days: float) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=age_days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=life_days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path / "acme"
    folder.mkdir(exist_ok=True)
    (folder / "certificate.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM))


def test_due_at_two_thirds_of_the_lifetime(tmp_path: Path) -> None:
    c = config(tmp_path, names=["mail.example.org"])
    assert acme.seconds_until_due(c) == 0, "no certificate yet: now"
    store(tmp_path, ["mail.example.org"], age_days=30, life_days=90)
    assert acme.seconds_until_due(c) == pytest.approx(30 * 86400, abs=5)
    store(tmp_path, ["mail.example.org"], age_days=61, life_days=90)
    assert acme.seconds_until_due(c) == 0
    # The stored certificate serves (key and chain from the one file).
    store(tmp_path, ["mail.example.org"], age_days=1, life_days=90)
    options = server_tls_options(c)
    subject = options.certificate.to_cryptography().subject
    assert subject.rfc4514_string() == "CN=mail.example.org"


def test_due_when_a_name_is_missing_or_renewal_is_asked(tmp_path: Path) -> None:
    store(tmp_path, ["mail.example.org"], age_days=1, life_days=90)
    both = config(tmp_path, names=["mail.example.org", "mta-sts.example.org"])
    assert acme.seconds_until_due(both) == 0
    one = config(tmp_path, names=["MAIL.example.org."])
    assert acme.seconds_until_due(one) > 50 * 86400
    (tmp_path / "acme" / "renew-now").touch()
    assert acme.seconds_until_due(one) == 0


def test_a_ca_that_never_answers_times_out(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(acme, "NETWORK_TIMEOUT", 1)
    c = config(tmp_path, directory=f"https://127.0.0.1:{silent.getsockname()[1]}/dir")
    try:
        with pytest.raises(Exception, match="(?i)timed out") as raised:
            acme.obtain_certificate(c, ChallengeResponses())
    finally:
        silent.close()
    # Cut by acme.NETWORK_TIMEOUT (the message names it), not an elapsed-time bound.
    assert "(read timeout=1)" in str(raised.value)
    assert (tmp_path / "acme" / "account.pem").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "acme" / "certificate.pem").exists()


def test_a_ca_answering_plain_http_is_a_tls_error(tmp_path: Path) -> None:
    import requests

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    # Plain HTTP behind an https:// URL (an http:// directory is refused by the config).
    c = config(tmp_path, directory=f"https://127.0.0.1:{server.getsockname()[1]}/dir")
    with pytest.raises(requests.exceptions.SSLError):
        acme.obtain_certificate(c, ChallengeResponses())
    server.close()


def test_failures_back_off_and_keep_the_certificate(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet import task
    from twisted.python.failure import Failure

    clock = task.Clock()
    monkeypatch.setattr(acme, "reactor", clock)
    c = config(tmp_path)
    tls = SwappableTLS(server_tls_options(c))
    before = tls.options
    service = acme.AcmeService(c, ReloadTargets(tls=tls))
    service.running = 1
    waits = []
    for _ in range(12):
        service.busy = True
        service._failed(Failure(RuntimeError("the CA said no")))
        waits.append(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        assert tls.options is before, "the certificate in use stays"
    assert waits[:4] == [60, 120, 240, 480]
    assert waits[-1] == acme.RETRY_MAX and max(waits) == acme.RETRY_MAX


def test_acme_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data_dir": str(tmp_path), "acme": {
            "directory": "http://ca.test/dir", "contact": "postmaster@x.test",
            "names": ["bad name", "localhost"], "directory_ca": "/nonexistent/ca.pem"},
            "tls": {"certificate": __file__, "private_key": __file__},
            "log": {"format": "xml"}})
    assert info.value.problems == [
        'acme.directory: expected an https:// URL, got "http://ca.test/dir"',
        'acme.contact: expected "mailto:ADDRESS", got "postmaster@x.test"',
        "acme.names[0]: not a host name: 'bad name'",
        "acme.names[1]: not a host name: 'localhost'",
        "acme.directory_ca: cannot read /nonexistent/ca.pem",
        "acme: [tls] certificate and [acme] exclude each other; remove one",
        'log.format: expected "text" or "json", got "xml"',
    ]


def test_json_event_drops_secrets_and_lifts_the_session() -> None:
    from twisted.logger import LogLevel

    line = json_event({"log_format": "{session} AUTH for {user}", "log_level": LogLevel.info,
                       "log_namespace": "mailserver.smtp.submission", "log_time": 0.0,
                       "session": "submission-7", "user": "a@b", "peer": "192.0.2.1",
                       "password": "hunter2", "body": b"secret text"})
    import json

    record = json.loads(line)
    assert record == {"time": "1970-01-01T00:00:00.000+00:00", "level": "info",
                      "service": "submission", "session": "submission-7",
                      "client": "192.0.2.1", "event": "submission-7 AUTH for a@b",
                      "fields": {"session": "submission-7", "user": "a@b",
                                 "peer": "192.0.2.1"}}
    assert "hunter2" not in line and "secret text" not in line


def test_tls_alpn_01_certificate_and_config(tmp_path: Path) -> None:
    import hashlib

    cert, _key = acme.alpn_challenge_certificate("mail.example.org", "tok.thumb")
    parsed = cert
    extension = parsed.extensions.get_extension_for_oid(acme.ACME_IDENTIFIER)
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["mail.example.org"]
    for challenge, processes, problem in (
            ("dns-01", 1, 'acme.challenge: expected "http-01" or "tls-alpn-01", got "dns-01"'),
            ("tls-alpn-01", 2, "acme.challenge: tls-alpn-01 needs processes = 1 (the "
                               "answer lives in the process that asked)")):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"data_dir": str(tmp_path), "processes": processes,
                              "acme": {"directory": "https://ca.test/dir",
                                       "challenge": challenge}})
        assert info.value.problems == [problem]
