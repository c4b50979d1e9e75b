"""Operations (issue 7): /metrics moving during an invite, SIGTERM under load, and the
image's entrypoint starting every service."""

from __future__ import annotations

import asyncio
import errno
import itertools
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.e2e.flows import Api, accept_from_email, eventually, publish_raw, unique_email
from tests.support.env import free_port, new_test_env, provisioned
from tests.support.processes import LOG_DIR, PORT_VARS, ROOT, own_key_only
from tests.support.smtp import SmtpSink
from tests.support.stack import API_KEY, ORDER, Browser, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> tuple[Samples, str]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, text


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(
        value
        for (n, found), value in samples.items()
        if n == name and all((k, v) in found for k, v in labels.items())
    )


def requests_off_metrics(samples: Samples) -> float:
    """HTTP requests other than the scrapes themselves."""
    return sum(
        value
        for (n, found), value in samples.items()
        if n == "clientpress_http_requests_total" and ("route", "/metrics") not in found
    )


async def scrape_all(stack: Stack) -> dict[str, Samples]:
    found = await asyncio.gather(*(scrape(stack.services[name].management_url) for name in ORDER))
    return {name: samples for name, (samples, _) in zip(ORDER, found, strict=True)}


# --- /metrics --------------------------------------------------------------------------
async def test_metrics_move_during_an_invite(stack: Stack) -> None:
    families = (
        "clientpress_http_requests_total",
        "clientpress_http_request_duration_seconds",
        "clientpress_events_published_total",
        "clientpress_events_consumed_total",
        "clientpress_events_dead_lettered_total",
        "clientpress_outbox_backlog",
    )
    for name in ORDER:
        _, text = await scrape(stack.services[name].management_url)
        for family in families:
            assert f"# TYPE {family}" in text, (name, family)
    _, mailer_text = await scrape(stack["mailer"].management_url)
    assert "# TYPE clientpress_emails_sent_total counter" in mailer_text
    assert "# TYPE clientpress_emails_failed_total counter" in mailer_text

    api = Api(stack)
    try:
        portal_id = await _invitable_portal(stack)

        async def quiet() -> bool | None:
            # The probe invitation's email went out and its mail.sent came back.
            _, page = await api.call("GET", f"/invitations?portal_id={portal_id}")
            if not all(i["delivery"] == "sent" for i in page["items"]):
                return None
            s, _ = await scrape(stack["invitations"].management_url)
            return True if ("clientpress_invitations", (("status", "pending"),)) in s else None

        await eventually(quiet, "the probe invitation to settle")
        before = await scrape_all(stack)
        email = unique_email("metrics")
        code, body = await api.invite(portal_id, email)
        assert code == 201, body
        await stack.sink.wait_for(email)
        browser = Browser(stack.public_url)
        try:
            _, url, _ = await accept_from_email(stack, browser, email)
        finally:
            await browser.close()
        assert "/client-portal/" in url
        # A poison message: the invitations consumer dead-letters it.
        await publish_raw(
            stack, b"not json", routing_key="invitation.requested", type="invitation.requested"
        )
    finally:
        await api.close()

    async def settled() -> dict[str, Samples] | None:
        now = await scrape_all(stack)
        inv, mailer = now["invitations"], now["mailer"]
        moved = (
            total(inv, "clientpress_events_consumed_total", type="mail.sent", outcome="applied")
            > total(
                before["invitations"],
                "clientpress_events_consumed_total",
                type="mail.sent",
                outcome="applied",
            )
            and total(inv, "clientpress_events_dead_lettered_total", reason="malformed")
            > total(before["invitations"], "clientpress_events_dead_lettered_total")
            and total(inv, "clientpress_invitations", status="accepted")
            > total(before["invitations"], "clientpress_invitations", status="accepted")
            and total(mailer, "clientpress_emails_sent_total", template="invitation")
            > total(before["mailer"], "clientpress_emails_sent_total", template="invitation")
            and all(total(now[n], "clientpress_outbox_backlog") == 0 for n in ORDER)
        )
        return now if moved else None

    after = await eventually(settled, "the counters to move", timeout=30)
    b, a = before, after

    # Requests and latencies by route.
    for name in ("gateway", "invitations", "identity", "portals"):
        assert requests_off_metrics(a[name]) > requests_off_metrics(b[name]), name
    route = "/api/v1/portals/{id}/invitations"
    key = "clientpress_http_requests_total"
    assert total(a["gateway"], key, method="POST", route=route, status="201") == (
        total(b["gateway"], key, method="POST", route=route, status="201") + 1
    )
    hist = "clientpress_http_request_duration_seconds_count"
    assert total(a["gateway"], hist, route=route) == total(b["gateway"], hist, route=route) + 1
    assert total(a["invitations"], key, method="POST", route="/invitations") > total(
        b["invitations"], key, method="POST", route="/invitations"
    )

    # Events published by invitations, consumed by the mailer, invitations and portals.
    pub = "clientpress_events_published_total"
    assert total(a["invitations"], pub, type="mail.requested") == (
        total(b["invitations"], pub, type="mail.requested") + 1
    )
    assert total(a["invitations"], pub, type="invitation.accepted") == (
        total(b["invitations"], pub, type="invitation.accepted") + 1
    )
    con = "clientpress_events_consumed_total"
    assert total(a["mailer"], con, type="mail.requested", outcome="applied") == (
        total(b["mailer"], con, type="mail.requested", outcome="applied") + 1
    )
    assert (
        total(a["mailer"], pub, type="mail.sent") == total(b["mailer"], pub, type="mail.sent") + 1
    )
    assert total(a["portals"], con, type="invitation.accepted") > total(
        b["portals"], con, type="invitation.accepted"
    )
    dead = "clientpress_events_dead_lettered_total"
    assert total(a["invitations"], dead, type="invitation.requested", reason="malformed") == (
        total(b["invitations"], dead, type="invitation.requested", reason="malformed") + 1
    )

    # Emails sent; none failed.
    sent = "clientpress_emails_sent_total"
    assert total(a["mailer"], sent, template="invitation") == (
        total(b["mailer"], sent, template="invitation") + 1
    )
    failed = "clientpress_emails_failed_total"
    assert total(a["mailer"], failed) == total(b["mailer"], failed)

    # Invitations by status: one more accepted, every status reported.
    gauge = "clientpress_invitations"
    for status in ("pending", "accepted", "revoked", "expired"):
        assert (gauge, (("status", status),)) in a["invitations"], status
    assert total(a["invitations"], gauge, status="accepted") == (
        total(b["invitations"], gauge, status="accepted") + 1
    )


