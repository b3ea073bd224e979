"""Peers for the outbound TLS tests, in threads of the test process (the servers under
test are subprocesses): a test CA and its certificates, an HTTPS server of MTA-STS
policies, and scripted SMTP peers that play the man in the middle (no STARTTLS, a
self-signed or wrong-name certificate) and record whether any mail reached them.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Cert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """PEM certificate and key files (for our server's tls.* or an ssl context)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert, key

    def spki_sha256(self) -> str:
        """The DANE-EE(3) SPKI(1) SHA-256(1) association data, in hex."""
        spki = self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest()


def make_cert(names: list[str], issuer: Cert | None = None, ca: bool = False) -> Cert:
    """A certificate for `names` signed by `issuer` (None: self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1))
               .not_valid_after(now + timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    return Cert(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def server_context(cert: Cert, directory: Path, name: str) -> ssl.SSLContext:
    crt, key = cert.write(directory, name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    return context


class PolicyServer:
    """https://mta-sts.DOMAIN/.well-known/mta-sts.txt for the domains in `policies`
    (by Host), with a certificate from the test CA; in a thread."""

    def __init__(self, policies: dict[str, str], context: ssl.SSLContext) -> None:
        self.policies = policies
        self.fetched: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                domain = (self.headers.get("Host") or "").split(":")[0]
                domain = domain.removeprefix("mta-sts.")
                outer.fetched.append(domain)
                body = outer.policies.get(domain)
                if body is None or self.path != "/.well-known/mta-sts.txt":
                    self.send_response(404)
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class PeerSession:
    lines: list[bytes] = field(default_factory=list)
    tls: bool = False
    messages: list[bytes] = field(default_factory=list)


class SMTPPeer:
    """A scripted SMTP server in a thread: STARTTLS with `context` (None: not offered,
    as a man in the middle stripping it), extra EHLO keywords, every session recorded."""

    def __init__(self, address: str, port: int, context: ssl.SSLContext | None,
                 extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME")) -> None:
        self.context = context
        self.extensions = extensions
        self.sessions: list[PeerSession] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((address, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def mail_commands(self) -> list[bytes]:
        return [line for s in self.sessions for line in s.lines
                if line.upper().startswith(b"MAIL")]

    @property
    def messages(self) -> list[bytes]:
        return [m for s in self.sessions for m in s.messages]

    def _serve(self, sock: socket.socket) -> None:
        session = PeerSession()
        self.sessions.append(session)
        sock.settimeout(30)
        f = sock.makefile("rwb")

        def send(text: bytes) -> None:
            f.write(text)
            f.flush()

        send(b"220 peer.test ESMTP\r\n")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                session.lines.append(line)
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
                if verb == b"EHLO":
                    keywords = list(self.extensions)
                    if self.context is not None and not session.tls:
                        keywords.append("STARTTLS")
                    lines = ["peer.test", *keywords]
                    send(b"".join(f"250-{k}\r\n".encode() for k in lines[:-1])
                         + f"250 {lines[-1]}\r\n".encode())
                elif verb == b"STARTTLS" and self.context is not None and not session.tls:
                    send(b"220 2.0.0 Go ahead\r\n")
                    sock = self.context.wrap_socket(sock, server_side=True)
                    f = sock.makefile("rwb")
                    session.tls = True
                elif verb == b"DATA":
                    send(b"354 Go ahead\r\n")
                    body = b""
                    while (chunk := f.readline()) not in (b".\r\n", b""):
                        body += chunk
                    session.messages.append(body)
                    send(b"250 2.0.0 Ok: queued\r\n")
                elif verb == b"QUIT":
                    send(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    send(b"250 2.0.0 Ok\r\n")
        except (OSError, ssl.SSLError):
            return

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


