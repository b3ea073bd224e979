"""What app/service.py builds once per process: the resolver, the inbound checker, the
signer, and the hooks each SMTP listener gets."""

from __future__ import annotations

from dataclasses import dataclass

from mailserver.config import Config
from mailserver.core.diskio import DiskExecutor
from mailserver.core.dns import SharedResolver
from mailserver.errors import ConfigError
from mailserver.senderauth.checker import InboundChecker
from mailserver.senderauth.junk import JunkDelivery
from mailserver.senderauth.keys import KeyStore
from mailserver.senderauth.signing import Signer
from mailserver.senderauth.srs import SRS, load_secret
from mailserver.senderauth.transaction import InboundHook, SigningHook


@dataclass
class SenderAuth:
    checker: InboundChecker | None
    signer: Signer | None
    inbound: InboundHook | None
    signing: SigningHook | None
    #: Envelope-sender rewriting of forwarded copies; None: off.
    srs: SRS | None = None

    def hook_for(self, listener: str) -> InboundHook | SigningHook | None:
        """Checks on the MX (never on submission: RFC 6409 mail is authenticated by
        login), signatures on submission."""
        if listener == "smtp":
            return self.inbound
        if listener in ("submission", "submissions"):
            return self.signing
        return None


def build(config: Config, resolver: SharedResolver, disk: DiskExecutor,
          instance: int) -> SenderAuth:
    """Make missing DKIM keys (instance 0 only: workers find them made), then the
    hooks. Blocking, once at startup."""
    checker = InboundChecker(config, resolver) if config.checks.enabled else None
    signer = None
    if config.dkim.sign:
        store = KeyStore(config)
        if instance == 0:
            try:
                store.ensure()
            except OSError as e:
                raise ConfigError([f"data_dir: cannot make DKIM keys under {store.root}: "
                                   f"{e.strerror}"]) from None
        signer = Signer(store)
    junk = JunkDelivery(config.mail_dir, config.hostname, disk)
    srs = None
    srs_domain = config.srs.domain or (config.domains.local or ("",))[0]
    if config.srs.enabled and srs_domain:
        path = config.data_dir / "srs_secret"
        try:
            srs = SRS(load_secret(path), srs_domain)
        except OSError as e:
            raise ConfigError([f"data_dir: cannot make the SRS secret {path}: "
                               f"{e.strerror}"]) from None
    return SenderAuth(checker, signer,
                      InboundHook(checker, junk, config.checks.trusted_networks, signer,
                                  config.checks.no_reject_domains)
                      if checker else None,
                      SigningHook(signer) if signer else None, srs)
