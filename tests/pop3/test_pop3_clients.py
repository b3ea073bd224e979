"""The real server driven by real POP3 clients: poplib, curl, fetchmail.

Each test checks what a user would: the bytes received against the Maildir file (LF ->
CRLF), UIDLs across sessions, what is left on disk after QUIT or a dropped connection,
and the Seen flag an IMAP client would see.
"""

from __future__ import annotations

import base64
import os
import poplib
import shutil
import smtplib
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pop3_helpers import PASSWORD, client_tls, message, put_message, wire_form
from server_harness import RunningServer

ALICE = "alice@example.org"


def stls_login(server: RunningServer, user: str = ALICE) -> poplib.POP3:
    pop = poplib.POP3(*server.address("pop3"), timeout=60)
    pop.stls(client_tls())
    pop.user(user)
    pop.pass_(PASSWORD)
    return pop


def drop(pop: poplib.POP3) -> None:
    """Close the connection without QUIT (poplib's file object holds the socket too)."""
    pop.file.close()
    pop.sock.close()


def login_when_free(server: RunningServer, user: str = ALICE) -> poplib.POP3:
    """Log in, retrying while the server has not yet noticed a dropped connection
    (until then the maildrop is still [IN-USE], as it should be)."""
    for _ in range(100):
        try:
            return stls_login(server, user)
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0]:
                raise
            time.sleep(0.05)
    raise AssertionError("the maildrop stayed locked")


def retr_bytes(pop: poplib.POP3, n: int) -> bytes:
    """poplib undoes the dot-stuffing and splits lines; rejoin them with CRLF."""
    _resp, lines, _octets = pop.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


def test_poplib_stls_user_pass_bytes_match_the_maildir(
        pop_server: RunningServer, mailbox: Callable[..., Path]) -> None:
    maildir = mailbox(message(1), message(2))
    files = sorted((maildir / "new").iterdir(), key=lambda p: p.name)
    pop = poplib.POP3(*pop_server.address("pop3"), timeout=60)
    assert "STLS" in pop.capa() and "USER" not in pop.capa()
    pop.stls(client_tls())
    caps = pop.capa()
    assert "STLS" not in caps and "USER" in caps and caps["SASL"] == ["PLAIN"]
    pop.user(ALICE)
    assert pop.pass_(PASSWORD) == b"+OK Logged in, 2 messages."
    sizes = [len(wire_form(f.read_bytes())) for f in files]
    assert pop.stat() == (2, sum(sizes))
    assert pop.list()[1] == [f"{i} {s}".encode() for i, s in enumerate(sizes, 1)]
    for i, f in enumerate(files, 1):
        assert retr_bytes(pop, i) == wire_form(f.read_bytes())
    assert pop.quit() == b"+OK Logging out."
    # Both retrieved: now in cur/ with the Seen flag, as IMAP will show them.
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == sorted(
        f.name + ":2,S" for f in files)


def test_pop3s_auth_plain_and_smtp_delivered_message(pop_server: RunningServer,
                                                     mailbox: Callable[..., Path]) -> None:
    maildir = mailbox()
    body = b"Subject: via smtp\r\n\r\n.leading dot\r\nlast\r\n"
    with smtplib.SMTP(*pop_server.address("smtp"), timeout=60) as smtp:
        smtp.sendmail("bob@example.org", [ALICE], body)
    stored = next((maildir / "new").iterdir()).read_bytes()
    pop = poplib.POP3_SSL(*pop_server.address("pop3s"), context=client_tls(), timeout=60)
    assert "STLS" not in pop.capa()
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    assert pop._shortcmd(f"AUTH PLAIN {token}") == b"+OK Logged in, 1 messages."
    got = retr_bytes(pop, 1)
    assert got == wire_form(stored) and got.endswith(body)
    pop.quit()


def test_uidl_stable_across_sessions_and_flag_changes(pop_server: RunningServer,
                                                      mailbox: Callable[..., Path]) -> None:
    maildir = mailbox(message(1), message(2), message(3))
    pop = stls_login(pop_server)
    first = pop.uidl()[1]
    pop.quit()
    # An IMAP client flags message 2 (\Flagged \Answered): the file is renamed.
    # Found by its content: sorted names need not follow delivery order (M99 > M100).
    [f] = [p for p in (maildir / "new").iterdir() if p.read_bytes() == message(2)]
    f.rename(maildir / "cur" / (f.name + ":2,FR"))
    pop = stls_login(pop_server)
    assert pop.uidl()[1] == first
    assert pop.uidl(2) == b"+OK " + first[1]
    pop.quit()
    assert all(len(line.split()[1]) <= 70 for line in first)  # RFC 1939 7


def test_dele_then_dropped_connection_deletes_nothing(pop_server: RunningServer,
                                                      mailbox: Callable[..., Path]) -> None:
    maildir = mailbox(message(1), message(2))
    before = sorted(p.name for p in (maildir / "new").iterdir())
    pop = stls_login(pop_server)
    pop.dele(1)
    pop.dele(2)
    drop(pop)  # no QUIT: RFC 1939 6, no UPDATE state
    pop = login_when_free(pop_server)  # the lock was released with the connection
    assert pop.stat()[0] == 2
    pop.dele(1)
    assert pop.quit() == b"+OK Logging out, messages deleted: 1."
    assert sorted(p.name for p in (maildir / "new").iterdir()) == before[1:]


