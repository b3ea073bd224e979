"""The inbound checks against a loopback DNS server: SPF, DKIM, DMARC, iprev, and the
Authentication-Results header and policy action they produce."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver
import pytest
from dns_server import DNSServer
from sa_helpers import CLIENT, checker, make_store, message, raw_rsa_record, zone_for

from mailserver.senderauth.checker import InboundChecker, Verdict
from mailserver.senderauth.signing import Signer, sign_with

pytestmark = pytest.mark.timeout(120)

SPF_INCLUDE_LOOP = {f"loop{i}.test": {"TXT": [f"v=spf1 include:loop{(i + 1) % 3}.test -all"]}
                    for i in range(3)}
DEEP = {f"deep{i}.test": {"TXT": [f"v=spf1 include:deep{i + 1}.test -all"]}
        for i in range(15)}
VOID = {"void.test": {"TXT": ["v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test "
                              "ip4:127.0.0.9 -all"]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store = make_store(tmp_path_factory.mktemp("keys"), ("good.test", "quar.test",
                                                         "none.test", "sub.org.test"))
    zone: dict[str, Any] = zone_for(store)
    zone.update({
        "good.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"], "A": [CLIENT]},
        "_dmarc.good.test": {"TXT": ["v=DMARC1; p=reject; rua=mailto:d@good.test"]},
        "quar.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.quar.test": {"TXT": ["v=DMARC1; p=quarantine"]},
        "none.test": {"TXT": ["v=spf1 ?all"]},
        "_dmarc.none.test": {"TXT": ["v=DMARC1; p=none"]},
        "soft.test": {"TXT": ["v=spf1 ~all"]},
        "org.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.org.test": {"TXT": ["v=DMARC1; p=none; sp=reject"]},
        "sub.org.test": {"TXT": ["v=spf1 -all"]},
        "dup.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.dup.test": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
        "junk.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.junk.test": {"TXT": ["v=DMARC1; p=bogus; pct=xyz; adkim=q; junk"]},
        "pct0.test": {"TXT": ["v=spf1 -all"]},
        "_dmarc.pct0.test": {"TXT": ["v=DMARC1; p=reject; pct=0"]},
        "slow.test": {"TIMEOUT": True},
        "_dmarc.slow.test": {"TIMEOUT": True},
        "fail.test": {"SERVFAIL": True},
        "_dmarc.fail.test": {"SERVFAIL": True},
        "big.test": {"TXT": ["v=spf1 " + "ip4:10.0.0.1 " * 800 + "-all"]},
        "perm.test": {"TXT": ["v=spf1 ip4:300.1.1.1 -all"]},
        "helo.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
        "9.0.0.127.in-addr.arpa": {"PTR": ["good.test"]},
        **SPF_INCLUDE_LOOP, **DEEP, **VOID,
    })
    with DNSServer(zone) as dns:
        yield {"dns": dns, "store": store, "signer": Signer(store)}


def run(check: InboundChecker, msg: bytes, mail_from: str = "alice@good.test",
        helo: str = "helo.test") -> Verdict:
    early = check.envelope_sync(CLIENT, helo, mail_from)
    return check.message_sync(msg, early)


def ar(verdict: Verdict) -> str:
    return verdict.header.decode()


def test_signed_and_aligned_passes_everything(world: dict[str, Any]) -> None:
    msg = message()
    signed = world["signer"].sign_sync(msg) + msg
    verdict = run(checker(world["dns"].nameserver), signed)
    text = ar(verdict)
    assert text.startswith("Authentication-Results: mx.test;\n")
    assert "iprev=pass (good.test) policy.iprev=127.0.0.9" in text
    assert "spf=pass" in text and "smtp.mailfrom=alice@good.test" in text
    assert "spf=pass smtp.helo=helo.test" in text
    assert text.count("dkim=pass") == 2
    assert "header.a=ed25519-sha256" in text and "header.a=rsa-sha256" in text
    assert "dmarc=pass (p=reject) header.from=good.test" in text
    assert verdict.action == "accept" and verdict.reply is None


def test_forged_from_under_reject_is_refused(world: dict[str, Any]) -> None:
    verdict = run(checker(world["dns"].nameserver), message(), mail_from="x@soft.test")
    assert "dmarc=fail (p=reject) header.from=good.test" in ar(verdict)
    assert "spf=softfail" in ar(verdict)
    assert verdict.action == "refuse"
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (
        550, "5.7.1")


def test_quarantine_goes_to_junk_and_spf_fail_alone_only_marks(world: dict[str, Any]
                                                                ) -> None:
    check = checker(world["dns"].nameserver)
    verdict = run(check, message("a@quar.test"), mail_from="a@quar.test")
    assert "spf=fail" in ar(verdict) and "dmarc=fail (p=quarantine)" in ar(verdict)
    assert verdict.action == "junk"
    verdict = run(check, message("a@none.test"), mail_from="a@quar.test")
    assert "spf=fail" in ar(verdict) and "dmarc=fail (p=none)" in ar(verdict)
    assert verdict.action == "accept"


def test_relaxed_alignment_uses_the_organisational_domain_and_sp(world: dict[str, Any]
                                                                 ) -> None:
    check = checker(world["dns"].nameserver)
    # sub.org.test has no record: org.test's sp=reject applies (RFC 7489 6.6.3).
    verdict = run(check, message("a@sub.org.test"), mail_from="a@sub.org.test")
    assert "dmarc=fail (p=reject) header.from=sub.org.test" in ar(verdict)
    assert verdict.action == "refuse"
    # Signed by sub.org.test with its own key: passes, and so would org.test relaxed.
    msg = message("a@sub.org.test")
    verdict = run(check, world["signer"].sign_sync(msg) + msg, mail_from="a@sub.org.test")
    assert "dmarc=pass" in ar(verdict) and verdict.action == "accept"


def test_junk_and_duplicate_dmarc_records(world: dict[str, Any]) -> None:
    check = checker(world["dns"].nameserver)
    # Two records: no policy at all (RFC 7489 6.6.3 step 5).
    verdict = run(check, message("a@dup.test"), mail_from="a@dup.test")
    assert "dmarc=none header.from=dup.test" in ar(verdict)
    # An invalid p= without rua: not a usable record either.
    verdict = run(check, message("a@junk.test"), mail_from="a@junk.test")
    assert "dmarc=none header.from=junk.test" in ar(verdict)
    assert verdict.action == "accept"


def test_pct_zero_downgrades_reject_to_quarantine(world: dict[str, Any]) -> None:
    verdict = run(checker(world["dns"].nameserver), message("a@pct0.test"),
                  mail_from="a@pct0.test")
    assert "dmarc=fail" in ar(verdict) and verdict.action == "junk"


@pytest.mark.parametrize("from_", [
    "a@good.test, b@evil.test",
    "=?utf-8?b?YUBnb29kLnRlc3Q=?=@evil.test",
    "<a@good.test@evil.test>",
    "a@[127.0.0.1]",
    "a@-bad-.test",
    "a@good.test (x) <b@evil.test>",
    "",
])
def test_ambiguous_from_never_passes(world: dict[str, Any], from_: str) -> None:
    msg = message(from_) if from_ else message().replace(b"From: Alice <alice@good.test>\n",
                                                         b"")
    signed = world["signer"].sign_sync(message()) + msg
    verdict = run(checker(world["dns"].nameserver), signed)
    assert "dmarc=pass" not in ar(verdict)
    assert verdict.action == "refuse"
    assert verdict.reply is not None and verdict.reply.code == 550
    assert "ambiguous From" in verdict.reply.text


def test_from_not_utf8_is_ambiguous(world: dict[str, Any]) -> None:
    msg = message().replace(b"Alice <alice@good.test>", b"Alice <alice@good.test\xff>")
    verdict = run(checker(world["dns"].nameserver), msg)
    assert verdict.action == "refuse" and "dmarc=pass" not in ar(verdict)


def test_two_from_fields_refused_even_if_signed(world: dict[str, Any]) -> None:
    msg = message(extra="From: boss@evil.test\n")
    signed = world["signer"].sign_sync(message()) + msg
    verdict = run(checker(world["dns"].nameserver), signed)
    assert verdict.action == "refuse" and "2 From header fields" in verdict.reply.text  # type: ignore[union-attr]


def test_forged_authentication_results_removed(world: dict[str, Any]) -> None:
    forged = ("Authentication-Results: MX.test.;\n\tdkim=pass header.d=good.test\n"
              "Authentication-Results: (comment) mx.test; dmarc=pass\n"
              "Authentication-Results: other.example; dkim=pass\n")
    msg = message("a@none.test", extra=forged)
    verdict = run(checker(world["dns"].nameserver), msg, mail_from="a@none.test")
    assert b"MX.test." not in verdict.message
    assert b"(comment) mx.test" not in verdict.message
    assert b"Authentication-Results: other.example; dkim=pass\n" in verdict.message
    assert b"Subject: hi\n" in verdict.message


def test_spf_limits(world: dict[str, Any]) -> None:
    check = checker(world["dns"].nameserver)
    for sender in ("a@loop0.test", "a@deep0.test", "a@void.test", "a@perm.test"):
        verdict = run(check, message("a@none.test"), mail_from=sender)
        assert "spf=permerror" in ar(verdict), (sender, ar(verdict))
    verdict = run(check, message("a@none.test"), mail_from="a@big.test")
    assert "spf=fail" in ar(verdict)  # 10 KiB TXT over TCP, evaluated, no match


def test_dns_that_never_answers_is_bounded_and_deferred(world: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookups that time out are granted no more than the 3 s budget in all (each
    lookup alone may take dns.timeout, 2 s: three of them would be 6 s). Checked on the
    lifetimes granted, not on the elapsed time, which a loaded machine stretches."""
    timed_out: list[float] = []
    resolve = dns.resolver.Resolver.resolve

    def spy(self: dns.resolver.Resolver, *args: Any, **kwargs: Any) -> Any:
        try:
            return resolve(self, *args, **kwargs)
        except dns.exception.Timeout:
            timed_out.append(kwargs["lifetime"])
            raise

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", spy)
    check = checker(world["dns"].nameserver, budget=3)
    verdict = run(check, message("a@slow.test"), mail_from="a@slow.test", helo="slow.test")
    assert timed_out and max(timed_out) <= 2
    assert sum(timed_out) <= 3 + 0.05  # a timeout ends at or after its lifetime
    monkeypatch.undo()
    assert "spf=temperror" in ar(verdict) and "dmarc=temperror" in ar(verdict)
    assert verdict.action == "defer"
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (
        451, "4.7.5")
    accept = checker(world["dns"].nameserver, budget=3, temperror="accept")
    verdict = run(accept, message("a@fail.test"), mail_from="a@fail.test")
    assert "dmarc=temperror" in ar(verdict) and verdict.action == "accept"


