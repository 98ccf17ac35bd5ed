"""Traffic capture: a sampled copy of ``/score`` and ``/rank`` requests and the scores they got, to rescore
offline with another model (``vlreward score --engine ray --input CAPTURE_DIR``).

Off by default (``capture_rate`` 0). A captured request becomes one row per scored sample (a ``/rank``
request: one per response), appended to ``<capture_dir>/capture-<YYYYmmddTHH>.jsonl`` (the UTC hour):

    {"id": "<request>-<n>", "captured_at", "endpoint", "model", "captured_score", "reference_version"?,
     "sample_id"?, ...the sample's fields}

Images sent inline (data URIs, base64) are stored once per hour as files,
``images/<hour>/<sha256>.<ext>``, and the row refers to them as ``./images/<hour>/...`` (a path relative to
the capture folder, which ``vlreward score`` reads images from); URLs and server-side paths are kept as sent.
``capture_redact`` names a function that sees each row before it is written and returns it (changed or not),
or None to drop it. Hours older than ``capture_retention_hours`` are deleted at each new hour's first write.

Writing happens on one background thread, never on the request's path; when it falls behind by
:data:`MAX_PENDING` requests, further captures are dropped (counted), not queued without bound.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import importlib
import json
import logging
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vlreward.service.schemas import Sample
from vlreward.service.settings import Settings

log = logging.getLogger(__name__)

MAX_PENDING = 256
"""Captured requests waiting to be written; beyond it captures are dropped."""
HOUR_FORMAT = "%Y%m%dT%H"
IMAGE_KINDS = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"RIFF", ".webp"), (b"BM", ".bmp"))

Redact = Callable[[dict], dict | None]


class CaptureError(ValueError):
    """The capture settings cannot work (a redaction hook that does not import); the message says why."""


def load_redact(spec: str | None) -> Redact | None:
    """The ``module:function`` a redaction hook names (refused at start-up, naming it, when it does not import)."""
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CaptureError(f"capture_redact {spec!r} does not name a module:function ({exc})") from exc
    if not callable(hook):
        raise CaptureError(f"capture_redact {spec!r} is not callable")
    return hook


def inline_image(ref: str) -> bytes | None:
    """The bytes of an image sent inline (a data URI or bare base64); None for URLs and paths."""
    if ref.startswith("data:"):
        ref = ref.partition(",")[2]
    elif ref.startswith(("http://", "https://", "file://", "/", "./")):
        return None
    try:
        return base64.b64decode("".join(ref.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _replaced(value: Any, refs: dict[str, str]) -> Any:
    """``value`` with every string that is a key of ``refs`` replaced by its value (at any depth)."""
    if isinstance(value, str):
        return refs.get(value, value)
    if isinstance(value, list):
        return [_replaced(v, refs) for v in value]
    if isinstance(value, dict):
        return {k: _replaced(v, refs) for k, v in value.items()}
    return value


class TrafficCapture:
    """Samples requests at ``rate`` and writes them under ``directory`` (see the module)."""

    def __init__(
        self, directory: Path, rate: float, retention_hours: float, redact: Redact | None = None,
        draw: Callable[[], float] = random.random, clock: Callable[[], float] = time.time,
    ):  # fmt: skip
        self.directory = Path(directory)
        self.rate = rate
        self.retention_s = retention_hours * 3600
        self.redact = redact
        self._draw, self._clock = draw, clock
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="vlreward-capture")
        self._lock = threading.Lock()
        self._pending = 0
        self._hour: str | None = None
        self.captured = 0
        """Rows written."""
        self.dropped = 0
        """Requests sampled but not written (the writer fell behind, or it failed)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    @classmethod
    def from_settings(cls, settings: Settings) -> TrafficCapture | None:
        """The server's capture, or None when it is off."""
        if settings.capture_rate <= 0 or settings.capture_dir is None:
            return None
        redact = load_redact(settings.capture_redact)
        return cls(settings.capture_dir, settings.capture_rate, settings.capture_retention_hours, redact)

    def offer(self, endpoint: str, model: str, samples: Sequence[Sample], scores: Sequence[float | None],
              reference_version: str | None = None) -> bool:  # fmt: skip
        """Capture this request with probability ``rate`` (its scored samples, written in the background);
        whether it was taken."""
        if self._draw() >= self.rate:
            return False
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                return False
            self._pending += 1
        request = uuid.uuid4().hex[:16]
        now = self._clock()
        rows = [
            (sample, {"id": f"{request}-{n}", "captured_at": datetime.datetime.fromtimestamp(now, datetime.UTC)
                      .isoformat(), "endpoint": endpoint, "model": model, "captured_score": score}
             | ({"reference_version": reference_version} if reference_version else {}))
            for n, (sample, score) in enumerate(zip(samples, scores, strict=True)) if score is not None
        ]  # fmt: skip
        self._writer.submit(self._write, rows, now)
        return True

    def _write(self, rows: list[tuple[Sample, dict]], now: float) -> None:
        try:
            hour = time.strftime(HOUR_FORMAT, time.gmtime(now))
            if hour != self._hour:
                self._hour = hour
                self._forget_before(now - self.retention_s)
            lines = []
            for sample, meta in rows:
                row = self._row(sample, meta, hour)
                if self.redact is not None:
                    row = self.redact(row)
                if row is not None:
                    lines.append(json.dumps(row) + "\n")
            with (self.directory / f"capture-{hour}.jsonl").open("a") as out:
                out.write("".join(lines))
            self.captured += len(lines)
        except Exception:  # a capture must never take the server down
            log.exception("traffic capture failed; the request was not captured")
            self.dropped += 1
        finally:
            with self._lock:
                self._pending -= 1

    def _row(self, sample: Sample, meta: dict, hour: str) -> dict:
        """One captured row: the sample's fields, its inline images stored as files and referred to by path."""
        fields = sample.model_dump(exclude_none=True)
        if "id" in fields:
            meta["sample_id"] = fields.pop("id")
        stored = {}
        for ref in sample.image_refs():
            data = inline_image(ref)
            if data is not None:
                stored[ref] = self._store_image(data, hour)
        return meta | _replaced(fields, stored)

    def _store_image(self, data: bytes, hour: str) -> str:
        extension = next((ext for magic, ext in IMAGE_KINDS if data.startswith(magic)), ".img")
        name = hashlib.sha256(data).hexdigest() + extension
        folder = self.directory / "images" / hour
        if not (folder / name).exists():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return f"./images/{hour}/{name}"

    def _forget_before(self, cutoff: float) -> None:
        """Delete the captured hours that ended before ``cutoff``."""
        oldest = time.strftime(HOUR_FORMAT, time.gmtime(cutoff))
        for path in self.directory.glob("capture-*.jsonl"):
            if path.stem.removeprefix("capture-") < oldest:
                path.unlink(missing_ok=True)
        for folder in (self.directory / "images").glob("*"):
            if folder.name < oldest:
                shutil.rmtree(folder, ignore_errors=True)

    def flush(self) -> None:
        """Wait until every capture taken so far is written."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
