"""The edge: ``mail.requested`` jobs from the private mail exchange → RequestMail, and an
erasure's ``mail.forget`` → forget_addresses, invitations' ``mail.withdraw`` →
withdraw_mails; a
public lifecycle event → its webhook deliveries. Each handler gets ``Deps`` on the inbox
transaction's connection (libs/common/bus.py ``in_inbox``): the job or the deliveries
commit with the inbox row."""

from __future__ import annotations

from collections.abc import Sequence

from libs.common.broker import CONSUMES
from libs.common.bus import ServiceHandler, Together
from libs.common.events import (
    Envelope,
    Event,
    EventData,
    MailForget,
    MailJobs,
    MailRequested,
    MailWithdraw,
)
from libs.common.logging import get_logger
from libs.common.sealing import Unsealable

from .domain import RequestMail
from .handlers import (
    Deps,
    forget_addresses,
    opened_addresses,
    request_mails,
    stale_job,
    withdraw_mails,
)
from .webhooks.domain import EVENT_TYPES
from .webhooks.handlers import queue_events

log = get_logger(__name__)

BINDINGS = CONSUMES["mailer"]


async def on_mail_requested(deps: Deps, envelope: Envelope, data: EventData) -> None:
    # Only records the jobs: SMTP happens in the senders, so a slow or dead mail server
    # never holds up the queue. Version 1 is one job, version 2 several.
    if stale_job(deps, envelope):
        return
    if isinstance(data, MailJobs):
        jobs = data.jobs
    else:
        assert isinstance(data, MailRequested)
        jobs = [data]
    await request_mails(deps, [RequestMail.of_job(job, envelope.correlation_id) for job in jobs])


async def on_mail_forget(deps: Deps, envelope: Envelope, data: EventData) -> None:
    assert isinstance(data, MailForget)
    try:
        addresses = opened_addresses(deps, data)
    except Unsealable as exc:
        # Never opens, however often it is tried: the operator erases by hand
        # (docs/reliability.md "Erasing a person").
        log.error("mail_forget_unsealable", problem=str(exc), event_id=str(envelope.id))
        return
    await forget_addresses(deps, addresses, envelope.occurred_at)


async def on_mail_withdraw(deps: Deps, envelope: Envelope, data: EventData) -> None:
    assert isinstance(data, MailWithdraw)
    await withdraw_mails(deps, data.mail_ids)


async def on_lifecycle_events(deps: Deps, events: Sequence[Event]) -> None:
    # Only records the deliveries (with the inbox rows): POSTs happen in the webhook
    # senders, so a slow receiver never holds up the queue.
    await queue_events(deps, events)


HANDLERS: dict[str, ServiceHandler[Deps]] = {
    "mail.requested": on_mail_requested,
    "mail.forget": on_mail_forget,
    "mail.withdraw": on_mail_withdraw,
    # The lifecycle events that arrive together are queued in one statement.
    **dict.fromkeys(EVENT_TYPES, Together(on_lifecycle_events)),
}
