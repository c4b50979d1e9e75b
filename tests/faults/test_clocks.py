"""Hosts whose clocks differ (docs/deploying.md, "Clocks"): the gateway and the invitations
service run 20 s ahead of the others (libfaketime in their processes only), as pods on a
node whose NTP sync lapsed; every internal call they make still proves its caller, and
an invitation goes from the API to the inbox."""

from __future__ import annotations

import glob
from collections.abc import AsyncIterator

import pytest

from tests.faults.support import Api
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

AHEAD = ("gateway", "invitations")


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert found, "libfaketime is missing: apt-get install faketime (.ci/run installs it)"
    return found[0]


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink) -> AsyncIterator[Stack]:
    async with running_stack(sink) as running:
        for name in AHEAD:
            service = running[name]
            service.env = {**service.env, "LD_PRELOAD": libfaketime(), "FAKETIME": "+20s"}
            await running.restart(name)
        yield running


async def test_services_20_s_ahead_of_the_others_still_call_them(stack: Stack) -> None:
    api = Api(stack)
    try:
        # The gateway calls portals, then invitations calls portals and identity.
        portal = await api.create_portal("Clocks apart")
        status, body = await api.call(
            "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": "skew@example.com"}
        )
        assert status == 201, (status, body)
        [email] = await stack.sink.wait_for("skew@example.com")
        assert "Accept Invitation" in email.as_string()
    finally:
        await api.close()
