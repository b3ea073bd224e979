"""XCLIENT (smtp/xclient.py) in the SMTP session, over StringTransport: offered to and
accepted from cluster.trusted_proxies only, each attribute, the grammar, out-of-order
uses, and nginx's exact sequence (EHLO, XCLIENT ADDR= LOGIN= NAME=, 220, the client's
EHLO again) ending in a message relayed for the user the proxy logged in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import Events, FakeReactor, FakeTarget
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailserver.abuse.dnsbl import Blocklists, parse_zones
from mailserver.app.limits import ConnectionCounter, LimitedFactory
from mailserver.auth.checker import make_portal
from mailserver.auth.directory import RecipientDirectory
from mailserver.config import config_from_dict
from mailserver.core.throttle import LoginThrottle
from mailserver.delivery.router import DeliveryRouter
from mailserver.smtp.listener import MX_POLICY, SUBMISSION_POLICY
from mailserver.smtp.server import SessionPolicy, SMTPServerFactory

PROXY = "127.0.0.2"
XCLIENT_EHLO = "250 XCLIENT ADDR PORT NAME HELO PROTO LOGIN DESTADDR DESTPORT"
#: Sessions of the running test: their idle timeouts are on the global reactor, where
#: a trial test run after this module (tests/webhooks) would find them (dirty reactor).
_OPEN: list[Session] = []


@pytest.fixture(autouse=True)
def _cancel_idle_timeouts() -> Iterator[None]:
    yield
    for session in _OPEN:
        session.protocol.setTimeout(None)
    _OPEN.clear()


class Session:
    def __init__(self, tmp_path: Path, policy: SessionPolicy = MX_POLICY,
                 peer_ip: str = PROXY, blocklists: Blocklists | None = None,
                 counter: ConnectionCounter | None = None) -> None:
        config = config_from_dict({
            "hostname": "mx.test", "data_dir": str(tmp_path),
            "domains": {"local": ["example.org"]},
            "cluster": {"trusted_proxies": [f"{PROXY}/32"]}})
        config.data_dir.mkdir(parents=True, exist_ok=True)
        config.users_file.write_text("alice@example.org:{PLAIN}alicepw\n"
                                     "moved@example.org:{PLAIN}pw::::::nologin\n"
                                     "banned@example.org:{PLAIN}pw::::::deny=yes\n")
        config.aliases_file.write_text("")
        self.reactor = FakeReactor()
        directory = RecipientDirectory(config)
        self.events = Events()
        self.target = FakeTarget("local", self.events, hold=False)
        self.queue = FakeTarget("queue", self.events, hold=False)
        self.throttle = LoginThrottle(clock=self.reactor)
        factory = SMTPServerFactory(
            config, DeliveryRouter(config, directory, self.target, self.queue),
            tls_options=object(),  # type: ignore[arg-type]
            policy=policy, portal=make_portal(config, directory, reactor=self.reactor,
                                              threadpool=self.reactor.pool),  # type: ignore[arg-type]
            senders=directory, login_throttle=self.throttle, blocklists=blocklists)
        peer = IPv4Address("TCP", peer_ip, 4000)
        self.transport = StringTransport(peerAddress=peer)
        if counter is None:
            self.protocol = factory.buildProtocol(peer)
            self.protocol.makeConnection(self.transport)
        else:  # behind the connection limits, as every listener is (app/limits.py)
            wrapper = LimitedFactory(factory, counter, b"421 busy\r\n", "smtp"
                                     ).buildProtocol(peer)
            wrapper.makeConnection(self.transport)
            self.protocol = wrapper.wrappedProtocol
        _OPEN.append(self)
        assert self.replies() == ["220 mx.test ESMTP mailserver"]

    def replies(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return out.split("\r\n")[:-1]

    def send(self, line: str) -> list[str]:
        self.protocol.dataReceived(line.encode() + b"\r\n")
        return self.replies()


@pytest.fixture
def mx(tmp_path: Path) -> Session:
    return Session(tmp_path)


def received(target: FakeTarget) -> str:
    """The Received header we added, unfolded."""
    data = target.transactions[-1].data.decode().replace("\r\n", "\n")
    header, = [line for line in data.replace("\n\t", " ").split("\n")
               if line.startswith("Received:")]
    return header


def test_ehlo_offers_xclient_only_to_a_trusted_proxy(tmp_path: Path) -> None:
    trusted = Session(tmp_path / "a")
    assert XCLIENT_EHLO in trusted.send("EHLO nginx.test")
    other = Session(tmp_path / "b", peer_ip="127.0.0.1")
    assert not any("XCLIENT" in line for line in other.send("EHLO client.test"))


def test_xclient_from_anyone_else_is_550_and_changes_nothing(tmp_path: Path) -> None:
    s = Session(tmp_path, peer_ip="127.0.0.1")
    s.send("EHLO client.test")
    assert s.send("XCLIENT ADDR=192.0.2.7") == ["550 5.7.0 Error: insufficient authorization"]
    assert s.protocol.peer_ip == "127.0.0.1"
    assert s.send("MAIL FROM:<x@remote.test>") == ["250 2.1.0 Ok"], "session goes on as before"


def test_nginx_sequence_relays_for_the_user_it_logged_in(tmp_path: Path) -> None:
    """ngx_mail_proxy_module: EHLO <server_name>, XCLIENT ADDR= LOGIN= NAME=, then the
    client's own EHLO, MAIL, RCPT, DATA, on the plaintext submission port."""
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("EHLO nginx.test")
    assert s.send("XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org NAME=[UNAVAILABLE]") == [
        "220 mx.test ESMTP mailserver"]
    assert s.send("EHLO laptop.example")[0] == "250-mx.test Hello laptop.example [192.0.2.7]"
    assert s.send("MAIL FROM:<alice@example.org>") == ["250 2.1.0 Ok"]
    assert s.send("RCPT TO:<friend@remote.test>") == ["250 2.1.5 Ok"]
    assert s.send("DATA")[0].startswith("354")
    s.protocol.dataReceived(b"From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
    assert s.replies()[0].startswith("250 2.0.0")
    header = received(s.queue)
    assert header.startswith("Received: from laptop.example ([192.0.2.7])")
    assert "with ESMTPA" in header


def test_a_session_without_login_is_not_authenticated(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("EHLO nginx.test")
    s.send("XCLIENT ADDR=192.0.2.7 NAME=[UNAVAILABLE]")
    s.send("EHLO laptop.example")
    assert s.send("MAIL FROM:<alice@example.org>") == ["530 5.7.0 Authentication required"]


def test_login_sender_is_still_checked(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org HELO=laptop.example")
    assert s.send("MAIL FROM:<bob@example.org>")[0].startswith("553 5.7.1")


def test_each_attribute(mx: Session) -> None:
    assert mx.send("XCLIENT ADDR=IPV6:2001:db8::7 PORT=40000 NAME=laptop.example "
                   "HELO=laptop PROTO=SMTP DESTADDR=198.51.100.1 DESTPORT=25") == [
        "220 mx.test ESMTP mailserver"]
    p = mx.protocol
    assert (p.peer_ip, p.client_name, p.helo, p.esmtp, p.user) == (
        "2001:db8::7", "laptop.example", "laptop", False, None)
    assert mx.send("MAIL FROM:<x@remote.test> BODY=8BITMIME") == [
        "555 5.5.4 MAIL parameters need EHLO"], "PROTO=SMTP: no ESMTP parameters"
    mx.send("RSET")
    mx.send("MAIL FROM:<x@remote.test>")
    mx.send("RCPT TO:<alice@example.org>")
    mx.send("DATA")
    mx.protocol.dataReceived(b"Subject: x\r\n\r\nx\r\n.\r\n")
    assert received(mx.target).startswith(
        "Received: from laptop ([IPv6:2001:db8::7])")
    assert "with SMTP " in received(mx.target)


def test_xtext_values_are_decoded(mx: Session) -> None:
    mx.send("XCLIENT HELO=a+2Bb+3Dc LOGIN=al+69ce@example.org")
    assert (mx.protocol.helo, mx.protocol.user) == ("a+b=c", "alice@example.org")


@pytest.mark.parametrize(("given", "user"), [
    ("Alice@Example.ORG", "alice@example.org"),
    ("alice", "alice@example.org"),  # a bare name: the first local domain, as at AUTH
    ("ALICE", "alice@example.org"),
])
def test_login_is_canonicalised_as_the_directory_does(tmp_path: Path, given: str,
                                                      user: str) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("EHLO nginx.test")
    assert s.send(f"XCLIENT ADDR=192.0.2.7 LOGIN={given}") == ["220 mx.test ESMTP mailserver"]
    assert s.protocol.user == user
    s.send("EHLO laptop.example")
    assert s.send("MAIL FROM:<alice@example.org>") == ["250 2.1.0 Ok"]


@pytest.mark.parametrize("login", ["nobody@example.org", "moved@example.org",
                                   "banned@example.org", "alice@elsewhere.test"])
def test_login_of_a_user_who_may_not_log_in_is_550_and_changes_nothing(
        tmp_path: Path, login: str) -> None:
    """Unknown, nologin, deny: never an authenticated session, whatever the proxy says."""
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("EHLO nginx.test")
    assert s.send(f"XCLIENT ADDR=192.0.2.7 LOGIN={login}") == [
        "550 5.7.8 Error: LOGIN names no user who may log in"]
    assert (s.protocol.peer_ip, s.protocol.user) == (PROXY, None)
    assert XCLIENT_EHLO in s.send("EHLO nginx.test"), "still the proxy's session"
    assert s.send("MAIL FROM:<alice@example.org>") == ["530 5.7.0 Authentication required"]


def test_login_with_an_unreadable_users_file_is_421(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY)
    users = tmp_path / "users"
    assert s.protocol.factory.senders.users_file.path == users
    users.unlink()
    users.mkdir()  # exists, cannot be read as a file, and was never read
    assert s.send("XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org") == [
        "421 4.3.0 mx.test Error: the user directory is unavailable; try again later"]
    assert s.transport.disconnecting and s.protocol.user is None


def test_unavailable_address_keeps_a_real_one(mx: Session) -> None:
    mx.send("XCLIENT ADDR=[UNAVAILABLE] NAME=[TEMPUNAVAIL]")
    assert mx.protocol.peer_ip == PROXY and mx.protocol.client_name is None


def test_inside_a_transaction_is_503(mx: Session) -> None:
    mx.send("EHLO nginx.test")
    mx.send("MAIL FROM:<x@remote.test>")
    assert mx.send("XCLIENT ADDR=192.0.2.7") == ["503 5.5.1 Error: MAIL transaction in progress"]
    assert mx.protocol.peer_ip == PROXY


def test_before_ehlo_and_twice(mx: Session) -> None:
    """Twice, while the session still speaks for the proxy (no ADDR named a client)."""
    assert mx.send("XCLIENT NAME=first.example PROTO=SMTP") == [
        "220 mx.test ESMTP mailserver"]
    assert mx.send("MAIL FROM:<x@remote.test>") == ["503 5.5.1 Error: send HELO/EHLO first"]
    assert mx.send("XCLIENT ADDR=192.0.2.8 HELO=second.example") == [
        "220 mx.test ESMTP mailserver"]
    assert (mx.protocol.peer_ip, mx.protocol.helo) == ("192.0.2.8", "second.example")
    assert mx.send("MAIL FROM:<x@remote.test>") == ["250 2.1.0 Ok"]


def test_the_client_behind_the_proxy_cannot_send_xclient_itself(tmp_path: Path) -> None:
    """After nginx's XCLIENT ADDR= LOGIN=, the lines are the client's own (nginx relays
    them unchanged): an XCLIENT among them would let alice become bob."""
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("EHLO nginx.test")
    s.send("XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org NAME=[UNAVAILABLE]")
    assert not any("XCLIENT" in line for line in s.send("EHLO laptop.example"))
    assert s.send("XCLIENT ADDR=192.0.2.66 LOGIN=bob@example.org") == [
        "550 5.7.0 Error: insufficient authorization"]
    assert (s.protocol.peer_ip, s.protocol.user) == ("192.0.2.7", "alice@example.org")
    assert s.send("MAIL FROM:<bob@example.org>")[0].startswith("553 5.7.1")


def test_an_xclient_naming_another_trusted_proxy_may_be_followed_by_one(
        mx: Session) -> None:
    assert mx.send(f"XCLIENT ADDR={PROXY}") == ["220 mx.test ESMTP mailserver"]
    assert mx.send("XCLIENT ADDR=192.0.2.7") == ["220 mx.test ESMTP mailserver"]
    assert mx.protocol.peer_ip == "192.0.2.7"


def test_xclient_forgets_the_helo_and_login_before_it(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("XCLIENT LOGIN=alice@example.org HELO=a.example")
    s.send("XCLIENT ADDR=192.0.2.9")
    assert (s.protocol.helo, s.protocol.user) == (None, None)


@pytest.mark.parametrize("line", [
    "XCLIENT",
    "XCLIENT ",
    "XCLIENT FOO=bar",
    "XCLIENT ADDR",                         # no "="
    "XCLIENT ADDR=192.0.2.7 ADDR=192.0.2.8",  # twice
    "XCLIENT ADDR=192.0.2.777",
    "XCLIENT ADDR=2001:db8::7",             # IPv6 without IPV6:
    "XCLIENT ADDR=IPV6:192.0.2.7",
    "XCLIENT PORT=65536",
    "XCLIENT PORT=-1",
    "XCLIENT PROTO=LMTP",
    "XCLIENT HELO=a+zz",                    # not xtext
    "XCLIENT HELO=a+0D+0AMAIL",             # CR LF smuggled in hexchars
    "XCLIENT HELO=",                        # empty
    "XCLIENT NAME=a=b",                     # "=" must be +3D
    "XCLIENT ADDR=192.0.2.7  NAME=x",       # two spaces
    "XCLIENT HELO=" + "a" * 300,
])
def test_malformed_is_501_and_changes_nothing(mx: Session, line: str) -> None:
    reply, = mx.send(line)
    assert reply.startswith("501 5.5.4 "), reply
    assert (mx.protocol.peer_ip, mx.protocol.helo) == (PROXY, None)


def test_the_login_throttle_counts_the_forwarded_client(tmp_path: Path) -> None:
    s = Session(tmp_path, SUBMISSION_POLICY)
    s.send("XCLIENT ADDR=192.0.2.9")
    assert any(line[4:].startswith("AUTH ") for line in s.send("EHLO laptop.example")), (
        "AUTH in the clear to a trusted proxy (it did TLS with the client)")
    s.send("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n")  # alice, wrong password
    s.reactor.advance(5)
    assert s.replies() == ["535 5.7.8 Authentication credentials invalid"]
    assert len(s.throttle._failures["192.0.2.9"]) == 1
    assert PROXY not in s.throttle._failures


def test_the_connection_limit_counts_the_forwarded_client(tmp_path: Path) -> None:
    counter = ConnectionCounter(100, 1)
    assert counter.admit("192.0.2.7")  # the client already has its one connection
    s = Session(tmp_path / "a", counter=counter)
    assert dict(counter.by_ip) == {"192.0.2.7": 1, PROXY: 1}
    assert s.send("XCLIENT ADDR=192.0.2.8") == ["220 mx.test ESMTP mailserver"]
    assert dict(counter.by_ip) == {"192.0.2.7": 1, "192.0.2.8": 1}, "moved off the proxy"
    t = Session(tmp_path / "b", counter=counter)
    assert t.send("XCLIENT ADDR=192.0.2.7") == [
        "421 4.7.0 mx.test Error: too many connections from your address"]
    assert t.transport.disconnecting
    assert dict(counter.by_ip) == {"192.0.2.7": 1, "192.0.2.8": 1, PROXY: 1}


def test_port_25_asks_the_blocklists_about_the_forwarded_client(tmp_path: Path) -> None:
    asked: list[str] = []

    def lookup(name: str) -> defer.Deferred[list[str]]:
        asked.append(name)
        return defer.succeed(["127.0.0.2"] if name.startswith("66.2.0.192.") else [])

    blocklists = Blocklists(parse_zones(["bl.test"]), 1, lookup)
    s = Session(tmp_path / "a", blocklists=blocklists)
    assert s.send("XCLIENT ADDR=192.0.2.7") == ["220 mx.test ESMTP mailserver"]
    assert not s.transport.disconnecting
    t = Session(tmp_path / "b", blocklists=blocklists)
    assert t.send("XCLIENT ADDR=192.0.2.66") == [
        "554 5.7.1 mx.test Error: your address is listed by bl.test"]
    assert t.transport.disconnecting
    assert asked == ["7.2.0.192.bl.test", "66.2.0.192.bl.test"]
