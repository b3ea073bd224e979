"""URLAUTH (RFC 4467): GENURLAUTH, RESETKEY, URLFETCH; URLAUTH=BINARY (RFC 5524).

A URLAUTH-authorized URL names one message (or a part or range of it) of one user's
mailbox and carries who may fetch it and a token:

    imap://alice@example.org@mail.example.org/INBOX;UIDVALIDITY=7/;UID=3/;SECTION=1
        ;EXPIRE=2027-01-01T00:00:00Z;URLAUTH=user+bob@example.org:internal:<40 hex>

The part up to and including the access identifier is the "rump". Its token (RFC 4467
7, mechanism INTERNAL, ours to define) is the hex HMAC-SHA1 of the rump's octets as
sent, keyed with the mailbox access key (store/urlauthkey.py: random per user, per
mailbox after a RESETKEY of it, bound to the mailbox's name and UIDVALIDITY). Tokens
are compared in constant time (hmac.compare_digest).

URLFETCH answers NIL for every URL that does not verify, whatever the reason (RFC 4467
6.3: syntax, another server, an access identifier that excludes this session, an unknown
mechanism, a wrong token, EXPIRE passed, a mailbox renamed or made again, a missing
UID): the client learns nothing about which check failed. Access identifiers (RFC 4467
3): `anonymous` and `authuser` any logged-in user of this server, `user+NAME` only
NAME, `submit+NAME` never over IMAP (it is the submission server's, BURL).

The URL's user: enc-user percent-decoded; without "@" in it, user@host (ImapTest's
`imap://$username@$domain/`, the login split at its "@"). Each URL is resolved in a
disk thread and written before the next is read, with the session's flow control: a
URLFETCH of 1000 URLs to big messages holds one message at a time.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import fail
from zope.interface import implementer

from mailserver.imap import binary, grammar
from mailserver.imap import bodystructure as _bodystructure
from mailserver.imap.commands import no
from mailserver.imap.encode import literal, nstring, quoted_or_literal
from mailserver.imap.grammar_ext import ImapUrl, parse_url
from mailserver.imap.grammar_urlauth import GenUrlAuth, ResetKey, UrlFetch
from mailserver.imap.message import ParsedMessage, partial
from mailserver.imap.mime import Part
from mailserver.interfaces import (
    IMailboxOpener,
    IRecipientDirectory,
    ISubmitUrls,
    IUserStore,
    MailboxId,
    StoreError,
)
from mailserver.logs import logger

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mailserver.config import Config
    from mailserver.core.diskio import DiskExecutor
    from mailserver.imap.server import IMAPSession

log = logger(__name__)

MECHANISM = "INTERNAL"

#: authimapurl [";EXPIRE=" date-time] ";URLAUTH=" access [":" mechanism ":" token]
#: (RFC 5092 11, RFC 4467 9). The path is checked by grammar_ext.parse_url.
_AUTH_URL = re.compile(
    r"(?P<rump>imap://(?P<user>[^@/;:]+)(?:;AUTH=[^@/;]+)?@(?P<host>[^/@]+)"
    r"(?P<path>/.+?)(?:;EXPIRE=(?P<expire>[^;]+))?;URLAUTH=(?P<access>[^:;/]+))"
    r"(?::(?P<mechanism>[A-Za-z0-9.-]+):(?P<token>[0-9A-Fa-f]+))?\Z",
    re.IGNORECASE)
_ACCESS = re.compile(r"(?:(?P<kind>submit|user)\+(?P<who>[^:;/]+)|anonymous|authuser)\Z",
                     re.IGNORECASE)


class Invalid(Exception):
    """A URL that names nothing we would serve (its text is for the log only)."""


@dataclass(frozen=True)
class AuthUrl:
    """A parsed URLAUTH URL."""

    rump: str
    owner: str                 # the mailbox owner's address, lower case
    url: ImapUrl               # mailbox, UID, UIDVALIDITY, section, partial
    access: str                # lower case: "anonymous", "authuser", "user", "submit"
    access_user: str | None    # NAME of user+NAME / submit+NAME, lower case
    expire: datetime.datetime | None
    mechanism: str | None      # upper case
    token: str | None          # lower case


def parse(text: str, hosts: frozenset[str]) -> AuthUrl:
    """The parts of a URLAUTH URL for this server (`hosts`: its names), or Invalid."""
    m = _AUTH_URL.match(text)
    if m is None:
        raise Invalid("not a URLAUTH URL")
    host = m.group("host").lower()
    host = host.rsplit(":", 1)[0] if re.fullmatch(r"[^:]+:\d{1,5}", host) else host
    if host not in hosts:
        raise Invalid(f"another server: {host}")
    try:
        user = urllib.parse.unquote(m.group("user"), errors="strict")
        url = parse_url(m.group("path").encode())
    except (UnicodeDecodeError, grammar.ParseError):
        raise Invalid("bad user or path") from None
    owner = (user if "@" in user else f"{user}@{host}").lower()
    access = _ACCESS.match(m.group("access"))
    if access is None:
        raise Invalid("unknown access identifier")
    who = access.group("who")
    expire = None
    if m.group("expire") is not None:
        expire = _expiry(m.group("expire"))
    mechanism = m.group("mechanism")
    token = m.group("token")
    return AuthUrl(
        rump=m.group("rump"), owner=owner, url=url,
        access=(access.group("kind") or access.group(0)).lower(),
        access_user=urllib.parse.unquote(who).lower() if who else None,
        expire=expire, mechanism=mechanism.upper() if mechanism else None,
        token=token.lower() if token else None)


def _expiry(text: str) -> datetime.datetime:
    """RFC 3339 date-time (RFC 4467 3: EXPIRE), always with an offset."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?"
                        r"(?:Z|[+-]\d\d:\d\d)", text, re.IGNORECASE):
        raise Invalid("bad EXPIRE")
    try:
        when = datetime.datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("bad EXPIRE") from None
    return when


