"""Reading and changing mail over the JSON API, on the real server, seen from IMAP and
POP3: /api/v1/folders, .../messages, .../messages/{uid} (raw, parsed, attachments),
flags, move, delete, and the hostile forms of each."""

from __future__ import annotations

import base64
import imaplib
import json
import poplib
import smtplib
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
sys.path.insert(0, str(Path(__file__).parent))
from http_helpers import ALL_LISTENERS, request  # noqa: E402
from openapi_check import check_request, check_response  # noqa: E402
from server_harness import RunningServer, make_server  # noqa: E402

ALICE = "alice@example.org"
BOB = "bob@example.org"
PASSWORD = "wonderland"
PDF = bytes(range(256)) * 40  # binary: every octet value, 10 KiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root: Path = tmp_path_factory.mktemp("apimailbox")
    # A few hundred requests a minute from one password: above no rate limit here
    # (api.requests_per_minute has tests of its own).
    running = make_server(root, start=False, listen=ALL_LISTENERS,
                          auth={"allow_plaintext_without_tls": True},
                          abuse={"login_failures": 1000},
                          api={"requests_per_minute": 100000})
    running.add_user(ALICE, PASSWORD)
    running.add_user(BOB, PASSWORD)
    running.start()
    yield running
    running.stop()


def basic(user: str = ALICE) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def api(server: RunningServer, method: str, path: str, body: Any = None,
        user: str = ALICE, headers: dict[str, str] | None = None,
        ) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    sent = {**basic(user), **({} if data is None else {"Content-Type": "application/json"}),
            **(headers or {})}
    return request(server, method, "/api/v1/" + path, secure=True, body=data, headers=sent)


def get_json(server: RunningServer, path: str, user: str = ALICE) -> Any:
    status, headers, body = api(server, "GET", path, user=user)
    assert (status, headers["content-type"]) == (200, "application/json"), body
    return json.loads(body)


def deliver(server: RunningServer, message: bytes, to: str = ALICE) -> None:
    options = ["BODY=8BITMIME"] if not message.isascii() else []
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as smtp:
        smtp.sendmail("carol@example.com", [to], message, mail_options=options)


def plain(subject: str) -> bytes:
    return (f"From: Carol <carol@example.com>\r\nTo: Alice <{ALICE}>\r\n"
            f"Cc: dave@example.com, \"Eve, E.\" <eve@example.com>\r\n"
            f"Subject: {subject}\r\nDate: Mon, 07 Dec 2026 10:00:00 +0100\r\n"
            f"Message-ID: <{subject}@test>\r\nIn-Reply-To: <parent@test>\r\n\r\n"
            f"Hello {subject}.\r\n").encode()


def fresh(server: RunningServer, message: bytes | None = None) -> tuple[int, str]:
    """Deliver a new message to alice's INBOX; its (uid, subject) as the API lists it."""
    subject = "m-" + uuid.uuid4().hex[:10]
    deliver(server, message.replace(b"SUBJECT", subject.encode()) if message
            else plain(subject))
    for _ in range(50):
        listed = get_json(server, "folders/INBOX/messages?limit=1000")
        found = [m["uid"] for m in listed["messages"]
                 if (m["subject"] or "").startswith(subject)]
        if found:
            return found[0], subject
        time.sleep(0.1)
    raise AssertionError(f"{subject} never arrived")


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def maildir_file(server: RunningServer, subject: str, folder: str = "") -> Path:
    root = server.maildir(ALICE, folder)
    found = [p for sub in ("new", "cur") for p in (root / sub).iterdir()
             if f"Subject: {subject}".encode() in p.read_bytes()]
    assert len(found) == 1, found
    return found[0]


def imap(server: RunningServer, folder: str = "INBOX") -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=60)
    client.login(ALICE, PASSWORD)
    assert client.select(folder)[0] == "OK"
    return client


