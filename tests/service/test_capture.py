"""The traffic capture: off by default, a sampled share of requests, one row per scored sample with inline
images stored once as files, the redaction hook applied before anything is written, old hours deleted, and
a hook that does not import refused at start-up."""

from __future__ import annotations

import base64
import io
import json

import pytest

from tests.helpers import shape_image, uri
from vlreward.service.capture import CaptureError, TrafficCapture, load_redact
from vlreward.service.schemas import Sample
from vlreward.service.settings import Settings

HOUR = 3600.0
NOW = 1_800_000_000.0  # 2027-01-15T08:00Z


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    shape_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def masked(row: dict) -> dict | None:
    """A redaction hook: drops rows that mention a secret, masks digits in the prompt of the others."""
    if "secret" in row.get("response", ""):
        return None
    return row | {"prompt": "".join("#" if c.isdigit() else c for c in row["prompt"])}


def test_capture_is_off_by_default_and_needs_a_folder():
    assert TrafficCapture.from_settings(Settings()) is None
    with pytest.raises(ValueError, match="set capture_dir"):
        Settings(capture_rate=0.5)


def test_a_captured_request_is_one_row_per_scored_sample_with_its_images_as_files(tmp_path):
    draws = iter([0.05, 0.5])  # the first request is under the rate, the second not
    capture = TrafficCapture(tmp_path, 0.1, 24, redact=masked, draw=lambda: next(draws), clock=lambda: NOW)
    red = uri(shape_image("red"))
    samples = [Sample(prompt="Call 555 0100?", response="Yes.", image=red, id="mine"),
               Sample(prompt="Same picture", images=[red, base64.b64encode(png("blue")).decode()], response="ok"),
               Sample(prompt="p", response="the secret is 42"), Sample(prompt="failed", response="x")]  # fmt: skip
    assert capture.offer("/score", "rm", samples, [0.5, -1.25, 3.0, None], "v1")
    assert not capture.offer("/score", "rm", samples[:1], [0.5])
    capture.flush()
    rows = [json.loads(line) for line in (tmp_path / "capture-20270115T08.jsonl").read_text().splitlines()]
    assert [(r["captured_score"], r["endpoint"], r["model"]) for r in rows] == [(0.5, "/score", "rm"),
                                                                                (-1.25, "/score", "rm")]  # fmt: skip
    assert rows[0]["prompt"] == "Call ### ####?" and rows[0]["sample_id"] == "mine"  # redacted before writing
    assert rows[0]["reference_version"] == "v1" and rows[0]["id"].endswith("-0") and rows[1]["id"].endswith("-1")
    assert rows[0]["image"] == rows[1]["images"][0]  # one file per distinct image
    stored = [tmp_path / ref for ref in (rows[1]["images"])]
    assert stored[0].read_bytes() == base64.b64decode(red.partition(",")[2]) and stored[1].read_bytes() == png("blue")
    assert capture.captured == 2 and capture.dropped == 0
    capture.close()


def test_hours_older_than_the_retention_are_deleted_at_a_new_hours_first_capture(tmp_path):
    clock = {"now": NOW}
    capture = TrafficCapture(tmp_path, 1.0, 2, draw=lambda: 0.0, clock=lambda: clock["now"])
    for hours in (0, 1, 3):
        clock["now"] = NOW + hours * HOUR
        capture.offer("/rank", "rm", [Sample(prompt="p", response="r", image=uri(shape_image("red")))], [1.0])
        capture.flush()
    assert sorted(p.name for p in tmp_path.glob("capture-*.jsonl")) == ["capture-20270115T09.jsonl",
                                                                        "capture-20270115T11.jsonl"]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["20270115T09", "20270115T11"]
    capture.close()


def test_a_redaction_hook_that_does_not_import_is_refused_naming_it(tmp_path):
    assert load_redact("tests.service.test_capture:masked") is masked
    with pytest.raises(CaptureError, match="no_such_module"):
        TrafficCapture.from_settings(Settings(capture_rate=1, capture_dir=tmp_path, capture_redact="no_such_module:f"))
