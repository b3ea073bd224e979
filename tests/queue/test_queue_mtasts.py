"""MTA-STS when sending (RFC 8461): the TXT record, the policy text, MX patterns, the
cache rules (queue/mtasts.py), and the fetch over verified HTTPS from a twisted.web
server on loopback with a test CA, names resolved by our DNS server (mtasts_fetch.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dns_server import DNSServer
from twisted.internet import defer, reactor, ssl
from twisted.trial import unittest
from twisted.web import resource, server

from mailserver.core.dns import SharedResolver
from mailserver.queue.mtasts import (
    MAX_POLICY_BYTES,
    PolicyCache,
    PolicyError,
    StsPolicy,
    decide,
    mx_matches,
    parse_policy,
    txt_policy_id,
)
from mailserver.queue.mtasts_fetch import PolicyFetcher, StsPolicies, txt_lookup

GOOD = b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.backup.test\r\nmax_age: 86400\r\n"


# -- the TXT record (RFC 8461 3.1) ---------------------------------------------------------

@pytest.mark.parametrize(("texts", "result"), [
    (["v=STSv1; id=20261207T1;"], "20261207T1"),
    (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),
    (["v=STSv1;id=abc; ext=1"], "abc"),
    ([], "0 v=STSv1 TXT records"),
    (["v=STSv1; id=a", "v=STSv1; id=b"], "2 v=STSv1 TXT records"),
    (["v=STSv1; id=" + "a" * 33], "is not 1-32 letters and digits"),
    (["v=STSv1; id=a-b"], "is not 1-32 letters and digits"),
    (["v=STSv1; id"], "has no value"),
    (["v=STSv10; id=a"], "0 v=STSv1 TXT records"),
])
def test_txt_record(texts: list[str], result: str) -> None:
    if result.isalnum():
        assert txt_policy_id(texts) == result
    else:
        with pytest.raises(PolicyError, match=result):
            txt_policy_id(texts)


# -- the policy (RFC 8461 3.2) ---------------------------------------------------------------

def test_good_policy_lf_or_crlf() -> None:
    for body in (GOOD, GOOD.replace(b"\r\n", b"\n")):
        policy = parse_policy("example.test", "id1", body, 1000.0)
        assert (policy.mode, policy.mx, policy.max_age) == (
            "enforce", ("mx1.example.test", "*.backup.test"), 86400)
        assert policy.fresh(1000 + 86399) and not policy.fresh(1000 + 86400)


@pytest.mark.parametrize(("body", "error"), [
    (GOOD.replace(b"STSv1", b"STSv2"), "version 'STSv2'"),
    (GOOD.replace(b"enforce", b"strict"), "mode 'strict'"),
    (GOOD.replace(b"86400", b"31557601"), "max_age '31557601'"),
    (GOOD.replace(b"86400", b"-1"), "max_age '-1'"),
    (GOOD.replace(b"86400", b"9" * 5000), "max_age"),
    (GOOD.replace(b"mx: mx1.example.test\r\nmx: *.backup.test\r\n", b""), "no mx"),
    (GOOD + b"mx: bad_name.test\r\n", "is not a host name pattern"),
    (GOOD + b"mx: *.*.test\r\n", "is not a host name pattern"),
    (GOOD + b"garbage line\r\n", "line 6 is not 'key: value'"),
    (GOOD + "mx: \u00e9.test\r\n".encode(), "not ASCII"),
    (GOOD + b"x: " + b"a" * MAX_POLICY_BYTES, "octets"),
])
def test_bad_policies(body: bytes, error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        parse_policy("example.test", "id1", body, 0.0)


def test_mode_none_needs_no_mx_and_unknown_keys_are_ignored() -> None:
    policy = parse_policy("example.test", "i", b"version: STSv1\nmode: none\nmax_age: 0\n"
                          b"future: x\n", 0.0)
    assert policy.mode == "none" and policy.mx == ()


@pytest.mark.parametrize(("pattern", "host", "ok"), [
    ("mx1.example.test", "MX1.example.test.", True),
    ("*.backup.test", "a.backup.test", True),
    ("*.backup.test", "a.b.backup.test", False),   # one label only (4.1)
    ("*.backup.test", "backup.test", False),
    ("mx1.example.test", "mx2.example.test", False),
])
def test_mx_patterns(pattern: str, host: str, ok: bool) -> None:
    assert mx_matches(pattern, host) is ok


# -- the cache rules (RFC 8461 5.1, 10.2) -----------------------------------------------------

CACHED = StsPolicy("example.test", "id1", "enforce", ("mx1.example.test",), 100, 1000.0)


@pytest.mark.parametrize(("txt", "cached", "now", "expected"), [
    (["v=STSv1; id=id1"], CACHED, 1050.0, ("use", CACHED)),        # same id: no fetch
    (["v=STSv1; id=id2"], CACHED, 1050.0, ("fetch", CACHED)),      # new id: fetch
    (None, CACHED, 1050.0, ("use", CACHED)),                       # DNS blocked: keep
    ([], CACHED, 1050.0, ("use", CACHED)),                         # TXT removed: keep
    ([], CACHED, 1100.0, ("none", None)),                          # ... until it ends
    (["v=STSv1; id=id1"], CACHED, 1100.0, ("fetch", None)),        # expired: fetch
    (None, None, 0.0, ("none", None)),
    (["v=STSv1; id=x"], None, 0.0, ("fetch", None)),
])
def test_decide(txt: list[str] | None, cached: StsPolicy | None, now: float,
                expected: tuple[str, StsPolicy | None]) -> None:
    assert decide("example.test", txt, cached, now)[:2] == expected


def test_cache_survives_a_restart(tmp_path: Path) -> None:
    PolicyCache(tmp_path).put(CACHED)
    assert PolicyCache(tmp_path).get("example.test") == CACHED
    (tmp_path / "broken.test.json").write_text("{not json")
    assert PolicyCache(tmp_path).get("broken.test") is None


# -- fetching over HTTPS, on loopback ---------------------------------------------------------

def _cert(names: list[str], issuer: tuple[x509.Certificate, Any] | None, ca: bool = False
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1))
               .not_valid_after(now + timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _pem(cert: x509.Certificate, key: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


class _Policies(resource.Resource):
    """/.well-known/mta-sts.txt by Host: the answers the tests want of each domain."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 - Twisted's name
        host = request.getRequestHostname().decode()
        self.seen.append(host)
        domain = host.removeprefix("mta-sts.")
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b""
        if domain == "redirect.test":
            request.setResponseCode(301)
            request.setHeader(b"location", b"https://mta-sts.good.test/.well-known/mta-sts.txt")
            return b""
        if domain == "bad.test":
            request.setHeader(b"content-type", b"text/plain")
            return GOOD.replace(b"STSv1", b"STSv9")
        if domain == "html.test":
            request.setHeader(b"content-type", b"text/html")
            return GOOD
        request.setHeader(b"content-type", b"text/plain; charset=us-ascii")
        if domain == "huge.test":
            request.write(b"version: STSv1\n" + b"x: " + b"a" * (MAX_POLICY_BYTES + 10))
            request.finish()
            return server.NOT_DONE_YET  # type: ignore[no-any-return]
        return GOOD

    seen: list[str] = []


