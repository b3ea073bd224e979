"""The aliases file: Postfix-like lines mapping an address to one or more targets.

    info@example.org:    alice@example.org, bob@example.net
    # a bare name means the key's own domain: alice@example.org
    sales@example.org:   alice
    # catch-all for the whole domain (only for addresses that are nobody else)
    @example.org:        postmaster@example.org
    # an indented line continues the entry above; commas and/or spaces separate targets
    team@example.org:    alice@example.org,
        carol@example.org

Why Postfix's shape: it is what operators already know, and `postalias`-style files move
over with little editing. Lines whose first non-blank character is `#` are comments (a
`#` later in a line is not: it is a legal address character). Commands (`|cmd`), files
(`/path`) and `:include:` are refused: mail goes to mailboxes or the relay queue only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailserver.address import domain_key
from mailserver.auth.names import address_key, split_key
from mailserver.auth.textfile import (
    LineProblem,
    TableFile,
    ensure_newline,
    numbered_lines,
)
from mailserver.auth.userfile import EditRefused

ALIASES_FILE_MODE = 0o644


@dataclass(frozen=True)
class AliasEntry:
    """`key` (`local@domain`, or `@domain` for a catch-all) and where its mail goes."""

    key: str
    #: Targets as written, domain lower-cased; local parts keep their case for remote
    #: systems that care (local lookups lower-case them anyway).
    targets: tuple[str, ...]
    line: int = 0

    @property
    def is_catch_all(self) -> bool:
        return self.key.startswith("@")


@dataclass(frozen=True)
class AliasTable:
    path: Path
    aliases: Mapping[str, AliasEntry] = field(default_factory=dict)
    problems: tuple[LineProblem, ...] = ()


def _logical_lines(text: str) -> Iterator[tuple[int, str, list[int]]]:
    """(first line number, joined text, all line numbers) of each entry.

    A line starting with white space continues the entry above it (Postfix); an
    orphan continuation is yielded on its own with an empty text marker "\\0".
    """
    current: tuple[int, list[str], list[int]] | None = None
    for number, line in numbered_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[:1].isspace():
            if current is None:
                yield number, "\0", [number]
            else:
                current[1].append(stripped)
                current[2].append(number)
            continue
        if current is not None:
            yield current[0], " ".join(current[1]), current[2]
        current = (number, [stripped], [number])
    if current is not None:
        yield current[0], " ".join(current[1]), current[2]


def parse_key(text: str) -> str:
    """`Info@Example.org` -> `info@example.org`, `@Example.org` -> `@example.org`.

    Raises ValueError saying what is wrong.
    """
    text = text.strip()
    if not text or any(c.isspace() or c in ",:" for c in text):
        raise ValueError(f"not an alias address: {text!r}")
    if text.startswith("@"):
        domain = domain_key(text[1:])
        if not domain or "@" in domain:
            raise ValueError(f"not a domain catch-all: {text!r}")
        return "@" + domain
    key = address_key(text)
    local, domain = split_key(key)
    if "@" not in key or not local or not domain:
        raise ValueError(f"expected address@domain or @domain, got {text!r}")
    return key


def key_domain(key: str) -> str:
    """The domain of an alias key, catch-all (`@domain`) or not."""
    return split_key(key)[1]


def parse_target(text: str, key_domain: str) -> str:
    """One target: `bob@Example.NET` -> `bob@example.net`, `bob` -> `bob@KEYDOMAIN`."""
    text = text.strip()
    if text.startswith(("|", "/", ":include:")) or text.startswith('"|'):
        raise ValueError(f"unsupported target {text!r} (only addresses)")
    if not text or any(c.isspace() or c in ",:" for c in text):
        raise ValueError(f"not an address: {text!r}")
    local, sep, domain = text.rpartition("@")
    if not sep:
        local, domain = text, key_domain
    if not local or not domain_key(domain):
        raise ValueError(f"not an address: {text!r}")
    return f"{local}@{domain_key(domain)}"


def split_targets(text: str) -> list[str]:
    """`a, b,c d` -> ["a", "b", "c", "d"]: commas and/or white space separate targets,
    as in Postfix tables (so a continuation line needs no trailing comma)."""
    return [t for t in re.split(r"[,\s]+", text) if t]


def parse_aliases(text: str, path: Path) -> AliasTable:
    """Read an aliases file's text; problems are collected per line, never raised.

    A line without a usable key or without any usable target is skipped; a bad target
    is dropped from an otherwise good line. The first of duplicate keys wins.
    """
    aliases: dict[str, AliasEntry] = {}
    problems: list[LineProblem] = []
    for number, joined, _ in _logical_lines(text):
        if joined == "\0":
            problems.append(LineProblem(path, number, "continuation line without an alias "
                                                       "above it"))
            continue
        name, sep, rest = joined.partition(":")
        if not sep:
            problems.append(LineProblem(path, number, "expected address: target[, target...]"))
            continue
        try:
            key = parse_key(name)
        except ValueError as e:
            problems.append(LineProblem(path, number, str(e)))
            continue
        targets: list[str] = []
        for raw in split_targets(rest):
            try:
                target = parse_target(raw, key_domain(key))
            except ValueError as e:
                problems.append(LineProblem(path, number, f"{key}: {e}"))
                continue
            if target not in targets:
                targets.append(target)
        if not targets:
            problems.append(LineProblem(path, number, f"{key}: no targets"))
            continue
        if key in aliases:
            problems.append(LineProblem(
                path, number, f"duplicate alias {key} (first on line {aliases[key].line}); "
                              "ignored"))
            continue
        aliases[key] = AliasEntry(key, tuple(targets), number)
    return AliasTable(path, aliases, tuple(problems))


def format_alias_line(key: str, targets: Sequence[str]) -> str:
    return f"{key}: {', '.join(targets)}"


def add_alias(text: str, key: str, targets: Sequence[str]) -> str:
    """`text` with a new alias appended; EditRefused if the key has one already."""
    key = parse_key(key)
    existing = parse_aliases(text, Path("-")).aliases.get(key)
    if existing is not None:
        raise EditRefused(f"{key} exists (-> {', '.join(existing.targets)}); "
                          "delete it first to change it")
    return ensure_newline(text) + format_alias_line(key, targets) + "\n"


def remove_alias(text: str, key: str) -> str:
    """`text` without the alias's lines (continuations included); EditRefused if absent."""
    key = parse_key(key)
    drop: set[int] = set()
    for _, joined, numbers in _logical_lines(text):
        name, sep, _ = joined.partition(":")
        if not sep:
            continue
        try:
            if parse_key(name) == key:
                drop.update(numbers)
        except ValueError:
            continue
    if not drop:
        raise EditRefused(f"{key}: no such alias")
    lines = text.splitlines(keepends=True)
    return "".join(line for i, line in enumerate(lines, start=1) if i not in drop)


class AliasesFile(TableFile[AliasTable]):
    """The aliases file, re-read on change, edited atomically (see auth.textfile)."""

    kind = "aliases"

    def parse(self, text: str) -> AliasTable:
        return parse_aliases(text, self.path)

    def count(self, table: AliasTable) -> int:
        return len(table.aliases)

    def get(self, key: str) -> AliasEntry | None:
        return self.table().aliases.get(key)

    def add(self, key: str, targets: Sequence[str]) -> None:
        self._edit(lambda text: add_alias(text, key, targets))

    def remove(self, key: str) -> None:
        self._edit(lambda text: remove_alias(text, key))
