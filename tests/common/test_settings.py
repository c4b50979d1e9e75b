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
