"""Service tokens (libs/common/service_auth.py): keys as configured, development keys
refused off localhost, tokens bound to issuer, audience and a short life."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.common.service_auth import (
    DEVELOPMENT_KEYS,
    REUSE_SECONDS,
    SERVICES,
    ProofRefused,
    ServiceKeys,
    TokenSigner,
    TokenVerifier,
    encode_private,
    encode_public,
    generate,
    keygen_lines,
    load_service_keys,
    main,
    parse_public_table,
    public_table_text,
    write_private,
)
from libs.common.settings import CommonSettings, ConfigError
from libs.common.web import base_app, require_service_proof

KEYS = generate()
TABLE = public_table_text(KEYS)


def settings(service: str | None = "gateway", **values: str) -> CommonSettings:
    if service is not None:
        values.setdefault("service_key", encode_private(KEYS[service]))
        values.setdefault("service_public_keys", TABLE)
    return CommonSettings.model_validate(values)


def keys_of(service: str, table: str = TABLE) -> ServiceKeys:
    return ServiceKeys(service, KEYS[service], parse_public_table(table))


class Clock:
    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def proof(token: str) -> str:
    return f"Service {token}"


def test_configured_keys_are_used_and_development_keys_serve_localhost_only() -> None:
    keys = load_service_keys("gateway", settings(public_url="https://clients.example.com"))
    assert encode_private(keys.private) == encode_private(KEYS["gateway"])
    assert set(keys.public) == set(SERVICES)
    local = load_service_keys("identity", settings(None))
    assert local.uses_development_keys() and local.trusts_development_keys()
    assert load_service_keys("identity", settings(None, public_url="http://127.0.0.1:9"))


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({}, "SERVICE_KEY is unset"),
        ({"service_public_keys": TABLE}, "SERVICE_KEY is unset"),
        (
            {"service_key": encode_private(DEVELOPMENT_KEYS["gateway"]), "service_public_keys": ""},
            "SERVICE_KEY is a development key",
        ),
        ({"service_key": encode_private(KEYS["gateway"])}, "SERVICE_PUBLIC_KEYS is unset"),
        (
            {
                "service_key": encode_private(KEYS["gateway"]),
                "service_public_keys": TABLE.replace(
                    f"mailer={encode_public(KEYS['mailer'].public_key())}",
                    f"mailer={encode_public(DEVELOPMENT_KEYS['mailer'].public_key())}",
                ),
            },
            "SERVICE_PUBLIC_KEYS lists a development key",
        ),
    ],
)
def test_development_keys_are_refused_when_public_url_is_not_local(
    values: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_service_keys(
            "gateway", settings(None, public_url="https://clients.example.com", **values)
        )
    assert variable in str(refused.value)
    assert "PUBLIC_URL=https://clients.example.com is not localhost" in str(refused.value)
    assert "keygen" in str(refused.value)


def test_malformed_keys_are_refused_naming_the_variable() -> None:
    for values, name in (
        ({"service_key": "not base64!"}, "SERVICE_KEY"),
        ({"service_key": "c2hvcnQ="}, "SERVICE_KEY"),
        ({"service_public_keys": "gateway"}, "SERVICE_PUBLIC_KEYS"),
        ({"service_public_keys": "nobody=AAAA"}, "SERVICE_PUBLIC_KEYS"),
        ({"service_public_keys": "gateway=AAAA"}, "SERVICE_PUBLIC_KEYS"),
        ({"service_public_keys": f"{TABLE},gateway=AAAA"}, "SERVICE_PUBLIC_KEYS"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_service_keys("gateway", settings(**values))


def test_a_private_key_that_the_table_does_not_list_is_refused() -> None:
    other = encode_private(Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError, match="SERVICE_KEY is not the key SERVICE_PUBLIC_KEYS"):
        load_service_keys("gateway", settings(service_key=other))


def test_a_pem_private_key_is_accepted() -> None:
    pem = (
        KEYS["portals"]
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    keys = load_service_keys("portals", settings("portals", service_key=pem))
    assert encode_private(keys.private) == encode_private(KEYS["portals"])


def test_a_token_names_caller_and_audience_and_is_reused_for_a_few_seconds() -> None:
    clock = Clock()
    signer = TokenSigner(keys_of("gateway"), clock=clock)
    token = signer.token_for("identity")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "gateway" and claims["aud"] == "identity"
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert signer.token_for("identity") == token
    assert signer.token_for("portals") != token
    clock.offset = 21
    assert signer.token_for("identity") != token
    assert TokenVerifier(keys_of("identity")).caller(proof(token)) == "gateway"


def test_a_token_for_another_audience_an_old_one_or_a_forged_one_is_refused() -> None:
    identity = TokenVerifier(keys_of("identity"))
    for_portals = TokenSigner(keys_of("gateway")).token_for("portals")
    with pytest.raises(ProofRefused, match="not for identity"):
        identity.caller(proof(for_portals))
    expired = TokenSigner(keys_of("gateway"), clock=Clock(-120)).token_for("identity")
    with pytest.raises(ProofRefused, match="expired"):
        identity.caller(proof(expired))
    # signed by a key that is not the gateway's, claiming to be the gateway
    impostor = ServiceKeys("gateway", Ed25519PrivateKey.generate(), parse_public_table(TABLE))
    with pytest.raises(ProofRefused, match="signature is not gateway's"):
        identity.caller(proof(TokenSigner(impostor).token_for("identity")))
    # the mailer's own, valid token: proven as the mailer, never as the gateway
    assert identity.caller(proof(TokenSigner(keys_of("mailer")).token_for("identity"))) == (
        "mailer"
    )


def test_missing_malformed_and_long_lived_proofs_are_refused() -> None:
    identity = TokenVerifier(keys_of("identity"))
    now = int(time.time())
    long_lived = jwt.encode(
        {"iss": "gateway", "aud": "identity", "iat": now, "exp": now + 3600},
        KEYS["gateway"],
        algorithm="EdDSA",
    )
    for header, reason in (
        (None, "no Authorization header"),
        ("Bearer x", "scheme"),
        ("Service ", "scheme"),
        ("Service not-a-jwt", "malformed"),
        (proof(long_lived), "longer than 60 s"),
    ):
        with pytest.raises(ProofRefused, match=reason):
            identity.caller(header)


def test_a_remembered_token_still_expires() -> None:
    clock = Clock()
    identity = TokenVerifier(keys_of("identity"), clock=clock)
    token = TokenSigner(keys_of("gateway")).token_for("identity")
    assert identity.caller(proof(token)) == "gateway"
    assert identity.caller(proof(token)) == "gateway"
    clock.offset = 120
    with pytest.raises(ProofRefused, match="expired"):
        identity.caller(proof(token))


def test_during_a_rotation_both_keys_of_a_service_are_accepted() -> None:
    new = Ed25519PrivateKey.generate()
    old_public = encode_public(KEYS["gateway"].public_key())
    rotating = TABLE.replace(
        f"gateway={old_public}", f"gateway={old_public}|{encode_public(new.public_key())}"
    )
    identity = TokenVerifier(keys_of("identity", rotating))
    old_token = TokenSigner(keys_of("gateway", rotating)).token_for("identity")
    new_keys = ServiceKeys("gateway", new, parse_public_table(rotating))
    new_token = TokenSigner(new_keys).token_for("identity")
    assert identity.caller(proof(old_token)) == "gateway"
    assert identity.caller(proof(new_token)) == "gateway"
    assert load_service_keys(
        "gateway", settings(service_key=encode_private(new), service_public_keys=rotating)
    )


def test_keygen_prints_a_key_per_service_and_the_public_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["keygen"]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert set(values) == {
        *(f"CLIENTPRESS_{s.upper()}_SERVICE_KEY" for s in SERVICES),
        "CLIENTPRESS_SERVICE_PUBLIC_KEYS",
    }
    table = values["CLIENTPRESS_SERVICE_PUBLIC_KEYS"]
    for service in SERVICES:
        keys = load_service_keys(
            service,
            settings(
                None,
                public_url="https://clients.example.com",
                service_key=values[f"CLIENTPRESS_{service.upper()}_SERVICE_KEY"],
                service_public_keys=table,
            ),
        )
        assert not keys.uses_development_keys()
    env_file = tmp_path / ".env"
    env_file.write_text("CLIENTPRESS_ENV_FILE=.env\nCLIENTPRESS_GATEWAY_SERVICE_KEY=old\n")
    assert main(["keygen", "--env-file", str(env_file)]) == 0
    written = env_file.read_text().splitlines()
    assert written[0] == "CLIENTPRESS_ENV_FILE=.env"
    assert len(written) == 1 + len(keygen_lines(KEYS))
    assert "CLIENTPRESS_GATEWAY_SERVICE_KEY=old" not in written
    assert env_file.stat().st_mode & 0o077 == 0


def test_public_prints_the_table_entry_of_a_private_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(encode_private(KEYS["mailer"]) + "\n"))
    assert main(["public", "--service", "mailer"]) == 0
    assert capsys.readouterr().out.strip() == f"mailer={encode_public(KEYS['mailer'].public_key())}"


def test_an_app_refuses_to_build_when_its_callers_table_misses_a_route() -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    for callers, problem in (
        ({}, "routes without callers ['POST /things']"),
        (
            {"POST /things": {"gateway"}, "GET /gone": {"gateway"}},
            "entries without a route ['GET /gone']",
        ),
        ({"POST /things": {"gatewya"}}, "unknown callers ['gatewya']"),
    ):
        app = base_app("identity")
        app.router.add_post("/things", handler)
        with pytest.raises(ValueError, match=re.escape(problem)):
            require_service_proof(app, CommonSettings(), callers)


def test_a_file_of_secrets_is_private_before_anything_new_is_written(tmp_path: Path) -> None:
    """An existing file readable by anyone (0644) is made 0600 before it is emptied and
    the new secrets go in: whoever opened it before then sees only what it already held."""
    path = tmp_path / ".env"
    path.write_text("OLD=1\n")
    path.chmod(0o644)
    seen: list[int] = []
    truncate = os.ftruncate

    def watched(fd: int, length: int) -> None:
        seen.append(path.stat().st_mode & 0o777)
        truncate(fd, length)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "ftruncate", watched)
        write_private(path, "NEW=2\n")
    assert seen == [0o600]
    assert path.read_text() == "NEW=2\n" and path.stat().st_mode & 0o777 == 0o600


def test_a_caller_whose_clock_is_off_by_half_a_minute_is_still_heard() -> None:
    """Hosts' clocks drift apart by seconds when NTP hiccups: a caller 25 s ahead, or 60 s
    behind (its token then reused for 20 s), is still the service it says it is."""
    identity = TokenVerifier(keys_of("identity"))
    ahead = TokenSigner(keys_of("gateway"), clock=Clock(25)).token_for("identity")
    assert identity.caller(proof(ahead)) == "gateway"
    behind = TokenSigner(keys_of("gateway"), clock=Clock(-60)).token_for("identity")
    later = TokenVerifier(keys_of("identity"), clock=Clock(REUSE_SECONDS))
    assert later.caller(proof(behind)) == "gateway"


def test_a_refusal_for_the_clocks_says_so_and_by_how_much() -> None:
    identity = TokenVerifier(keys_of("identity"))
    ahead = TokenSigner(keys_of("gateway"), clock=Clock(600)).token_for("identity")
    with pytest.raises(ProofRefused) as refused:
        identity.caller(proof(ahead))
    assert re.search(r"issued (599|600|601) s ahead of this host's clock", str(refused.value))
    assert "NTP" in str(refused.value)
    behind = TokenSigner(keys_of("gateway"), clock=Clock(-600)).token_for("identity")
    with pytest.raises(ProofRefused) as refused:
        identity.caller(proof(behind))
    assert re.search(r"expired (539|540|541) s ago by this host's clock", str(refused.value))
    assert "NTP" in str(refused.value)
