"""Internal HTTP calls prove their caller, on the real stack (each process holding only
its own key): every internal route of every service refuses a caller without proof (401)
and a proven service that its callers table leaves out (403). The route tables are read
from the apps, so a route added later is covered without editing this file."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from libs.common.sealing import new_key
from libs.common.service_auth import (
    DEVELOPMENT_KEYS,
    SERVICES,
    ServiceKeys,
    TokenSigner,
    encode_private,
    parse_private_key,
    parse_public_table,
)
from libs.common.web import GUARD, OPEN_PATHS
from services.identity.app import create_app as identity_app
from services.identity.settings import IdentitySettings
from services.invitations.app import create_app as invitations_app
from services.invitations.settings import InvitationsSettings
from services.mailer.app import create_app as mailer_app
from services.mailer.settings import MailerSettings
from services.portals.app import create_app as portals_app
from services.portals.settings import PortalsSettings
from tests.support.env import TestEnv
from tests.support.processes import ROOT
from tests.support.stack import ADMIN_EMAIL, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

INTERNAL = ("identity", "portals", "invitations", "mailer")
SERVICE_CODES = {"service_auth_required", "service_forbidden"}


def apps() -> dict[str, web.Application]:
    """The four internal apps as their composition roots build them (not started)."""
    return {
        "identity": identity_app(IdentitySettings()),
        "portals": portals_app(PortalsSettings()),
        "invitations": invitations_app(InvitationsSettings()),
        "mailer": mailer_app(MailerSettings()),
    }


def route_table() -> list[tuple[str, str, str, frozenset[str]]]:
    """(service, method, path pattern, allowed callers) of every route but the open ones."""
    table = []
    for service, app in apps().items():
        guard = app[GUARD]
        for route in app.router.routes():
            canonical = route.resource.canonical if route.resource else ""
            if route.method == "HEAD" or canonical in OPEN_PATHS:
                continue
            table.append(
                (service, route.method, canonical, guard.callers[f"{route.method} {canonical}"])
            )
    return sorted(table)


ROUTES = route_table()


def concrete(pattern: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), pattern)


async def call(
    stack: Stack, service: str, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, stack[service].url + path, json={}, headers=headers or {}
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


def code_of(body: Any) -> str | None:
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


def test_the_route_tables_cover_the_internal_apis() -> None:
    found = {(service, method, path) for service, method, path, _ in ROUTES}
    assert ("identity", "POST", "/sessions/issue") in found
    assert ("portals", "POST", "/portals/{portal_id}/access") in found
    assert ("invitations", "POST", "/invitations/accept") in found
    assert len(found) >= 30


@pytest.mark.parametrize(("service", "method", "path", "callers"), ROUTES)
async def test_every_internal_route_refuses_a_caller_without_proof(
    stack: Stack, service: str, method: str, path: str, callers: frozenset[str]
) -> None:
    for headers in (
        {},
        {"Authorization": "Service not-a-token"},
        {"Authorization": f"Bearer {uuid.uuid4().hex}"},
    ):
        status, body = await call(stack, service, method, concrete(path), headers)
        assert status == 401, (method, path, headers, status, body)
        assert code_of(body) == "service_auth_required"
        assert "Authorization: Service" in body["error"]["message"]


@pytest.mark.parametrize(("service", "method", "path", "callers"), ROUTES)
async def test_every_internal_route_answers_only_its_callers(
    stack: Stack, service: str, method: str, path: str, callers: frozenset[str]
) -> None:
    for caller in SERVICES:
        if caller == service:
            continue
        headers = stack.keys.headers(caller, service)
        status, body = await call(stack, service, method, concrete(path), headers)
        if caller in callers:
            assert code_of(body) not in SERVICE_CODES, (caller, method, path, status, body)
        else:
            assert (status, code_of(body)) == (403, "service_forbidden"), (caller, method, path)


async def test_health_readiness_and_metrics_need_no_proof(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        for service in INTERNAL:
            # on the management port, which no ingress routes (the API port says 404)
            for path in sorted(OPEN_PATHS):
                async with session.get(stack[service].management_url + path) as response:
                    assert response.status == 200, (service, path)
                async with session.get(stack[service].url + path) as response:
                    assert response.status == 404, (service, path)
            # anything else, even a path no route serves, wants proof first
            async with session.get(stack[service].url + "/nothing-here") as response:
                assert response.status == 401, service


async def _admin_id(stack: Stack) -> str:
    status, page = await call(
        stack,
        "identity",
        "GET",
        "/users?q=" + ADMIN_EMAIL,
        stack.keys.headers("gateway", "identity"),
    )
    assert status == 200, page
    return str(next(u["id"] for u in page["items"] if u["email"] == ADMIN_EMAIL))


async def _issue(stack: Stack, user_id: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack["identity"].url + "/sessions/issue", json={"user_id": user_id}, headers=headers
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_only_the_gateway_mints_a_session_for_the_administrator(stack: Stack) -> None:
    """The issue's probe: POST /sessions/issue {user_id} minted a session for anyone who
    reached identity. Now the mailer's valid proof is refused, and so is anything but
    the gateway's."""
    admin_id = await _admin_id(stack)
    status, body = await _issue(stack, admin_id, {})
    assert (status, code_of(body)) == (401, "service_auth_required")
    for caller in ("mailer", "portals", "invitations"):
        status, body = await _issue(stack, admin_id, stack.keys.headers(caller, "identity"))
        assert (status, code_of(body)) == (403, "service_forbidden"), caller
        assert "token" not in body
    status, body = await _issue(stack, admin_id, stack.keys.headers("gateway", "identity"))
    assert status == 201 and body["user"]["role"] == "administrator"


