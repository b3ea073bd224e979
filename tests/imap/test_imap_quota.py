"""QUOTA (RFC 9208) against the real server, set with `mailserver user quota`: what
GETQUOTA/GETQUOTAROOT report, APPEND and COPY refused with NO [OVERQUOTA] and nothing
written, SMTP's 452 4.2.2 at RCPT and 552 5.2.2 at DATA, and the usage count following
delivery, APPEND, COPY, EXPUNGE, POP3's DELE + QUIT and a folder's DELETE."""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from imap_helpers import LISTEN, PASSWORD, Line, connect, deliver
from server_harness import RunningServer, admin, make_server

from mailserver.interfaces import QuotaUsage
from mailserver.store import quota

USERS = ("alice@example.org", "dave@example.org", "erin@example.org", "fred@example.org",
         "gina@example.org", "hank@example.org", "ivan@example.org")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = make_server(tmp_path_factory.mktemp("quota"), start=False,
                          listen={**LISTEN, "pop3": "tcp:0:interface=127.0.0.1"},
                          auth={"allow_plaintext_without_tls": True},
                          abuse={"login_failures": 1000})
    for user in USERS:
        running.add_user(user, PASSWORD)
    running.start()
    yield running
    running.stop()


def set_quota(server: RunningServer, user: str, *args: str) -> str:
    return admin(server.config_path, "user", "quota", user, *args).stdout


def message(size: int, subject: str = "q") -> bytes:
    """A message of exactly `size` octets with CRLF line ends."""
    head = f"From: a@example.com\r\nSubject: {subject}\r\n\r\n".encode()
    assert size >= len(head) + 2
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


def quota_of(client: imaplib.IMAP4) -> bytes:
    typ, data = client._simple_command("GETQUOTA", '""')
    assert typ == "OK", data
    return client._untagged_response(typ, data, "QUOTA")[1][0]


def files(server: RunningServer, user: str, folder: str = "") -> int:
    root = server.maildir(user, folder)
    return sum(1 for sub in ("new", "cur") for _ in (root / sub).iterdir())


def test_quota_command_sets_dovecot_rules_and_reports(server: RunningServer) -> None:
    out = set_quota(server, "dave@example.org", "--storage", "10k", "--messages", "3")
    assert "user quota: storage quota of dave@example.org set\n" in out
    assert out.endswith("  storage:              0b of 10k\n"
                        "  messages stored:      0 of 3\n")
    users = (server.data_dir / "users").read_text()
    [line] = [line for line in users.splitlines() if line.startswith("dave@")]
    assert line.endswith(":::::userdb_quota_rule=*:storage=10k "
                         "userdb_quota_rule2=*:messages=3")
    # The password still works, and the limits are in force at once.
    client = connect(server, "dave@example.org")
    assert quota_of(client) == b'"" (STORAGE 0 10 MESSAGE 0 3)'
    typ, data = client._simple_command("GETQUOTAROOT", "INBOX")
    assert typ == "OK"
    assert client._untagged_response(typ, data, "QUOTAROOT")[1] == [b'INBOX ""']
    client.logout()
    # 0 removes a limit; the other stays.
    set_quota(server, "dave@example.org", "--messages", "0")
    client = connect(server, "dave@example.org")
    assert quota_of(client) == b'"" (STORAGE 0 10)'
    client.logout()
    bad = admin(server.config_path, "user", "quota", "dave@example.org", "--storage", "lots",
                check=False)
    assert bad.returncode == 1
    assert bad.stderr == ("user quota: --storage: not a size: 'lots' (a number with b, k, "
                          "M, G or T)\n")


