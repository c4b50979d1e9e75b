"""The hasher's pool: how many argon2id hashes run at once, and what that costs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.identity.passwords import Passwords
from services.identity.settings import IdentitySettings, default_hash_concurrency


class Probe:
    """A stand-in hasher that records how many calls overlap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def hash(self, password: str) -> str:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return "hash"


@pytest.mark.parametrize("workers", [1, 3])
async def test_no_more_hashes_run_at_once_than_allowed(workers: int) -> None:
    probe = Probe()
    passwords = Passwords(probe, workers=workers)  # type: ignore[arg-type]
    try:
        await asyncio.gather(*(passwords.hash(f"pw-{i}") for i in range(12)))
    finally:
        passwords.close()
    assert probe.most == workers


def test_default_is_one_hash_per_two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, expected in ((1, 1), (2, 1), (4, 2), (None, 1)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert default_hash_concurrency() == expected
        assert IdentitySettings().identity_hash_concurrency == expected
    monkeypatch.setenv("IDENTITY_HASH_CONCURRENCY", "3")
    assert IdentitySettings().identity_hash_concurrency == 3
    monkeypatch.setenv("IDENTITY_HASH_CONCURRENCY", "0")
    with pytest.raises(ValueError, match="identity_hash_concurrency"):
        IdentitySettings()
