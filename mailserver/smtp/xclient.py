"""XCLIENT (Postfix's extension, https://www.postfix.org/XCLIENT_README.html): a
trusted proxy tells us which client it speaks for.

nginx's mail proxy sends it to SMTP backends by default (`xclient on`): after its own
EHLO it sends "XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org NAME=[UNAVAILABLE]"
(ADDR=IPV6:... for an IPv6 client; LOGIN only when it authenticated the user itself
through auth_http), reads our 220, then repeats the client's HELO/EHLO and goes on.

Rules, as Postfix has them:
- offered in EHLO and accepted only from cluster.trusted_proxies (the TCP peer);
  from anyone else 550 5.7.0 and not offered. Not after a PROXY header either: the
  session is then the client's own (HAProxy in TCP mode relays its commands), and
  XCLIENT LOGIN= would let it log itself in. So nginx in front of SMTP sends XCLIENT
  alone (its default): leave the SMTP listeners out of cluster.proxy_protocol;
- not inside a mail transaction: 503 5.5.1; before HELO/EHLO and more than once it is
  allowed (each one starts the session anew), but only while the client the session
  speaks for is itself a trusted proxy: once an XCLIENT named ADDR=<client>, the lines
  that follow are that client's (nginx relays them unchanged after its handshake), so
  an XCLIENT among them is refused with 550 5.7.0 and XCLIENT is no longer offered in
  EHLO (Postfix likewise checks smtpd_authorized_xclient_hosts against the new client;
  without this, a client behind nginx could send "XCLIENT LOGIN=someone-else");
- syntax: XCLIENT SP attribute=value *( SP attribute=value ), names ADDR, PORT, NAME,
  HELO, PROTO, LOGIN, DESTADDR, DESTPORT (case-insensitive), values xtext (RFC 3461 4),
  "[UNAVAILABLE]" / "[TEMPUNAVAIL]" for an unknown value; anything else, an attribute
  twice, or a value not of its kind: 501 5.5.4 and nothing changes;
- on success the session starts over (HELO, the envelope and the login forgotten) and
  says the 220 greeting; the attributes given replace the client's: ADDR is the peer
  address every check uses from then on (Received, SPF, iprev, the rate limits and
  greylisting, the login throttle, the logs; on port 25 the DNS blocklists are asked
  about it before the 220, and the per-address connection limit counts it instead of
  the proxy: 421 if it is over), HELO the HELO name, PROTO whether it spoke ESMTP,
  LOGIN the authenticated user (so submission relays for them and checks their sender,
  as after AUTH). LOGIN is taken as the password checker takes a login name (lower
  case, a bare name in the first local domain: the directory's login_key), and only for
  a user who may log in: an unknown user, or one marked nologin or deny, is 550 5.7.8
  and nothing changes (Postfix's XCLIENT answers 550 when the proxy may not do what it
  asks; X.7.8 is AUTH's "credentials invalid", RFC 4954 6). nginx checked the password
  through /nginx-auth, which asks the same; this check holds against any other
  trusted proxy, and against a user deleted or locked between the two. A users file
  that cannot be read at all: 421 4.3.0 and the session ends. NAME, PORT, DESTADDR and
  DESTPORT go to the log only: iprev does its own lookup. Attributes not given keep
  their values; ADDR=[UNAVAILABLE] keeps the proxy's address, so the checks always have
  a real one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from mailserver.abuse.control import event
from mailserver.abuse.dnsbl import Score
from mailserver.core.peer import (
    count_as,
    proxy_header_honoured,
    trusted_address,
    trusted_link,
)
from mailserver.errors import ReplyError
from mailserver.logs import logger
from mailserver.reply import Reply
from mailserver.smtp.state import SessionState

log = logger(__name__)

ATTRIBUTES = ("ADDR", "PORT", "NAME", "HELO", "PROTO", "LOGIN", "DESTADDR", "DESTPORT")
#: Postfix's words for a value the proxy does not know (permanently / for now).
UNAVAILABLE = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})
#: RFC 3461 4: xtext = *( xchar / hexchar ); xchar is "!".."~" except "+" and "=".
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
#: A host name or HELO argument: what a Received header may carry.
_NAME = re.compile(r"[!-~]{1,255}")


@dataclass(frozen=True)
class Xclient:
    """XCLIENT's attributes as given; a value None is [UNAVAILABLE]/[TEMPUNAVAIL]."""

    attributes: dict[str, str | None] = field(default_factory=dict)


