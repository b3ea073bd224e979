"""What the operator runs: JSON logs, `mailserver sendmail`, `mailserver status`."""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import time
from pathlib import Path

from server_harness import BIN, PASSWORD, RunningServer, admin
from test_reload import LOOPBACK, rewrite


def sendmail(server: RunningServer, *args: str, stdin: bytes,
             program: str = "mailserver") -> subprocess.CompletedProcess[bytes]:
    command = [str(BIN / "mailserver"), "--config", str(server.config_path), "sendmail"]
    env = None
    if program == "sendmail":  # the console script, configured by $MAILSERVER_CONFIG
        command = [str(BIN / "sendmail")]
        env = {**os.environ, "MAILSERVER_CONFIG": str(server.config_path)}
    return subprocess.run([*command, *args], input=stdin, capture_output=True,
                          timeout=60, env=env)


def wait_messages(server: RunningServer, address: str, count: int,
                  timeout: float = 30) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = server.messages(address)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{len(server.messages(address))} of {count} messages for "
                         f"{address}:\n{server.log()}")


def test_json_log_lines_carry_the_session_and_no_secrets(server_factory) -> None:
    server = server_factory(
        "json", log={"format": "json"},
        listen={"smtp": LOOPBACK, "submission": LOOPBACK},
        auth={"allow_plaintext_without_tls": True})
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=60) as client:
        client.login("alice@example.org", PASSWORD)
        client.sendmail("alice@example.org", ["bob@example.org"],
                        b"Subject: json\r\n\r\nthe body is private\r\n")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=60) as client:
        try:
            client.login("alice@example.org", "wrong guess 123")
        except smtplib.SMTPAuthenticationError:
            pass
    # Until the failed login's line is written (a 0.5 s sleep was not always enough);
    # whole lines only: the server may be writing the next one.
    deadline = time.monotonic() + 30
    while True:
        text = server.log_path.read_text()
        text = text[:text.rfind("\n") + 1]
        if "AUTH PLAIN failed" in text or "AUTH LOGIN failed" in text:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.05)
    assert PASSWORD not in text and "wrong guess 123" not in text
    assert "the body is private" not in text
    records = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert {"time", "level", "service", "session", "client", "event", "fields"} <= \
        set(records[-1])
    accepted = [r for r in records if "AUTH PLAIN accepted" in r["event"]
                or "AUTH LOGIN accepted" in r["event"]]
    assert len(accepted) == 1, [r["event"] for r in records]
    session = accepted[0]["session"]
    assert session and accepted[0]["client"] == "127.0.0.1"
    assert accepted[0]["service"] == "submission" and accepted[0]["level"] == "info"
    same = [r for r in records if r["session"] == session]
    assert any(r["event"].endswith("(35 octets) stored") for r in same), \
        "the delivery line carries the session id of its session"
    assert any(r["session"] and r["session"] != session and "failed" in r["event"]
               for r in records), "the failed login is logged under its own session"


def test_sendmail_delivers_as_the_local_user(server_factory) -> None:
    server = server_factory("sm")
    server.add_alias("root@example.org", "alice@example.org")
    # As cron calls it: -FCronDaemon -i -B8BITMIME -oem, recipient without a domain.
    result = sendmail(server, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root",
                      stdin=b"Subject: cron output\n\nline one\n.\nline three\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""
    [message] = wait_messages(server, "alice@example.org", 1)
    head, _, body = message.partition(b"\n\n")
    assert head.startswith(b"Return-Path: <root@mx.test.example>\nReceived: by "
                           b"mx.test.example (mailserver sendmail, from userid 0) id ")
    assert b"\nFrom: CronDaemon <root@mx.test.example>\n" in head
    assert b"\nDate: " in head and b"\nMessage-ID: <" in head
    assert body == b"line one\n.\nline three\n", "-i: a lone dot is data"


def test_sendmail_t_takes_recipients_from_headers_and_drops_bcc(server_factory) -> None:
    server = server_factory("smt", dkim={"sign": True})
    message = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
               b"Cc: carol@example.net\r\nBcc: hidden@example.org,\r\n alice@example.org\r\n"
               b"Subject: t\r\n\r\nbody\r\n.\r\nnot read\r\n")
    result = sendmail(server, "-t", "-f", "alice@example.org", stdin=message,
                      program="sendmail")
    assert result.returncode == 0, result.stderr
    for user in ("bob@example.org", "carol@example.net", "alice@example.org"):
        [stored] = wait_messages(server, user, 1)
        assert b"Bcc" not in stored and b"hidden" not in stored
        assert stored.startswith(b"Return-Path: <alice@example.org>\n")
        assert stored.endswith(b"\n\nbody\n"), "without -i a lone dot ends the message"
        # Signed as mail submitted over SMTP is (the submission listeners' hook).
        assert re.search(rb"\nDKIM-Signature: v=1; a=\S+; c=relaxed/relaxed; d=example\.org;",
                         stored), stored[:600]
    assert "pickup: " in server.log() and "<hidden@example.org> refused: 550" in server.log()


