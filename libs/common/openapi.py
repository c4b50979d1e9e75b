"""OpenAPI 3.1 documents built from the pydantic models the views parse with, so a
service's description can't drift from what it accepts."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .web import json_response

UUID: dict[str, Any] = {"type": "string", "format": "uuid"}
# A path's id, in the canonical 8-4-4-4-12 form (any case): anything else names no route,
# never a value that fails further in.
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
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


def page_of(item: dict[str, Any]) -> dict[str, Any]:
    """A page of a listing: its ``items`` and the ``next_cursor`` of the next (null at the
    end), as libs/common/cursor.py makes them."""
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": item},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


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


# --- documented routes: a route declares its models where it is defined ----------------
@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # OpenAPI form, under the table's prefix: "/portals/{id}"
    summary: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[str, ...]
    headers: tuple[dict[str, Any], ...]
    also: tuple[tuple[int, str], ...]  # other success answers: (status, description)
    any_type: bool = False  # the body is read as JSON whatever its declared type


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiRoutes:
    """An aiohttp route table that writes the OpenAPI document as routes are declared:

        @api.get("/portals/{id}", "Get a portal", response=Portal, errors=["404 ..."])
        async def get_portal(request): ...

    ``path_patterns`` gives a path parameter its aiohttp pattern and its schema (the id
    of every /{id} is a UUID)."""

    def __init__(
        self, prefix: str, path_patterns: Mapping[str, tuple[str, dict[str, Any]]]
    ) -> None:
        self.prefix = prefix
        self.path_patterns = dict(path_patterns)
        self.routes = web.RouteTableDef()
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: Sequence[str] = (),
        headers: Sequence[dict[str, Any]] = (),
        also: Sequence[tuple[int, str]] = (),
        any_type: bool = False,
    ) -> Callable[[Handler], Handler]:
        """``any_type``: the view reads its body with read_json(any_type=True), so no 415."""
        self.endpoints.append(
            Endpoint(
                method.lower(),
                path,
                summary,
                body,
                query,
                response,
                status,
                tuple(errors),
                tuple(headers),
                tuple(also),
                any_type,
            )
        )
        return self.routes.route(method.upper(), self.prefix + self._aiohttp_path(path))

    def get(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, summary, **kw)

    def post(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, summary, **kw)

    def put(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, summary, **kw)

    def patch(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, summary, **kw)

    def delete(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, summary, **kw)

    def _aiohttp_path(self, path: str) -> str:
        def pattern(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.path_patterns:
                return "{" + name + ":" + self.path_patterns[name][0] + "}"
            return match.group(0)

        return _PARAM.sub(pattern, path)

    def document(self, info: dict[str, Any], **top: Any) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every route declared so far; ``top`` adds
        top-level fields (servers, security) and ``components`` entries are merged."""
        used: list[tuple[type[BaseModel], JsonSchemaMode]] = []
        for e in self.endpoints:
            if e.body is not None:
                used.append((e.body, "validation"))
            if e.response is not None:
                used.append((e.response, "serialization"))
        refs, definitions = models_json_schema(used, ref_template=REF_TEMPLATE)
        paths: dict[str, dict[str, Any]] = {}
        for e in self.endpoints:
            paths.setdefault(e.path, {})[e.method] = self._operation(e, refs)
        extra_components = top.pop("components", {})
        components: dict[str, Any] = {
            "schemas": {**dict(sorted(definitions.get("$defs", {}).items())), "Error": ERROR},
            "responses": {"Error": ERROR_REF_RESPONSE},
        }
        for key, value in extra_components.items():
            components[key] = {**components.get(key, {}), **value}
        return {
            "openapi": "3.1.0",
            "info": info,
            **top,
            "paths": paths,
            "components": components,
        }

    def _operation(self, e: Endpoint, refs: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
        params = [
            path_parameter(name, self.path_patterns[name][1])
            for name in _PARAM.findall(e.path)
            if name in self.path_patterns
        ]
        params += list(e.headers)
        if e.query is not None:
            params += [_without_null(p) for p in query_parameters(e.query)]
        ok: dict[str, Any] = {"description": "Created" if e.status == 201 else "OK"}
        if e.response is not None:
            ok["content"] = {"application/json": {"schema": refs[(e.response, "serialization")]}}
        responses: dict[str, Any] = {str(e.status): ok}
        for other, description in e.also:
            responses[str(other)] = {**ok, "description": description}
        # 503: every route asks a service behind the gateway (a key's check asks identity),
        # which may be away (<service>_unavailable, unavailable, busy).
        failures = {"401", "403", "503"} | {err.split()[0] for err in e.errors}
        if e.body is not None or e.query is not None:
            failures.add("422")
        if e.body is not None:
            failures.add("413")  # body_too_large: over the route's or the app's limit
            failures.add("400")  # invalid_json: not JSON, not UTF-8, empty
            # unsupported_media_type: declared as another format (unless any type is read);
            # unsupported_content_encoding: sent compressed (protocol.py), on every route.
            failures.add("415")
        for failure in sorted(failures):
            responses[failure] = {"$ref": "#/components/responses/Error"}
        operation: dict[str, Any] = {"summary": e.summary, "parameters": params}
        if e.errors:
            operation["description"] = "Errors: " + ", ".join(e.errors) + "."
        if e.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(e.body, "validation")]}},
            }
        operation["responses"] = responses
        return operation


def _without_null(parameter: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is left out or has a value: ``X | None`` reads as X, and the
    description moves up to the parameter."""
    schema = dict(parameter["schema"])
    branches = schema.pop("anyOf", None)
    if branches is not None:
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            schema = {**kept[0], **schema}
        else:
            schema["anyOf"] = kept
    if schema.get("default", 0) is None:
        del schema["default"]
    schema.pop("title", None)
    out = {**parameter, "schema": schema}
    if "description" in schema:
        out["description"] = schema.pop("description")
    return out


REF_TEMPLATE = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
ERROR: dict[str, Any] = ERROR_RESPONSE["content"]["application/json"]["schema"]
ERROR_REF_RESPONSE: dict[str, Any] = {
    "description": 'Error: {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="Error")}}},
}
