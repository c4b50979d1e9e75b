"""Small in-memory fakes of identity, portals and invitations that follow
docs/internal-api.md (fakes of our own contract), for the gateway's handler tests."""

from __future__ import annotations

import re
import secrets
import uuid
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
    calls: list[str] = field(default_factory=list)
    current_calls: int = 0  # GET /sessions/current, counted apart from the flow calls
    page_calls: int = 0  # GET /users/{uid}/portals/{slug}
    ensured: dict[str, str] = field(default_factory=dict)
    resets: dict[str, str] = field(default_factory=dict)

    # --- helpers for tests -------------------------------------------------------
    @staticmethod
    def session_id(token: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, token))

    def add_user(self, email: str, password: str, role: str = "client") -> Json:
        user = {
            "id": str(uuid.uuid4()),
            "email": email,
            "role": role,
            "disabled": False,
            "created_at": now(),
        }
        self.users[user["id"]] = user
        self.passwords[user["id"]] = password
        return user

    def session_for(self, user: Json) -> str:
        token = secrets.token_urlsafe(32)
        self.sessions[token] = user["id"]
        return token

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

    def add_invitation(self, email: str, portal: Json, status: str = "pending") -> str:
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
            "sub_client": None,
            "invited_by": "admin@example.com",
            "accepted_at": None,
            "revoked_at": None,
            "created_at": now(),
            "send_count": 1,
        }
        self.invitations[inv["id"]] = inv
        self.tokens[token] = inv["id"]
        return token

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
            if len(body["password"]) < 12:
                return err(422, "weak_password", "The password is too short.")
            existing = self.by_email(body["email"])
            if existing is not None:
                if self.ensured.get(body["invitation_id"]) == existing["id"]:
                    # As identity does: a retry finds the account, the password is untouched.
                    return web.json_response({"user": existing, "created": False})
                return err(409, "account_exists")
            user = self.add_user(body["email"], body["password"])
            self.ensured[body["invitation_id"]] = user["id"]
            return web.json_response({"user": user, "created": True}, status=201)

        @r.get("/users")
        async def users(request: web.Request) -> web.Response:
            q = request.query.get("q", "").lower()
            return page([u for u in self.users.values() if q in u["email"].lower()])

        @r.get("/users/{id}")
        async def user(request: web.Request) -> web.Response:
            found = self.users.get(request.match_info["id"])
            return web.json_response(found) if found else err(404, "user_not_found")

        @r.post("/users/{id}/password")
        async def password(request: web.Request) -> web.Response:
            self.calls.append("identity.password")
            self.passwords[request.match_info["id"]] = (await request.json())["password"]
            return web.Response(status=204)

        @r.post("/users/{id}/disable")
        async def disable(request: web.Request) -> web.Response:
            found = self.users[request.match_info["id"]]
            found["disabled"] = True
            return web.json_response(found)

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
            if user_id == "expired":
                return err(410, "reset_expired")
            if user_id is None:
                return err(404, "reset_invalid")
            return web.json_response({"email": self.users[user_id]["email"]})

        @r.post("/password-resets/confirm")
        async def confirm_reset(request: web.Request) -> web.Response:
            body = await request.json()
            user_id = self.resets.pop(body["token"], None)
            if user_id is None:
                return err(404, "reset_invalid")
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
            portal.update(await request.json())
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
            portal = self.portals[request.match_info["id"]]
            if body["grant_key"] not in self.grants:
                self.grants[body["grant_key"]] = body["user_id"]
                if portal["client_id"] is None and body["role"] != "sub_client":
                    portal["client_id"] = body["user_id"]
                elif body["user_id"] != portal["client_id"]:
                    portal["sub_client_ids"].append(body["user_id"])
            return web.json_response({"portal": portal, "role": "client"})

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
            }.get(inv["status"])
            if problem:
                return None, err(problem[0], problem[1])
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
                    "expires_at": inv["expires_at"],
                    "account_exists": self.by_email(inv["email"]) is not None
                    and inv["id"] not in self.ensured,
                }
            )

        @r.post("/invitations/accept")
        async def accept(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append("invitations.accept")
            inv, problem = check(body["token"])
            if inv is None:
                assert problem is not None
                return problem
            inv["status"] = "accepted"
            return web.json_response(inv)

        @r.post("/invitations")
        async def invite(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(f"invitations.invite:{body.get('invited_by')}")
            portal = self.portals.get(body["portal_id"])
            if portal is None:
                return err(404, "portal_not_found")
            if portal["status"] != "active":
                return err(409, "portal_not_active", "The portal is not active.")
            for inv in self.invitations.values():
                same = inv["email"] == body["email"] and inv["portal_id"] == portal["id"]
                if same and inv["status"] == "pending":
                    return web.json_response({"invitation": inv, "outcome": "resent"})
            token = self.add_invitation(body["email"], portal)
            inv = self.invitations[self.tokens[token]]
            return web.json_response({"invitation": inv, "outcome": "created"}, status=201)

        @r.get("/invitations")
        async def find(request: web.Request) -> web.Response:
            status = request.query.get("status")
            return page(
                [i for i in self.invitations.values() if not status or i["status"] == status]
            )

        @r.post("/invitations/{id}/resend")
        async def resend(request: web.Request) -> web.Response:
            inv = self.invitations[request.match_info["id"]]
            inv["send_count"] += 1
            return web.json_response(inv)

        @r.post("/invitations/{id}/revoke")
        async def revoke(request: web.Request) -> web.Response:
            inv = self.invitations[request.match_info["id"]]
            inv["status"] = "revoked"
            return web.json_response(inv)

        @r.get("/settings/access")
        async def get_access(request: web.Request) -> web.Response:
            return web.json_response({"invitation_expiry_days": self.expiry_days})

        @r.put("/settings/access")
        async def put_access(request: web.Request) -> web.Response:
            self.expiry_days = (await request.json())["invitation_expiry_days"]
            return web.json_response({"invitation_expiry_days": self.expiry_days})

        return self._app(r)

    @staticmethod
    def _app(routes: web.RouteTableDef) -> web.Application:
        app = web.Application()
        app.router.add_routes(routes)
        return app