def _syntax(text: str) -> ReplyError:
    return ReplyError(501, "5.5.4", text)  # RFC 5321 4.2.2, RFC 3463 X.5.4


def parse_xclient(arg: str, smtputf8_allowed: bool = True) -> Xclient:
    """The argument of XCLIENT (grammar.parse_command's handler)."""
    if not arg.strip(" "):
        raise _syntax("Syntax: XCLIENT attribute=value ...")
    attributes: dict[str, str | None] = {}
    for item in arg.split(" "):
        name, eq, raw = item.partition("=")
        name = name.upper()
        if not eq or name not in ATTRIBUTES:
            raise _syntax(f"Bad XCLIENT attribute name: {name[:20]}")
        if name in attributes:
            raise _syntax(f"Bad XCLIENT attribute: {name} given twice")
        value = _xtext(name, raw)
        attributes[name] = None if value.upper() in UNAVAILABLE else _check(name, value)
    return Xclient(attributes)


def _xtext(name: str, raw: str) -> str:
    if not _XTEXT.fullmatch(raw):
        raise _syntax(f"Bad XCLIENT attribute value for {name}: not xtext")
    text = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), raw)
    try:
        text = text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise _syntax(f"Bad XCLIENT attribute value for {name}: not UTF-8") from None
    if not text or not text.isprintable() or " " in text:
        # hexchars could smuggle CR, LF or NUL into a Received header or a log line.
        raise _syntax(f"Bad XCLIENT attribute value for {name}")
    return text


def _check(name: str, value: str) -> str:
    """The value in our form (ADDR: the bare address), or 501 if it is not of its kind."""
    if name in ("ADDR", "DESTADDR"):
        text = value[5:] if value[:5].upper() == "IPV6:" else value
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise _syntax(f"Bad XCLIENT attribute value for {name}") from None
        if (address.version == 6) != (value[:5].upper() == "IPV6:"):
            raise _syntax(f"Bad XCLIENT attribute value for {name}: IPv6 needs IPV6:")
        return str(address)
    if name in ("PORT", "DESTPORT"):
        if not value.isdigit() or len(value) > 5 or int(value) > 65535:
            raise _syntax(f"Bad XCLIENT attribute value for {name}")
        return value
    if name == "PROTO":
        if value.upper() not in ("SMTP", "ESMTP"):
            raise _syntax("Bad XCLIENT attribute value for PROTO: SMTP or ESMTP")
        return value.upper()
    if not _NAME.fullmatch(value) or (name != "LOGIN" and not value.isascii()):
        raise _syntax(f"Bad XCLIENT attribute value for {name}")
    return value


