"""`make run`: check PostgreSQL and RabbitMQ, migrate, start a mail catcher and the five
services, print the URLs, and stop everything cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
from aio_pika.exceptions import AuthenticationError, ProbableAuthenticationError

from libs.common import broker, database_roles
from libs.common.provision import ProvisionError, provision
from libs.common.sealing import new_key
from libs.common.service_auth import encode_private, generate, public_table_text, write_private

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run"
MAILDEV_VERSION = "2.2.1"
# Each service's management port (/healthz, /readyz, /metrics): its default, unless
# <NAME>_MANAGEMENT_PORT (or MANAGEMENT_PORT, for every service) says otherwise.
SERVICES = {
    "identity": 9101,
    "portals": 9102,
    "invitations": 9103,
    "mailer": 9104,
    "gateway": 9080,
}
MIGRATED = ("identity", "portals", "invitations", "mailer", "gateway")
# Each service's own port (the gateway's is the site), and the variable that moves it.
PORTS = {
    "identity": ("IDENTITY_PORT", 8101),
    "portals": ("PORTALS_PORT", 8102),
    "invitations": ("INVITATIONS_PORT", 8103),
    "mailer": ("MAILER_PORT", 8104),
    "gateway": ("GATEWAY_PORT", 8080),
}


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
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        # Up and answering: starting it is no advice.
        ok = False
        say(f"PostgreSQL refused the login at {redact(db_url)} ({exc}).")
        say("  Check the user and password in DATABASE_URL.")
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
    # aiormq logs the refused connection itself, after the advice below: said once, here.
    quiet = logging.getLogger("aiormq.connection")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
        await connection.close()
    except (AuthenticationError, ProbableAuthenticationError):
        ok = False
        say(f"RabbitMQ refused the login at {redact(amqp_url)}.")
        say("  Check the user and password in AMQP_URL (an administrator's: it creates the")
        say("  services' own users).")
    except Exception as exc:
        ok = False
        say(f"RabbitMQ is not reachable at {redact(amqp_url)} ({type(exc).__name__}).")
        say("  Start it, e.g.: rabbitmq-server -detached")
        say("  or: docker run -d -p 5672:5672 -p 15672:15672 rabbitmq:3.13-management")
        say("  or set AMQP_URL to a broker you have.")
    finally:
        quiet.setLevel(level)
    return ok


def start_mail_catcher(env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> str | None:
    """MailDev (npm) on SMTP_PORT with a web inbox; without it, a sink that prints each
    email's text to .run/mail.log (scripts/mail_sink.py)."""
    if not catches_mail(env):
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
    why = "MailDev could not be installed (.run/maildev.log)" if shutil.which("npm") else None
    say(
        f"{why or 'npm is not available'}: emails are printed to .run/mail.log"
        " (each one's text, links whole) instead of a web inbox."
    )
    procs.append(
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "mail_sink.py"), "127.0.0.1", smtp_port],
            stdout=(RUN_DIR / "mail.log").open("ab"),
            stderr=log,
        )
    )
    return None


INTEGRATION = "crm"
# Each service's own login to the broker and to the database.
OWN_LOGINS = ("BROKER", "DATABASE")


def local_secrets(env: dict[str, str]) -> dict[str, str]:
    """This checkout's broker passwords and mail-job key: made once, kept in .run/ (only
    its owner reads it), so a restart keeps the same users; variables set win."""
    path = RUN_DIR / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    names = [f"{s.upper()}_{kind}_PASSWORD" for s in broker.SERVICES for kind in OWN_LOGINS]
    for name in [*names, "CRM_BROKER_PASSWORD"]:
        stored.setdefault(name, broker.new_passwords(["x"])["x"])
    stored.setdefault("MAIL_JOB_KEY", new_key())
    stored.setdefault("WEBHOOK_SECRET_KEY", new_key())
    write_private(path, json.dumps(stored, indent=2))
    return {name: env.get(name) or value for name, value in stored.items()}


