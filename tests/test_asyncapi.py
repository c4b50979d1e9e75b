"""docs/asyncapi.yaml is generated from the event models and must not drift from them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from libs.common.events import EVENTS, PRIVATE_TYPES, Envelope

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_asyncapi", ROOT / "scripts/gen_asyncapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_asyncapi", module)
    spec.loader.exec_module(module)
    return module


def test_committed_document_equals_the_generated_one() -> None:
    committed = (ROOT / "docs/asyncapi.yaml").read_text()
    assert committed == _generator().render(), "run: python scripts/gen_asyncapi.py"


def test_every_event_has_a_channel_a_schema_and_a_valid_example() -> None:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docs/asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("2.6")
    messages = doc["components"]["messages"]
    schemas = doc["components"]["schemas"]
    assert set(doc["channels"]) == {event_type for event_type, _ in EVENTS}
    for (event_type, version), model in EVENTS.items():
        channel = doc["channels"][event_type]
        exchange = channel["bindings"]["amqp"]["exchange"]["name"]
        private = event_type in PRIVATE_TYPES
        assert exchange == ("clientpress.mail" if private else "clientpress.events")
        assert channel.get("x-internal", False) is private
        operation = "publish" if event_type == "invitation.requested" else "subscribe"
        # A type with several versions lists each of them.
        listed = channel[operation]["message"]
        refs = [m["$ref"] for m in listed["oneOf"]] if "oneOf" in listed else [listed["$ref"]]
        ref = f"{event_type}.v{version}"
        assert f"#/components/messages/{ref}" in refs
        message = messages[ref]
        assert model.__name__ in schemas
        data_ref = message["payload"]["allOf"][1]["properties"]["data"]["$ref"]
        assert data_ref.endswith("/" + model.__name__)
        (example,) = message["examples"]
        envelope = Envelope.model_validate(example["payload"])
        assert (envelope.type, envelope.version) == (event_type, version)
        model.model_validate(envelope.data)
    for message in messages.values():
        assert "token=" not in str(message) or message["name"].startswith("mail.requested")