def untagged_after_noop(client: imaplib.IMAP4, wanted: bytes) -> list[bytes]:
    """The untagged responses NOOPs bring, until one holds `wanted` (the change reaches
    the session through the store's watch, soon but not at once)."""
    seen: list[bytes] = []
    for _ in range(50):
        client.noop()
        for name in ("FETCH", "EXPUNGE", "EXISTS"):
            for item in client.untagged_responses.pop(name, []):
                seen.append(name.encode() + b" " + (item if isinstance(item, bytes)
                                                    else str(item).encode()))
        if any(wanted in line for line in seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no {wanted!r} in {seen}")


# --------------------------------------------------------------------------- reading


def test_folders_list_inbox_and_others_with_counts(server: RunningServer) -> None:
    client = imap(server)
    client.create("Archive")
    client.create("Entw&APw-rfe")
    client.logout()
    fresh(server)
    answer = get_json(server, "folders")
    check_response("get", "/folders", 200, answer)
    by_name = {f["name"]: f for f in answer["folders"]}
    assert answer["folders"][0]["name"] == "INBOX"
    inbox = by_name["INBOX"]
    status = imap(server)
    typ, data = status.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)")
    status.logout()
    text = data[0].decode()
    assert f"MESSAGES {inbox['messages']}" in text and f"UNSEEN {inbox['unseen']}" in text
    assert f"UIDNEXT {inbox['uidnext']}" in text
    assert f"UIDVALIDITY {inbox['uidvalidity']}" in text
    assert inbox["messages"] >= 1
    assert by_name["Entw&APw-rfe"]["display_name"] == "Entwürfe"
    assert by_name["Archive"]["messages"] == 0


def test_message_list_has_envelope_flags_size_and_pages(server: RunningServer) -> None:
    uid, subject = fresh(server)
    answer = get_json(server, f"folders/INBOX/messages?since_uid={uid - 1}")
    check_response("get", "/folders/{folder}/messages", 200, answer)
    message = answer["messages"][0]
    assert message["uid"] == uid
    assert message["subject"] == subject
    assert message["from"] == [{"name": "Carol", "address": "carol@example.com"}]
    assert message["to"] == [{"name": "Alice", "address": ALICE}]
    assert message["cc"] == [{"name": "", "address": "dave@example.com"},
                             {"name": "Eve, E.", "address": "eve@example.com"}]
    assert message["date"] == "2026-12-07T10:00:00+01:00"
    assert message["message_id"] == f"<{subject}@test>"
    assert message["in_reply_to"] == "<parent@test>"
    assert message["flags"] == []
    assert message["size"] == len(crlf(maildir_file(server, subject).read_bytes()))
    assert message["internal_date"].endswith("Z")
    # Paging: one at a time, following the next link to the end.
    first, second = fresh(server)[0], fresh(server)[0]
    page = get_json(server, f"folders/INBOX/messages?since_uid={uid}&limit=1")
    assert [m["uid"] for m in page["messages"]] == [first]
    assert page["next_since_uid"] == first
    assert page["next"] == f"/api/v1/folders/INBOX/messages?since_uid={first}&limit=1"
    page = get_json(server, page["next"].removeprefix("/api/v1/"))
    assert [m["uid"] for m in page["messages"]] == [second]
    assert (page["next_since_uid"], page["next"]) == (None, None)  # the last page


def test_message_list_since_a_date(server: RunningServer) -> None:
    uid, _ = fresh(server)
    future = get_json(server, "folders/INBOX/messages?since=2099-01-01T00:00:00Z")
    assert future["messages"] == []
    past = get_json(server, f"folders/INBOX/messages?since_uid={uid - 1}"
                            "&since=2000-01-01T00:00:00%2B02:00")
    assert [m["uid"] for m in past["messages"]] == [uid]


def test_message_list_by_maildir_base_name(server: RunningServer) -> None:
    """A webhook's "received" event names a message by folder and base name."""
    uid, subject = fresh(server)
    base = maildir_file(server, subject).name.split(":2,")[0]
    answer = get_json(server, f"folders/INBOX/messages?name={quote(base)}")
    check_response("get", "/folders/{folder}/messages", 200, answer)
    assert [(m["uid"], m["subject"]) for m in answer["messages"]] == [(uid, subject)]
    # The name as it is now in cur/ (flags after ":2,") finds it too.
    api(server, "PATCH", f"folders/INBOX/messages/{uid}", {"add_flags": ["\\Seen"]})
    now = maildir_file(server, subject).name
    assert ":2,S" in now
    answer = get_json(server, f"folders/INBOX/messages?name={quote(now)}")
    assert [m["uid"] for m in answer["messages"]] == [uid]
    missing = get_json(server, "folders/INBOX/messages?name=1234.M5P6Q7.nowhere")
    assert missing["messages"] == []
    assert get_json(server, f"folders/Trash/messages?name={quote(base)}")["messages"] == []


