"""The password policy's lengths, once: identity enforces the whole policy (common
passwords, the owner's address); the gateway checks the lengths before calling it, so a
form can say what's wrong without a round trip."""

from __future__ import annotations

MIN_PASSWORD_LENGTH = 12
# argon2id hashes whatever it is given; a bound keeps one request from costing seconds.
MAX_PASSWORD_LENGTH = 1024
