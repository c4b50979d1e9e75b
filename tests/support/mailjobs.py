"""Reading mail jobs as the mailer does: their context is sealed (libs/common/sealing.py)
with MAIL_JOB_KEY; the services under test use the development key unless told otherwise."""

from __future__ import annotations

from typing import Any

from libs.common.sealing import DEVELOPMENT_KEY, Sealer


def opened(envelope: dict[str, Any], key: str = DEVELOPMENT_KEY) -> dict[str, Any]:
    """The envelope with a mail job's context unsealed (other events as they are)."""
    if envelope.get("type") != "mail.requested":
        return envelope
    data = dict(envelope["data"])
    data["context"] = Sealer(key).unseal(data["context"])
    return {**envelope, "data": data}
