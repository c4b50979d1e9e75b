"""A revoke racing the accept saga, forced at each step on the real services: the saga is
the gateway's own code, over the services' real HTTP APIs, with the administrator's
Revoke landing at the chosen moment. Whoever wins, there is never an account holding the
typed password plus a standing grant for a revoked invitation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from libs.common.errors import DomainError, Unavailable
from libs.common.http import ServiceClient, new_session
from services.gateway.answers import AcceptedLink, EnsuredUser
from services.gateway.handlers.saga import accept_for_user, accept_with_password
from services.gateway.upstream import Identity, Invitations, Portals, Upstream
from tests.e2e.conftest import Browser, Stack
from tests.e2e.flows import CLIENT_PASSWORD, Api, eventually, unique_email
from tests.support.smtp import accept_link
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

Hook = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class RevokeAfterAccountStep(Identity):
    """The real identity client; the administrator clicks Revoke the moment the account
    step answers, before the saga's next call."""

    after_ensure: Hook = field(default=_nothing)

    async def ensure_user(
        self,
        email: str,
        password: str,
        invitation_id: str,
        role: str | None = None,
        locale: str | None = None,
    ) -> EnsuredUser:
        result = await super().ensure_user(email, password, invitation_id, role, locale)
        await self.after_ensure()
        return result


@dataclass(frozen=True)
class InvitationsDownAtAccept(Invitations):
    """The real invitations client, whose accept step finds the service down once."""

    failures: list[str] = field(default_factory=list)

    async def accept(self, token: str, claim: str, user_id: str) -> AcceptedLink:
        if not self.failures:
            self.failures.append(claim)
            raise Unavailable("The invitations service is unavailable.")
        return await super().accept(token, claim, user_id)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as session:
        yield session


def _upstream(stack: Stack, http: aiohttp.ClientSession, after_ensure: Hook) -> Upstream:
    return Upstream(
        identity=RevokeAfterAccountStep(
            ServiceClient(
                http, stack["identity"].url, "identity", signer=stack.keys.signer("gateway")
            ),
            after_ensure=after_ensure,
        ),
        portals=Portals(
            ServiceClient(
                http, stack["portals"].url, "portals", signer=stack.keys.signer("gateway")
            )
        ),
        invitations=Invitations(
            ServiceClient(
                http, stack["invitations"].url, "invitations", signer=stack.keys.signer("gateway")
            )
        ),
    )


async def _invited(stack: Stack, api: Api, tag: str) -> tuple[str, str, str]:
    """A fresh portal and invitation: (email, invitation id, token)."""
    portal = await api.portal(f"Race {tag} {uuid.uuid4().hex[:6]}")
    email = unique_email(tag)
    code, body = await api.invite(portal["id"], email)
    assert code == 201, body
    link = accept_link((await stack.sink.wait_for(email))[-1])
    return email, body["invitation"]["id"], link.split("token=", 1)[1]


async def _aftermath(stack: Stack, up: Upstream, email: str) -> tuple[int, int, bool]:
    """(accounts, access rows, whether the typed password logs in) for one email."""
    accounts = await db_fetch(
        stack, "SELECT id FROM identity.users WHERE lower(email) = lower($1)", email
    )
    access = await db_fetch(
        stack,
        "SELECT a.portal_id FROM portals.access a JOIN identity.users u ON u.id = a.user_id"
        " WHERE lower(u.email) = lower($1)",
        email,
    )
    try:
        await up.identity.login(email, CLIENT_PASSWORD)
        logs_in = True
    except DomainError:
        logs_in = False
    return len(accounts), len(access), logs_in


