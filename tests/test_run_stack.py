"""scripts/run_stack.py (`make run`): what it prints is what happened."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_stack", ROOT / "scripts/run_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(*records: dict[str, str]) -> str:
    return "\n".join(["not json", *(json.dumps(r) for r in records)]) + "\n"


def test_the_administrator_line_names_the_administrator_identity_made() -> None:
    env = {"ADMIN_EMAIL": "admin@example.com", "ADMIN_PASSWORD": "change-this-admin-password"}
    log = _log({"event": "admin_bootstrapped", "user_id": "…"})
    line = _run_stack().administrator_line(env, log)
    assert line == "  Administrator:    admin@example.com (password from ADMIN_PASSWORD)"


def test_the_administrator_line_says_why_identity_refused_it() -> None:
    # `make run ADMIN_PASSWORD=secret` used to print the address as if it could log in,
    # while identity had refused the password and made no administrator.
    env = {"ADMIN_EMAIL": "admin@example.com", "ADMIN_PASSWORD": "secret"}
    problem = "The password must be at least 12 characters long."
    log = _log(
        {"event": "service_starting"},
        {"event": "admin_bootstrap_refused", "variable": "ADMIN_PASSWORD", "problem": problem},
    )
    line = _run_stack().administrator_line(env, log)
    assert line is not None
    assert "admin@example.com (password from ADMIN_PASSWORD)" not in line
    assert "ADMIN_PASSWORD" in line and problem in line and ".run/identity.log" in line


def test_no_administrator_line_without_admin_email() -> None:
    assert _run_stack().administrator_line({}, "") is None


SECRETS = {"MAIL_JOB_KEY": "k", "WEBHOOK_SECRET_KEY": "w"}


def test_gateway_port_moves_the_links_and_the_site_line_with_it() -> None:
    # `GATEWAY_PORT=8090 make run` served the site on 8090 but left PUBLIC_URL at
    # http://localhost:8080: the banner named 8080, every emailed link went there, and
    # logging in on 8090 was refused ("The form expired") for its Origin.
    run_stack = _run_stack()
    env = {"GATEWAY_PORT": "8090"}
    for name in run_stack.SERVICES:
        assert run_stack.service_env(env, SECRETS, name)["PUBLIC_URL"] == "http://localhost:8090"
    assert run_stack.public_url(env) == "http://localhost:8090"
    assert run_stack.public_url({}) == "http://localhost:8080"
    # A PUBLIC_URL of one's own (a proxy in front) is kept as it is.
    mine = {"GATEWAY_PORT": "8090", "PUBLIC_URL": "https://portal.agency.example"}
    assert run_stack.service_env(mine, SECRETS, "gateway")["PUBLIC_URL"] == mine["PUBLIC_URL"]


def test_a_service_port_moved_is_where_the_others_call_it() -> None:
    # The taken-port line offers IDENTITY_PORT; the gateway, portals and invitations
    # must then call identity there, not at its default 8101.
    run_stack = _run_stack()
    env = {"IDENTITY_PORT": "8111", "MAILER_PORT": "8114"}
    gateway = run_stack.service_env(env, SECRETS, "gateway")
    assert gateway["IDENTITY_URL"] == "http://127.0.0.1:8111"
    assert gateway["MAILER_URL"] == "http://127.0.0.1:8114"
    assert gateway["PORTALS_URL"] == "http://127.0.0.1:8102"
    assert run_stack.service_env(env, SECRETS, "portals")["IDENTITY_URL"] == gateway["IDENTITY_URL"]
    mine = {"IDENTITY_PORT": "8111", "IDENTITY_URL": "http://identity.internal:8101"}
    assert run_stack.service_env(mine, SECRETS, "gateway")["IDENTITY_URL"] == mine["IDENTITY_URL"]


def test_a_port_in_use_is_named_with_its_variable_before_anything_starts() -> None:
    # With 8080 taken, `make run` migrated, started four services and then printed
    # "gateway did not start" over 3,000 characters of old log lines, the cause (errno 98)
    # deep in a traceback.
    run_stack = _run_stack()
    # Every other port on one the system just handed out and let go (a stack running on
    # this machine holds the defaults); the gateway's is held.
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        free = str(spare.getsockname()[1])
    variables = [v for v, _ in run_stack.PORTS.values()]
    variables += [f"{name.upper()}_MANAGEMENT_PORT" for name in run_stack.SERVICES]
    env = dict.fromkeys(variables, free) | {"SMTP_PORT": free, "MAIL_CATCHER_WEB_PORT": free}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problems = run_stack.ports_in_use(env | {"GATEWAY_PORT": str(port)})
    assert len(problems) == 1
    assert f"port {port}" in problems[0] and "GATEWAY_PORT" in problems[0]
    assert "in use" in problems[0]


def test_a_second_make_run_says_the_stack_is_already_running() -> None:
    """A second `make run` beside a running one listed each of its dozen ports as taken,
    one line each, when one sentence says what happened: ClientPress answers there."""
    import http.server
    import threading

    class Site(http.server.BaseHTTPRequestHandler):
        def version_string(self) -> str:
            return "ClientPress"

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    run_stack = _run_stack()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        env = {"GATEWAY_PORT": str(port)}
        problems = run_stack.ports_in_use(env)
        assert len(problems) == 1, problems
        assert "ClientPress is already running" in problems[0]
        assert f"http://localhost:{port}" in problems[0] and "GATEWAY_PORT" in problems[0]
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_variable_that_is_no_port_is_named_not_a_traceback() -> None:
    """`make run GATEWAY_PORT=abc` (or 70000, or a typo in SMTP_PORT) ended in a Python
    traceback (ValueError, OverflowError) from the port check, naming no variable; the
    services themselves refuse such a value naming it, and so does `make run`, first."""
    run_stack = _run_stack()
    env = {
        "GATEWAY_PORT": "abc",
        "SMTP_PORT": "70000",
        "MAIL_CATCHER_WEB_PORT": "0",
        "MANAGEMENT_PORT": "9x",
    }
    problems = run_stack.ports_in_use(env)
    assert any("GATEWAY_PORT" in p and "'abc'" in p for p in problems), problems
    assert any("SMTP_PORT" in p and "'70000'" in p for p in problems), problems
    assert any("MAIL_CATCHER_WEB_PORT" in p and "'0'" in p for p in problems), problems
    # MANAGEMENT_PORT moves every service's management port: named once, as it was set.
    assert sum("MANAGEMENT_PORT" in p for p in problems) == 1, problems
    assert all("1 to 65535" in p for p in problems), problems


def test_a_service_that_did_not_start_shows_this_runs_log_alone(tmp_path: Path) -> None:
    """The logs are kept across runs: `identity did not start; see .run/identity.log:`
    was followed by its last 3,000 characters, an earlier run's requests and its
    `service_stopping` first, this run's one line (the reason) at the very end."""
    run_stack = _run_stack()
    log = tmp_path / "identity.log"
    earlier = "".join(
        json.dumps({"event": "http_request", "route": f"/users/{n}"}) + "\n" for n in range(60)
    )
    log.write_text(earlier + json.dumps({"event": "service_stopped"}) + "\n")
    start = log.stat().st_size
    reason = "clientpress: AMQP_URL: a value shipped with ClientPress\n"
    with log.open("a") as this_run:
        this_run.write(reason)
    shown = run_stack.log_since(log, start)
    assert shown == reason
    # A run that wrote a great deal shows its end.
    with log.open("a") as this_run:
        this_run.write("x" * 10_000 + "\nthe end\n")
    assert run_stack.log_since(log, start).endswith("the end\n")
    assert len(run_stack.log_since(log, start)) <= 3000