def token(key: bytes, rump: str) -> str:
    """The INTERNAL mechanism's token: hex HMAC-SHA1 of the rump (RFC 4467 7)."""
    return hmac.new(key, rump.encode("utf-8"), hashlib.sha1).hexdigest()


def hosts_of(session: IMAPSession) -> frozenset[str]:
    """The names a URL may give this server: the hostname and the local domains."""
    config = session.config
    return frozenset({config.hostname.lower(), *(d.lower() for d in config.domains.local)})


# -- RESETKEY (RFC 4467 6.1) --------------------------------------------------------------


async def resetkey(session: IMAPSession, command: ResetKey) -> str:
    """A new access key for one mailbox, or for all: every URL made with the old one
    stops verifying."""
    if any(m != MECHANISM for m in command.mechanisms):
        raise no("Unsupported URLAUTH mechanism")
    store = session.authenticated().store
    await session.blocking(store.reset_url_keys, command.mailbox)
    if command.mailbox is None:
        return "All access keys reset"
    return f"[URLMECH {MECHANISM}] Access key reset"


# -- GENURLAUTH (RFC 4467 6.2) ------------------------------------------------------------


async def genurlauth(session: IMAPSession, command: GenUrlAuth) -> str:
    """`* GENURLAUTH url...`: each rump with its token, or NO for all when any one is
    not a rump URL of the user's own existing mailbox on this server."""
    account = session.authenticated()
    user = account.user.address.lower()
    hosts = hosts_of(session)
    urls = await session.blocking(_generate, account.store, user, hosts, command.pairs)
    session.send(b"* GENURLAUTH " + b" ".join(quoted_or_literal(u.encode()) for u in urls)
                 + b"\r\n")
    return "Genurlauth completed"


def _generate(store: IUserStore, user: str, hosts: frozenset[str],
              pairs: tuple[tuple[str, str], ...]) -> list[str]:
    out = []
    for text, mechanism in pairs:
        if mechanism != MECHANISM:
            raise no(f"Unsupported URLAUTH mechanism {mechanism[:40]}")
        try:
            url = parse(text, hosts)
        except Invalid as e:
            raise no(f"Invalid URLAUTH URL: {e}") from None
        if url.token is not None:
            raise no("Invalid URLAUTH URL: it already has a token")
        if url.owner != user:
            raise no("Invalid URLAUTH URL: not your mailbox")
        try:
            status = store.status(url.url.mailbox)
            key = store.url_key(url.url.mailbox)
        except StoreError as e:
            if e.code != "NONEXISTENT":
                raise
            raise no("Invalid URLAUTH URL: no such mailbox") from None
        if url.url.uid_validity is not None and url.url.uid_validity != status.uid_validity:
            raise no("Invalid URLAUTH URL: UIDVALIDITY does not match")
        out.append(f"{url.rump}:{MECHANISM.lower()}:{token(key, url.rump)}")
    return out


# -- URLFETCH (RFC 4467 6.3, RFC 5524) ----------------------------------------------------


