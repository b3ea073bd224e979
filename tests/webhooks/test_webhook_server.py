"""Webhooks on the real server: registered through the API, POSTed to a receiver on
loopback that verifies every signature; local and relayed deliveries, deferrals, a
bounce's status, arrivals with the raw message or a fetch link, receivers that fail,
redirect, dawdle or never answer, and the SSRF refusals."""

from __future__ import annotations

import base64
import json
import os
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[1] / "http"))
sys.path.insert(0, str(Path(__file__).parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).parents[1] / "queue"))
sys.path.insert(0, str(Path(__file__).parent))
from dns_server import DNSServer  # noqa: E402
from http_helpers import request  # noqa: E402
from openapi_check import check_request, check_response, check_schema  # noqa: E402
from ports import free_port  # noqa: E402
from receiver import Receiver  # noqa: E402
from server_harness import PASSWORD, RunningServer, admin, make_server  # noqa: E402
from tls_support import Cert, make_cert, server_context  # noqa: E402

from mailserver.webhooks.signing import new_secret  # noqa: E402

LISTEN = {name: "tcp:0:interface=127.0.0.1" for name in ("smtp", "submission", "https")}


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def api(server: RunningServer, method: str, path: str, user: str = "alice@example.org",
        body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    status, _, answer = request(server, method, "/api/v1" + path, secure=True,
                                headers=basic(user), body=data)
    return status, json.loads(answer) if answer else None


def register(server: RunningServer, receiver: Receiver, user: str, path: str,
             **fields: Any) -> dict[str, Any]:
    body = {"url": receiver.url(path), **fields}
    check_request("post", "/webhooks", body)
    status, hook = api(server, "POST", "/webhooks", user, body)
    assert status == 201, hook
    check_response("post", "/webhooks", 201, hook)
    receiver.secrets[path] = hook["secret"]
    return hook


def server_config(root: Path, dns: DNSServer, receiver: Receiver, relay_port: int,
                  ca_file: Path | None = None, **webhooks: Any) -> RunningServer:
    domain_secret = root / "example.net.secret"
    root.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    domain_secret.write_text(secret + "\n")
    receiver.secrets["/domain"] = secret
    server = make_server(
        root, start=False, listen=LISTEN,
        dns={"nameservers": [dns.nameserver], "timeout": 10},
        relay={"smarthost": f"127.0.0.1:{relay_port}", "retry_initial": 1, "retry_max": 1,
               "connect_timeout": 2, "command_timeout": 5,
               **({"ca_file": str(ca_file)} if ca_file else {})},
        webhooks={"allowed_networks": ["127.0.0.0/24"], "timeout": 2, "retry_initial": 1,
                  "retry_max": 1, **webhooks})
    # An array of tables, which the harness's TOML writer does not do.
    with open(server.config_path, "a") as f:
        f.write(f'\n[[webhooks.domain]]\ndomain = "example.net"\n'
                f'url = "{receiver.url("/domain")}"\nevents = ["received"]\n'
                f'secret_file = "{domain_secret}"\nraw_limit = 100000\n')
    for user in ("alice@example.org", "bob@example.org", "carol@example.net"):
        server.add_user(user, PASSWORD)
    return server


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    server = DNSServer({"rebind.test": {"A": ["127.9.9.9"]},
                        "hooks.test": {"A": ["127.0.0.1"]},
                        "self.test": {"A": ["127.0.0.1"]},
                        "private.test": {"A": ["10.20.30.40"]}}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.stop()


@pytest.fixture(autouse=True)
def payloads_fit_the_document(receiver: Receiver) -> Iterator[None]:
    """Every body POSTed so far is a WebhookEvent as docs/api/openapi.yaml says."""
    yield
    for got in list(receiver.got):
        check_schema("WebhookEvent", got.json)


@pytest.fixture(scope="module")
def peer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def ca() -> Cert:
    return make_cert(["Webhook Test CA"], ca=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dns: DNSServer, receiver: Receiver,
           peer_port: int, ca: Cert) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("webhooks")
    ca_file, _ = ca.write(root / "ca", "ca")
    running = server_config(root / "server", dns, receiver, peer_port, ca_file).start()
    yield running
    running.stop()


def submit(server: RunningServer, user: str, rcpts: list[str], subject: str) -> None:
    message = (f"From: <{user}>\r\nTo: <{rcpts[0]}>\r\nSubject: {subject}\r\n"
               f"Message-ID: <{subject}@example.org>\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP(*server.address("submission"), timeout=60) as client:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        client.starttls(context=context)
        client.login(user, PASSWORD)
        client.sendmail(user, rcpts, message)


def send_in(server: RunningServer, sender: str, rcpt: str, subject: str,
            body: str = "Hello.") -> bytes:
    message = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
               f"Message-ID: <{subject}@example.com>\r\n\r\n{body}\r\n").encode()
    with smtplib.SMTP(*server.address("smtp"), timeout=60) as client:
        client.sendmail(sender, [rcpt], message)
    return message


def hook_log(server: RunningServer) -> str:
    """The server's webhook log lines, for a failing assertion's message."""
    return "\n".join(line for line in server.log_path.read_text(errors="replace")
                     .splitlines() if "webhooks" in line)[-3000:]


# -- registration --------------------------------------------------------------------

def test_register_list_change_delete(server: RunningServer, receiver: Receiver) -> None:
    hook = register(server, receiver, "alice@example.org", "/scratch",
                    events=["delivered", "failed"], raw_limit=1000)
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    assert (hook["url"], hook["events"], hook["raw_limit"], hook["active"]) == (
        receiver.url("/scratch"), ["delivered", "failed"], 1000, True)
    status, listed = api(server, "GET", "/webhooks")
    assert status == 200 and hook["id"] in [h["id"] for h in listed["webhooks"]]
    assert all("secret" not in h for h in listed["webhooks"]), "shown once only"
    check_response("get", "/webhooks", 200, listed)
    status, changed = api(server, "PATCH", f"/webhooks/{hook['id']}",
                          body={"events": ["received"], "active": False})
    assert (status, changed["events"], changed["active"]) == (200, ["received"], False)
    check_response("patch", "/webhooks/{id}", 200, changed)
    status, one = api(server, "GET", f"/webhooks/{hook['id']}")
    assert (status, one) == (200, changed)
    for body, code in (({"url": "http://10.0.0.1/"}, "bad_url"), ({}, "bad_request"),
                       ({"active": "no"}, "bad_request"), ({"secret": new_secret()},
                                                           "bad_request")):
        status, refused = api(server, "PATCH", f"/webhooks/{hook['id']}", body=body)
        assert (status, refused["error"]["code"]) == (400, code), body
        check_response("patch", "/webhooks/{id}", 400, refused)
    assert api(server, "GET", f"/webhooks/{hook['id']}")[1] == changed, "unchanged"
    # Another user sees none of it.
    assert api(server, "GET", f"/webhooks/{hook['id']}", "bob@example.org")[0] == 404
    assert api(server, "DELETE", f"/webhooks/{hook['id']}", "bob@example.org")[0] == 404
    assert api(server, "DELETE", f"/webhooks/{hook['id']}") == (204, None)
    status, gone = api(server, "GET", f"/webhooks/{hook['id']}")
    assert (status, gone["error"]["code"]) == (404, "not_found")
    check_response("get", "/webhooks/{id}", 404, gone)


def test_the_readmes_curl_example(server: RunningServer, receiver: Receiver) -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.index("### Webhooks", text.index("## HTTP API"))
    start = text.index("```sh\n", section) + 6
    command = text[start:text.index("```", start)]
    port = server.ports["https"]
    token = admin(server.config_path, "token", "add", "alice@example.org").stdout.strip()
    curlrc = Path(server.root) / ".curlrc"
    curlrc.write_text(f'insecure\nresolve = "mail.example.org:{port}:127.0.0.1"\n')
    env = {**os.environ, "API": f"https://mail.example.org:{port}/api/v1", "TOKEN": token,
           "HOOK_URL": receiver.url("/readme"), "CURL_HOME": str(curlrc.parent)}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], capture_output=True,
                          text=True, timeout=30, env=env)
    hook = json.loads(done.stdout)
    assert (hook["url"], hook["events"], hook["raw_limit"]) == (
        receiver.url("/readme"), ["delivered", "failed", "received"], 65536)
    assert hook["secret"].startswith("whsec_")
    check_response("post", "/webhooks", 201, hook)
    assert api(server, "DELETE", f"/webhooks/{hook['id']}") == (204, None)