def test_sendmail_refusals(server_factory) -> None:
    server = server_factory("smr", limits={"message_size": 1000})
    result = sendmail(server, stdin=b"Subject: x\n\nbody\n")
    assert result.returncode == 1
    assert result.stderr.decode() == ("sendmail: no recipients (name them, or use -t "
                                      "to take them from the headers)\n")
    result = sendmail(server, "bob@example.org", stdin=b"x" * 2000 + b"\n")
    assert result.returncode == 1
    assert result.stderr.decode() == ("sendmail: the message is larger than "
                                      "limits.message_size (1000 bytes)\n")
    result = sendmail(server, "<bob@example.org>", stdin=b"x\n")
    assert result.returncode == 1
    assert result.stderr == b"sendmail: not an address: '<bob@example.org>'\n"
    # A line break in -f would forge a header after Return-Path.
    result = sendmail(server, "-f", "a@b.test\nX-Forged: yes", "bob@example.org",
                      stdin=b"x\n")
    assert result.returncode == 1
    assert result.stderr == b"sendmail: -f: not an address: 'a@b.test\\nX-Forged: yes'\n"
    maildrop = server.data_dir / "maildrop"
    assert not maildrop.exists() or list(maildrop.iterdir()) == [], "nothing was dropped"


def test_pickup_sets_aside_a_forged_maildrop_file(server_factory) -> None:
    server = server_factory("smf")
    maildrop = server.data_dir / "maildrop"
    maildrop.mkdir(mode=0o700, exist_ok=True)
    envelope = {"sender": "a@b.test\nX-Forged: yes", "recipients": ["bob@example.org"]}
    (maildrop / ".f").write_bytes(json.dumps(envelope).encode() + b"\nSubject: f\n\nx\n")
    (maildrop / ".f").rename(maildrop / "forged")
    (maildrop / ".g").write_bytes(b"no envelope here\n")
    (maildrop / ".g").rename(maildrop / "garbage")
    deadline = time.monotonic() + 60
    while len(list((maildrop / "refused").glob("*"))) < 2:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    assert sorted(p.name for p in (maildrop / "refused").iterdir()) == ["forged", "garbage"]
    assert server.messages("bob@example.org") == []
    assert "pickup: forged: unreadable (not an address: 'a@b.test\\nX-Forged: yes')" \
        in server.log()


def test_sendmail_while_the_server_is_stopped_waits(server_factory) -> None:
    server = server_factory("sms")
    server.stop()
    result = sendmail(server, "bob@example.org", stdin=b"Subject: later\n\nx\n")
    assert result.returncode == 0
    assert b"no server is running; the message waits in " in result.stderr
    assert len(list((server.data_dir / "maildrop").iterdir())) == 1
    server.start()
    [stored] = wait_messages(server, "bob@example.org", 1)
    assert b"Subject: later" in stored
    deadline = time.monotonic() + 60  # removed just after the commit
    while list((server.data_dir / "maildrop").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((server.data_dir / "maildrop").iterdir()) == []


def test_status(server_factory) -> None:
    server = server_factory("st", listen={"smtp": LOOPBACK, "imap": LOOPBACK})
    server.wait_for = ("smtp", "imap")
    server.add_alias("postmaster@example.org", "alice@example.org")
    out = admin(server.config_path, "status").stdout.splitlines()
    assert out[0].startswith("server: running (pid ")
    assert out[1] == f"  imap         127.0.0.1:{server.ports['imap']}"
    assert out[2] == f"  smtp         127.0.0.1:{server.ports['smtp']}"
    assert out[3] == "queue: empty"
    assert out[4].startswith(f"certificate: mx.test.example (self-signed, "
                             f"{server.data_dir / 'tls' / 'cert.pem'}), expires ")
    assert out[5] == "last reload: none since the server started"
    assert out[6:] == [
        "warning: postmaster@example.net reaches nobody (RFC 5321 4.5.1 requires it): "
        "mailserver alias add postmaster@example.net you@example.net"]
    rewrite(server, listen={"smtp": LOOPBACK})
    admin(server.config_path, "reload")
    out = admin(server.config_path, "status").stdout.splitlines()
    assert [line for line in out if line.startswith("  ")] == [
        f"  smtp         127.0.0.1:{server.ports['smtp']}"]
    assert any(line.startswith("last reload: ") and line.endswith(", in force")
               for line in out)
    server.stop()
    out = admin(server.config_path, "status").stdout.splitlines()
    assert out[0] == f"server: not running on {server.data_dir}"
    server.start()  # a reload of the previous run is not this run's
    out = admin(server.config_path, "status").stdout.splitlines()
    assert "last reload: none since the server started" in out


def test_status_warns_of_a_certificate_expiring_soon(server_factory, tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "soon.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=80))
            .not_valid_after(now + datetime.timedelta(days=3, hours=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = server_factory("soon", tls={"certificate": str(tmp_path / "c.pem"),
                                         "private_key": str(tmp_path / "k.pem")})
    out = admin(server.config_path, "status").stdout
    assert "warning: the certificate expires in 3d " in out
    assert f"({tmp_path / 'c.pem'})" in out


def test_reload_refusals(server_factory) -> None:
    server = server_factory("rr")
    result = admin(server.config_path, "reload", "--renew", check=False)
    assert result.returncode == 1
    assert result.stderr == "reload: --renew: no [acme] in the config\n"
    server.stop()
    result = admin(server.config_path, "reload", check=False)
    assert result.returncode == 1
    assert result.stderr == f"reload: no server is running on {server.data_dir}\n"
