"""Invite a client to a ClientPress portal from another system (a CRM, a billing tool).

It publishes one ``invitation.requested`` event on ``<prefix>.events`` (publisher
confirms, persistent) and waits on its own exclusive queue for the answer that carries
the same ``correlation_id``: ``invitation.created``, ``invitation.resent`` (the email
already had a pending invitation to that portal: it was resent) or ``invitation.rejected``.

    python examples/publish_invitation.py \\
        --amqp-url amqp://clientpress-crm:SECRET@127.0.0.1:5672/ \\
        --prefix clientpress --portal-slug acme-rebrand --email client@example.com \\
        --idempotency-key crm-deal-4711

Connect as your integration's own broker user (``make run`` prints one; docs/
inviting-from-other-systems.md): it may publish ``invitation.requested`` and read the
``invitation.*`` answers, nothing else.

Exit status: 0 created or resent, 1 rejected, 2 no answer in time, 3 not published (the
broker refused the login, has no such exchange or did not take the message; one line on
stderr says which). It needs only aio-pika; it imports nothing from ClientPress, so it can
be copied into another code base as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika import exceptions
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused

ANSWERS = ("invitation.created", "invitation.resent", "invitation.rejected")


def build_request(args: argparse.Namespace, correlation_id: str) -> dict[str, object]:
    """The v1 envelope of docs/design.md "Events"; ``data`` is the invitation.requested body."""
    data: dict[str, object] = {
        "email": args.email,
        "idempotency_key": args.idempotency_key,
    }
    if args.portal_slug:
        data["portal_slug"] = args.portal_slug
    if args.portal_id:
        data["portal_id"] = args.portal_id
    if args.sub_client:
        data["sub_client"] = True
    if args.invited_by:
        data["invited_by"] = args.invited_by
    if args.expires_in_days:
        data["expires_in_days"] = args.expires_in_days
    if args.personal_message:
        data["personal_message"] = args.personal_message
    if args.locale:
        data["locale"] = args.locale
    return {
        "id": str(uuid.uuid4()),
        "type": "invitation.requested",
        "version": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": args.source,
        "correlation_id": correlation_id,
        "data": data,
    }


async def request_invitation(args: argparse.Namespace) -> int:
    correlation_id = f"{args.source}-{uuid.uuid4()}"
    event = build_request(args, correlation_id)
    answered: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    async def on_message(message: AbstractIncomingMessage) -> None:
        async with message.process():
            if message.correlation_id != correlation_id or answered.done():
                return
            answered.set_result(json.loads(message.body))

    connection = await aio_pika.connect_robust(args.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{args.prefix}.events", ensure=True)
        # Listen before publishing, so the answer can't arrive before we are there.
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in ANSWERS:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(on_message)

        message = aio_pika.Message(
            json.dumps(event).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(event["id"]),
            correlation_id=correlation_id,
            type="invitation.requested",
            app_id=args.source,
            # RabbitMQ checks it is the user we logged in as: who sent it, proven.
            user_id=unquote(urlsplit(args.amqp_url).username or "guest"),
        )
        # Returns once the broker has confirmed it; raises if the broker refused it.
        await exchange.publish(message, routing_key="invitation.requested", timeout=10)
        print(f"published invitation.requested id={event['id']} correlation_id={correlation_id}")

        try:
            answer = await asyncio.wait_for(answered, args.timeout)
        except TimeoutError:
            print(f"no answer within {args.timeout:g}s (is the invitations service running?)")
            return 2
    data = answer.get("data")
    assert isinstance(data, dict)
    if answer["type"] in ("invitation.created", "invitation.resent"):
        print(
            f"{answer['type']} invitation_id={data['invitation_id']} email={data['email']}"
            f" expires_at={data['expires_at']}"
        )
        return 0
    print(f"invitation.rejected reason={data['reason']}: {data['message']}")
    return 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--prefix", default="clientpress", help="the installation's BUS_PREFIX")
    portal = parser.add_mutually_exclusive_group(required=True)
    portal.add_argument("--portal-slug")
    portal.add_argument("--portal-id")
    parser.add_argument("--email", required=True)
    parser.add_argument(
        "--idempotency-key",
        required=True,
        help="your own stable id for this request (a CRM deal id); retries reuse it",
    )
    parser.add_argument("--sub-client", action="store_true", help="invite as a Sub-Client")
    parser.add_argument("--invited-by", help="shown in the invitation email")
    parser.add_argument(
        "--expires-in-days", type=int, help="Link Expiry: 7, 14, 21 or 30 (default: the setting)"
    )
    parser.add_argument(
        "--personal-message", help="plain text, at most 1,000 characters, shown in the email"
    )
    parser.add_argument("--locale", help="the email's language: en, de, fr or es")
    parser.add_argument("--source", default="example-publisher")
    parser.add_argument("--timeout", type=float, default=30.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = urlsplit(args.amqp_url)
    broker = f"{url.hostname}:{url.port or 5672}"
    try:
        return asyncio.run(request_invitation(args))
    except (exceptions.AuthenticationError, exceptions.ProbableAuthenticationError):
        why = f"the broker at {broker} refused the login of {unquote(url.username or 'guest')!r}"
        print(f"{why}: check the user and password in --amqp-url", file=sys.stderr)
    except exceptions.ChannelNotFoundEntity:
        print(
            f"no exchange {args.prefix}.events at {broker}: --prefix must be the"
            " installation's BUS_PREFIX",
            file=sys.stderr,
        )
    except ChannelAccessRefused as refused:
        print(f"the broker at {broker} refused it: {refused}", file=sys.stderr)
    except exceptions.DeliveryError:
        print(
            "the broker did not take the request (a queue full?): nothing was queued;"
            " publish it again later with the same --idempotency-key",
            file=sys.stderr,
        )
    except (OSError, exceptions.AMQPConnectionError) as down:
        print(f"could not reach the broker at {broker}: {down}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