def test_capabilities_and_refusals(server: RunningServer) -> None:
    line = Line(server)
    assert b" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE " in line.greeting
    assert line.command(b"a", b'LOGIN erin@example.org "' + PASSWORD.encode() + b'"'
                        )[-1].startswith(b"a OK")
    # Another user's root, by any name: it does not exist for this user.
    assert line.command(b"b", b'GETQUOTA "alice@example.org"') == [
        b"b NO [NONEXISTENT] No such quota root"]
    assert line.command(b"c", b"GETQUOTA user.alice") == [b"c NO [NONEXISTENT] No such quota root"]
    # SETQUOTA is the operator's.
    assert line.command(b"d", b'SETQUOTA "" (STORAGE 1000000)') == [
        b"d NO [NOPERM] Quota limits are set by the administrator"]
    assert line.command(b"e", b"GETQUOTAROOT Nonexistent") == [
        b"e NO [NONEXISTENT] Mailbox does not exist"]
    assert line.command(b"f", b'SETQUOTA "" (STORAGE x)')[0].startswith(b"f BAD")
    assert line.command(b"g", b'SETQUOTA "" (STORAGE 99999999999999999999)')[0] == (
        b"g BAD number out of range")
    # No limits: the root exists, with no resources.
    assert line.command(b"h", b'GETQUOTA ""') == [b'* QUOTA "" ()', b"h OK Getquota completed"]
    assert line.command(b"i", b'CREATE "My Stuff"')[-1].startswith(b"i OK")
    assert line.command(b"j", b'GETQUOTAROOT "my stuff"') == [
        b"j NO [NONEXISTENT] Mailbox does not exist"]
    assert line.command(b"k", b'GETQUOTAROOT "My Stuff"') == [
        b'* QUOTAROOT "My Stuff" ""', b'* QUOTA "" ()', b"k OK Getquotaroot completed"]
    line.close()


def test_append_exactly_to_the_limit_then_refused(server: RunningServer) -> None:
    user = "fred@example.org"
    set_quota(server, user, "--storage", "4k")
    client = connect(server, user)
    assert client.append("INBOX", None, None, message(3000))[0] == "OK"
    # 1096 octets left: a message of exactly that size fills it and is accepted.
    assert client.append("INBOX", None, None, message(4096 - 3000))[0] == "OK"
    assert quota_of(client) == b'"" (STORAGE 4 4)'
    assert client.append("INBOX", None, None, message(100)) == (
        "NO", [b"[OVERQUOTA] Quota exceeded (STORAGE)"])
    assert files(server, user) == 2  # nothing written
    # COPY that would not fit: refused whole, nothing linked.
    client.create("Archive")
    client.select("INBOX")
    typ, data = client.copy("1:2", "Archive")
    assert typ == "NO" and data == [b"[OVERQUOTA] Quota exceeded (STORAGE)"]
    assert files(server, user, "Archive") == 0
    # MOVE stays within the user's one quota root: allowed when full.
    assert client._simple_command("MOVE", "1", "Archive")[0] == "OK"
    assert quota_of(client) == b'"" (STORAGE 4 4)'
    # EXPUNGE frees room, and the freed room takes a message again.
    client.store("1", "+FLAGS", "(\\Deleted)")
    client.expunge()
    assert quota_of(client) == b'"" (STORAGE 3 4)'  # 3000 octets: 2.93 KiB, rounded up
    assert client.append("INBOX", None, None, message(1000))[0] == "OK"
    client.logout()


def test_append_larger_than_what_is_left(server: RunningServer) -> None:
    user = "gina@example.org"
    set_quota(server, user, "--storage", "10k", "--messages", "2")
    client = connect(server, user)
    assert client.append("INBOX", None, None, message(2000))[0] == "OK"
    assert client.append("INBOX", None, None, message(9000)) == (
        "NO", [b"[OVERQUOTA] Quota exceeded (STORAGE)"])
    assert client.append("INBOX", None, None, message(2000))[0] == "OK"
    assert client.append("INBOX", None, None, message(50)) == (
        "NO", [b"[OVERQUOTA] Quota exceeded (MESSAGE)"])
    assert files(server, user) == 2
    client.logout()


