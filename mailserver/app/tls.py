"""TLS server options: the operator's certificate chain, one from ACME, or a self-signed
one we make; and the swappable holder every TLS listener shares.

RFC 8314 4.1 and RFC 8996: TLS 1.2 is the least we speak.

Which certificate serves: `[tls]` when configured; else, with `[acme]`, the certificate
ACME obtained (data_dir/acme/fullchain.pem) once it exists; else the self-signed one.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import interfaces, ssl
from zope.interface import implementer

from mailserver.config import Config
from mailserver.core.ownfiles import write_atomically
from mailserver.errors import ConfigError
from mailserver.logs import logger

log = logger(__name__)


#: Under data_dir: where the ACME client (app/acme.py) keeps the certificate it
#: obtained: the private key and the full chain in one file, replaced by one rename.
ACME_DIR = "acme"
ACME_CHAIN = "certificate.pem"


@implementer(interfaces.IOpenSSLServerConnectionCreator)
class SwappableTLS:
    """The TLS server side of every listener (implicit TLS and STARTTLS alike).

    Each new TLS connection asks for the context current at that moment, so a new
    certificate (ACME renewal, reload) reaches new connections without a restart, while
    an established session keeps the SSL.Connection it was made with. Swapping is one
    attribute assignment on the reactor thread; building the options (disk, parsing) is
    done beforehand, off it.
    """

    def __init__(self, options: ssl.CertificateOptions,
                 watch: Callable[[ssl.CertificateOptions], None] | None = None) -> None:
        #: TLS-ALPN-01 answers in flight (RFC 8737): host name -> (certificate, key),
        #: set by the ACME client's thread, read by the ALPN callback (one dict
        #: assignment each: safe under the GIL).
        self.alpn_challenges: dict[str, tuple[x509.Certificate, Any]] = {}
        #: Told of every options that becomes current (metrics.watch_tls: the
        #: certificate-expiry gauge follows a renewal or reload).
        self.watch = watch
        self.options = options
        self._prepare(options)

    def swap(self, options: ssl.CertificateOptions) -> None:
        self._prepare(options)
        self.options = options

    def _prepare(self, options: ssl.CertificateOptions) -> None:
        if self.watch is not None:
            # Before the ALPN callback: watch_tls sets the info callback only.
            self.watch(options)
        options.getContext().set_alpn_select_callback(self._select_alpn)

    def _select_alpn(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        """RFC 8737 3: a client offering only "acme-tls/1" for a name with a challenge
        in flight gets the challenge certificate; everyone else the usual one, and no
        ALPN (we speak no protocol that negotiates it, as before this callback)."""
        server_name = connection.get_servername()
        name = server_name.decode("ascii", "replace").lower() if server_name else ""
        pair = self.alpn_challenges.get(name) if ACME_TLS_ALPN in offered else None
        if pair is None:
            return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]
        connection.set_context(_challenge_context(*pair))
        log.info("acme: TLS-ALPN-01 validation connection for {name}", name=name)
        return ACME_TLS_ALPN

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted calls it so
        return self.options.getContext()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802, N803
        return SSL.Connection(self.getContext(), None)


#: The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737 6.2).
ACME_TLS_ALPN = b"acme-tls/1"


def _challenge_context(certificate: x509.Certificate, key: Any) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)  # RFC 8737 4
    context.use_certificate(certificate)
    context.use_privatekey(key)
    context.set_alpn_select_callback(lambda connection, offered: ACME_TLS_ALPN)
    return context


def certificate_paths(config: Config) -> tuple[Path, Path, str, str]:
    """(chain, key, chain's name, key's name) of the certificate that serves now.

    Blocking (stat, and making the self-signed certificate on first use).
    """
    if config.tls.certificate is not None and config.tls.private_key is not None:
        return (config.tls.certificate, config.tls.private_key,
                "tls.certificate", "tls.private_key")
    acme_dir = config.data_dir / ACME_DIR
    if config.acme.directory and (acme_dir / ACME_CHAIN).exists():
        name = f"ACME certificate {acme_dir / ACME_CHAIN}"
        return acme_dir / ACME_CHAIN, acme_dir / ACME_CHAIN, name, name
    cert_path, key_path = ensure_self_signed(config.data_dir / "tls", config.hostname)
    name = f"self-signed certificate in {cert_path.parent}"
    return cert_path, key_path, name, name


def server_tls_options(config: Config) -> ssl.CertificateOptions:
    """CertificateOptions for every TLS listener; ConfigError names the bad file.

    Blocking (reads files): at start-up, or in a thread on reload.
    """
    cert_path, key_path, cert_name, key_name = certificate_paths(config)
    return load_tls_options(cert_path, key_path, cert_name, key_name)


def load_tls_options(cert_path: Path, key_path: Path, cert_name: str,
                     key_name: str) -> ssl.CertificateOptions:
    """CertificateOptions from a PEM chain and key; ConfigError naming the bad file."""
    try:
        chain_pem = cert_path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{cert_name}: cannot read {cert_path}: {e.strerror}"]) from None
    try:
        key_pem = key_path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{key_name}: cannot read {key_path}: {e.strerror}"]) from None
    certs = _split_pem_certificates(chain_pem)
    if not certs:
        raise ConfigError([f"{cert_name}: no PEM certificate in {cert_path}"])
    try:
        leaf = crypto.load_certificate(crypto.FILETYPE_PEM, certs[0])
        extra = [crypto.load_certificate(crypto.FILETYPE_PEM, c) for c in certs[1:]]
    except crypto.Error:
        raise ConfigError([f"{cert_name}: unreadable certificate in {cert_path}"]) from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise ConfigError([f"{key_name}: unreadable private key in {key_path}"]) from None
    try:
        return ssl.CertificateOptions(
            privateKey=key,
            certificate=leaf,
            extraCertChain=extra,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
    except Exception:
        raise ConfigError([f"{key_name}: the private key does not match the certificate "
                           f"{cert_path}"]) from None


def _split_pem_certificates(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    parts = []
    for chunk in data.split(marker)[:-1]:
        start = chunk.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            parts.append(chunk[start:] + marker + b"\n")
    return parts


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Make (once) a self-signed P-256 certificate for `hostname`, valid ten years."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    write_atomically(key_path, key_bytes, 0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("made a self-signed certificate for {hostname} in {dir}", hostname=hostname,
             dir=str(directory))
    return cert_path, key_path

