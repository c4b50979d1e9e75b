"""A real SMTP server for tests: aiosmtpd collecting every message it accepts."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from aiosmtpd.controller import Controller

from .env import free_port


class Sink:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        # Each message's bytes as they arrived (DATA, dot-unstuffed), in the same order.
        self.raw: list[bytes] = []
        self.fail_with: str | None = None  # e.g. "451 try later" or "550 no such user"
        # While ``hold_data`` is an Event not yet set, DATA is answered only once it is set
        # (``holding`` says one waits). Read at each DATA: aiosmtpd binds the handler's
        # methods per connection, and the mailer keeps its connections open.
        self.hold_data: threading.Event | None = None
        self.holding = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        hold = self.hold_data
        if hold is not None:
            self.holding.set()
            while not hold.is_set():
                await asyncio.sleep(0.02)
        if self.fail_with:
            return self.fail_with
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.raw.append(envelope.content)
        self.messages.append(msg)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address.lower() in str(m["To"]).lower()]

    def raw_of(self, msg: EmailMessage) -> bytes:
        """The bytes ``msg`` was read from, as the SMTP server received them."""
        return self.raw[next(i for i, m in enumerate(self.messages) if m is msg)]

    async def wait_for(
        self, address: str, count: int = 1, timeout: float = 20.0
    ) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.to(address)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"expected {count} email(s) to {address}, got {len(self.to(address))}")


def _listening(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "listening"
    except OSError as exc:
        return f"not listening ({exc})"


class SmtpSink:
    def __init__(self) -> None:
        self.port = free_port()
        self.sink = Sink()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        return self.sink.messages

    def to(self, address: str) -> list[EmailMessage]:
        return self.sink.to(address)

    async def wait_for(
        self, address: str, count: int = 1, timeout: float = 20.0
    ) -> list[EmailMessage]:
        try:
            return await self.sink.wait_for(address, count, timeout)
        except AssertionError as exc:
            # Says whether the server itself went away (a CI run once saw every connection
            # to a sink refused) or the mail never came.
            state = await asyncio.to_thread(_listening, self.port)
            raise AssertionError(f"{exc}; the sink on port {self.port} is {state}") from None

    async def wait_for_each(self, addresses: Iterable[str], timeout: float) -> Counter[str]:
        """How many emails each address got, once every one has at least one (or at the
        timeout): the caller asserts none is missing and none came twice."""
        wanted = {address.lower() for address in addresses}
        deadline = time.monotonic() + timeout
        while True:
            counts = Counter(
                to for m in self.messages if (to := parseaddr(str(m["To"]))[1].lower()) in wanted
            )
            if len(counts) == len(wanted) or time.monotonic() > deadline:
                return counts
            await asyncio.sleep(1)


def html_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None, "email has no HTML part"
    return str(part.get_content())


def text_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None, "email has no plain-text part"
    return str(part.get_content())


def accept_link(msg: EmailMessage) -> str:
    match = re.search(r'href="([^"]*/invitations/accept\?token=[^"]+)"', html_part(msg))
    assert match, "no Accept Invitation link in the email"
    return match.group(1).replace("&amp;", "&")