DOMAINS = ["good.test", "redirect.test", "html.test", "huge.test", "badcert.test",
           "bad.test"]


class FetchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, True)
        ca = _cert(["Test CA"], None, ca=True)
        leaf = _cert([f"mta-sts.{d}" for d in DOMAINS if d != "badcert.test"], ca)
        rogue = _cert(["mta-sts.badcert.test"], None)  # self-signed: no chain to the CA
        _Policies.seen = []
        site = server.Site(_Policies())
        good_ctx = ssl.PrivateCertificate.loadPEM(_pem(*leaf)).options()
        bad_ctx = ssl.PrivateCertificate.loadPEM(_pem(*rogue)).options()
        self.port = reactor.listenSSL(0, site, good_ctx, interface="127.0.0.1")
        self.bad_port = reactor.listenSSL(0, site, bad_ctx, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.bad_port.stopListening)
        zone: dict[str, dict[str, Any]] = {
            f"mta-sts.{d}": {"A": ["127.0.0.1"]} for d in DOMAINS}
        zone["_mta-sts.good.test"] = {"TXT": ["v=STSv1; id=one"]}
        zone["_mta-sts.bad.test"] = {"TXT": ["v=STSv1; id=two"]}
        zone["_mta-sts.redirect.test"] = {"TXT": ["v=STSv1; id=three"]}
        self.dns = DNSServer(zone).start()
        self.addCleanup(self.dns.stop)
        shared = SharedResolver([self.dns.nameserver], 5, 0)
        trust = ssl.Certificate.loadPEM(ca[0].public_bytes(serialization.Encoding.PEM))
        self.fetcher = PolicyFetcher(reactor, shared.resolver, trust,
                                     port=self.port.getHost().port, timeout=60)
        self.bad_fetcher = PolicyFetcher(reactor, shared.resolver, trust,
                                         port=self.bad_port.getHost().port, timeout=60)
        self.resolver = shared.resolver

    @defer.inlineCallbacks
    def test_fetch_good_policy(self) -> Any:
        body = yield defer.ensureDeferred(self.fetcher.fetch("good.test"))
        self.assertEqual(body, GOOD)
        self.assertEqual(_Policies.seen, ["mta-sts.good.test"])

    @defer.inlineCallbacks
    def _refused(self, domain: str, why: str, fetcher: PolicyFetcher | None = None) -> Any:
        try:
            yield defer.ensureDeferred((fetcher or self.fetcher).fetch(domain))
        except PolicyError as e:
            self.assertIn(why, str(e))
        else:
            self.fail(f"{domain}: fetched")

    def test_redirect_not_followed(self) -> Any:
        return self._refused("redirect.test", "answered HTTP 301")

    def test_not_text_plain(self) -> Any:
        return self._refused("html.test", "served as b'text/html'")

    def test_huge_policy(self) -> Any:
        return self._refused("huge.test", f"larger than {MAX_POLICY_BYTES} octets")

    @defer.inlineCallbacks
    def test_bad_certificate(self) -> Any:
        """A certificate that does not chain to a trusted root: no policy is read, and
        the request never reached the web server."""
        yield self._refused("badcert.test", "fetching https://mta-sts.badcert.test/ failed",
                            self.bad_fetcher)
        self.assertEqual(_Policies.seen, [])

    def test_no_address(self) -> Any:
        return self._refused("nowhere.test", "mta-sts.nowhere.test has no address")

    @defer.inlineCallbacks
    def test_policies_fetch_once_then_cache(self) -> Any:
        """Two deliveries share one fetch; the next asks the TXT record only."""
        def run(fn: Callable[..., Any], *args: Any) -> Any:
            return defer.succeed(fn(*args))

        policies = StsPolicies(PolicyCache(self.tmp / "mta-sts"), txt_lookup(self.resolver),
                               self.fetcher.fetch, run)
        first, second = yield defer.gatherResults([policies.policy_for("good.test"),
                                                   policies.policy_for("GOOD.test.")])
        self.assertEqual(first, second)
        self.assertEqual((first.mode, first.id), ("enforce", "one"))
        again = yield policies.policy_for("good.test")
        self.assertEqual(again, first)
        self.assertEqual(_Policies.seen, ["mta-sts.good.test"])
        self.assertTrue((self.tmp / "mta-sts" / "good.test.json").exists())
        none = yield policies.policy_for("html.test")  # no TXT record: no policy
        self.assertIsNone(none)

    @defer.inlineCallbacks
    def test_every_awaiting_caller_gets_the_policy(self) -> Any:
        """Two deliveries awaiting one lookup: the second must see the enforced policy
        too (a shared Deferred once gave it None, and its mail went out unverified)."""
        def run(fn: Callable[..., Any], *args: Any) -> Any:
            return defer.succeed(fn(*args))

        policies = StsPolicies(PolicyCache(self.tmp / "mta-sts"), txt_lookup(self.resolver),
                               self.fetcher.fetch, run)

        async def deliver() -> Any:
            return await policies.policy_for("good.test")

        first, second = yield defer.gatherResults([defer.ensureDeferred(deliver()),
                                                   defer.ensureDeferred(deliver())])
        self.assertEqual((first.mode, second.mode), ("enforce", "enforce"))
        self.assertEqual(_Policies.seen, ["mta-sts.good.test"])


    @defer.inlineCallbacks
    def test_a_policy_that_cannot_be_had_is_reported(self) -> Any:
        """RFC 8460 4.3: a new TXT id whose policy cannot be fetched (a redirect) is an
        sts-policy-fetch-error, one that is no policy (version STSv9) is an
        sts-policy-invalid; both are told for the domain's TLS report."""
        def run(fn: Callable[..., Any], *args: Any) -> Any:
            return defer.succeed(fn(*args))

        failures: list[tuple[str, str]] = []
        policies = StsPolicies(PolicyCache(self.tmp / "mta-sts"), txt_lookup(self.resolver),
                               self.fetcher.fetch, run,
                               on_failure=lambda d, r: failures.append((d, r)))
        self.assertIsNone((yield policies.policy_for("redirect.test")))
        self.assertIsNone((yield policies.policy_for("bad.test")))
        self.assertEqual(failures, [("redirect.test", "sts-policy-fetch-error"),
                                    ("bad.test", "sts-policy-invalid")])

    @defer.inlineCallbacks
    def test_policies_near_their_end_are_fetched_again(self) -> Any:
        """RFC 8461 10.2: a cached policy with less than a day left is fetched again in
        the background (same TXT id: a new max_age from now); one with more is not."""
        def run(fn: Callable[..., Any], *args: Any) -> Any:
            return defer.succeed(fn(*args))

        now = [1_000_000.0]
        cache = PolicyCache(self.tmp / "mta-sts")
        policies = StsPolicies(cache, txt_lookup(self.resolver), self.fetcher.fetch, run,
                               clock=lambda: now[0])
        first = yield policies.policy_for("good.test")
        self.assertEqual(first.fetched, now[0])
        self.assertEqual((yield defer.ensureDeferred(policies.refresh_due())), [])
        self.assertEqual(_Policies.seen, ["mta-sts.good.test"])
        now[0] += first.max_age - 3600  # an hour left
        self.assertEqual((yield defer.ensureDeferred(policies.refresh_due())),
                         ["good.test"])
        self.assertEqual(_Policies.seen, ["mta-sts.good.test"] * 2)
        self.assertEqual(PolicyCache(self.tmp / "mta-sts").get("good.test").fetched, now[0])
