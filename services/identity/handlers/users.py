"""User use cases: create, ensure (the accept saga's step), read, password, disable and
enable, the role (the last active administrator stays one), and the administrator
bootstrap."""

from __future__ import annotations

import uuid

import orjson

from libs.common.cursor import decode_cursor, encode_cursor, page_of
from libs.common.db import Conn, connection, transaction, xact_lock
from libs.common.email import normalise_email
from libs.common.errors import Conflict, InvalidInput
from libs.common.events import (
    MailForget,
    UserDisabled,
    UserEnabled,
    UserErased,
    UserPreferencesChanged,
    UserRoleChanged,
    make_event,
)
from libs.common.i18n import check_locale, check_time_zone
from libs.common.logging import get_logger
from libs.common.outbox import append, forget_published
from libs.common.passwords import password_problem

from .. import activity_repository
from .. import repository as repo
from ..domain import (
    ERASED_LABEL,
    ROLES,
    Role,
    User,
    check_password,
    hash_token,
    raises,
)
from .base import SOURCE, Deps, announce_created, announce_revoked, no_user

log = get_logger(__name__)


async def create_user(deps: Deps, email: str, password: str, role: Role) -> User:
    address = normalise_email(email)
    check_password(password, address)
    password_hash = await deps.passwords.hash(password)
    async with transaction(deps.db) as conn:
        user = await repo.insert_user(
            conn, email=address, role=role, password_hash=password_hash, created_at=deps.clock()
        )
        if user is None:
            raise Conflict("An account with this email already exists.", code="email_taken")
        await announce_created(conn, user)
    log.info("user_created", user_id=str(user.id), role=role)
    return user


async def ensure_user(
    deps: Deps,
    email: str,
    password: str,
    invitation_id: uuid.UUID,
    role: Role = "client",
    locale: str | None = None,
) -> tuple[User, bool]:
    """Create the account for an invitation (a client's, or with the role a staff
    invitation names), or find the one this invitation created on an earlier try (its
    password is left alone: the accept saga sets it only for the caller that wins the
    acceptance; its role was set when it was made). Concurrent calls for one email create
    one user: the losers wait on the unique email index and then find the winner's row.
    Argon2 runs only when a user is really created. ``locale`` (the invitation's language)
    is set only on a new account: an existing one keeps its own."""
    address = normalise_email(email)
    check_password(password, address)
    locale = check_locale(locale)
    async with connection(deps.db) as conn:
        existing = await repo.find_user_by_email(conn, address)
    if existing is None:
        password_hash = await deps.passwords.hash(password)
        async with transaction(deps.db) as conn:
            user = await repo.insert_user(
                conn,
                email=address,
                role=role,
                password_hash=password_hash,
                created_at=deps.clock(),
                created_by_invitation=invitation_id,
                locale=locale,
            )
            if user is not None:
                await announce_created(conn, user)
                log.info("user_created", user_id=str(user.id), role=role)
                return user, True
            existing = await repo.find_user_by_email(conn, address)
    if existing is None or existing.created_by_invitation != invitation_id:
        raise Conflict(
            "An account with this email already exists. Log in to continue.",
            code="account_exists",
        )
    return existing, False


async def list_users(
    deps: Deps, q: str | None, cursor: str | None, limit: int
) -> tuple[list[User], str | None]:
    after = decode_cursor("users", cursor) if cursor else None
    async with connection(deps.db) as conn:
        users = await repo.list_users(conn, q=q, after=after, limit=limit + 1)
    users, more = page_of(users, limit)
    next_cursor = encode_cursor("users", users[-1].created_at, users[-1].id) if more else None
    return users, next_cursor


async def get_user(deps: Deps, user_id: uuid.UUID) -> User:
    async with connection(deps.db) as conn:
        user = await repo.get_user(conn, user_id)
    if user is None:
        raise no_user()
    return user


async def get_users(deps: Deps, user_ids: list[uuid.UUID]) -> list[User]:
    """The accounts among these ids (a screen's clients and sub-clients, an API call's
    user ids), in one query; an id that is no one's is simply absent."""
    if not user_ids:
        return []
    async with connection(deps.db) as conn:
        return await repo.get_users(conn, list(dict.fromkeys(user_ids)))