def test_raw_message_is_the_stored_bytes_with_crlf(server: RunningServer) -> None:
    uid, subject = fresh(server)
    stored = crlf(maildir_file(server, subject).read_bytes())
    for path, headers in ((f"folders/INBOX/messages/{uid}?format=raw", {}),
                          (f"folders/INBOX/messages/{uid}", {"Accept": "message/rfc822"})):
        status, answer_headers, body = api(server, "GET", path, headers=headers)
        assert (status, answer_headers["content-type"]) == (200, "message/rfc822")
        assert body == stored
        check_response("get", "/folders/{folder}/messages/{uid}", 200, None,
                       media_type="message/rfc822")
    # IMAP's BODY[] gives the same octets.
    client = imap(server)
    typ, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
    client.logout()
    assert data[0][1] == stored


MULTIPART = (
    b"From: =?UTF-8?B?SsO8cmdlbg==?= <juergen@example.com>\r\nTo: alice@example.org\r\n"
    b"Subject: SUBJECT =?ISO-8859-1?Q?caf=E9?=\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
    b"--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
    b"--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n"
    b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes("<p>Grüße</p>".encode()).replace(b"\n", b"\r\n")
    + b"--inner--\r\n"
    b"--outer\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(PDF).replace(b"\n", b"\r\n")
    # A name with path components and a CR LF in it (RFC 2231 lets one be encoded).
    + b"--outer\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; "
    b"filename*=UTF-8''..%2F..%2Fetc%2Fpass%0D%0Awd\r\n\r\nnot a path\r\n"
    # A type no HTTP header may carry (8-bit octets).
    b"--outer\r\nContent-Type: text/pl\xc3\xa9in; name=x.txt\r\n\r\nodd\r\n--outer--\r\n")


def test_parsed_message_and_attachment_download(server: RunningServer) -> None:
    uid, subject = fresh(server, MULTIPART)
    answer = get_json(server, f"folders/INBOX/messages/{uid}")
    check_response("get", "/folders/{folder}/messages/{uid}", 200, answer)
    assert answer["subject"] == f"{subject} café"
    assert answer["from"] == [{"name": "Jürgen", "address": "juergen@example.com"}]
    assert {"name": "Subject", "value": f"{subject} café"} in answer["headers"]
    # The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1).
    assert answer["text"] == ["Grüße"]
    assert answer["html"] == ["<p>Grüße</p>"]
    pdf, evil, odd = answer["attachments"]
    assert odd["content_type"] == "text/pl\ufffd\ufffdin"
    assert pdf == {"number": 1, "filename": "Rechnung März.pdf",
                   "content_type": "application/pdf", "size": len(PDF),
                   "disposition": "attachment", "content_id": None,
                   "download": f"/api/v1/folders/INBOX/messages/{uid}/attachments/1"}
    assert evil["filename"] == "passwd"
    status, headers, body = api(server, "GET", pdf["download"].removeprefix("/api/v1/"))
    assert (status, headers["content-type"]) == (200, "application/pdf")
    assert body == PDF
    assert headers["content-disposition"] == \
        "attachment; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "sandbox; default-src 'none'"
    status, headers, body = api(server, "GET", f"folders/INBOX/messages/{uid}/attachments/2")
    assert (status, body) == (200, b"not a path")
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''passwd"
    status, headers, body = api(server, "GET", f"folders/INBOX/messages/{uid}/attachments/3")
    assert (status, headers["content-type"], body) == (200, "application/octet-stream", b"odd")
    status, _, body = api(server, "GET", f"folders/INBOX/messages/{uid}/attachments/4")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    # Reading is not a change: IMAP still sees the message unread (BODY.PEEK, not BODY).
    assert get_json(server, f"folders/INBOX/messages/{uid}")["flags"] == []


# --------------------------------------------------------------------------- changes


def test_flags_seen_by_an_open_imap_session_and_after_reconnect(
        server: RunningServer) -> None:
    uid, _ = fresh(server)
    client = imap(server)
    body = {"add_flags": ["\\seen", "$Important"]}
    check_request("patch", "/folders/{folder}/messages/{uid}", body)
    status, _, answer = api(server, "PATCH", f"folders/INBOX/messages/{uid}", body)
    assert status == 200, answer
    assert json.loads(answer) == {"uid": uid, "flags": ["$Important", "\\Seen"]}
    check_response("patch", "/folders/{folder}/messages/{uid}", 200, json.loads(answer))
    seen = untagged_after_noop(client, b"$Important")
    assert any(b"UID %d" % uid in line and b"\\Seen" in line for line in seen), seen
    client.logout()
    client = imap(server)
    typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
    assert b"\\Seen" in data[0] and b"$Important" in data[0]
    # Set replaces all; remove takes one away (POST does what PATCH does).
    status, _, answer = api(server, "POST", f"folders/INBOX/messages/{uid}",
                            {"flags": ["\\Flagged"]})
    assert json.loads(answer) == {"uid": uid, "flags": ["\\Flagged"]}
    status, _, answer = api(server, "PATCH", f"folders/INBOX/messages/{uid}",
                            {"remove_flags": ["\\Flagged"]})
    assert json.loads(answer) == {"uid": uid, "flags": []}
    typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
    client.logout()
    assert b"FLAGS ()" in data[0]


