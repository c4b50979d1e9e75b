"""The edge: a ``mail.requested`` job from the private mail exchange → RequestMail; a
public lifecycle event → its webhook deliveries. Each handler gets ``Deps`` on the inbox
transaction's connection (libs/common/bus.py ``in_inbox``): the job or the deliveries
commit with the inbox row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libs.common.broker import CONSUMES
from libs.common.events import Envelope, EventData, MailRequested

from .domain import RequestMail
from .handlers import Deps, request_mail
from .webhooks.domain import EVENT_TYPES
from .webhooks.handlers import queue_event

BINDINGS = CONSUMES["mailer"]


async def on_mail_requested(deps: Deps, envelope: Envelope, data: EventData) -> None:
    # Only records the job: SMTP happens in the senders, so a slow or dead mail server
    # never holds up the queue.
    assert isinstance(data, MailRequested)
    await request_mail(deps, RequestMail.of_job(data, envelope.correlation_id))


async def on_lifecycle_event(deps: Deps, envelope: Envelope, data: EventData) -> None:
    # Only records the deliveries (with the inbox row): POSTs happen in the webhook
    # senders, so a slow receiver never holds up the queue.
    await queue_event(deps, envelope, data)


HANDLERS: dict[str, Callable[[Deps, Envelope, EventData], Awaitable[None]]] = {
    "mail.requested": on_mail_requested,
    **dict.fromkeys(EVENT_TYPES, on_lifecycle_event),
}
