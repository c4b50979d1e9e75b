"""``python -m bench.trust``: what the trust machinery costs per message, in-process (no
stack): sealing and opening a mail job (Fernet), the consumer's sender check, a service
token minted and verified (Ed25519) and reused. One JSON object per line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import orjson

from libs.common import broker, service_auth
from libs.common.sealing import Sealer, new_key
from libs.common.settings import CommonSettings


def per_call_us(work: Callable[[], object], seconds: float = 1.0) -> float:
    """Median of five rounds of the mean time of one call, in microseconds."""
    rounds = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            work()
            calls += 1
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return round(sorted(rounds)[2], 2)


def emit(case: str, value: float, **extra: object) -> None:
    line = {"bench": "trust", "case": case, "us_per_call": value, **extra}
    sys.stdout.write(orjson.dumps(line).decode() + "\n")


def main() -> None:
    sealer = Sealer(new_key())
    context = {
        "accept_url": "https://portal.agency.example/invitations/accept?token=" + "x" * 43,
        "portal_title": "Acme Rebrand",
        "site_name": "Northwind Agency",
        "expires_at": "2026-12-14T10:00:00+00:00",
        "invited_by": "Jane Admin",
    }
    sealed = sealer.seal(context)
    emit("seal_mail_job", per_call_us(lambda: sealer.seal(context)))
    emit("open_mail_job", per_call_us(lambda: sealer.unseal(sealed)))
    user = broker.broker_user("clientpress", "invitations")
    emit(
        "sender_check",
        per_call_us(
            lambda: broker.sender_problem(
                "clientpress", "invitation.accepted", "invitation.accepted", user
            )
        ),
    )
    keys = service_auth.load_service_keys("gateway", CommonSettings())
    emit(
        "service_token_mint",
        per_call_us(lambda: service_auth.TokenSigner(keys).headers_for("identity")),
        note="a fresh signer each call: one Ed25519 signature",
    )
    signer = service_auth.TokenSigner(keys)
    emit("service_token_reused", per_call_us(lambda: signer.headers_for("identity")))
    header = signer.headers_for("identity")["Authorization"]
    identity = service_auth.load_service_keys("identity", CommonSettings())
    emit(
        "service_token_verify",
        per_call_us(lambda: service_auth.TokenVerifier(identity).caller(header)),
        note="a fresh verifier each call: one Ed25519 verification",
    )
    verifier = service_auth.TokenVerifier(identity)
    emit("service_token_verified_before", per_call_us(lambda: verifier.caller(header)))


if __name__ == "__main__":
    main()