def test_second_login_is_in_use_and_imap_style_access_goes_on(
        pop_server: RunningServer, mailbox: Callable[..., Path]) -> None:
    maildir = mailbox(message(1))
    first = stls_login(pop_server)
    second = poplib.POP3(*pop_server.address("pop3"), timeout=60)
    second.stls(client_tls())
    second.user(ALICE)
    with pytest.raises(poplib.error_proto) as refused:
        second.pass_(PASSWORD)
    assert refused.value.args[0] == b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
    # Delivery (and IMAP) are not locked out: SMTP delivers during the POP3 session,
    with smtplib.SMTP(*pop_server.address("smtp"), timeout=60) as smtp:
        smtp.sendmail("bob@example.org", [ALICE], b"Subject: meanwhile\r\n\r\nx\r\n")
    assert first.stat()[0] == 1  # but the snapshot does not change
    first.quit()
    second.user(ALICE)  # the same connection may try again once it is free
    second.pass_(PASSWORD)
    assert second.stat()[0] == 2
    second.quit()
    assert len(list((maildir / "new").iterdir())) + len(list((maildir / "cur").iterdir())) == 2


def test_curl_pop3_stls_and_pop3s(pop_server: RunningServer,
                                  mailbox: Callable[..., Path]) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is missing: `make tools` installs it"
    maildir = mailbox(message(1), message(2))
    stored = [f.read_bytes() for f in sorted((maildir / "new").iterdir(), key=lambda p: p.name)]
    user = f"{ALICE}:{PASSWORD}"
    stls = subprocess.run(
        [curl, "-sS", "-k", "--ssl-reqd", "-u", user,
         f"pop3://127.0.0.1:{pop_server.ports['pop3']}/1"],
        capture_output=True, timeout=60)
    assert stls.returncode == 0, stls.stderr
    assert stls.stdout == wire_form(stored[0])
    implicit = subprocess.run(
        [curl, "-sS", "-k", "-u", user, f"pop3s://127.0.0.1:{pop_server.ports['pop3s']}/2"],
        capture_output=True, timeout=60)
    assert implicit.returncode == 0, implicit.stderr
    assert implicit.stdout == wire_form(stored[1])
    listing = subprocess.run(
        [curl, "-sS", "-k", "-u", user, f"pop3s://127.0.0.1:{pop_server.ports['pop3s']}/"],
        capture_output=True, timeout=60)
    sizes = [len(wire_form(data)) for data in stored]
    assert listing.stdout == f"1 {sizes[0]}\r\n2 {sizes[1]}\r\n".encode()
    refused = subprocess.run(  # no TLS, no password: curl reports the login failure
        [curl, "-sS", "-u", user, f"pop3://127.0.0.1:{pop_server.ports['pop3']}/1"],
        capture_output=True, timeout=60)
    assert refused.returncode != 0 and refused.stdout == b""


def run_fetchmail(tmp_path: Path, server: RunningServer, *options: str) -> Path:
    """fetchmail over STLS into files written by an MDA, one file per message."""
    home = tmp_path / "home"
    out = tmp_path / "out"
    home.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    rc = home / ".fetchmailrc"
    rc.write_text(
        f'poll 127.0.0.1 protocol pop3 port {server.ports["pop3"]} auth password\n'
        f'  user "{ALICE}" password "{PASSWORD}" is root here\n'
        f'  sslproto "tls1.2+" no sslcertck\n'
        f'  mda "/bin/sh -c \'cat > {out}/msg.$$\'"\n')
    rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    done = subprocess.run(
        ["fetchmail", "--nodetach", "--invisible", "--nosyslog", "-f", str(rc),
         "--pidfile", str(home / "pid"), *options],
        capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: no mail
    return out


def test_fetchmail_keep_uidl_then_download_and_delete(
        tmp_path: Path, pop_server: RunningServer, mailbox: Callable[..., Path]) -> None:
    assert shutil.which("fetchmail"), "fetchmail is missing: `make tools` installs it"
    maildir = mailbox(message(1), message(2, body_lines=50))
    stored = sorted(f.read_bytes() for f in (maildir / "new").iterdir())
    out = run_fetchmail(tmp_path, pop_server, "--keep", "--uidl")
    got = sorted(p.read_bytes() for p in out.iterdir())
    assert len(got) == 2
    # fetchmail hands the MDA LF line ends; --invisible adds no Received header. It
    # may prepend nothing else: each message arrives exactly as stored.
    assert got == stored
    # --keep: both still there (fetchmail fetches kept mail with TOP, not RETR, so
    # their Seen flag is not set).
    assert len([*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]) == 2
    # With --uidl, a second --keep run fetches nothing new.
    for p in out.iterdir():
        p.unlink()
    run_fetchmail(tmp_path, pop_server, "--keep", "--uidl")
    assert list(out.iterdir()) == []
    # --nokeep --all: download again and delete on the server (DELE, then QUIT).
    run_fetchmail(tmp_path, pop_server, "--nokeep", "--all")
    assert len(list(out.iterdir())) == 2
    assert list((maildir / "cur").iterdir()) == [] and list((maildir / "new").iterdir()) == []


def test_many_sessions_in_parallel_each_own_maildrop(pop_server: RunningServer) -> None:
    for user in ("bob@example.org", "carol@example.net"):
        put_message(pop_server.maildir(user), message(9))
    pops = [stls_login(pop_server, user) for user in ("bob@example.org",
                                                      "carol@example.net")]
    assert [p.stat()[0] >= 1 for p in pops] == [True, True]
    for p in pops:
        p.quit()


def test_plain_server_allows_user_pass_without_tls(plain_server: RunningServer) -> None:
    put_message(plain_server.maildir(ALICE), message(1))
    with socket.create_connection(plain_server.address("pop3"), timeout=60):
        pass
    pop = poplib.POP3(*plain_server.address("pop3"), timeout=60)
    assert "USER" in pop.capa() and "STLS" in pop.capa()
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()
