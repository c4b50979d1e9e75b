"""Each fault module runs its own stack (module scope), because its tests kill, stop and
restart services and servers; a module may override ``stack`` with other settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.faults.support import Api
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    smtp = SmtpSink()
    smtp.start()
    yield smtp
    smtp.stop()


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink) -> AsyncIterator[Stack]:
    async with running_stack(sink) as running:
        yield running


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[Api]:
    client = Api(stack)
    yield client
    await client.close()
