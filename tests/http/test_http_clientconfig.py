"""Autoconfig, Autodiscover, mobileconfig and the MTA-STS policy from the real server,
parsed back the way the clients read them."""

from __future__ import annotations

import plistlib
import subprocess
from collections.abc import Callable, Iterator
from xml.etree import ElementTree as ET

import pytest
from http_helpers import ALL_LISTENERS, raw, request
from server_harness import RunningServer

RESPONSE_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
ROOT_NS = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
REQUEST = ('<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="http://schemas.'
           'microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request>'
           '<EMailAddress>{}</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft'
           '.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>'
           '</Request></Autodiscover>')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from server_harness import make_server

    running = make_server(tmp_path_factory.mktemp("http"), start=False,
                          hostname="mail.example.org", listen=ALL_LISTENERS,
                          mta_sts={"mode": "enforce", "max_age": 86400})
    running.start()
    yield running
    running.stop()


def expected_servers(server: RunningServer) -> list[tuple[str, str, int, str]]:
    p = server.ports
    return [("incomingServer", "imap", p["imaps"], "SSL"),
            ("incomingServer", "imap", p["imap"], "STARTTLS"),
            ("incomingServer", "pop3", p["pop3s"], "SSL"),
            ("incomingServer", "pop3", p["pop3"], "STARTTLS"),
            ("outgoingServer", "smtp", p["submissions"], "SSL"),
            ("outgoingServer", "smtp", p["submission"], "STARTTLS")]


def thunderbird_view(body: bytes) -> tuple[str, list[tuple[str, str, int, str]]]:
    """What Thunderbird's readFromXML takes from config-v1.1.xml; every server must
    carry the fields it requires, with values from the sets it accepts."""
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    servers = []
    for element in provider:
        if element.tag not in ("incomingServer", "outgoingServer"):
            continue
        assert element.findtext("hostname") == "mail.example.org"
        assert element.findtext("username") == "%EMAILADDRESS%"
        assert element.findtext("authentication") == "password-cleartext"
        assert element.findtext("socketType") in ("SSL", "STARTTLS", "plain")
        assert element.get("type") in (("imap", "pop3") if element.tag == "incomingServer"
                                       else ("smtp",))
        servers.append((element.tag, element.get("type") or "",
                        int(element.findtext("port") or 0), element.findtext("socketType") or ""))
    return provider.findtext("domain") or "", servers


@pytest.mark.parametrize("path,host", [
    ("/mail/config-v1.1.xml?emailaddress=alice%40example.org", "autoconfig.example.org"),
    ("/mail/config-v1.1.xml", "autoconfig.example.org"),
    ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=bob%40example.net",
     "example.net"),
    ("/.well-known/autoconfig/mail/config-v1.1.xml", "EXAMPLE.NET."),
])
def test_thunderbird_autoconfig(server: RunningServer, path: str, host: str) -> None:
    status, headers, body = request(server, "GET", path, host=host)
    assert status == 200, body
    assert headers["content-type"] == "application/xml; charset=utf-8"
    domain, servers = thunderbird_view(body)
    assert domain == ("example.org" if "example.org" in path + host else "example.net")
    assert servers == expected_servers(server)


@pytest.mark.parametrize("path,host", [
    ("/mail/config-v1.1.xml?emailaddress=alice%40elsewhere.example", "autoconfig.example.org"),
    ("/mail/config-v1.1.xml", "autoconfig.elsewhere.example"),
    ("/.well-known/autoconfig/mail/config-v1.1.xml", "mail.example.org"),
])
def test_autoconfig_only_for_our_domains(server: RunningServer, path: str, host: str) -> None:
    status, _, body = request(server, "GET", path, host=host)
    assert (status, body) == (404, b"not a domain of this server\n")


@pytest.mark.parametrize("address", [
    "<script>alert(1)</script>@example.org", 'a"b@example.org', "alice@example.org<b>",
    "a b@example.org", "alice@exa&mple.org", "alice"])
def test_autoconfig_refuses_metacharacters(server: RunningServer, address: str) -> None:
    from urllib.parse import quote

    status, _, body = request(server, "GET", "/mail/config-v1.1.xml?emailaddress="
                              + quote(address), host="autoconfig.example.org")
    assert (status, body) == (400, b"emailaddress: not an address\n")


def autodiscover_view(body: bytes) -> list[tuple[str, str, int, str, str]]:
    root = ET.fromstring(body)
    assert root.tag == f"{ROOT_NS}Autodiscover"
    account = root.find(f"{RESPONSE_NS}Response/{RESPONSE_NS}Account")
    assert account is not None
    assert account.findtext(f"{RESPONSE_NS}AccountType") == "email"
    assert account.findtext(f"{RESPONSE_NS}Action") == "settings"
    return [(p.findtext(f"{RESPONSE_NS}Type") or "", p.findtext(f"{RESPONSE_NS}Server") or "",
             int(p.findtext(f"{RESPONSE_NS}Port") or 0),
             p.findtext(f"{RESPONSE_NS}Encryption") or "",
             p.findtext(f"{RESPONSE_NS}LoginName") or "")
            for p in account.findall(f"{RESPONSE_NS}Protocol")]


