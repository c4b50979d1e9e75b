"""Sealed values the mailer keeps, moved to the first key of a key list being rotated.

``MAIL_JOB_KEY`` and ``WEBHOOK_SECRET_KEY`` are key lists: the first seals, any opens. A
key can only be dropped once nothing the mailer still needs is sealed under it, and the
mailer keeps some for long: a delivery waiting for its retry (up to
``MAILER_GIVE_UP_AFTER_SECONDS``) and every webhook endpoint's signing secret (for ever).
So while a list holds more than one key, the mailer seals those afresh under the first
(each value keeps its time), at start and every ``RESEAL_EVERY`` seconds after, and says
what it found under another key: ``clientpress_sealed_under_old_keys{kind}``, 0 once
nothing was written under an old key since the pass before (docs/deploying.md, "Rotating
MAIL_JOB_KEY and WEBHOOK_SECRET_KEY")."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Gauge

from libs.common.db import Db, connection, transaction
from libs.common.logging import get_logger
from libs.common.sealing import Sealer, Unsealable

from . import repository
from .webhooks import repository as webhooks

RESEAL_EVERY = 300.0
# Deliveries resealed per statement.
CHUNK = 1000
MAIL_JOBS = "mail_jobs"
WEBHOOK_SECRETS = "webhook_secrets"

SEALED_UNDER_OLD_KEYS = Gauge(
    "clientpress_sealed_under_old_keys",
    "Sealed values the last pass found under a key other than the first of their list"
    " (it sealed them afresh under the first); 0: nothing new under an old key",
    ["kind"],
)
for _kind in (MAIL_JOBS, WEBHOOK_SECRETS):
    SEALED_UNDER_OLD_KEYS.labels(_kind)  # exported at 0 from the start

log = get_logger(__name__)


@dataclass
class Pass:
    """What one pass found under an old key (and sealed afresh), and what no key opens."""

    resealed: int = 0
    unopenable: int = 0


async def reseal_stored(db: Db, jobs: Sealer, secrets: Sealer) -> dict[str, Pass]:
    """One pass over what the mailer keeps sealed, for each key list being rotated."""
    found = {MAIL_JOBS: Pass(), WEBHOOK_SECRETS: Pass()}
    if jobs.rotating:
        found[MAIL_JOBS] = await _reseal_mail_jobs(db, jobs)
    if secrets.rotating:
        found[WEBHOOK_SECRETS] = await _reseal_webhook_secrets(db, secrets)
    for kind, seen in found.items():
        SEALED_UNDER_OLD_KEYS.labels(kind).set(seen.resealed)
        if seen.resealed:
            log.info("sealed_values_resealed", kind=kind, count=seen.resealed)
        if seen.unopenable:
            # Sealed under a key no longer listed: a delivery fails when it comes due
            # (mail_job_unsealed_refused), an endpoint's deliveries fail until its
            # secret is rotated.
            log.error("sealed_values_unopenable", kind=kind, count=seen.unopenable)
    return found


def _fresh(sealer: Sealer, sealed: str, seen: Pass) -> str | None:
    try:
        return sealer.resealed(sealed)
    except Unsealable:
        seen.unopenable += 1
        return None


async def _reseal_mail_jobs(db: Db, sealer: Sealer) -> Pass:
    seen = Pass()
    async with connection(db) as conn:
        stored = await repository.sealed_contexts(conn)
    changes = []
    for mail_id, sealed in stored:
        resealed = _fresh(sealer, sealed, seen)
        if resealed is not None:
            changes.append((mail_id, sealed, resealed))
    for start in range(0, len(changes), CHUNK):
        async with transaction(db) as conn:
            seen.resealed += await repository.reseal_contexts(conn, changes[start : start + CHUNK])
    return seen


async def _reseal_webhook_secrets(db: Db, sealer: Sealer) -> Pass:
    seen = Pass()
    async with connection(db) as conn:
        stored = await webhooks.sealed_secrets(conn)
    for endpoint_id, secret, previous in stored:
        fresh = _fresh(sealer, secret, seen)
        fresh_previous = None if previous is None else _fresh(sealer, previous, seen)
        if fresh is None and fresh_previous is None:
            continue
        resealed = (fresh or secret, fresh_previous or previous)
        async with transaction(db) as conn:
            if await webhooks.reseal_secrets(conn, endpoint_id, (secret, previous), resealed):
                seen.resealed += 1
    return seen
