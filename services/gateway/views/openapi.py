"""The OpenAPI 3.1 document of /api/v1, built from the models each route in api.py declares
(committed as docs/openapi.json: scripts/gen_openapi.py), and its reference page at
/api/docs: rendered on the server from the same document, styled by our own CSS, with no
script, so the gateway's strict Content-Security-Policy holds."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from libs.common.metrics import release

from ..rendering import render
from . import activity as _activity  # noqa: F401 - declares /api/v1/activity on api.API
from . import api
from . import branding as _branding  # noqa: F401 - declares /api/v1/settings/branding
from . import keys as _keys  # noqa: F401 - declares the /api/v1/keys routes on api.API
from . import staff as _staff  # noqa: F401 - declares /api/v1/staff-invitations on api.API
from . import webhooks as _webhooks  # noqa: F401 - declares /api/v1/webhooks on api.API

SECURITY_SCHEMES = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "cp_session",
        "description": "named __Host-cp_session when PUBLIC_URL is https",
    },
    "csrf": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": (
            "equal to the cp_csrf cookie (__Host-cp_csrf under https); needed on"
            " POST/PUT/PATCH/DELETE"
        ),
    },
    "apiKey": {"type": "http", "scheme": "bearer", "description": "GATEWAY_API_KEY"},
}


def build() -> dict[str, Any]:
    return api.API.document(
        {
            "title": "ClientPress API",
            "version": "1.0.0",
            "description": (
                'Errors are {"error": {"code", "message"}} with the status given. Every'
                " call needs an administrator's session (plus X-CSRF-Token on writes) or"
                " Authorization: Bearer GATEWAY_API_KEY. A body is JSON (RFC 8259) in"
                " UTF-8, sent with Content-Type: application/json (or none): another"
                " declared type answers 415 unsupported_media_type; a body that is not"
                " JSON 400 invalid_json; a key given twice in one object 422"
                " duplicate_field. Values are taken only as their schema's JSON type (a"
                ' boolean is true or false, never "yes" or 1; an integer is never 7.0 or'
                ' "7"); a field the schema does not name answers 422 invalid_input. A'
                " query parameter is given once (422 repeated_parameter), an integer one"
                " in the digits 0-9 alone, a boolean one as true or false (never 1 or yes),"
                " a UUID as its 8-4-4-4-12 hexadecimal digits with hyphens (422"
                " invalid_input). A body is sent uncompressed:"
                " a Content-Encoding other than identity answers 415"
                " unsupported_content_encoding, unread."
            ),
        },
        servers=[{"url": "/api/v1"}],
        security=[{"session": [], "csrf": []}, {"apiKey": []}],
        components={"securitySchemes": SECURITY_SCHEMES},
    )


OPENAPI = build()
# The document's exact bytes, as served and as committed (docs/openapi.json).
OPENAPI_JSON = orjson.dumps(OPENAPI, option=orjson.OPT_INDENT_2) + b"\n"

routes = web.RouteTableDef()


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=OPENAPI_JSON, content_type="application/json")


@routes.get("/api/docs")
async def reference(request: web.Request) -> web.StreamResponse:
    response = render(request, "api_docs.html", {"api": reference_model(OPENAPI)})
    # The reference is the API's own English (names, descriptions), whatever the browser.
    response.headers["Content-Language"] = "en"
    return response


def reference_model(document: dict[str, Any]) -> dict[str, Any]:
    """The document, arranged for the page: operations grouped by their first path
    segment, each schema written out once under Schemas."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            anchor = (
                f"{method}-{path.strip('/').replace('/', '-').replace('{', '').replace('}', '')}"
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            groups.setdefault(path.strip("/").split("/")[0], []).append(
                {
                    "anchor": anchor,
                    "method": method.upper(),
                    "path": path,
                    "summary": op["summary"],
                    "description": op.get("description", ""),
                    "parameters": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p.get("required", False),
                            "type": _type(p.get("schema", {})),
                            "description": p.get("description")
                            or p.get("schema", {}).get("description", ""),
                        }
                        for p in op.get("parameters", [])
                    ],
                    "body": _type(body["schema"]) if body else None,
                    "responses": [
                        (status, *_response(answer)) for status, answer in op["responses"].items()
                    ],
                }
            )
    schemas = [
        (name, orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())
        for name, schema in document["components"]["schemas"].items()
    ]
    return {
        "title": document["info"]["title"],
        "version": document["info"]["version"],
        "release": release(),
        "description": document["info"].get("description", ""),
        "server": document["servers"][0]["url"],
        "groups": sorted(groups.items()),
        "schemas": schemas,
    }


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words: a reference's name, a type with its format or values."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(orjson.dumps(v).decode() for v in schema["enum"])
    if "const" in schema:
        return orjson.dumps(schema["const"]).decode()
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    kind = str(schema.get("type", "any"))
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def _response(answer: dict[str, Any]) -> tuple[str, str | None]:
    """What a status answers: its description and the schema it names, if any."""
    if "$ref" in answer:
        return "Error", "Error"
    content = answer.get("content", {}).get("application/json")
    return str(answer.get("description", "")), _type(content["schema"]) if content else None