def test_autodiscover_pox(server: RunningServer) -> None:
    status, headers, body = request(server, "POST", "/autodiscover/autodiscover.xml",
                                    body=REQUEST.format("alice@example.org").encode(),
                                    headers={"Content-Type": "text/xml"})
    assert status == 200, body
    p = server.ports
    who = "alice@example.org"
    assert autodiscover_view(body) == [
        ("IMAP", "mail.example.org", p["imaps"], "SSL", who),
        ("IMAP", "mail.example.org", p["imap"], "TLS", who),
        ("POP3", "mail.example.org", p["pop3s"], "SSL", who),
        ("POP3", "mail.example.org", p["pop3"], "TLS", who),
        ("SMTP", "mail.example.org", p["submissions"], "SSL", who),
        ("SMTP", "mail.example.org", p["submission"], "TLS", who)]


def test_autodiscover_escapes_what_it_echoes(server: RunningServer) -> None:
    """o'b&c@example.org is a valid address (RFC 5322 atext): it comes back escaped."""
    status, _, body = request(server, "POST", "/autodiscover/autodiscover.xml",
                              body=REQUEST.format("o'b&amp;c@example.org").encode())
    assert status == 200
    assert b"<LoginName>o'b&amp;c@example.org</LoginName>" in body
    assert {row[4] for row in autodiscover_view(body)} == {"o'b&c@example.org"}


@pytest.mark.parametrize("body,why", [
    (REQUEST.format("&lt;img src=x&gt;@example.org").encode(), b"not an email address\n"),
    (REQUEST.format("alice@elsewhere.example").encode(), b"not a domain of this server\n"),
    (b"<Autodiscover><Request></Request></Autodiscover>", b"no Request/EMailAddress\n"),
    (b"\x00\xff garbage", b"not XML\n"),
    (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;'
     b'&lol;&lol;">]><Autodiscover><Request><EMailAddress>&lol2;@example.org'
     b'</EMailAddress></Request></Autodiscover>', b"no DOCTYPE allowed\n"),
])
def test_autodiscover_refuses(server: RunningServer, body: bytes, why: bytes) -> None:
    status, _, answer = request(server, "POST", "/autodiscover/autodiscover.xml", body=body)
    assert (status, answer) == (404 if b"domain" in why else 400, why)


def test_autodiscover_wants_post(server: RunningServer) -> None:
    status, headers, _ = request(server, "GET", "/autodiscover/autodiscover.xml")
    assert (status, headers["allow"]) == (405, "POST")


