"""Emails no longer wanted: an invitation closed (Revoke, accept, expiry, erasure, its
sender's right gone) or given a new link (Resend, its reminder) while the email of its
link may still wait in the mailer (queued, or waiting for a retry) has that email
withdrawn (``mail.withdraw``, through the outbox with the change): sent later, it would
carry a link that no longer works, or one the agency took back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from libs.common.db import Conn
from libs.common.events import MailWithdraw

from .. import repository as repo
from .base import Row, emit, log

# The mailer may still hold an email in these states; after them it has gone or failed.
UNDELIVERED = ("queued", "retrying")


async def withdraw_mails(conn: Conn, rows: Sequence[Row]) -> list[uuid.UUID]:
    """``rows``: invitations as they were before this transaction's change (their latest
    email and what is known of it), called once the change is made. An email a group's
    invitation still pending waits for is kept (its link still works for that one). The
    ids withdrawn; their invitations show the email withdrawn."""
    candidates = sorted(
        {
            row["last_mail_id"]
            for row in rows
            if row["last_mail_id"] is not None and row["delivery"] in UNDELIVERED
        }
    )
    if not candidates:
        return []
    withdrawn = await repo.withdraw_mails(conn, candidates)
    if withdrawn:
        await emit(conn, "mail.withdraw", MailWithdraw(mail_ids=withdrawn))
        log.info("invitation_mails_withdrawn", mail_ids=[str(m) for m in withdrawn])
    return withdrawn
