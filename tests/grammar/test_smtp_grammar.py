"""The SMTP command grammar: every command, valid and invalid, with its exact reply."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailserver.address import Address
from mailserver.errors import ReplyError
from mailserver.smtp.grammar import (
    Auth,
    Bdat,
    Command,
    Data,
    Ehlo,
    Helo,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Vrfy,
    parse_command,
)


def refused(line: bytes, **kwargs: bool) -> tuple[int, str | None]:
    with pytest.raises(ReplyError) as info:
        parse_command(line, **kwargs)
    return info.value.reply.code, info.value.reply.enhanced


def mail(sender: Address, **kwargs: object) -> Mail:
    return Mail(sender, **kwargs)  # type: ignore[arg-type]


A = Address

VALID: list[tuple[bytes, Command]] = [
    # EHLO / HELO: lenient argument, first word only, as given.
    (b"EHLO mail.example.org", Ehlo("mail.example.org")),
    (b"ehlo Mail.Example.ORG", Ehlo("Mail.Example.ORG")),
    (b"EHLO [192.0.2.1]", Ehlo("[192.0.2.1]")),
    (b"EHLO [IPv6:2001:db8::1]", Ehlo("[IPv6:2001:db8::1]")),
    (b"EHLO my_host", Ehlo("my_host")),
    (b"EHLO  spaced", Ehlo("spaced")),
    (b"EHLO host extra words", Ehlo("host")),
    (b"EHLO host ", Ehlo("host")),
    (b"HELO localhost", Helo("localhost")),
    (b"HeLo x", Helo("x")),
    # MAIL
    (b"MAIL FROM:<a@b.example>", mail(A("a", "b.example"))),
    (b"mail from:<a@b.example>", mail(A("a", "b.example"))),
    (b"MAIL FROM: <a@b.example>", mail(A("a", "b.example"))),
    (b"MAIL FROM:<User@EXAMPLE.Org>", mail(A("User", "example.org"))),
    (b"MAIL FROM:<>", mail(Address.null())),
    (b"MAIL FROM:<> SIZE=0", mail(Address.null(), size=0)),
    (b"MAIL FROM:<a@b> SIZE=12345", mail(A("a", "b"), size=12345)),
    (b"MAIL FROM:<a@b> size=12345", mail(A("a", "b"), size=12345)),
    (b"MAIL FROM:<a@b> SIZE=99999999999999999999", mail(A("a", "b"), size=10**20 - 1)),
    (b"MAIL FROM:<a@b> BODY=7BIT", mail(A("a", "b"), body="7BIT")),
    (b"MAIL FROM:<a@b> BODY=8bitmime", mail(A("a", "b"), body="8BITMIME")),
    (b"MAIL FROM:<a@b> SMTPUTF8", mail(A("a", "b"), smtputf8=True)),
    (b"MAIL FROM:<a@b> smtputf8", mail(A("a", "b"), smtputf8=True)),
    (b"MAIL FROM:<a@b> AUTH=<>", mail(A("a", "b"), auth="<>")),
    (b"MAIL FROM:<a@b> AUTH=e+3Dmc2@example.com", mail(A("a", "b"), auth="e=mc2@example.com")),
    (b"MAIL FROM:<a@b> AUTH=a+2Bb@c", mail(A("a", "b"), auth="a+b@c")),
    (
        b"MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME SMTPUTF8 AUTH=x@y",
        mail(A("a", "b"), size=10, body="8BITMIME", smtputf8=True, auth="x@y"),
    ),
    (b"MAIL FROM:<a@b> SIZE=10  BODY=7BIT", mail(A("a", "b"), size=10, body="7BIT")),
    (b"MAIL FROM:<a@b> ", mail(A("a", "b"))),
    # Local parts: RFC 5321 4.1.2 Dot-string / Quoted-string.
    (b"MAIL FROM:<user%other@local>", mail(A("user%other", "local"))),
    (b"MAIL FROM:<a.b.c@d>", mail(A("a.b.c", "d"))),
    (b"MAIL FROM:<!#$%&'*+-/=?^_`{|}~@d>", mail(A("!#$%&'*+-/=?^_`{|}~", "d"))),
    (b'MAIL FROM:<"john"@d>', mail(A("john", "d"))),
    (b'MAIL FROM:<"jo\\hn"@d>', mail(A("john", "d"))),
    (b'MAIL FROM:<"john doe"@d>', mail(A('"john doe"', "d"))),
    (b'MAIL FROM:<"a\\"b"@d>', mail(A('"a\\"b"', "d"))),
    (b'MAIL FROM:<"a\\\\b"@d>', mail(A('"a\\\\b"', "d"))),
    (b'MAIL FROM:<"a@b"@d>', mail(A('"a@b"', "d"))),
    (b'MAIL FROM:<"<>"@d>', mail(A('"<>"', "d"))),
    (b'MAIL FROM:<"a..b"@d>', mail(A('"a..b"', "d"))),
    (b'MAIL FROM:<""@d>', mail(A('""', "d"))),
    (b"MAIL FROM:<" + b"x" * 64 + b"@d>", mail(A("x" * 64, "d"))),
    # Domains and address literals (RFC 5321 4.1.3).
    (b"MAIL FROM:<a@sub-1.EXAMPLE.org>", mail(A("a", "sub-1.example.org"))),
    (b"MAIL FROM:<a@[192.0.2.1]>", mail(A("a", "[192.0.2.1]"))),
    (b"MAIL FROM:<a@[192.000.002.001]>", mail(A("a", "[192.0.2.1]"))),
    (b"MAIL FROM:<a@[IPv6:2001:DB8:0:0::1]>", mail(A("a", "[IPv6:2001:db8::1]"))),
    (b"MAIL FROM:<a@[ipv6:::1]>", mail(A("a", "[IPv6:::1]"))),
    (b"MAIL FROM:<a@[IPv6:::ffff:192.0.2.1]>", mail(A("a", "[IPv6:::ffff:c000:201]"))),
    (b"MAIL FROM:<a@" + b"x" * 63 + b".org>", mail(A("a", "x" * 63 + ".org"))),
    # Source routes: accepted and ignored (RFC 5321 4.1.2, Appendix C).
    (b"MAIL FROM:<@a,@b:user@c>", mail(A("user", "c"))),
    (b"MAIL FROM:<@relay.example:user@c>", mail(A("user", "c"))),
    # UTF-8 (RFC 6531 3.3), accepted by the grammar when SMTPUTF8 is on offer.
    (
        "MAIL FROM:<pelé@exämple.org> SMTPUTF8".encode(),
        mail(A("pelé", "exämple.org"), smtputf8=True),
    ),
    ("MAIL FROM:<用户@例子.广告>".encode(), mail(A("用户", "例子.广告"))),
    ('MAIL FROM:<"jö hn"@d>'.encode(), mail(A('"jö hn"', "d"))),
    # RCPT
    (b"RCPT TO:<a@b.example>", Rcpt(A("a", "b.example"))),
    (b"rcpt to:<a@b.example>", Rcpt(A("a", "b.example"))),
    (b"RCPT TO: <a@b.example>", Rcpt(A("a", "b.example"))),
    (b"RCPT TO:<Postmaster>", Rcpt(A("Postmaster", ""), postmaster=True)),
    (b"RCPT TO:<postmaster>", Rcpt(A("Postmaster", ""), postmaster=True)),
    (b"RCPT TO:<POSTMASTER>", Rcpt(A("Postmaster", ""), postmaster=True)),
    (b"RCPT TO:<Postmaster@Example.ORG>", Rcpt(A("Postmaster", "example.org"))),
    (b"RCPT TO:<@a,@b:user@c>", Rcpt(A("user", "c"))),
    (b"RCPT TO:<user%other@local>", Rcpt(A("user%other", "local"))),
    ("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>".encode(), Rcpt(A("δοκιμή", "παράδειγμα.δοκιμή"))),
    # DATA, BDAT (RFC 3030 2)
    (b"DATA", Data()),
    (b"data", Data()),
    (b"DATA ", Data()),
    (b"BDAT 0", Bdat(0, False)),
    (b"BDAT 0 LAST", Bdat(0, True)),
    (b"BDAT 1000 last", Bdat(1000, True)),
    (b"bdat 42", Bdat(42, False)),
    (b"BDAT " + b"9" * 18, Bdat(10**18 - 1, False)),
    (b"BDAT 007", Bdat(7, False)),
    # The simple ones.
    (b"RSET", Rset()),
    (b"NOOP", Noop()),
    (b"NOOP anything at all", Noop()),
    (b"QUIT", Quit()),
    (b"quit", Quit()),
    (b"HELP", Help("")),
    (b"HELP mail", Help("mail")),
    (b"VRFY user", Vrfy("user")),
    (b"VRFY <user@example.org>", Vrfy("<user@example.org>")),
    (b'VRFY "John Doe"', Vrfy('"John Doe"')),
    (b"STARTTLS", StartTls()),
    (b"starttls", StartTls()),
    # AUTH (RFC 4954 4)
    (b"AUTH PLAIN", Auth("PLAIN")),
    (b"auth plain", Auth("PLAIN")),
    (b"AUTH PLAIN =", Auth("PLAIN", "=")),
    (b"AUTH PLAIN AHVzZXIAcGFzcw==", Auth("PLAIN", "AHVzZXIAcGFzcw==")),
    (b"AUTH LOGIN dXNlcg==", Auth("LOGIN", "dXNlcg==")),
    (b"AUTH SCRAM-SHA-256", Auth("SCRAM-SHA-256")),
    (b"AUTH X_MECH abcd", Auth("X_MECH", "abcd")),
]


@pytest.mark.parametrize(("line", "expected"), VALID, ids=[repr(v[0])[:60] for v in VALID])
def test_valid(line: bytes, expected: Command) -> None:
    assert parse_command(line) == expected


INVALID: list[tuple[bytes, int, str]] = [
    # Unknown and unimplemented verbs.
    (b"FOO", 500, "5.5.1"),
    (b"FOO bar", 500, "5.5.1"),
    (b"GET / HTTP/1.1", 500, "5.5.1"),
    (b"MAILFROM:<a@b>", 500, "5.5.1"),
    (b"\xc3\xa9HLO x", 500, "5.5.1"),
    (b"EHLOX x", 500, "5.5.1"),
    (b"EXPN list", 502, "5.5.1"),
    (b"expn list", 502, "5.5.1"),
    (b"TURN", 502, "5.5.1"),
    (b"ETRN example.org", 502, "5.5.1"),
    (b"ATRN", 502, "5.5.1"),
    (b"SEND FROM:<a@b>", 502, "5.5.1"),
    (b"SOML FROM:<a@b>", 502, "5.5.1"),
    (b"SAML FROM:<a@b>", 502, "5.5.1"),
    # Empty lines, control characters anywhere (RFC 3463 X.5.2).
    (b"", 500, "5.5.2"),
    (b"   ", 500, "5.5.2"),
    (b"\x00", 500, "5.5.2"),
    (b"NOOP\x00", 500, "5.5.2"),
    (b"MAIL FROM:<a\x00b@c>", 500, "5.5.2"),
    (b"RCPT TO:<a@b>\rRCPT TO:<c@d>", 500, "5.5.2"),
    (b"RCPT TO:<a@b>\nRCPT TO:<c@d>", 500, "5.5.2"),
    (b"EHLO\thost", 500, "5.5.2"),
    (b"EHLO host\x1b[31m", 500, "5.5.2"),
    (b"HELP \x7f", 500, "5.5.2"),
    ("RCPT TO:<a\u0085b@c>".encode(), 500, "5.5.2"),  # C1 control (NEL)
    ("HELP a\u2028b".encode(), 500, "5.5.2"),  # LINE SEPARATOR
    # EHLO/HELO need an argument (RFC 5321 4.1.1.1) and only ASCII (RFC 6531 3.7.1).
    (b"EHLO", 501, "5.5.4"),
    (b"EHLO ", 501, "5.5.4"),
    (b"HELO", 501, "5.5.4"),
    ("EHLO exämple.org".encode(), 501, "5.5.4"),
    (b"EHLO \xff", 501, "5.5.4"),
    # Commands without arguments.
    (b"DATA now", 501, "5.5.4"),
    (b"RSET x", 501, "5.5.4"),
    (b"QUIT now", 501, "5.5.4"),
    (b"STARTTLS x", 501, "5.5.4"),  # RFC 3207 4
    # MAIL: the FROM: keyword.
    (b"MAIL", 501, "5.5.4"),
    (b"MAIL TO:<a@b>", 501, "5.5.4"),
    (b"MAIL FROM <a@b>", 501, "5.5.4"),
    (b"MAIL FRM:<a@b>", 501, "5.5.4"),
    # MAIL: the reverse-path (501 5.1.7).
    (b"MAIL FROM:", 501, "5.1.7"),
    (b"MAIL FROM:a@b", 501, "5.1.7"),
    (b"MAIL FROM:<a@b", 501, "5.1.7"),
    (b"MAIL FROM:a@b>", 501, "5.1.7"),
    (b"MAIL FROM:<<a@b>>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b>junk", 501, "5.1.7"),
    (b"MAIL FROM:<a@b>>", 501, "5.1.7"),
    (b"MAIL FROM:  <a@b>", 501, "5.1.7"),
    (b"MAIL FROM:<a>", 501, "5.1.7"),
    (b"MAIL FROM:<a@>", 501, "5.1.7"),
    (b"MAIL FROM:<@b>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b@c>", 501, "5.1.7"),
    (b"MAIL FROM:<a b@c>", 501, "5.1.7"),
    (b"MAIL FROM:<.a@b>", 501, "5.1.7"),
    (b"MAIL FROM:<a.@b>", 501, "5.1.7"),
    (b"MAIL FROM:<a..b@c>", 501, "5.1.7"),
    (b"MAIL FROM:<a(b)@c>", 501, "5.1.7"),
    (b"MAIL FROM:<a,b@c>", 501, "5.1.7"),
    (b"MAIL FROM:<a[b]@c>", 501, "5.1.7"),
    (b"MAIL FROM:<" + b"x" * 65 + b"@d>", 501, "5.1.7"),
    (b'MAIL FROM:<"' + b"x" * 63 + b'"@d>', 501, "5.1.7"),
    (b'MAIL FROM:<"unterminated@d>', 501, "5.1.7"),
    (b'MAIL FROM:<"a"b@d>', 501, "5.1.7"),
    (b'MAIL FROM:<"a\\\xc3\xa9"@d>', 501, "5.1.7"),  # quoted-pair is ASCII only
    (b"MAIL FROM:<a@b..c>", 501, "5.1.7"),
    (b"MAIL FROM:<a@.b>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b.>", 501, "5.1.7"),
    (b"MAIL FROM:<a@-b.c>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b-.c>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b_c.d>", 501, "5.1.7"),
    (b"MAIL FROM:<a@" + b"x" * 64 + b".org>", 501, "5.1.7"),
    (b"MAIL FROM:<a@" + b"x." * 127 + b"xy>", 501, "5.1.7"),
    (b"MAIL FROM:<" + b"x" * 64 + b"@" + b".".join([b"y" * 63] * 3) + b">", 501, "5.1.7"),
    (b"MAIL FROM:<a@[192.0.2.256]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[192.0.2]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[IPv6:2001:db8::g]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[IPv6:fe80::1%eth0]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[x-tag:stuff]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[192.0.2.1>", 501, "5.1.7"),
    (b"MAIL FROM:<@a:@b:user@c>", 501, "5.1.7"),  # colons are not the route separator
    (b"MAIL FROM:<@a,b:user@c>", 501, "5.1.7"),
    (b"MAIL FROM:<@a,@b user@c>", 501, "5.1.7"),
    (b"MAIL FROM:<@:user@c>", 501, "5.1.7"),
    (b"MAIL FROM:<a\xff@b>", 501, "5.1.7"),  # invalid UTF-8
    (b"MAIL FROM:<a@b\xc3>", 501, "5.1.7"),
    (b"MAIL FROM:<a@ex ample.org>", 501, "5.1.7"),
    ("MAIL FROM:<a@b\u00a0c>".encode(), 501, "5.1.7"),  # NBSP in a domain
    # MAIL parameters.
    (b"MAIL FROM:<a@b> SIZE", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=abc", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=-1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=1.5", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=" + b"1" * 21, 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=1 SIZE=1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=1 size=2", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> BODY", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> BODY=8BIT", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> BODY=BINARYMIME", 504, "5.5.4"),
    (b"MAIL FROM:<a@b> BODY=binarymime", 504, "5.5.4"),
    (b"MAIL FROM:<a@b> BODY=7BIT BODY=7BIT", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> SMTPUTF8=yes", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> AUTH", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> AUTH=a+2bb", 501, "5.5.4"),  # hexchar is upper-case hex
    (b"MAIL FROM:<a@b> AUTH=a+2", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> AUTH=a+0Ab", 501, "5.5.4"),  # an encoded LF
    (b"MAIL FROM:<a@b> AUTH=+FF", 501, "5.5.4"),  # not UTF-8
    (b"MAIL FROM:<a@b> =x", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> -X=1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> X=a=b", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> X_Y=1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> FOO", 555, "5.5.4"),
    (b"MAIL FROM:<a@b> FOO=bar", 555, "5.5.4"),
    (b"MAIL FROM:<a@b> RET=BODY", 501, "5.5.4"),  # DSN (RFC 3461 4.3): FULL or HDRS
    (b"MAIL FROM:<a@b> ENVID=a+2b", 501, "5.5.4"),  # xtext hex is upper case
    (b"MAIL FROM:<a@b> RET=FULL RET=HDRS", 501, "5.5.4"),
    (b"MAIL FROM:<a@b> REQUIRETLS=YES", 501, "5.5.4"),  # RFC 8689 3: no value
    (b"MAIL FROM:<a@b> junk", 555, "5.5.4"),
    (b"MAIL FROM:<a@b> SIZE=1 FOO", 555, "5.5.4"),
    # RCPT: the TO: keyword and the forward-path (501 5.1.3).
    (b"RCPT", 501, "5.5.4"),
    (b"RCPT FROM:<a@b>", 501, "5.5.4"),
    (b"RCPT TO <a@b>", 501, "5.5.4"),
    (b"RCPT TO:", 501, "5.1.3"),
    (b"RCPT TO:<>", 501, "5.1.3"),
    (b"RCPT TO:a@b", 501, "5.1.3"),
    (b"RCPT TO:<a@b", 501, "5.1.3"),
    (b"RCPT TO:<a@b>junk", 501, "5.1.3"),
    (b"RCPT TO:<a>", 501, "5.1.3"),
    (b"RCPT TO:<Postmaster@>", 501, "5.1.3"),
    (b"RCPT TO:<a@b@c>", 501, "5.1.3"),
    (b"RCPT TO:<a@>", 501, "5.1.3"),
    (b"RCPT TO:<" + b"x" * 65 + b"@d>", 501, "5.1.3"),
    (b"RCPT TO:<@a:@b:user@c>", 501, "5.1.3"),
    (b"RCPT TO:<a\xff@b>", 501, "5.1.3"),
    # RCPT parameters: DSN's only (RFC 3461 4.1, 4.2; RFC 5321 4.1.1.11 for the rest).
    (b"RCPT TO:<a@b> junk", 555, "5.5.4"),
    (b"RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
    (b"RCPT TO:<a@b> NOTIFY=DELAY,DELAY", 501, "5.5.4"),
    (b"RCPT TO:<a@b> ORCPT=x400;a@b", 501, "5.5.4"),
    (b"RCPT TO:<Postmaster> NOTIFY=SOMETIMES", 501, "5.5.4"),
    (b"RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", 501, "5.5.4"),
    (b"RCPT TO:<a@b> =x", 501, "5.5.4"),
    (b"RCPT TO:<a@b> A=1 A=2", 501, "5.5.4"),
    # BDAT (RFC 3030 2).
    (b"BDAT", 501, "5.5.4"),
    (b"BDAT LAST", 501, "5.5.4"),
    (b"BDAT -1", 501, "5.5.4"),
    (b"BDAT 1.5", 501, "5.5.4"),
    (b"BDAT 0x10", 501, "5.5.4"),
    (b"BDAT 10 FIRST", 501, "5.5.4"),
    (b"BDAT 10 LAST x", 501, "5.5.4"),
    (b"BDAT 10  LAST", 501, "5.5.4"),
    (b"BDAT " + b"1" * 19, 501, "5.5.4"),
    (b"BDAT \xd9\xa1", 501, "5.5.4"),  # ARABIC-INDIC DIGIT ONE is not DIGIT
    # VRFY
    (b"VRFY", 501, "5.5.4"),
    (b"VRFY  ", 501, "5.5.4"),
    # AUTH (RFC 4954 4)
    (b"AUTH", 501, "5.5.4"),
    (b"AUTH ", 501, "5.5.4"),
    (b"AUTH PLAIN a b", 501, "5.5.4"),
    (b"AUTH PL@IN", 501, "5.5.4"),
    (b"AUTH " + b"X" * 21, 501, "5.5.4"),
    (b"AUTH PLAIN abc", 501, "5.5.2"),
    (b"AUTH PLAIN ab!d", 501, "5.5.2"),
    (b"AUTH PLAIN ==", 501, "5.5.2"),
]


@pytest.mark.parametrize(
    ("line", "code", "enhanced"), INVALID, ids=[repr(v[0])[:60] for v in INVALID]
)
def test_invalid(line: bytes, code: int, enhanced: str) -> None:
    assert refused(line) == (code, enhanced)


# ------------------------------------------------------------------ SMTPUTF8 not on offer


def test_without_smtputf8_the_parameter_is_unknown() -> None:
    assert refused(b"MAIL FROM:<a@b> SMTPUTF8", smtputf8_allowed=False) == (555, "5.5.4")


def test_without_smtputf8_non_ascii_addresses_are_refused_rfc6531_3_5() -> None:
    sender = "MAIL FROM:<pelé@example.org>".encode()
    recipient = "RCPT TO:<user@exämple.org>".encode()
    assert refused(sender, smtputf8_allowed=False) == (550, "5.6.7")
    assert refused(recipient, smtputf8_allowed=False) == (553, "5.6.7")


def test_without_smtputf8_ascii_works_and_invalid_utf8_is_still_syntax() -> None:
    assert parse_command(b"MAIL FROM:<a@b> SIZE=1", smtputf8_allowed=False) == mail(
        A("a", "b"), size=1
    )
    assert refused(b"RCPT TO:<a\xff@b>", smtputf8_allowed=False) == (501, "5.1.3")
    assert refused("VRFY jörg".encode(), smtputf8_allowed=False) == (501, "5.5.4")
    assert refused("MAIL FROM:<a@b> X=ä".encode(), smtputf8_allowed=False) == (501, "5.5.4")


def test_with_smtputf8_addresses_expose_is_ascii() -> None:
    command = parse_command("RCPT TO:<jörg@example.org>".encode())
    assert isinstance(command, Rcpt)
    assert not command.recipient.is_ascii
    command = parse_command(b"RCPT TO:<jorg@example.org>")
    assert isinstance(command, Rcpt)
    assert command.recipient.is_ascii


# ------------------------------------------------------------------ details


def test_path_limit_is_256_octets_including_brackets() -> None:
    local = b"x" * 64
    domain = b".".join([b"d" * 63, b"d" * 63, b"d" * 61])  # 189 octets
    ok = b"<" + local + b"@" + domain + b">"
    assert len(ok) == 256
    command = parse_command(b"RCPT TO:" + ok)
    assert isinstance(command, Rcpt)
    too_long = b"<" + local + b"@" + domain + b"d>"
    assert refused(b"RCPT TO:" + too_long) == (501, "5.1.3")


def test_quoted_local_part_keeps_brackets_inside_quotes() -> None:
    command = parse_command(b'RCPT TO:<"a>b"@c> ')
    assert command == Rcpt(A('"a>b"', "c"))


def test_source_route_domains_are_checked() -> None:
    assert refused(b"RCPT TO:<@bad_domain:user@c>") == (501, "5.1.3")


def test_reply_text_echo_is_bounded() -> None:
    with pytest.raises(ReplyError) as info:
        parse_command(b"MAIL FROM:<a@b> " + b"X" * 500)
    assert info.value.reply.code == 555
    assert len(str(info.value.reply.text)) < 80


@given(st.binary(max_size=300))
def test_never_crashes_on_arbitrary_bytes(line: bytes) -> None:
    try:
        parse_command(line)
    except ReplyError as error:
        assert error.reply.code in (500, 501, 502, 504, 550, 553, 555)


_ATEXT = "abcxyzABC0189!#$%&'*+-/=?^_`{|}~"
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=8)
_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)


@given(
    st.lists(_atoms, min_size=1, max_size=4),
    st.lists(_labels, min_size=1, max_size=4),
    st.sampled_from([b"MAIL FROM:", b"RCPT TO:"]),
)
def test_valid_addresses_round_trip(atoms: list[str], labels: list[str], verb: bytes) -> None:
    local, domain = ".".join(atoms), ".".join(labels)
    command = parse_command(verb + f"<{local}@{domain.upper()}>".encode())
    address = command.sender if isinstance(command, Mail) else command.recipient  # type: ignore[union-attr]
    assert address == Address(local, domain)


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
def test_quoted_local_parts_have_one_canonical_form(content: str) -> None:
    wire = '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    command = parse_command(f"RCPT TO:<{wire}@d>".encode())
    assert isinstance(command, Rcpt)
    local = command.recipient.localpart
    # Parsing the canonical form again gives the same local part.
    again = parse_command(f"RCPT TO:<{local}@d>".encode())
    assert isinstance(again, Rcpt)
    assert again.recipient.localpart == local