async def test_a_revoke_after_the_account_step_never_leaves_access_behind(
    stack: Stack, api: Api, http: aiohttp.ClientSession
) -> None:
    email, invitation_id, token = await _invited(stack, api, "revoke-mid")
    revoke: list[int] = []

    async def administrator_revokes() -> None:
        code, _ = await api.call("POST", f"/invitations/{invitation_id}/revoke")
        revoke.append(code)

    up = _upstream(stack, http, administrator_revokes)
    try:
        await accept_with_password(up, token, CLIENT_PASSWORD)
        saga_won = True
    except DomainError as exc:
        assert exc.code == "invitation_revoked", exc.code
        saga_won = False
    accounts, access, logs_in = await _aftermath(stack, up, email)
    rows = await db_fetch(
        stack, "SELECT status FROM invitations.invitations WHERE id = $1", uuid.UUID(invitation_id)
    )
    status = rows[0]["status"]
    if revoke == [200]:
        # The revoke won: no access, and the typed password opens nothing.
        assert status == "revoked"
        assert (saga_won, access, logs_in) == (False, 0, False)
    else:
        # The revoke came after the link was spent: refused, and the person is in.
        assert revoke == [409]
        assert status == "accepted"
        assert (saga_won, accounts, access, logs_in) == (True, 1, 1, True)


async def test_a_revoke_right_after_validate_makes_nothing(
    stack: Stack, api: Api, http: aiohttp.ClientSession
) -> None:
    email, invitation_id, token = await _invited(stack, api, "revoke-early")
    up = _upstream(stack, http, _nothing)
    invitation = await up.invitations.validate(token)  # the form was shown, then...
    code, _ = await api.call("POST", f"/invitations/{invitation_id}/revoke")
    assert code == 200
    with pytest.raises(DomainError) as info:
        await accept_with_password(up, token, CLIENT_PASSWORD, invitation)
    assert info.value.code == "invitation_revoked"
    assert await _aftermath(stack, up, email) == (0, 0, False)


def _down_at_accept(stack: Stack, http: aiohttp.ClientSession, up: Upstream) -> Upstream:
    """``up`` with invitations failing at the accept step (after the account was made)."""
    return Upstream(
        identity=up.identity,
        portals=up.portals,
        invitations=InvitationsDownAtAccept(
            ServiceClient(
                http, stack["invitations"].url, "invitations", signer=stack.keys.signer("gateway")
            )
        ),
    )


async def test_the_same_link_finishes_after_a_failure_and_ends_the_first_password(
    stack: Stack, api: Api, http: aiohttp.ClientSession
) -> None:
    """The first try made the account (with its password) and failed at the accept step.
    Someone logs in with that first password; then the link is used again with another
    password: it finishes the job, and the first password's session ends."""
    email, _, token = await _invited(stack, api, "retry")
    first_password = "the first password typed 1"
    up = _upstream(stack, http, _nothing)
    failing = _down_at_accept(stack, http, up)
    with pytest.raises(Unavailable):
        await accept_with_password(failing, token, first_password)
    assert (await _aftermath(stack, up, email))[:2] == (1, 0)  # an account, no access
    early = await up.identity.login(email, first_password)

    browser = Browser(stack.public_url)
    try:
        code, url, html = await browser.get(f"/invitations/accept?token={token}")
        assert code == 200 and "Set Password" in html, html[:1000]
        code, url, html = await browser.submit(
            url,
            html,
            "Set Password",
            {"Password": CLIENT_PASSWORD, "Confirm Password": CLIENT_PASSWORD},
        )
    finally:
        await browser.close()
    assert "/client-portal/" in url, html[:1000]
    assert await _aftermath(stack, up, email) == (1, 1, True)
    with pytest.raises(DomainError) as info:
        await up.identity.current(early["token"])
    assert info.value.code == "no_session"
    with pytest.raises(DomainError):
        await up.identity.login(email, first_password)


async def _left_accepting(
    stack: Stack, api: Api, http: aiohttp.ClientSession, tag: str
) -> tuple[str, str, str, Upstream]:
    """An acceptance whose outcome the person never learned: its first try made the
    account and failed at the accept step, and no one retried. (email, invitation id,
    token, upstream)."""
    email, invitation_id, token = await _invited(stack, api, tag)
    up = _upstream(stack, http, _nothing)
    failing = _down_at_accept(stack, http, up)
    with pytest.raises(Unavailable):
        await accept_with_password(failing, token, "the first password typed 1")
    assert await _status(stack, invitation_id) == "accepting"
    return email, invitation_id, token, up


