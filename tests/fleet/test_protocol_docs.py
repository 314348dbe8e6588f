from __future__ import annotations

from pathlib import Path

from fleet.docs import protocol_markdown
from fleet.topics import TOPIC_TABLE

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_protocol_doc_is_current() -> None:
    assert DOC.read_text() == protocol_markdown(), "docs/protocol.md is stale: run `make docs`"


def test_protocol_doc_names_every_topic_and_message() -> None:
    text = protocol_markdown()
    for row in TOPIC_TABLE:
        assert f"`{{p}}/{row.pattern}`" in text
    for name in ("DeviceStatus", "DesiredState", "TelemetryWindow", "BlobManifest", "Histogram", "Capabilities"):
        assert f"### {name}" in text
