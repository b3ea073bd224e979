"""The SMTP command grammar: one command line (bytes, without its CRLF) -> a typed command.

Pure: no I/O, no server policy. Whether a command is allowed in the current state,
whether a sender or recipient is acceptable, whether SMTPUTF8 was given for a non-ASCII
address: all of that belongs to the session. This module only answers "is this line a
well-formed command, and what does it say?", refusing with the reply code and enhanced
status code (RFC 3463, RFC 2034) the client should see.

References: RFC 5321 4.1 (commands and their ABNF), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
RFC 6531 (SMTPUTF8), RFC 3030 (CHUNKING/BDAT), RFC 4954 (AUTH), RFC 3207 (STARTTLS),
RFC 3461 4 (xtext, DSN parameters: smtp/dsn.py), RFC 8689 (REQUIRETLS).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from mailserver.address import Address
from mailserver.errors import ReplyError
from mailserver.smtp import dsn as dsn_params
from mailserver.smtp.dsn import RcptDsn
from mailserver.smtp.paths import (  # noqa: F401 - MAX_*: kept importable from here
    MAX_DOMAIN,
    MAX_LABEL,
    MAX_LOCAL_PART,
    MAX_PATH,
    bad_address,
    parse_path,
    split_path,
)
from mailserver.smtp.xclient import Xclient, parse_xclient

# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Ehlo:
    """EHLO (RFC 5321 4.1.1.1); `domain` is the client's argument as given."""

    domain: str


@dataclass(frozen=True)
class Helo:
    """HELO (RFC 5321 4.1.1.1); `domain` is the client's argument as given."""

    domain: str


@dataclass(frozen=True)
class Mail:
    """MAIL FROM (RFC 5321 4.1.1.2) with the parameters we understand.

    `sender` is Address.null() for `<>`. `body` is "7BIT" or "8BITMIME" (RFC 6152) or None
    when not given; `auth` is the decoded AUTH= value (RFC 4954 5), possibly "<>".
    `ret` and `envid` are DSN's (RFC 3461 4.3, 4.4; "" when not given), `requiretls`
    RFC 8689 3's parameter (the session refuses it without TLS).
    """

    sender: Address
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    auth: str | None = None
    ret: str = ""
    envid: str = ""
    requiretls: bool = False


@dataclass(frozen=True)
class Rcpt:
    """RCPT TO (RFC 5321 4.1.1.3).

    `postmaster` is True only for the domain-less `<Postmaster>` form (RFC 5321 4.5.1),
    which means "this host's postmaster"; then `recipient` is Address("Postmaster", "").
    `<postmaster@domain>` is an ordinary address (postmaster False).
    """

    recipient: Address
    postmaster: bool = False
    #: NOTIFY and ORCPT (RFC 3461 4.1, 4.2); `orcpt_unitext` says the ORCPT was sent
    #: with raw UTF-8 (RFC 6533 3 unitext), which only an SMTPUTF8 transaction may do.
    dsn: RcptDsn = RcptDsn()
    orcpt_unitext: bool = False


@dataclass(frozen=True)
class Data:
    """DATA (RFC 5321 4.1.1.4)."""


@dataclass(frozen=True)
class Bdat:
    """BDAT size [LAST] (RFC 3030 2)."""

    size: int
    last: bool


@dataclass(frozen=True)
class Burl:
    """BURL url [LAST] (RFC 4468 3.5); the URL as sent, the session resolves it."""

    url: str
    last: bool


@dataclass(frozen=True)
class Rset:
    """RSET (RFC 5321 4.1.1.5)."""


@dataclass(frozen=True)
class Noop:
    """NOOP (RFC 5321 4.1.1.9); its optional argument is ignored."""


@dataclass(frozen=True)
class Quit:
    """QUIT (RFC 5321 4.1.1.10)."""


@dataclass(frozen=True)
class Help:
    """HELP [topic] (RFC 5321 4.1.1.8); topic "" when none."""

    topic: str


@dataclass(frozen=True)
class Vrfy:
    """VRFY (RFC 5321 4.1.1.6); the argument as given, the session decides what to say."""

    argument: str


@dataclass(frozen=True)
class StartTls:
    """STARTTLS (RFC 3207 4)."""