def _gateway_keys(stack: Stack, private: str | None = None) -> ServiceKeys:
    key = parse_private_key(private or stack.keys.private["gateway"])
    return ServiceKeys("gateway", key, parse_public_table(stack.keys.public_table))


async def test_a_token_for_another_audience_expired_or_badly_signed_is_refused(
    stack: Stack,
) -> None:
    admin_id = await _admin_id(stack)
    gateway = _gateway_keys(stack)
    # the gateway's genuine token for portals, replayed at identity
    for_portals = TokenSigner(gateway).token_for("portals")
    # the gateway's genuine token, two minutes old
    expired = TokenSigner(gateway, clock=lambda: time.time() - 120).token_for("identity")
    # a token claiming to be the gateway's, signed with the development key (what anyone
    # who read the repository has), which this stack does not trust
    forged = TokenSigner(
        _gateway_keys(stack, encode_private(DEVELOPMENT_KEYS["gateway"]))
    ).token_for("identity")
    for token, reason in (
        (for_portals, "not for identity"),
        (expired, "expired"),
        (forged, "signature is not gateway's"),
    ):
        status, body = await _issue(stack, admin_id, {"Authorization": f"Service {token}"})
        assert (status, code_of(body)) == (401, "service_auth_required"), reason
        assert reason in body["error"]["message"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_refuses_to_start_with_the_development_keys_off_localhost(
    test_env: TestEnv, service: str
) -> None:
    # Every other secret fresh, so the development keys are the one thing refused.
    fresh = {
        "PUBLIC_URL": "https://clients.example.com",
        "AMQP_URL": "amqp://127.0.0.1:5672/",
        "MAIL_JOB_KEY": new_key(),
        "WEBHOOK_SECRET_KEY": new_key(),
    }
    env = {
        k: v
        for k, v in test_env.service_env(**fresh).items()
        if not k.startswith(("SERVICE_", "CLIENTPRESS_"))
    }
    result = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "SERVICE_KEY is unset" in result.stderr
    assert "PUBLIC_URL=https://clients.example.com is not localhost" in result.stderr


async def test_every_answer_of_every_service_hides_the_servers_version(stack: Stack) -> None:
    """The gateway said Server: ClientPress, but identity, portals, invitations and the
    mailer answered "Python/3.11 aiohttp/3.14.5" on both ports, the versions a scanner
    in the cluster looks up in advisories."""
    async with aiohttp.ClientSession() as session:
        for service in (*INTERNAL, "gateway"):
            for url in (
                stack[service].url + "/nothing-here",
                stack[service].management_url + "/healthz",
                stack[service].management_url + "/nothing-here",
            ):
                async with session.get(url) as response:
                    assert response.headers.get("Server") == "ClientPress", (
                        url,
                        response.headers.get("Server"),
                    )