async def lookup_users(deps: Deps, emails: list[str]) -> list[User]:
    """The accounts among these addresses (a batch of invitations); unknown or malformed
    addresses are simply absent."""
    addresses = []
    for email in emails:
        try:
            addresses.append(normalise_email(email))
        except InvalidInput:
            continue
    if not addresses:
        return []
    async with connection(deps.db) as conn:
        return await repo.find_users_by_emails(conn, addresses)


async def lookup_user(deps: Deps, email: str) -> User:
    try:
        address = normalise_email(email)
    except InvalidInput:
        raise no_user() from None
    async with connection(deps.db) as conn:
        user = await repo.find_user_by_email(conn, address)
    if user is None:
        raise no_user()
    return user


async def change_password(
    deps: Deps, user_id: uuid.UUID, password: str, *, keep_token: str | None = None
) -> None:
    """Set a new password and end every other session of the account (all of them, or all
    but ``keep_token``'s) and its reset links: whoever knew the old password, or logged in
    on the way to this one (a racer on the same invitation link), is out at once."""
    user = await get_user(deps, user_id)
    check_password(password, user.email)
    password_hash = await deps.passwords.hash(password)
    async with transaction(deps.db) as conn:
        if not await repo.set_password_hash(conn, user_id, password_hash):
            raise no_user()
        keep = hash_token(keep_token) if keep_token else None
        ended = await repo.revoke_user_sessions(conn, user_id, deps.clock(), keep_token_hash=keep)
        # As a reset does: a link asked for under the old password can't replace this one.
        await repo.close_user_resets(conn, user_id, deps.clock())
        if ended:
            await announce_revoked(conn, user_id, "password_changed")
    log.info("password_changed", user_id=str(user_id), sessions_ended=ended)


async def set_preferences(
    deps: Deps, user_id: uuid.UUID, locale: str | None, time_zone: str | None
) -> User:
    """A person's own Language and Time Zone (None: not chosen), announced with
    identity.user.preferences_changed so every gateway replica forgets its cached copy of
    the user (the one that saved them also forgets it at once)."""
    locale = check_locale(locale)
    time_zone = check_time_zone(time_zone)
    async with transaction(deps.db) as conn:
        user = await repo.set_preferences(conn, user_id, locale, time_zone)
        if user is None:
            raise no_user()
        changed = UserPreferencesChanged(user_id=user_id, locale=locale, time_zone=time_zone)
        await append(conn, make_event("identity.user.preferences_changed", changed, source=SOURCE))
    log.info("user_preferences_changed", user_id=str(user_id), locale=locale, time_zone=time_zone)
    return user


async def _keep_an_administrator(conn: Conn, user_id: uuid.UUID, doing: str) -> None:
    """Refuse to disable or demote the last active administrator. The active
    administrators are locked first, so concurrent changes take turns and the second sees
    the first's result."""
    admins = await repo.lock_active_administrators(conn)
    if admins == [user_id]:
        raise Conflict(
            f"You can't {doing} the last active Administrator. Make another user an"
            " Administrator first.",
            code="last_administrator",
        )


async def disable_user(deps: Deps, user_id: uuid.UUID) -> User:
    async with transaction(deps.db) as conn:
        await _keep_an_administrator(conn, user_id, "disable")
        user = await repo.disable_user(conn, user_id)
        if user is None:
            existing = await repo.get_user(conn, user_id)
            if existing is None:
                raise no_user()
            return existing  # already disabled: announced the first time
        await repo.revoke_user_sessions(conn, user_id, deps.clock())
        # A reset link still out in an inbox is a way in too: enabling the account again
        # within the link's hour must not bring it back.
        await repo.close_user_resets(conn, user_id, deps.clock())
        await append(
            conn,
            make_event("identity.user.disabled", UserDisabled(user_id=user_id), source=SOURCE),
        )
        await announce_revoked(conn, user_id, "user_disabled")
    log.info("user_disabled", user_id=str(user_id))
    return user


async def enable_user(deps: Deps, user_id: uuid.UUID) -> User:
    """Let a disabled user log in again (their sessions and reset links stay ended; their
    portals were taken when they were disabled, and are given back by a new invitation)."""
    async with transaction(deps.db) as conn:
        user = await repo.enable_user(conn, user_id)
        if user is None:
            existing = await repo.get_user(conn, user_id)
            if existing is None:
                raise no_user()
            return existing  # not disabled: nothing to announce
        await append(
            conn, make_event("identity.user.enabled", UserEnabled(user_id=user_id), source=SOURCE)
        )
    log.info("user_enabled", user_id=str(user_id))
    return user


