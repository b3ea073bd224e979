"""SMTP replies as values, so every layer can say exactly what the client will read.

RFC 5321 4.2 (reply codes) and RFC 3463 / RFC 2034 (enhanced status codes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: a three-digit code, an optional enhanced code, one or more text lines."""

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    def encode(self, enhanced_codes: bool = True) -> bytes:
        """The wire form: multi-line replies use `code-` on all but the last line (4.2.1)."""
        lines = self.lines() or ("",)
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            prefix = f"{self.code}{sep}"
            if enhanced_codes and self.enhanced:
                prefix += self.enhanced + " "
            out.append((prefix + line).rstrip(" ").encode("utf-8") + b"\r\n")
        return b"".join(out)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400
