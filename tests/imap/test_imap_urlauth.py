"""URLAUTH (RFC 4467) and URLAUTH=BINARY (RFC 5524) on the in-process session: the
URLs GENURLAUTH makes, what URLFETCH gives whom, and every way a URL must stop
working (forged or cut token, EXPIRE passed, mailbox renamed or made again, RESETKEY)
answered as NIL, never as an error that tells which check failed."""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
from pathlib import Path

import pytest
from session_harness import Session

from mailserver.imap.grammar_urlauth import MAX_URLFETCH_URLS
from mailserver.interfaces import MailboxId, Resolution
from mailserver.store.urlauthkey import KEY_FILE

M1 = b"From: a@example.org\r\nSubject: one\r\n\r\nbody one\r\n"
M2 = b"From: b@example.org\r\nSubject: two\r\n\r\nbody two\r\n"
MIME = (b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nplain part\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAGhpAA==\r\n--b--\r\n")
#: RFC 5092 / RFC 3986 3.2.1: an "@" in the user is percent-encoded.
BASE = "imap://alice%40example.org@imap.test.example"


class Directory:
    """The users the harness's portal knows (IRecipientDirectory's user_exists and
    resolve)."""

    def user_exists(self, address: str) -> bool:
        return address.lower() in ("alice@example.org", "bob@example.org")

    def resolve(self, address: str) -> Resolution:
        local, domain = address.lower().split("@")
        return Resolution((MailboxId(domain, local),))


def session_for(root: Path, user: bytes) -> Session:
    s = Session(root)
    s.factory.directory = Directory()  # type: ignore[assignment]
    s.login(user)
    return s


@pytest.fixture
def alice(tmp_path: Path) -> Session:
    s = session_for(tmp_path, b"alice@example.org")
    for message in (M1, M2):
        append(s, b"INBOX", message)
    return s


@pytest.fixture
def bob(tmp_path: Path, alice: Session) -> Session:
    return session_for(tmp_path, b"bob@example.org")


def append(s: Session, box: bytes, message: bytes) -> None:
    s.send(b"a APPEND %s {%d}" % (box, len(message)))
    assert s.lines() == [b"+ Ready for literal data"]
    s.send(message)
    assert s.lines()[-1].startswith(b"a OK [APPENDUID")


def generate(s: Session, rump: str) -> str:
    lines = s.command(b'g GENURLAUTH "%s" INTERNAL' % rump.encode())
    assert lines[-1] == b"g OK Genurlauth completed", lines
    m = re.fullmatch(rb'\* GENURLAUTH "([^"]+)"', lines[0])
    assert m is not None, lines
    return m.group(1).decode()


def fetch(s: Session, url: str) -> bytes | None:
    """The data URLFETCH gives for one URL (None for NIL)."""
    s.send(b'u URLFETCH "%s"' % url.encode())
    out = s.take()
    assert out.endswith(b"u OK Urlfetch completed\r\n"), out[-300:]
    head = b'* URLFETCH "%s" ' % url.encode()
    assert out.startswith(head), out[:300]
    rest = out[len(head):]
    if rest.startswith(b"NIL\r\n"):
        return None
    m = re.match(rb"\{(\d+)\}\r\n", rest)
    if m is not None:
        return rest[m.end():m.end() + int(m.group(1))]
    m = re.match(rb'"([^"]*)"\r\n', rest)
    assert m is not None, rest[:200]
    return m.group(1)


def test_genurlauth_gives_a_token_that_urlfetch_accepts(alice: Session) -> None:
    url = generate(alice, f"{BASE}/INBOX/;UID=2;URLAUTH=user+alice@example.org")
    rump, token = url.rsplit(":internal:", 1)
    assert rump == f"{BASE}/INBOX/;UID=2;URLAUTH=user+alice@example.org"
    assert re.fullmatch(r"[0-9a-f]{40}", token)  # RFC 4467 7: 32*HEXDIG; HMAC-SHA1
    assert fetch(alice, url) == M2
    # RFC 4467 6.3: the data as BODY.PEEK gives it: \Seen is not set.
    alice.command(b"s EXAMINE INBOX")
    assert b"* 2 FETCH (FLAGS (\\Recent))" in alice.command(b"f FETCH 2 FLAGS")


def test_section_and_partial_of_the_url(alice: Session) -> None:
    url = generate(alice, f"{BASE}/INBOX/;UID=1/;SECTION=HEADER.FIELDS%20(SUBJECT)"
                          ";URLAUTH=authuser")
    assert fetch(alice, url) == b"Subject: one\r\n\r\n"
    url = generate(alice, f"{BASE}/INBOX/;UID=1/;PARTIAL=6.3;URLAUTH=authuser")
    assert fetch(alice, url) == b"a@e"


@pytest.mark.parametrize("forge", [
    lambda u: u[:-1] + ("0" if u[-1] != "0" else "1"),      # last digit changed
    lambda u: u[:-8],                                       # truncated to 32 digits
    lambda u: u.rsplit(":", 2)[0],                          # no token at all
    lambda u: u.replace(":internal:", ":x-other:"),         # unknown mechanism
    lambda u: u.replace("UID=1", "UID=2"),                  # another message
    lambda u: u.replace("user+alice", "user+ALICE2"),       # another access identifier
    lambda u: u.replace("imap.test.example", "evil.example"),  # another server
])
def test_forged_urls_are_nil(alice: Session, forge: object) -> None:
    url = generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=user+alice@example.org")
    assert callable(forge)
    assert fetch(alice, forge(url)) is None
    assert fetch(alice, url) == M1  # and the real one still works


def test_expire(alice: Session) -> None:
    past = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5))
    future = past + datetime.timedelta(hours=1)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    old = generate(alice, f"{BASE}/INBOX/;UID=1;EXPIRE={past.strftime(fmt)};URLAUTH=authuser")
    assert fetch(alice, old) is None
    new = generate(alice, f"{BASE}/INBOX/;UID=1;EXPIRE={future.strftime(fmt)};URLAUTH=authuser")
    assert fetch(alice, new) == M1
    # The expiry is under the token: pushing it back breaks the token.
    assert fetch(alice, old.replace(past.strftime(fmt), future.strftime(fmt))) is None
    lines = alice.command(b'g GENURLAUTH "%s/INBOX/;UID=1;EXPIRE=tomorrow;URLAUTH=authuser"'
                          b" INTERNAL" % BASE.encode())
    assert lines == [b"g NO Invalid URLAUTH URL: bad EXPIRE"]