@pytest.mark.parametrize("url,reason", [
    ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
    ("http://127.1.0.1/hook", "127.1.0.1 is a loopback address"),  # outside the allow-list
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://rebind.test/hook", "127.9.9.9 is a loopback address"),  # via the test DNS
    ("http://private.test/hook", "10.20.30.40 is a private address"),
    ("http://nowhere.test/hook", "nowhere.test: no such host"),
    ("ftp://203.0.113.5/", "only http:// and https://"),
    ("https://u:p@203.0.113.5/", "user name or password"),
    ("http://x.test/a\r\nInjected: yes", "spaces or control characters"),
])
def test_urls_refused_at_registration(server: RunningServer, url: str, reason: str) -> None:
    status, body = api(server, "POST", "/webhooks", body={"url": url})
    assert status == 400, body
    assert body["error"]["code"] == "bad_url"
    assert reason in body["error"]["message"], body
    check_response("post", "/webhooks", 400, body)


def test_our_own_listeners_are_refused_even_inside_the_allow_list(
        server: RunningServer) -> None:
    port = server.ports["https"]
    for url in (f"https://127.0.0.1:{port}/api/v1/me", f"http://self.test:{port}/"):
        status, body = api(server, "POST", "/webhooks", body={"url": url})
        assert (status, body["error"]["code"]) == (400, "bad_url"), url
        assert f"127.0.0.1 port {port} is this server's own listener" in \
            body["error"]["message"]


