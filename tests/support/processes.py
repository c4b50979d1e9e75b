"""Start services as real processes (``python -m services.<name>``) and wait until ready."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from libs.common.service_auth import compose_variable

from .env import free_port

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = Path(os.environ.get("TEST_LOG_DIR", "/tmp/clientpress-test-logs"))

PORT_VARS = {
    "identity": "IDENTITY_PORT",
    "portals": "PORTALS_PORT",
    "invitations": "INVITATIONS_PORT",
    "mailer": "MAILER_PORT",
    "gateway": "GATEWAY_PORT",
}


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    # /healthz, /readyz and /metrics: never on the public port.
    management_port: int = field(default_factory=free_port)
    # One of several processes of the same service (tests/support/stack.py running_replicas).
    replica: int | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        suffix = "" if self.replica is None else f"-{self.replica}"
        self.log_path = LOG_DIR / f"{self.env.get('BUS_PREFIX', 'x')}-{self.name}{suffix}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def command(self) -> list[str]:
        """What starts the service's process."""
        return [sys.executable, "-m", f"services.{self.name}"]

    def start(self) -> None:
        env = own_key_only(self.env, self.name)
        env[PORT_VARS[self.name]] = str(self.port)
        env[f"{self.name.upper()}_MANAGEMENT_PORT"] = str(self.management_port)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    # A bound, not a measurement: on a 2-core machine shared by several test runs a
    # service's imports alone took 12 s, and five start at once.
    async def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited: {self.log_tail()}")
                try:
                    async with session.get(self.management_url + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout}s: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 25.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def own_key_only(env: dict[str, str], service: str) -> dict[str, str]:
    """The environment of one service's process: its own SERVICE_KEY, as compose hands it
    (TestEnv.service_env carries every service's key under compose's names)."""
    own = compose_variable(service)
    result = {k: v for k, v in env.items() if not k.endswith("_SERVICE_KEY") or k == own}
    if own in result:
        result["SERVICE_KEY"] = result.pop(own)
    return result


def run_migrations(env: dict[str, str], services: tuple[str, ...]) -> None:
    for name in services:
        subprocess.run(
            [sys.executable, "-m", f"services.{name}", "migrate"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
