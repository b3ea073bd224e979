"""Certificates from an ACME CA (RFC 8555) with the `acme` library (docs/decisions/0016).

The twistd process alone runs the client (AcmeService). It keeps in data_dir/acme/:

- account.pem: the account key (RSA 2048, RS256), 0600; the account is found again by
  its key (RFC 8555 7.3.1, onlyReturnExisting), so nothing else needs keeping;
- certificate.pem: the certificate's private key followed by the full chain, 0600, in
  one file so that one rename replaces both (a reader never sees a new key with an old
  chain). app/tls.py serves it on every TLS listener once it exists.

When: at start-up, then at two thirds of the certificate's lifetime (Let's Encrypt's
90 days: after 60), or at once when the names in the config are not all on the
certificate, or when data_dir/acme/renew-now exists (`mailserver reload --renew`). A
failure is logged and retried after RETRY_FIRST seconds, doubling up to RETRY_MAX; the
certificate in use (or the self-signed one) goes on serving meanwhile.

Challenge (`acme.challenge`): HTTP-01 (RFC 8555 8.3) through the ChallengeResponses
table that listen.http answers from (mailserver/http/challenges.py; on disk too, so any
process answers), or TLS-ALPN-01 (RFC 8737) through the SwappableTLS every TLS listener
shares: a validation connection (SNI = the name, ALPN "acme-tls/1") gets a certificate
made for the challenge, every other connection the usual one.

Every call of the acme library blocks (HTTPS to the CA, polling): it all runs in one
thread per attempt (deferToThread), never on the reactor; what the thread learns comes
back as its result and is logged on the reactor.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from twisted.application import service
from twisted.internet import reactor, threads
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from mailserver.app.reload import ReloadTargets
from mailserver.app.tls import ACME_CHAIN, ACME_DIR, server_tls_options
from mailserver.config import Config
from mailserver.core.ownfiles import write_atomically
from mailserver.http.challenges import ChallengeResponses
from mailserver.logs import logger

log = logger(__name__)

ACCOUNT_KEY = "account.pem"
#: id-pe-acmeIdentifier (RFC 8737 6.1).
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
RENEW_FLAG = "renew-now"
#: Seconds before the first retry after a failure; doubled each time up to RETRY_MAX.
RETRY_FIRST = 60.0
RETRY_MAX = 6 * 3600.0
#: Longest wait for the CA to validate and issue, per attempt.
ORDER_TIMEOUT = 120
#: Seconds each HTTPS request to the CA may take.
NETWORK_TIMEOUT = 30
#: A timer longer than this is re-armed in steps (callLater needs no month-long delays).
LONGEST_WAIT = 86400.0


@dataclass(frozen=True)
class Held:
    """The certificate on disk: its names and validity (None: there is none)."""

    names: frozenset[str]
    not_before: float
    not_after: float

    @property
    def renew_at(self) -> float:
        """Two thirds into the lifetime (what certbot and Let's Encrypt advise)."""
        return self.not_before + (self.not_after - self.not_before) * 2 / 3


def held_certificate(path: Path) -> Held | None:
    """What certificate.pem holds; None when missing or unreadable. Blocking."""
    try:
        data = path.read_bytes()
        cert = x509.load_pem_x509_certificate(data)
    except (OSError, ValueError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = frozenset(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return Held(names, cert.not_valid_before_utc.timestamp(),
                cert.not_valid_after_utc.timestamp())


def wanted_names(config: Config) -> tuple[str, ...]:
    return tuple(n.lower().rstrip(".") for n in config.acme.certificate_names(config.hostname))


def seconds_until_due(config: Config) -> float:
    """0 when a certificate must be obtained now, else the wait. Blocking (reads)."""
    acme_dir = config.data_dir / ACME_DIR
    if (acme_dir / RENEW_FLAG).exists():
        return 0.0
    held = held_certificate(acme_dir / ACME_CHAIN)
    if held is None or not set(wanted_names(config)) <= held.names:
        return 0.0
    return max(0.0, held.renew_at - time.time())


def alpn_challenge_certificate(name: str, key_authorization: str,
                               ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """RFC 8737 3: self-signed, the one name as SAN, and the critical acmeIdentifier
    extension holding the SHA-256 of the key authorization as a DER OCTET STRING."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def obtain_certificate(config: Config, challenges: ChallengeResponses,
                       alpn: dict[str, tuple[x509.Certificate, Any]] | None = None,
                       ) -> Held:
    """One complete ACME exchange: account, order, challenge, finalize, store. Blocking.

    HTTP-01 answers go into `challenges`, TLS-ALPN-01 ones into `alpn` (the
    SwappableTLS table). Raises whatever the acme library or the network raise; the
    caller logs and retries.
    """
    from acme import crypto_util

    acme_dir = config.data_dir / ACME_DIR
    acme_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    acme, jwk = _registered_client(config, acme_dir)
    names = wanted_names(config)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    order = acme.new_order(crypto_util.make_csr(key_pem, list(names)))
    order = _validate_and_finalize(config, acme, jwk, order, challenges, alpn)
    return _store_chain(config, acme_dir, key_pem, order)


def _registered_client(config: Config, acme_dir: Path) -> tuple[Any, Any]:
    """The ACME client (acme.client.ClientV2) of our account, registered with the CA
    (found again when the key already has an account), and the account's JWK."""
    import josepy
    from acme import client, errors, messages

    account_key = _account_key(acme_dir / ACCOUNT_KEY)
    jwk = josepy.JWKRSA(key=account_key)
    verify: Any = config.acme.directory_ca or True
    net = client.ClientNetwork(jwk, verify_ssl=verify, user_agent="mailserver",
                               timeout=NETWORK_TIMEOUT)
    directory = client.ClientV2.get_directory(config.acme.directory, net)
    acme = client.ClientV2(directory, net)
    contact = (config.acme.contact,) if config.acme.contact else ()
    registration = messages.NewRegistration.from_data(terms_of_service_agreed=True)
    registration = registration.update(contact=contact)
    try:
        acme.new_account(registration)
    except errors.ConflictError as existing:  # this key has an account already
        found = messages.RegistrationResource(uri=existing.location, body=registration)
        acme.query_registration(found)
    return acme, jwk


def _validate_and_finalize(config: Config, acme: Any, jwk: Any, order: Any,
                           challenges: ChallengeResponses,
                           alpn: dict[str, tuple[x509.Certificate, Any]] | None) -> Any:
    """Answer each authorization's challenge of the configured kind, then poll and
    finalize the order (RFC 8555 7.5, 7.4); the answers are withdrawn whatever happens."""
    import josepy
    from acme import challenges as acme_challenges
    from acme import messages

    kind = config.acme.challenge
    tokens: list[str] = []
    alpn_names: list[str] = []
    thumbprint = josepy.b64encode(jwk.thumbprint()).decode("ascii")
    try:
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue  # the CA still knows we control this name
            offered = [c for c in authorization.body.challenges
                       if c.chall.to_partial_json().get("type") == kind]
            name = authorization.body.identifier.value
            if not offered:
                raise RuntimeError(f"the CA offers no {kind} challenge for {name}")
            token = str(offered[0].chall.to_partial_json().get("token", ""))
            validation = f"{token}.{thumbprint}"  # RFC 8555 8.1
            if kind == "tls-alpn-01":
                if alpn is None:  # pragma: no cover - AcmeService always passes it
                    raise RuntimeError("tls-alpn-01 without a TLS listener table")
                alpn[name.lower()] = alpn_challenge_certificate(name, validation)
                alpn_names.append(name.lower())
            else:
                challenges.set(token, validation)
                tokens.append(token)
            # The response body is {} for every challenge type (RFC 8555 7.5.1).
            response = acme_challenges.HTTP01Response(key_authorization=validation)
            acme.answer_challenge(offered[0], response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        order = acme.poll_and_finalize(order, deadline)
    finally:
        for token in tokens:
            challenges.remove(token)
        for name in alpn_names:
            if alpn is not None:
                alpn.pop(name, None)
    return order


def _store_chain(config: Config, acme_dir: Path, key_pem: bytes, order: Any) -> Held:
    """The new key and the CA's chain, stored (0600) where the TLS listeners load them
    from, checked to load; the renewal flag goes."""
    chain = order.fullchain_pem.encode("ascii")
    write_atomically(acme_dir / ACME_CHAIN, key_pem + chain, 0o600)
    try:
        (acme_dir / RENEW_FLAG).unlink()
    except FileNotFoundError:
        pass
    held = held_certificate(acme_dir / ACME_CHAIN)
    if held is None:  # pragma: no cover - we just wrote what the CA gave
        raise RuntimeError("the CA's certificate cannot be read back")
    server_tls_options(config)  # the chain and key load, or ConfigError says why
    return held


def _account_key(path: Path) -> rsa.RSAPrivateKey:
    """The account key, made on first use (0600)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_atomically(path, key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise RuntimeError(f"{path}: not an RSA key")
    return key



class AcmeService(service.Service):
    """Keeps the ACME certificate current; tells the reload targets when it changed."""

    name = "acme"

    def __init__(self, config: Config, reload: ReloadTargets) -> None:
        self.config = config
        self.reload = reload
        self.challenges = ChallengeResponses.under(config.data_dir)
        self.timer: IDelayedCall | None = None
        self.busy = False
        self.retry = RETRY_FIRST
        reload.after.append(self._reloaded)

    def startService(self) -> None:
        service.Service.startService(self)
        self._check()

    def stopService(self) -> None:
        service.Service.stopService(self)
        self._cancel()

    def _reloaded(self, config: Config) -> None:
        """After a reload: new names, or `--renew`, may make a certificate due now."""
        self.config = config
        self._check()

    def _cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _wait(self, seconds: float) -> None:
        self._cancel()
        self.timer = reactor.callLater(min(seconds, LONGEST_WAIT), self._check)  # type: ignore[attr-defined]

    def _check(self) -> None:
        if not self.running or self.busy or not self.config.acme.directory:
            return
        self._cancel()
        self.busy = True
        d = threads.deferToThread(seconds_until_due, self.config)
        d.addCallback(self._due)
        d.addErrback(self._failed)

    def _due(self, seconds: float) -> Any:
        if seconds > 0:
            self.busy = False
            self._wait(seconds)
            return None
        names = wanted_names(self.config)
        log.info("acme: requesting a certificate for {names} from {directory}",
                 names=", ".join(names), directory=self.config.acme.directory)
        d = threads.deferToThread(obtain_certificate, self.config, self.challenges,
                                  self.reload.tls.alpn_challenges)
        return d.addCallback(self._obtained)

    def _obtained(self, held: Held) -> None:
        self.busy = False
        self.retry = RETRY_FIRST
        expires = datetime.datetime.fromtimestamp(held.not_after, datetime.UTC)
        log.info("acme: new certificate for {names}, valid until {expires}; "
                 "new connections use it", names=", ".join(sorted(held.names)),
                 expires=expires.isoformat(timespec="seconds"))
        d = threads.deferToThread(server_tls_options, self.config)
        d.addCallback(self._swap)
        d.addErrback(self._failed)
        self._wait(max(1.0, held.renew_at - time.time()))

    def _swap(self, options: Any) -> None:
        self.reload.tls.swap(options)
        if self.reload.forward is not None:
            self.reload.forward()  # the workers reload, and load it too

    def _failed(self, failure: Failure) -> None:
        self.busy = False
        why = failure.getErrorMessage() or failure.type.__name__  # type: ignore[union-attr]
        log.error("acme: cannot obtain a certificate from {directory}: {why}; the "
                  "current certificate stays in use, next attempt in {s:.0f} s",
                  directory=self.config.acme.directory, why=why, s=self.retry)
        self._wait(self.retry)
        self.retry = min(self.retry * 2, RETRY_MAX)