@pytest.mark.parametrize("body,message", [
    ({}, "url: a string is required"),
    ({"url": "http://127.0.0.1:9/", "events": ["sent"]}, "events: a non-empty list"),
    ({"url": "http://127.0.0.1:9/", "events": []}, "events: a non-empty list"),
    ({"url": "http://127.0.0.1:9/", "secret": "hunter2"}, "secret: whsec_"),
    ({"url": "http://127.0.0.1:9/", "raw_limit": -1}, "raw_limit: an integer"),
    ({"url": "http://127.0.0.1:9/", "raw_limit": True}, "raw_limit: an integer"),
    ({"url": "http://127.0.0.1:9/", "owner": "bob@example.org"}, "unknown field 'owner'"),
    (["http://127.0.0.1:9/"], "the body must be a JSON object"),
])
def test_malformed_registrations_are_400(server: RunningServer, body: Any,
                                         message: str) -> None:
    status, answer = api(server, "POST", "/webhooks", body=body)
    assert (status, answer["error"]["code"]) == (400, "bad_request"), answer
    assert message in answer["error"]["message"]
    status, answer = api(server, "POST", "/webhooks", raw=b'{"url": ')
    assert (status, answer["error"]["code"]) == (400, "bad_json")


# -- events --------------------------------------------------------------------------