class XclientCommands(SessionState):
    """XCLIENT for SMTPSession."""

    #: What XCLIENT said besides the address the session keeps in peer_ip (logs).
    client_name: str | None = None
    #: An accepted XCLIENT named a client that is not itself a trusted proxy: the
    #: commands are that client's from then on, and XCLIENT is not for it.
    speaks_for_client: bool = False

    def xclient_allowed(self) -> bool:
        """The TCP peer is one of cluster.trusted_proxies, and speaks for itself: after
        a PROXY header the peer is the client (a TCP proxy such as HAProxy passes its
        commands through), and a client may not name itself, or log itself in."""
        return (trusted_link(self.transport, self.config)
                and not proxy_header_honoured(self.transport))

    def xclient_usable(self) -> bool:
        """XCLIENT is offered and accepted now: from a trusted proxy's link (above),
        and not after an XCLIENT that handed the session to a client (module docstring).
        AUTH's "secured link" rule keeps asking xclient_allowed(): the link is the same."""
        return self.xclient_allowed() and not self.speaks_for_client

    def do_XCLIENT(self, command: Xclient) -> Deferred[None] | None:  # noqa: N802 - the verb
        if not self.xclient_usable():
            log.warn("{session} XCLIENT refused from {peer}: not in "
                     "cluster.trusted_proxies", session=self.session_id, peer=self.peer_ip)
            raise ReplyError(550, "5.7.0", "Error: insufficient authorization")
        if self.envelope is not None:
            raise ReplyError(503, "5.5.1", "Error: MAIL transaction in progress")
        given = command.attributes
        named = given.get("LOGIN")
        login = self._xclient_login(named) if named else None
        if login == "":
            return None  # 421 sent, closing
        proxy, client = self.peer_ip, given.get("ADDR")
        if client and not count_as(self.transport, client):
            # The per-address connection limit, now for the real client (app/limits.py).
            self._send(Reply(421, "4.7.0", f"{self.config.hostname} Error: too many "
                                           "connections from your address"))
            self._close()
            return None
        self._reset_envelope()
        self.helo, self.esmtp, self.user = None, False, None
        if client:  # [UNAVAILABLE]: the checks keep a real address (the proxy's)
            self.peer_ip = client
            self.speaks_for_client = not trusted_address(client, self.config)
        if "NAME" in given:
            self.client_name = given["NAME"]
        if given.get("HELO"):
            self.helo, self.esmtp = given["HELO"], True
        if "PROTO" in given:
            self.esmtp = given["PROTO"] == "ESMTP"
        if login:
            self.user = login  # nginx checked the password (auth_http)
        log.info("{session} XCLIENT from proxy {proxy}: client {peer} name {name} "
                 "login {user}", session=self.session_id, proxy=proxy, peer=self.peer_ip,
                 name=self.client_name or "-", user=self.user or "-",
                 port=given.get("PORT"), destaddr=given.get("DESTADDR"),
                 destport=given.get("DESTPORT"))
        return self._greet_again()

    def _xclient_login(self, login: str) -> str:
        """LOGIN= as the directory's key of the user, or 550 5.7.8 if that user may not
        log in (module docstring); "" after a 421 for a directory that cannot answer."""
        senders = self.factory.senders
        key = senders.login_key(login) if senders is not None else login
        if senders is not None and senders.login_allowed(key):
            return key
        if senders is not None and senders.unavailable():
            log.error("{session} XCLIENT LOGIN refused: the users file cannot be read",
                      session=self.session_id)
            self._send(Reply(421, "4.3.0", f"{self.config.hostname} Error: the user "
                                           "directory is unavailable; try again later"))
            self._close()
            return ""
        log.warn("{session} XCLIENT from proxy {proxy}: LOGIN {user} refused: no such "
                 "user, or nologin/deny", session=self.session_id, proxy=self.peer_ip,
                 user=key)
        raise ReplyError(550, "5.7.8", "Error: LOGIN names no user who may log in")

    def _greet_again(self) -> Deferred[None] | None:
        """The session starts over, as Postfix's does: the 220 greeting again (nginx
        takes 220 or 250, then repeats the client's HELO/EHLO). On port 25 the new
        client is first looked up in the DNS blocklists, as at connect (postscreen
        stands before Postfix's XCLIENT; our checks are in the session)."""
        blocklists, abuse = self.factory.blocklists, self.factory.abuse
        if (self.factory.policy.name != "smtp" or blocklists is None
                or not blocklists.zones
                or (abuse is not None and abuse.is_trusted(self.peer_ip))):
            self._send(Reply(220, None, f"{self.config.hostname} ESMTP mailserver"))
            return None

        def answered(score: Score) -> None:
            if not blocklists.blocked(score):
                self._send(Reply(220, None, f"{self.config.hostname} ESMTP mailserver"))
                return
            zones = ",".join(zone for zone, _ in score.listed)
            event("refused", "smtp", self.peer_ip, "dnsbl", score=score.total, zones=zones)
            self._send(Reply(554, "5.7.1", f"{self.config.hostname} Error: your address "
                                            f"is listed by {zones}"))
            self._close()

        return blocklists.score(self.peer_ip).addCallback(answered)


__all__ = ["ATTRIBUTES", "Xclient", "XclientCommands", "parse_xclient"]
