"""Errors that carry the reply a client (or operator) should see."""

from __future__ import annotations

from mailserver.reply import Reply


class ReplyError(Exception):
    """Raised anywhere below the SMTP session to refuse a request with a specific reply.

    The session catches it and sends `reply` as is; nothing else about the failure leaks
    to the client.
    """

    def __init__(self, code: int, enhanced: str | None, text: str) -> None:
        super().__init__(f"{code} {enhanced or ''} {text}".strip())
        self.reply = Reply(code, enhanced, text)

    @property
    def code(self) -> int:
        return self.reply.code


class ConfigError(Exception):
    """An operator mistake: one line each, naming the key path or file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
