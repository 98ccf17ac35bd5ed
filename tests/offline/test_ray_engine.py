"""`score_with_ray` on a local Ray (one per module): 1,000 mixed rows give the in-process engine's scores (1e-5)
for every model kind, malformed rows land in errors.jsonl while the rest completes, and a scoring actor killed
mid-run is restarted by Ray Data and the run still ends with every row exactly once."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_until
from tests.offline.rows import good_rows, write_rows
from vlreward.offline.ray_engine import RayOptions, score_with_ray
from vlreward.offline.shards import MANIFEST, read_manifest, read_output

pytestmark = pytest.mark.slow  # a local Ray and its workers (make test runs them)

ROWS = 1000
SETTINGS = {"dtype": "float32", "device": "cpu"}
KINDS = {"scalar": "tiny_reward", "multi-head": "tiny_multihead", "process": "tiny_process", "judge": "tiny_judge"}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def every_row_once(output: Path, ids: list[str]) -> tuple[dict, list[dict]]:
    """The run's scored rows by id and its errors, checked to hold each input id exactly once."""
    scored = read_output(output).to_pylist()
    errors = [json.loads(line) for line in (output / "errors.jsonl").read_text().splitlines()]
    seen = [row["id"] for row in scored] + [error["id"] for error in errors]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == len(seen)
    return {row["id"]: row for row in scored}, errors


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_scores_as_in_process_and_bad_rows_become_errors(kind, local_ray, request, tmp_path):
    from vlreward.offline.inputs import InputSource
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.offline import score_file

    model = request.getfixturevalue(KINDS[kind])
    path, malformed = write_rows(tmp_path, ROWS, steps=kind == "process")
    manifest = score_with_ray(path, tmp_path / "out", model, SETTINGS, RayOptions(num_cpus=2), 128, progress=False)
    assert manifest.complete and sum(d["rows"] for d in manifest.done.values()) == ROWS
    scored, errors = every_row_once(tmp_path / "out", InputSource(path).ids())
    assert [e["id"] for e in errors] == malformed and "image" in errors[1]["reason"]
    backend = TransformersBackend(model, dtype="float32", device="cpu")
    score_file(backend, good_rows(path, ROWS), tmp_path / "alone.jsonl", batch_size=16)
    alone = [json.loads(line) for line in (tmp_path / "alone.jsonl").read_text().splitlines()]
    assert max(abs(scored[row["id"]]["score"] - row["score"]) for row in alone) <= 1e-5
    detail = {"multi-head": "heads", "process": "step_scores"}.get(kind)
    if detail is not None:  # the kind's details, as the in-process engine writes them
        first = alone[1]
        assert scored[first["id"]][detail] == pytest.approx(first[detail], abs=1e-5)
    assert scored["row-4"]["topic"] == "t4" and scored["row-4"]["image"] == "./purple.png"  # columns kept


def test_a_killed_scoring_actor_is_restarted_and_every_row_still_ends_up_once(local_ray, tiny_reward, tmp_path):
    from vlreward.offline.inputs import InputSource

    path, _ = write_rows(tmp_path, 600)
    output = tmp_path / "out"
    killed: list[int] = []

    def kill_the_scorer_after_its_first_shard() -> None:
        wait_until(lambda: (output / MANIFEST).exists() and read_manifest(output)[1],
                   seconds=120, what="a first finished shard")  # fmt: skip
        scorer = next(p for p in psutil.process_iter(["cmdline"]) if "ShardScorer" in " ".join(p.info["cmdline"] or []))
        killed.append(scorer.pid)
        scorer.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_the_scorer_after_its_first_shard)
    watcher.start()
    started = time.monotonic()
    manifest = score_with_ray(path, output, tiny_reward, SETTINGS, RayOptions(num_cpus=2), 32, progress=False)
    watcher.join(timeout=5)
    assert killed and time.monotonic() - started < 600
    assert manifest.complete and len(manifest.done) == manifest.shards
    every_row_once(output, InputSource(path).ids())


def test_captured_traffic_is_rescored_with_another_model_and_the_score_shift_reported(
    local_ray, tiny_reward, other_reward, tmp_path
):
    import httpx
    import numpy as np

    from tests.helpers import LiveServer, shape_image, uri
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.prepare import prepare_request_sample

    red = uri(shape_image("red"))
    items = [{"prompt": f"What is shape {i}?", "response": f"A circle, {i}.", **({"image": red} if i % 2 else {})}
             for i in range(6)]  # fmt: skip
    rank = {"prompt": "Which colour?", "image": red, "responses": ["Red.", "Blue.", "Green."]}
    capture = tmp_path / "capture"
    with LiveServer(TransformersBackend(tiny_reward, dtype="float32", device="cpu"), capture_rate=1.0,
                    capture_dir=capture) as live:  # fmt: skip
        served = httpx.post(live.url + "/score", json={"items": items}, timeout=60).json()["scores"]
        served += httpx.post(live.url + "/rank", json=rank, timeout=60).json()["scores"]
    assert len(list(capture.glob("capture-*.jsonl"))) == 1 and list(capture.glob("images/*/*.png"))

    manifest = score_with_ray(capture, tmp_path / "rescored", other_reward, SETTINGS, RayOptions(num_cpus=2),
                              progress=False)  # fmt: skip
    rows = read_output(tmp_path / "rescored").to_pylist()
    assert manifest.complete and len(rows) == 9
    assert sorted(row["captured_score"] for row in rows) == pytest.approx(sorted(served), abs=1e-6)
    other = TransformersBackend(other_reward, dtype="float32", device="cpu")
    sent = items + [{"prompt": rank["prompt"], "image": red, "response": r} for r in rank["responses"]]
    alone = other.score_sync([prepare_request_sample(sample, other.processor) for sample in sent])
    assert sorted(row["score"] for row in rows) == pytest.approx(sorted(alone), abs=1e-5)  # images read back
    shift = json.loads((tmp_path / "rescored" / "shift.json").read_text())
    deltas = [row["score"] - row["captured_score"] for row in rows]
    assert shift["rows"] == 9 and shift["mean_shift"] == pytest.approx(float(np.mean(deltas)), abs=1e-9)