def test_an_idling_imap_session_is_told_of_the_flag_change(server: RunningServer) -> None:
    """RFC 2177: a session in IDLE gets the FETCH FLAGS of a change made over the API
    without asking, as it would for another IMAP client's STORE."""
    uid, _ = fresh(server)
    sock = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=60)
    lines = sock.makefile("rb")
    lines.readline()

    def until(tag: bytes) -> list[bytes]:
        got = [lines.readline()]
        while not got[-1].startswith(tag):
            got.append(lines.readline())
        return got

    sock.sendall(f"a LOGIN {ALICE} {PASSWORD}\r\nb SELECT INBOX\r\n"
                 f"s SEARCH UID {uid}\r\n".encode())
    seq = int(next(x for x in until(b"s OK") if x.startswith(b"* SEARCH")).split()[2])
    sock.sendall(b"c IDLE\r\n")
    until(b"+")
    status, _, _ = api(server, "PATCH", f"folders/INBOX/messages/{uid}",
                       {"add_flags": ["\\Flagged"]})
    assert status == 200
    # \Recent: this session's SELECT was the first to see the message (RFC 3501 2.3.2).
    assert lines.readline() == b"* %d FETCH (UID %d FLAGS (\\Flagged \\Recent))\r\n" % (
        seq, uid)
    sock.sendall(b"DONE\r\n")
    assert lines.readline().startswith(b"c OK")
    sock.close()


def test_move_is_an_expunge_for_imap_and_a_new_uid_in_the_target(
        server: RunningServer) -> None:
    uid, subject = fresh(server)
    client = imap(server)
    client.create("Moved")
    body = {"to": "Moved"}
    check_request("post", "/folders/{folder}/messages/{uid}/move", body)
    status, _, answer = api(server, "POST", f"folders/INBOX/messages/{uid}/move", body)
    assert status == 200, answer
    moved = json.loads(answer)
    check_response("post", "/folders/{folder}/messages/{uid}/move", 200, moved)
    assert moved["folder"] == "Moved"
    untagged_after_noop(client, b"EXPUNGE")
    client.logout()
    assert maildir_file(server, subject, "Moved")
    listed = get_json(server, "folders/Moved/messages")
    assert [(m["uid"], m["subject"]) for m in listed["messages"]] == \
        [(moved["uid"], subject)]
    assert listed["uidvalidity"] == moved["uidvalidity"]
    status, _, _ = api(server, "GET", f"folders/INBOX/messages/{uid}")
    assert status == 404
    status, _, answer = api(server, "POST", f"folders/Moved/messages/{moved['uid']}/move",
                            {"to": "Nowhere"})
    assert status == 404 and json.loads(answer)["error"]["code"] == "not_found"


def test_delete_expunges_only_that_message(server: RunningServer) -> None:
    other, _ = fresh(server)
    uid, subject = fresh(server)
    client = imap(server)
    client.uid("STORE", str(other), "+FLAGS", "(\\Deleted)")
    path = maildir_file(server, subject)
    status, _, answer = api(server, "DELETE", f"folders/INBOX/messages/{uid}")
    assert (status, json.loads(answer)) == (200, {"uid": uid, "deleted": True})
    check_response("delete", "/folders/{folder}/messages/{uid}", 200, json.loads(answer))
    assert not path.exists()
    untagged_after_noop(client, b"EXPUNGE")
    typ, data = client.uid("SEARCH", "DELETED")
    client.logout()
    assert str(other).encode() in data[0].split()  # still there, still \Deleted
    status, _, answer = api(server, "DELETE", f"folders/INBOX/messages/{uid}")
    assert status == 404


