"""What this service asks identity and portals over their internal HTTP APIs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from libs.common.errors import NotFound
from libs.common.http import ServiceClient


@dataclass(frozen=True)
class PortalInfo:
    portal_id: uuid.UUID
    slug: str
    title: str
    status: str
    revision: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> PortalInfo:
        return cls(
            portal_id=uuid.UUID(str(body["id"])),
            slug=str(body["slug"]),
            title=str(body["title"]),
            status=str(body["status"]),
            revision=int(body["revision"]),
        )


class Directory:
    """Users (identity) and portals (portals). An unreachable service raises Unavailable."""

    def __init__(self, session: aiohttp.ClientSession, identity_url: str, portals_url: str):
        self.identity = ServiceClient(session, identity_url, "identity")
        self.portals = ServiceClient(session, portals_url, "portals")

    async def find_user_id(self, email: str) -> uuid.UUID | None:
        try:
            user = await self.identity.call("GET", "/users/lookup", params={"email": email})
        except NotFound:
            return None
        return uuid.UUID(str(user["id"]))

    async def user_portal_ids(self, user_id: uuid.UUID) -> set[uuid.UUID]:
        body = await self.portals.call("GET", f"/users/{user_id}/portals")
        return {uuid.UUID(str(item["id"])) for item in body.get("items", [])}

    async def fetch_portal(self, portal_id: uuid.UUID) -> PortalInfo | None:
        try:
            body = await self.portals.call("GET", f"/portals/{portal_id}")
        except NotFound:
            return None
        return PortalInfo.from_json(body)

    async def fetch_portal_by_slug(self, slug: str) -> PortalInfo | None:
        try:
            body = await self.portals.call("GET", f"/portals/by-slug/{quote(slug, safe='')}")
        except NotFound:
            return None
        return PortalInfo.from_json(body)
