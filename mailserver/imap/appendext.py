"""APPEND with MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469).

Every message of the command is put together and checked before the first is stored,
and the store writes them all or none (UserStore.append_many), so RFC 3502's "if the
server fails to append any message, none is appended" holds. A CATENATE URL may only
name a message of the logged-in user's own mailboxes (RFC 4469 5: "the server MUST
verify that the URL is valid and the user has access"); anything else, a missing UID,
a wrong UIDVALIDITY or an unparsable URL is NO [BADURL <url>] (RFC 4469 6).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailserver.imap import binary, commands_mailbox, grammar
from mailserver.imap.commands import Append, Command, bad, no, uid_set_text
from mailserver.imap.encode import parse_date_time
from mailserver.imap.grammar_ext import AppendMany, AppendMessage, ImapUrl, url_user
from mailserver.imap.message import ParsedMessage, partial
from mailserver.interfaces import CopyResult, IUserStore, StoreError

if TYPE_CHECKING:
    from mailserver.imap.server import IMAPSession


# -- framing: a big literal collected apart (server.BIG_LITERAL) -------------------------


def MANY() -> bytes:  # noqa: N802 - a marker, compared by identity
    """server._dispatch's `inline` when the command was already put back together
    because more followed its big literal: it must be a MULTIAPPEND or CATENATE."""
    raise AssertionError("a marker, never called")


def inliner(parts: list[bytes], body_at: int, body: bytearray | None,
            announcement: bytes) -> Callable[[], bytes]:
    """The command with its big literal (collected apart, a `{0}` in its place at
    parts[body_at - 1]) back where it was sent: one copy, made only when asked."""
    def inline() -> bytes:
        assert body is not None
        return b"".join([*parts[:body_at - 1], announcement, body, *parts[body_at:]])
    return inline


def with_body(command: Command, body: bytearray | None,
              inline: Callable[[], bytes] | None) -> Command:
    """The parsed command of server._dispatch once its big literal is in place: a plain
    APPEND takes it as its message (no copy); MULTIAPPEND or CATENATE are parsed again
    from the whole command. Any other command with a literal that big is TOOBIG."""
    if isinstance(command, Append) and body is not None and not command.message:
        return dataclasses.replace(command, message=body)
    if inline is MANY:
        if isinstance(command, AppendMany):
            return command
    elif isinstance(command, AppendMany) and inline is not None:
        return grammar.parse_command(inline())
    raise grammar.ParseError("Literal too large", command.tag, "TOOBIG")


class BadUrl(Exception):
    """A CATENATE URL that names nothing this user may read (NO [BADURL url])."""

    def __init__(self, url: ImapUrl) -> None:
        super().__init__(url.text)
        self.url = url


async def append(session: IMAPSession, command: Append | AppendMany) -> str | None:
    """APPEND: a plain one-message APPEND as before, else MULTIAPPEND and CATENATE."""
    if isinstance(command, Append):
        if b"\0" in command.message:
            # RFC 3501 4.3 / RFC 3516 4.4: a literal holds no NUL; binary content
            # comes as literal8 (~{n}), which we keep without loss (binary.storable).
            raise bad("NUL in a literal; send binary content as literal8 (~{n})",
                      "CLIENTBUG")
        return await commands_mailbox.append(session, command)
    name = commands_mailbox.checked_name(command.mailbox)
    account = session.authenticated()
    store = account.store
    limit = session.config.limits.message_size
    staged: list[tuple[AppendMessage, float | None, tuple[str, ...]]] = []
    for message in command.messages:
        # Syntax-level checks first, as a plain APPEND makes them (BAD before NO).
        staged.append((message, _date(message.date), _flags(message.flags)))
    # RFC 4469 5 / imaptest: a missing destination is TRYCREATE even when a URL is bad.
    try:
        await session.blocking(store.status, name)
    except StoreError as e:
        if e.code != "NONEXISTENT":
            raise
        raise no("Mailbox does not exist (create it first)", "TRYCREATE") from None
    user: str = account.user.address
    try:
        texts: list[bytes] = await session.blocking(_assemble, store, user,
                                                    [m for m, _, _ in staged], limit)
    except BadUrl as e:
        # RFC 4469 6: url-resp-text has no "]" and no CR/LF (the grammar let none in).
        raise no("CATENATE URL names no message of yours",
                 "BADURL " + e.url.text.replace("]", "%5D")[:200]) from None
    for text in texts:
        if len(text) > limit:
            raise no("Message too large", "TOOBIG")
        if not text:
            raise no("Empty messages cannot be stored")
    batch = [(text, flags, when) for text, (_, when, flags) in zip(texts, staged, strict=True)]
    result: CopyResult = await session.blocking(store.append_many, name, batch)
    if session.selected is not None and session.selected.name == name:
        await session.sync()
    return (f"[APPENDUID {result.uid_validity} {uid_set_text(result.dest_uids)}] "
            "Append completed")


def _date(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_date_time(text)
    except ValueError:
        raise bad("Invalid date-time") from None


def _flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for flag in flags:
        if flag.startswith("\\"):
            system = commands_mailbox._system_flag(flag)
            if system is None:
                raise bad(f"Invalid system flag {flag}")
            out.append(system)
        else:
            out.append(flag)
    return tuple(out)


def _assemble(store: IUserStore, user: str, messages: list[AppendMessage],
              limit: int) -> list[bytes]:
    """Each message's octets: its literal, or its CATENATE parts joined (URL parts read
    from the user's folders, each folder opened once, read-only). Blocking.

    NO [TOOBIG] as soon as a message passes `limit` or all of them the APPEND's
    budget, before the copy that would pass it is made."""
    by_folder: dict[str, list[ImapUrl]] = defaultdict(list)
    for message in messages:
        for part in message.parts:
            if isinstance(part, ImapUrl):
                if (who := url_user(part)) is not None and who.lower() != user.lower():
                    raise BadUrl(part)  # RFC 4469 5: another user's mailbox
                by_folder[part.mailbox].append(part)
    resolved: dict[ImapUrl, bytes] = {}
    # What the URLs bring in, and the messages put together, all messages together,
    # are bounded like the literals of one APPEND (server.py: APPENDLIMIT + 64 KiB),
    # not per URL: a hundred URLs to one big message must not make a hundred copies.
    budget = total = limit + 64 * 1024
    for folder, urls in by_folder.items():
        if not folder:
            raise BadUrl(urls[0])  # unparsable (grammar_ext.parse_url)
        found, budget = _read_urls(store, folder, urls, limit, budget)
        resolved.update(found)
    out: list[bytes] = []
    for message in messages:
        pieces: list[bytes] = []
        size = 0
        for part in message.parts:
            piece = resolved[part] if isinstance(part, ImapUrl) else part
            size += len(piece)
            if size > limit:
                raise no("Message too large", "TOOBIG")
            pieces.append(piece)
        total -= size
        if total < 0:
            raise no("Message too large", "TOOBIG")
        text = b"".join(pieces)
        if message.binary:
            text = binary.storable(text)  # MIME parsing: here, not on the reactor
        elif b"\0" in text:
            raise bad("NUL in a literal; send binary content as literal8 (~{n})",
                      "CLIENTBUG")
        out.append(text)
    return out


def _read_urls(store: IUserStore, folder: str, urls: list[ImapUrl], limit: int,
               budget: int) -> tuple[dict[ImapUrl, bytes], int]:
    """The data of each URL into one folder, and what is left of `budget` (octets);
    NO [TOOBIG] as soon as it is spent."""
    try:
        view = store.select(folder, True)
    except StoreError:
        raise BadUrl(urls[0]) from None
    try:
        found: dict[ImapUrl, bytes] = {}
        uids = {info.uid for info in view.messages}
        for url in urls:
            if url.uid not in uids or (url.uid_validity is not None
                                       and url.uid_validity != view.uid_validity):
                raise BadUrl(url)
            try:
                raw = view.read(url.uid)
            except StoreError:
                raise BadUrl(url) from None
            data = raw
            if url.section is not None:
                section = url.section
                data = ParsedMessage(raw).section(section.part, section.spec, section.fields)
            if url.partial is not None:
                data = partial(data, url.partial[0], url.partial[1])
            if url not in found:
                found[url] = bytes(data[:limit + 1])
                budget -= len(found[url])
                if budget < 0:
                    raise no("Message too large", "TOOBIG")
        return found, budget
    finally:
        view.close()