async def _status(stack: Stack, invitation_id: str) -> str:
    rows = await db_fetch(
        stack, "SELECT status FROM invitations.invitations WHERE id = $1", uuid.UUID(invitation_id)
    )
    return str(rows[0]["status"])


async def test_an_acceptance_no_one_finishes_is_handed_back_to_staff(
    stack: Stack, api: Api, http: aiohttp.ClientSession
) -> None:
    """Once its lease and the time for a retry are over (moved into the past here, as
    after a quarter of an hour), the expiry sweep makes it pending again: listed as
    pending, and the administrator's Revoke works and kills the link."""
    email, invitation_id, token, up = await _left_accepting(stack, api, http, "stalled")
    await db_fetch(
        stack,
        "UPDATE invitations.invitations SET accept_claim_until = now() - interval '11 minutes'"
        " WHERE id = $1",
        uuid.UUID(invitation_id),
    )

    async def handed_back() -> str | None:
        status = await _status(stack, invitation_id)
        return status if status != "accepting" else None

    assert await eventually(handed_back, "the sweep to hand the acceptance back") == "pending"
    code, listed = await api.call("GET", "/invitations?status=pending")
    assert code == 200 and invitation_id in [i["id"] for i in listed["items"]]
    code, _ = await api.call("POST", f"/invitations/{invitation_id}/revoke")
    assert code == 200
    with pytest.raises(DomainError) as info:
        await accept_with_password(up, token, CLIENT_PASSWORD)
    assert info.value.code == "invitation_revoked"
    # The first try's account stays, with no access; the new password opens nothing.
    assert await _aftermath(stack, up, email) == (1, 0, False)


async def test_a_stalled_acceptances_link_sets_nothing_after_its_expiry(
    stack: Stack, api: Api, http: aiohttp.ClientSession
) -> None:
    """A link found in a mailbox months after its expiry can't take the acceptance over:
    the page says it expired, the password typed is set nowhere, no access is granted."""
    email, invitation_id, token, up = await _left_accepting(stack, api, http, "leaked")
    await db_fetch(
        stack,
        "UPDATE invitations.invitations SET sent_at = now() - interval '104 days',"
        " expires_at = now() - interval '90 days',"
        " accept_claim_until = now() - interval '100 days' WHERE id = $1",
        uuid.UUID(invitation_id),
    )
    browser = Browser(stack.public_url)
    try:
        code, _, html = await browser.get(f"/invitations/accept?token={token}")
        assert code == 410 and "Set Password" not in html, html[:1000]
    finally:
        await browser.close()
    with pytest.raises(DomainError) as info:
        await accept_with_password(up, token, CLIENT_PASSWORD)
    assert info.value.code == "invitation_expired"
    assert await _aftermath(stack, up, email) == (1, 0, False)

    async def expired() -> str | None:
        status = await _status(stack, invitation_id)
        return status if status == "expired" else None

    await eventually(expired, "the sweep to expire the acceptance")  # listed as expired


# --- a Disable racing the accept saga ------------------------------------------------------
# The order that used to leave a disabled person on the portal: the administrator's Disable
# lands after the account step and portals applies it before the saga's grant arrives.
async def _disabled_and_heard(stack: Stack, up: Upstream, email: str) -> str:
    """The administrator disables the account (identity's endpoint behind Users →
    Disable), and portals has applied identity.user.disabled: the user id."""
    rows = await db_fetch(
        stack, "SELECT id FROM identity.users WHERE lower(email) = lower($1)", email
    )
    user_id = str(rows[0]["id"])
    await up.identity.disable_user(user_id)
    await _heard_by_portals(stack, "identity.user.disabled", user_id)
    return user_id


