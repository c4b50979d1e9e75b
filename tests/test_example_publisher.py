"""examples/publish_invitation.py when it can't publish: one line that says why, and an exit
status of its own (3), never a traceback whose status (1) reads as "rejected"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support import servers

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "publish_invitation.py"

pytestmark = pytest.mark.integration


def _publish(amqp_url: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--amqp-url",
            amqp_url,
            "--prefix",
            prefix,
            "--portal-slug",
            "acme-rebrand",
            "--email",
            "client@example.com",
            "--idempotency-key",
            "crm-deal-4711",
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_refused_login_is_said_in_one_line() -> None:
    # Copied from the docs with the wrong password (or another installation's user): a
    # 40-line aiormq traceback, exit status 1, which the docs say means "rejected".
    broker = urlsplit(servers.current().amqp_url)
    wrong = urlunsplit(broker._replace(netloc=f"crm-nobody:wrong@{broker.hostname}:{broker.port}"))
    done = _publish(wrong, "clientpress")
    assert done.returncode == 3, done.stderr[-500:]
    assert "Traceback" not in done.stderr
    assert "refused the login" in done.stderr and "crm-nobody" in done.stderr
    assert "wrong" not in done.stderr


def test_a_prefix_no_installation_uses_is_named() -> None:
    # `--prefix clientpress` copied from the docs while `make run` used another BUS_PREFIX.
    done = _publish(servers.current().amqp_url, "no-such-installation")
    assert done.returncode == 3, done.stderr[-500:]
    assert "Traceback" not in done.stderr
    assert "no-such-installation.events" in done.stderr and "BUS_PREFIX" in done.stderr
