"""The one helper every config section module shares (config.py and config_sections.py)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def doc(text: str, example: str = "", **kwargs: Any) -> Any:
    """A dataclass field carrying its own documentation (rendered into the example file).

    `example`: TOML shown commented out instead of the key's default (an array of tables,
    such as [[webhooks.domain]], which has no one-line default worth showing)."""
    metadata = {"doc": text, "example": example} if example else {"doc": text}
    return field(metadata=metadata, **kwargs)