def test_mobileconfig(server: RunningServer) -> None:
    status, headers, body = request(server, "GET",
                                    "/apple/mobileconfig?emailaddress=carol%40example.net")
    assert status == 200
    assert headers["content-type"] == "application/x-apple-aspen-config"
    assert headers["content-disposition"] == 'attachment; filename="mail.mobileconfig"'
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration"
    [account] = profile["PayloadContent"]
    assert {k: account[k] for k in (
        "PayloadType", "EmailAccountType", "EmailAddress", "IncomingMailServerHostName",
        "IncomingMailServerPortNumber", "IncomingMailServerUseSSL",
        "IncomingMailServerUsername", "IncomingMailServerAuthentication",
        "OutgoingMailServerHostName", "OutgoingMailServerPortNumber",
        "OutgoingMailServerUseSSL", "OutgoingMailServerAuthentication")} == {
        "PayloadType": "com.apple.mail.managed", "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": "carol@example.net",
        "IncomingMailServerHostName": "mail.example.org",
        "IncomingMailServerPortNumber": server.ports["imaps"],
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": "carol@example.net",
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": "mail.example.org",
        "OutgoingMailServerPortNumber": server.ports["submissions"],
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword"}
    again = plistlib.loads(request(server, "GET",
                                   "/apple/mobileconfig?emailaddress=carol%40example.net")[2])
    assert again["PayloadUUID"] == profile["PayloadUUID"]  # installing twice replaces


def test_mobileconfig_refuses_other_domains_and_junk(server: RunningServer) -> None:
    assert request(server, "GET", "/apple/mobileconfig?emailaddress=a%40elsewhere.example"
                   )[0] == 404
    assert request(server, "GET", "/apple/mobileconfig?emailaddress=%3Cx%3E%40example.org"
                   )[:3:2] == (400, b"not an email address\n")
    assert request(server, "GET", "/apple/mobileconfig")[:3:2] == (
        400, b"no email address given\n")


def test_mta_sts_policy_on_https(server: RunningServer) -> None:
    status, headers, body = request(server, "GET", "/.well-known/mta-sts.txt",
                                    host="mta-sts.example.org", secure=True)
    assert status == 200
    assert headers["content-type"] == "text/plain"
    assert body == (b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\n"
                    b"max_age: 86400\r\n")


@pytest.mark.parametrize("host,secure", [
    ("mta-sts.example.org", False),  # RFC 8461 3.3: HTTPS only
    ("mta-sts.elsewhere.example", True),
    ("example.org", True),
])
def test_no_mta_sts_policy_elsewhere(server: RunningServer, host: str, secure: bool) -> None:
    status, _, body = request(server, "GET", "/.well-known/mta-sts.txt", host=host,
                              secure=secure)
    assert (status, body) == (404, b"not found\n")


@pytest.mark.parametrize("path", [
    b"/.well-known/autoconfig/mail/../../../../etc/passwd",
    b"/.well-known/autoconfig/mail/config-v1.1.xml/../../../../../etc/passwd",
    b"/mail/..%2f..%2f..%2fetc%2fpasswd",
    b"/.well-known/acme-challenge/../../../../etc/passwd",
    b"/.well-known/acme-challenge/..%2f..%2f..%2fetc%2fpasswd",
    b"/.well-known/acme-challenge/%2e%2e",
    b"/.well-known/../../etc/passwd",
    b"//etc/passwd",
    b"/.well-known/mta-sts.txt/../../etc/passwd",
])
def test_path_traversal_finds_nothing(server: RunningServer, path: bytes) -> None:
    answer = raw(server, b"GET " + path + b" HTTP/1.1\r\nHost: autoconfig.example.org\r\n"
                 b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"root:" not in answer and answer.endswith(b"\r\n\r\nnot found\n")


def test_curl_every_endpoint(server: RunningServer, tmp_path: object) -> None:
    """What an operator checks by hand after setting up DNS."""
    http_base = f"http://127.0.0.1:{server.ports['http']}"
    https_base = f"https://127.0.0.1:{server.ports['https']}"

    def curl(*args: str) -> tuple[str, str]:
        out = subprocess.run(["curl", "-sk", "-w", "\n%{http_code}", *args],
                             capture_output=True, timeout=30, check=True).stdout.decode()
        body, _, code = out.rpartition("\n")
        return code, body

    code, body = curl("-H", "Host: autoconfig.example.org",
                      f"{http_base}/mail/config-v1.1.xml?emailaddress=alice@example.org")
    assert code == "200" and "<socketType>SSL</socketType>" in body
    code, body = curl(f"{https_base}/.well-known/autoconfig/mail/config-v1.1.xml"
                      "?emailaddress=alice@example.org")
    assert code == "200" and '<emailProvider id="example.org">' in body
    code, body = curl("-X", "POST", "-H", "Content-Type: text/xml", "--data",
                      REQUEST.format("alice@example.org"),
                      f"{https_base}/autodiscover/autodiscover.xml")
    assert code == "200" and "<LoginName>alice@example.org</LoginName>" in body
    code, body = curl(f"{https_base}/apple/mobileconfig?emailaddress=alice@example.org")
    assert code == "200" and "<string>com.apple.mail.managed</string>" in body
    code, body = curl("-H", "Host: mta-sts.example.org",
                      f"{https_base}/.well-known/mta-sts.txt")
    assert (code, body) == ("200", "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org"
                                   "\r\nmax_age: 86400\r\n")
    code, body = curl(f"{http_base}/.well-known/acme-challenge/unknownToken")
    assert (code, body) == ("404", "not found\n")
    code, body = curl(f"{http_base}/metrics")
    assert code == "200" and "# TYPE mailserver_connections_total counter" in body


def test_only_configured_listeners_are_described(
        server_factory: Callable[..., RunningServer]) -> None:
    """A server with IMAPS and submission only: exactly those two."""
    small = server_factory("small", hostname="mail.example.org", listen={
        "imaps": "tcp:0:interface=127.0.0.1", "submission": "tcp:0:interface=127.0.0.1",
        "http": "tcp:0:interface=127.0.0.1"})
    status, _, body = request(small, "GET", "/mail/config-v1.1.xml",
                              host="autoconfig.example.org")
    assert status == 200
    assert thunderbird_view(body)[1] == [
        ("incomingServer", "imap", small.ports["imaps"], "SSL"),
        ("outgoingServer", "smtp", small.ports["submission"], "STARTTLS")]


def test_nothing_to_describe_is_404(server_factory: Callable[..., RunningServer]) -> None:
    """Only an MX and the web listener: no client listener to offer."""
    mx = server_factory("mx", listen={"smtp": "tcp:0:interface=127.0.0.1",
                                      "http": "tcp:0:interface=127.0.0.1"})
    status, _, body = request(mx, "GET", "/mail/config-v1.1.xml",
                              host="autoconfig.example.org")
    assert (status, body) == (404, b"no incoming or no outgoing listener to describe\n")
