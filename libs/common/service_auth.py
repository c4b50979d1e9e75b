"""Proof of the calling service on internal HTTP calls (docs/internal-api.md,
"Authentication between services").

Each service holds an Ed25519 private key (``SERVICE_KEY``) and knows every service's
public keys (``SERVICE_PUBLIC_KEYS``). A caller sends ``Authorization: Service <JWT>``
(EdDSA; issuer = caller, audience = callee, at most 60 s of life), minted once per
audience and reused for a few seconds; the callee checks signature, audience and expiry.
Asymmetric on purpose: a service's key lets it speak only as itself, never as another.

``python -m libs.common.service_auth keygen`` prints fresh keys for all five services.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .settings import CommonSettings, ConfigError

SERVICES = ("gateway", "identity", "portals", "invitations", "mailer")
# The callers of a route that only the gateway calls (a service API's CALLERS table).
GATEWAY = frozenset({"gateway"})
HEADER = "Authorization"
SCHEME = "Service"
ALGORITHM = "EdDSA"
# A token lives at most this long; a caller reuses one for REUSE_SECONDS, so a callee
# always gets at least TOKEN_SECONDS - REUSE_SECONDS of validity with each request.
TOKEN_SECONDS = 60
REUSE_SECONDS = 20
# Clock skew tolerated between hosts, on expiry and on "issued in the future": NTP keeps
# hosts within milliseconds, but a node whose sync hiccups drifts by seconds, and 5 s
# refused every internal call of a caller 6 s ahead (docs/deploying.md, "Clocks").
LEEWAY_SECONDS = 30
CLOCKS_HINT = "keep every host's clock in step with NTP (docs/deploying.md, Clocks)"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

Clock = Callable[[], float]


def _development_seed(service: str) -> bytes:
    # Known to everyone who reads this file, on purpose: they make `make test`-style local
    # runs work with no setup, and a service refuses them unless PUBLIC_URL is local.
    return hashlib.sha256(f"clientpress development service key: {service}".encode()).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


DEVELOPMENT_KEYS: Mapping[str, Ed25519PrivateKey] = {
    name: Ed25519PrivateKey.from_private_bytes(_development_seed(name)) for name in SERVICES
}
_DEVELOPMENT_PUBLIC = frozenset(_raw_public(k.public_key()) for k in DEVELOPMENT_KEYS.values())
_DEVELOPMENT_PRIVATE = frozenset(_raw_private(k) for k in DEVELOPMENT_KEYS.values())


def encode_private(key: Ed25519PrivateKey) -> str:
    """The ``SERVICE_KEY`` form: base64 of the raw 32-byte seed."""
    return _b64(_raw_private(key))


def encode_public(key: Ed25519PublicKey) -> str:
    return _b64(_raw_public(key))


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """Base64 of the raw 32-byte seed, or a PEM (PKCS#8) Ed25519 private key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM key is not an Ed25519 private key")
        return key
    raw = _decode_b64(text)
    if len(raw) != 32:
        raise ValueError(f"must be base64 of 32 bytes (an Ed25519 seed), got {len(raw)} bytes")
    return Ed25519PrivateKey.from_private_bytes(raw)


def parse_public_key(text: str) -> Ed25519PublicKey:
    raw = _decode_b64(text.strip())
    if len(raw) != 32:
        raise ValueError(f"a public key must be base64 of 32 bytes, got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def _decode_b64(text: str) -> bytes:
    try:
        # urlsafe alphabet accepted too; padding may be left off
        padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
        return base64.b64decode(padded, validate=True)
    except ValueError:
        raise ValueError("is not valid base64") from None


def parse_public_table(text: str) -> dict[str, tuple[Ed25519PublicKey, ...]]:
    """``gateway=<b64>,identity=<b64>|<b64>,…``: during a rotation a service may have
    several keys, separated by ``|``; entries by commas (or whitespace)."""
    table: dict[str, tuple[Ed25519PublicKey, ...]] = {}
    for entry in text.replace("\n", ",").replace(" ", ",").split(","):
        if not entry:
            continue
        name, sep, keys = entry.partition("=")
        name = name.strip().lower()
        if not sep or name not in SERVICES:
            raise ValueError(f"{entry[:40]!r} is not <service>=<key>, service one of {SERVICES}")
        if name in table:
            raise ValueError(f"{name} is listed twice (separate its keys with '|')")
        try:
            table[name] = tuple(parse_public_key(k) for k in keys.split("|") if k)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if not table[name]:
            raise ValueError(f"{name} has no key")
    return table


def is_local(settings: CommonSettings) -> bool:
    host = (settings.public_url.host or "").lower()
    return host in LOCAL_HOSTS or host.endswith(".localhost")


@dataclass(frozen=True)
class ServiceKeys:
    """This service's private key and the public keys it accepts from each service."""

    service: str
    private: Ed25519PrivateKey
    public: Mapping[str, tuple[Ed25519PublicKey, ...]]

    @classmethod
    def development(cls, service: str) -> ServiceKeys:
        return cls(service, DEVELOPMENT_KEYS[service], development_public_table())

    def uses_development_keys(self) -> bool:
        return _raw_private(self.private) in _DEVELOPMENT_PRIVATE

    def trusts_development_keys(self) -> bool:
        return any(_raw_public(k) in _DEVELOPMENT_PUBLIC for ks in self.public.values() for k in ks)


def development_public_table() -> dict[str, tuple[Ed25519PublicKey, ...]]:
    return {name: (key.public_key(),) for name, key in DEVELOPMENT_KEYS.items()}


def load_service_keys(service: str, settings: CommonSettings) -> ServiceKeys:
    """The keys from ``SERVICE_KEY`` and ``SERVICE_PUBLIC_KEYS``, the shipped development
    keys where they are unset; refused (ConfigError naming the variable) when a
    development key would serve a PUBLIC_URL that is not local."""
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r} for SERVICE_KEY")
    try:
        private = (
            parse_private_key(settings.service_key.get_secret_value())
            if settings.service_key is not None
            else DEVELOPMENT_KEYS[service]
        )
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: SERVICE_KEY: {exc}") from None
    try:
        public = (
            parse_public_table(settings.service_public_keys)
            if settings.service_public_keys is not None
            else development_public_table()
        )
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: SERVICE_PUBLIC_KEYS: {exc}") from None
    keys = ServiceKeys(service, private, public)
    if not is_local(settings):
        where = f"PUBLIC_URL={settings.public_base} is not localhost"
        how = "generate keys with `python -m libs.common.service_auth keygen` (docs/deploying.md)"
        if keys.uses_development_keys():
            state = "unset" if settings.service_key is None else "a development key"
            raise ConfigError(
                f"invalid configuration: SERVICE_KEY is {state}: the development key shipped"
                f" in the repository is public, and {where}; {how}"
            )
        if keys.trusts_development_keys():
            unset = settings.service_public_keys is None
            state = "is unset" if unset else "lists a development key"
            raise ConfigError(
                f"invalid configuration: SERVICE_PUBLIC_KEYS {state}: anyone could sign"
                f" as a service with the public development keys, and {where}; {how}"
            )
    own = _raw_public(private.public_key())
    if service in public and own not in {_raw_public(k) for k in public[service]}:
        raise ConfigError(
            f"invalid configuration: SERVICE_KEY is not the key SERVICE_PUBLIC_KEYS lists for"
            f" {service}: the other services would refuse its calls"
        )
    return keys


class TokenSigner:
    """Mints this service's tokens, one per audience, reused for REUSE_SECONDS."""

    def __init__(self, keys: ServiceKeys, clock: Clock = time.time) -> None:
        self.keys = keys
        self.clock = clock
        self._cache: dict[str, tuple[str, float]] = {}

    def token_for(self, audience: str) -> str:
        now = self.clock()
        cached = self._cache.get(audience)
        if cached is not None and now < cached[1]:
            return cached[0]
        issued = int(now)
        token = jwt.encode(
            {
                "iss": self.keys.service,
                "aud": audience,
                "iat": issued,
                "exp": issued + TOKEN_SECONDS,
            },
            self.keys.private,
            algorithm=ALGORITHM,
        )
        self._cache[audience] = (token, now + REUSE_SECONDS)
        return token

    def headers_for(self, audience: str) -> dict[str, str]:
        return {HEADER: f"{SCHEME} {self.token_for(audience)}"}


class ProofRefused(Exception):
    """The proof is missing or invalid; the message says why (never the token)."""


@dataclass
class TokenVerifier:
    """Checks a token addressed to this service; remembers the ones it has verified
    until they expire, so a caller's reused token costs one signature check."""

    keys: ServiceKeys
    clock: Clock = time.time
    max_remembered: int = 4096
    _verified: dict[str, tuple[str, float]] = field(default_factory=dict)

    def caller(self, header: str | None) -> str:
        """The verified calling service, or ProofRefused."""
        if not header:
            raise ProofRefused("no Authorization header")
        scheme, _, token = header.partition(" ")
        if scheme != SCHEME or not token:
            raise ProofRefused(f"the Authorization scheme is not {SCHEME!r}")
        token = token.strip()
        now = self.clock()
        known = self._verified.get(token)
        if known is not None:
            issuer, expires = known
            if now <= expires + LEEWAY_SECONDS:
                return issuer
            del self._verified[token]
            raise ProofRefused("the token has expired")
        issuer, expires = self._verify(token, now)
        if len(self._verified) >= self.max_remembered:
            self._forget_expired(now)
        self._verified[token] = (issuer, expires)
        return issuer

    def _verify(self, token: str, now: float) -> tuple[str, float]:
        try:
            # Unverified, only to pick the issuer's public keys; verified just below.
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise ProofRefused("the token is malformed") from None
        issuer = unverified["payload"].get("iss")
        if unverified["header"].get("alg") != ALGORITHM or not isinstance(issuer, str):
            raise ProofRefused("the token is not a service token")
        candidates = self.keys.public.get(issuer, ())
        if not candidates:
            raise ProofRefused(f"no public key is known for {issuer[:40]!r}")
        for public in candidates:
            try:
                # The times are judged below, on this service's clock, so that a refusal
                # can say by how much the caller's clock is off.
                verified = jwt.decode(
                    token,
                    public,
                    algorithms=[ALGORITHM],
                    audience=self.keys.service,
                    issuer=issuer,
                    options={
                        "require": ["iss", "aud", "iat", "exp"],
                        "verify_exp": False,
                        "verify_iat": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise ProofRefused(f"the token is not for {self.keys.service}") from None
            except jwt.PyJWTError as exc:
                raise ProofRefused(f"the token is invalid ({type(exc).__name__})") from None
            try:
                expires, issued = float(verified["exp"]), float(verified["iat"])
            except (TypeError, ValueError):
                raise ProofRefused("the token's iat and exp are not times") from None
            if expires - issued > TOKEN_SECONDS:
                raise ProofRefused(f"the token lives longer than {TOKEN_SECONDS} s")
            if issued > now + LEEWAY_SECONDS:
                raise ProofRefused(
                    f"the token was issued {issued - now:.0f} s ahead of this host's clock,"
                    f" more than the {LEEWAY_SECONDS} s tolerated: {issuer}'s clock is ahead"
                    f" of this one's; {CLOCKS_HINT}"
                )
            if expires + LEEWAY_SECONDS < now:
                raise ProofRefused(
                    f"the token has expired: it expired {now - expires:.0f} s ago by this"
                    f" host's clock; a token is used at most {REUSE_SECONDS} s after it is"
                    f" issued, so if {issuer} sent it just now its clock is behind this"
                    f" one's; {CLOCKS_HINT}"
                )
            return issuer, expires
        raise ProofRefused(f"the signature is not {issuer}'s")

    def _forget_expired(self, now: float) -> None:
        for token, (_, expires) in list(self._verified.items()):
            if expires + LEEWAY_SECONDS < now:
                del self._verified[token]
        if len(self._verified) >= self.max_remembered:
            self._verified.clear()


# ---------------------------------------------------------------------------------------
# keygen
# ---------------------------------------------------------------------------------------


def generate(services: Iterable[str] = SERVICES) -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in services}


def public_table_text(keys: Mapping[str, Ed25519PrivateKey]) -> str:
    return ",".join(f"{name}={encode_public(k.public_key())}" for name, k in keys.items())


def compose_variable(service: str) -> str:
    """The deploy/.env variable compose hands to ``service`` as its SERVICE_KEY."""
    return f"CLIENTPRESS_{service.upper()}_SERVICE_KEY"


COMPOSE_PUBLIC_VARIABLE = "CLIENTPRESS_SERVICE_PUBLIC_KEYS"


def keygen_lines(keys: Mapping[str, Ed25519PrivateKey]) -> list[str]:
    lines = [f"{compose_variable(n)}={encode_private(k)}" for n, k in keys.items()]
    lines.append(f"{COMPOSE_PUBLIC_VARIABLE}={public_table_text(keys)}")
    return lines


def write_env_file(path: Path, lines: list[str]) -> None:
    """Set these variables in an env file, keeping its other lines; readable by the
    owner only."""
    names = {line.partition("=")[0] for line in lines}
    kept = []
    if path.exists():
        kept = [
            line for line in path.read_text().splitlines() if line.partition("=")[0] not in names
        ]
    write_private(path, "\n".join([*kept, *lines]) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write a file of secrets that only its owner may read, from its first byte: made
    0600, and an existing file made so before it is emptied and written (a chmod after
    the write left a moment when anyone could open it, and keep reading what came)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "w") as out:
        out.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m libs.common.service_auth",
        description="Fresh Ed25519 keys for the five services' internal calls.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser(
        "keygen",
        help="print one private key per service and the public table",
        description=(
            "Prints CLIENTPRESS_<SERVICE>_SERVICE_KEY=... (give each to its service only, as"
            " SERVICE_KEY) and CLIENTPRESS_SERVICE_PUBLIC_KEYS=... (SERVICE_PUBLIC_KEYS of"
            " every service)."
        ),
    )
    keygen.add_argument("--env-file", type=Path, help="write the lines into this env file")
    public = sub.add_parser("public", help="print the public key of SERVICE_KEY (stdin)")
    public.add_argument("--service", default="")
    args = parser.parse_args(argv)
    if args.command == "public":
        key = parse_private_key(sys.stdin.read())
        prefix = f"{args.service}=" if args.service else ""
        print(prefix + encode_public(key.public_key()))
        return 0
    lines = keygen_lines(generate())
    if args.env_file is not None:
        write_env_file(args.env_file, lines)
        print(f"wrote {len(lines)} variables to {args.env_file} (mode 600)", file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
