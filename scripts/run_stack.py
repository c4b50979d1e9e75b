"""`make run`: check PostgreSQL and RabbitMQ, migrate, start a mail catcher and the five
services, print the URLs, and stop everything cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run"
MAILDEV_VERSION = "2.2.1"
SERVICES = {
    "identity": ("IDENTITY_PORT", 8101),
    "portals": ("PORTALS_PORT", 8102),
    "invitations": ("INVITATIONS_PORT", 8103),
    "mailer": ("MAILER_PORT", 8104),
    "gateway": ("GATEWAY_PORT", 8080),
}
MIGRATED = ("identity", "portals", "invitations", "mailer")


def say(message: str) -> None:
    print(f"clientpress: {message}", flush=True)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def check_dependencies(env: dict[str, str]) -> bool:
    ok = True
    db_url = env.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/clientpress")
    server_url = urlunsplit(urlsplit(db_url)._replace(path="/postgres"))
    try:
        conn = await asyncpg.connect(server_url, timeout=5)
        await conn.close()
    except Exception as exc:
        ok = False
        say(f"PostgreSQL is not reachable at {redact(db_url)} ({type(exc).__name__}: {exc}).")
        say(
            "  Start it, e.g.: pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start"
        )
        say("  or: docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16")
        say("  or set DATABASE_URL to a server you have.")
    amqp_url = env.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
        await connection.close()
    except Exception as exc:
        ok = False
        say(f"RabbitMQ is not reachable at {redact(amqp_url)} ({type(exc).__name__}).")
        say("  Start it, e.g.: rabbitmq-server -detached")
        say("  or: docker run -d -p 5672:5672 -p 15672:15672 rabbitmq:3.13-management")
        say("  or set AMQP_URL to a broker you have.")
    return ok


def start_mail_catcher(env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> str | None:
    """MailDev (npm) on SMTP_PORT with a web inbox; a plain aiosmtpd sink without npm."""
    host = env.get("SMTP_HOST", "127.0.0.1")
    if host not in {"127.0.0.1", "localhost"} or env.get("MAIL_CATCHER", "1") == "0":
        return None
    smtp_port = env.get("SMTP_PORT", "1025")
    web_port = env.get("MAIL_CATCHER_WEB_PORT", "1080")
    log = (RUN_DIR / "maildev.log").open("ab")
    maildev_bin = RUN_DIR / "maildev" / "node_modules" / ".bin" / "maildev"
    if not maildev_bin.exists() and shutil.which("npm"):
        say(f"installing MailDev {MAILDEV_VERSION} (npm) into .run/maildev ...")
        (RUN_DIR / "maildev").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
                str(RUN_DIR / "maildev"),
                f"maildev@{MAILDEV_VERSION}",
            ],
            check=False,
            stdout=log,
            stderr=log,
        )
    if maildev_bin.exists():
        procs.append(
            subprocess.Popen(
                [str(maildev_bin), "--smtp", smtp_port, "--web", web_port, "--ip", "127.0.0.1"],
                stdout=log,
                stderr=log,
            )
        )
        return f"http://localhost:{web_port}/"
    say("npm is not available: emails are printed to .run/mail.log instead of a web inbox.")
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{smtp_port}",
                "-c",
                "aiosmtpd.handlers.Debugging",
            ],
            stdout=(RUN_DIR / "mail.log").open("ab"),
            stderr=log,
        )
    )
    return None


def wait_ready(name: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    env = dict(os.environ)
    RUN_DIR.mkdir(exist_ok=True)
    if not asyncio.run(check_dependencies(env)):
        return 1
    for name in MIGRATED:
        result = subprocess.run(
            [sys.executable, "-m", f"services.{name}", "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            say(f"migrating {name} failed:\n{result.stdout}{result.stderr}")
            return 1
    say("migrations applied")
    procs: list[subprocess.Popen[bytes]] = []
    inbox = start_mail_catcher(env, procs)
    services: dict[str, subprocess.Popen[bytes]] = {}
    for name in SERVICES:
        log = (RUN_DIR / f"{name}.log").open("ab")
        services[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    procs.extend(services.values())

    def stop(*_: object) -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(25)
            except subprocess.TimeoutExpired:
                proc.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    # Ctrl-C stops everything even when a shell started us with SIGINT ignored (`&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for name, (var, default) in SERVICES.items():
            port = int(env.get(var, default))
            if not wait_ready(name, port, services[name]):
                say(f"{name} did not start; see .run/{name}.log:")
                print((RUN_DIR / f"{name}.log").read_text()[-3000:])
                stop()
                return 1
        public = env.get("PUBLIC_URL", "http://localhost:8080")
        say("ClientPress is running.")
        say(f"  Site (gateway):   {public}/login")
        if env.get("ADMIN_EMAIL"):
            say(f"  Administrator:    {env['ADMIN_EMAIL']} (password from ADMIN_PASSWORD)")
        if inbox:
            say(f"  Mail inbox:       {inbox}")
        say("  Logs:             .run/<service>.log   (Ctrl-C stops everything)")
        while all(p.poll() is None for p in services.values()):
            time.sleep(0.5)
        dead = [n for n, p in services.items() if p.poll() is not None]
        say(f"stopped: {', '.join(dead)} exited; see .run/*.log")
        stop()
        return 1
    except KeyboardInterrupt:
        say("stopping ...")
        stop()
        return 0


if __name__ == "__main__":
    sys.exit(main())
