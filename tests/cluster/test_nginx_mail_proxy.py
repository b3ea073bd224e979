"""A real nginx mail proxy (Debian's libnginx-mod-mail) in front of one node: IMAP and
POP3 clients log in through nginx, which asks our /nginx-auth and proxies the session
to the node it names. Only the auth handshake is ours to prove here; the multi-node
rig with its own nginx lives in the cluster rig's tests."""

from __future__ import annotations

import imaplib
import poplib
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port
from server_harness import RunningServer, make_server

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
LISTEN = {name: "tcp:0:interface=127.0.0.1" for name in (
    "smtp", "submission", "pop3", "imap", "http")}
USER, PASSWORD = "alice@example.org", "wonderland"
#: cluster.auth_secret_file's secret, which nginx sends with auth_http_header.
SECRET = "nginx-auth-secret-2f9c41d7e8"


def nginx_config(root: Path, http_port: int, ports: dict[str, int]) -> str:
    """IMAP and POP3; submission with nginx logging in to the node (proxy_smtp_auth:
    XCLIENT LOGIN is the proxy engineers' part) and MX traffic without a login."""
    return f"""
load_module {MAIL_MODULE};
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log info;
events {{ worker_connections 64; }}
mail {{
    auth_http 127.0.0.1:{http_port}/nginx-auth;
    auth_http_header X-Auth-Key {SECRET};
    proxy_pass_error_message on;
    server {{ listen 127.0.0.1:{ports["imap"]}; protocol imap; imap_auth login plain; }}
    server {{ listen 127.0.0.1:{ports["pop3"]}; protocol pop3; pop3_auth plain; }}
    server {{ listen 127.0.0.1:{ports["submission"]}; protocol smtp; smtp_auth login plain;
             xclient off; proxy_smtp_auth on; }}
    server {{ listen 127.0.0.1:{ports["smtp"]}; protocol smtp; smtp_auth none;
             xclient off; }}
}}
"""


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[tuple[RunningServer, dict[str, int]]]:
    root: Path = tmp_path_factory.mktemp("nginx-proxy")
    server = make_server(root, start=False, listen=LISTEN,
                         # nginx speaks to the node without TLS (it ended the client's).
                         auth={"allow_plaintext_without_tls": True})
    with server.config_path.open("a") as f:
        f.write('\n[cluster]\nnode = "n1"\nnodes = { n1 = "127.0.0.1" }\n'
                f'auth_secret_file = "{root / "auth.secret"}"\n')
    (root / "auth.secret").write_text(SECRET + "\n")
    server.add_user(USER, PASSWORD)
    server.start()
    ports = {name: free_port() for name in ("imap", "pop3", "submission", "smtp")}
    conf = root / "nginx.conf"
    conf.write_text(nginx_config(root, server.ports["http"], ports))
    log = (root / "nginx.out").open("wb")
    proc = subprocess.Popen([NGINX, "-p", str(root), "-c", str(conf), "-e",
                             str(root / "nginx-error.log")], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", ports["imap"]), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("nginx did not start: "
                                     + (root / "nginx.out").read_text()) from None
            time.sleep(0.1)
    # Something to read: a message delivered straight to the node.
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("bob@example.net", [USER], b"Subject: through nginx\r\n\r\nhello\r\n")
    yield server, ports
    proc.terminate()
    proc.wait(10)
    log.close()
    server.stop()


def test_imap_login_through_nginx_reaches_the_users_mailbox(
        proxied: tuple[RunningServer, dict[str, int]]) -> None:
    _, ports = proxied
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=15)
    try:
        assert imap.login(USER, PASSWORD)[0] == "OK"
        assert imap.select("INBOX") == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and data[0][1] == b"Subject: through nginx\r\n\r\n"  # type: ignore[index]
    finally:
        imap.logout()


def test_a_wrong_imap_password_gets_our_text_after_auth_wait(
        proxied: tuple[RunningServer, dict[str, int]]) -> None:
    _, ports = proxied
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=60)
    with pytest.raises(imaplib.IMAP4.error) as failed:
        imap.login(USER, "guess")
    assert str(failed.value) == "b'[AUTHENTICATIONFAILED] Invalid login or password'"
    # The session stays open: nginx lets the client try again because Auth-Wait was
    # given (without it nginx closes); how long nginx waits is nginx's, not timed here.
    assert imap.login(USER, PASSWORD)[0] == "OK"
    imap.logout()


def test_pop3_through_nginx(proxied: tuple[RunningServer, dict[str, int]]) -> None:
    _, ports = proxied
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=15)
    try:
        pop.user(USER)
        assert pop.pass_(PASSWORD).startswith(b"+OK")
        assert pop.stat()[0] == 1
        assert b"Subject: through nginx" in pop.retr(1)[1]
    finally:
        pop.quit()


def test_submission_through_nginx_with_a_login(
        proxied: tuple[RunningServer, dict[str, int]]) -> None:
    server, ports = proxied
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=15) as smtp:
        smtp.ehlo("client.example.net")
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.login(USER, "guess")
        assert (failed.value.smtp_code, failed.value.smtp_error) == (
            535, b"5.7.8 Invalid login or password")
        smtp.login(USER, PASSWORD)
        smtp.sendmail(USER, [USER], b"Subject: submitted via nginx\r\n\r\nhi\r\n")
    assert wait_for_message(server, USER, b"Subject: submitted via nginx")


def test_mx_traffic_through_nginx_without_a_login(
        proxied: tuple[RunningServer, dict[str, int]]) -> None:
    server, ports = proxied
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=15) as smtp:
        smtp.sendmail("someone@example.net", [USER], b"Subject: mx via nginx\r\n\r\nhi\r\n")
    assert wait_for_message(server, USER, b"Subject: mx via nginx")


def test_nginx_auth_without_the_secret_is_403_even_from_loopback(
        proxied: tuple[RunningServer, dict[str, int]]) -> None:
    """Every login above went through /nginx-auth with nginx's X-Auth-Key; a caller on
    this host without it (a web server's proxy forwarding the public) gets 403 and no
    password check, however right the password."""
    server, _ = proxied
    ask = ("GET /nginx-auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\n"
           f"Auth-User: {USER}\r\nAuth-Pass: {PASSWORD}\r\nAuth-Protocol: imap\r\n"
           "Auth-Login-Attempt: 1\r\nClient-IP: 203.0.113.5\r\n{extra}\r\n")
    for extra in ("", "X-Auth-Key: wrong-secret-0123456789\r\n"):
        with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as s:
            s.sendall(ask.format(extra=extra).encode())
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 403 "), reply
        assert b"\r\nAuth-Status" not in reply
        assert reply.endswith(b"\r\n\r\nforbidden: X-Auth-Key missing or wrong\n")


def wait_for_message(server: RunningServer, user: str, needle: bytes) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(needle in m for m in server.messages(user)):
            return True
        time.sleep(0.1)
    return False
