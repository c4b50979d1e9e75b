"""Publishing as the service that owns each event type, the way the real services do:
consumers act only on events their owner's broker user sent."""

from __future__ import annotations

from typing import Any

from libs.common import broker
from libs.common.bus import Bus, ExchangeKind
from libs.common.events import Envelope
from tests.support.env import TestEnv


class OwnersBus:
    """Looks like a Bus; each message goes out on the connection of its type's owner."""

    def __init__(self, env: TestEnv) -> None:
        self.env = env
        self._buses: dict[str, Bus] = {}

    async def connect(self) -> None:
        for service in broker.SERVICES:
            bus = Bus(self.env.amqp_url_as(service), self.env.bus_prefix, service)
            await bus.connect()
            self._buses[service] = bus
        # Commands come from outside: the example integration's user sends them.
        integration = Bus(self.env.integration_url, self.env.bus_prefix, "integration")
        await integration.connect()
        self._buses["integration"] = integration

    async def close(self) -> None:
        for bus in self._buses.values():
            await bus.close()

    def owner(self, event_type: str) -> Bus:
        owners = broker.owners(event_type)
        service = sorted(owners)[0] if owners else "integration"
        return self._buses[service]

    async def publish(
        self, kind: ExchangeKind, routing_key: str, body: bytes, **props: Any
    ) -> None:
        await self.owner(routing_key).publish(kind, routing_key, body, **props)

    async def publish_envelope(self, envelope: Envelope, kind: ExchangeKind = "events") -> None:
        await self.owner(envelope.type).publish_envelope(envelope, kind)
