"""Reading mail jobs as the mailer does: their context is sealed (libs/common/sealing.py)
with MAIL_JOB_KEY; the services under test use the development key unless told otherwise."""

from __future__ import annotations

from typing import Any

from libs.common.sealing import DEVELOPMENT_KEY, Sealer


def opened(envelope: dict[str, Any], key: str = DEVELOPMENT_KEY) -> dict[str, Any]:
    """The envelope with a mail job's context unsealed (other events as they are); in a
    version 2 message (several jobs), each job's."""
    if envelope.get("type") != "mail.requested":
        return envelope
    if envelope.get("version") == 2:
        jobs = [_unsealed(job, key) for job in envelope["data"]["jobs"]]
        return {**envelope, "data": {**envelope["data"], "jobs": jobs}}
    return {**envelope, "data": _unsealed(envelope["data"], key)}


def jobs_of(envelope: dict[str, Any], ref_id: str | None = None) -> list[dict[str, Any]]:
    """Each mail job of a ``mail.requested`` envelope as a version 1 envelope of its own
    (only those about ``ref_id`` if given), so a test reads one job however it came."""
    if envelope.get("version") != 2:
        return [envelope]
    return [
        {**envelope, "version": 1, "data": job}
        for job in envelope["data"]["jobs"]
        if ref_id is None or job["ref_id"] == ref_id
    ]


def _unsealed(job: dict[str, Any], key: str) -> dict[str, Any]:
    return {**job, "context": Sealer(key).unseal(job["context"])}
