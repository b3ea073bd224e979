"""Request bodies as JSON: a clear 400 for anything that is not.

Deep nesting needs no scan of our own: the C decoder gives up with RecursionError at
the interpreter's recursion limit (about a thousand levels), quickly, and that is a 400
like any other malformed body. Shapes are checked by each route.
"""

from __future__ import annotations

import json
from typing import Any

from mailserver.api.resource import ApiError


def parse_json(body: bytes) -> Any:
    """The body as JSON, or ApiError 400 naming what is wrong."""
    if not body:
        raise ApiError(400, "bad_json", "the request has no JSON body")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "bad_json", "the body is not UTF-8") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "JSON nested too deeply") from None
    except ValueError as e:
        raise ApiError(400, "bad_json", f"not JSON: {e}") from None