def provision_broker(env: dict[str, str], secrets: dict[str, str]) -> str | None:
    """Each service's own broker user and the example integration's, from AMQP_URL's
    administrator credentials. Returns the integration's AMQP URL, or None on failure."""
    amqp_url = env.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    prefix = env.get("BUS_PREFIX", "clientpress")
    passwords = {s: secrets[f"{s.upper()}_BROKER_PASSWORD"] for s in broker.SERVICES}
    integration = broker.broker_user(prefix, INTEGRATION)
    try:
        limits = broker.limits_from_env(env)
        asyncio.run(
            provision(
                amqp_url,
                prefix,
                passwords,
                {integration: secrets["CRM_BROKER_PASSWORD"]},
                limits,
            )
        )
    except (ProvisionError, ValueError) as exc:
        say(f"could not create the broker users: {exc}")
        return None
    return broker.with_credentials(amqp_url, integration, secrets["CRM_BROKER_PASSWORD"])


def provision_database(env: dict[str, str], secrets: dict[str, str]) -> bool:
    """Each service's own database role, owner of its schema alone, made with
    DATABASE_URL's login (the local administrator). False when that login may not: the
    services then share it, as before, and the run says so."""
    url = env.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/clientpress")
    passwords = {s: secrets[f"{s.upper()}_DATABASE_PASSWORD"] for s in broker.SERVICES}
    try:
        asyncio.run(database_roles.provision(url, passwords))
    except (OSError, asyncpg.PostgresError, database_roles.RoleError) as exc:
        say(f"could not create the database roles ({exc}): the services share DATABASE_URL's login")
        return False
    return True


def public_url(env: dict[str, str]) -> str:
    """PUBLIC_URL, or else the site this run serves: localhost on GATEWAY_PORT. The
    services' own default (http://localhost:8080) would send every emailed link, and the
    check of a form's Origin, to a port nothing listens on when GATEWAY_PORT moves."""
    return env.get("PUBLIC_URL") or f"http://localhost:{env.get('GATEWAY_PORT') or 8080}"


def catches_mail(env: dict[str, str]) -> bool:
    host = env.get("SMTP_HOST", "127.0.0.1")
    return host in {"127.0.0.1", "localhost"} and env.get("MAIL_CATCHER", "1") != "0"


def clientpress_at(port: int) -> bool:
    """Whether this machine's ``port`` answers as a ClientPress gateway (its Server)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as answer:
            return bool(answer.headers.get("Server") == "ClientPress")
    except urllib.error.HTTPError as answer:
        return bool(answer.headers.get("Server") == "ClientPress")
    except (OSError, ValueError):
        return False


def port_variables(env: dict[str, str]) -> list[tuple[str, str, str]]:
    """Every port this run listens on: (its value as set, or its default; what listens
    there; the variable that moves it)."""
    wanted: list[tuple[str, str, str]] = []
    for name, (variable, default) in PORTS.items():
        what = "the site" if name == "gateway" else f"the {name} service's internal API"
        wanted.append((env.get(variable) or str(default), what, variable))
        own = f"{name.upper()}_MANAGEMENT_PORT"
        # MANAGEMENT_PORT moves every service's: named as it was set.
        chosen = own if env.get(own) or not env.get("MANAGEMENT_PORT") else "MANAGEMENT_PORT"
        what = f"the {name} service's /metrics"
        wanted.append((env.get(chosen) or str(SERVICES[name]), what, chosen))
    if catches_mail(env):
        wanted.append((env.get("SMTP_PORT") or "1025", "the mail catcher's SMTP", "SMTP_PORT"))
        web = env.get("MAIL_CATCHER_WEB_PORT") or "1080"
        wanted.append((web, "the mail inbox", "MAIL_CATCHER_WEB_PORT"))
    return wanted


def bad_ports(env: dict[str, str]) -> list[str]:
    """One line per port variable that holds no port number, naming it: read before any
    port is probed, where int() or bind() would end the run in a traceback."""
    problems: list[str] = []
    for value, _, variable in port_variables(env):
        if not (value.isdecimal() and 1 <= int(value) <= 65535):
            line = f"{variable}: must be a port number, 1 to 65535, not {value!r}."
            if line not in problems:
                problems.append(line)
    return problems


def ports_in_use(env: dict[str, str]) -> list[str]:
    """Why this run can't listen where it means to: one line per port variable that is no
    port, or per port something else already holds, naming the variable that moves it.
    Checked before anything starts, so a taken port is not found as a traceback in a
    service's log after the migrations."""
    invalid = bad_ports(env)
    if invalid:
        return invalid
    wanted = [(int(value), what, variable) for value, what, variable in port_variables(env)]
    variable, default = PORTS["gateway"]
    site = int(env.get(variable) or default)
    if clientpress_at(site):
        return [
            f"ClientPress is already running at http://localhost:{site} (another make run?):"
            " use that one, stop it (Ctrl+C where it runs), or run a second one beside it"
            f" on other ports (make run GATEWAY_PORT=<port> and the others' *_PORT)."
        ]
    problems = []
    for port, what, variable in wanted:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                # Every address, as the gateway listens: a port held on any one is taken.
                probe.bind(("0.0.0.0", port))  # noqa: S104 - bound for a moment, never served
            except OSError:
                problems.append(
                    f"port {port} ({what}) is already in use on this machine: stop what"
                    f" listens there, or choose another with {variable}"
                    f" (make run {variable}=<port>)."
                )
    return problems


