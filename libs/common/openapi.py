"""OpenAPI 3.1 documents built from the pydantic models the views parse with, so a
service's description can't drift from what it accepts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from .web import json_response

UUID: dict[str, Any] = {"type": "string", "format": "uuid"}
TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
NULL_TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
ERROR_RESPONSE: dict[str, Any] = {
    "description": 'Error: {"error": {"code", "message"}}',
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            }
        }
    },
}

# (method, path, summary, body, query, path/header parameters, status, response schema,
#  error codes such as "404 user_not_found")
Operation = tuple[
    str,
    str,
    str,
    type[BaseModel] | None,
    type[BaseModel] | None,
    list[dict[str, Any]],
    int,
    dict[str, Any] | None,
    list[str],
]


def path_parameter(name: str, schema: dict[str, Any] = UUID) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def document(title: str, operations: Sequence[Operation]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, query, params, status, schema, errors in operations:
        response: dict[str, Any] = {"description": "OK"}
        if schema is not None:
            response["content"] = {"application/json": {"schema": schema}}
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": params + (query_parameters(query) if query else []),
            "responses": {
                str(status): response,
                "default": {"$ref": "#/components/responses/Error"},
            },
        }
        if errors:
            operation["description"] = "Errors: " + ", ".join(errors) + "."
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body.model_json_schema()}},
            }
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"responses": {"Error": ERROR_RESPONSE}},
    }


def openapi_route(
    title: str, operations: Sequence[Operation]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A view serving the document, built once."""
    built = document(title, operations)

    async def openapi(_: web.Request) -> web.Response:
        return json_response(built)

    return openapi
