"""docs/api/openapi.yaml is a valid OpenAPI 3.1 document, and the checker can fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate

sys.path.insert(0, str(Path(__file__).parent))
from openapi_check import check_response, document  # noqa: E402


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = document()
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_an_answer_that_does_not_fit_fails() -> None:
    check_response("get", "/me", 200, {"address": "a@example.org", "scopes": ["all"]})
    with pytest.raises(AssertionError, match="scopes"):
        check_response("get", "/me", 200, {"address": "a@example.org", "scopes": "all"})
    with pytest.raises(AssertionError, match="not documented"):
        check_response("get", "/me", 418, {})
    check_response("get", "/me", 401, {"error": {"status": 401, "code": "unauthenticated",
                                                 "message": "no"}})
    with pytest.raises(AssertionError, match="smtp"):
        check_response("get", "/me", 401, {"error": {"status": 401, "code": "x",
                                                     "message": "no", "smtp": "7.7.7"}})