def test_renamed_mailbox_voids_its_urls(alice: Session) -> None:
    alice.command(b"c CREATE box")
    append(alice, b"box", M1)
    url = generate(alice, f"{BASE}/box/;UID=1;URLAUTH=authuser")
    assert fetch(alice, url) == M1
    assert alice.command(b"r RENAME box other") == [b"r OK Rename completed"]
    assert fetch(alice, url) is None
    # Pointing the URL at the new name does not help: the name is under the key.
    assert fetch(alice, url.replace("/box/", "/other/")) is None
    alice.command(b"r RENAME other box")
    assert fetch(alice, url) == M1  # the same mailbox again (same UIDVALIDITY)


def test_mailbox_made_again_voids_urls_without_uidvalidity(alice: Session) -> None:
    """A new UIDVALIDITY (RFC 3501 2.3.1.1) means UID 1 is another message now: the
    old URL must not fetch it, although it names no UIDVALIDITY."""
    alice.command(b"c CREATE box")
    append(alice, b"box", M1)
    url = generate(alice, f"{BASE}/box/;UID=1;URLAUTH=authuser")
    validity = re.search(rb"UIDVALIDITY (\d+)",
                         b" ".join(alice.command(b"s STATUS box (UIDVALIDITY)")))
    assert validity is not None
    alice.command(b"d DELETE box")
    alice.command(b"c CREATE box")
    append(alice, b"box", M2)
    again = re.search(rb"UIDVALIDITY (\d+)",
                      b" ".join(alice.command(b"s STATUS box (UIDVALIDITY)")))
    assert again is not None and again.group(1) != validity.group(1)
    assert fetch(alice, url) is None


def test_url_with_a_stale_uidvalidity(alice: Session) -> None:
    status = b" ".join(alice.command(b"s STATUS INBOX (UIDVALIDITY)"))
    validity = int(re.search(rb"UIDVALIDITY (\d+)", status).group(1))  # type: ignore[union-attr]
    url = generate(alice, f"{BASE}/INBOX;UIDVALIDITY={validity}/;UID=1;URLAUTH=authuser")
    assert fetch(alice, url) == M1
    lines = alice.command(b'g GENURLAUTH "%s/INBOX;UIDVALIDITY=%d/;UID=1;URLAUTH=authuser"'
                          b" INTERNAL" % (BASE.encode(), validity + 1))
    assert lines == [b"g NO Invalid URLAUTH URL: UIDVALIDITY does not match"]