@dataclass(frozen=True)
class Auth:
    """AUTH mechanism [initial-response] (RFC 4954 4).

    `mechanism` is upper-cased; `initial` is still base64 text ("=" means an empty
    response), checked only for its alphabet: the SASL layer decodes it.
    """

    mechanism: str
    initial: str | None = None


Command: TypeAlias = (
    Ehlo | Helo | Mail | Rcpt | Data | Bdat | Rset | Noop | Quit | Help | Vrfy | StartTls | Auth
    | Burl | Xclient
)

# --------------------------------------------------------------------------- lexical rules

#: C0 controls and DEL. RFC 5321 4.1.1 commands are printable ASCII (plus UTF-8 with
#: SMTPUTF8) separated by SP; a NUL, TAB, bare CR/LF or ESC in a command line is either
#: a broken client or an attack on our logs and parsers.
_CONTROL_BYTES = bytes(range(0x20)) + b"\x7f"

#: RFC 5321 4.1.2 esmtp-keyword and esmtp-value (%d33-60 / %d62-126, + UTF8-non-ascii per
#: RFC 6531 3.3 when SMTPUTF8 is on offer).
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_ESMTP_VALUE_ASCII = re.compile(r"[!-<>-~]+")
_ESMTP_VALUE_UTF8 = re.compile(r"[!-<>-~\u0080-\U0010ffff]+")
#: RFC 1870 3: size-value ::= 1*20DIGIT.
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")
#: RFC 3461 4: xtext = *( xchar / hexchar ); xchar is "!".."~" except "+" and "=".
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")
_XTEXT_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
#: RFC 3030 2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]; we cap the size at 18
#: digits so it always fits a 64-bit integer.
_BDAT_ARGS = re.compile(r"([0-9]{1,18})(?: ([Ll][Aa][Ss][Tt]))?")
#: RFC 4422 3.1 / RFC 4954 4: sasl-mech = 1*20mech-char (upper ALPHA / DIGIT / "-" / "_";
#: matched case-insensitively, as clients differ).
_SASL_MECH = re.compile(r"[A-Za-z0-9_\-]{1,20}")
#: RFC 4954 4: initial-response = base64 / "=".
_BASE64 = re.compile(r"=|(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


# --------------------------------------------------------------------------- errors


def _unrecognized() -> ReplyError:
    # RFC 5321 4.2.4 / RFC 3463 3.6: 500 for a command we do not know; X.5.1 invalid command.
    return ReplyError(500, "5.5.1", "Command unrecognized")


def _syntax(text: str) -> ReplyError:
    # RFC 5321 4.2.2: 501 syntax error in parameters or arguments; X.5.4 invalid arguments.
    return ReplyError(501, "5.5.4", text)


def _quote(token: str) -> str:
    """Client text echoed in a reply, cut short: replies are read by humans, not parsed."""
    return token if len(token) <= 40 else token[:40] + "..."


# --------------------------------------------------------------------------- entry point


def parse_command(line: bytes, *, smtputf8_allowed: bool = True) -> Command:
    """Parse one command line (without CRLF) or raise ReplyError with the client's reply.

    `smtputf8_allowed` says whether the session offers SMTPUTF8 (RFC 6531). When False,
    the SMTPUTF8 parameter is unknown (555 5.5.4), a non-ASCII address is refused as
    RFC 6531 3.5 says (MAIL: 550 5.6.7, RCPT: 553 5.6.7), and non-ASCII elsewhere with
    501 5.5.4. When True, UTF-8 is accepted in every address and the session must still
    refuse non-ASCII addresses in a transaction whose MAIL lacked SMTPUTF8
    (Address.is_ascii), with those same codes.
    """
    if len(line.translate(None, _CONTROL_BYTES)) != len(line):
        # RFC 3463 3.6: X.5.2 syntax error (the command cannot even be tokenised).
        raise ReplyError(500, "5.5.2", "Syntax error: control characters in command")
    # RFC 5321 4.1.1 has no trailing SP, but enough clients send one that refusing it
    # helps nobody; no argument we parse ends with a space.
    line = line.rstrip(b" ")
    if not line:
        raise ReplyError(500, "5.5.2", "Syntax error: empty command")
    verb_bytes, _, arg_bytes = line.partition(b" ")
    verb = verb_bytes.upper()  # RFC 5321 2.4: verbs are case-insensitive
    handler = _HANDLERS.get(verb)
    if handler is None:
        if verb in _NOT_IMPLEMENTED:
            # RFC 5321 4.2.4: 502 for a command we know but do not implement.
            raise ReplyError(502, "5.5.1", "Command not implemented")
        raise _unrecognized()
    arg = _decode(arg_bytes, verb)
    return handler(arg, smtputf8_allowed)


def _decode(arg: bytes, verb: bytes) -> str:
    """Arguments as text: ASCII always; UTF-8 (RFC 6531 3.3) is checked here, allowed later."""
    if arg.isascii():
        return arg.decode("ascii")
    try:
        text = arg.decode("utf-8")
    except UnicodeDecodeError:
        enhanced = {b"MAIL": "5.1.7", b"RCPT": "5.1.3"}.get(verb, "5.5.4")
        raise ReplyError(501, enhanced, "Syntax error: invalid UTF-8") from None
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text if c >= "\x80"):
        raise ReplyError(500, "5.5.2", "Syntax error: control characters in command")
    return text