def test_received_with_the_raw_message_or_a_fetch_link(server: RunningServer,
                                                        receiver: Receiver) -> None:
    register(server, receiver, "alice@example.org", "/alice", events=["received"],
             raw_limit=100_000)
    register(server, receiver, "carol@example.net", "/carol-small", events=["received"],
             raw_limit=10)
    send_in(server, "dave@example.com", "alice@example.org", "arrival1")
    send_in(server, "dave@example.com", "carol@example.net", "arrival2")
    [got] = receiver.wait_for("/alice")
    assert got.verified
    event = got.json
    assert (event["type"], event["id"]) == ("received", got.id)
    data = event["data"]
    [stored] = server.visible_files("alice@example.org")
    assert data["stored_as"] == stored.name
    assert base64.b64decode(data["raw"]) == stored.read_bytes()
    assert {k: data[k] for k in ("sender", "recipient", "mailbox", "folder", "message_id",
                                 "size")} == {
        "sender": "dave@example.com", "recipient": "alice@example.org",
        "mailbox": "alice@example.org", "folder": "INBOX",
        "message_id": "arrival1@example.com", "size": len(stored.read_bytes())}
    # carol: her own hook (10 bytes) gets the link, the domain's (100 kB) the bytes.
    [small] = receiver.wait_for("/carol-small")
    [domain] = receiver.wait_for("/domain")
    assert small.verified and domain.verified
    [carols] = server.visible_files("carol@example.net")
    assert "raw" not in small.json["data"]
    assert small.json["data"]["fetch"] == (
        "https://mx.test.example/api/v1/folders/INBOX/messages?name="
        + carols.name.replace(",", "%2C").replace("=", "%3D").replace(":", "%3A"))
    assert base64.b64decode(domain.json["data"]["raw"]) == carols.read_bytes()


def test_local_delivery_of_submitted_mail_is_delivered(server: RunningServer,
                                                       receiver: Receiver) -> None:
    register(server, receiver, "bob@example.org", "/bob-sent", events=["delivered"])
    submit(server, "bob@example.org", ["alice@example.org"], "local1")
    [got] = receiver.wait_for("/bob-sent")
    assert got.verified
    data = got.json["data"]
    assert (got.json["type"], data["recipient"], data["status"], data["remote"],
            data["message_id"], data["submitter"]) == (
        "delivered", "alice@example.org", "2.0.0", "local", "local1@example.org",
        "bob@example.org")


def test_relay_deferred_then_delivered_and_a_bounce_with_its_status(
        tmp_path: Path, server: RunningServer, receiver: Receiver, peer_port: int) -> None:
    register(server, receiver, "alice@example.org", "/alice-sent",
             events=["delivered", "deferred", "failed"])
    # The peer is not there yet: both recipients are deferred.
    submit(server, "alice@example.org", ["dave@example.com", "nobody@example.com"],
           "relay1")
    deferred = receiver.wait_for("/alice-sent", 2, kind="deferred")
    assert {d.json["data"]["recipient"] for d in deferred} == {"dave@example.com",
                                                               "nobody@example.com"}
    assert all(d.json["data"]["status"].startswith("4.") for d in deferred)
    peer = make_server(tmp_path / "peer", start=False, hostname="mx.example.com",
                       domains={"local": ["example.com"]},
                       listen={"smtp": f"tcp:{peer_port}:interface=127.0.0.1"})
    peer.add_user("dave@example.com", PASSWORD)
    peer.start()
    try:
        [delivered] = receiver.wait_for("/alice-sent", kind="delivered", timeout=30)
        [failed] = receiver.wait_for("/alice-sent", kind="failed", timeout=30)
    finally:
        peer.stop()
    assert delivered.json["data"]["recipient"] == "dave@example.com"
    assert delivered.json["data"]["status"] == "2.0.0"
    assert delivered.json["data"]["remote"].startswith("127.0.0.1")
    assert failed.json["data"]["recipient"] == "nobody@example.com"
    assert failed.json["data"]["status"] == "5.1.1"
    assert "550 5.1.1" in failed.json["data"]["diagnostic"]
    for got in receiver.posts("/alice-sent"):
        assert got.verified
        assert got.json["data"]["queue_id"] == deferred[0].json["data"]["queue_id"]
    # In order per message and hook: every "deferred" of dave arrived before his
    # "delivered" (by the order the receiver saw them in).
    daves = [g.json["type"] for g in receiver.posts("/alice-sent")
             if g.json["data"]["recipient"] == "dave@example.com"]
    assert daves[-1] == "delivered" and set(daves[:-1]) == {"deferred"}


