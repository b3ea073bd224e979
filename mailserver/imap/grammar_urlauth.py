"""Grammar of URLAUTH (RFC 4467 9) and URLAUTH=BINARY (RFC 5524 4): GENURLAUTH,
RESETKEY, URLFETCH. Pure, like grammar.py, whose _PARSERS it extends when imported
(by urlauth.py, which server.py imports). The URLs are kept as sent: what they name, and whether
they verify, is imap/urlauth.py's business (a URL that does not is NIL or NO, never
BAD: RFC 4467 6.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailserver.imap import grammar
from mailserver.imap.commands import Command
from mailserver.imap.grammar import Reader

#: Most URLs in one URLFETCH, and URL/mechanism pairs in one GENURLAUTH: each is a
#: message read (RFC 4467 sets no limit; clients send one or a few). More is BAD [LIMIT].
MAX_URLFETCH_URLS = 1000
MAX_GENURLAUTH_URLS = 100
#: RFC 5524 3: what a URLFETCH may ask of each URL.
FETCH_OPTIONS = frozenset({"BODYPARTSTRUCTURE", "BINARY", "BODY"})


@dataclass(frozen=True)
class GenUrlAuth(Command):
    """GENURLAUTH: (rump URL, mechanism name upper-cased) pairs (RFC 4467 6.2)."""

    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ResetKey(Command):
    """RESETKEY [mailbox *(SP mechanism)] (RFC 4467 6.1); mailbox None: all of them."""

    mailbox: str | None
    mechanisms: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchUrl:
    """One URL of a URLFETCH; `options` None for the RFC 4467 form (the data as an
    nstring), else the RFC 5524 options asked for, upper-cased, in the client's order."""

    url: str
    options: tuple[str, ...] | None = None


@dataclass(frozen=True)
class UrlFetch(Command):
    urls: tuple[FetchUrl, ...]


def _url(r: Reader) -> str:
    return r.astring().decode("utf-8", "replace")


def genurlauth(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """GENURLAUTH 1*(SP url-rump SP mechanism) (RFC 4467 9)."""
    pairs: list[tuple[str, str]] = []
    while r.maybe_sp():
        if len(pairs) >= MAX_GENURLAUTH_URLS:
            raise r.fail(f"too many URLs ({MAX_GENURLAUTH_URLS} at most)", "LIMIT")
        url = _url(r)
        r.sp()
        pairs.append((url, r.atom().upper()))
    if not pairs:
        raise r.fail("GENURLAUTH needs a URL and a mechanism")
    return GenUrlAuth(tag, name, tuple(pairs))


def resetkey(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """RESETKEY [SP mailbox *(SP mechanism)] (RFC 4467 9)."""
    if not r.maybe_sp():
        return ResetKey(tag, name, None)
    mailbox = r.mailbox()
    mechanisms: list[str] = []
    while r.maybe_sp():
        if len(mechanisms) >= 10:
            raise r.fail("too many mechanisms", "LIMIT")
        mechanisms.append(r.atom().upper())
    return ResetKey(tag, name, mailbox, tuple(mechanisms))


def urlfetch(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """URLFETCH 1*(SP (url / "(" url *(SP option) ")")) (RFC 4467 9, RFC 5524 4)."""
    urls: list[FetchUrl] = []
    while r.maybe_sp():
        if len(urls) >= MAX_URLFETCH_URLS:
            raise r.fail(f"too many URLs ({MAX_URLFETCH_URLS} at most)", "LIMIT")
        if r.peek() == 0x28:
            r.pos += 1
            url = _url(r)
            options: list[str] = []
            while r.maybe_sp():
                option = r.atom().upper()
                if option not in FETCH_OPTIONS or option in options:
                    raise r.fail(f"bad URLFETCH option {option[:40]}")
                options.append(option)
            r.expect(b")")
            if "BODY" in options and "BINARY" in options:
                raise r.fail("BODY and BINARY exclude each other")  # RFC 5524 3
            urls.append(FetchUrl(url, tuple(options)))
        else:
            urls.append(FetchUrl(_url(r)))
    if not urls:
        raise r.fail("URLFETCH needs a URL")
    return UrlFetch(tag, name, tuple(urls))


PARSERS: dict[str, Any] = {"GENURLAUTH": genurlauth, "RESETKEY": resetkey,
                           "URLFETCH": urlfetch}
grammar._PARSERS.update(PARSERS)
