"""Small in-memory fakes of identity, portals and invitations that follow
docs/internal-api.md (fakes of our own contract), for the gateway's handler tests."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

Json = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).isoformat()


def err(status: int, code: str, message: str = "error") -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def page(items: list[Json]) -> web.Response:
    return web.json_response({"items": items, "next_cursor": None})


INVITATION_STATUSES = ("pending", "accepted", "expired", "revoked")
# Refused by this identity (as by a newer common-password list than the gateway ships),
# not by the gateway's own check of the policy: identity has the last word.
COMMON_PASSWORD = "horse-staple-refused"


@dataclass
class Backend:
    users: dict[str, Json] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    login_redirect: bool = False
    portals: dict[str, Json] = field(default_factory=dict)
    grants: dict[str, str] = field(default_factory=dict)
    invitations: dict[str, Json] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    expiry_days: int = 14
    reminder_days: int = 0
    new_link_requests: list[str] = field(default_factory=list)
    invite_bodies: list[Json] = field(default_factory=list)
    staff_invite_bodies: list[Json] = field(default_factory=list)
    group_bodies: list[Json] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # token -> invitation ids
    resend_refusal: tuple[int, str, str, dict[str, Any]] | None = None
    calls: list[str] = field(default_factory=list)
    current_calls: int = 0  # GET /sessions/current, counted apart from the flow calls
    page_calls: int = 0  # GET /users/{uid}/portals/{slug}
    ensured: dict[str, str] = field(default_factory=dict)
    resets: dict[str, str] = field(default_factory=dict)
    hashing_busy: bool = False  # identity's hash queue is full: logins answer 503
    api_keys: dict[str, Json] = field(default_factory=dict)  # live key -> identity's answer
    key_checks: int = 0  # POST /api-keys/verify
    before_patch: Callable[[Json], None] | None = None  # someone else saving a portal first
    before_grant: Callable[[Json], None] | None = None  # e.g. the account disabled meanwhile
    grant_bodies: list[Json] = field(default_factory=list)  # POST /portals/{id}/access

    # --- helpers for tests -------------------------------------------------------
    @staticmethod
    def session_id(token: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, token))

    def add_user(
        self,
        email: str,
        password: str,
        role: str = "client",
        locale: str | None = None,
        time_zone: str | None = None,
    ) -> Json:
        user = {
            "id": str(uuid.uuid4()),
            "email": email,
            "role": role,
            "disabled": False,
            "created_at": now(),
            "locale": locale,
            "time_zone": time_zone,
        }
        self.users[user["id"]] = user
        self.passwords[user["id"]] = password
        return user

    def session_for(self, user: Json) -> str:
        token = secrets.token_urlsafe(32)
        self.sessions[token] = user["id"]
        return token

    def add_api_key(self, name: str, scopes: list[str]) -> tuple[str, Json]:
        key = "cpk_" + secrets.token_urlsafe(32)
        answer = {
            "id": str(uuid.uuid4()),
            "name": name,
            "scopes": scopes,
            "prefix": key[:8],
            "created_by": None,
            "created_at": now(),
            "last_used_at": None,
        }
        self.api_keys[key] = answer
        return key, answer

    def add_portal(self, title: str, status: str = "active", **extra: Any) -> Json:
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        portal = {
            "id": str(uuid.uuid4()),
            "title": title,
            "slug": slug,
            "content": f"Welcome to **{title}**",
            "content_html": f"<p>Welcome to <strong>{title}</strong></p>",
            "status": status,
            "client_id": None,
            "sub_client_ids": [],
            "revision": 1,
            "created_at": now(),
            "updated_at": now(),
        }
        portal.update(extra)
        self.portals[portal["id"]] = portal
        return portal

    def add_invitation(
        self, email: str, portal: Json, status: str = "pending", locale: str | None = None
    ) -> str:
        token = secrets.token_urlsafe(32)
        inv = {
            "id": str(uuid.uuid4()),
            "email": email,
            "portal_id": portal["id"],
            "portal_title": portal["title"],
            "portal_slug": portal["slug"],
            "status": status,
            "sent_at": now(),
            "expires_at": (datetime.now(UTC) + timedelta(days=14)).isoformat(),
            "delivery": "sent",
            "delivery_error": None,
            "delivery_next_attempt_at": None,
            "sub_client": None,
            "invited_by": "admin@example.com",
            "accepted_at": None,
            "revoked_at": None,
            "created_at": now(),
            "send_count": 1,
            "expires_in_days": 14,
            "personal_message": None,
            "send_reason": "invited",
            "reminded_at": None,
            "locale": locale,
        }
        self.invitations[inv["id"]] = inv
        self.tokens[token] = inv["id"]
        return token

    def add_staff_invitation(self, email: str, role: str) -> str:
        """A staff invitation (Users → Invite Staff): a role and no portal."""
        token = self.add_invitation(email, {"id": None, "title": None, "slug": None})
        self.invitations[self.tokens[token]]["role"] = role
        return token

    def add_group(self, email: str, portals: list[Json]) -> str:
        """Several portals, one invitation: one link for an invitation per portal."""
        tokens = [self.add_invitation(email, p) for p in portals]
        ids = [self.tokens[t] for t in tokens]
        group_id = str(uuid.uuid4())
        for inv_id in ids:
            self.invitations[inv_id]["group_id"] = group_id
        self.groups[tokens[0]] = ids
        return tokens[0]

    def linked(self, token: str, *statuses: str) -> list[Json]:
        """The invitations a group's link is for (those in ``statuses``), as the
        invitations service lists them to the gateway."""
        return [
            {
                "invitation_id": inv["id"],
                "portal_id": inv["portal_id"],
                "portal_title": inv["portal_title"],
                "portal_slug": inv["portal_slug"],
                "sub_client": inv["sub_client"],
                "idempotency_key": None,
            }
            for inv in (self.invitations[i] for i in self.groups.get(token, []))
            if inv["status"] in statuses
        ]

    def by_email(self, email: str) -> Json | None:
        return next((u for u in self.users.values() if u["email"].lower() == email.lower()), None)

    def can_access(self, user_id: str, portal: Json) -> bool:
        return portal["client_id"] == user_id or user_id in portal["sub_client_ids"]

    # --- identity ----------------------------------------------------------------
    def identity_app(self) -> web.Application:
        r = web.RouteTableDef()

        @r.post("/sessions")
        async def login(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("identity.login")
            if self.hashing_busy:
                response = err(503, "busy", "Too many sign-ins at once.")
                response.headers["Retry-After"] = "3"
                return response
            user = self.by_email(body["email"])
            if user is None or user["disabled"] or self.passwords[user["id"]] != body["password"]:
                return err(401, "invalid_credentials")
            return web.json_response(self._session(user), status=201)

        @r.post("/sessions/issue")
        async def issue(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("identity.issue")
            return web.json_response(self._session(self.users[body["user_id"]]), status=201)

        @r.get("/sessions/current")
        async def current(request: web.Request) -> web.Response:
            self.current_calls += 1
            token = request.headers.get("X-Session-Token", "")
            user_id = self.sessions.get(token)
            if user_id is None or self.users[user_id]["disabled"]:
                return err(401, "no_session")
            session = self.session_json(token)
            return web.json_response({"user": self.users[user_id], "session": session})

        @r.delete("/sessions/current")
        async def logout(request: web.Request) -> web.Response:
            self.sessions.pop(request.headers.get("X-Session-Token", ""), None)
            return web.Response(status=204)

        @r.post("/users/ensure")
        async def ensure(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("identity.ensure")
            if len(body["password"]) < 12 or body["password"] == COMMON_PASSWORD:
                return err(422, "weak_password", "The password is too common.")
            existing = self.by_email(body["email"])
            if existing is not None:
                if self.ensured.get(body["invitation_id"]) == existing["id"]:
                    # As identity does: a retry finds the account, the password is untouched.
                    return web.json_response({"user": existing, "created": False})
                return err(409, "account_exists")
            user = self.add_user(
                body["email"], body["password"], body.get("role", "client"), body.get("locale")
            )
            self.ensured[body["invitation_id"]] = user["id"]
            return web.json_response({"user": user, "created": True}, status=201)

        @r.get("/users")
        async def users(request: web.Request) -> web.Response:
            q = request.query.get("q", "").lower()
            return page([u for u in self.users.values() if q in u["email"].lower()])

        @r.post("/users/by-id")
        async def users_by_id(request: web.Request) -> web.Response:
            ids = (await request.json())["ids"]
            return web.json_response({"items": [self.users[i] for i in ids if i in self.users]})

        @r.get("/users/{id}")
        async def user(request: web.Request) -> web.Response:
            found = self.users.get(request.match_info["id"])
            return web.json_response(found) if found else err(404, "user_not_found")

        @r.post("/users/{id}/password")
        async def password(request: web.Request) -> web.Response:
            self.calls.append("identity.password")
            self.passwords[request.match_info["id"]] = (await request.json())["password"]
            return web.Response(status=204)

        @r.put("/users/{id}/role")
        async def set_role(request: web.Request) -> web.Response:
            found = self.users[request.match_info["id"]]
            found["role"] = (await request.json())["role"]
            self.calls.append(f"identity.role:{found['role']}")
            return web.json_response(found)

        @r.put("/users/{id}/preferences")
        async def preferences(request: web.Request) -> web.Response:
            found = self.users.get(request.match_info["id"])
            if found is None:
                return err(404, "user_not_found")
            body = await request.json()
            self.calls.append("identity.preferences")
            found["locale"] = body.get("locale")
            found["time_zone"] = body.get("time_zone")
            return web.json_response(found)

        @r.post("/users/{id}/disable")
        async def disable(request: web.Request) -> web.Response:
            found = self.users[request.match_info["id"]]
            found["disabled"] = True
            return web.json_response(found)

        @r.post("/users/{id}/erase")
        async def erase(request: web.Request) -> web.Response:
            found = self.users.pop(request.match_info["id"], None)
            if found is None:
                return err(404, "user_not_found")
            self.calls.append("identity.erase")
            return web.json_response(found)

        @r.get("/api-keys")
        async def list_keys(request: web.Request) -> web.Response:
            return web.json_response({"items": list(self.api_keys.values())})

        @r.post("/api-keys/verify")
        async def verify_key(request: web.Request) -> web.Response:
            self.key_checks += 1
            found = self.api_keys.get((await request.json())["key"])
            return web.json_response(found) if found else err(401, "invalid_api_key")

        @r.delete("/api-keys/{id}")
        async def revoke_key(request: web.Request) -> web.Response:
            for key, answer in list(self.api_keys.items()):
                if answer["id"] == request.match_info["id"]:
                    del self.api_keys[key]
                    return web.Response(status=204)
            return err(404, "key_not_found")

        @r.get("/settings/login")
        async def get_login(request: web.Request) -> web.Response:
            return web.json_response({"login_redirect": self.login_redirect})

        @r.put("/settings/login")
        async def put_login(request: web.Request) -> web.Response:
            self.login_redirect = bool((await request.json())["login_redirect"])
            return web.json_response({"login_redirect": self.login_redirect})

        @r.post("/password-resets")
        async def reset(request: web.Request) -> web.Response:
            self.calls.append("identity.password_reset")
            return web.Response(status=202)

        @r.get("/password-resets/validate")
        async def validate_reset(request: web.Request) -> web.Response:
            user_id = self.resets.get(request.query.get("token", ""))
            if user_id in ("expired", "used"):
                # identity's reason: the same code for a link used and one out of time
                error = {"code": "reset_expired", "message": "gone", "reason": user_id}
                return web.json_response({"error": error}, status=410)
            if user_id is None:
                return err(404, "reset_invalid")
            return web.json_response({"email": self.users[user_id]["email"]})

        @r.post("/password-resets/confirm")
        async def confirm_reset(request: web.Request) -> web.Response:
            body = await request.json()
            user_id = self.resets.get(body["token"])
            if user_id is None:
                return err(404, "reset_invalid")
            if user_id in ("expired", "used"):
                error = {"code": "reset_expired", "message": "gone", "reason": user_id}
                return web.json_response({"error": error}, status=410)
            self.resets[body["token"]] = "used"
            self.passwords[user_id] = body["password"]
            return web.Response(status=204)

        return self._app(r)

    def _session(self, user: Json) -> Json:
        token = self.session_for(user)
        session = self.session_json(token)
        return {
            "token": token,
            "user": user,
            "expires_at": session["expires_at"],
            "session": session,
        }

    def session_json(self, token: str) -> Json:
        """A session as identity describes it: two hours left, idle or not."""
        later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        return {
            "id": self.session_id(token),
            "created_at": now(),
            "expires_at": later,
            "idle_expires_at": later,
        }

    # --- portals -----------------------------------------------------------------
    def portals_app(self) -> web.Application:
        r = web.RouteTableDef()

        @r.post("/portals")
        async def create(request: web.Request) -> web.Response:
            body = await request.json()
            portal = self.add_portal(body["title"], body.get("status", "pending"))
            portal["content"] = body.get("content", "")
            return web.json_response(portal, status=201)

        @r.get("/portals")
        async def find(request: web.Request) -> web.Response:
            status = request.query.get("status")
            return page([p for p in self.portals.values() if not status or p["status"] == status])

        @r.get("/portals/by-slug/{slug}")
        async def by_slug(request: web.Request) -> web.Response:
            for p in self.portals.values():
                if p["slug"] == request.match_info["slug"]:
                    return web.json_response(p)
            return err(404, "portal_not_found")

        @r.get("/portals/{id}")
        async def get(request: web.Request) -> web.Response:
            found = self.portals.get(request.match_info["id"])
            return web.json_response(found) if found else err(404, "portal_not_found")

        @r.patch("/portals/{id}")
        async def patch(request: web.Request) -> web.Response:
            portal = self.portals[request.match_info["id"]]
            if self.before_patch is not None:
                self.before_patch(portal)
            changes = await request.json()
            if changes.pop("revision", portal["revision"]) != portal["revision"]:
                return err(409, "portal_changed")
            portal.update(changes, revision=portal["revision"] + 1)
            return web.json_response(portal)

        @r.put("/portals/{id}/client")
        async def client(request: web.Request) -> web.Response:
            portal = self.portals[request.match_info["id"]]
            portal["client_id"] = (await request.json())["user_id"]
            return web.json_response(portal)

        @r.put("/portals/{id}/sub-clients")
        async def subs(request: web.Request) -> web.Response:
            portal = self.portals[request.match_info["id"]]
            portal["sub_client_ids"] = (await request.json())["user_ids"]
            return web.json_response(portal)

        @r.post("/portals/{id}/access")
        async def access(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("portals.grant")
            self.grant_bodies.append(body)
            if self.before_grant is not None:
                self.before_grant(body)
            user = self.users.get(body["user_id"])
            if user is not None and user["disabled"] and body["grant_key"] not in self.grants:
                # As portals does once it has heard the account's Disable.
                return err(422, "user_disabled")
            portal = self.portals[request.match_info["id"]]
            if body["grant_key"] not in self.grants:
                self.grants[body["grant_key"]] = body["user_id"]
                if portal["client_id"] is None and body["role"] != "sub_client":
                    portal["client_id"] = body["user_id"]
                elif body["user_id"] != portal["client_id"]:
                    portal["sub_client_ids"].append(body["user_id"])
            return web.json_response({"portal": portal, "role": "client"})

        @r.post("/users/portals")
        async def of_users(request: web.Request) -> web.Response:
            uids = (await request.json())["user_ids"]
            items = [
                {
                    "user_id": uid,
                    "portals": [p for p in self.portals.values() if self.can_access(uid, p)],
                }
                for uid in uids
            ]
            return web.json_response({"items": items})

        @r.get("/users/{uid}/portals")
        async def of_user(request: web.Request) -> web.Response:
            uid = request.match_info["uid"]
            items = [p for p in self.portals.values() if self.can_access(uid, p)]
            return web.json_response({"items": items})

        @r.get("/users/{uid}/portals/{slug}")
        async def of_user_slug(request: web.Request) -> web.Response:
            self.page_calls += 1
            uid = request.match_info["uid"]
            for p in self.portals.values():
                if p["slug"] == request.match_info["slug"] and self.can_access(uid, p):
                    if p["status"] != "active":
                        return web.json_response({**p, "content": None, "content_html": None})
                    return web.json_response(p)
            return err(404, "portal_not_found")

        return self._app(r)

    # --- invitations ---------------------------------------------------------------
    def invitations_app(self) -> web.Application:
        r = web.RouteTableDef()

        def check(token: str) -> tuple[Json | None, web.Response | None]:
            inv = self.invitations.get(self.tokens.get(token, ""))
            if inv is None:
                return None, err(404, "invitation_invalid", "not valid")
            problem = {
                "expired": (410, "invitation_expired"),
                "revoked": (410, "invitation_revoked"),
                "accepted": (409, "invitation_used"),
                "replaced": (410, "invitation_replaced"),
            }.get(inv["status"])
            if problem:
                response = err(problem[0], problem[1])
                if problem[1] == "invitation_expired":
                    response = web.json_response(
                        {
                            "error": {
                                "code": "invitation_expired",
                                "message": "expired",
                                "expired_at": inv["expires_at"],
                            }
                        },
                        status=410,
                    )
                return None, response
            return inv, None

        @r.get("/invitations/validate")
        async def validate(request: web.Request) -> web.Response:
            self.calls.append("invitations.validate")
            inv, problem = check(request.query.get("token", ""))
            if inv is None:
                assert problem is not None
                return problem
            return web.json_response(
                {
                    "invitation_id": inv["id"],
                    "email": inv["email"],
                    "portal_id": inv["portal_id"],
                    "portal_title": inv["portal_title"],
                    "portal_slug": inv["portal_slug"],
                    "role": inv.get("role"),
                    "locale": inv.get("locale"),
                    "expires_at": inv["expires_at"],
                    "account_exists": self.by_email(inv["email"]) is not None
                    and inv["id"] not in self.ensured,
                    **(
                        {
                            "group_id": inv["group_id"],
                            "invitations": self.linked(request.query["token"], "pending"),
                        }
                        if request.query["token"] in self.groups
                        else {}
                    ),
                }
            )

        @r.post("/invitations/reserve")
        async def reserve(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("invitations.reserve")
            inv, problem = check(body["token"])
            if inv is None:
                assert problem is not None
                return problem
            if inv.get("claim") is not None:
                return err(409, "invitation_used")
            claim = str(uuid.uuid4())
            for inv_id in self.groups.get(body["token"], [inv["id"]]):
                if self.invitations[inv_id]["status"] == "pending":
                    self.invitations[inv_id].update(status="accepting", claim=claim)
            return web.json_response({"claim": claim, "invitation": inv})

        @r.post("/invitations/accept")
        async def accept(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("invitations.accept")
            inv = self.invitations.get(self.tokens.get(body["token"], ""))
            if inv is None or inv.get("claim") != body["claim"]:
                return err(409, "invitation_used")
            held = [
                self.invitations[i]
                for i in self.groups.get(body["token"], [inv["id"]])
                if self.invitations[i].get("claim") == body["claim"]
            ]
            accepted_at = datetime.now(UTC).isoformat()
            for each in held:
                each.update(status="accepted", claim=None, accepted_at=accepted_at)
            if body["token"] in self.groups:
                return web.json_response(
                    {**inv, "invitations": self.linked(body["token"], "accepted")}
                )
            return web.json_response(inv)

        @r.post("/invitations/release")
        async def release(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("invitations.release")
            inv = self.invitations.get(self.tokens.get(body["token"], ""))
            if inv is not None and inv.get("claim") == body["claim"]:
                inv["claim"] = None
                if body["reopen"]:
                    inv["status"] = "pending"
            return web.Response(status=204)

        @r.post("/invitations")
        async def invite(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(f"invitations.invite:{body.get('invited_by')}")
            self.invite_bodies.append(body)
            portal = self.portals.get(body["portal_id"])
            if portal is None:
                return err(404, "portal_not_found")
            if portal["status"] != "active":
                return err(409, "portal_not_active", "The portal is not active.")
            members = {portal.get("client_id"), *portal.get("sub_client_ids", [])}
            if any(self.users[m]["email"] == body["email"] for m in members if m in self.users):
                return err(
                    409,
                    "already_has_access",
                    "This person already has access to the portal; no invitation is needed.",
                )
            for inv in self.invitations.values():
                same = inv["email"] == body["email"] and inv["portal_id"] == portal["id"]
                if same and inv["status"] == "pending":
                    return web.json_response({"invitation": inv, "outcome": "resent"})
            token = self.add_invitation(body["email"], portal, locale=body.get("locale"))
            inv = self.invitations[self.tokens[token]]
            inv["expires_in_days"] = body.get("expires_in_days") or self.expiry_days
            inv["personal_message"] = body.get("personal_message")
            return web.json_response({"invitation": inv, "outcome": "created"}, status=201)

        @r.post("/invitations/group")
        async def invite_group(request: web.Request) -> web.Response:
            body = await request.json()
            self.group_bodies.append(body)
            chosen = [self.portals.get(p) for p in body["portal_ids"]]
            for portal_id, portal in zip(body["portal_ids"], chosen, strict=True):
                if portal is None:
                    return web.json_response(
                        {
                            "error": {
                                "code": "portal_not_found",
                                "message": f"There is no portal {portal_id}.",
                                "portal_id": portal_id,
                            }
                        },
                        status=404,
                    )
                if portal["status"] != "active":
                    return err(
                        409,
                        "portal_not_active",
                        f"The portal '{portal['title']}' is {portal['status'].capitalize()}:"
                        " only Active portals take invitations.",
                    )
            token = self.add_group(body["email"], [p for p in chosen if p is not None])
            made = [self.invitations[i] for i in self.groups[token]]
            return web.json_response(
                {"group_id": made[0]["group_id"], "invitations": made}, status=201
            )

        def matching(request: web.Request) -> list[Json]:
            portal_id, email = request.query.get("portal_id"), request.query.get("email")
            return [
                i
                for i in self.invitations.values()
                if (not portal_id or i["portal_id"] == portal_id)
                and (not email or i["email"].lower() == email.lower())
            ]

        @r.get("/invitations")
        async def find(request: web.Request) -> web.Response:
            self.calls.append(f"invitations.find:{sorted(request.query.items())}")
            status = request.query.get("status")
            return page([i for i in matching(request) if not status or i["status"] == status])

        @r.get("/invitations/counts")
        async def counts(request: web.Request) -> web.Response:
            found = matching(request)
            counts = {s: sum(i["status"] == s for i in found) for s in INVITATION_STATUSES}
            return web.json_response({"all": len(found), **counts})

        @r.get("/invitations/{id}")
        async def get_one(request: web.Request) -> web.Response:
            inv = self.invitations.get(request.match_info["id"])
            if inv is None:
                return err(404, "invitation_not_found", "There is no such invitation.")
            return web.json_response(inv)

        @r.post("/invitations/{id}/resend")
        async def resend(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(f"invitations.resend:{body.get('reason')}")
            if self.resend_refusal is not None:
                status, code, message, details = self.resend_refusal
                response = web.json_response(
                    {"error": {"code": code, "message": message, **details}}, status=status
                )
                if status == 429:
                    response.headers["Retry-After"] = str(details["retry_after"])
                return response
            inv = self.invitations.get(request.match_info["id"])
            if inv is None:
                return err(404, "invitation_not_found", "There is no such invitation.")
            if inv["status"] == "accepted":
                return err(409, "invitation_accepted", "Already accepted.")
            if inv["status"] == "revoked":
                return err(409, "invitation_revoked", "Revoked.")
            inv["send_count"] += 1
            # A group's invitation: the group's link goes again for each that can take it.
            sent = now()
            for other in self.invitations.values():
                mate = other is inv or (
                    inv.get("group_id") and other.get("group_id") == inv["group_id"]
                )
                if mate and other["status"] in ("pending", "expired"):
                    other["sent_at"] = sent
            return web.json_response(inv)

        @r.post("/invitations/new-link")
        async def new_link(request: web.Request) -> web.Response:
            self.new_link_requests.append((await request.json())["token"])
            return web.json_response({"status": "requested"}, status=202)

        @r.post("/invitations/{id}/revoke")
        async def revoke(request: web.Request) -> web.Response:
            inv = self.invitations.get(request.match_info["id"])
            if inv is None:
                return err(404, "invitation_not_found", "There is no such invitation.")
            if inv["status"] == "accepted":
                return err(409, "invitation_accepted", "Already accepted.")
            inv["status"] = "revoked"
            return web.json_response(inv)

        # --- staff invitations (Users → Invite Staff), as the service answers them ---
        @r.post("/staff-invitations")
        async def invite_staff(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(f"invitations.invite_staff:{body['role']}:{body['invited_by']}")
            self.staff_invite_bodies.append(body)
            if body["role"] not in ("administrator", "staff"):
                return err(422, "invalid_role", "Choose a role: Administrator or Staff.")
            if body.get("locale") not in (None, "en", "de", "fr", "es"):
                return err(
                    422, "invalid_locale", "Language (locale) must be one of en, de, fr, es."
                )
            user = self.by_email(body["email"])
            if user is not None and user["role"] in ("administrator", "staff"):
                name = user["role"].capitalize()
                return err(
                    409,
                    "already_on_team",
                    f"{body['email']} already has a {name} account; no invitation is needed.",
                )
            for inv in self.invitations.values():
                if inv.get("role") and inv["email"] == body["email"] and inv["status"] == "pending":
                    inv["role"] = body["role"]
                    return web.json_response({"invitation": inv, "outcome": "resent"})
            token = self.add_staff_invitation(body["email"], body["role"])
            inv = self.invitations[self.tokens[token]]
            inv["invited_by"] = body["invited_by"]
            return web.json_response({"invitation": inv, "outcome": "created"}, status=201)

        @r.get("/staff-invitations")
        async def staff_list(request: web.Request) -> web.Response:
            items = [
                i
                for i in self.invitations.values()
                if i.get("role") and i["status"] in ("pending", "expired")
            ]
            return web.json_response({"items": items})

        @r.post("/staff-invitations/{id}/{action:resend|revoke}")
        async def staff_action(request: web.Request) -> web.Response:
            inv = self.invitations.get(request.match_info["id"])
            if inv is None or not inv.get("role"):
                return err(404, "invitation_not_found", "There is no such invitation.")
            self.calls.append(f"invitations.staff_{request.match_info['action']}")
            if request.match_info["action"] == "revoke":
                inv["status"] = "revoked"
            else:
                inv["send_count"] += 1
            return web.json_response(inv)

        def access() -> web.Response:
            return web.json_response(
                {
                    "invitation_expiry_days": self.expiry_days,
                    "invitation_reminder_days": self.reminder_days,
                }
            )

        @r.get("/settings/access")
        async def get_access(request: web.Request) -> web.Response:
            return access()

        @r.put("/settings/access")
        async def put_access(request: web.Request) -> web.Response:
            body = await request.json()
            self.expiry_days = body.get("invitation_expiry_days", self.expiry_days)
            self.reminder_days = body.get("invitation_reminder_days", self.reminder_days)
            return access()

        return self._app(r)

    @staticmethod
    def _app(routes: web.RouteTableDef) -> web.Application:
        app = web.Application()
        app.router.add_routes(routes)
        return app
