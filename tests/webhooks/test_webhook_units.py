"""The webhooks' parts without a server: signatures, the SSRF rules, the spool, the
dispatcher's order, back-off and give-up (a Clock and a scripted sender), matching."""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

sys.path.insert(0, str(Path(__file__).parents[1]))
from fakes import FakeDisk  # noqa: E402

from mailserver.config import config_from_dict  # noqa: E402
from mailserver.events import DeliveryEvent, message_id_of  # noqa: E402
from mailserver.webhooks import urlcheck  # noqa: E402
from mailserver.webhooks.dispatcher import Dispatcher, backoff  # noqa: E402
from mailserver.webhooks.hooks import HookStore  # noqa: E402
from mailserver.webhooks.publisher import WebhookPublisher  # noqa: E402
from mailserver.webhooks.signing import new_secret, sign, verify  # noqa: E402
from mailserver.webhooks.spool import FAILED, PENDING, Record, WebhookSpool, new_id  # noqa: E402
from mailserver.webhooks.urlcheck import Refused, Target  # noqa: E402

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


# -- signatures ---------------------------------------------------------------------

def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # The vector of the Standard Webhooks reference libraries (svix/webhooks tests).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    assert verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                  "v1,bogus " + expected)
    assert not verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, expected)


def test_generated_secrets_are_whsec_and_32_random_bytes() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and a != b
    with pytest.raises(ValueError, match="whsec_"):
        sign("secret", "msg_x", 1, b"")
    with pytest.raises(ValueError, match="24 to 64"):
        sign("whsec_c2hvcnQ=", "msg_x", 1, b"")


# -- SSRF -----------------------------------------------------------------------------

def _check(url: str, allowed: list[Any] | None = None, own: list[tuple[str, int]] | None = None,
           answers: dict[str, list[str]] | None = None) -> Target:
    def lookup(host: str) -> list[str]:
        if answers is None or host not in answers:
            raise Refused(f"{host}: no such host")
        return answers[host]

    return urlcheck.resolve_and_check(url, lookup, allowed or [], own or [])


