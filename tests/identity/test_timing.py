"""Same work, same time: Forgot password and Log In answer a known and an unknown email
after the same work, so their times don't tell whether an account exists. Medians over
many interleaved tries, compared as a ratio (never an absolute time)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from services.identity.api import BACKGROUND
from tests.identity.helpers import STRONG, new_email

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
TRIES = 50
# Wide enough for a shared, busy machine; today's forgot-password gap (the known path
# writing a reset and a mail job before answering) measured ~3x.
LOW, HIGH = 0.67, 1.5


async def _known_emails(client: Client, count: int) -> list[str]:
    """One account per try, so the per-account cap on reset mails never shortens a path."""
    emails = []
    for _ in range(count):
        email = new_email("timing")
        response = await client.post("/users", json={"email": email, "password": STRONG})
        assert response.status == 201
        emails.append(email)
    return emails


async def _medians(
    client: Client, path: str, known: list[dict[str, str]], unknown: list[dict[str, str]]
) -> tuple[float, float, int]:
    """Median seconds to answer for each kind, interleaved in a random order per pair;
    whatever a request hands off runs to its end before the next one starts."""
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    statuses = set()
    await client.post(path, json=unknown[0])  # warm the route and the pool
    await client.app[BACKGROUND].drain()
    for pair in zip(known, unknown, strict=True):
        order = [("known", pair[0]), ("unknown", pair[1])]
        random.shuffle(order)
        for kind, body in order:
            start = time.perf_counter()
            response = await client.post(path, json=body)
            await response.read()
            times[kind].append(time.perf_counter() - start)
            statuses.add(response.status)
            await client.app[BACKGROUND].drain()
    assert len(statuses) == 1, statuses
    return statistics.median(times["known"]), statistics.median(times["unknown"]), statuses.pop()


# A busy shared machine can skew one round of medians; the defect skews every round (the
# old forgot-password path was ~3x in each). So: up to ROUNDS rounds, one in bounds passes.
ROUNDS = 3


async def _ratio_within_bounds(
    client: Client, path: str, body: Callable[[str], dict[str, str]], status: int
) -> None:
    ratios = []
    for _ in range(ROUNDS):
        known = [body(e) for e in await _known_emails(client, TRIES)]
        unknown = [body(new_email("nobody")) for _ in range(TRIES)]
        known_median, unknown_median, answered = await _medians(client, path, known, unknown)
        assert answered == status
        ratio = known_median / unknown_median
        print(f"{path}: known {known_median * 1e3:.2f} ms, unknown "
              f"{unknown_median * 1e3:.2f} ms, ratio {ratio:.2f}")  # fmt: skip
        if LOW < ratio < HIGH:
            return
        ratios.append(round(ratio, 2))
    raise AssertionError(f"{path}: known/unknown median ratios {ratios}, none in ({LOW}, {HIGH})")


async def test_forgot_password_takes_as_long_for_a_known_email(client: Client) -> None:
    await _ratio_within_bounds(client, "/password-resets", lambda e: {"email": e}, 202)


async def test_log_in_takes_as_long_for_a_known_email(client: Client) -> None:
    wrong = "not the right passphrase"
    await _ratio_within_bounds(client, "/sessions", lambda e: {"email": e, "password": wrong}, 401)
