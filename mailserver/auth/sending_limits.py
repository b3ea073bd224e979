"""Sending limits of submission users: data_dir/sending_limits, re-read on change.

One line per user or domain, the most specific wins, then the [abuse] defaults:

    # who                 messages/hour  recipients/day   (0: no limit)
    @example.org          200            2000
    alice@example.org     50             500

Like the users file (auth/textfile.py): edited atomically by `mailserver user quota
ADDRESS --messages-per-hour N --recipients-per-day N`, read by the running server on
its next check. The counts themselves are in the shared table (control.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailserver.address import domain_key
from mailserver.auth.textfile import LineProblem, TableFile, ensure_newline, numbered_lines
from mailserver.config import Config


@dataclass(frozen=True)
class Limits:
    messages_per_hour: int
    recipients_per_day: int
    #: Where they come from: "user", "domain" or "default".
    source: str


@dataclass
class LimitsTable:
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)
    problems: tuple[LineProblem, ...] = ()


def _who(text: str) -> str | None:
    text = text.strip()
    local, at, domain = text.rpartition("@")
    if not at or not domain or " " in text:
        return None
    return f"{local.lower()}@{domain_key(domain)}" if local else f"@{domain_key(domain)}"


class SendingLimits(TableFile[LimitsTable]):
    kind = "sending limits"

    def __init__(self, config: Config) -> None:
        super().__init__(config.data_dir / "sending_limits")
        self.defaults = (config.abuse.messages_per_hour, config.abuse.recipients_per_day)

    def parse(self, text: str) -> LimitsTable:
        table = LimitsTable()
        problems = []
        for number, line in numbered_lines(text):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            who = _who(words[0])
            if who is None or len(words) != 3 or not all(w.isdigit() for w in words[1:]):
                problems.append(LineProblem(self.path, number, "expected ADDRESS or "
                                            "@DOMAIN, messages per hour, recipients per day"))
                continue
            table.entries[who] = (int(words[1]), int(words[2]))
        table.problems = tuple(problems)
        return table

    def count(self, table: LimitsTable) -> int:
        return len(table.entries)

    def limits(self, user: str) -> Limits:
        entries = self.table().entries
        who = _who(user) or user.lower()
        if who in entries:
            return Limits(*entries[who], source="user")
        domain = "@" + who.rpartition("@")[2]
        if domain in entries:
            return Limits(*entries[domain], source="domain")
        return Limits(*self.defaults, source="default")

    def set(self, who: str, messages_per_hour: int, recipients_per_day: int) -> None:
        key = _who(who)
        if key is None:
            raise ValueError(f"not an address or @domain: {who!r}")

        def transform(old: str) -> str:
            kept = [line for line in old.splitlines()
                    if (line.split("#", 1)[0].split() or [""])[0].lower() != key]
            text = ensure_newline("\n".join(kept))
            return text + f"{key} {messages_per_hour} {recipients_per_day}\n"

        self._edit(transform)


def limits_path(config: Config) -> Path:
    return config.data_dir / "sending_limits"
