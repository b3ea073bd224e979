"""Nothing acknowledged is lost; nothing half-written is visible; disk errors say 451."""

from __future__ import annotations

import shutil
import smtplib
import threading

from server_harness import RunningServer
from wire import Wire


def send_until_killed(server: RunningServer, worker: int, acked: list[bytes],
                      stop: threading.Event) -> None:
    n = 0
    try:
        with smtplib.SMTP(*server.address(), timeout=60) as client:
            while not stop.is_set():
                marker = b"w%d-m%d" % (worker, n)
                body = (b"Subject: " + marker + b"\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200
                        + b"end " + marker + b"\r\n")
                client.sendmail("alice@example.org", ["bob@example.org"], body)
                acked.append(marker)
                n += 1
    except (smtplib.SMTPException, OSError):
        pass  # the server died under us: only what was acknowledged counts


def test_sigkill_loses_no_acknowledged_mail(server_factory) -> None:
    server = server_factory("crash")
    acked: list[bytes] = []
    stop = threading.Event()
    workers = [threading.Thread(target=send_until_killed, args=(server, i, acked, stop))
               for i in range(8)]
    for w in workers:
        w.start()
    while len(acked) < 150:
        threading.Event().wait(0.01)
    server.kill()  # SIGKILL, mid-stream
    stop.set()
    for w in workers:
        w.join(30)
    stored = server.messages("bob@example.org")
    markers = set()
    for message in stored:
        # Every visible file is whole: it ends with its own end marker.
        subject = message.split(b"Subject: ", 1)[1].split(b"\n", 1)[0]
        assert message.endswith(b"end " + subject + b"\n"), "a half message is visible"
        markers.add(subject)
    missing = set(acked) - markers
    assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
    assert len(markers) == len(stored), "no message stored twice"
    # The server comes back and serves the same Maildir.
    server.start()
    with smtplib.SMTP(*server.address()) as client:
        client.sendmail("alice@example.org", ["bob@example.org"], b"Subject: after\r\n\r\nok\r\n")
    assert any(m.endswith(b"\n\nok\n") for m in server.messages("bob@example.org"))


def test_disk_error_answers_451_and_leaves_nothing(server_factory) -> None:
    server = server_factory("broken")
    # bob's new/ is not a directory any more: his copy cannot be written.
    bob_new = server.maildir("bob@example.org") / "new"
    shutil.rmtree(bob_new)
    bob_new.write_bytes(b"in the way")
    wire = Wire(server.address())
    wire.greet()
    wire.command("MAIL FROM:<carol@example.net>")
    assert wire.command("RCPT TO:<alice@example.org>") == "250 2.1.5 Ok"
    assert wire.command("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"
    assert wire.command("DATA").startswith("354")
    wire.send(b"Subject: doomed\r\n\r\nbody\r\n.\r\n")
    assert wire.text().startswith("451 4.3.0 ")
    # alice's copy was rolled back: the transaction is all or nothing.
    assert server.visible_files("alice@example.org") == []
    assert list((server.maildir("alice@example.org") / "tmp").iterdir()) == []
    # The session and the server go on.
    assert wire.command("NOOP") == "250 2.0.0 Ok"
    wire.close()
    with smtplib.SMTP(*server.address()) as client:
        client.sendmail("carol@example.net", ["alice@example.org"], b"Subject: ok\r\n\r\nok\r\n")
    assert len(server.visible_files("alice@example.org")) == 1
