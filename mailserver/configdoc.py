"""The one helper every config section module shares (config.py and config_sections.py)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its own documentation (rendered into the example file)."""
    return field(metadata={"doc": text}, **kwargs)
