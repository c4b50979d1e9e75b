"""What this service asks identity and portals over their internal HTTP APIs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from libs.common.batching import GroupCommit
from libs.common.email import email_key
from libs.common.errors import NotFound
from libs.common.http import ServiceClient, by_deadline
from libs.common.service_auth import TokenSigner

# Addresses per identity look-up: identity's own limit (POST /users/lookup).
LOOKUP_BATCH = 500


@dataclass(frozen=True)
class PortalInfo:
    portal_id: uuid.UUID
    slug: str
    title: str
    status: str
    revision: int

    @classmethod
    def of_row(cls, row: Any) -> PortalInfo:
        """From a row of the replica (``portals``)."""
        return cls(row["portal_id"], row["slug"], row["title"], row["status"], row["revision"])

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

    def __init__(
        self,
        sessions: Mapping[str, aiohttp.ClientSession],
        identity_url: str,
        portals_url: str,
        *,
        signer: TokenSigner,
    ):
        """``sessions``: one per service (service_sessions), so that one that hangs
        never holds the connections to the other."""
        self.identity = ServiceClient(sessions["identity"], identity_url, "identity", signer=signer)
        self.portals = ServiceClient(sessions["portals"], portals_url, "portals", signer=signer)
        # The addresses asked about while a look-up is under way go in the next one.
        self._lookups = GroupCommit(self._user_ids, max_batch=LOOKUP_BATCH)

    async def find_user(self, email: str) -> dict[str, Any] | None:
        """The account of this address (id, email, role, disabled), if there is one."""
        try:
            user: dict[str, Any] = await self.identity.call(
                "GET", "/users/lookup", params={"email": email}
            )
        except NotFound:
            return None
        return user

    async def find_user_id(self, email: str) -> uuid.UUID | None:
        """The account of this address, if there is one. Concurrent invitations share one
        request to identity: one address alone is asked as before, several at once. The
        shared request runs on no one's deadline: this one waits for it only as long as its
        own caller allows (by_deadline)."""
        return await by_deadline("identity", lambda: self._lookups(email))

    async def _user_ids(self, emails: Sequence[str]) -> list[uuid.UUID | None]:
        if len(emails) == 1:
            user = await self.find_user(emails[0])
            return [uuid.UUID(str(user["id"])) if user is not None else None]
        found = await self.find_user_ids(list(dict.fromkeys(emails)))
        return [found.get(email_key(email)) for email in emails]

    async def user_portal_ids(self, user_id: uuid.UUID) -> set[uuid.UUID]:
        body = await self.portals.call("GET", f"/users/{user_id}/portals")
        return {uuid.UUID(str(item["id"])) for item in body.get("items", [])}

    async def find_user_ids(self, emails: list[str]) -> dict[str, uuid.UUID]:
        """Accounts for many addresses at once (a batch): ``email_key`` of the address -> id
        (the rows' key: Python's lower() differs on a final capital sigma)."""
        found: dict[str, uuid.UUID] = {}
        for start in range(0, len(emails), LOOKUP_BATCH):
            body = await self.identity.call(
                "POST", "/users/lookup", json={"emails": emails[start : start + LOOKUP_BATCH]}
            )
            for item in body.get("items", []):
                found[email_key(str(item["email"]))] = uuid.UUID(str(item["id"]))
        return found

    async def portal_member_ids(self, portal_id: uuid.UUID) -> set[uuid.UUID]:
        """The primary client and the sub-clients: who already has access."""
        body = await self.portals.call("GET", f"/portals/{portal_id}")
        members = {uuid.UUID(str(u)) for u in body.get("sub_client_ids", [])}
        if body.get("client_id"):
            members.add(uuid.UUID(str(body["client_id"])))
        return members

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
