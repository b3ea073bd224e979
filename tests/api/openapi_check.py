"""Answers and request bodies checked against docs/api/openapi.yaml (decision 0032).

    check_response("get", "/me", 200, body)        # the path as the document spells it
    check_request("post", "/send", body)

A path, method, status or media type the document does not describe fails the test:
the document must grow with the API, never lag behind it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.yaml"
BASE_URI = "urn:mailserver-openapi"


@functools.cache
def document() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(document(), default_specification=DRAFT202012)
    return Registry().with_resource(BASE_URI, resource)


def _validate(schema: dict[str, Any], value: Any, where: str) -> None:
    # A $ref like "#/components/..." resolves against the whole document.
    wrapped = {"$id": BASE_URI + "#schema", **schema} if "$ref" not in schema else {
        "$ref": BASE_URI + schema["$ref"]}
    validator = Draft202012Validator(wrapped, registry=_registry())
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    assert not errors, f"{where}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors[:5])


def _operation(method: str, path: str) -> dict[str, Any]:
    paths = document().get("paths") or {}
    assert path in paths, f"the OpenAPI document has no path {path}"
    operation = paths[path].get(method.lower())
    assert operation is not None, f"the OpenAPI document has no {method.upper()} {path}"
    return operation  # type: ignore[no-any-return]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A response or request body given by $ref, looked up in the document."""
    while "$ref" in node:
        target: Any = document()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_response(method: str, path: str, status: int, body: Any,
                   media_type: str = "application/json") -> None:
    """`body` (parsed JSON) is what the document says `method path` answers with `status`."""
    responses = _operation(method, path)["responses"]
    response = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or \
        responses.get("default")
    assert response is not None, f"{method.upper()} {path}: status {status} is not documented"
    content = _resolve(response).get("content") or {}
    assert media_type in content, f"{method.upper()} {path} {status}: no {media_type} answer"
    schema = content[media_type].get("schema")
    if schema is not None and media_type == "application/json":
        _validate(schema, body, f"{method.upper()} {path} {status}")


def check_request(method: str, path: str, body: Any,
                  media_type: str = "application/json") -> None:
    """`body` is a request the document says `method path` accepts."""
    request = _resolve(_operation(method, path).get("requestBody") or {})
    content = request.get("content") or {}
    assert media_type in content, f"{method.upper()} {path}: no {media_type} request body"
    schema = content[media_type].get("schema")
    if schema is not None:
        _validate(schema, body, f"{method.upper()} {path} request")


def check_schema(name: str, value: Any) -> None:
    """`value` fits components.schemas[name] (bodies the server sends, not answers:
    webhook payloads)."""
    assert name in (document().get("components") or {}).get("schemas", {}), \
        f"the OpenAPI document has no schema {name}"
    _validate({"$ref": f"#/components/schemas/{name}"}, value, name)