async def erase_user(deps: Deps, user_id: uuid.UUID) -> User:
    """The right to erasure: delete the account, its sessions and reset links, and put
    ERASED_LABEL where the Activity log names the person (the entries stay, for the audit).
    identity.user.erased tells the other services to remove or anonymise what they keep;
    identity.session.revoked empties the gateways' caches of the person's sessions. The
    last active administrator stays. Erasing an erased user is user_not_found: the first
    erasure was announced."""
    async with transaction(deps.db) as conn:
        await _keep_an_administrator(conn, user_id, "erase")
        user = await repo.delete_user(conn, user_id)
        if user is None:
            raise no_user()
        entries = await activity_repository.anonymise(conn, user_id, user.email, ERASED_LABEL)
        # identity.user.created and reset mail jobs, published within the hour.
        await forget_published(conn, [user.email])
        await append(
            conn, make_event("identity.user.erased", UserErased(user_id=user_id), source=SOURCE)
        )
        # The address goes to the mailer alone, sealed, on the private mail exchange.
        forget = MailForget(sealed=deps.sealer.seal_text(orjson.dumps([user.email]).decode()))
        await append(conn, make_event("mail.forget", forget, source=SOURCE))
        await announce_revoked(conn, user_id, "user_erased")
    log.info("user_erased", user_id=str(user_id), activity_anonymised=entries)
    return user


async def set_role(deps: Deps, user_id: uuid.UUID, role: Role) -> User:
    """Change a user's role. The last active administrator keeps theirs; the change takes
    effect on the user's next request (sessions read the role afresh, and the gateways
    forget what they cached on identity.user.role_changed)."""
    if role not in ROLES:
        raise InvalidInput("Choose a role: Administrator, Staff or Client.", code="invalid_role")
    async with transaction(deps.db) as conn:
        current = await repo.get_user(conn, user_id)
        if current is None:
            raise no_user()
        if current.role == "administrator" and role != "administrator":
            await _keep_an_administrator(conn, user_id, "demote")
        user = await repo.set_role(conn, user_id, role)
        if user is None:
            return current  # it already had this role
        changed = UserRoleChanged(user_id=user_id, role=role, previous_role=current.role)
        await append(conn, make_event("identity.user.role_changed", changed, source=SOURCE))
        # A new session at a change of privilege (OWASP): a Client's session, its cookie
        # perhaps copied or planted, never becomes a Staff or Administrator one. A lower
        # role needs none of this: every session reads the role afresh.
        ended = raises(current.role, role) and await repo.revoke_user_sessions(
            conn, user_id, deps.clock()
        )
        if ended:
            await announce_revoked(conn, user_id, "role_raised")
    log.info(
        "user_role_changed",
        user_id=str(user_id),
        role=role,
        previous=current.role,
        sessions_ended=ended or 0,
    )
    return user


async def bootstrap_admin(deps: Deps, email: str, password: str) -> User | None:
    """Create the administrator from ADMIN_EMAIL/ADMIN_PASSWORD if there is none yet.

    Several instances may start at once: an advisory lock makes them take turns."""
    try:
        address = normalise_email(email)
    except InvalidInput as exc:
        log.error("admin_bootstrap_refused", variable="ADMIN_EMAIL", problem=exc.message)
        return None
    problem = password_problem(password, address)
    if problem is not None:
        log.error("admin_bootstrap_refused", variable="ADMIN_PASSWORD", problem=problem)
        return None
    async with connection(deps.db) as conn:
        if await repo.administrator_exists(conn):
            return None
    password_hash = await deps.passwords.hash(password)
    async with transaction(deps.db) as conn:
        await xact_lock(conn, "identity:bootstrap")
        if await repo.administrator_exists(conn):
            return None
        user = await repo.insert_user(
            conn,
            email=address,
            role="administrator",
            password_hash=password_hash,
            created_at=deps.clock(),
        )
        if user is None:
            log.error(
                "admin_bootstrap_refused",
                variable="ADMIN_EMAIL",
                problem="a non-administrator account already uses this email",
            )
            return None
        await announce_created(conn, user)
    log.info("admin_bootstrapped", user_id=str(user.id))
    return user
