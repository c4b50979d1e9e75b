"""Provisioning the broker's trust table (libs/common/provision.py) on the real broker:
through the management API, through rabbitmqctl when the API isn't there, and as a
definitions document for a broker that loads it at start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from libs.common import broker
from libs.common.provision import provision, remove_limits, remove_users
from tests.support.servers import current as current_servers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def _can_publish(url: str, prefix: str, key: str) -> bool:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{prefix}.events")
        try:
            await exchange.publish(aio_pika.Message(b"{}"), routing_key=key, timeout=10)
        except ChannelAccessRefused:
            return False
        return True
    finally:
        await connection.close()


# Provisioning falls back to rabbitmqctl only for a broker on this machine; a run on
# containers or remote servers has no such path to test.
PATHS = ["management API"] + (["rabbitmqctl"] if current_servers().broker_is_local else [])


@pytest.mark.parametrize("path", PATHS)
async def test_provisioning_makes_users_that_may_publish_only_what_they_own(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    amqp_url = current_servers().amqp_url
    if path == "rabbitmqctl":
        # The management API unreachable: the broker on this machine is asked directly.
        monkeypatch.setenv("BROKER_MANAGEMENT_URL", "http://127.0.0.1:9")
    prefix = f"prov-{uuid.uuid4().hex[:8]}"
    passwords = broker.new_passwords()
    used = await provision(amqp_url, prefix, passwords)
    try:
        assert used == path
        portals = broker.with_credentials(
            amqp_url, broker.broker_user(prefix, "portals"), passwords["portals"]
        )
        assert await _can_publish(portals, prefix, "portal.updated")
        assert not await _can_publish(portals, prefix, "invitation.accepted")
        # The mailer's queue exists before any mailer ran: a mail job is never unroutable.
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        await channel.declare_queue(f"{prefix}.mailer", passive=True)
        await connection.close()
    finally:
        await remove_users(amqp_url, [broker.broker_user(prefix, s) for s in broker.SERVICES])
        await remove_limits(amqp_url, prefix)
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        for queue in ("portals", "invitations", "mailer"):
            await channel.queue_delete(f"{prefix}.{queue}")
            await channel.queue_delete(f"{prefix}.{queue}.dead")
        for kind in ("events", "mail", "dlx"):
            await channel.exchange_delete(f"{prefix}.{kind}")
        await connection.close()


def test_the_definitions_document_hashes_passwords_and_asks_for_missing_ones() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_BROKER_PASSWORD")}
    missing = subprocess.run(
        [sys.executable, "-m", "libs.common.provision", "definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "IDENTITY_BROKER_PASSWORD" in missing.stderr
    secrets = {
        f"{s.upper()}_BROKER_PASSWORD": f"pw-{s}-{uuid.uuid4().hex}" for s in broker.SERVICES
    }
    done = subprocess.run(
        [sys.executable, "-m", "libs.common.provision", "definitions"],
        cwd=ROOT,
        env={**env, **secrets, "BROKER_INTEGRATIONS": "clientpress-crm=crm-secret-1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert {u["name"] for u in document["users"]} == {
        *(broker.broker_user("clientpress", s) for s in broker.SERVICES),
        "clientpress-crm",
    }
    for secret in [*secrets.values(), "crm-secret-1"]:
        assert secret not in done.stdout  # hashed, never written out
    crm = [t for t in document["topic_permissions"] if t["user"] == "clientpress-crm"]
    events = next(t for t in crm if t["exchange"] == "clientpress.events")
    assert events["write"] == r"^(invitation\.requested)$"


@pytest.mark.parametrize(
    "name",
    ["{prefix}", "{prefix}.mailer", "{prefix}-mailer", "{prefix}-portals"],
)
async def test_an_integration_is_never_named_into_the_services_namespace(name: str) -> None:
    """An integration's own queues are ``<its name>.…``: named like the bus prefix (or
    ``<prefix>.mailer``) that pattern took in the services' queues, so it could read,
    purge and delete every one (the mail jobs, invitation.requested, the dead letters);
    named like a service's user, its grant replaced that service's. Refused, naming it."""
    amqp_url = current_servers().amqp_url
    prefix = f"prov-{uuid.uuid4().hex[:8]}"
    integration = name.format(prefix=prefix)
    passwords = broker.new_passwords()
    try:
        with pytest.raises(ValueError, match="BROKER_INTEGRATIONS") as refused:
            await provision(amqp_url, prefix, passwords, {integration: "integration-secret-1"})
        assert integration in str(refused.value)
    finally:
        await remove_users(
            amqp_url, [broker.broker_user(prefix, s) for s in broker.SERVICES] + [integration]
        )
    env = {
        **os.environ,
        **{f"{s.upper()}_BROKER_PASSWORD": f"pw-{s}" for s in broker.SERVICES},
        "BUS_PREFIX": prefix,
        "BROKER_INTEGRATIONS": f"{integration}=integration-secret-1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "libs.common.provision", "definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and integration in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["amq", "amq.rabbitmq", "amq.gen-crm"])
def test_an_integration_is_never_named_into_the_brokers_own_namespace(name: str) -> None:
    """``amq.…`` is the broker's: an integration named ``amq`` owned ``amq.…``, so it could
    read ``amq.rabbitmq.trace`` (the firehose, a copy of every message, mail jobs and
    internal events included, once tracing is on) and publish to ``amq.topic``. Before:
    provisioned."""
    with pytest.raises(ValueError, match="BROKER_INTEGRATIONS") as refused:
        broker.definitions("cp", broker.new_passwords(), integrations={name: "secret-1"})
    assert repr(name) in str(refused.value)


async def test_an_integration_is_never_named_into_another_integrations_queues() -> None:
    """``<prefix>-crm`` owns the queues named ``<prefix>-crm.…``: with ``<prefix>-crm.eu``
    beside it, that took in every queue of the second integration, which the first could
    read (its answers), purge or delete. Before: provisioned, and the first consumed the
    second's queue. Refused, naming both."""
    amqp_url = current_servers().amqp_url
    prefix = f"prov-{uuid.uuid4().hex[:8]}"
    first, second = f"{prefix}-crm", f"{prefix}-crm.eu"
    integrations = {first: "integration-secret-1", second: "integration-secret-2"}
    passwords = broker.new_passwords()
    try:
        with pytest.raises(ValueError, match="BROKER_INTEGRATIONS") as refused:
            await provision(amqp_url, prefix, passwords, integrations)
        assert first in str(refused.value) and second in str(refused.value)
    finally:
        await remove_users(
            amqp_url, [*(broker.broker_user(prefix, s) for s in broker.SERVICES), *integrations]
        )
        await remove_limits(amqp_url, prefix)
        connection = await aio_pika.connect(amqp_url)  # what a provisioning made, if it did
        channel = await connection.channel()
        for queue in broker.CONSUMES:
            await channel.queue_delete(f"{prefix}.{queue}")
            await channel.queue_delete(f"{prefix}.{queue}.dead")
        for kind in ("events", "mail", "dlx"):
            await channel.exchange_delete(f"{prefix}.{kind}")
        await connection.close()
    env = {
        **os.environ,
        **{f"{s.upper()}_BROKER_PASSWORD": f"pw-{s}" for s in broker.SERVICES},
        "BUS_PREFIX": prefix,
        "BROKER_INTEGRATIONS": ",".join(f"{u}={pw}" for u, pw in integrations.items()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "libs.common.provision", "definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and second in done.stderr, done.stderr


def test_the_queue_limits_come_from_the_environment_and_a_bad_value_is_named() -> None:
    """The definitions carry the policy that bounds the services' queues (and their dead
    letters) with the operator's figures; a value that is not a whole number stops the
    provisioning, naming the variable, instead of provisioning no bound."""
    env = {
        **os.environ,
        **{f"{s.upper()}_BROKER_PASSWORD": f"pw-{s}" for s in broker.SERVICES},
        "BUS_PREFIX": "clientpress",
        "BROKER_QUEUE_MAX_MESSAGES": "5000",
        "BROKER_QUEUE_MAX_BYTES": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "libs.common.provision", "definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (policy,) = json.loads(done.stdout)["policies"]
    assert policy["definition"] == {"max-length": 5000, "overflow": "reject-publish"}
    assert policy["apply-to"] == "queues"
    for queue in ("identity", "portals", "invitations", "mailer"):
        for name in (f"clientpress.{queue}", f"clientpress.{queue}.dead"):
            assert re.fullmatch(policy["pattern"], name), name
    assert not re.fullmatch(policy["pattern"], "clientpress-crm.replies")
    bad = subprocess.run(
        [sys.executable, "-m", "libs.common.provision", "definitions"],
        cwd=ROOT, env={**env, "BROKER_QUEUE_MAX_MESSAGES": "lots"},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "BROKER_QUEUE_MAX_MESSAGES='lots'" in bad.stderr, bad.stderr


def test_integration_requests_have_a_queue_of_their_own_with_its_dead_letters_and_bound() -> None:
    """invitation.requested goes to ``<prefix>.invitations.requests`` only (one
    integration's flood never queues in front of the service's own events), a quorum
    queue with the delivery limit, dead-lettering to its own ``.dead`` queue, and under
    the queue limits like the others."""
    document = broker.definitions("cp", broker.new_passwords())
    queues = {q["name"]: q["arguments"] for q in document["queues"]}
    assert queues["cp.invitations.requests"] == {
        "x-queue-type": "quorum",
        "x-delivery-limit": broker.MAX_DELIVERIES,
        "x-dead-letter-exchange": "cp.dlx",
        "x-dead-letter-routing-key": "invitations.requests",
    }
    assert queues["cp.invitations.requests.dead"] == broker.DEAD_QUEUE_ARGUMENTS
    bound = {(b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]}
    assert ("cp.dlx", "cp.invitations.requests.dead", "invitations.requests") in bound
    requested = {d for s, d, key in bound if key == "invitation.requested"}
    assert requested == {"cp.invitations.requests"}
    [policy] = document["policies"]
    pattern = re.compile(policy["pattern"])
    assert pattern.match("cp.invitations.requests") and pattern.match(
        "cp.invitations.requests.dead"
    )
    assert pattern.match("cp.invitations") and not pattern.match("cp.invitations.other")