async def urlfetch(session: IMAPSession, command: UrlFetch) -> str:
    """One `* URLFETCH url data` per URL (RFC 4467 9 allows one pair per response),
    each read in a disk thread and written before the next is read. Parsing, the
    access check and the directory lookup run here, on the reactor thread (the
    directory is not made for threads); the store work in the disk thread."""
    account = session.authenticated()
    user = account.user.address.lower()
    hosts = hosts_of(session)
    with session.write_flow() as flow:
        for item in command.urls:
            answer = b"NIL"
            try:
                url = parse(item.url, hosts)
                _check_access(url, user)
                owner = (None if url.owner == user
                         else owner_mailbox(session.factory.directory, url.owner))
                answer = await session.blocking(
                    _fetch_one, session.session_id, account.store, session.factory.mailboxes,
                    owner, url, item.options)
            except Invalid as e:
                log.debug("{session} URLFETCH NIL: {why}", session=session.session_id, why=e)
            session.send(b"* URLFETCH " + quoted_or_literal(item.url.encode()) + b" "
                         + answer + b"\r\n")
            await flow.wait()
            if flow.stopped:
                break
    return "Urlfetch completed"


def _fetch_one(session_id: str, own: IUserStore, mailboxes: IMailboxOpener,
               owner: MailboxId | None, url: AuthUrl,
               options: tuple[str, ...] | None) -> bytes:
    """The answer for one URL: its data (nstring, or RFC 5524's parenthesised items),
    or NIL when it does not verify. `owner`: another user's mailbox (None: ours).
    Blocking."""
    try:
        store = own if owner is None else mailboxes.open_user_store(owner)
        raw = _verified(store, url)
        return _answer(raw, url.url, options)
    except (Invalid, StoreError) as e:
        log.debug("{session} URLFETCH NIL: {why}", session=session_id, why=e)
        return b"NIL"
    except Exception:  # a bug or a disk error: logged, and still only NIL (RFC 4467 6.3)
        log.failure("{session} URLFETCH failed", session=session_id)
        return b"NIL"


def _check_access(url: AuthUrl, user: str) -> None:
    """RFC 4467 3 / 6.3: may this session fetch the URL at all?"""
    if url.mechanism != MECHANISM or url.token is None:
        raise Invalid("no INTERNAL token")
    if url.access == "submit":
        raise Invalid("submit+ URLs are for the submission server")
    if url.access == "user" and url.access_user != user:
        raise Invalid("user+ names another user")
    _check_expiry(url)


def _check_expiry(url: AuthUrl) -> None:
    if url.expire is not None and url.expire <= datetime.datetime.now(datetime.UTC):
        raise Invalid("expired")


def owner_mailbox(directory: IRecipientDirectory | None, owner: str) -> MailboxId:
    """The mailbox of the user `owner` names: a user of the users file (not an alias,
    not a +extension) with exactly one mailbox, or Invalid. Reactor thread."""
    if directory is None or not directory.user_exists(owner):
        raise Invalid("no such user")
    found = directory.resolve(owner)
    if len(found.mailboxes) != 1 or found.remote:
        raise Invalid("no such user")
    return found.mailboxes[0]


def verify(store: IUserStore, url: AuthUrl) -> None:
    """Invalid unless the URL's token is the one its mailbox's key gives its rump now."""
    try:
        key = store.url_key(url.url.mailbox)
    except StoreError:
        raise Invalid("no such mailbox") from None
    if url.token is None or not hmac.compare_digest(token(key, url.rump), url.token):
        raise Invalid("token does not verify")


def _verified(store: IUserStore, url: AuthUrl) -> bytes:
    """The message a verified URL names (whole), or Invalid."""
    verify(store, url)
    view = store.select(url.url.mailbox, True)
    try:
        if url.url.uid_validity is not None and url.url.uid_validity != view.uid_validity:
            raise Invalid("UIDVALIDITY changed")
        if not any(info.uid == url.url.uid for info in view.messages):
            raise Invalid("no such UID")
        return view.read(url.url.uid)
    finally:
        view.close()


@implementer(ISubmitUrls)
class SubmitUrls:
    """BURL's IMAP side (RFC 4468 3.2): the octets a `submit+USER` URL names, for the
    submission server acting for USER, read from our own store (Dovecot's submission
    service asks its imap-urlauth the same way). app/service.py puts one in the
    ServerContext; `fetch` reads in a disk thread and fails with Invalid."""

    def __init__(self, directory: IRecipientDirectory, mailboxes: IMailboxOpener,
                 disk: DiskExecutor) -> None:
        self.directory = directory
        self.mailboxes = mailboxes
        self.disk = disk

    def fetch(self, config: Config, text: str, submitter: str) -> Deferred[bytes]:
        """Checks on the calling (reactor) thread, the store read in a disk thread."""
        hosts = frozenset({config.hostname.lower(), *(d.lower() for d in config.domains.local)})
        try:
            url = parse(text, hosts)
            if (url.access != "submit" or url.access_user != submitter.lower()
                    or url.mechanism != MECHANISM or url.token is None):
                raise Invalid("not a submit+ URL of this user")
            _check_expiry(url)
            owner = owner_mailbox(self.directory, url.owner)
        except Invalid as e:
            return fail(e)
        d: Deferred[bytes] = self.disk.run(self.read, owner, url)
        return d

    def read(self, owner: MailboxId, url: AuthUrl) -> bytes:
        """Blocking; Invalid unless the URL verifies."""
        try:
            raw = _verified(self.mailboxes.open_user_store(owner), url)
        except StoreError as e:
            raise Invalid(str(e)) from None
        return _data(raw, url.url)