# --------------------------------------------------------------------------- simple verbs


def _hello_domain(arg: str, verb: str) -> str:
    """The EHLO/HELO argument, leniently: the first word, whatever its syntax.

    RFC 5321 4.1.1.1 wants a Domain or address-literal, but real clients send bare host
    names, underscores and worse; refusing them loses mail and gains nothing, since the
    name is only recorded (Received:). Control characters were refused already.
    """
    word = arg.lstrip(" ").split(" ", 1)[0]
    if not word:
        raise _syntax(f"Syntax: {verb} hostname")
    if not word.isascii():
        # RFC 6531 3.7.1: even SMTPUTF8 clients MUST send only ASCII (LDH or A-label)
        # names in EHLO, since they cannot yet know whether we support it.
        raise _syntax(f"Syntax: {verb} hostname (ASCII only, use A-labels)")
    return word


def _ehlo(arg: str, smtputf8_allowed: bool) -> Command:
    return Ehlo(_hello_domain(arg, "EHLO"))


def _helo(arg: str, smtputf8_allowed: bool) -> Command:
    return Helo(_hello_domain(arg, "HELO"))


def _no_argument(verb: str, command: Command) -> Callable[[str, bool], Command]:
    """Commands whose ABNF is just the verb (RFC 5321 4.1.1.4/5/10, RFC 3207 4)."""

    def handler(arg: str, smtputf8_allowed: bool) -> Command:
        if arg:
            raise _syntax(f"Syntax: {verb} (no arguments allowed)")
        return command

    return handler


def _noop(arg: str, smtputf8_allowed: bool) -> Command:
    # RFC 5321 4.1.1.9: "NOOP" [ SP String ]; the string has no meaning.
    return Noop()


def _help(arg: str, smtputf8_allowed: bool) -> Command:
    return Help(arg.strip(" "))


def _vrfy(arg: str, smtputf8_allowed: bool) -> Command:
    # RFC 5321 4.1.1.6: "VRFY" SP String. Clients also send <a@b> or a@b; the session
    # answers 252 or 502 anyway, so only emptiness is an error here.
    text = arg.strip(" ")
    if not text:
        raise _syntax("Syntax: VRFY address")
    if not smtputf8_allowed and not text.isascii():
        raise _syntax("Syntax: VRFY address (non-ASCII not allowed)")
    return Vrfy(text)


def _bdat(arg: str, smtputf8_allowed: bool) -> Command:
    match = _BDAT_ARGS.fullmatch(arg)
    if match is None:
        raise _syntax("Syntax: BDAT size [LAST]")
    return Bdat(int(match.group(1)), match.group(2) is not None)


#: RFC 4468 3.5: "BURL" SP absolute-URI [SP end-marker]; a URL is printable ASCII.
_BURL_ARGS = re.compile(r"([\x21-\x7e]{1,2000})(?: ([Ll][Aa][Ss][Tt]))?")


def _burl(arg: str, smtputf8_allowed: bool) -> Command:
    match = _BURL_ARGS.fullmatch(arg)
    if match is None:
        raise _syntax("Syntax: BURL imap-url [LAST]")
    return Burl(match.group(1), match.group(2) is not None)


