import pytest

from libs.common.settings import CommonSettings, ConfigError, load_settings


def test_defaults_are_the_documented_local_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CommonSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = load_settings(CommonSettings)
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/clientpress"
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.bus_prefix == "clientpress"
    assert settings.public_base == "http://localhost:8080"
    assert settings.gateway_port == 8080
    assert settings.admin_email is None
    assert not settings.secure_cookies


def test_malformed_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    with pytest.raises(ConfigError) as info:
        load_settings(CommonSettings)
    message = str(info.value)
    assert "GATEWAY_PORT" in message
    assert "DATABASE_URL" in message


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("ADMIN_PASSWORD", "another-secret-value")
    settings = load_settings(CommonSettings)
    assert "hunter2" not in repr(settings)
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "hunter2-very-secret"


def test_https_public_url_makes_cookies_secure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_URL", "https://portal.example.com/")
    settings = load_settings(CommonSettings)
    assert settings.secure_cookies
    assert settings.public_base == "https://portal.example.com"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("https://portal.example.com/clients", "no path"),
        ("https://portal.example.com/?tenant=acme", "no query"),
        ("https://portal.example.com/#top", "no fragment"),
        ("https://admin:secret@portal.example.com", "no user name or password"),
        ("ftp://portal.example.com", "http:// or https://"),
    ],
)
def test_a_public_url_links_cannot_be_built_on_is_refused_and_explained(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    """Every link in an email is PUBLIC_URL + a path, and the gateway answers at its host's
    root: with a path, a query or a fragment every emailed link would be broken."""
    monkeypatch.setenv("PUBLIC_URL", value)
    with pytest.raises(ConfigError) as info:
        load_settings(CommonSettings)
    message = str(info.value)
    assert "PUBLIC_URL" in message and says in message
    assert "secret" not in message


@pytest.mark.parametrize(
    ("value", "base"),
    [
        ("https://portal.example.com", "https://portal.example.com"),
        ("https://portal.example.com/", "https://portal.example.com"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("https://[2001:db8::1]:8443/", "https://[2001:db8::1]:8443"),
    ],
)
def test_an_origin_is_a_public_url(monkeypatch: pytest.MonkeyPatch, value: str, base: str) -> None:
    monkeypatch.setenv("PUBLIC_URL", value)
    assert load_settings(CommonSettings).public_base == base


def test_the_broker_url_asks_for_heartbeats_unless_amqp_url_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker black hole is noticed after about three heartbeats
    (tests/faults/test_black_hole.py); aiormq's own 60 s took three minutes."""
    for name in CommonSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    assert load_settings(CommonSettings).service_amqp_url("mailer").endswith("/?heartbeat=10")
    monkeypatch.setenv("AMQP_HEARTBEAT_SECONDS", "4")
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@broker:5672/vhost?connection_timeout=3000")
    assert load_settings(CommonSettings).service_amqp_url("mailer") == (
        "amqp://u:p@broker:5672/vhost?connection_timeout=3000&heartbeat=4"
    )
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@broker:5672/?heartbeat=30")
    assert load_settings(CommonSettings).service_amqp_url("mailer").endswith("?heartbeat=30")
