"""An erased person (identity.user.erased): their open invitations are revoked and every
invitation to their address keeps its history without the address, name or message."""

from __future__ import annotations

import uuid
from datetime import datetime

from libs.common.db import transaction
from libs.common.events import StaffInvitationClosed
from libs.common.logging import get_logger
from libs.common.outbox import forget_published

from .. import repository as repo
from ..domain import ERASED_EMAIL
from .base import Deps, closed_event, emit
from .withdrawing import withdraw_mails

log = get_logger(__name__)


async def erase_person(deps: Deps, user_id: uuid.UUID, before: datetime) -> int:
    """Idempotent: once anonymised, no invitation names the user's address any more. The
    addresses are those of the invitations the account accepted; an address it never
    accepted an invitation from (an account made by ADMIN_EMAIL or created directly) is
    not known here (docs/reliability.md "Erasing a person"). Only what was made before
    ``before`` (the erasure) is touched: an erasure applied late must not reach a new
    person invited at the same address since."""
    async with transaction(deps.db) as conn:
        addresses = await repo.addresses_of_user(conn, user_id, ERASED_EMAIL)
        if not addresses:
            return 0
        ids = await repo.invitations_to(conn, addresses, before)
        revoked = await repo.revoke_open(conn, ids, deps.clock())
        # Their emails still waiting in the mailer are not sent (nor kept: mail.forget).
        await withdraw_mails(conn, revoked)
        erased = await repo.anonymise(conn, ids, ERASED_EMAIL)
        await repo.forget_sender(conn, addresses, before)
        # invitation.* events and mail jobs published within the hour.
        await forget_published(conn, addresses, before)
        # Announced without the address: a webhook's log or an integration keeps none.
        for row in revoked:
            if row["staff_role"]:
                staff = StaffInvitationClosed(
                    invitation_id=row["id"], email=ERASED_EMAIL, role=row["staff_role"]
                )
                await emit(conn, "invitation.staff.revoked", staff)
            else:
                closed = closed_event(row).model_copy(
                    update={"email": ERASED_EMAIL, "invited_by": None}
                )
                await emit(conn, "invitation.revoked", closed)
    log.info("person_erased", user_id=str(user_id), invitations=erased, revoked=len(revoked))
    return erased
