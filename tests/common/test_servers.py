"""The choice of the tests' servers (tests/support/servers.py): the environment's URLs
first, then containers when a Docker engine answers, then the servers on this machine."""

from __future__ import annotations

import pytest

from tests.support import servers
from tests.support.env import free_port


@pytest.fixture
def no_urls(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("TEST_DATABASE_URL", "DATABASE_URL", "TEST_AMQP_URL", "AMQP_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_urls_in_the_environment_win(no_urls: pytest.MonkeyPatch) -> None:
    no_urls.setenv("TEST_DATABASE_URL", "postgresql://u@db.internal:5433/x")
    no_urls.setenv("AMQP_URL", "amqp://u:p@mq.internal:5673/")
    chosen = servers.choose("containers")
    assert chosen.origin == "environment"
    assert chosen.database_url == "postgresql://u@db.internal:5433/x"
    assert chosen.amqp_url == "amqp://u:p@mq.internal:5673/"
    assert "environment (PostgreSQL db.internal:5433, RabbitMQ mq.internal:5673)" in (
        chosen.describe()
    )
    # Remote servers are not this run's to stop or administer: a clear refusal.
    with pytest.raises(servers.ServerControlError, match=r"mq\.internal"):
        chosen.rabbitmqctl("status")
    with pytest.raises(servers.ServerControlError, match=r"db\.internal"):
        chosen.stop_postgres()
    assert not chosen.broker_is_local


def test_without_a_docker_engine_the_local_servers_are_used(no_urls: pytest.MonkeyPatch) -> None:
    # A Docker host where nothing listens: the engine doesn't answer.
    no_urls.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    assert not servers.docker_engine_reachable()
    chosen = servers.choose("")
    assert chosen.origin == "local servers"
    assert chosen.database_url == servers.LOCAL_DATABASE_URL
    assert chosen.broker_is_local
    with pytest.raises(RuntimeError, match="no Docker engine answers"):
        servers.choose("containers")
    with pytest.raises(ValueError, match="local or containers"):
        servers.choose("docker")


def test_the_run_reports_its_servers(pytestconfig: pytest.Config) -> None:
    header = pytestconfig.hook.pytest_report_header(
        config=pytestconfig, start_path=pytestconfig.rootpath
    )
    assert any(str(line).startswith("servers: ") for line in header)