def smtp_result(server: RunningServer, to: str, body: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as smtp:
        smtp.ehlo()
        smtp.mail("bob@example.com")
        code, text = smtp.rcpt(to)
        if code != 250:
            return code, text
        return smtp.data(body)


def test_smtp_452_at_rcpt_when_full_and_552_at_data_when_it_would_not_fit(
        server: RunningServer) -> None:
    user = "hank@example.org"
    set_quota(server, user, "--storage", "8k")
    assert smtp_result(server, user, message(3000))[0] == 250
    # Does not fit (3000 + ~6000 > 8192): refused for good after DATA, nothing stored.
    code, text = smtp_result(server, user, message(6000))
    assert (code, text) == (552, b"5.2.2 Error: mailbox full; message too large for the "
                                 b"recipient's quota")
    assert files(server, user) == 1
    # 3000 octets and the headers the delivery adds, in KiB rounded up.
    used = sum(int(re.search(r",W=(\d+)", p.name).group(1))  # type: ignore[union-attr]
               for p in server.visible_files(user))
    assert 3000 < used < 4096
    client = connect(server, user)
    assert quota_of(client) == b'"" (STORAGE 4 8)'
    # Fill it up with APPEND to exactly the limit: now RCPT itself gets 452 4.2.2.
    assert client.append("INBOX", None, None, message(8192 - used))[0] == "OK"
    client.logout()
    assert smtp_result(server, user, message(100)) == (452, b"4.2.2 Error: mailbox full")
    # POP3 DELE + QUIT gives room back, and mail is taken again.
    pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=60)
    pop.user(user)
    pop.pass_(PASSWORD)
    pop.dele(1)
    pop.quit()
    assert smtp_result(server, user, message(100))[0] == 250


def test_usage_count_is_kept_and_rebuilt_when_missing(server: RunningServer) -> None:
    user = "alice@example.org"
    for n in range(3):
        deliver(server, user, subject=f"count {n}")
    root = server.maildir(user)
    sizes = [int(re.search(r",W=(\d+)", p.name).group(1))  # type: ignore[union-attr]
             for p in server.visible_files(user)]
    assert quota.peek(root) == QuotaUsage(sum(sizes), len(sizes))
    (root / "mailserver-quota").unlink()
    set_quota(server, user, "--messages", "100")
    client = connect(server, user)
    assert quota_of(client) == f'"" (MESSAGE {len(sizes)} 100)'.encode()
    assert quota.peek(root) == QuotaUsage(sum(sizes), len(sizes))  # scanned, written
    # DELETE of a folder takes its messages off.
    client.create("Old")
    client.select("INBOX")
    client.copy("1:*", "Old")
    assert quota_of(client) == f'"" (MESSAGE {2 * len(sizes)} 100)'.encode()
    client.delete("Old")
    assert quota_of(client) == f'"" (MESSAGE {len(sizes)} 100)'.encode()
    client.logout()


def test_a_message_to_several_users_one_full(server: RunningServer, tmp_path: Path) -> None:
    """One DATA, one answer: if it fits every mailbox but one, it is refused for all
    (nothing lost: the sender bounces or retries with the whole list)."""
    admin(server.config_path, "alias", "add", "team@example.org",
          "alice@example.org,gina@example.org")
    before = files(server, "alice@example.org")
    # gina holds 2 messages of at most 2: full, so the alias's RCPT is refused.
    assert smtp_result(server, "team@example.org", message(500)) == (
        452, b"4.2.2 Error: mailbox full")
    assert files(server, "alice@example.org") == before


def test_multiappend_over_quota_stores_none(server: RunningServer) -> None:
    """MULTIAPPEND (RFC 3502: all or none) against the quota (RFC 9208 4.3): three
    messages where two fit are refused whole, NO [OVERQUOTA], nothing written; two fit
    and are counted."""
    user = "ivan@example.org"
    set_quota(server, user, "--messages", "2")
    line = Line(server)
    assert line.command(b"a", b'LOGIN ivan@example.org "' + PASSWORD.encode() + b'"'
                        )[-1].startswith(b"a OK")
    one = message(200)
    literal = b"{%d+}\r\n%s" % (len(one), one)
    three = line.command(b"b", b"APPEND INBOX " + b" ".join([literal] * 3))
    assert three[-1].startswith(b"b NO [OVERQUOTA]"), three
    assert files(server, user) == 0
    two = line.command(b"c", b"APPEND INBOX " + b" ".join([literal] * 2))
    assert two[-1].startswith(b"c OK [APPENDUID "), two
    assert files(server, user) == 2
    assert line.command(b"d", b'GETQUOTA ""')[0] == b'* QUOTA "" (MESSAGE 2 2)'
    line.close()