def test_bad_receivers_are_retried_and_hold_up_nobody(server: RunningServer,
                                                      receiver: Receiver) -> None:
    paths = ("/fail-2", "/redirect", "/hang", "/slow", "/carol-ok")
    hooks = {path: register(server, receiver, "carol@example.net", path,
                            events=["received"]) for path in paths}
    send_in(server, "dave@example.com", "carol@example.net", "badreceivers")
    [ok] = receiver.wait_for("/carol-ok")
    # Had the hung POST held up the others, /carol-ok would come only after its timeout
    # (webhooks.timeout, logged as "no answer within 2s" before the next POST starts).
    hang_timeouts = [line for line in hook_log(server).splitlines()
                     if hooks["/hang"]["id"] in line and "no answer within" in line]
    assert hang_timeouts == [], "a hung receiver holds up no other hook"
    fails = receiver.wait_for("/fail-2", 3)
    assert [f.attempt for f in fails] == [1, 2, 3], hook_log(server)
    assert len({f.id for f in fails}) == 1, "a retry keeps its webhook-id"
    assert all(f.verified for f in fails)
    redirects = receiver.wait_for("/redirect", 2)
    assert [r.attempt for r in redirects[:2]] == [1, 2]
    assert redirects[0].id not in {g.id for g in receiver.posts("/ok")}, \
        "a redirect is never followed"
    hangs = receiver.wait_for("/hang", 2, timeout=60)
    assert hangs[1].id == hangs[0].id and hangs[1].attempt == 2
    assert len(receiver.wait_for("/slow")) == 1
    assert server.is_running()
    listed = admin(server.config_path, "webhook", "list", "--pending").stdout
    assert "(HTTP 302 (redirects are not followed))" in listed
    assert "(no answer within 2s)" in listed
    assert redirects[0].id in listed
    assert ok.json["data"]["recipient"] == "carol@example.net"


def test_https_is_verified_against_the_trusted_roots(
        tmp_path: Path, server: RunningServer, ca: Cert) -> None:
    trusted = Receiver(tls=server_context(make_cert(["hooks.test"], ca), tmp_path, "good"),
                       name="hooks.test")
    forged = Receiver(tls=server_context(make_cert(["hooks.test"]), tmp_path, "self"),
                      name="hooks.test")
    try:
        register(server, trusted, "bob@example.org", "/tls", events=["received"])
        register(server, forged, "bob@example.org", "/forged", events=["received"])
        send_in(server, "dave@example.com", "bob@example.org", "tls1")
        [got] = trusted.wait_for("/tls")
        assert got.verified and got.json["data"]["recipient"] == "bob@example.org"
        deadline = time.monotonic() + 60
        while "certificate verify failed" not in (listed := admin(
                server.config_path, "webhook", "list", "--pending").stdout):
            assert time.monotonic() < deadline, listed + hook_log(server)
            time.sleep(0.3)
        assert forged.got == [], "nothing was sent to a certificate nobody vouches for"
    finally:
        trusted.stop()
        forged.stop()


# -- a crash, the commands -----------------------------------------------------------