def _auth(arg: str, smtputf8_allowed: bool) -> Command:
    parts = arg.split(" ")
    if not parts[0] or len(parts) > 2 or not _SASL_MECH.fullmatch(parts[0]):
        raise _syntax("Syntax: AUTH mechanism [initial-response]")
    initial = parts[1] if len(parts) == 2 else None
    if initial is not None and (not initial or not _BASE64.fullmatch(initial)):
        # RFC 4954 4 and 6: a response that is not base64 gets 501 5.5.2.
        raise ReplyError(501, "5.5.2", "Cannot decode response: invalid base64")
    return Auth(parts[0].upper(), initial)


# --------------------------------------------------------------------------- MAIL and RCPT


def _mail(arg: str, smtputf8_allowed: bool) -> Command:
    # RFC 5321 4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters]
    rest = _after_prefix(arg, "FROM:", "Syntax: MAIL FROM:<address>")
    path, params_text = split_path(rest, "5.1.7", "sender")
    if path == "<>":
        sender = Address.null()  # RFC 5321 4.5.5: the null reverse-path
    else:
        sender = parse_path(path, "5.1.7", "sender", smtputf8_allowed)
    return _mail_with_params(sender, _parse_params(params_text, smtputf8_allowed), smtputf8_allowed)


def _rcpt(arg: str, smtputf8_allowed: bool) -> Command:
    # RFC 5321 4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
    # Forward-path ) [SP Rcpt-parameters]
    rest = _after_prefix(arg, "TO:", "Syntax: RCPT TO:<address>")
    path, params_text = split_path(rest, "5.1.3", "recipient")
    if path.lower() == "<postmaster>":
        recipient, postmaster = Address("Postmaster", ""), True  # RFC 5321 4.5.1
    elif path == "<>":
        raise bad_address("5.1.3", "Syntax error in recipient address: empty path")
    else:
        recipient = parse_path(path, "5.1.3", "recipient", smtputf8_allowed)
        postmaster = False
    notify: frozenset[str] = frozenset()
    orcpt_type = orcpt = ""
    unitext = False
    for keyword, value in _parse_params(params_text, smtputf8_allowed):
        if keyword == "NOTIFY":  # RFC 3461 4.1
            notify = dsn_params.parse_notify(value)
        elif keyword == "ORCPT":  # RFC 3461 4.2, RFC 6533 3
            orcpt_type, orcpt = dsn_params.parse_orcpt(value)
            unitext = not (value or "").isascii()
        else:
            # RFC 5321 4.1.1.11 says 555 for a parameter that is not recognised.
            raise ReplyError(555, "5.5.4", f"Unsupported parameter: {_quote(keyword)}")
    return Rcpt(recipient, postmaster, RcptDsn(notify, orcpt_type, orcpt), unitext)


def _after_prefix(arg: str, prefix: str, usage: str) -> str:
    """What follows `FROM:`/`TO:`; one SP after the colon is tolerated (common, harmless)."""
    if arg[: len(prefix)].upper() != prefix:
        raise _syntax(usage)
    rest = arg[len(prefix) :]
    return rest[1:] if rest.startswith(" ") else rest


# --------------------------------------------------------------------------- parameters


def _parse_params(text: str, smtputf8_allowed: bool) -> list[tuple[str, str | None]]:
    """RFC 5321 4.1.2: esmtp-param *(SP esmtp-param) -> [(KEYWORD, value or None)].

    Keywords are upper-cased (case-insensitive, RFC 5321 2.4). Syntax errors and
    duplicates are 501 5.5.4; whether a keyword is known is for the caller (555).
    Extra spaces between parameters are tolerated.
    """
    value_re = _ESMTP_VALUE_UTF8 if smtputf8_allowed else _ESMTP_VALUE_ASCII
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for token in text.split(" "):
        if not token:
            continue
        keyword, eq, value = token.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(keyword) or (eq and not value_re.fullmatch(value)):
            raise _syntax(f"Syntax error in parameter: {_quote(token)}")
        keyword = keyword.upper()
        if keyword in seen:
            raise _syntax(f"Duplicate parameter: {_quote(keyword)}")
        seen.add(keyword)
        params.append((keyword, value if eq else None))
    return params