def test_pop3_sees_what_the_api_left(server: RunningServer) -> None:
    uid, subject = fresh(server)
    api(server, "PATCH", f"folders/INBOX/messages/{uid}", {"add_flags": ["\\Seen"]})
    listed = get_json(server, "folders/INBOX/messages?limit=1000")["messages"]
    pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=60)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    count, _ = pop.stat()
    assert count == len(listed)
    # The flag rename did not change the UIDL (the base name, before ",S=" and ":2,").
    base = maildir_file(server, subject).name.split(":")[0].split(",")[0]
    assert any(line.split()[1] == base.encode() for line in pop.uidl()[1])
    pop.quit()


def test_a_pop3_session_open_during_an_api_delete(server: RunningServer) -> None:
    """POP3's snapshot was taken at login (RFC 1939 8); a message the API expunges
    meanwhile is answered -ERR, the others as before, and QUIT still updates."""
    uid, subject = fresh(server)
    pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=60)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    base = maildir_file(server, subject).name.split(":")[0].split(",")[0]
    number = next(int(line.split()[0]) for line in pop.uidl()[1]
                  if line.split()[1] == base.encode())
    status, _, _ = api(server, "DELETE", f"folders/INBOX/messages/{uid}")
    assert status == 200
    with pytest.raises(poplib.error_proto) as refused:
        pop.retr(number)
    assert refused.value.args[0] == \
        b"-ERR Message no longer exists (expunged by another session)."
    other = 1 if number != 1 else 2
    assert pop.retr(other)[0].startswith(b"+OK")
    assert pop.quit().startswith(b"+OK")


def test_curl_lists_and_reads(server: RunningServer) -> None:
    uid, subject = fresh(server)
    url = f"https://127.0.0.1:{server.ports['https']}/api/v1"
    out = subprocess.run(["curl", "-sk", "-u", f"{ALICE}:{PASSWORD}", f"{url}/folders"],
                         capture_output=True, check=True, timeout=20).stdout
    assert json.loads(out)["folders"][0]["name"] == "INBOX"
    out = subprocess.run(["curl", "-sk", "-u", f"{ALICE}:{PASSWORD}",
                          "-H", "Accept: message/rfc822",
                          f"{url}/folders/INBOX/messages/{uid}"],
                         capture_output=True, check=True, timeout=20).stdout
    assert out == crlf(maildir_file(server, subject).read_bytes())


# --------------------------------------------------------------------------- hostile


def template_of(path: str) -> str:
    """The OpenAPI path an API path falls under."""
    parts = path.split("?")[0].split("/")
    names = ["folders", "{folder}", "messages", "{uid}", "attachments", "{n}"]
    if parts[-1] == "move":
        return "/" + "/".join(names[:4]) + "/move"
    return "/" + "/".join(names[:len(parts)])


def error_of(server: RunningServer, method: str, path: str, body: Any = None,
             user: str = ALICE) -> tuple[int, str]:
    status, headers, answer = api(server, method, path, body, user=user)
    assert headers["content-type"] == "application/json", (path, answer)
    error = json.loads(answer)["error"]
    assert error["status"] == status
    check_response(method, template_of(path), status, json.loads(answer))
    return status, error["code"]


@pytest.mark.parametrize("folder,expected", [
    ("Nowhere", (404, "not_found")),
    ("..%2F..%2Fbob", (400, "refused")),
    ("%2e%2e", (400, "refused")),
    ("..", (400, "refused")),
    ("INBOX%00x", (400, "refused")),
    ("a" * 2000, (400, "bad_folder_name")),
    ("a" * 300, (400, "refused")),
    ("%2Fetc", (400, "refused")),
    (".cur", (400, "refused")),
])
def test_bad_folder_names(server: RunningServer, folder: str,
                          expected: tuple[int, str]) -> None:
    assert error_of(server, "GET", f"folders/{folder}/messages") == expected
    assert error_of(server, "GET", f"folders/{folder}/messages/1") == expected


@pytest.mark.parametrize("uid", ["0", "-1", str(2**64), "4294967296", "1:*", "1,2",
                                 "01", "abc", "%00"])
def test_bad_uids(server: RunningServer, uid: str) -> None:
    assert error_of(server, "GET", f"folders/INBOX/messages/{uid}") == (400, "bad_uid")
    assert error_of(server, "DELETE", f"folders/INBOX/messages/{uid}") == (400, "bad_uid")


def test_unknown_uid_is_404(server: RunningServer) -> None:
    assert error_of(server, "GET", "folders/INBOX/messages/4294967295") == (404, "not_found")
    assert error_of(server, "PATCH", "folders/INBOX/messages/4294967295",
                    {"add_flags": ["\\Seen"]}) == (404, "not_found")