def test_without_maildev_the_mail_log_holds_links_that_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without npm, `make run` printed each email to .run/mail.log as it travels: quoted-
    printable, so the accept link read `token=3D…` and broke across lines at 76 characters
    with a `=` at each end, and a person who copied it got "This invitation link is not
    valid". The log now holds each email's plain text decoded, every link whole."""
    run_stack = _run_stack()
    monkeypatch.setattr(run_stack, "RUN_DIR", tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    procs: list = []
    assert run_stack.start_mail_catcher({"SMTP_PORT": str(port)}, procs) is None
    link = "http://localhost:8080/invitations/accept?token=" + "Ab_9-" * 12
    message = EmailMessage()
    message["From"] = "ClientPress <no-reply@localhost>"
    message["To"] = "jane@client.example"
    message["Subject"] = "You're invited to Acme Rebrand on localhost"
    message.set_content(f"Grüße. Accept Invitation:\n\n{link}\n", cte="quoted-printable")
    message.add_alternative(f'<a href="{link}">Accept Invitation</a>', subtype="html")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                    smtp.send_message(message)
                break
            except OSError:
                assert time.monotonic() < deadline, "the sink did not start"
                time.sleep(0.1)
        while time.monotonic() < deadline and link not in (tmp_path / "mail.log").read_text():
            time.sleep(0.1)
        log = (tmp_path / "mail.log").read_text()
        assert link in log.splitlines(), log
        assert "Grüße" in log and "To: jane@client.example" in log
        assert "You're invited to Acme Rebrand" in log
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_a_second_ctrl_c_while_stopping_kills_the_rest_without_a_traceback() -> None:
    """Ctrl-C twice (the first one's stopping takes up to 25 s a service) ended `make run`
    in two chained KeyboardInterrupt tracebacks from inside the wait, and left whatever
    had not stopped yet running. The second one now kills what is left, at once."""
    run_stack = _run_stack()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", stubborn]) for _ in range(2)]
    time.sleep(0.5)  # their handlers are in place
    second = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    second.start()
    try:
        run_stack.stop_all(procs)
        ended = [proc.poll() for proc in procs]
    finally:
        second.cancel()
        for proc in procs:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 10
    assert ended == [-signal.SIGKILL, -signal.SIGKILL]


def test_the_readme_shows_what_make_run_prints_with_the_defaults() -> None:
    """The Quick start's block is the output a person compares theirs with, line by line."""
    run_stack = _run_stack()
    env = {"ADMIN_EMAIL": "admin@example.com", "ADMIN_PASSWORD": "change-this-admin-password"}
    admin = run_stack.administrator_line(env, "")
    inbox = "http://localhost:1080/"
    integration = "amqp://clientpress-crm:a-password@127.0.0.1:5672/"
    printed = [
        f"clientpress: {line}" for line in run_stack.running_lines(env, admin, inbox, integration)
    ]
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```\nclientpress: ClientPress is running.", 1)[1].split("```", 1)[0]
    assert ["clientpress: ClientPress is running.", *block.strip("\n").splitlines()] == printed


def test_an_unreachable_broker_is_told_once() -> None:
    """`make run` with RabbitMQ down said so with how to start it, and then aio-pika's own
    logger added `error when creating transport: <AMQPConnectionError: (111, ...)>` to
    the end of the output, after the advice."""
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    check = (
        "import asyncio, importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('run_stack', {str(ROOT / 'scripts/run_stack.py')!r});"
        "run_stack = importlib.util.module_from_spec(spec); spec.loader.exec_module(run_stack);"
        f"env = {{'DATABASE_URL': 'postgresql://postgres@127.0.0.1:{port}/x',"
        f" 'AMQP_URL': 'amqp://guest:guest@127.0.0.1:{port}/'}};"
        "sys.exit(0 if asyncio.run(run_stack.check_dependencies(env)) else 1)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "RabbitMQ is not reachable" in done.stdout
    assert "PostgreSQL is not reachable" in done.stdout
    assert "error when creating transport" not in done.stdout + done.stderr, done.stderr


@pytest.mark.integration
def test_a_refused_login_is_told_apart_from_a_server_that_is_down() -> None:
    """`make run` with a wrong password in AMQP_URL (or a user PostgreSQL doesn't know in
    DATABASE_URL) said "RabbitMQ is not reachable" and how to start a server that was
    running all along; a login refused now says so, and which variable to check."""
    import asyncio
    from urllib.parse import urlsplit, urlunsplit

    from tests.support import servers

    run_stack = _run_stack()
    running = servers.current()
    amqp = urlsplit(running.amqp_url)
    wrong = amqp._replace(netloc=f"nobody-newuser:wrong@{amqp.hostname}:{amqp.port}")
    db = urlsplit(running.database_url)
    stranger = db._replace(netloc=f"nobody_newuser@{db.hostname}:{db.port}")
    env = {"DATABASE_URL": urlunsplit(stranger), "AMQP_URL": urlunsplit(wrong)}
    lines: list[str] = []
    original = run_stack.say
    run_stack.say = lines.append
    try:
        assert asyncio.run(run_stack.check_dependencies(env)) is False
    finally:
        run_stack.say = original
    said = "\n".join(lines)
    assert "not reachable" not in said and "Start it" not in said, said
    assert "RabbitMQ refused the login" in said and "AMQP_URL" in said, said
    assert "PostgreSQL refused the login" in said and "DATABASE_URL" in said, said
    assert "wrong@" not in said


class _Process:
    """A service process as watch() sees it: running until told it exited."""

    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def test_a_service_that_exits_is_started_again() -> None:
    """`kill -9` of one service (or a crash) ended the whole `make run`: "stopped:
    invitations exited", and every other service stopped with it, where compose and
    Kubernetes start it again. It is now started again, and the run goes on."""
    run_stack = _run_stack()
    now = [0.0]
    services = {"identity": _Process(), "invitations": _Process()}
    started: list[str] = []
    said: list[str] = []

    def start(name: str) -> _Process:
        started.append(name)
        return _Process()

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] == 60:
            services["invitations"].returncode = -9
        if now[0] == 120:
            raise KeyboardInterrupt  # Ctrl-C: the test's way out of the loop

    run_stack.say = said.append
    with pytest.raises(KeyboardInterrupt):
        run_stack.watch(services, start, sleep=sleep, clock=lambda: now[0])
    assert started == ["invitations"]
    assert services["invitations"].poll() is None
    assert any("invitations exited (killed by SIGKILL)" in line for line in said), said


def test_a_service_that_keeps_exiting_at_start_stops_the_run() -> None:
    run_stack = _run_stack()
    now = [0.0]
    started: list[str] = []

    def failing() -> _Process:
        process = _Process()
        process.returncode = 1
        return process

    def start(name: str) -> _Process:
        started.append(name)
        return failing()

    def sleep(seconds: float) -> None:
        now[0] += seconds

    said: list[str] = []
    run_stack.say = said.append
    services = {"mailer": failing()}
    assert run_stack.watch(services, start, sleep=sleep, clock=lambda: now[0]) == "mailer"
    assert started == ["mailer"] * run_stack.RESTARTS
    # The first start and each restart: the line counts every exit it stops on.
    assert said[-1] == f"mailer exited (exit code 1) {run_stack.RESTARTS + 1} times as it started"
