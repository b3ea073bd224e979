"""POST /api/v1/send and GET /api/v1/queue/{id} on the real server, with `requests`
and curl: structured and raw messages arriving in a local Maildir (bytes checked),
idempotency, and every hostile form of issue 18 that concerns sending."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
sys.path.insert(0, str(Path(__file__).parent))
from http_helpers import ALL_LISTENERS  # noqa: E402
from openapi_check import check_request, check_response  # noqa: E402
from server_harness import RunningServer, admin, make_server  # noqa: E402

#: The test server's certificate is self-signed.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

ALICE = ("alice@example.org", "wonderland")
MESSAGE_SIZE = 200_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root: Path = tmp_path_factory.mktemp("apisend")
    running = make_server(root, listen=ALL_LISTENERS,
                          limits={"message_size": MESSAGE_SIZE})
    running.add_user(*ALICE)
    running.add_user("bob@example.org", "builder1")
    running.add_user("carol@example.net", "carol-pw")
    running.add_user("jöran@example.org", "jöran-pw")
    running.add_alias("sales@example.org", "alice@example.org")
    for user in ("hourly@example.org", "daily@example.org", "full@example.org"):
        running.add_user(user, "limited-pw")
    admin(running.config_path, "user", "quota", "hourly@example.org",
          "--messages-per-hour", "1", "--recipients-per-day", "100")
    admin(running.config_path, "user", "quota", "daily@example.org",
          "--messages-per-hour", "100", "--recipients-per-day", "2")
    admin(running.config_path, "user", "quota", "full@example.org", "--messages", "1")
    yield running
    running.stop()


@pytest.fixture()
def api(server: RunningServer) -> requests.Session:
    session = requests.Session()
    session.auth = ALICE
    session.verify = False
    session.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
    return session


def url(server: RunningServer, path: str) -> str:
    return f"https://127.0.0.1:{server.ports['https']}/api/v1{path}"


def send(server: RunningServer, api: requests.Session, body: dict[str, Any],
         expect: int) -> dict[str, Any]:
    check_request("post", "/send", body)
    response = api.post(url(server, "/send"), json=body, timeout=60)
    assert response.status_code == expect, response.text
    answer = response.json()
    check_response("post", "/send", expect, answer)
    return answer


def refused(server: RunningServer, api: requests.Session, body: Any, status: int,
            code: str, smtp: str | None = None, raw: bytes | None = None) -> dict[str, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    response = api.post(url(server, "/send"), data=data, timeout=60,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    check_response("post", "/send", status, error)
    assert error["error"]["code"] == code, error
    if smtp is not None:
        assert error["error"].get("smtp") == smtp, error
    return dict(error["error"])


def newest(server: RunningServer, address: str) -> bytes:
    messages = server.messages(address)
    assert messages, f"nothing in {address}'s INBOX"
    return messages[-1]


def parsed(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


# -- structured and raw, into a local Maildir ---------------------------------------------


def test_structured_message_arrives_with_parts_and_attachment(server: RunningServer,
                                                              api: requests.Session) -> None:
    attachment = bytes(range(256)) * 40
    before = len(server.messages("bob@example.org"))
    answer = send(server, api, {
        "from": {"address": "alice@example.org", "name": "Alice Liddell"},
        "to": ["bob@example.org"], "bcc": ["carol@example.net"],
        "reply_to": "sales@example.org",
        "subject": "Tea at four — ünïcode",
        "text": "Plain text body.\nSecond line ü.\n",
        "html": "<p>HTML body</p>\n",
        "attachments": [{"filename": "data.bin", "content_type": "application/pdf",
                         "content": base64.b64encode(attachment).decode()}],
        "headers": {"X-Campaign": "spring", "In-Reply-To": "<earlier@example.org>"},
    }, 200)
    assert answer["recipients"] == [
        {"address": "bob@example.org", "state": "delivered"},
        {"address": "carol@example.net", "state": "delivered"}]
    assert answer["message_id"].startswith("<") and answer["message_id"].endswith(
        "@mx.test.example>")
    assert len(server.messages("bob@example.org")) == before + 1
    data = newest(server, "bob@example.org")
    head = data.split(b"\n\n", 1)[0].decode()
    # What submission adds: Return-Path (final delivery), our Received, Message-ID, Date.
    assert head.startswith("Return-Path: <alice@example.org>\nReceived: from [127.0.0.1] "
                           "([127.0.0.1])\n\tby mx.test.example (mailserver) with HTTPSA id ")
    assert f"Message-ID: {answer['message_id']}\n" in head
    assert "\nDate: " in head
    assert "Bcc" not in head and "carol" not in head  # RFC 5322 3.6.3: blind
    assert data.count(b"MIME-Version: 1.0\n") == 1  # RFC 2045 4: top level only
    message = parsed(data)
    assert message["From"] == "Alice Liddell <alice@example.org>"
    assert message["Reply-To"] == "sales@example.org"
    assert message["Subject"] == "Tea at four — ünïcode"
    assert message["X-Campaign"] == "spring"
    assert message["In-Reply-To"] == "<earlier@example.org>"
    body = message.get_body(("plain",))
    assert body is not None and body.get_content() == "Plain text body.\nSecond line ü.\n"
    html = message.get_body(("html",))
    assert html is not None and html.get_content() == "<p>HTML body</p>\n"
    [part] = list(message.iter_attachments())
    assert part.get_filename() == "data.bin"
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == attachment
    # The blind copy went to carol too, the same message.
    carol = newest(server, "carol@example.net")
    assert f"Message-ID: {answer['message_id']}\n".encode() in carol
    assert b"\r" not in data  # stored with LF line ends, as SMTP's


def test_raw_message_is_delivered_as_sent(server: RunningServer,
                                          api: requests.Session) -> None:
    raw = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
           b"Subject: raw one\r\nMessage-ID: <raw-1@example.org>\r\n"
           b"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\nBody line\r\n.dot line\r\n")
    answer = send(server, api, {"raw": base64.b64encode(raw).decode(),
                                "to": ["bob@example.org"]}, 200)
    assert answer["message_id"] == "<raw-1@example.org>"
    data = newest(server, "bob@example.org")
    received, _, rest = data.partition(b"\nFrom: ")
    assert received.startswith(b"Return-Path: <alice@example.org>\nReceived: from ")
    assert b"From: " + rest == raw.replace(b"\r\n", b"\n")  # nothing added, nothing lost


def test_raw_message_gets_message_id_and_date_like_submission(
        server: RunningServer, api: requests.Session) -> None:
    raw = b"From: alice@example.org\nSubject: bare\n\nNo id, no date.\n"
    answer = send(server, api, {"raw": base64.b64encode(raw).decode(),
                                "to": "bob@example.org"}, 200)
    data = newest(server, "bob@example.org")
    head = data.split(b"\n\n", 1)[0].decode()
    assert f"\nMessage-ID: {answer['message_id']}\n" in head
    assert "\nDate: " in head


def test_curl_sends_too(server: RunningServer) -> None:
    body = json.dumps({"to": ["bob@example.org"], "subject": "from curl",
                       "text": "curl body\n"})
    result = subprocess.run(
        ["curl", "-sk", "-u", "alice@example.org:wonderland", "-H",
         "Content-Type: application/json", "--data-binary", body, "-w", "\n%{http_code}",
         url(server, "/send")], capture_output=True, text=True, timeout=30, check=True)
    text, _, status = result.stdout.rpartition("\n")
    assert status == "200", result.stdout
    answer = json.loads(text)
    check_response("post", "/send", 200, answer)
    assert parsed(newest(server, "bob@example.org"))["Subject"] == "from curl"


def test_smtputf8_address_and_quoted_local_part(server: RunningServer,
                                                api: requests.Session) -> None:
    answer = send(server, api, {"to": ['"jöran"@Example.ORG'], "subject": "hej",
                                "text": "utf8 path\n"}, 200)
    assert answer["recipients"] == [{"address": "jöran@example.org", "state": "delivered"}]
    data = newest(server, "jöran@example.org")
    # RFC 6532: the address in the header as UTF-8; RFC 6531 3.7.3: UTF8SMTP-like trace.
    assert "To: jöran@example.org\n".encode() in data
    refused(server, api, {"to": ['"no such"@example.org'], "text": "x"}, 422,
            "unknown_recipient", "5.1.1")


def test_get_queue_of_a_local_message(server: RunningServer, api: requests.Session) -> None:
    answer = send(server, api, {"to": ["bob@example.org"], "text": "x\n"}, 200)
    response = api.get(url(server, f"/queue/{answer['queue_id']}"), timeout=60)
    assert response.status_code == 200, response.text
    state = response.json()
    check_response("get", "/queue/{id}", 200, state)
    assert state == {"queue_id": answer["queue_id"], "message_id": answer["message_id"],
                     "recipients": [{"address": "bob@example.org", "state": "delivered",
                                     "attempts": 0}]}
    other = requests.get(url(server, f"/queue/{answer['queue_id']}"),
                         auth=("bob@example.org", "builder1"), verify=False, timeout=60)
    assert other.status_code == 404
    check_response("get", "/queue/{id}", 404, other.json())
    unknown = api.get(url(server, "/queue/ABCDEF0123456789"), timeout=60)
    assert unknown.status_code == 404
    for bad in ("..%2F..%2Fetc", "a/b", "x" * 65):
        assert api.get(url(server, f"/queue/{bad}"), timeout=60).status_code == 404


# -- idempotency --------------------------------------------------------------------------


def test_idempotency_key_sends_once_and_answers_again(server: RunningServer,
                                                      api: requests.Session) -> None:
    body = {"to": ["bob@example.org"], "subject": "once", "text": "only once\n",
            "idempotency_key": "order-4711"}
    before = len(server.messages("bob@example.org"))
    first = send(server, api, body, 200)
    response = api.post(url(server, "/send"),
                        data=json.dumps(dict(reversed(list(body.items())))), timeout=10,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.headers["Idempotent-Replayed"] == "true"
    assert response.json() == first
    assert len(server.messages("bob@example.org")) == before + 1
    error = refused(server, api, {**body, "text": "another body\n"}, 409,
                    "idempotency_conflict")
    assert "different request" in error["message"]
    assert len(server.messages("bob@example.org")) == before + 1
    # The key is the user's: bob's request with the same key is his own message.
    bob = requests.post(url(server, "/send"), json={**body, "to": ["alice@example.org"]},
                        auth=("bob@example.org", "builder1"), verify=False, timeout=60)
    assert bob.status_code == 200, bob.text


def test_concurrent_duplicates_queue_one_message(server: RunningServer) -> None:
    body = {"to": ["bob@example.org"], "subject": "race", "text": "raced\n",
            "idempotency_key": "race-1"}
    before = len(server.messages("bob@example.org"))
    answers: list[tuple[int, Any]] = []

    def post() -> None:
        r = requests.post(url(server, "/send"), json=body, auth=ALICE, verify=False,
                          timeout=30)
        answers.append((r.status_code, r.json()))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in answers] == [200] * 8
    assert len({json.dumps(a, sort_keys=True) for _, a in answers}) == 1
    assert len(server.messages("bob@example.org")) == before + 1


def test_a_refused_request_keeps_no_key(server: RunningServer,
                                        api: requests.Session) -> None:
    body = {"to": ["nobody@example.org"], "text": "x", "idempotency_key": "fix-and-retry"}
    refused(server, api, body, 422, "unknown_recipient", "5.1.1")
    send(server, api, {**body, "to": ["bob@example.org"]}, 200)


def test_an_acknowledged_key_survives_a_crash(tmp_path: Path) -> None:
    running = make_server(tmp_path, listen={"https": "tcp:0:interface=127.0.0.1"})
    try:
        running.add_user(*ALICE)
        running.add_user("bob@example.org", "builder1")
        body = {"to": ["bob@example.org"], "text": "durable\n", "idempotency_key": "k"}
        first = requests.post(url(running, "/send"), json=body, auth=ALICE, verify=False,
                              timeout=60)
        assert first.status_code == 200
        running.kill()
        running.start()
        again = requests.post(url(running, "/send"), json=body, auth=ALICE, verify=False,
                              timeout=60)
        assert again.status_code == 200 and again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert len(running.messages("bob@example.org")) == 1
    finally:
        running.stop()


# -- refusals with SMTP's reasons ---------------------------------------------------------


def test_a_from_the_user_may_not_use_is_403(server: RunningServer,
                                            api: requests.Session) -> None:
    error = refused(server, api, {"from": "bob@example.org", "to": ["bob@example.org"],
                                  "text": "forged"}, 403, "sender_refused", "5.7.1")
    assert error["message"] == ("<bob@example.org>: Sender address rejected: not owned "
                                "by user alice@example.org")
    raw = b"From: Bob <bob@example.org>\nSubject: forged\n\nx\n"
    error = refused(server, api, {"raw": base64.b64encode(raw).decode(),
                                  "to": ["bob@example.org"]}, 403, "sender_refused", "5.7.1")
    assert error["message"] == ("<bob@example.org>: From header address rejected: not "
                                "owned by user alice@example.org")
    two = b"From: alice@example.org\nFrom: bob@example.org\n\nx\n"
    error = refused(server, api, {"raw": base64.b64encode(two).decode(),
                                  "to": ["bob@example.org"]}, 403, "sender_refused", "5.7.1")
    assert "2 From header fields" in error["message"]
    # An alias reaching alice is hers to send as (directory.may_send_as).
    send(server, api, {"from": "sales@example.org", "to": ["bob@example.org"],
                       "text": "from the alias\n"}, 200)


def test_too_big_is_413_with_534(server: RunningServer, api: requests.Session) -> None:
    # Past send.THREAD_ABOVE too: parsed and built in a thread, refused all the same.
    for size in (MESSAGE_SIZE + 10, 300_000):
        refused(server, api, {"to": ["bob@example.org"], "text": "x" * size},
                413, "too_big", "5.3.4")


def test_a_body_past_the_site_cap_is_refused_early(server: RunningServer,
                                                   api: requests.Session) -> None:
    huge = b'{"to": ["bob@example.org"], "text": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    try:
        response = api.post(url(server, "/send"), data=huge, timeout=30)
    except requests.ConnectionError:
        pass  # the server may close before reading it all: refused either way
    else:
        assert response.status_code == 413
    assert api.get(url(server, "/me"), timeout=60).status_code == 200  # still up


@pytest.mark.parametrize("body, where", [
    ({"to": ["bob@example.org"], "subject": "hi\r\nBcc: victim@example.net", "text": "x"},
     "subject"),
    ({"to": ["bob@example.org"], "subject": "nul\x00", "text": "x"}, "subject"),
    ({"to": [{"address": "bob@example.org", "name": "Bob\nBcc: v@example.net"}],
      "text": "x"}, "to[0].name"),
    ({"from": {"address": "alice@example.org", "name": "A\rB"}, "to": ["bob@example.org"],
      "text": "x"}, "from.name"),
    ({"to": ["bob@example.org"], "text": "x", "attachments": [
        {"filename": "a.txt\r\nContent-Type: text/html", "content": "eA=="}]},
     "attachments[0].filename"),
    ({"to": ["bob@example.org"], "text": "x", "headers": {"X-A": "1\nBcc: v@example.net"}},
     "headers.X-A"),
    ({"to": ["bob@example.org"], "text": "x", "headers": {"X-A\r\nBcc": "v"}}, "headers"),
    ({"to": ["bob@example.org\r\nRCPT TO:<v@example.net>"], "text": "x"}, "to[0]"),
])
def test_header_injection_is_400(server: RunningServer, api: requests.Session,
                                 body: dict[str, Any], where: str) -> None:
    before = len(server.messages("bob@example.org"))
    error = refused(server, api, body, 400, "header_injection", "5.6.0")
    assert error["message"] == f"{where}: CR, LF and NUL are not allowed"
    assert len(server.messages("bob@example.org")) == before


@pytest.mark.parametrize("raw, code", [
    (b"{not json", "bad_json"),
    (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[]", "bad_request"),
    (json.dumps({"to": ["bob@example.org"]}).encode(), "bad_request"),
    (json.dumps({"text": "no recipient"}).encode(), "bad_request"),
    (json.dumps({"to": ["bob@example.org"], "text": "x", "bc": ["typo"]}).encode(),
     "bad_request"),
    (json.dumps({"raw": "!!!notbase64", "to": ["bob@example.org"]}).encode(), "bad_base64"),
    (json.dumps({"raw": "eA", "to": ["bob@example.org"]}).encode(), "bad_base64"),
    (json.dumps({"to": ["bob@example.org"], "text": "x", "attachments": [
        {"filename": "a", "content": "@@@"}]}).encode(), "bad_base64"),
    (json.dumps({"raw": base64.b64encode(b"Subject: x\r\n\r\nbare\rcr").decode(),
                 "to": ["bob@example.org"]}).encode(), "bad_message"),
    (json.dumps({"raw": base64.b64encode(b"Subject: x\n\nnul\x00").decode(),
                 "to": ["bob@example.org"]}).encode(), "bad_message"),
    (json.dumps({"to": ["Bob <bob@example.org>"], "text": "x"}).encode(), "bad_address"),
    (json.dumps({"to": ["bob@example.org, carol@example.net"], "text": "x"}).encode(),
     "bad_address"),
    (json.dumps({"to": ['"unterminated@example.org'], "text": "x"}).encode(),
     "bad_address"),
    (json.dumps({"to": ["x" * 65 + "@example.org"], "text": "x"}).encode(), "bad_address"),
    (json.dumps({"to": ["bob@example.org"], "text": "x",
                 "headers": {"Content-Type": "text/html"}}).encode(), "bad_request"),
    # One field twice through keys that differ only by case (RFC 5322 3.6: at most one).
    (json.dumps({"to": ["bob@example.org"], "text": "x", "headers": {
        "In-Reply-To": "<a@example.org>", "in-reply-to": "<b@example.org>"}}).encode(),
     "bad_request"),
    (json.dumps({"to": ["bob@example.org"], "text": "x", "attachments": [
        {"filename": "m.eml", "content_type": "message/rfc822", "content": "eA=="}]}
                ).encode(), "bad_request"),
    (json.dumps({"to": ["bob@example.org"], "text": 5}).encode(), "bad_request"),
    # Lone surrogates: valid JSON, no valid text (RFC 8259 8.2).
    (b'{"to": ["bob@example.org"], "text": "\\ud800"}', "bad_json"),
    (b'{"to": ["bob@example.org"], "text": "x", "subject": "\\udfff"}', "bad_json"),
    (b'{"to": ["bob@example.org"], "text": "x", "attachments": [{"filename": "\\ud800",'
     b' "content": "eA=="}]}', "bad_json"),
    (b'{"to": ["b\\ud800b@example.org"], "text": "x"}', "bad_json"),
    (b'{"to": ["bob@example.org"], "text": "x", "headers": {"X-\\ud800": "v"}}', "bad_json"),
    (json.dumps({"to": ["bob@example.org"], "text": "x", "idempotency_key": ""}).encode(),
     "bad_request"),
])
def test_malformed_requests_are_400(server: RunningServer, api: requests.Session,
                                    raw: bytes, code: str) -> None:
    refused(server, api, None, 400, code, raw=raw)


@pytest.mark.parametrize("content_type, data", [
    # Not multipart at all: Twisted's form parser answered a bare 400 and hung up.
    ("multipart/form-data; boundary=zz", b"not a multipart body"),
    ("multipart/form-data; boundary=zz",
     b"--zz\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nbob@example.org\r\n"
     b"--zz--\r\n"),
    ("application/x-www-form-urlencoded", b"to=bob%40example.org&text=x"),
])
def test_a_form_body_is_the_apis_json_415_and_never_parsed(
        server: RunningServer, api: requests.Session, content_type: str,
        data: bytes) -> None:
    # The site does not parse HTML forms (http/site.py MailSite), and /send takes JSON
    # only: the API's own JSON error, on a connection that stays usable, nothing sent.
    before = len(server.messages("bob@example.org"))
    response = api.post(url(server, "/send"), data=data, timeout=60,
                        headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    error = response.json()
    check_response("post", "/send", 415, error)
    assert error["error"]["code"] == "unsupported_media_type", error
    assert response.headers.get("Connection", "").lower() != "close"
    assert len(server.messages("bob@example.org")) == before


def as_user(server: RunningServer, user: str, body: dict[str, Any]) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(url(server, "/send"), json=body, auth=(user, "limited-pw"),
                        verify=False, timeout=60)


def test_over_the_sending_limits_is_429_as_submission_says(server: RunningServer) -> None:
    """The limits SMTP submission counts (smtp/defences.py), counted in the same table:
    451 4.7.1 per hour, 550 5.7.1 per day there; 429 with those codes here."""
    body = {"to": ["bob@example.org"], "text": "x\n"}
    assert as_user(server, "hourly@example.org", {**body, "from": "hourly@example.org"}
                   ).status_code == 200
    response = as_user(server, "hourly@example.org", {**body, "from": "hourly@example.org"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3600"
    assert response.json()["error"] == {
        "status": 429, "code": "sending_limit", "smtp": "4.7.1",
        "message": "Error: hourly sending limit reached; try again later"}
    check_response("post", "/send", 429, response.json())
    three = {"from": "daily@example.org", "to": ["bob@example.org", "alice@example.org",
                                                 "carol@example.net"], "text": "x\n"}
    before = len(server.messages("carol@example.net"))
    response = as_user(server, "daily@example.org", three)
    assert response.status_code == 429
    assert response.json()["error"]["smtp"] == "5.7.1"
    assert response.json()["error"]["message"] == "Error: daily recipient limit reached"
    assert len(server.messages("carol@example.net")) == before  # nothing sent at all


def test_a_full_mailbox_is_422_with_422(server: RunningServer,
                                        api: requests.Session) -> None:
    send(server, api, {"to": ["full@example.org"], "text": "fills it\n"}, 200)
    error = refused(server, api, {"to": ["full@example.org"], "text": "x"}, 422,
                    "mailbox_full", "4.2.2")
    assert error["message"] == "<full@example.org>: Error: mailbox full"


def test_too_many_recipients_is_400(server: RunningServer, api: requests.Session) -> None:
    many = [f"u{i}@example.org" for i in range(1001)]
    refused(server, api, {"to": many, "text": "x"}, 400, "too_many_recipients", "5.5.3")


def test_send_needs_the_send_scope_and_credentials(server: RunningServer) -> None:
    response = requests.post(url(server, "/send"), json={"to": ["bob@example.org"],
                                                         "text": "x"}, verify=False,
                             timeout=60)
    assert response.status_code == 401
    check_response("post", "/send", 401, response.json())
    wrong = requests.get(url(server, "/send"), auth=ALICE, verify=False, timeout=60)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")


def test_a_body_not_sent_as_json_is_415_and_sends_nothing(server: RunningServer,
                                                         api: requests.Session) -> None:
    before = len(server.messages("bob@example.org"))
    body = b'{"to": ["bob@example.org"], "text": "typed wrong"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = api.post(url(server, "/send"), data=body, headers=headers, timeout=60)
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["error"]["code"] == "unsupported_media_type"
    assert len(server.messages("bob@example.org")) == before
