"""Typed calls to identity, portals and invitations (docs/internal-api.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libs.common.http import ServiceClient

from .cache import GatewayCache

Json = dict[str, Any]


def _page_params(limit: int | None, cursor: str | None, **extra: str | None) -> dict[str, str]:
    params = {k: v for k, v in extra.items() if v}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor:
        params["cursor"] = cursor
    return params


@dataclass(frozen=True)
class Identity:
    """Whose session a cookie is comes from this replica's cache; every call that ends
    sessions also empties them from it before the caller answers: no route can forget it."""

    client: ServiceClient
    cache: GatewayCache = field(default_factory=lambda: GatewayCache(0))

    async def login(self, email: str, password: str) -> Json:
        generation = self.cache.generation
        result: Json = await self.client.call(
            "POST", "/sessions", json={"email": email, "password": password}
        )
        self._keep(result, generation)
        return result

    async def current(self, token: str) -> Json:
        cached = self.cache.session(token)
        if cached is not None:
            return cached
        generation = self.cache.generation
        result: Json = await self.client.call(
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

    async def issue_session(self, user_id: str) -> Json:
        generation = self.cache.generation
        result: Json = await self.client.call("POST", "/sessions/issue", json={"user_id": user_id})
        self._keep(result, generation)
        return result

    def _keep(self, issued: Json, generation: int) -> None:
        """A session identity just issued is what it would answer for it next: the first
        page after logging in needn't ask."""
        if "token" in issued and "session" in issued:
            current = {"user": issued["user"], "session": issued["session"]}
            self.cache.put_session(issued["token"], current, generation)

    async def ensure_user(self, email: str, password: str, invitation_id: str) -> Json:
        result: Json = await self.client.call(
            "POST",
            "/users/ensure",
            json={"email": email, "password": password, "invitation_id": invitation_id},
        )
        return result

    async def set_password(self, user_id: str, password: str) -> None:
        try:
            await self.client.call(
                "POST", f"/users/{user_id}/password", json={"password": password}
            )
        finally:
            self.cache.forget_user(user_id)

    async def get_user(self, user_id: str) -> Json:
        result: Json = await self.client.call("GET", f"/users/{user_id}")
        return result

    async def list_users(
        self, q: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Json:
        result: Json = await self.client.call(
            "GET", "/users", params=_page_params(limit, cursor, q=q)
        )
        return result

    async def disable_user(self, user_id: str) -> Json:
        try:
            result: Json = await self.client.call("POST", f"/users/{user_id}/disable")
        finally:
            self.cache.forget_user(user_id)
        return result

    async def login_settings(self) -> Json:
        result: Json = await self.client.call("GET", "/settings/login")
        return result

    async def put_login_settings(self, login_redirect: bool) -> Json:
        result: Json = await self.client.call(
            "PUT", "/settings/login", json={"login_redirect": login_redirect}
        )
        return result

    async def request_reset(self, email: str) -> None:
        await self.client.call("POST", "/password-resets", json={"email": email})

    async def validate_reset(self, token: str) -> Json:
        result: Json = await self.client.call(
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

    async def create(self, body: Json) -> Json:
        result: Json = await self.client.call("POST", "/portals", json=body)
        return result

    async def find(
        self,
        status: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Json:
        result: Json = await self.client.call(
            "GET", "/portals", params=_page_params(limit, cursor, status=status, q=q)
        )
        return result

    async def get(self, portal_id: str) -> Json:
        result: Json = await self.client.call("GET", f"/portals/{portal_id}")
        return result

    async def by_slug(self, slug: str) -> Json:
        result: Json = await self.client.call("GET", f"/portals/by-slug/{slug}")
        return result

    async def patch(self, portal_id: str, body: Json) -> Json:
        try:
            result: Json = await self.client.call("PATCH", f"/portals/{portal_id}", json=body)
        finally:
            self.cache.forget_portal(portal_id)
        return result

    async def put_client(self, portal_id: str, user_id: str | None) -> Json:
        try:
            result: Json = await self.client.call(
                "PUT", f"/portals/{portal_id}/client", json={"user_id": user_id}
            )
        finally:
            self.cache.forget_portal(portal_id)
        return result

    async def put_sub_clients(self, portal_id: str, user_ids: list[str]) -> Json:
        try:
            result: Json = await self.client.call(
                "PUT", f"/portals/{portal_id}/sub-clients", json={"user_ids": user_ids}
            )
        finally:
            self.cache.forget_portal(portal_id)
        return result

    async def grant(self, portal_id: str, user_id: str, role: str | None, grant_key: str) -> Json:
        result: Json = await self.client.call(
            "POST",
            f"/portals/{portal_id}/access",
            json={"user_id": user_id, "role": role, "grant_key": grant_key},
        )
        return result

    async def of_user(self, user_id: str) -> list[Json]:
        result: Json = await self.client.call("GET", f"/users/{user_id}/portals")
        items: list[Json] = result["items"]
        return items

    async def of_user_by_slug(self, user_id: str, slug: str) -> Json:
        cached = self.cache.portal(user_id, slug)
        if cached is not None:
            return cached
        generation = self.cache.generation
        result: Json = await self.client.call("GET", f"/users/{user_id}/portals/{slug}")
        self.cache.put_portal(user_id, slug, result, generation)
        return result


@dataclass(frozen=True)
class Invitations:
    client: ServiceClient

    async def invite(self, body: Json) -> Json:
        result: Json = await self.client.call("POST", "/invitations", json=body)
        return result

    async def find(
        self,
        status: str | None = None,
        portal_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Json:
        result: Json = await self.client.call(
            "GET",
            "/invitations",
            params=_page_params(limit, cursor, status=status, portal_id=portal_id),
        )
        return result

    async def get(self, invitation_id: str) -> Json:
        result: Json = await self.client.call("GET", f"/invitations/{invitation_id}")
        return result

    async def resend(self, invitation_id: str) -> Json:
        result: Json = await self.client.call("POST", f"/invitations/{invitation_id}/resend")
        return result

    async def revoke(self, invitation_id: str) -> Json:
        result: Json = await self.client.call("POST", f"/invitations/{invitation_id}/revoke")
        return result

    async def validate(self, token: str) -> Json:
        result: Json = await self.client.call(
            "GET", "/invitations/validate", params={"token": token}
        )
        return result

    async def accept(self, token: str, user_id: str) -> Json:
        result: Json = await self.client.call(
            "POST", "/invitations/accept", json={"token": token, "user_id": user_id}
        )
        return result

    async def access_settings(self) -> Json:
        result: Json = await self.client.call("GET", "/settings/access")
        return result

    async def put_access_settings(self, days: int) -> Json:
        result: Json = await self.client.call(
            "PUT", "/settings/access", json={"invitation_expiry_days": days}
        )
        return result


@dataclass(frozen=True)
class Upstream:
    identity: Identity
    portals: Portals
    invitations: Invitations
