"""The OpenAPI document lists every problem+json answer a route can give (RFC 9457).

What every route shares is added here, from its operation: 401 and 403 where the operation
needs an API key (its ``security``), 404 where it has path parameters (no such resource), 422
where it has parameters or a body (the request did not validate). What only some routes give
(406, 409, 412, 413, 415, 428, 503, ...) is declared on the route with
``responses=problems(...)``, next to the code that raises it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.problems import PROBLEM_JSON

PROBLEM_REF = "#/components/schemas/Problem"
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `type` is urn:medgate:problem:<slug>.",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}


def _response(status: int, description: str | None = None) -> dict[str, Any]:
    return {"description": description or HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route decorator: these statuses answer with problem+json."""
    return {status: _response(status) for status in statuses}


def _shared(operation: dict[str, Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    if operation.get("security"):
        out[401] = "No API key, or an unknown or revoked one"
        out[403] = "The key's role may not do this"
    parameters = operation.get("parameters", [])
    if any(p.get("in") == "path" for p in parameters):
        out[404] = "No such resource"
    if parameters or "requestBody" in operation:
        out[422] = "The request did not validate"
    return out


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description=app.description)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = \
            PROBLEM_SCHEMA
        for path in schema["paths"].values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                for status, description in _shared(operation).items():
                    if status == 422 or str(status) not in responses:
                        responses[str(status)] = _response(status, description)
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["install", "problems"]
