"""The edge: a ``mail.requested`` job from the private mail exchange → RequestMail; a
public lifecycle event → its webhook deliveries."""

from __future__ import annotations

from libs.common.broker import CONSUMES
from libs.common.bus import Handler
from libs.common.db import Conn
from libs.common.events import Envelope, EventData, MailRequested

from .domain import RequestMail
from .handlers import request_mail
from .webhooks.domain import EVENT_TYPES
from .webhooks.handlers import queue_event

BINDINGS = CONSUMES["mailer"]


async def on_mail_requested(conn: Conn, envelope: Envelope, data: EventData) -> None:
    # Only records the job: SMTP happens in the senders, so a slow or dead mail server
    # never holds up the queue.
    assert isinstance(data, MailRequested)
    await request_mail(
        conn,
        RequestMail(
            mail_id=data.mail_id,
            template=data.template,
            to=data.to,
            ref_type=data.ref_type,
            ref_id=data.ref_id,
            context=data.context,
            correlation_id=envelope.correlation_id,
            locale=data.locale,
        ),
    )


async def on_lifecycle_event(conn: Conn, envelope: Envelope, data: EventData) -> None:
    # Only records the deliveries (with the inbox row): POSTs happen in the webhook
    # senders, so a slow receiver never holds up the queue.
    await queue_event(conn, envelope, data)


HANDLERS: dict[str, Handler] = {
    "mail.requested": on_mail_requested,
    **dict.fromkeys(EVENT_TYPES, on_lifecycle_event),
}
