"""What an integration writes in a message's AMQP properties, with its own credentials:
values no client library writes but the broker passes on (a short string that is not
UTF-8, a timestamp past the year 9999, headers nested hundreds deep) are read leniently
and never cut a service off the broker (libs/common/amqp_decode.py)."""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
import pytest
from pamqp import encode

from tests.security.conftest import unique_email
from tests.security.flows import invitation_requested, new_portal
from tests.security.test_broker_trust import (
    eventually,
    eventually_logged,
    forged,
    log_lines,
    logged,
    routed_in,
)
from tests.support.stack import Browser, Stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# A value no client writes: the stand-in the test's encoders below replace on the wire.
MARK = "hostile-mark"


def nested_table(depth: int) -> bytes:
    """An AMQP field table ``{"a": {"a": … {}}}`` ``depth`` deep, written by hand (pamqp
    itself recurses to write it)."""
    inner = b""
    for _ in range(depth):
        inner = b"\x01aF" + struct.pack(">I", len(inner)) + inner
    return struct.pack(">I", len(inner)) + inner


WIRE: dict[str, tuple[str, bytes]] = {
    # message_id: two bytes that are no UTF-8.
    "message_id": ("shortstr", b"\x02\xff\xfe"),
    # timestamp: microseconds (a Node.js program's Date.now() * 1000), past year 9999.
    "timestamp": ("timestamp", struct.pack(">Q", int(datetime.now(UTC).timestamp() * 1e6))),
    # headers: 600 tables deep, past Python's recursion limit in pamqp's reader.
    "headers": ("table", nested_table(600)),
    # a header's name that is no UTF-8.
    "header_name": ("table", struct.pack(">I", 4) + b"\x02\xff\xfeV"),
}


@contextlib.contextmanager
def written(kind: str, raw: bytes) -> Iterator[None]:
    """pamqp writes ``raw`` in place of the AMQP ``kind`` value that is MARK."""
    original: Callable[[Any], bytes] = encode.METHODS[kind]

    def write(value: Any) -> bytes:
        marked = value == MARK or (isinstance(value, dict) and MARK in value)
        if kind == "timestamp":
            marked = isinstance(value, datetime) and value.year == 2001
        return raw if marked else original(value)

    encode.METHODS[kind] = write
    try:
        yield
    finally:
        encode.METHODS[kind] = original


def marked_properties(prop: str) -> dict[str, Any]:
    if prop == "message_id":
        return {"message_id": MARK}
    if prop == "timestamp":
        return {"timestamp": datetime(2001, 1, 1, tzinfo=UTC)}
    return {"headers": {MARK: 1}}


async def publish_marked(
    url: str, exchange_name: str, routing_key: str, event: dict[str, Any], prop: str, user: str
) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name, ensure=False)
        properties: dict[str, Any] = {"message_id": event["id"], **marked_properties(prop)}
        kind, raw = WIRE[prop]
        with written(kind, raw):
            await exchange.publish(
                aio_pika.Message(orjson.dumps(event), user_id=user, **properties),
                routing_key=routing_key,
                timeout=10,
            )
    finally:
        await connection.close()


async def invitation_with_key(stack: Stack, key: str) -> bool:
    rows = await db_fetch(
        stack, "SELECT 1 FROM invitations.invitations WHERE idempotency_key = $1", key
    )
    return bool(rows)


async def test_properties_no_client_writes_never_cut_the_invitations_service_off(
    stack: Stack, admin: Browser
) -> None:
    """Each of these closed the invitations service's broker connection (its consumers and
    its outbox relay) on every delivery, the message back at the head of the queue, until
    the delivery limit dropped it unread: now each request is read and invites."""
    portal = await new_portal(admin)
    start = len(log_lines(stack["invitations"]))
    keys = {}
    for prop in WIRE:
        key = f"hostile-{prop}-{uuid.uuid4().hex[:8]}"
        keys[prop] = key
        event = invitation_requested(
            {"portal_id": portal["id"], "email": unique_email(prop[:6]), "idempotency_key": key}
        )
        await publish_marked(
            stack.broker.integration_url,
            f"{stack.broker.bus_prefix}.events",
            "invitation.requested",
            event,
            prop,
            stack.broker.integration_user,
        )
    for prop, key in keys.items():

        async def invited(key: str = key) -> bool:
            return await invitation_with_key(stack, key)

        await eventually(invited, f"the request with a hostile {prop} applied")
    # The service's connection never dropped (aiormq says so when its reader fails).
    assert not logged(stack["invitations"], "exited abnormally", after=start)


async def test_properties_no_client_writes_never_cut_the_gateway_listener_off(
    stack: Stack,
) -> None:
    """An integration's own exchange bound to the events exchange carries any key into the
    gateway's listener (test_broker_trust): a message there whose properties didn't decode
    closed the gateway's connection, and the cache went off. Now it is read and refused
    for its sender."""
    gateway = stack["gateway"]
    start = len(log_lines(gateway))
    event = forged("identity.session.revoked", {"user_id": str(uuid.uuid4())})
    kind, raw = WIRE["timestamp"]
    with written(kind, raw):
        await routed_in(
            stack,
            orjson.dumps(event),
            "identity.session.revoked",
            message_id=event["id"],
            **marked_properties("timestamp"),
        )

    await eventually_logged(
        gateway,
        "event_sender_refused",
        event["id"],
        after=start,
        what="the gateway refused the forged announcement",
    )
    assert not logged(gateway, "gateway_cache_off", after=start)