@pytest.mark.parametrize("query", ["since_uid=-1", "since_uid=x", "limit=0", "limit=1001",
                                   "limit=" + "9" * 5000, "since_uid=%C2%B2", "since_uid=",
                                   "since=yesterday", "since=2026-12-07T10:00:00",
                                   "name=a/b", "name=a%20b", "name=%00", "name=,S=1", "name="])
def test_bad_list_parameters(server: RunningServer, query: str) -> None:
    assert error_of(server, "GET", f"folders/INBOX/messages?{query}")[0] == 400


@pytest.mark.parametrize("body,code", [
    ({"add_flags": ["\\Recent"]}, "bad_flag"),
    ({"add_flags": ["\\Junk"]}, "bad_flag"),
    ({"add_flags": ["two words"]}, "bad_flag"),
    ({"add_flags": ["a(b"]}, "bad_flag"),
    ({"add_flags": ["x" * 65]}, "bad_flag"),
    ({"add_flags": ["caf\u00e9"]}, "bad_flag"),
    ({"add_flags": [""]}, "bad_flag"),
    ({"add_flags": [1]}, "bad_request"),
    ({"add_flags": "\\Seen"}, "bad_request"),
    ({"add_flags": [f"k{i}" for i in range(51)]}, "bad_request"),
    ({"flags": [], "add_flags": []}, "bad_request"),
    ({"tags": []}, "bad_request"),
    ({}, "bad_request"),
    ([], "bad_request"),
    ("\\Seen", "bad_request"),
    (b"{not json", "bad_json"),
    (b"[" * 100000, "bad_json"),
])
def test_bad_flag_changes(server: RunningServer, body: Any, code: str) -> None:
    uid, _ = fresh(server) if code == "bad_flag" and body == {"add_flags": ["\\Recent"]} \
        else (1, "")
    assert error_of(server, "PATCH", f"folders/INBOX/messages/{uid}", body) == (400, code)


@pytest.mark.parametrize("body", [{}, {"to": 1}, {"to": "A", "x": 1}, ["Archive"],
                                  {"to": ""}])
def test_bad_move_bodies(server: RunningServer, body: Any) -> None:
    assert error_of(server, "POST", "folders/INBOX/messages/1/move", body)[0] == 400


def test_a_folders_keyword_letters_run_out(server: RunningServer) -> None:
    """Maildir keeps keywords as 26 letters a folder: the 27th is refused, nothing set."""
    uid, _ = fresh(server)
    client = imap(server)
    client.create("Keywords")
    client.logout()
    status, _, answer = api(server, "POST", f"folders/INBOX/messages/{uid}/move",
                            {"to": "Keywords"})
    moved = json.loads(answer)["uid"]
    path = f"folders/Keywords/messages/{moved}"
    status, _, answer = api(server, "PATCH", path, {"add_flags": [f"k{i}" for i in range(27)]})
    assert (status, json.loads(answer)["error"]) == (400, {
        "status": 400, "code": "refused",
        "message": "Too many keywords in this mailbox (26 at most)"})
    assert get_json(server, path)["flags"] == []
    status, _, answer = api(server, "PATCH", path, {"add_flags": [f"k{i}" for i in range(26)]})
    assert (status, len(json.loads(answer)["flags"])) == (200, 26)


def test_another_users_mail_is_out_of_reach(server: RunningServer) -> None:
    uid, subject = fresh(server)
    bobs = get_json(server, "folders/INBOX/messages?limit=1000", user=BOB)
    assert subject not in [m["subject"] for m in bobs["messages"]]
    assert error_of(server, "GET", f"folders/INBOX/messages/{uid}", user=BOB)[0] == 404
    assert error_of(server, "DELETE", f"folders/INBOX/messages/{uid}", user=BOB)[0] == 404
    for folder in ("..%2Falice", "%2E%2E%2F%2E%2E%2Fexample.org%2Falice"):
        assert error_of(server, "GET", f"folders/{folder}/messages", user=BOB)[0] == 400
    assert get_json(server, f"folders/INBOX/messages/{uid}")["subject"] == subject


def test_unauthenticated_is_401(server: RunningServer) -> None:
    status, _, body = request(server, "GET", "/api/v1/folders", secure=True)
    assert status == 401
    check_response("get", "/folders", 401, json.loads(body))
