"""LIST and LSUB mailbox patterns (RFC 3501 6.3.8) matched in time linear in the name.

`*` matches any run of characters, `%` any run without the hierarchy delimiter. A
regular expression built from the pattern (`.*` and `[^.]*`) backtracks: with n
wildcards a non-matching name costs about len(name)**n steps, so one `LIST "" "<60
stars>x"` held the reactor for 17 seconds. Here the pattern is a small automaton run
over the name once, with every live position of the pattern held in the bits of one
integer (Shift-And, as agrep and glob matchers do): each character of the name is one
step of a few integer operations, whatever the pattern, so a name of n characters costs
n steps. Runs of wildcards collapse first ("%*%" is "*"): they match the same names.

The pattern (reference and pattern together) is at most MAX_PATTERN octets: longer
ones are refused before any matching (NO [LIMIT]), which bounds each step as well.
"""

from __future__ import annotations

from mailserver.imap.grammar import DELIMITER, MAX_MAILBOX_NAME

#: Longest reference + pattern accepted: a mailbox name is at most MAX_MAILBOX_NAME
#: octets, and a longer pattern could only match through wildcards that match nothing.
MAX_PATTERN = MAX_MAILBOX_NAME


def collapse(pattern: str) -> str:
    """`pattern` with each run of wildcards made one: `*` if the run has one, else `%`."""
    out: list[str] = []
    run = ""
    for ch in pattern:
        if ch in "*%":
            run += ch
            continue
        if run:
            out.append("*" if "*" in run else "%")
            run = ""
        out.append(ch)
    if run:
        out.append("*" if "*" in run else "%")
    return "".join(out)


class _Automaton:
    """One collapsed pattern as bit masks: bit j stands for "pattern[:j] matched"."""

    __slots__ = ("literal", "star", "percent", "wild", "accept", "chars", "steps")

    def __init__(self, pattern: str) -> None:
        #: A pattern without wildcards is compared as a string.
        self.literal = pattern if "*" not in pattern and "%" not in pattern else None
        self.star = self.percent = 0
        self.chars: dict[str, int] = {}
        for j, ch in enumerate(pattern):
            if ch == "*":
                self.star |= 1 << j
            elif ch == "%":
                self.percent |= 1 << j
            else:
                self.chars[ch] = self.chars.get(ch, 0) | 1 << j
        self.wild = self.star | self.percent
        self.accept = 1 << len(pattern)
        #: Characters consumed so far, over every name (what tests bound).
        self.steps = 0

    def matches(self, name: str) -> bool:
        if self.literal is not None:
            return name == self.literal
        wild, star, percent, chars = self.wild, self.star, self.percent, self.chars
        # A wildcard matches the empty string: position j live makes j+1 live. Runs are
        # collapsed, so one shift reaches past every wildcard.
        live = 1 | (1 & wild) << 1
        for ch in name:
            # Literal positions advance on their character, `*` stays on anything,
            # `%` on anything but the delimiter (RFC 3501 6.3.8).
            live = ((live & chars.get(ch, 0)) << 1) | (live & star) | (
                live & percent if ch != DELIMITER else 0)
            live |= (live & wild) << 1
            if not live:
                break
        self.steps += len(name)
        return bool(live & self.accept)


class MailboxPattern:
    """A LIST/LSUB reference + pattern, ready to test many names: `matches(name)`.

    A leading INBOX matches in any case (RFC 3501 5.1): a literal head of the pattern
    that spells the start of INBOX in another case ("inbox*", "Inb%") also matches
    INBOX and INBOX's children, as Dovecot does; other names still match as written.
    """

    def __init__(self, full: str) -> None:
        pattern = collapse(full)
        self._exact = _Automaton(pattern)
        self._inbox: _Automaton | None = None
        head = pattern[:5]
        for i, ch in enumerate(head):
            if ch in "*%":
                head = head[:i]
                break
        spelled = "INBOX"[:len(head)]
        if head and head.upper() == spelled and head != spelled:
            self._inbox = _Automaton(spelled + pattern[len(head):])

    @property
    def steps(self) -> int:
        """Name characters examined so far (at most one step per character per name
        and automaton: linear, never exponential)."""
        return self._exact.steps + (self._inbox.steps if self._inbox else 0)

    def matches(self, name: str) -> bool:
        if self._exact.matches(name):
            return True
        return (self._inbox is not None
                and (name == "INBOX" or name.startswith("INBOX" + DELIMITER))
                and self._inbox.matches(name))