def _mail_with_params(
    sender: Address, params: list[tuple[str, str | None]], smtputf8_allowed: bool
) -> Mail:
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    auth: str | None = None
    ret = envid = ""
    requiretls = False
    for keyword, value in params:
        if keyword == "SIZE":
            # RFC 1870 3/6: SIZE=size-value, 1*20DIGIT.
            if value is None or not _SIZE_VALUE.fullmatch(value):
                raise _syntax("Syntax: SIZE=<octets>")
            size = int(value)
        elif keyword == "BODY":
            body = _body_value(value)
        elif keyword == "SMTPUTF8" and smtputf8_allowed:
            # RFC 6531 3.4: the SMTPUTF8 parameter takes no value.
            if value is not None:
                raise _syntax("Syntax: SMTPUTF8 takes no value")
            smtputf8 = True
        elif keyword == "AUTH":
            auth = _xtext_decode(value)
        elif keyword == "RET":  # RFC 3461 4.3
            ret = dsn_params.parse_ret(value)
        elif keyword == "ENVID":  # RFC 3461 4.4
            envid = dsn_params.parse_envid(value)
        elif keyword == "REQUIRETLS":
            # RFC 8689 3: "REQUIRETLS" has no value. Whether the session may take it
            # (only over TLS, where it is offered) is the session's call.
            if value is not None:
                raise _syntax("Syntax: REQUIRETLS takes no value")
            requiretls = True
        else:
            # RFC 5321 4.1.1.11 and 3.3: 555 for a parameter not recognised.
            raise ReplyError(555, "5.5.4", f"Unsupported parameter: {_quote(keyword)}")
    return Mail(sender, size, body, smtputf8, auth, ret, envid, requiretls)


def _body_value(value: str | None) -> str:
    """RFC 6152 2: BODY=7BIT / BODY=8BITMIME. BINARYMIME (RFC 3030 3) needs CHUNKING
    with binary content, which we do not offer: 504, parameter value not implemented."""
    upper = (value or "").upper()
    if upper in ("7BIT", "8BITMIME"):
        return upper
    if upper == "BINARYMIME":
        raise ReplyError(504, "5.5.4", "BODY=BINARYMIME not supported")
    raise _syntax("Syntax: BODY=7BIT or BODY=8BITMIME")


def _xtext_decode(value: str | None) -> str:
    """RFC 4954 5: AUTH=addr-spec in xtext (RFC 3461 4); "<>" means unknown."""
    if value is None or not _XTEXT.fullmatch(value):
        raise _syntax("Syntax: AUTH=<xtext>")
    raw = _XTEXT_HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)
    try:
        text = raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise _syntax("Syntax: AUTH=<xtext> (invalid UTF-8)") from None
    # hexchars could smuggle controls (CR, LF, NUL) into what later becomes a header.
    if not text.isprintable():
        raise _syntax("Syntax: AUTH=<xtext> (control characters)")
    return text


# --------------------------------------------------------------------------- dispatch

_HANDLERS: dict[bytes, Callable[[str, bool], Command]] = {
    b"EHLO": _ehlo,
    b"HELO": _helo,
    b"MAIL": _mail,
    b"RCPT": _rcpt,
    b"DATA": _no_argument("DATA", Data()),
    b"BDAT": _bdat,
    b"BURL": _burl,
    b"RSET": _no_argument("RSET", Rset()),
    b"NOOP": _noop,
    b"QUIT": _no_argument("QUIT", Quit()),
    b"HELP": _help,
    b"VRFY": _vrfy,
    b"STARTTLS": _no_argument("STARTTLS", StartTls()),
    b"AUTH": _auth,
    b"XCLIENT": parse_xclient,  # Postfix's, from a trusted proxy only (smtp/xclient.py)
}

#: Commands defined by RFC 5321 (or its predecessors and well-known extensions) that we
#: deliberately do not implement: 502 rather than 500 (RFC 5321 4.2.4, 4.1.1.7 for EXPN).
_NOT_IMPLEMENTED = frozenset({b"EXPN", b"TURN", b"ETRN", b"ATRN", b"SEND", b"SOML", b"SAML"})
