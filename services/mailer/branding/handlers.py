"""Use cases: read the branding, change its fields, set or remove the logo. Each takes
the mailer's ``Deps`` first (the first branding is ``deps.settings.first_branding``); every
change and its ``settings.branding.changed`` commit together (outbox)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, get_args

from libs.common.db import Conn, connection, transaction
from libs.common.errors import InvalidInput, NotFound
from libs.common.events import BrandingChanged, BrandingField, make_event
from libs.common.logging import get_logger
from libs.common.outbox import append

from ..handlers import Deps
from . import repository
from .domain import TEXT_CHECKS, Branding, BrandingRefused, prepare_logo, resolved

log = get_logger(__name__)

SOURCE = "mailer"
TEXT_FIELDS = tuple(TEXT_CHECKS)


def refused(exc: BrandingRefused) -> InvalidInput:
    return InvalidInput(exc.message, code=f"invalid_{exc.field}", details={"field": exc.field})


def checked(changes: Mapping[str, str | None]) -> dict[str, str]:
    """The fields given (None: left out), each cleaned and checked; the first refusal
    raises InvalidInput naming its field."""
    clean: dict[str, str] = {}
    for name in TEXT_FIELDS:
        value = changes.get(name)
        if value is None:
            continue
        try:
            clean[name] = TEXT_CHECKS[name](value)
        except BrandingRefused as exc:
            raise refused(exc) from None
    return clean


async def current(deps: Deps) -> Branding:
    first = deps.settings.first_branding
    async with connection(deps.db) as conn:
        return resolved(await repository.get(conn) or first, first)


async def update(deps: Deps, changes: Mapping[str, str | None]) -> Branding:
    first = deps.settings.first_branding
    clean = checked(changes)
    async with transaction(deps.db) as conn:
        before = resolved(await repository.lock(conn, first), first)
        after = before.with_changes(**clean)
        changed = [name for name in TEXT_FIELDS if getattr(after, name) != getattr(before, name)]
        if changed:
            await repository.save(conn, after)
            await _announce(conn, changed)
    if changed:
        log.info("branding_changed", changed=changed)
    return after


async def set_logo(deps: Deps, content: bytes) -> Branding:
    first = deps.settings.first_branding
    try:
        # Decoding and encoding a picture is CPU work: off the event loop.
        logo = await asyncio.to_thread(prepare_logo, content)
    except BrandingRefused as exc:
        raise refused(exc) from None
    async with transaction(deps.db) as conn:
        before = resolved(await repository.lock(conn, first), first)
        if before.logo_etag != logo.etag:
            await repository.save_logo(conn, logo)
            await _announce(conn, ["logo"])
    log.info("branding_logo_set", etag=logo.etag, width=logo.width, height=logo.height)
    return before.with_changes(
        logo_etag=logo.etag,
        logo_type=logo.content_type,
        logo_width=logo.width,
        logo_height=logo.height,
    )


async def remove_logo(deps: Deps) -> Branding:
    first = deps.settings.first_branding
    async with transaction(deps.db) as conn:
        before = resolved(await repository.lock(conn, first), first)
        if before.logo_etag:
            await repository.save_logo(conn, None)
            await _announce(conn, ["logo"])
    return before.with_changes(logo_etag="", logo_type="", logo_width=0, logo_height=0)


async def logo(deps: Deps) -> dict[str, Any]:
    async with connection(deps.db) as conn:
        found = await repository.get_logo(conn)
    if found is None:
        raise NotFound("No logo has been uploaded.", code="logo_not_found")
    return found


async def _announce(conn: Conn, changed: list[str]) -> None:
    fields = [name for name in changed if name in get_args(BrandingField)]
    event = make_event(
        "settings.branding.changed",
        BrandingChanged(changed=fields),
        source=SOURCE,
    )
    await append(conn, event)
