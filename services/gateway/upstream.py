"""Calls to identity, portals, invitations and the mailer's webhooks and branding
(docs/internal-api.md). Every answer is typed (answers.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from libs.common.errors import DomainError, NotFound
from libs.common.http import ServiceClient
from libs.common.logging import get_logger

from .answers import (
    AcceptedLink,
    AccessSettings,
    ActivityActor,
    ActivityActors,
    ActivityPage,
    ApiKeyAnswer,
    ApiKeyList,
    BatchAnswer,
    BrandingAnswer,
    CreatedApiKey,
    CurrentSession,
    DeliveryAnswer,
    DeliveryPage,
    EnsuredUser,
    GrantedAccess,
    InvitationAnswer,
    InvitationCounts,
    InvitationGroup,
    InvitationList,
    InvitationPage,
    InviteOutcome,
    IssuedSession,
    LoginSettings,
    LogoAnswer,
    PortalAnswer,
    PortalPage,
    ReservedLink,
    ResetLink,
    UserAnswer,
    UserList,
    UserPage,
    UserPortal,
    UserPortalList,
    UsersPortalsList,
    ValidatedLink,
    WebhookList,
    WebhookLogList,
    WebhookWithSecretAnswer,
)
from .cache import GatewayCache

log = get_logger(__name__)

BATCH_TIMEOUT = 120.0
# The Portal filter of Invitations and Activity lists this many (the newest).
FILTER_PORTALS = 200
# Identity's POST /users/by-id takes this many ids a request.
USERS_BY_ID = 500
BRANDING_TIMEOUT = 2.0
# While the mailer doesn't answer, pages show the last branding and ask again this often.
BRANDING_RETRY_SECONDS = 5.0


def _page_params(limit: int | None, cursor: str | None, **extra: str | None) -> dict[str, str]:
    params = {k: v for k, v in extra.items() if v}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor:
        params["cursor"] = cursor
    return params


@dataclass(frozen=True)
class Identity:
    """Whose session a cookie is, and which live key a bearer key is, come from this
    replica's cache; every call that ends sessions or revokes a key also empties them from
    it before the caller answers: no route can forget it."""

    client: ServiceClient
    cache: GatewayCache = field(default_factory=lambda: GatewayCache(0))

    async def login(self, email: str, password: str) -> IssuedSession:
        generation = self.cache.generation
        result: IssuedSession = await self.client.call(
            "POST", "/sessions", json={"email": email, "password": password}
        )
        self._keep(result, generation)
        return result

    async def current(self, token: str, *, fresh: bool = False) -> CurrentSession:
        """``fresh``: ask identity even when cached (and keep its answer): the page after
        a change, which another replica may have made, shows the change."""
        cached = None if fresh else self.cache.session(token)
        if cached is not None:
            return cached
        generation = self.cache.generation
        result: CurrentSession = await self.client.call(
            "GET", "/sessions/current", headers={"X-Session-Token": token}
        )
        self.cache.put_session(token, result, generation)
        return result

    async def logout(self, token: str) -> None:
        try:
            await self.client.call(
                "DELETE", "/sessions/current", headers={"X-Session-Token": token}
            )
        finally:
            self.cache.forget_token(token)

    async def issue_session(self, user_id: str) -> IssuedSession:
        generation = self.cache.generation
        result: IssuedSession = await self.client.call(
            "POST", "/sessions/issue", json={"user_id": user_id}
        )
        self._keep(result, generation)
        return result

    def _keep(self, issued: IssuedSession, generation: int) -> None:
        """A session identity just issued is what it would answer for it next: the first
        page after logging in needn't ask."""
        if "token" in issued and "session" in issued:
            current: CurrentSession = {"user": issued["user"], "session": issued["session"]}
            self.cache.put_session(issued["token"], current, generation)

    async def ensure_user(
        self,
        email: str,
        password: str,
        invitation_id: str,
        role: str | None = None,
        locale: str | None = None,
    ) -> EnsuredUser:
        """``role``: a staff invitation's (the account is made with it); else a client.
        ``locale``: the invitation's language, kept by an account made now (issue 17)."""
        body = {"email": email, "password": password, "invitation_id": invitation_id}
        if role:
            body["role"] = role
        if locale:
            body["locale"] = locale
        result: EnsuredUser = await self.client.call("POST", "/users/ensure", json=body)
        return result

    async def set_password(self, user_id: str, password: str) -> None:
        try:
            await self.client.call(
                "POST", f"/users/{user_id}/password", json={"password": password}
            )
        finally:
            self.cache.forget_user(user_id)

    async def set_preferences(
        self, user_id: str, locale: str | None, time_zone: str | None
    ) -> UserAnswer:
        """The account's Language and Time Zone (None: the browser's, the agency's). This
        replica forgets the user's cached sessions, so the next page is in the new language."""
        try:
            result: UserAnswer = await self.client.call(
                "PUT",
                f"/users/{user_id}/preferences",
                json={"locale": locale, "time_zone": time_zone},
            )
        finally:
            self.cache.forget_user(user_id)
        return result

    async def get_user(self, user_id: str) -> UserAnswer:
        result: UserAnswer = await self.client.call("GET", f"/users/{user_id}")
        return result

    async def get_users(self, user_ids: Iterable[str]) -> dict[str, UserAnswer]:
        """The users among ``user_ids`` by id, in one request a 500 (identity's limit)."""
        ids = list(dict.fromkeys(user_ids))
        answers: list[UserList] = await asyncio.gather(
            *(
                self.client.call("POST", "/users/by-id", json={"ids": ids[i : i + USERS_BY_ID]})
                for i in range(0, len(ids), USERS_BY_ID)
            )
        )
        return {user["id"]: user for answer in answers for user in answer["items"]}

    async def list_users(
        self, q: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> UserPage:
        result: UserPage = await self.client.call(
            "GET", "/users", params=_page_params(limit, cursor, q=q)
        )
        return result

    async def disable_user(self, user_id: str) -> UserAnswer:
        try:
            result: UserAnswer = await self.client.call("POST", f"/users/{user_id}/disable")
        finally:
            self.cache.forget_user(user_id)
        return result

    async def erase_user(self, user_id: str) -> UserAnswer:
        try:
            result: UserAnswer = await self.client.call("POST", f"/users/{user_id}/erase")
        finally:
            self.cache.forget_user(user_id)
        return result

    async def enable_user(self, user_id: str) -> UserAnswer:
        result: UserAnswer = await self.client.call("POST", f"/users/{user_id}/enable")
        return result

    async def set_role(self, user_id: str, role: str) -> UserAnswer:
        try:
            result: UserAnswer = await self.client.call(
                "PUT", f"/users/{user_id}/role", json={"role": role}
            )
        finally:
            self.cache.forget_user(user_id)  # a cached session carries the old role
        return result

    async def login_settings(self) -> LoginSettings:
        result: LoginSettings = await self.client.call("GET", "/settings/login")
        return result

    async def put_login_settings(self, login_redirect: bool) -> LoginSettings:
        result: LoginSettings = await self.client.call(
            "PUT", "/settings/login", json={"login_redirect": login_redirect}
        )
        return result

    async def create_api_key(
        self, name: str, scopes: list[str], created_by: str | None, request_id: str | None = None
    ) -> CreatedApiKey:
        body = {"name": name, "scopes": scopes, "created_by": created_by}
        if request_id is not None:
            body["request_id"] = request_id
        result: CreatedApiKey = await self.client.call("POST", "/api-keys", json=body)
        return result

    async def list_api_keys(self) -> list[ApiKeyAnswer]:
        result: ApiKeyList = await self.client.call("GET", "/api-keys")
        return result["items"]

    async def revoke_api_key(self, key_id: str) -> None:
        try:
            await self.client.call("DELETE", f"/api-keys/{key_id}")
        finally:
            self.cache.forget_api_key(key_id)

    async def verify_api_key(self, key: str) -> ApiKeyAnswer:
        """The live key behind a bearer key: from this replica's cache while it is told of
        revocations, else identity's answer (which records the key's use)."""
        cached = self.cache.api_key(key)
        if cached is not None:
            return cached
        generation = self.cache.generation
        result: ApiKeyAnswer = await self.client.call("POST", "/api-keys/verify", json={"key": key})
        self.cache.put_api_key(key, result, generation)
        return result

    async def activity(
        self,
        actor: str | None = None,
        action: str | None = None,
        portal_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ActivityPage:
        """The Activity log, newest first."""
        result: ActivityPage = await self.client.call(
            "GET",
            "/activity",
            params=_page_params(limit, cursor, actor=actor, action=action, portal_id=portal_id),
        )
        return result

    async def activity_actors(self) -> list[ActivityActor]:
        result: ActivityActors = await self.client.call("GET", "/activity/actors")
        return result["items"]

    async def request_reset(self, email: str) -> None:
        await self.client.call("POST", "/password-resets", json={"email": email})

    async def validate_reset(self, token: str) -> ResetLink:
        result: ResetLink = await self.client.call(
            "GET", "/password-resets/validate", params={"token": token}
        )
        return result

    async def confirm_reset(self, token: str, password: str) -> None:
        try:
            await self.client.call(
                "POST", "/password-resets/confirm", json={"token": token, "password": password}
            )
        finally:
            # Whose sessions ended isn't in the answer: forget everyone's (resets are rare).
            self.cache.clear()


@dataclass(frozen=True)
class Portals:
    """Pages a user was shown come from this replica's cache; every call that changes a
    portal or its access list forgets that portal's pages before the caller answers."""

    client: ServiceClient
    cache: GatewayCache = field(default_factory=lambda: GatewayCache(0))

    async def create(self, body: dict[str, Any]) -> PortalAnswer:
        result: PortalAnswer = await self.client.call("POST", "/portals", json=body)
        return result

    async def find(
        self,
        status: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> PortalPage:
        result: PortalPage = await self.client.call(
            "GET", "/portals", params=_page_params(limit, cursor, status=status, q=q)
        )
        return result

    async def choices(self, chosen: str | None) -> list[PortalAnswer]:
        """A Portal filter's options: the newest FILTER_PORTALS, and the chosen one (a link
        or a bookmark may name an older one) so that it shows as chosen."""
        if chosen is None:
            return (await self.find(limit=FILTER_PORTALS))["items"]
        page, portal = await asyncio.gather(
            self.find(limit=FILTER_PORTALS), self.get(chosen), return_exceptions=True
        )
        if isinstance(page, BaseException):
            raise page
        options = page["items"]
        if isinstance(portal, NotFound):
            return options
        if isinstance(portal, BaseException):
            raise portal
        return options if any(p["id"] == chosen for p in options) else [portal, *options]

    async def get(self, portal_id: str) -> PortalAnswer:
        result: PortalAnswer = await self.client.call("GET", f"/portals/{portal_id}")
        return result

    async def by_slug(self, slug: str) -> PortalAnswer:
        result: PortalAnswer = await self.client.call("GET", f"/portals/by-slug/{slug}")
        return result

    async def patch(self, portal_id: str, body: dict[str, Any]) -> PortalAnswer:
        try:
            result: PortalAnswer = await self.client.call(
                "PATCH", f"/portals/{portal_id}", json=body
            )
        finally:
            self.cache.forget_portal(portal_id)
        return result

    async def put_client(self, portal_id: str, user_id: str | None) -> PortalAnswer:
        try:
            result: PortalAnswer = await self.client.call(
                "PUT", f"/portals/{portal_id}/client", json={"user_id": user_id}
            )
        finally:
            self.cache.forget_portal(portal_id)
        return result

    async def put_sub_clients(self, portal_id: str, user_ids: list[str]) -> PortalAnswer:
        try:
            result: PortalAnswer = await self.client.call(
                "PUT", f"/portals/{portal_id}/sub-clients", json={"user_ids": user_ids}
            )
        finally:
            self.cache.forget_portal(portal_id)
        return result

    async def grant(
        self,
        portal_id: str,
        user_id: str,
        role: str | None,
        grant_key: str,
        idempotency_key: str | None = None,
        accepted_at: str | None = None,
    ) -> GrantedAccess:
        """``accepted_at``: when invitations recorded the acceptance behind this grant:
        portals refuses one made before the account's latest Enable (user_disabled)."""
        body = {"user_id": user_id, "role": role, "grant_key": grant_key}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if accepted_at:
            body["accepted_at"] = accepted_at
        result: GrantedAccess = await self.client.call(
            "POST", f"/portals/{portal_id}/access", json=body
        )
        return result

    async def of_user(self, user_id: str) -> list[UserPortal]:
        result: UserPortalList = await self.client.call("GET", f"/users/{user_id}/portals")
        return result["items"]

    async def of_users(self, user_ids: list[str]) -> dict[str, list[UserPortal]]:
        """Each user's portals (a page of users) in one request."""
        if not user_ids:
            return {}
        result: UsersPortalsList = await self.client.call(
            "POST", "/users/portals", json={"user_ids": user_ids}
        )
        return {item["user_id"]: item["portals"] for item in result["items"]}

    async def of_user_by_slug(self, user_id: str, slug: str) -> PortalAnswer:
        cached = self.cache.portal(user_id, slug)
        if cached is not None:
            return cached
        generation = self.cache.generation
        result: PortalAnswer = await self.client.call("GET", f"/users/{user_id}/portals/{slug}")
        self.cache.put_portal(user_id, slug, result, generation)
        return result


@dataclass(frozen=True)
class Invitations:
    client: ServiceClient

    async def invite(self, body: dict[str, Any]) -> InviteOutcome:
        result: InviteOutcome = await self.client.call("POST", "/invitations", json=body)
        return result

    async def invite_group(self, body: dict[str, Any]) -> InvitationGroup:
        """Several portals, one invitation."""
        result: InvitationGroup = await self.client.call("POST", "/invitations/group", json=body)
        return result

    async def invite_batch(self, body: dict[str, Any]) -> BatchAnswer:
        # Writing a piece of a batch takes longer than one call may usually take, more so
        # while the same process relays the previous piece's events.
        result: BatchAnswer = await self.client.call(
            "POST", "/invitations/batch", json=body, timeout=BATCH_TIMEOUT
        )
        return result

    async def find(
        self,
        status: str | None = None,
        portal_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        email: str | None = None,
    ) -> InvitationPage:
        result: InvitationPage = await self.client.call(
            "GET",
            "/invitations",
            params=_page_params(limit, cursor, status=status, portal_id=portal_id, email=email),
        )
        return result

    async def counts(
        self, portal_id: str | None = None, email: str | None = None
    ) -> InvitationCounts:
        """How many per status tab (all, pending, accepted, expired, revoked)."""
        result: InvitationCounts = await self.client.call(
            "GET",
            "/invitations/counts",
            params=_page_params(None, None, portal_id=portal_id, email=email),
        )
        return result

    async def get(self, invitation_id: str) -> InvitationAnswer:
        result: InvitationAnswer = await self.client.call("GET", f"/invitations/{invitation_id}")
        return result

    async def resend(
        self, invitation_id: str, reason: str = "staff", shown_sent_at: str | None = None
    ) -> InvitationAnswer:
        """``reason``: staff (the Invitations screen) or api (the JSON API);
        ``shown_sent_at``: the sent time the screen showed (sent since: nothing more goes)."""
        body: dict[str, str] = {"reason": reason}
        if shown_sent_at is not None:
            body["shown_sent_at"] = shown_sent_at
        result: InvitationAnswer = await self.client.call(
            "POST", f"/invitations/{invitation_id}/resend", json=body
        )
        return result

    async def revoke(self, invitation_id: str) -> InvitationAnswer:
        result: InvitationAnswer = await self.client.call(
            "POST", f"/invitations/{invitation_id}/revoke"
        )
        return result

    async def invite_staff(
        self,
        email: str,
        role: str,
        invited_by: str | None,
        locale: str | None = None,
        key: str | None = None,
        invited_by_id: str | None = None,
    ) -> InviteOutcome:
        """Users → Invite Staff: ``{"invitation", "outcome": created|resent}``. ``locale``:
        the language of the email and the accept page (None: the agency's); ``key``: the
        form's (send_key), so that posting it again sends nothing more; ``invited_by_id``:
        the sending Administrator's user id (None: the bootstrap key), whose losing the
        right to invite staff revokes the invitation."""
        body = {"email": email, "role": role, "invited_by": invited_by, "locale": locale}
        if key is not None:
            body["idempotency_key"] = key
        if invited_by_id is not None:
            body["invited_by_id"] = invited_by_id
        result: InviteOutcome = await self.client.call("POST", "/staff-invitations", json=body)
        return result

    async def staff_invitations(self) -> list[InvitationAnswer]:
        """Pending and expired staff invitations, newest first."""
        result: InvitationList = await self.client.call("GET", "/staff-invitations")
        return result["items"]

    async def resend_staff(
        self, invitation_id: str, shown_sent_at: str | None = None
    ) -> InvitationAnswer:
        """``shown_sent_at``: the sent time the Users screen showed (sent since: nothing
        more goes)."""
        body = {"shown_sent_at": shown_sent_at} if shown_sent_at is not None else None
        result: InvitationAnswer = await self.client.call(
            "POST", f"/staff-invitations/{invitation_id}/resend", json=body
        )
        return result

    async def revoke_staff(self, invitation_id: str) -> InvitationAnswer:
        result: InvitationAnswer = await self.client.call(
            "POST", f"/staff-invitations/{invitation_id}/revoke"
        )
        return result

    async def validate(self, token: str) -> ValidatedLink:
        result: ValidatedLink = await self.client.call(
            "GET", "/invitations/validate", params={"token": token}
        )
        return result

    async def reserve(self, token: str) -> str:
        """Spend the link for this request; the answer is the claim that finishes it."""
        result: ReservedLink = await self.client.call(
            "POST", "/invitations/reserve", json={"token": token}
        )
        return result["claim"]

    async def accept(self, token: str, claim: str, user_id: str) -> AcceptedLink:
        result: AcceptedLink = await self.client.call(
            "POST",
            "/invitations/accept",
            json={"token": token, "claim": claim, "user_id": user_id},
        )
        return result

    async def release(self, token: str, claim: str, *, reopen: bool) -> None:
        await self.client.call(
            "POST",
            "/invitations/release",
            json={"token": token, "claim": claim, "reopen": reopen},
        )

    async def request_new_link(self, token: str) -> None:
        """Email me a new link: always answered alike, before anything is looked up."""
        await self.client.call("POST", "/invitations/new-link", json={"token": token})

    async def access_settings(self) -> AccessSettings:
        result: AccessSettings = await self.client.call("GET", "/settings/access")
        return result

    async def put_access_settings(
        self, days: int | None = None, reminder_days: int | None = None
    ) -> AccessSettings:
        """Fields left as None are unchanged."""
        body: dict[str, int] = {}
        if days is not None:
            body["invitation_expiry_days"] = days
        if reminder_days is not None:
            body["invitation_reminder_days"] = reminder_days
        result: AccessSettings = await self.client.call("PUT", "/settings/access", json=body)
        return result


@dataclass(frozen=True)
class Webhooks:
    """The mailer's webhook endpoints and their delivery log."""

    client: ServiceClient

    async def add(self, url: str, events: list[str]) -> WebhookWithSecretAnswer:
        result: WebhookWithSecretAnswer = await self.client.call(
            "POST", "/webhooks", json={"url": url, "events": events}
        )
        return result

    async def find(self) -> WebhookList:
        result: WebhookList = await self.client.call("GET", "/webhooks")
        return result

    async def with_logs(self, rows: int) -> WebhookLogList:
        """Every endpoint with its ``rows`` newest deliveries, in one request."""
        result: WebhookLogList = await self.client.call(
            "GET", "/webhooks", params={"deliveries": str(rows)}
        )
        return result

    async def delete(self, endpoint_id: str) -> None:
        await self.client.call("DELETE", f"/webhooks/{endpoint_id}")

    async def rotate_secret(self, endpoint_id: str) -> WebhookWithSecretAnswer:
        result: WebhookWithSecretAnswer = await self.client.call(
            "POST", f"/webhooks/{endpoint_id}/rotate-secret"
        )
        return result

    async def deliveries(
        self, endpoint_id: str, limit: int | None = None, cursor: str | None = None
    ) -> DeliveryPage:
        result: DeliveryPage = await self.client.call(
            "GET", f"/webhooks/{endpoint_id}/deliveries", params=_page_params(limit, cursor)
        )
        return result

    async def redeliver(self, endpoint_id: str, delivery_id: str) -> DeliveryAnswer:
        result: DeliveryAnswer = await self.client.call(
            "POST", f"/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver"
        )
        return result


# What pages show when the mailer has never answered: the built-in look.
NO_BRANDING: BrandingAnswer = {
    "agency_name": "",
    "accent_colour": "",
    "reply_to": "",
    "footer_text": "",
    "logo_etag": None,
    "logo_type": None,
}


@dataclass
class _MailerAway:
    until: float = 0.0  # the clock's time before which pages don't ask again
    since: float = 0.0  # the wall time the mailer stopped answering (0: it answers)
    asking: asyncio.Future[BrandingAnswer] | None = None  # the question pages share


@dataclass(frozen=True)
class Branding:
    """The mailer's Settings → Branding. Every page shows it, so it comes from this
    replica's cache (forgotten on ``settings.branding.changed``, and at once for a change
    made here); the logo's bytes are kept by their etag, which names one picture for good."""

    client: ServiceClient
    cache: GatewayCache = field(default_factory=lambda: GatewayCache(0))
    clock: Callable[[], float] = time.monotonic
    # The last answer, for pages while the mailer is away; the logo last fetched.
    _last: dict[str, Any] = field(default_factory=dict)
    _away: _MailerAway = field(default_factory=lambda: _MailerAway())

    async def for_page(self) -> BrandingAnswer:
        """What a page shows: the current branding or, while the mailer doesn't answer, the
        last one this replica saw (the built-in one before any). Pages never take turns
        asking a mailer that is away: the pages that find no answer share one question,
        and after it failed they ask nothing for BRANDING_RETRY_SECONDS. So a mailer that
        hangs holds up the pages of one BRANDING_TIMEOUT in every few seconds, not all of
        them, and it is logged once when it goes and once when it is back."""
        cached = self.cache.branding()
        if cached is not None:
            return cached
        away = self._away
        if self.clock() < away.until:
            return self.last_known()
        if away.asking is None:
            away.asking = asyncio.ensure_future(self._ask())
        return await asyncio.shield(away.asking)

    async def _ask(self) -> BrandingAnswer:
        away = self._away
        try:
            result = await self._fetch()
        except DomainError as exc:
            away.until = self.clock() + BRANDING_RETRY_SECONDS
            if not away.since:
                away.since = time.time()
                log.warning(
                    "branding_unavailable",
                    error=type(exc).__name__,
                    retry_seconds=BRANDING_RETRY_SECONDS,
                )
            return self.last_known()
        finally:
            away.asking = None
        if away.since:
            log.info("branding_available", away_seconds=round(time.time() - away.since, 1))
            away.since = 0.0
        return result

    async def current(self) -> BrandingAnswer:
        cached = self.cache.branding()
        if cached is not None:
            return cached
        return await self._fetch()

    async def _fetch(self) -> BrandingAnswer:
        """Ask the mailer (the cache was just looked in), and keep its answer."""
        generation = self.cache.generation
        # Every page waits for this: a mailer that hangs must not hang them for long.
        result: BrandingAnswer = await self.client.call(
            "GET", "/branding", timeout=BRANDING_TIMEOUT
        )
        self.cache.put_branding(result, generation)
        self._last["branding"] = result
        return result

    def last_known(self) -> BrandingAnswer:
        known: BrandingAnswer = self._last.get("branding", NO_BRANDING)
        return known

    async def update(self, changes: dict[str, Any]) -> BrandingAnswer:
        try:
            result: BrandingAnswer = await self.client.call("PUT", "/branding", json=changes)
        finally:
            self.cache.forget_branding()
        return result

    async def set_logo(self, content_base64: str) -> BrandingAnswer:
        try:
            result: BrandingAnswer = await self.client.call(
                "PUT", "/branding/logo", json={"content": content_base64}
            )
        finally:
            self.cache.forget_branding()
        return result

    async def remove_logo(self) -> BrandingAnswer:
        try:
            result: BrandingAnswer = await self.client.call("DELETE", "/branding/logo")
        finally:
            self.cache.forget_branding()
        return result

    async def logo(self, etag: str) -> LogoAnswer:
        """The logo named ``etag``."""
        kept: LogoAnswer | None = self._last.get("logo")
        if kept is not None and kept["etag"] == etag:
            return kept
        result: LogoAnswer = await self.client.call("GET", "/branding/logo")
        self._last["logo"] = result
        return result


@dataclass(frozen=True)
class Upstream:
    identity: Identity
    portals: Portals
    invitations: Invitations
    # Optional only so that a caller that needs none of them (a test's saga) can leave it.
    webhooks: Webhooks | None = None
    branding: Branding | None = None

    def hooks(self) -> Webhooks:
        if self.webhooks is None:
            raise RuntimeError("this gateway was built without the mailer's webhooks client")
        return self.webhooks

    def brand(self) -> Branding:
        if self.branding is None:
            raise RuntimeError("this gateway was built without the mailer's branding client")
        return self.branding
