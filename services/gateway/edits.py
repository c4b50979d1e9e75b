"""Two people saving one portal editor: what a Save changes, and where it clashes with a
change someone else saved after the form was opened (a three-way merge, field by field).

The form carries a fingerprint of each field as it was shown (`shown`). A field left as
shown is not sent, so a change saved meanwhile by someone else stays; a field both changed
is a clash, and nothing is saved until the person has seen it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EDITED = ("title", "slug", "content", "status")


def _fingerprint(value: Any) -> str:
    # Browsers send a textarea's line breaks as CRLF: the same text either way.
    text = str(value or "").replace("\r\n", "\n")
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def fingerprints(portal: Mapping[str, Any]) -> str:
    """The hidden `shown` field of an editor showing ``portal``."""
    return ".".join(_fingerprint(portal.get(field)) for field in EDITED)


@dataclass(frozen=True)
class Edit:
    changes: dict[str, Any]
    clashes: list[str]
    shown: str  # for the form shown again after a clash: the clashing fields as they are now


def plan_edit(shown: str, current: Mapping[str, Any], submitted: Mapping[str, Any]) -> Edit:
    """``submitted`` holds the fields the form sets (a Slug left empty is not among them).
    Without a valid ``shown`` (a form from before this check), every submitted field that
    differs from ``current`` is a change, as it always was."""
    base = shown.split(".")
    known = len(base) == len(EDITED)
    changes: dict[str, Any] = {}
    clashes: list[str] = []
    for i, field in enumerate(EDITED):
        if field not in submitted:
            continue
        mine, now = _fingerprint(submitted[field]), _fingerprint(current.get(field))
        if mine == now or (known and mine == base[i]):
            continue
        if known and now != base[i]:
            clashes.append(field)
            base[i] = now
            continue
        changes[field] = submitted[field]
    return Edit(changes, clashes, ".".join(base) if known else fingerprints(current))
