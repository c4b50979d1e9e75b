"""Sealed values (libs/common/sealing.py) across a key rotation."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from libs.common.sealing import Sealer, Unsealable


def test_a_value_under_the_second_key_is_sealed_afresh_under_the_first_keeping_its_time() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = Sealer(old).seal_text("whsec_x")
    rotating = Sealer(f"{new},{old}")
    assert rotating.rotating and not Sealer(new).rotating
    fresh = rotating.resealed(sealed)
    assert fresh is not None and Sealer(new).open_text(fresh) == "whsec_x"
    assert Fernet(new).extract_timestamp(fresh.encode()) == Fernet(old).extract_timestamp(
        sealed.encode()
    )
    assert rotating.resealed(fresh) is None  # already under the first key
    with pytest.raises(Unsealable):
        rotating.resealed(Sealer(Fernet.generate_key().decode()).seal_text("lost"))