def test_resetkey_of_one_mailbox_and_of_all(alice: Session) -> None:
    alice.command(b"c CREATE box")
    append(alice, b"box", M1)
    in_box = generate(alice, f"{BASE}/box/;UID=1;URLAUTH=authuser")
    in_inbox = generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=authuser")
    assert alice.command(b"k RESETKEY box") == [b"k OK [URLMECH INTERNAL] Access key reset"]
    assert fetch(alice, in_box) is None
    assert fetch(alice, in_inbox) == M1  # RFC 4467 6.1: that mailbox's keys only
    fresh = generate(alice, f"{BASE}/box/;UID=1;URLAUTH=authuser")
    assert fresh != in_box and fetch(alice, fresh) == M1
    assert alice.command(b"k RESETKEY") == [b"k OK All access keys reset"]
    assert fetch(alice, in_inbox) is None
    assert fetch(alice, fresh) is None
    assert alice.command(b"k RESETKEY nosuch") == [
        b"k NO [NONEXISTENT] Mailbox does not exist"]
    assert alice.command(b"k RESETKEY INBOX X-OTHER") == [
        b"k NO Unsupported URLAUTH mechanism"]


def test_key_file_is_private_and_no_folder(alice: Session) -> None:
    generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=authuser")
    path = alice.config.mail_dir / "example.org" / "alice" / KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", data["user"]) and data["mailboxes"] == {}
    assert KEY_FILE.encode() not in b"".join(alice.command(b'l LIST "" "*"'))


def test_access_identifiers_between_users(alice: Session, bob: Session) -> None:
    """RFC 4467 3: user+NAME only for NAME, authuser and anonymous for any logged-in
    user, submit+NAME for the submission server only (never over IMAP)."""
    for_alice = generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=user+alice@example.org")
    for_bob = generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=user+bob@example.org")
    anyone = generate(alice, f"{BASE}/INBOX/;UID=2;URLAUTH=authuser")
    anonymous = generate(alice, f"{BASE}/INBOX/;UID=2;URLAUTH=anonymous")
    submit = generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=submit+bob@example.org")
    assert fetch(bob, for_alice) is None
    assert fetch(bob, for_bob) == M1
    assert fetch(alice, for_bob) is None  # not even the owner: it is bob's to use
    assert fetch(bob, anyone) == M2
    assert fetch(bob, anonymous) == M2
    assert fetch(bob, submit) is None
    assert fetch(alice, submit) is None


def test_genurlauth_refusals(alice: Session, bob: Session) -> None:
    cases = [
        ("imap://bob%40example.org@imap.test.example/INBOX/;UID=1;URLAUTH=authuser",
         b"g NO Invalid URLAUTH URL: not your mailbox"),
        ("imap://alice%40example.org@elsewhere.example/INBOX/;UID=1;URLAUTH=authuser",
         b"g NO Invalid URLAUTH URL: another server: elsewhere.example"),
        (f"{BASE}/nosuch/;UID=1;URLAUTH=authuser",
         b"g NO Invalid URLAUTH URL: no such mailbox"),
        (f"{BASE}/INBOX/;UID=1;URLAUTH=authuser:internal:" + "0" * 40,
         b"g NO Invalid URLAUTH URL: it already has a token"),
        (f"{BASE}/INBOX/;UID=1;URLAUTH=somebody",
         b"g NO Invalid URLAUTH URL: unknown access identifier"),
        (f"{BASE}/INBOX/;UID=1", b"g NO Invalid URLAUTH URL: not a URLAUTH URL"),
    ]
    for rump, answer in cases:
        assert alice.command(b'g GENURLAUTH "%s" INTERNAL' % rump.encode()) == [answer]
    assert alice.command(b'g GENURLAUTH "%s/INBOX/;UID=1;URLAUTH=authuser" X-OTHER'
                         % BASE.encode()) == [b"g NO Unsupported URLAUTH mechanism X-OTHER"]
    # All or none: one bad URL among good ones gives no GENURLAUTH line.
    assert alice.command(b'g GENURLAUTH "%s/INBOX/;UID=1;URLAUTH=authuser" INTERNAL '
                         b'"%s/nosuch/;UID=1;URLAUTH=authuser" INTERNAL'
                         % (BASE.encode(), BASE.encode())) == [
        b"g NO Invalid URLAUTH URL: no such mailbox"]
    assert bob.command(b"g GENURLAUTH") == [b"g BAD GENURLAUTH needs a URL and a mechanism"]


