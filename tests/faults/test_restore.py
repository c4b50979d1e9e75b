"""Disaster recovery: a ``pg_dump`` taken while emails wait for the SMTP server, more
traffic after it, then the stack stopped, the dump restored into a fresh database with
``pg_restore``, the README's "before the services start" SQL run on it, and the stack
started again. The SQL is read from README.md, so the procedure an operator follows is
the one tested: no email goes twice, no invitation waits for an email forever, a link
sent after the dump gets a page that says so, and nobody stays logged in on a session
the restore brought back. And a broker lost with its queues: the README's SQL sends
again what it held, once."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from libs.common import database_roles
from libs.common.provision import provision
from tests.faults.support import Api, burst, outboxes_drained, record, unique_emails, wait_until
from tests.support.env import drop_bus, free_port, new_test_env, provisioned
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.smtp import SmtpSink, accept_link
from tests.support.stack import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ORDER,
    Browser,
    Stack,
    login,
    stack_env,
    started,
)
from tests.support.webhooks import receiver

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "a-long-client-password-7"


def readme_sql(after: str) -> str:
    """The SQL block of the README's Backups and restore section that follows the
    paragraph starting with ``after`` (none: nothing is run, and the test shows what that leaves)."""
    text = README.read_text()
    section = text.split("### Backups and restore", 1)[1].split("\n### ", 1)[0]
    found = re.search(re.escape(after) + r".*?```sql\n(.*?)```", section, re.S)
    return found.group(1) if found else "SELECT 1"


def pg(command: str, *args: str, database_url: str) -> None:
    parts = urlsplit(database_url)
    subprocess.run(
        [
            command,
            "-h",
            parts.hostname or "127.0.0.1",
            "-p",
            str(parts.port or 5432),
            "-U",
            parts.username or "postgres",
            *args,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


async def states(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT 'invitation ' || status || '/' || delivery AS state, count(*)"
            " FROM invitations.invitations GROUP BY 1"
            " UNION ALL SELECT 'delivery ' || status, count(*) FROM mailer.deliveries GROUP BY 1"
            " UNION ALL SELECT 'webhook ' || status, count(*)"
            " FROM mailer.webhook_deliveries GROUP BY 1"
        )
    finally:
        await conn.close()
    return {row["state"]: row["count"] for row in rows}


async def test_a_restored_dump_sends_no_email_twice_and_leaves_none_waiting(
    sink: SmtpSink, tmp_path: Path
) -> None:
    env = new_test_env()
    restored_name = env.database_name + "_restored"
    restored_url = urlunsplit(urlsplit(env.database_url)._replace(path=f"/{restored_name}"))
    dump = tmp_path / "clientpress.dump"
    async with receiver() as hook, provisioned(env):
        ports = {name: free_port() for name in ORDER}
        public_url = f"http://127.0.0.1:{ports['gateway']}"
        # A row restored as sending would go again after 6 s, not 120, within the test (a
        # send bounded by 4 s: the mailer refuses a stuck time below a send's bound).
        quick = {"MAILER_STUCK_SENDING_SECONDS": "6", "MAILER_SMTP_TIMEOUT_SECONDS": "2"}
        before = stack_env(env, sink, public_url, ports, quick)
        await asyncio.to_thread(run_migrations, before, ORDER)
        services = {name: ServiceProcess(name, ports[name], before) for name in ORDER}
        stack = Stack(services, sink, public_url, before, env.database_url, env, env.keys)
        async with started(list(services.values())):
            api = Api(stack)
            portal = await api.create_portal("Restored")
            code, _ = await api.call(
                "POST", "/api/v1/webhooks", {"url": hook.url, "events": ["invitation.created"]}
            )
            assert code == 201
            sent = unique_emails("sent", 3)
            await burst(api, portal["id"], sent, 3)
            await sink.wait_for_each(sent, 20)
            await hook.wait_for(lambda got: len(got) == len(sent))
            # The SMTP server turns emails away while the dump is taken: their deliveries
            # are in the dump as queued, and go out after it.
            sink.sink.fail_with = "451 4.3.0 try again later"
            hook.answers = [503] * 10_000  # and the webhook receiver
            waiting = unique_emails("waiting", 4)
            await burst(api, portal["id"], waiting, 4)

            async def all_waiting() -> bool:
                found = await states(env.database_url)
                return found.get("delivery queued", 0) == len(waiting) and found.get(
                    "webhook queued", 0
                ) == len(waiting)

            await wait_until(all_waiting, 20, "the held emails queued in the mailer")
            # A session opened before the dump: the restore brings it back, with any
            # log out, disabled account or revoked key after the dump undone.
            earlier = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
            await asyncio.to_thread(
                pg,
                "pg_dump",
                "-Fc",
                "-d",
                env.database_name,
                "-f",
                str(dump),
                database_url=env.database_url,
            )
            dumped = await states(env.database_url)
            sink.sink.fail_with = None
            hook.answers.clear()
            await sink.wait_for_each(waiting, 30)
            after_dump = unique_emails("after", 2)
            await burst(api, portal["id"], after_dump, 2)
            await sink.wait_for_each(after_dump, 20)
            # A session opened after the dump.
            later = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
            await api.close()
        before_restore = len(sink.messages)
        posts_before_restore = len(hook.received)

        await asyncio.to_thread(pg, "createdb", restored_name, database_url=env.database_url)
        try:
            await asyncio.to_thread(
                pg, "pg_restore", "-d", restored_name, str(dump), database_url=restored_url
            )
            # As the README says: the restored database's own roles (its name is new), which
            # take over what the dump's roles owned.
            await database_roles.provision(restored_url, env.database_passwords)
            conn = await asyncpg.connect(restored_url)
            try:
                await conn.execute(readme_sql("**Before the services start"))
            finally:
                await conn.close()
            after = dict(before, DATABASE_URL=restored_url)
            await asyncio.to_thread(run_migrations, after, ORDER)
            services = {name: ServiceProcess(name, ports[name], after) for name in ORDER}
            stack = Stack(services, sink, public_url, after, restored_url, env, env.keys)
            async with started(list(services.values())):
                api = Api(stack)
                # An email asked for after the restart: the mailer takes what the restore
                # left queued before it (oldest due first), so once it has gone and
                # nothing is queued or sending, every email the restore would send is out.
                fresh = unique_emails("fresh", 1)
                await burst(api, portal["id"], fresh, 1)
                await sink.wait_for_each(fresh, 20)

                async def settled() -> bool:
                    found = await states(restored_url)
                    return not any(
                        found.get(state)
                        for state in (
                            "delivery queued",
                            "delivery sending",
                            "invitation pending/queued",
                            "webhook queued",
                            "webhook sending",
                        )
                    )

                await wait_until(settled, 30, "the restored mail settled")
                twice = {
                    address: count
                    for address, count in (await sink.wait_for_each(sent + waiting, 1)).items()
                    if count > 1
                }
                restored = await states(restored_url)

                # A link emailed after the dump: its page says so, not a 500.
                browser = Browser(public_url)
                code, _, html = await browser.get(
                    accept_link((await sink.wait_for(after_dump[0]))[0])
                )
                await browser.close()
                # A link emailed before it still sets a password.
                browser = Browser(public_url)
                _, url, html_before = await browser.get(
                    accept_link((await sink.wait_for(waiting[0]))[0])
                )
                accepted, landed, _ = await browser.submit(
                    url,
                    html_before,
                    "Set Password",
                    {"Password": PASSWORD, "Confirm Password": PASSWORD},
                )
                await browser.close()
                _, later_url, _ = await later.get("/admin/invitations")
                _, earlier_url, _ = await earlier.get("/admin/invitations")
                await later.close()
                await earlier.close()
                await api.close()
                # Webhook deliveries the dump held as queued are posted again: with the
                # webhook-id of the first post, on which a receiver deduplicates.
                invitations = {r.json["data"]["invitation_id"] for r in hook.received}
                webhook_ids = {r.id for r in hook.received}
                record(
                    "restore",
                    webhook_posts_after_restart=len(hook.received) - posts_before_restore,
                    webhook_events=len(invitations),
                    dumped=dumped,
                    restored=restored,
                    emails_after_restart=len(sink.messages) - before_restore,
                    twice=len(twice),
                )
        finally:
            admin = await asyncpg.connect(env.admin_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{restored_name}" WITH (FORCE)')
            await database_roles.drop(restored_url)
            await admin.close()

    assert twice == {}, f"emailed twice after the restore: {twice}"
    assert len(webhook_ids) == len(invitations), (webhook_ids, invitations)
    assert code == 404 and "This invitation link is not valid" in html, (code, html[:500])
    assert accepted == 200 and "/client-portal/" in landed, (accepted, landed)
    assert "/login" in later_url, later_url
    assert "/login" in earlier_url, earlier_url
    assert restored.get("invitation pending/failed", 0) == len(waiting), restored


async def test_emails_a_lost_broker_held_go_once_the_outboxes_publish_again(sink: SmtpSink) -> None:
    env = new_test_env()
    async with provisioned(env):
        ports = {name: free_port() for name in ORDER}
        public_url = f"http://127.0.0.1:{ports['gateway']}"
        service_env = stack_env(env, sink, public_url, ports, {})
        await asyncio.to_thread(run_migrations, service_env, ORDER)
        services = {name: ServiceProcess(name, ports[name], service_env) for name in ORDER}
        stack = Stack(services, sink, public_url, service_env, env.database_url, env, env.keys)
        async with started(list(services.values())):
            api = Api(stack)
            portal = await api.create_portal("Lost broker")
            sent = unique_emails("sent", 3)
            await burst(api, portal["id"], sent, 3)
            await sink.wait_for_each(sent, 20)
            # The mailer is away: the mail jobs wait in its queue, published and gone
            # from the outbox's pending rows.
            services["mailer"].stop()
            held = unique_emails("held", 3)
            await burst(api, portal["id"], held, 3)
            await outboxes_drained(stack)
            await api.close()
        # The broker is lost with its queues and exchanges (its users survive, as a
        # broker's definitions restored from its own backup would); provisioned again.
        await drop_bus(env)
        await provision(
            env.amqp_url,
            env.bus_prefix,
            env.broker_passwords,
            {env.integration_user: env.integration_password},
        )
        conn = await asyncpg.connect(env.database_url)
        try:
            await conn.execute(readme_sql("**A broker lost with its queues"))
        finally:
            await conn.close()
        services = {name: ServiceProcess(name, ports[name], service_env) for name in ORDER}
        async with started(list(services.values())):
            counts = await sink.wait_for_each(sent + held, 30)

            async def announced() -> bool:
                found = await states(env.database_url)
                return found.get("invitation pending/sent") == len(sent + held)

            await wait_until(announced, 30, "every invitation's email announced as sent")
            queued = await states(env.database_url)
            record("broker_lost", emails=dict(counts), restored=queued)

    assert counts == dict.fromkeys(sent + held, 1), counts
    assert queued == {"invitation pending/sent": 6, "delivery sent": 6}, queued