def test_dkim_hostile_keys_and_tags(world: dict[str, Any], tmp_path: Path) -> None:
    from sa_helpers import rsa_key
    small = rsa_key("none.test", "small", 1024)
    zone = {"none.test": {"TXT": ["v=spf1 ?all"]},
            "_dmarc.none.test": {"TXT": ["v=DMARC1; p=none"]},
            "huge._domainkey.none.test": {"TXT": [raw_rsa_record(16384)]},
            "tiny._domainkey.none.test": {"TXT": [raw_rsa_record(512)]},
            "small._domainkey.none.test": {"TXT": [small.record]}}
    with DNSServer(zone) as dns:
        check = checker(dns.nameserver)
        base = message("a@none.test")
        sig = sign_with(base, [small])
        for selector, reason in (("huge", "too long"), ("tiny", "too short")):
            forged = sig.replace(b"s=small", b"s=" + selector.encode())
            verdict = run(check, forged + base, mail_from="a@none.test")
            assert "dkim=permerror" in ar(verdict) and reason in ar(verdict)
        assert "dkim=pass" in ar(run(check, sig + base, mail_from="a@none.test"))
        bad_b64 = sig.replace(b"b=", b"b=!!!", 1)
        assert "dkim=pass" not in ar(run(check, bad_b64 + base, mail_from="a@none.test"))
        unknown = sig.replace(b"a=rsa-sha256", b"a=rsa-sha512")
        assert "dkim=permerror" in ar(run(check, unknown + base, mail_from="a@none.test"))
        # l= longer than the body: never a pass.
        longer = sign_l(base, small, 10_000)
        assert "dkim=pass" not in ar(run(check, longer + base, mail_from="a@none.test"))
        # l= shorter: content appended after the signed part is not vouched for.
        short = sign_l(base, small, None)
        verdict = run(check, short + base + b"Appended by someone else.\n",
                      mail_from="a@none.test")
        assert "dkim=policy" in ar(verdict) and "dkim=pass" not in ar(verdict)
        # 50 signatures: 5 verified, the rest neutral (not verified: the work is bounded).
        verdict = run(check, sig * 50 + base, mail_from="a@none.test")
        assert ar(verdict).count("dkim=pass") == 5
        assert ar(verdict).count("dkim=neutral") == 45


