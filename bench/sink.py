"""The SMTP sink the mailer delivers to: Postfix's ``smtp-sink`` (C, never the bottleneck)
dumping each message to tmpfs, or an in-process aiosmtpd sink when it isn't installed."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from tests.support.env import free_port

SMTP_SINK = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
)
RCPT = re.compile(rb"^X-Rcpt-Args: *(?:TO:)?<([^>]*)>", re.MULTILINE | re.IGNORECASE)
SINK_HEADERS = ("X-Client-Addr", "X-Client-Proto", "X-Helo-Args", "X-Mail-Args", "X-Rcpt-Args")


class Sink(Protocol):
    port: int
    kind: str

    def find(self, address: str) -> EmailMessage | None: ...

    def stop(self) -> None: ...


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


class PostfixSink:
    """``smtp-sink -d``: one file per message in a tmpfs directory, indexed by recipient."""

    kind = "postfix-smtp-sink"

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.dir = Path(tempfile.mkdtemp(prefix="cp-bench-sink-", dir=base))
        args = [binary, "-d", f"{self.dir}/m%H%M%S."]
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="postfix")
            args += ["-u", "postfix"]
        args += [f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._index: dict[str, Path] = {}
        self._seen: set[str] = set()
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"smtp-sink exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start listening")

    def count(self) -> int:
        return sum(1 for _ in self.dir.iterdir())

    def find(self, address: str) -> EmailMessage | None:
        wanted = address.lower()
        if wanted not in self._index:
            for file in self.dir.iterdir():
                if file.name in self._seen:
                    continue
                # A file still being written may not show its recipient yet: look again later.
                match = RCPT.search(file.read_bytes()[:4096])
                if match:
                    self._seen.add(file.name)
                    self._index[match.group(1).decode().lower()] = file
        found = self._index.get(wanted)
        return self.read(found) if found else None

    @staticmethod
    def read(path: Path) -> EmailMessage:
        msg = _parse(path.read_bytes())
        for name in (*SINK_HEADERS, "Received"):
            del msg[name]
        return msg

    def any_message(self) -> EmailMessage | None:
        for path in self.dir.iterdir():
            return self.read(path)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class AiosmtpdSink:
    """Fallback: the tests' aiosmtpd sink (Python, in this process: slower, so the SMTP
    ceiling measured into it is lower too)."""

    kind = "aiosmtpd"

    def __init__(self) -> None:
        from tests.support.smtp import SmtpSink

        self._sink = SmtpSink()
        self._sink.start()
        self.port = self._sink.port

    def count(self) -> int:
        return len(self._sink.sink.messages)

    def find(self, address: str) -> EmailMessage | None:
        found = self._sink.sink.to(address)
        return found[-1] if found else None

    def any_message(self) -> EmailMessage | None:
        return self._sink.sink.messages[0] if self._sink.sink.messages else None

    def stop(self) -> None:
        self._sink.stop()


def start_sink() -> PostfixSink | AiosmtpdSink:
    if SMTP_SINK:
        return PostfixSink(SMTP_SINK)
    return AiosmtpdSink()
