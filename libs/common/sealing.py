"""Sealed mail jobs: the context of a mail job (its one-time link) is encrypted and
authenticated under ``MAIL_JOB_KEY`` (Fernet) by the service that writes the job and
opened only by the mailer, right before it renders the email. So the link is unreadable
in every place the job is written down on its way (the producers' outbox rows, the
broker's message store, a dead-letter queue, the mailer's queued rows, any backup of
them), and a job not sealed with the key is never sent.

The same sealer keeps webhook signing secrets (which must stay usable, so can't be
hashed) encrypted at rest under ``WEBHOOK_SECRET_KEY``."""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED = "sealed"

# The local default, and only that: services refuse it outside localhost
# (libs/common/settings.py CommonSettings.refuse_known_secrets).
DEVELOPMENT_KEY = "Y2xpZW50cHJlc3MtZGV2ZWxvcG1lbnQta2V5LTAwMDA="
# The same rule for webhook signing secrets (WEBHOOK_SECRET_KEY, the mailer's).
WEBHOOK_DEVELOPMENT_KEY = "Y2xpZW50cHJlc3MtZGV2LXdlYmhvb2stc2VjcmV0cy0="


def key_material(key: str) -> bytes | None:
    """The bytes Fernet takes from a key as written, None when it takes none. Fernet's
    base64 skips whatever isn't of its alphabet (quotes an env file kept, a stray dot), so
    two spellings can be one key: compare keys by this, never as text."""
    try:
        raw = base64.urlsafe_b64decode(key.strip().encode("ascii", "ignore"))
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == 32 else None


class Unsealable(ValueError):
    """A mail job whose context isn't sealed with one of our keys."""


class Sealer:
    """``keys``: comma-separated Fernet keys; the first seals, any of them opens (so a key
    can be rotated: add the new one first, drain, then drop the old)."""

    def __init__(self, keys: str, name: str = "MAIL_JOB_KEY") -> None:
        self.name = name
        try:
            fernets = [Fernet(k.strip()) for k in keys.split(",") if k.strip()]
            self._fernet = MultiFernet(fernets)
        except ValueError as exc:
            raise ValueError(
                f"{name} must be Fernet keys (32 url-safe base64-encoded bytes), comma-separated"
            ) from exc
        self._first = fernets[0]
        self.rotating = len(fernets) > 1

    def resealed(self, token: str) -> str | None:
        """``token`` sealed afresh under the first key when another of the keys sealed it
        (a key being rotated out), keeping its time; None when the first key sealed it.
        :class:`Unsealable` when no key opens it."""
        try:
            self._first.decrypt(token.encode())
            return None
        except InvalidToken:
            pass
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise Unsealable(f"the value does not open with {self.name}") from None

    def seal(self, context: Mapping[str, str]) -> dict[str, str]:
        return {SEALED: self._fernet.encrypt(orjson.dumps(dict(context))).decode()}

    def unseal(self, context: Mapping[str, str]) -> dict[str, str]:
        token = context.get(SEALED)
        if not token or len(context) != 1:
            raise Unsealable("the mail job is not sealed")
        try:
            opened = orjson.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, orjson.JSONDecodeError):
            raise Unsealable("the mail job's seal does not open with MAIL_JOB_KEY") from None
        if not isinstance(opened, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in opened.items()
        ):
            raise Unsealable("the mail job's sealed context is not a mapping of strings")
        return opened

    def seal_text(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def open_text(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise Unsealable(f"the value does not open with {self.name}") from None


@functools.lru_cache(maxsize=8)
def sealer_for(keys: str, name: str = "MAIL_JOB_KEY") -> Sealer:
    return Sealer(keys, name)


def new_key() -> str:
    return Fernet.generate_key().decode()