@pytest.mark.parametrize("url,reason", [
    ("http://127.0.0.1/x", "127.0.0.1 is a loopback address"),
    ("http://[::1]:8080/", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1 is a loopback address"),
    ("https://10.1.2.3/", "10.1.2.3 is a private address"),
    ("https://192.168.0.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
    ("http://0.0.0.0:80/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "not a public"),
    ("ftp://203.0.113.1/", "only http:// and https://"),
    ("http:///path", "no host"),
    ("https://user:pw@hooks.example.com/", "user name or password"),
    ("https://hooks.example.com/a b", "spaces or control"),
    ("https://hooks.example.com/\r\nX-Injected: 1", "spaces or control"),
    ("javascript:alert(1)", "only http"),
    ("https://nowhere.example/", "nowhere.example: no such host"),
    ("http://rebind.example/", "127.0.0.1 is a loopback"),
    ("http://split.example/", "10.0.0.1 is a private"),
])
def test_urls_that_are_refused(url: str, reason: str) -> None:
    answers = {"rebind.example": ["127.0.0.1"], "split.example": ["8.8.8.8", "10.0.0.1"]}
    with pytest.raises(Refused, match=reason.replace("/", ".").replace("?", ".")):
        _check(url, answers=answers)


def test_allowed_networks_open_loopback_but_never_our_own_listeners() -> None:
    target = _check("http://127.0.0.5:8080/hook", LOOPBACK)
    assert (target.address, target.port, target.scheme) == ("127.0.0.5", 8080, "http")
    own = [("127.0.0.1", 8443), ("0.0.0.0", 2525)]
    with pytest.raises(Refused, match="127.0.0.1 port 8443 is this server's own"):
        _check("https://127.0.0.1:8443/", LOOPBACK, own)
    with pytest.raises(Refused, match="own listener"):
        _check("http://127.0.0.9:2525/", LOOPBACK, own)
    assert _check("http://127.0.0.1:8444/", LOOPBACK, own).port == 8444


def test_a_wildcard_listener_is_ours_on_every_address_of_the_machine() -> None:
    """Listening on 0.0.0.0:443, the server answers on its public address too: a hook
    URL naming that address and port is the server itself, allow-list or not."""
    own = [("0.0.0.0", 443), ("::", 25)]
    public = ipaddress.ip_address("203.0.113.5")
    anywhere = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    ours = {public, ipaddress.ip_address("2001:db8::5")}
    for address, port in ((public, 443), (ipaddress.ip_address("2001:db8::5"), 25)):
        assert urlcheck.refusal(address, port, anywhere, own, ours.__contains__) == (
            f"{address} port {port} is this server's own listener")
    assert urlcheck.refusal(public, 8443, anywhere, own, ours.__contains__) is None
    assert urlcheck.refusal(ipaddress.ip_address("203.0.113.6"), 443, anywhere, own,
                            ours.__contains__) is None


def test_the_machines_own_addresses_are_told_by_binding() -> None:
    assert urlcheck.is_local(ipaddress.ip_address("127.0.0.1"))
    assert urlcheck.is_local(ipaddress.ip_address("127.0.0.53"))  # all of 127/8 is local
    # TEST-NET-2, on no interface here; nothing is sent anywhere (bind only).
    assert not urlcheck.is_local(ipaddress.ip_address("198.51.100.77"))
    assert not urlcheck.is_local(ipaddress.ip_address("2001:db8::77"))


def test_a_public_name_is_pinned_to_its_checked_address() -> None:
    target = _check("https://hooks.example.com/in", answers={"hooks.example.com":
                                                             ["93.184.216.34"]})
    assert (target.host, target.address, target.port) == ("hooks.example.com",
                                                           "93.184.216.34", 443)


# -- the spool --------------------------------------------------------------------

def _record(key: str = "wh_1/Q1", kind: str = "delivered", hook: str = "wh_1") -> Record:
    record_id = new_id()
    return Record(record_id, hook, key, kind, time.time(),
                  {"id": record_id, "type": kind, "time": "t", "data": {}})


def test_spool_write_load_give_up_and_retry(tmp_path: Path) -> None:
    spool = WebhookSpool(tmp_path)
    spool.ensure_dirs()
    first, second = _record(), _record()
    spool.write([second, first])
    assert spool.ids() == sorted([first.id, second.id]) == [first.id, second.id]
    assert spool.load(first.id) == first
    spool.give_up(first, "gave up after 3 attempts: HTTP 500")
    assert spool.ids() == [second.id] and spool.ids(FAILED) == [first.id]
    assert spool.find(first.id)[1] == FAILED  # type: ignore[index]
    assert spool.load(first.id, FAILED).gave_up == "gave up after 3 attempts: HTTP 500"
    assert spool.retry(first.id, 1000.0)
    again = spool.load(first.id)
    assert (again.gave_up, again.next_try, spool.ids(FAILED)) == ("", 1000.0, [])
    assert not spool.retry(first.id, 1000.0)
    spool.done([first.id])
    assert spool.ids() == [second.id]
    assert list((tmp_path / "tmp").iterdir()) == []


def _writer(root: str, n: int) -> None:
    spool = WebhookSpool(Path(root))
    for _ in range(n):
        spool.write([_record()])


def test_several_processes_write_at_once_and_nothing_is_lost(tmp_path: Path) -> None:
    WebhookSpool(tmp_path).ensure_dirs()
    procs = [multiprocessing.get_context("fork").Process(target=_writer,
                                                         args=(str(tmp_path), 50))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    spool = WebhookSpool(tmp_path)
    ids = spool.ids()
    assert len(ids) == 200 and len(set(ids)) == 200
    assert all(spool.load(i).id == i for i in ids)


def test_an_unreadable_record_is_a_value_error(tmp_path: Path) -> None:
    spool = WebhookSpool(tmp_path)
    spool.ensure_dirs()
    bad = new_id()
    (tmp_path / PENDING / bad).write_bytes(b"{not json")
    with pytest.raises(ValueError, match="not a webhook record"):
        spool.load(bad)


# -- the dispatcher ----------------------------------------------------------------

def _config(tmp_path: Path, **webhooks: Any) -> Any:
    return config_from_dict({"data_dir": str(tmp_path), "domains": {"local": ["example.org"]},
                             "webhooks": {"retry_initial": 10, "retry_max": 40,
                                          "retry_for": 100, "concurrency": 2, **webhooks}})


class ScriptedSender:
    """Answers each POST from a script (status, or an exception, or None: never)."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.hanging: list[Deferred[int]] = []

    def post(self, target: Target, headers: dict[str, str], body: bytes) -> Deferred[int]:
        self.posts.append((target.url, headers, body))
        answer = self.answers[target.url].pop(0) if self.answers[target.url] else 200
        if answer is None:
            d: Deferred[int] = Deferred()
            self.hanging.append(d)
            return d
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def close(self) -> Deferred[None]:
        return defer.succeed(None)


def _dispatcher(tmp_path: Path, answers: dict[str, list[Any]],
                **webhooks: Any) -> tuple[Dispatcher, WebhookSpool, HookStore, Clock,
                                          ScriptedSender]:
    config = _config(tmp_path, **webhooks)
    spool = WebhookSpool(tmp_path / "webhooks")
    spool.ensure_dirs()
    store = HookStore(tmp_path / "webhooks", config)
    clock = Clock()
    clock.advance(1_000_000)
    sender = ScriptedSender(answers)

    def check(url: str) -> Target:
        if "forbidden" in url:
            raise Refused("10.0.0.1 is a private address (not in webhooks.allowed_networks)")
        scheme, host, port = urlcheck.parse(url)
        return Target(url, scheme, host, port, "127.0.0.1")

    dispatcher = Dispatcher(config, spool, store, FakeDisk(), check, sender,  # type: ignore[arg-type]
                            clock=clock, poll=1.0, in_thread=defer.maybeDeferred)
    return dispatcher, spool, store, clock, sender


def test_one_key_in_order_others_unaffected_backoff_and_give_up(tmp_path: Path) -> None:
    dispatcher, spool, store, clock, sender = _dispatcher(
        tmp_path, {"http://a.test/": [500, 302, 200, 200], "http://b.test/": [200]})
    a = store.add("alice@example.org", "http://a.test/", ["delivered", "deferred"], None, 0)
    b = store.add("bob@example.org", "http://b.test/", [], None, 0)
    now = clock.seconds()
    deferred, delivered = (_record(f"{a.id}/Q1", k, a.id) for k in ("deferred", "delivered"))
    other = _record(f"{b.id}/Q2", "delivered", b.id)
    for r in (deferred, delivered, other):
        r.created = now
    spool.write([deferred, delivered, other])
    dispatcher.startService()
    # First round: a's "deferred" (500) and b's event; a's "delivered" waits its turn.
    assert [(u, h["webhook-id"]) for u, h, _ in sender.posts] == [
        ("http://a.test/", deferred.id), ("http://b.test/", other.id)]
    assert spool.ids() == [deferred.id, delivered.id]
    saved = spool.load(deferred.id)
    assert (saved.attempts, saved.last_error, saved.next_try) == (1, "HTTP 500", now + 10)
    clock.advance(9)
    assert len(sender.posts) == 2, "not before the back-off"
    clock.advance(1)  # the retry: a redirect is not followed, it is a failure
    assert sender.posts[-1][1]["webhook-attempt"] == "2"
    assert sender.posts[-1][1]["webhook-id"] == deferred.id, "a retry keeps its id"
    assert spool.load(deferred.id).last_error == "HTTP 302 (redirects are not followed)"
    assert spool.load(deferred.id).next_try == now + 10 + 20
    clock.advance(20)
    assert [h["webhook-id"] for _, h, _ in sender.posts[-2:]] == [deferred.id, delivered.id]
    assert spool.ids() == [] and spool.ids(FAILED) == []
    for url, headers, body in sender.posts:
        secret = a.secret if "a.test" in url else b.secret
        assert verify(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body,
                      headers["webhook-signature"])
    dispatcher.stopService()


def test_given_up_after_retry_for_and_the_next_goes(tmp_path: Path) -> None:
    dispatcher, spool, store, clock, sender = _dispatcher(
        tmp_path, {"http://a.test/": [500] * 10 + [200]})
    a = store.add("alice@example.org", "http://a.test/", [], None, 0)
    first, second = _record(f"{a.id}/Q1", "deferred", a.id), _record(f"{a.id}/Q1",
                                                                      "failed", a.id)
    first.created = second.created = clock.seconds()
    spool.write([first, second])
    dispatcher.startService()
    for _ in range(20):
        clock.advance(10)
    # Tries at 0, 10, 30, 70 and, capped, at 100 = retry_for: then given up.
    failed = spool.load(first.id, FAILED)
    assert failed.attempts == 5
    assert failed.gave_up == "gave up after 5 attempts: HTTP 500"
    # Then the next one has its turn (its own day is over too: one try, given up).
    assert [h["webhook-id"] for _, h, _ in sender.posts] == [first.id] * 5 + [second.id]
    assert spool.load(second.id, FAILED).attempts == 1
    dispatcher.stopService()


def test_a_refused_url_fails_at_once_and_a_timeout_is_retried(tmp_path: Path) -> None:
    dispatcher, spool, store, clock, sender = _dispatcher(
        tmp_path, {"http://slow.test/": [defer.TimeoutError()]})
    bad = store.add("alice@example.org", "http://forbidden.test/", [], None, 0)
    slow = store.add("alice@example.org", "http://slow.test/", [], None, 0)
    r1, r2 = _record(f"{bad.id}/Q", "delivered", bad.id), _record(f"{slow.id}/Q",
                                                                  "delivered", slow.id)
    spool.write([r1, r2])
    dispatcher.startService()
    assert [u for u, _, _ in sender.posts] == ["http://slow.test/"]
    assert spool.load(r1.id, FAILED).gave_up == (
        "URL refused: 10.0.0.1 is a private address (not in webhooks.allowed_networks)")
    assert spool.load(r2.id).last_error == "no answer within 10s"
    dispatcher.stopService()


def test_log_lines_show_the_hooks_id_and_origin_never_its_urls_secret(
        tmp_path: Path) -> None:
    """Receivers take credentials in the URL (a secret path, ?token=): the log names the
    hook and its origin; `mailserver webhook show` has the rest."""
    url = "https://hooks.test:8443/services/T0/s3cretpath?token=t0ps3cret"
    dispatcher, spool, store, clock, sender = _dispatcher(tmp_path, {url: [500, 200]})
    hook = store.add("alice@example.org", url, [], None, 0)
    record = _record(f"{hook.id}/Q", "delivered", hook.id)
    spool.write([record])
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("mailserver.webhooks"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        dispatcher.startService()
        clock.advance(10)
    finally:
        globalLogPublisher.removeObserver(observe)
        dispatcher.stopService()
    assert [u for u, _, _ in sender.posts] == [url, url]
    assert lines == [
        f"webhooks: {record.id} delivered to {hook.id} https://hooks.test:8443/...: "
        "HTTP 500; retrying in 10s"]


@pytest.mark.parametrize(("url", "logged"), [
    ("https://hooks.test/", "https://hooks.test/"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
    ("https://hooks.test/x", "https://hooks.test/..."),
    ("https://hooks.test/?k=v", "https://hooks.test/..."),
    ("https://user:pw@hooks.test/", "https://hooks.test/"),
    ("http://[::1", "(not a URL)"),
])
def test_urls_as_logged(url: str, logged: str) -> None:
    assert urlcheck.shown(url) == logged


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    dispatcher, spool, store, clock, sender = _dispatcher(
        tmp_path, {"http://hang.test/": [None] * 5})
    hook = store.add("alice@example.org", "http://hang.test/", [], None, 0)
    spool.write([_record(f"{hook.id}/Q{i}", "delivered", hook.id) for i in range(5)])
    dispatcher.startService()
    assert len(sender.posts) == 2 == len(dispatcher.inflight)  # concurrency = 2
    sender.hanging[0].callback(200)
    assert len(sender.posts) == 3
    dispatcher.stopService()


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 10, 3600) for n in (1, 2, 3, 9, 30)] == [10, 20, 40, 2560, 3600]


# -- matching and payloads ---------------------------------------------------------

def test_users_and_domains_hooks_get_what_is_theirs(tmp_path: Path) -> None:
    secret_file = tmp_path / "domain.secret"
    secret_file.write_text(new_secret() + "\n")
    config = _config(tmp_path, domain=[{"domain": "example.org", "url": "https://d.test/",
                                        "events": ["received"], "secret_file":
                                        str(secret_file), "raw_limit": 100}])
    spool = WebhookSpool(tmp_path / "webhooks")
    spool.ensure_dirs()
    store = HookStore(tmp_path / "webhooks", config)
    alice = store.add("Alice@example.org", "https://a.test/", [], None, 10)
    publisher = WebhookPublisher(config, store, spool)
    stored = tmp_path / "1.M1P1Q1.host,S=30"
    stored.write_bytes(b"Subject: hi\n\n" + b"x" * 17)
    now = time.time()
    publisher.publish([
        DeliveryEvent("delivered", "Q1", "alice@example.org", "bob@example.net", now,
                      message_id="m1@example.org", submitter="alice@example.org",
                      status="2.0.0", diagnostic="250 ok", remote="mx.example.net"),
        DeliveryEvent("delivered", "Q2", "carol@example.org", "bob@example.net", now,
                      submitter="carol@example.org"),  # nobody's hook wants it
        DeliveryEvent("received", "1", "x@example.net", "alice@example.org", now,
                      mailbox="alice@example.org", size=30, stored_as=stored.name,
                      extra={"path": str(stored)}),
    ])
    records = [spool.load(i) for i in spool.ids()]
    got = sorted((r.hook, r.type, r.key.split("/")[1]) for r in records)
    assert got == sorted([(alice.id, "delivered", "Q1"), (alice.id, "received", "1"),
                          (store.domain[0].id, "received", "1")])
    by = {(r.hook, r.type): r.payload["data"] for r in records}
    assert by[(alice.id, "delivered")] == {
        "queue_id": "Q1", "message_id": "m1@example.org", "sender": "alice@example.org",
        "recipient": "bob@example.net", "submitter": "alice@example.org",
        "status": "2.0.0", "diagnostic": "250 ok", "remote": "mx.example.net",
        "attempts": 0}
    # alice's raw_limit (10) is below the size: a link; the domain's (100): the bytes.
    assert by[(alice.id, "received")]["fetch"] == (
        "https://localhost/api/v1/folders/INBOX/messages?name=1.M1P1Q1.host%2CS%3D30")
    import base64
    assert base64.b64decode(by[(store.domain[0].id, "received")]["raw"]) == \
        stored.read_bytes()
    assert json.loads(records[0].to_json())["payload"]["type"] in ("delivered", "received")


def test_message_id_of_the_header_only() -> None:
    assert message_id_of(b"Subject: x\nMessage-ID: <a.b@example.org>\n\nbody") == \
        "a.b@example.org"
    assert message_id_of(b"Message-Id:\n <folded@example.org>\n\n") == "folded@example.org"
    assert message_id_of(b"Subject: x\n\nMessage-ID: <in-body@example.org>\n") == ""


def test_the_documents_examples_fit_their_schemas() -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "api"))
    from openapi_check import check_schema, document

    schemas = document()["components"]["schemas"]
    for name in ("WebhookOutcomeEvent", "WebhookReceivedEvent"):
        check_schema(name, schemas[name]["example"])
        check_schema("WebhookEvent", schemas[name]["example"])
    with pytest.raises(AssertionError, match="not valid under any"):
        bad = dict(schemas["WebhookOutcomeEvent"]["example"])
        bad["data"] = {k: v for k, v in bad["data"].items() if k != "status"}
        check_schema("WebhookEvent", bad)


def test_domain_hooks_in_the_config_are_checked(tmp_path: Path) -> None:
    from mailserver.config import render_example
    from mailserver.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data_dir": str(tmp_path), "domains": {"local": ["example.org"]},
                          "webhooks": {"timeout": 0, "domain": [
                              {"domain": "example.com", "url": "ftp://x", "events": ["sent"],
                               "secret_file": str(tmp_path / "missing")},
                              {"domain": "example.org", "url": "https://a.test/"}]}})
    assert caught.value.problems == [
        "webhooks.timeout: must be at least 1",
        "webhooks.domain[0].domain: not one of domains.local: 'example.com'",
        "webhooks.domain[0].url: expected an http(s):// URL, got 'ftp://x'",
        "webhooks.domain[0].events: unknown event 'sent' (one of delivered, deferred, "
        "failed, delay_warning, received)",
        f"webhooks.domain[0].secret_file: cannot read {tmp_path / 'missing'}",
        "webhooks.domain[1].secret_file: needed (the signing secret's file)"]
    example = render_example()
    assert "# [[webhooks.domain]]\n# domain = \"example.org\"\n" in example
    import tomllib
    assert tomllib.loads(example)["webhooks"]["retry_for"] == 86400


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(after: str, language: str) -> str:
    """The first ```language block after the line containing `after` in README.md."""
    text = README.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start:text.index("```", start)]


def test_the_readmes_verification_snippet_accepts_ours_and_nothing_else() -> None:
    namespace: dict[str, Any] = {}
    exec(readme_block("Verifying it in Python:", "python"), namespace)  # noqa: S102
    readme_verify = namespace["verify"]
    secret, body, now = new_secret(), b'{"id":"msg_1","type":"received"}', int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "msg_1", now, body)}
    assert readme_verify(secret, headers, body)
    assert not readme_verify(secret, headers, body + b" ")
    assert not readme_verify(new_secret(), headers, body)
    old = {**headers, "webhook-timestamp": str(now - 600),
           "webhook-signature": sign(secret, "msg_1", now - 600, body)}
    assert not readme_verify(secret, old, body), "a replay ten minutes later"


def test_a_user_may_register_max_per_user_hooks(tmp_path: Path) -> None:
    store = HookStore(tmp_path, _config(tmp_path, max_per_user=2))
    first = store.add("alice@example.org", "https://a.test/1", [], None, 0)
    store.add("ALICE@example.org", "https://a.test/2", ["failed"], None, 0)
    with pytest.raises(ValueError, match="at most 2 webhooks per user"):
        store.add("alice@example.org", "https://a.test/3", [], None, 0)
    assert store.add("bob@example.org", "https://b.test/", [], None, 0).owner == \
        "bob@example.org"
    assert store.delete("alice@example.org", first.id)
    assert not store.delete("alice@example.org", first.id)
    assert [h.url for h in store.users()["alice@example.org"]] == ["https://a.test/2"]
    assert oct((tmp_path / "hooks.json").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "hooks.json").write_bytes(b"{damaged")
    assert store.users() == {}, "a damaged file is no hooks, not a crash"
