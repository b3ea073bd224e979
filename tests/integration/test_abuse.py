"""The abuse defences over real sockets, from several loopback source addresses
(127.0.0.N), with worker processes: lock-outs shared by every service and process,
connection limits across processes, sending quotas, pregreet, directory harvest, the
ban command on a running server, and the fail2ban filter against the real log."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from server_harness import PASSWORD, RunningServer, admin
from wire import Wire

ROOT = Path(__file__).resolve().parents[2]
LISTEN = {"smtp": "tcp:0:interface=127.0.0.1", "submission": "tcp:0:interface=127.0.0.1"}
PLAINTEXT = {"allow_plaintext_without_tls": True}
MESSAGE = b"From: alice@example.org\r\nSubject: q\r\n\r\nhi\r\n.\r\n"


class From(Wire):
    """A Wire whose connection comes from `source` (any 127.x address is ours)."""

    def __init__(self, address: tuple[str, int], source: str, timeout: float = 15) -> None:
        self.sock = socket.create_connection(address, timeout, source_address=(source, 0))
        self.buffer = b""


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def auth(server: RunningServer, source: str, password: str,
         user: str = "alice@example.org") -> str:
    wire = From(server.address("submission"), source)
    try:
        wire.greet()
        return wire.command(f"AUTH PLAIN {plain(user, password)}")
    finally:
        wire.close()


def abuse_lines(server: RunningServer) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if " abuse: " in line]


def test_guesser_locked_out_across_processes_and_lifted_by_ban_del(server_factory) -> None:
    server = server_factory("lock", processes=2, listen=LISTEN, auth=PLAINTEXT,
                            abuse={"login_failures": 3, "login_delay_max": 1})
    for user in ("alice@example.org", "nobody@example.org", "bob@example.org"):
        assert auth(server, "127.0.0.7", "guess", user) == (
            "535 5.7.8 Authentication credentials invalid")
    locked = ("421 4.7.0 mx.test.example Error: too many failed authentications from "
              "your address; try again later")
    # Every new connection, whichever process takes it; the right password too.
    for _ in range(4):
        assert auth(server, "127.0.0.7", PASSWORD) == locked
    # Another address logs in: it pays nothing for 127.0.0.7's failures (a right
    # password is never delayed: tests/abuse/test_delays.py, on a clock).
    assert auth(server, "127.0.0.8", PASSWORD) == "235 2.7.0 Authentication successful"
    listed = admin(server.config_path, "ban", "list").stdout
    assert listed.startswith("127.0.0.7  until ")
    assert admin(server.config_path, "ban", "del", "127.0.0.7").returncode == 0
    assert auth(server, "127.0.0.7", PASSWORD) == "235 2.7.0 Authentication successful"
    # ban add on the running server: refused from the next AUTH on.
    admin(server.config_path, "ban", "add", "127.0.0.9")
    assert auth(server, "127.0.0.9", PASSWORD) == locked
    lines = abuse_lines(server)
    assert sum("reason=auth-failed" in line and "ip=127.0.0.7" in line
               for line in lines) == 3
    lockout = [line for line in lines if "abuse: lockout" in line and "127.0.0.7" in line]
    assert len(lockout) == 1
    assert re.search(r"abuse: lockout service=submission ip=127\.0\.0\.7 "
                     r"account=bob@example\.org reason=login-failures failures=3 until=\d+$",
                     lockout[0])
    assert sum("reason=locked-out" in line for line in lines) == 5
    assert not any("ip=127.0.0.8 " in line for line in lines)
    assert not any(PASSWORD in line or "guess" in line for line in lines)


def test_account_failures_answered_alike_whether_the_account_exists(server_factory) -> None:
    """The same reply, and the same abuse line, for an account that exists and one that
    does not. How long each waits (0.75 s, doubled per failure, capped) is asserted on a
    clock in tests/abuse/test_delays.py: a wall-clock bound here failed under load."""
    server = server_factory("delay", listen=LISTEN, auth=PLAINTEXT,
                            abuse={"login_failures": 100, "login_delay_max": 2})
    for user in ("alice@example.org", "nobody@example.org"):
        for i in range(3):  # each from another address: the delay is per account
            assert auth(server, f"127.0.1.{i + 1}", "wrong", user) == (
                "535 5.7.8 Authentication credentials invalid")
    assert auth(server, "127.0.1.9", PASSWORD) == "235 2.7.0 Authentication successful"
    lines = abuse_lines(server)
    for user in ("alice@example.org", "nobody@example.org"):
        assert [line.partition(" abuse: ")[2] for line in lines if f"account={user}" in line] \
            == [f"refused service=submission ip=127.0.1.{i + 1} account={user} "
                "reason=auth-failed" for i in range(3)]


def test_concurrent_connections_per_ip_across_processes(server_factory) -> None:
    server = server_factory("conc", processes=2, limits={"connections_per_ip": 2})
    held = [From(server.address(), "127.0.0.4") for _ in range(2)]
    for wire in held:
        assert wire.code() == 220
    for _ in range(4):  # whichever process the kernel picks
        extra = From(server.address(), "127.0.0.4")
        assert extra.text() == "421 4.7.0 mx.test.example Error: too many connections"
        assert extra.closed()
    other = From(server.address(), "127.0.0.5")
    assert other.code() == 220
    held[0].command("QUIT")
    held[0].close()
    # The freed place comes back once the server has seen the close (not at once).
    deadline = time.monotonic() + 30
    while True:
        again = From(server.address(), "127.0.0.4")
        if again.code() == 220:
            break
        again.close()
        assert time.monotonic() < deadline, "127.0.0.4 still refused after one closed"
        time.sleep(0.1)
    assert "reason=too-many-connections" in "\n".join(abuse_lines(server))


def send(wire: Wire, rcpts: list[str]) -> list[str]:
    answers = [wire.command("MAIL FROM:<alice@example.org>")]
    if not answers[0].startswith("250"):
        return answers
    answers += [wire.command(f"RCPT TO:<{r}>") for r in rcpts]
    if any(a.startswith("250") for a in answers[1:]):
        answers.append(wire.command("DATA"))
        wire.send(MESSAGE)
        answers.append(wire.text())
    return answers


def submission(server: RunningServer, source: str) -> Wire:
    wire = From(server.address("submission"), source)
    wire.greet()
    assert wire.command(f"AUTH PLAIN {plain('alice@example.org', PASSWORD)}").startswith("235")
    return wire


def test_sending_quota_across_sessions_and_processes(server_factory) -> None:
    server = server_factory("quota", processes=2, listen=LISTEN, auth=PLAINTEXT)
    (server.data_dir / "sending_limits").write_text(
        "@example.org 100 100\nalice@example.org 3 3\n")
    one = submission(server, "127.0.0.21")
    assert send(one, ["bob@example.org"])[-1].startswith("250 2.0.0 Ok: queued")
    one.close()
    two = submission(server, "127.0.0.22")
    answers = send(two, ["bob@example.org", "carol@example.net", "alice@example.org"])
    assert answers[1:4] == ["250 2.1.5 Ok", "250 2.1.5 Ok",
                            "550 5.7.1 Error: daily recipient limit reached"]
    assert answers[-1].startswith("250 2.0.0 Ok: queued")
    answers = send(two, ["bob@example.org"])
    assert answers == ["250 2.1.0 Ok", "550 5.7.1 Error: daily recipient limit reached"]
    two.command("RSET")
    assert two.command("MAIL FROM:<alice@example.org>") == (
        "451 4.7.1 Error: hourly sending limit reached; try again later")
    two.close()
    out = admin(server.config_path, "user", "quota", "alice@example.org").stdout
    assert out == ("alice@example.org (limits from user, 0 = none):\n"
                   "  messages this hour:   3 of 3\n"
                   "  recipients today:     3 of 3\n"
                   "  storage:              0b of no limit\n"
                   "  messages stored:      0 of no limit\n")
    # The admin raises the limits; the running server reads them on the next MAIL.
    admin(server.config_path, "user", "quota", "alice@example.org",
          "--messages-per-hour", "10", "--recipients-per-day", "10")
    three = submission(server, "127.0.0.23")
    assert send(three, ["bob@example.org"])[-1].startswith("250 2.0.0 Ok: queued")
    three.close()
    assert len(server.messages("bob@example.org")) == 3
    assert len(server.messages("carol@example.net")) == 1
    lines = abuse_lines(server)
    assert sum("account=alice@example.org reason=daily-quota" in line for line in lines) == 2
    assert sum("reason=hourly-quota" in line for line in lines) == 1


def test_pregreet_client_refused_patient_and_trusted_ones_served(server_factory) -> None:
    """The bot's 554 shows the banner was held; how long (pregreet_wait) is asserted on a
    clock in tests/abuse/test_delays.py. A trusted client may talk first."""
    server = server_factory("pregreet", abuse={"pregreet_wait": 1,
                                               "trusted_networks": ["127.0.0.30/32"]})
    bot = From(server.address(), "127.0.0.31")
    bot.send(b"EHLO bot.example\r\nMAIL FROM:<a@b.example>\r\n")
    assert bot.text() == "554 5.7.1 mx.test.example Error: you talked before my greeting"
    assert bot.closed()
    patient = From(server.address(), "127.0.0.32")
    assert patient.text() == "220 mx.test.example ESMTP mailserver"
    assert patient.command("QUIT").startswith("221")
    trusted = From(server.address(), "127.0.0.30")
    trusted.send(b"EHLO trusted.example\r\n")  # before the banner: no pregreet test
    assert trusted.text() == "220 mx.test.example ESMTP mailserver"
    assert trusted.code() == 250
    assert any("service=smtp ip=127.0.0.31 account=- reason=pregreet" in line
               for line in abuse_lines(server))


def test_directory_harvest_tarpit_then_421(server_factory) -> None:
    server = server_factory("harvest", abuse={"unknown_recipients": 2, "tarpit_delay": 1})
    wire = From(server.address(), "127.0.0.40")
    wire.greet()
    assert wire.command("MAIL FROM:<x@spam.example>") == "250 2.1.0 Ok"
    # The third and fourth 550 come after tarpit_delay (asserted on a clock in
    # tests/abuse/test_delays.py); the 421 comes from the same tarpit.
    for i in range(4):
        assert wire.command(f"RCPT TO:<guess{i}@example.org>") == (
            "550 5.1.1 Error: user unknown")
    assert wire.command("RCPT TO:<guess9@example.org>") == (
        "421 4.7.0 mx.test.example Error: too many unknown recipients; closing")
    assert wire.closed()
    # Another address is not tarpitted, and real users are still served.
    other = From(server.address(), "127.0.0.41")
    other.greet()
    other.command("MAIL FROM:<x@ok.example>")
    assert other.command("RCPT TO:<nobody@example.org>") == "550 5.1.1 Error: user unknown"
    assert other.command("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"


def test_port_25_message_rate_per_address(server_factory) -> None:
    server = server_factory("rate", abuse={"smtp_messages_per_hour": 2,
                                           "smtp_recipients_per_hour": 3})
    wire = From(server.address(), "127.0.0.50")
    wire.greet()
    assert send(wire, ["bob@example.org", "alice@example.org"])[-1].startswith("250 2.0.0")
    answers = send(wire, ["bob@example.org", "carol@example.net"])
    assert answers[1:3] == ["250 2.1.5 Ok", "450 4.7.1 Error: too many recipients from "
                                             "your address; try again later"]
    assert wire.command("MAIL FROM:<x@ok.example>") == (
        "450 4.7.1 Error: too much mail from your address; try again later")
    other = From(server.address(), "127.0.0.51")
    other.greet()
    assert send(other, ["bob@example.org"])[-1].startswith("250 2.0.0")


def test_refused_network(server_factory) -> None:
    server = server_factory("refused", abuse={"refused_networks": ["127.0.0.60/31"]})
    wire = From(server.address(), "127.0.0.61")
    assert wire.text() == "421 4.7.0 mx.test.example Error: too many connections"
    assert From(server.address(), "127.0.0.62").code() == 220


def test_fail2ban_filter_matches_the_real_log(server_factory) -> None:
    server = server_factory("f2b", processes=2, listen=LISTEN, auth=PLAINTEXT,
                            abuse={"login_failures": 2, "login_delay_max": 1,
                                   "pregreet_wait": 1})
    for source in ("127.0.0.70", "127.0.0.70", "127.0.0.70", "127.0.0.71"):
        auth(server, source, "guess")
    bot = From(server.address(), "127.0.0.72")
    bot.send(b"HELO x\r\n")
    bot.text()
    server.stop()
    expected = len(abuse_lines(server))
    assert expected == 6  # 3+1 failures, 1 lock-out, 1 pregreet (the 3rd AUTH: locked)
    fail2ban_regex = shutil.which("fail2ban-regex") or "/usr/bin/fail2ban-regex"
    result = subprocess.run(
        [fail2ban_regex, str(server.log_path),
         str(ROOT / "etc" / "fail2ban" / "filter.d" / "mailserver.conf")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # Every abuse line, and none of the others (start-up, sessions, the AUTH log).
    found = re.search(r"Lines: (\d+) lines, 0 ignored, (\d+) matched", result.stdout)
    assert found, result.stdout
    assert int(found.group(2)) == expected and int(found.group(1)) > 2 * expected


def test_dnsbl_before_the_banner(server_factory) -> None:
    """A twisted.names server on loopback answers the blocklist queries: listed with
    enough weight is refused before the banner; under the threshold, NXDOMAIN or
    SERVFAIL the client is served and its mail delivered; the server stays up."""
    from dns_server import DNSServer

    zone = {
        "80.0.0.127.bl.test": {"A": ["127.0.0.2"]},
        "81.0.0.127.small.test": {"A": ["127.0.0.2"]},
        "82.0.0.127.bl.test": {"SERVFAIL": True},
        "83.0.0.127.bl.test": {"A": ["127.255.255.254"]},  # an error code, no listing
        "85.0.0.127.bl.test": {"TIMEOUT": True},
        # Listed by the blocklist, and by an allowlist whose negative weight cancels it.
        "86.0.0.127.bl.test": {"A": ["127.0.0.2"]},
        "86.0.0.127.wl.test": {"A": ["127.0.10.1"]},
    }
    with DNSServer(zone) as dns:
        server = server_factory("dnsbl", dns={"nameservers": [dns.nameserver]},
                                abuse={"dnsbl_zones": ["bl.test=2", "small.test=1",
                                                       "wl.test=-2"],
                                       "dnsbl_threshold": 2})
        listed = From(server.address(), "127.0.0.80")
        assert listed.text() == ("554 5.7.1 mx.test.example Error: your address is "
                                 "listed by bl.test")
        assert listed.closed()
        for source in ("127.0.0.81", "127.0.0.82", "127.0.0.83", "127.0.0.84",
                       "127.0.0.86"):
            wire = From(server.address(), source)
            wire.greet()
            assert send(wire, ["bob@example.org"])[-1].startswith("250 2.0.0 Ok: queued")
            wire.close()
        # A blocklist that never answers holds the banner for DNSBL_TIMEOUT (5 s), then
        # counts as "not listed": the banner comes and the mail is delivered.
        slow = From(server.address(), "127.0.0.85")
        slow.greet()
        assert send(slow, ["bob@example.org"])[-1].startswith("250 2.0.0 Ok: queued")
        assert len(server.messages("bob@example.org")) == 6
        line = [x for x in abuse_lines(server) if "reason=dnsbl" in x]
        assert len(line) == 1 and line[0].endswith(
            "abuse: refused service=smtp ip=127.0.0.80 account=- reason=dnsbl score=2 "
            "zones=bl.test")


GREYLIST_DELAY = 5


def test_greylisting_defers_then_accepts_the_retry(server_factory) -> None:
    # The table counts whole seconds: with a 1 s delay a retry a few ms later but past
    # the turn of a second already passed, so "too soon" failed now and then. 5 s leaves
    # a loaded machine 4 s between the first attempt and the early retry.
    server = server_factory("grey", abuse={"greylist_delay": GREYLIST_DELAY})
    wire = From(server.address(), "127.0.2.1")
    wire.greet()
    deferred = "450 4.7.1 Error: greylisted; please try again later"
    assert send(wire, ["bob@example.org"]) == ["250 2.1.0 Ok", deferred]
    wire.command("RSET")
    assert send(wire, ["bob@example.org"]) == ["250 2.1.0 Ok", deferred]  # too soon
    wire.command("RSET")
    time.sleep(GREYLIST_DELAY + 0.2)  # real time must pass: the server's own clock
    assert send(wire, ["bob@example.org"])[-1].startswith("250 2.0.0 Ok: queued")
    # The client passed once: a new triplet from it is not deferred.
    answers = send(wire, ["alice@example.org"])
    assert answers[1] == "250 2.1.5 Ok"
    assert len(server.messages("bob@example.org")) == 1
    assert len(server.messages("alice@example.org")) == 1
    # Another network (127.0.3.0/24) waits its turn; unknown users are still 550.
    other = From(server.address(), "127.0.3.1")
    other.greet()
    other.command("MAIL FROM:<alice@example.org>")
    assert other.command("RCPT TO:<bob@example.org>") == deferred
    assert other.command("RCPT TO:<nobody@example.org>") == "550 5.1.1 Error: user unknown"


def test_spray_from_200_addresses_locks_none_and_spares_the_owner(server_factory) -> None:
    """One wrong password for alice from each of 200 loopback addresses, over two
    processes: no address reaches the lock-out, alice's failures are delayed more and
    more (capped), and alice herself, from another address, logs in at once."""
    from concurrent.futures import ThreadPoolExecutor

    server = server_factory("spray", processes=2, listen=LISTEN, auth=PLAINTEXT,
                            abuse={"login_failures": 2, "login_delay_max": 1})
    sources = [f"127.0.{100 + i // 100}.{1 + i % 100}" for i in range(200)]
    with ThreadPoolExecutor(25) as pool:
        answers = list(pool.map(lambda s: auth(server, s, "Summer2024!"), sources))
    assert answers == ["535 5.7.8 Authentication credentials invalid"] * 200
    assert admin(server.config_path, "ban", "list").stdout == "no address is locked out\n"
    # Not delayed by the spray's failures: tests/abuse/test_delays.py, on a clock.
    assert auth(server, "127.0.200.1", PASSWORD) == "235 2.7.0 Authentication successful"
    failed = {re.search(r"ip=(\S+)", line).group(1) for line in abuse_lines(server)
              if "reason=auth-failed" in line}
    assert failed == set(sources)