def service_env(env: dict[str, str], secrets: dict[str, str], name: str) -> dict[str, str]:
    """What one service gets: its own broker and database passwords (never another's), and
    the mail-job key only where mail jobs are sealed or opened."""
    own = dict(env)
    own["PUBLIC_URL"] = public_url(env)
    # Where the others call each service: its port, moved or not (an own URL stays).
    for service, (variable, default) in PORTS.items():
        if service != "gateway":
            url = f"{service.upper()}_URL"
            own[url] = env.get(url) or f"http://127.0.0.1:{env.get(variable) or default}"
    for service in broker.SERVICES:
        for kind in OWN_LOGINS:
            own.pop(f"{service.upper()}_{kind}_PASSWORD", None)
    for kind in OWN_LOGINS:
        variable = f"{name.upper()}_{kind}_PASSWORD"
        if variable in secrets:
            own[variable] = secrets[variable]
    if name in ("identity", "invitations", "mailer"):
        own["MAIL_JOB_KEY"] = secrets["MAIL_JOB_KEY"]
    else:
        own.pop("MAIL_JOB_KEY", None)
    # The webhook endpoints' signing secrets: the mailer's alone.
    if name == "mailer":
        own["WEBHOOK_SECRET_KEY"] = secrets["WEBHOOK_SECRET_KEY"]
    else:
        own.pop("WEBHOOK_SECRET_KEY", None)
    return own


def management_port(env: dict[str, str], name: str) -> int:
    chosen = env.get(f"{name.upper()}_MANAGEMENT_PORT") or env.get("MANAGEMENT_PORT")
    return int(chosen or SERVICES[name])


def administrator_line(env: dict[str, str], identity_log: str) -> str | None:
    """What to say about the administrator: identity's verdict in this run's log. It
    refuses a weak ADMIN_PASSWORD (or an ADMIN_EMAIL another account uses) and makes no
    administrator; saying "password from ADMIN_PASSWORD" then would send a person to a
    log in that can't work."""
    email = env.get("ADMIN_EMAIL")
    if not email:
        return None
    for line in identity_log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "admin_bootstrap_refused":
            return (
                f"  Administrator:    not created: {record.get('variable')}:"
                f" {record.get('problem')} (see .run/identity.log)"
            )
    return f"  Administrator:    {email} (password from ADMIN_PASSWORD)"