# --- graceful shutdown ---------------------------------------------------------------
@pytest.fixture(scope="module")
async def ops_stack() -> AsyncIterator[Stack]:
    """A stack of our own: these tests stop services, which the session stack must not see."""
    sink = SmtpSink()
    sink.start()
    try:
        async with running_stack(sink) as running:
            yield running
    finally:
        sink.stop()


class Load:
    """Concurrent clients creating invitations; a refused connection (the service is
    down) is retried until it restarts, anything else that isn't a 201 is a failure."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        body: dict[str, Any],
        middlewares: tuple[aiohttp.ClientMiddlewareType, ...] = (),
    ) -> None:
        self.url, self.headers, self.body = url, headers, body
        self.middlewares = middlewares
        self.created: list[str] = []
        self.failures: list[str] = []
        self.refused = 0
        self.stop = False
        self._n = itertools.count()

    async def worker(self) -> None:
        # A new connection per request: an idle keep-alive connection that the server
        # closes as it stops would fail the next request without it ever arriving.
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, middlewares=self.middlewares
        ) as session:
            while not self.stop:
                email = f"load-{next(self._n)}-{uuid.uuid4().hex[:6]}@example.com"
                await self._create(session, email)

    async def _create(self, session: aiohttp.ClientSession, email: str) -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                async with session.post(
                    self.url, json={**self.body, "email": email}, headers=self.headers
                ) as response:
                    text = await response.text()
                    if response.status == 201:
                        self.created.append(email)
                    else:
                        self.failures.append(f"{email}: {response.status} {text[:200]}")
                    return
            except aiohttp.ClientConnectorError:
                self.refused += 1
                await asyncio.sleep(0.05)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                # Connected into the listen backlog just as the socket closed: reset before
                # the server read the request. Retried with the same email, so had the server
                # handled it, the retry would answer 200 "resent" (a failure here) and send a
                # second email (caught by _each_gets_one_email), not 201.
                if isinstance(exc, aiohttp.ClientOSError) and not (
                    "Can not write request body" in str(exc)
                    or exc.errno == errno.ECONNRESET
                    or isinstance(exc, aiohttp.ServerDisconnectedError)
                ):
                    raise
                self.refused += 1
                await asyncio.sleep(0.05)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{email}: {type(exc).__name__} {exc}")
                return
        self.failures.append(f"{email}: still refused after 40 s")


async def _sigterm_under_load(stack: Stack, service: str, load: Load) -> None:
    workers = [asyncio.create_task(load.worker()) for _ in range(6)]
    process = stack.services[service]
    try:

        async def some_done() -> bool | None:
            return True if len(load.created) >= 15 or load.failures else None

        await eventually(some_done, "invitations to be created before the stop")
        code = await asyncio.to_thread(process.stop, signal.SIGTERM)
        assert code == 0, f"{service} exited {code}: {process.log_tail()}"
        process.start()
        await process.wait_ready()
        mark = len(load.created)

        async def more_done() -> bool | None:
            return True if len(load.created) >= mark + 15 or load.failures else None

        await eventually(more_done, "invitations to be created after the restart")
    finally:
        load.stop = True
        await asyncio.gather(*workers)
    assert not load.failures, load.failures[:10]
    assert load.refused > 0, "no request was refused: the stop was not under load"


async def _invitable_portal(stack: Stack) -> str:
    api = Api(stack)
    try:
        portal = await api.portal(f"Load {uuid.uuid4().hex[:6]}")
        probe = unique_email("probe")

        async def invitable() -> bool | None:
            code, _ = await api.invite(portal["id"], probe)
            return True if code == 201 else None

        await eventually(invitable, "the invitations service to know the portal")
        return str(portal["id"])
    finally:
        await api.close()


async def _each_gets_one_email(stack: Stack, emails: list[str]) -> None:
    assert len(emails) == len(set(emails))
    for email in emails:
        await stack.sink.wait_for(email, timeout=30)
    await asyncio.sleep(1.0)  # a duplicate would come right behind
    twice = [e for e in emails if len(stack.sink.to(e)) != 1]
    assert not twice, twice[:10]


async def test_sigterm_to_invitations_under_load_loses_nothing(ops_stack: Stack) -> None:
    portal_id = await _invitable_portal(ops_stack)
    # Straight to the service's internal API, so that a refused connection is told apart
    # from the gateway's 503 for an unreachable upstream.
    load = Load(
        ops_stack["invitations"].url + "/invitations",
        {},
        {"portal_id": portal_id},
        (ops_stack.keys.client_middleware("gateway", "invitations"),),
    )
    await _sigterm_under_load(ops_stack, "invitations", load)
    await _each_gets_one_email(ops_stack, load.created)


async def test_sigterm_to_the_gateway_under_load_loses_nothing(ops_stack: Stack) -> None:
    portal_id = await _invitable_portal(ops_stack)
    load = Load(
        f"{ops_stack.public_url}/api/v1/portals/{portal_id}/invitations",
        {"Authorization": f"Bearer {API_KEY}"},
        {},
    )
    await _sigterm_under_load(ops_stack, "gateway", load)
    await _each_gets_one_email(ops_stack, load.created)


# --- the image's entrypoint ----------------------------------------------------------
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
VENV_BIN = ROOT / ".venv" / "bin"


def _entrypoint(service: str, env: dict[str, str], *args: str, log: Path | None = None) -> Any:
    env = {
        **own_key_only(env, service),
        "SERVICE": service,
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    }
    out = log.open("ab") if log is not None else subprocess.PIPE
    return subprocess.Popen(
        [str(ENTRYPOINT), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )


async def test_the_image_entrypoint_migrates_and_starts_each_service() -> None:
    """deploy/docker-entrypoint.sh outside a container: `migrate`, then each of the five
    services reaches /readyz (on its management port) and stops on SIGTERM with exit 0.
    (tests/deploy checks the script's arguments with a stand-in python; this runs it.)"""
    sink = SmtpSink()
    sink.start()
    try:
        async with provisioned(new_test_env()) as test_env:
            ports = {name: free_port() for name in ORDER}
            management = {name: free_port() for name in ORDER}
            env = test_env.service_env(
                SMTP_HOST="127.0.0.1",
                SMTP_PORT=str(sink.port),
                PUBLIC_URL=f"http://127.0.0.1:{ports['gateway']}",
                ADMIN_EMAIL="admin@example.com",
                ADMIN_PASSWORD="correct-horse-battery-staple-42",
                GATEWAY_API_KEY="entrypoint-api-key-0123456789",
                **{PORT_VARS[name]: str(port) for name, port in ports.items()},
                **{f"{n.upper()}_MANAGEMENT_PORT": str(p) for n, p in management.items()},
                **{
                    f"{name.upper()}_URL": f"http://127.0.0.1:{ports[name]}"
                    for name in ("identity", "portals", "invitations")
                },
            )
            env.pop("VIRTUAL_ENV", None)
            # Migrations first, as the compose job and the k8s Job do.
            for name in ("identity", "portals", "invitations", "mailer", "gateway"):
                proc = _entrypoint(name, env, "migrate")
                out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
                assert proc.returncode == 0, (name, out.decode(errors="replace")[-2000:])
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            logs = {n: LOG_DIR / f"{test_env.bus_prefix}-entrypoint-{n}.log" for n in ORDER}
            procs = {n: _entrypoint(n, env, log=logs[n]) for n in ORDER}
            try:
                await asyncio.gather(*(_ready(n, management[n], procs[n], logs[n]) for n in ORDER))
                for name, proc in procs.items():
                    proc.send_signal(signal.SIGTERM)
                codes = await asyncio.gather(
                    *(asyncio.to_thread(p.wait, 25) for p in procs.values())
                )
                assert dict(zip(ORDER, codes, strict=True)) == dict.fromkeys(ORDER, 0)
            finally:
                for proc in procs.values():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    finally:
        sink.stop()


async def _ready(name: str, port: int, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + 120  # a bound for a loaded machine, as in wait_ready
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{name} exited: {log.read_text()[-2000:]}"
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        body = await response.json()
                        assert body["ready"] is True
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not ready: {log.read_text()[-2000:]}")