async def _heard_by_portals(stack: Stack, event_type: str, naming: str) -> None:
    """Until portals has applied an event of ``event_type`` whose body names ``naming``."""

    async def heard() -> bool | None:
        rows = await db_fetch(
            stack,
            "SELECT 1 FROM portals.inbox WHERE event_id IN (SELECT id FROM identity.outbox"
            " WHERE routing_key = $1 AND position($2 IN convert_from(body, 'UTF8')) > 0"
            " UNION ALL SELECT id FROM invitations.outbox"
            " WHERE routing_key = $1 AND position($2 IN convert_from(body, 'UTF8')) > 0)",
            event_type,
            naming,
        )
        return True if rows else None

    await eventually(heard, f"portals to apply {event_type}")


async def test_a_disable_after_the_account_step_leaves_no_portal_even_once_enabled(
    stack: Stack, api: Api, http: aiohttp.ClientSession
) -> None:
    email, invitation_id, token = await _invited(stack, api, "disable-mid")
    disabled: list[str] = []

    async def administrator_disables() -> None:
        disabled.append(await _disabled_and_heard(stack, up, email))

    up = _upstream(stack, http, administrator_disables)
    with pytest.raises(DomainError) as info:
        await accept_with_password(up, token, CLIENT_PASSWORD)
    assert info.value.code in ("user_disabled", "account_disabled"), info.value.code
    assert await _aftermath(stack, up, email) == (1, 0, False)

    # Enabled again, once portals has heard the invitation.accepted too: the person logs
    # in with the password they typed, and is on no portal (a Disable takes every portal,
    # an Enable gives none back).
    await up.identity.enable_user(disabled[0])
    await _heard_by_portals(stack, "invitation.accepted", invitation_id)
    assert await _aftermath(stack, up, email) == (1, 0, True)


@dataclass(frozen=True)
class DisableBeforeAcceptStep(Invitations):
    """The real invitations client; the administrator disables the account after the link
    was claimed for the saga, before the acceptance is recorded."""

    before_accept: Hook = field(default=_nothing)

    async def accept(self, token: str, claim: str, user_id: str) -> AcceptedLink:
        await self.before_accept()
        return await super().accept(token, claim, user_id)


async def test_a_disable_while_a_logged_in_person_accepts_leaves_no_portal(
    stack: Stack, api: Api, http: aiohttp.ClientSession
) -> None:
    """Someone with an account (Client of a first portal) accepts an invitation to a second
    one while logged in; the Disable lands between the claim of the link and the
    acceptance, and portals applies it before it hears of the acceptance."""
    email, _, token = await _invited(stack, api, "disable-joined")
    plain = _upstream(stack, http, _nothing)
    await accept_with_password(plain, token, CLIENT_PASSWORD)
    rows = await db_fetch(
        stack, "SELECT id FROM identity.users WHERE lower(email) = lower($1)", email
    )
    user_id = str(rows[0]["id"])
    second = await api.portal(f"Race second {uuid.uuid4().hex[:6]}")
    code, body = await api.invite(second["id"], email)
    assert code == 201, body
    link = accept_link((await stack.sink.wait_for(email, count=2))[-1])
    second_token = link.split("token=", 1)[1]

    async def administrator_disables() -> None:
        await _disabled_and_heard(stack, plain, email)

    up = Upstream(
        identity=plain.identity,
        portals=plain.portals,
        invitations=DisableBeforeAcceptStep(
            ServiceClient(
                http, stack["invitations"].url, "invitations", signer=stack.keys.signer("gateway")
            ),
            before_accept=administrator_disables,
        ),
    )
    invitation = await up.invitations.validate(second_token)
    with pytest.raises(DomainError) as info:
        await accept_for_user(up, second_token, invitation, user_id)
    assert info.value.code == "user_disabled", info.value.code
    assert await _aftermath(stack, plain, email) == (1, 0, False)
    await plain.identity.enable_user(user_id)
    await _heard_by_portals(stack, "invitation.accepted", body["invitation"]["id"])
    assert await _aftermath(stack, plain, email) == (1, 0, True)
