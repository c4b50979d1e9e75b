"""Fixtures for the end-to-end tests: one stack for the session, logged-in clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.e2e.flows import Api
from tests.support.smtp import SmtpSink
from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, Browser, Stack, login, running_stack

__all__ = ["ADMIN_EMAIL", "ADMIN_PASSWORD", "Browser", "Stack"]


@pytest.fixture(scope="session")
def stack_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
async def stack(stack_sink: SmtpSink) -> AsyncIterator[Stack]:
    # Its own database and bus prefix: the service tests' in-process consumers share
    # queue names with these processes and must not compete with them for messages.
    async with running_stack(stack_sink) as running:
        yield running


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[Browser]:
    client = Browser(stack.public_url)
    yield client
    await client.close()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Browser]:
    client = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert "/admin" in str(client.last_url)
    yield client
    await client.close()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[Api]:
    """/api/v1 with the stack's API key."""
    client = Api(stack)
    yield client
    await client.close()