def _data(raw: bytes, url: ImapUrl) -> bytes:
    """BODY[section]<partial> of the URL (RFC 5092 / RFC 4467 6.3: as BODY.PEEK)."""
    data = raw
    if url.section is not None:
        s = url.section
        data = ParsedMessage(raw).section(s.part, s.spec, s.fields)
    if url.partial is not None:
        data = partial(data, url.partial[0], url.partial[1])
    return data


def _answer(raw: bytes, url: ImapUrl, options: tuple[str, ...] | None) -> bytes:
    if options is None:
        return nstring(_data(raw, url))
    items: list[bytes] = []
    message = ParsedMessage(raw)
    part = _part(message, url)
    if "BODYPARTSTRUCTURE" in options:
        if part is None:
            raise Invalid("no body structure for a header or text section")
        # RFC 5524 3: with BINARY asked too, it describes the octets BINARY sends
        # (decoded sizes and lines; the encodings named as stored, as Dovecot does).
        described = _reparsed(part) if "BINARY" in options else part
        items.append(b"BODYPARTSTRUCTURE " + _bodystructure.body_structure(described, True))
    if "BINARY" in options:
        if part is None:
            raise Invalid("BINARY of a header or text section")
        try:
            data = converted_body(part)
        except Exception as e:  # UNKNOWN-CTE (binary.decode's refusal): NIL
            raise Invalid(f"cannot decode: {e}") from None
        if url.partial is not None:
            data = partial(data, url.partial[0], url.partial[1])
        items.append(b"BINARY " + (b"~{%d}\r\n" % len(data) + data if b"\0" in data
                                   else literal(data)))
    if "BODY" in options:
        items.append(b"BODY " + nstring(_data(raw, url)))
    return b"(" + b" ".join(items) + b")"


def _part(message: ParsedMessage, url: ImapUrl) -> Part | None:
    """The MIME part a URL names (the whole message without a section); None for a
    HEADER/TEXT/MIME section or a part that does not exist."""
    if url.section is None:
        return message.tree
    if url.section.spec:
        return None
    if not url.section.part:
        return message.tree
    return message._find(url.section.part)


# -- binary conversion of a whole part (RFC 5524 3: BINARY of a multipart or message) ---

_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding:[^\n]*\n(?:[ \t][^\n]*\n)*")


def _encoded(part: Part) -> bool:
    cte = (part.header.get(b"content-transfer-encoding") or b"").strip().lower()
    return cte in (b"base64", b"quoted-printable")


def _entity(part: Part, keep_cte: bool) -> bytes:
    """Header and body of an entity with every encoded leaf decoded; its CTE field
    says `binary` then (unless `keep_cte`)."""
    header = part.header.raw
    if not part.is_multipart and not part.is_message and _encoded(part) and not keep_cte:
        header = _CTE_FIELD.sub(b"Content-Transfer-Encoding: binary\r\n", header)
    return header + _converted(part, keep_cte)


def _converted(part: Part, keep_cte: bool) -> bytes:
    if part.is_message and part.message is not None:
        return _entity(part.message, keep_cte)
    if part.is_multipart and part.children:
        out = []
        at = part.start
        for child in part.children:
            begins = child.start - len(child.header.raw)
            out.append(part.buf[at:begins])
            out.append(_entity(child, keep_cte))
            at = child.end
        out.append(part.buf[at:part.end])
        return b"".join(out)
    if part.is_multipart or part.is_message:
        return part.body
    return binary.decode(part.body, part.header.get(b"content-transfer-encoding"))


def converted_body(part: Part) -> bytes:
    """BINARY of a part: its content with every base64/QP leaf inside decoded."""
    return _converted(part, False)


def _reparsed(part: Part) -> Part:
    """The part as it would be if its leaves were stored decoded (sizes and lines of
    the decoded octets), for BODYPARTSTRUCTURE beside BINARY."""
    return ParsedMessage(part.header.raw + _converted(part, True)).tree