def test_sigkill_before_the_post_is_answered_then_sent_again(
        tmp_path: Path, dns: DNSServer, receiver: Receiver) -> None:
    server = server_config(tmp_path / "crash", dns, receiver, free_port(),
                           retry_for=4).start()
    try:
        register(server, receiver, "alice@example.org", "/hang-once", events=["received"])
        register(server, receiver, "alice@example.org", "/redirect?crash",
                 events=["received"])
        send_in(server, "dave@example.com", "alice@example.org", "crash1")
        [first] = receiver.wait_for("/hang-once")  # the POST is open, unanswered
        server.kill()
        server.start()
        second = receiver.wait_for("/hang-once", 2)[1]
        assert (second.id, second.body) == (first.id, first.body), "the same event"
        assert second.verified
        time.sleep(1.5)
        assert len(receiver.posts("/hang-once")) == 2, "answered: sent no more"
        # The redirecting hook's event: given up after webhooks.retry_for (4 s).
        redirect_id = receiver.wait_for("/redirect?crash")[0].id
        deadline = time.monotonic() + 60
        while redirect_id not in (listed := admin(server.config_path, "webhook", "list",
                                                  "--failed").stdout):
            assert time.monotonic() < deadline, listed
            time.sleep(0.3)
        assert f"{redirect_id} failed   received" in listed
        shown = admin(server.config_path, "webhook", "show", redirect_id).stdout
        assert "state:      failed" in shown
        assert "gave up:    gave up after" in shown and "HTTP 302" in shown
        assert f'"id": "{redirect_id}"' in shown
        before = len(receiver.posts("/redirect?crash"))
        retried = admin(server.config_path, "webhook", "retry", redirect_id)
        assert retried.stdout == f"webhook retry: {redirect_id} will be sent again\n"
        assert receiver.wait_for("/redirect?crash", before + 1)[-1].id == redirect_id
        again = admin(server.config_path, "webhook", "retry", "msg_" + "0" * 26, check=False)
        assert again.returncode == 1
        assert again.stderr == (f"webhook retry: no failed webhook event "
                                f"'msg_{'0' * 26}'\n")
        unknown = admin(server.config_path, "webhook", "show", "nonsense", check=False)
        assert (unknown.returncode, unknown.stderr) == (
            1, "webhook show: no webhook event 'nonsense' (delivered, or never there)\n")
        usage = admin(server.config_path, "webhook", "retry", check=False)
        assert usage.returncode == 2
    finally:
        server.stop()


def test_worker_processes_spool_and_the_first_process_sends(tmp_path: Path,
                                                            dns: DNSServer) -> None:
    own = Receiver()
    server = server_config(tmp_path / "workers", dns, own, free_port())
    text = server.config_path.read_text().replace("processes = 1", "processes = 2")
    server.config_path.write_text(text)
    server.start()
    try:
        # The worker takes connections once it has adopted the listening socket; before
        # that every connection goes to the first process.
        deadline = time.monotonic() + 60
        while "smtp accepting on the inherited socket" not in server.log_path.read_text(
                errors="replace"):
            assert time.monotonic() < deadline, "the worker never took the socket"
            time.sleep(0.1)
        def both_took_some() -> bool:
            log = server.log_path.read_text(errors="replace")
            return "w1-smtp-" in log and "] smtp-" in log

        # A connection each, until both processes have taken some: the kernel spreads
        # connections between the two listeners as it likes (40 all went to the worker
        # once), so a fixed number could leave the first process's side untested.
        sent = 0
        while sent < 40 or not both_took_some():
            assert sent < 400, "both processes took connections"
            send_in(server, "dave@example.com", "carol@example.net", f"worker{sent}")
            sent += 1
        got = own.wait_for("/domain", sent, timeout=60)
        time.sleep(1.5)  # a duplicate would come within a poll or two
        assert len(own.posts("/domain")) == sent
        assert all(g.verified for g in got)
        assert sorted(g.json["data"]["stored_as"] for g in got) == sorted(
            p.name for p in server.visible_files("carol@example.net"))
        log = server.log_path.read_text(errors="replace")
        assert "_HTTP11ClientFactory" not in log, "no log line per POST"
    finally:
        server.stop()
        own.stop()
