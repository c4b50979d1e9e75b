"""Rate limits that hold across replicas and can't be turned against a person, counted on
the client's real address: real clients bound to 127.0.0.2 and 127.0.0.3 (loopback is a
whole /8) in front of gateways sharing the run's database."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from services.gateway.app import create_app
from services.gateway.state import LIMITS
from tests.gateway.conftest import make_settings
from tests.gateway.fakes import Backend

pytestmark = pytest.mark.integration

PASSWORD = "the right password 42"
PROXY, STRANGER = "127.0.0.2", "127.0.0.3"


class Person:
    """A browser on its own source address: keeps cookies, posts forms with the CSRF token."""

    def __init__(self, address: str) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0)),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )

    async def post(
        self, server: TestServer, path: str, data: dict[str, str], **headers: str
    ) -> tuple[int, dict[str, str], str]:
        url = server.make_url(path)
        token = self.session.cookie_jar.filter_cookies(url).get("cp_csrf")
        if token is None:
            async with self.session.get(server.make_url("/login")) as response:
                await response.read()
            token = self.session.cookie_jar.filter_cookies(url).get("cp_csrf")
        assert token is not None
        form = {"csrf_token": token.value, **data}
        async with self.session.post(
            url, data=form, headers=headers, allow_redirects=False
        ) as response:
            return response.status, dict(response.headers), await response.text()

    async def log_in(
        self, server: TestServer, email: str, password: str, **headers: str
    ) -> tuple[int, dict[str, str], str]:
        return await self.post(server, "/login", {"email": email, "password": password}, **headers)


class Ticks:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def people() -> AsyncIterator[dict[str, Person]]:
    crowd = {address: Person(address) for address in (PROXY, STRANGER)}
    yield crowd
    for person in crowd.values():
        await person.session.close()


async def gateway(backend: Backend, **extra: Any) -> TestServer:
    clock = extra.pop("clock", None)
    settings = make_settings(backend, **extra)
    app = create_app(settings, clock=clock) if clock else create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_two_gateways_share_one_count(backend: Backend, people: dict[str, Person]) -> None:
    one = await gateway(backend, gateway_rate_per_ip=3)
    two = await gateway(backend, gateway_rate_per_ip=3)
    person = people[STRANGER]
    try:
        statuses = [
            (await person.log_in(server, f"c{i}@example.com", "wrong password!"))[0]
            for i, server in enumerate((one, two, one))
        ]
        assert statuses == [401, 401, 401]
        for server in (two, one):
            status, headers, text = await person.log_in(server, "c9@example.com", "wrong!")
            assert status == 429, text
            assert int(headers["Retry-After"]) > 0
    finally:
        await one.close()
        await two.close()


async def test_guesses_from_one_address_do_not_lock_the_owner_out(
    backend: Backend, people: dict[str, Person]
) -> None:
    """The targeted lockout: 20 wrong guesses for victim@ from the attacker's address used
    to block the account for everyone, the right password included."""
    backend.add_user("victim@example.com", PASSWORD)
    server = await gateway(backend)  # the defaults: 20 failures per window
    attacker, victim = people[STRANGER], people[PROXY]
    try:
        for i in range(20):
            status, _, _ = await attacker.log_in(server, "victim@example.com", f"guess {i:04d}xx")
            assert status == 401
        status, headers, _ = await attacker.log_in(server, "victim@example.com", "guess 9999xx")
        assert status == 429 and int(headers["Retry-After"]) > 0
        # The guesser is slowed on this account only, and the owner gets in from theirs.
        assert (await attacker.log_in(server, "other@example.com", "guess 0000xx"))[0] == 401
        status, headers, text = await victim.log_in(server, "victim@example.com", PASSWORD)
        assert status == 303, text
        assert "cp_session=" in headers.get("Set-Cookie", "")
    finally:
        await server.close()


async def test_every_spelling_of_one_account_shares_its_failed_logins(
    backend: Backend, people: dict[str, Person]
) -> None:
    """Identity logs in the address as the address rule writes it (IDNA: a full-width
    letter or an ideographic full stop in the domain is the ASCII one), so each of these
    opens victim@example.com. The failures were counted per spelling as typed: a guesser
    cycling through them had a fresh 20 for each, up to the whole address limit (300)."""
    backend.add_user("victim@example.com", PASSWORD)
    server = await gateway(backend)  # the defaults: 20 failures per window
    attacker = people[STRANGER]
    spellings = [
        "victim@"
        + "".join(chr(ord(c) + 0xFEE0) if i == n else c for i, c in enumerate("example"))
        + ".com"
        for n in range(7)
    ]
    spellings += ["victim@example\u3002com", "victim@example\uff0ecom", "Victim@EXAMPLE.com"]
    try:
        for i in range(20):
            email = spellings[i % len(spellings)]
            status, _, text = await attacker.log_in(server, email, f"guess {i:04d}xx")
            assert status == 401, (email, status, text[:200])
        for email in ("victim@example.com", *spellings):
            status, headers, _ = await attacker.log_in(server, email, "guess 9999xx")
            assert status == 429 and int(headers["Retry-After"]) > 0, (email, status)
        # Another account, and the owner from their own address, are not slowed.
        assert (await attacker.log_in(server, "other@example.com", "guess 0000xx"))[0] == 401
        status, _, text = await people[PROXY].log_in(server, "victim@example.com", PASSWORD)
        assert status == 303, text
    finally:
        await server.close()


async def test_guesses_sent_at_once_get_no_more_than_the_failures_allowed(
    backend: Backend, people: dict[str, Person]
) -> None:
    """Each attempt was checked against the failures counted so far, and counted only once
    identity had said the password was wrong: 60 guesses sent together were all checked
    before the first was counted, and all went to identity (up to the whole address
    limit, 300, on one account). Now each attempt counts before the check, and one that
    turns out right is taken back, so the owner logging in often is never slowed."""
    backend.add_user("victim@example.com", PASSWORD)
    server = await gateway(backend)  # the defaults: 20 failures per window
    attacker, owner = people[STRANGER], people[PROXY]
    try:
        await attacker.log_in(server, "other@example.com", "warm up the csrf")
        answers = await asyncio.gather(
            *(attacker.log_in(server, "victim@example.com", f"guess {i:04d}xx") for i in range(60))
        )
        statuses = sorted(status for status, _, _ in answers)
        assert statuses.count(401) == 20 and statuses.count(429) == 40, statuses
        for _ in range(25):
            status, _, text = await owner.log_in(server, "victim@example.com", PASSWORD)
            assert status == 303, text
    finally:
        await server.close()


async def test_a_spoofed_forwarded_header_changes_nothing(
    backend: Backend, people: dict[str, Person]
) -> None:
    server = await gateway(backend, gateway_rate_per_ip=2, gateway_trusted_proxies=PROXY)
    stranger = people[STRANGER]  # not a trusted proxy: its headers are its own words
    try:
        statuses = []
        for i in range(3):
            status, _, _ = await stranger.log_in(
                server,
                f"c{i}@example.com",
                "wrong password!",
                **{"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=198.51.100.{i}"},
            )
            statuses.append(status)
        assert statuses == [401, 401, 429]
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("header", "written"),
    [
        ("x-forwarded-for", lambda hops: {"X-Forwarded-For": ", ".join(hops)}),
        (
            "forwarded",
            lambda hops: {"Forwarded": ", ".join(f'for="{h}:4711";proto=https' for h in hops)},
        ),
    ],
)
async def test_behind_a_trusted_proxy_each_person_counts_separately(
    backend: Backend, people: dict[str, Person], header: str, written: Any
) -> None:
    server = await gateway(
        backend,
        gateway_rate_per_ip=2,
        gateway_trusted_proxies=f"10.0.0.0/8, {PROXY}/32",
        gateway_forwarded_header=header,
    )
    proxy = people[PROXY]  # what an ingress controller does: append the client it saw

    async def through_proxy(client: str, claimed: str | None = None) -> int:
        hops = [claimed, client] if claimed else [client]
        status, _, _ = await proxy.log_in(
            server, "c@example.com", "wrong password!", **written(hops)
        )
        return status

    try:
        assert [await through_proxy("198.51.100.7") for _ in range(2)] == [401, 401]
        assert await through_proxy("198.51.100.7") == 429
        # What the person writes themselves sits left of what the proxy saw: no escape.
        assert await through_proxy("198.51.100.7", claimed="203.0.113.9") == 429
        # Someone else behind the same proxy is counted apart.
        assert await through_proxy("198.51.100.8") == 401
    finally:
        await server.close()


async def test_counts_expire_with_their_window_and_are_pruned(
    backend: Backend, people: dict[str, Person]
) -> None:
    ticks = Ticks()
    server = await gateway(
        backend, clock=ticks, gateway_rate_per_ip=2, gateway_rate_window_seconds=60
    )
    person = people[STRANGER]
    try:
        statuses = [
            (await person.post(server, "/forgot-password", {"email": f"c{i}@example.com"}))[0]
            for i in range(3)
        ]
        assert statuses == [200, 200, 429]
        ticks.now += 45  # still inside the window
        status, headers, _ = await person.post(
            server, "/forgot-password", {"email": "c@example.com"}
        )
        assert status == 429 and int(headers["Retry-After"]) > 0
        ticks.now += 130  # two windows on: nothing counts any more
        assert (await person.post(server, "/forgot-password", {"email": "d@example.com"}))[0] == 200
        ticks.now += 130
        await server.app[LIMITS].prune()
        conn = await asyncpg.connect(backend.database_url)  # type: ignore[attr-defined]
        try:
            assert await conn.fetchval("SELECT count(*) FROM gateway.rate_counters") == 0
        finally:
            await conn.close()
    finally:
        await server.close()


async def test_reset_emails_are_capped_per_inbox(
    backend: Backend, people: dict[str, Person]
) -> None:
    server = await gateway(backend, gateway_rate_per_email=2)
    try:
        statuses = [
            (await people[address].post(server, "/forgot-password", {"email": "c@example.com"}))[0]
            for address in (STRANGER, PROXY, STRANGER)
        ]
        assert statuses == [200, 200, 429]
    finally:
        await server.close()


async def test_every_spelling_of_one_inbox_shares_its_count(
    backend: Backend, people: dict[str, Person]
) -> None:
    """Python's lower() ends ΟΔΥΣΣΕΑΣ with a final small sigma; PostgreSQL's lower(), which
    says whose inbox an address is, with the ordinary one: the two spellings below are one
    inbox, and were two counts."""
    server = await gateway(backend, gateway_rate_per_email=2)
    spellings = ("ΟΔΥΣΣΕΑΣ@example.gr", "οδυσσεασ@example.gr", "ΟΔΥΣΣΕΑΣ@example.gr")
    try:
        statuses = [
            (await people[address].post(server, "/forgot-password", {"email": email}))[0]
            for address, email in zip((STRANGER, PROXY, STRANGER), spellings, strict=True)
        ]
        assert statuses == [200, 200, 429]
    finally:
        await server.close()


async def test_a_busy_identity_shows_a_friendly_503(
    backend: Backend, people: dict[str, Person]
) -> None:
    backend.add_user("c@example.com", PASSWORD)
    backend.hashing_busy = True
    server = await gateway(backend)
    try:
        status, headers, html = await people[STRANGER].log_in(server, "c@example.com", PASSWORD)
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert "busy right now" in html and "Traceback" not in html
        assert re.search(r"try again in a few seconds", html)
    finally:
        await server.close()