# A service that exits is started again, as compose and Kubernetes do, RESTARTS times in a
# row at most when it exits sooner than RESTART_WINDOW seconds after its start: the next
# such exit (the fourth in a row) stops the run.
RESTART_WINDOW = 30.0
RESTARTS = 3


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def watch(
    services: dict[str, Any],
    start: Callable[[str], Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Keep the services running: one that exits (a crash, `kill -9`) is started again,
    its log saying why. Returns the name of one that keeps exiting as it starts."""
    started = dict.fromkeys(services, clock())
    quick = dict.fromkeys(services, 0)
    while True:
        for name, proc in list(services.items()):
            code = proc.poll()
            if code is None:
                continue
            quick[name] = quick[name] + 1 if clock() - started[name] < RESTART_WINDOW else 1
            if quick[name] > RESTARTS:
                say(f"{name} exited ({exit_reason(code)}) {RESTARTS + 1} times as it started")
                return name
            say(f"{name} exited ({exit_reason(code)}); starting it again (.run/{name}.log)")
            services[name] = start(name)
            started[name] = clock()
        sleep(0.5)


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float = 25) -> None:
    """SIGTERM to each process (the last started first), then up to ``grace`` seconds
    each to finish its work. A second Ctrl-C meanwhile kills what is left at once."""
    try:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
    except KeyboardInterrupt:
        left = [proc for proc in procs if proc.poll() is None]
        for proc in left:
            proc.kill()
            proc.wait()
        say(f"killed {len(left)} process(es) that had not stopped yet")


def log_since(path: Path, start: int, limit: int = 3000) -> str:
    """The end of what this run wrote to a service's log (it is kept across runs): at most
    ``limit`` characters from ``start``, so an earlier run's lines don't bury the reason."""
    with path.open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")[-limit:]


def running_lines(
    env: dict[str, str], admin: str | None, inbox: str | None, integration_url: str
) -> list[str]:
    """What `make run` prints once every service is ready (the README shows it)."""
    gateway_ops = f"http://127.0.0.1:{management_port(env, 'gateway')}"
    return [
        "ClientPress is running.",
        f"  Site (gateway):   {public_url(env)}/login",
        *([admin] if admin else []),
        *([f"  Mail inbox:       {inbox}"] if inbox else []),
        f"  Operations:       {gateway_ops}/metrics, /readyz (each service on its own port)",
        f"  Integrations:     {redact(integration_url)}  (password in .run/secrets.json)",
        "                    may publish invitation.requested and read invitation.*;",
        "                    see docs/inviting-from-other-systems.md",
        "  Logs:             .run/<service>.log   (Ctrl-C stops everything)",
    ]


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
    taken = ports_in_use(env)
    for problem in taken:
        say(problem)
    if taken:
        return 1
    secrets = local_secrets(env)
    if provision_database(env, secrets):
        say("database roles ready (one per service, each owning its schema alone)")
    else:
        for service in broker.SERVICES:
            secrets.pop(f"{service.upper()}_DATABASE_PASSWORD")
    for name in MIGRATED:
        result = subprocess.run(
            [sys.executable, "-m", f"services.{name}", "migrate"],
            cwd=ROOT,
            env=service_env(env, secrets, name),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            say(f"migrating {name} failed:\n{result.stdout}{result.stderr}")
            return 1
    say("migrations applied")
    integration_url = provision_broker(env, secrets)
    if integration_url is None:
        return 1
    say("broker users ready (one per service, and the example integration)")
    procs: list[subprocess.Popen[bytes]] = []
    inbox = start_mail_catcher(env, procs)
    services: dict[str, subprocess.Popen[bytes]] = {}
    # Fresh service keys each run; each service gets only its own private key.
    keys = generate(SERVICES)
    table = public_table_text(keys)
    # Where this run's lines start in each log (they are kept across runs).
    log_start = {
        name: (RUN_DIR / f"{name}.log").stat().st_size if (RUN_DIR / f"{name}.log").exists() else 0
        for name in SERVICES
    }

    def start(name: str) -> subprocess.Popen[bytes]:
        log = (RUN_DIR / f"{name}.log").open("ab")
        own = {"SERVICE_KEY": encode_private(keys[name]), "SERVICE_PUBLIC_KEYS": table}
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env={**service_env(env, secrets, name), **own},
            stdout=log,
            stderr=log,
        )

    for name in SERVICES:
        services[name] = start(name)

    def stop(*_: object) -> None:
        stop_all([*procs, *services.values()])

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    # Ctrl-C stops everything even when a shell started us with SIGINT ignored (`&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for name in SERVICES:
            if not wait_ready(name, management_port(env, name), services[name]):
                say(f"{name} did not start; see .run/{name}.log:")
                print(log_since(RUN_DIR / f"{name}.log", log_start[name]), end="")
                stop()
                return 1
        with (RUN_DIR / "identity.log").open("rb") as identity_log:
            identity_log.seek(log_start["identity"])
            admin = administrator_line(env, identity_log.read().decode(errors="replace"))
        for line in running_lines(env, admin, inbox, integration_url):
            say(line)
        failing = watch(services, start)
        say(f"stopping: {failing} can't start; see .run/{failing}.log")
        stop()
        return 1
    except KeyboardInterrupt:
        say("stopping ... (Ctrl-C again to kill at once)")
        stop()
        return 0


if __name__ == "__main__":
    sys.exit(main())