def sign_l(base: bytes, key: Any, length: int | None) -> bytes:
    import dkim
    sig = dkim.sign(base, key.selector.encode(), key.domain.encode(), key.private,
                    include_headers=[b"from", b"to", b"subject"],
                    canonicalize=(b"relaxed", b"relaxed"), length=True, linesep=b"\n")
    if length is not None:
        import re
        sig = re.sub(rb"l=\d+", b"l=%d" % length, sig)
    return sig


def test_unicode_and_overlong_header_lines(world: dict[str, Any]) -> None:
    check = checker(world["dns"].nameserver)
    extra = "Subject2: " + "\u00e9" * 5000 + "\nX-Long: " + "a" * 20000 + "\n"
    msg = message("a@none.test", extra=extra)
    signed = world["signer"].sign_sync(message("a@none.test")) + msg
    verdict = run(check, signed, mail_from="a@none.test")
    assert "dmarc=" in ar(verdict) and verdict.action == "accept"
    assert all(len(line) < 200 for line in verdict.header.split(b"\n"))


def test_budget_not_spent_while_the_client_uploads(world: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The time between the envelope checks and the end of the data is the client's:
    a slow upload must not leave the DKIM/DMARC lookups without budget. The upload
    takes 11 s of the budget's clock (not a real sleep), more than the whole 10 s: the
    lookups after it still have a loaded machine's time left (a 2 s budget after a real
    2.5 s sleep did not always)."""
    from mailserver.senderauth import lookups as lookups_module

    upload = [0.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return time.monotonic() + upload[0]

    monkeypatch.setattr(lookups_module, "time", Clock)
    check = checker(world["dns"].nameserver, budget=10)
    early = check.envelope_sync(CLIENT, "helo.test", "alice@good.test")
    upload[0] += 11
    msg = message()
    verdict = check.message_sync(world["signer"].sign_sync(msg) + msg, early)
    assert ar(verdict).count("dkim=pass") == 2 and "dmarc=pass" in ar(verdict)


@pytest.mark.parametrize("extra", [
    "From : boss@evil.test\n",        # space before the colon: still a From to clients
    "FROM: boss@evil.test\n",         # any case
    "From:\n boss@evil.test\n",       # folded
])
def test_second_from_in_any_spelling_is_ambiguous(world: dict[str, Any], extra: str) -> None:
    msg = message(extra=extra)
    verdict = run(checker(world["dns"].nameserver), world["signer"].sign_sync(msg) + msg)
    assert verdict.action == "refuse" and "dmarc=pass" not in ar(verdict)


def test_identities_smuggled_into_helo_and_mail_from(world: dict[str, Any]) -> None:
    check = checker(world["dns"].nameserver)
    # An address literal as HELO has no SPF (RFC 7208 2.3): none, never pass.
    verdict = run(check, message("a@none.test"), mail_from="a@none.test", helo="[127.0.0.9]")
    assert "spf=none smtp.helo=[127.0.0.9]" in ar(verdict) or \
        'spf=none smtp.helo="[127.0.0.9]"' in ar(verdict)
    # A quoted local part that looks like an address: the domain is the last one.
    verdict = run(check, message(), mail_from='"alice@good.test"@soft.test')
    assert "spf=softfail" in ar(verdict) and "dmarc=fail" in ar(verdict)
    assert 'smtp.mailfrom="\\"alice@good.test\\"@soft.test"' in ar(verdict)
    assert verdict.action == "refuse"
    # The null sender with a HELO naming the victim, from an address it does not list.
    verdict = run(check, message(), mail_from="", helo="quar.test")
    assert re.search(r"spf=fail \([^)]*\) smtp\.mailfrom=postmaster@quar\.test", ar(verdict))
    assert "dmarc=fail" in ar(verdict) and verdict.action == "refuse"


def test_forged_results_folded_or_commented_are_removed_too() -> None:
    from mailserver.senderauth.results import strip_our_results
    message = (b"Authentication-Results:\n mx.test; dkim=pass header.d=good.test\n"
               b"authentication-results: (mx.test) mx.test ;\n\tdmarc=pass\n"
               b"Authentication-Results: mx.test.evil; dkim=pass\n"
               b"Subject: s\n\nAuthentication-Results: mx.test; in the body stays\n")
    stripped, removed = strip_our_results(message, "mx.test")
    assert removed == 2
    assert stripped == (b"Authentication-Results: mx.test.evil; dkim=pass\n"
                        b"Subject: s\n\nAuthentication-Results: mx.test; in the body stays\n")