def test_ten_megabyte_partial(alice: Session) -> None:
    """A 12 MiB message put in the Maildir directly (APPENDLIMIT is 100 kB here): a
    PARTIAL of 10 MiB from octet 1000 gives exactly those octets, once."""
    body = (b"x" * 1023 + b"\n") * (12 * 1024)
    inbox = alice.config.mail_dir / "example.org" / "alice"
    (inbox / "new" / "1700000000.big.host").write_bytes(b"Subject: big\n\n" + body)
    alice.command(b"s SELECT INBOX")
    url = generate(alice, f"{BASE}/INBOX/;UID=3/;PARTIAL=1000.10485760;URLAUTH=authuser")
    whole = b"Subject: big\r\n\r\n" + body.replace(b"\n", b"\r\n")
    assert fetch(alice, url) == whole[1000:1000 + 10485760]
    beyond = generate(alice, f"{BASE}/INBOX/;UID=3/;PARTIAL=4000000000.10;URLAUTH=authuser")
    assert fetch(alice, beyond) == b""


def test_thousand_urls_at_once_and_not_one_more(alice: Session) -> None:
    good = generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=authuser")
    urls = [b'"%s"' % good.encode()] + [b"junk%d" % i for i in range(MAX_URLFETCH_URLS - 1)]
    alice.send(b"u URLFETCH " + b" ".join(urls))
    lines = alice.lines()
    assert lines[0].endswith(b" {%d}" % len(M1))
    assert lines[-1] == b"u OK Urlfetch completed"
    assert lines[-1 - (MAX_URLFETCH_URLS - 1):-1] == [
        b'* URLFETCH "junk%d" NIL' % i for i in range(MAX_URLFETCH_URLS - 1)]
    assert alice.command(b"u URLFETCH " + b" ".join(urls + [b"more"])) == [
        b"u BAD [LIMIT] too many URLs (1000 at most)"]


def test_urlauth_binary(alice: Session) -> None:
    """RFC 5524: BINARY decodes the part (a NUL makes it literal8), BODYPARTSTRUCTURE
    describes it, BODY is the stored octets; BODY and BINARY together are BAD."""
    append(alice, b"INBOX", MIME)
    url = generate(alice, f"{BASE}/INBOX/;UID=3/;SECTION=2;URLAUTH=authuser")
    q = b'"%s"' % url.encode()
    alice.send(b"u URLFETCH (%s BINARY)" % q)
    assert alice.take() == (b"* URLFETCH %s (BINARY ~{4}\r\n\x00hi\x00)\r\n" % q
                            + b"u OK Urlfetch completed\r\n")
    alice.send(b"u URLFETCH (%s BODY BODYPARTSTRUCTURE)" % q)
    assert alice.take() == (
        b'* URLFETCH %s (BODYPARTSTRUCTURE ("application" "octet-stream" NIL NIL NIL '
        b'"base64" 8 NIL NIL NIL NIL) BODY "AGhpAA==")\r\n' % q
        + b"u OK Urlfetch completed\r\n")
    assert alice.command(b"u URLFETCH (%s BODY BINARY)" % q) == [
        b"u BAD BODY and BINARY exclude each other"]
    assert alice.command(b"u URLFETCH (%s FLAGS)" % q) == [b"u BAD bad URLFETCH option FLAGS"]
    # A URL that does not verify is NIL in the extended form too.
    assert alice.command(b'u URLFETCH ("%s0" BINARY)' % url.encode()) == [
        b'* URLFETCH "%s0" NIL' % url.encode(), b"u OK Urlfetch completed"]


def test_broken_key_file(alice: Session) -> None:
    """A key file that is not ours to read: URLs are NIL, GENURLAUTH is NO [SERVERBUG]
    (not "no such mailbox"), and RESETKEY writes a new one."""
    url = generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=authuser")
    path = alice.config.mail_dir / "example.org" / "alice" / KEY_FILE
    path.write_text("not json")
    assert fetch(alice, url) is None
    assert alice.command(b'g GENURLAUTH "%s/INBOX/;UID=1;URLAUTH=authuser" INTERNAL'
                         % BASE.encode()) == [
        b"g NO [SERVERBUG] Unreadable URLAUTH key file; RESETKEY makes a new one"]
    assert alice.command(b"k RESETKEY") == [b"k OK All access keys reset"]
    assert fetch(alice, url) is None
    assert fetch(alice, generate(alice, f"{BASE}/INBOX/;UID=1;URLAUTH=authuser")) == M1
