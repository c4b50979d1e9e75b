"""`make run`'s SMTP sink when MailDev can't be installed: each email as a person reads it,
its sender, recipients, subject and plain-text part decoded, printed to stdout
(.run/mail.log), so that a link copied from there opens. The message as it travels is
quoted-printable: its links would read `token=3D…`, broken across lines.

    python scripts/mail_sink.py <host> <port>
"""

from __future__ import annotations

import signal
import sys
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def readable(raw: bytes) -> str:
    """One email as a person reads it: the headers that say who and what, then the text."""
    message = message_from_bytes(raw, _class=EmailMessage, policy=policy.default)
    body = message.get_body(("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else "(no plain-text part)"
    names = ("Date", "From", "To", "Subject")
    headers = [f"{name}: {message[name]}" for name in names if message[name] is not None]
    return "\n".join(["-" * 72, *headers, "", str(text).rstrip(), "", ""])


class Printer:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        print(readable(raw if isinstance(raw, bytes) else raw.encode()), end="", flush=True)
        return "250 OK"


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    # SMTPUTF8 as the mailer may use it (an address with non-ASCII characters).
    controller = Controller(Printer(), hostname=host, port=port, enable_SMTPUTF8=True)
    controller.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
