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


def test_a_models_files_adapter_scores_as_its_merged_model_on_both_engines(
    local_ray, tiny_reward, lora_adapters, tmp_path
):
    """`--model NAME --models FILE` as serve takes them: here a LoRA adapter, scored on its base."""
    from typer.testing import CliRunner

    from vlreward.cli import app
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.media import MediaPolicy
    from vlreward.service.offline import read_samples
    from vlreward.service.prepare import prepare_sample

    adapter, merged = lora_adapters["helpful"]
    models = tmp_path / "models.yaml"
    models.write_text(f"rm: {{model: {tiny_reward}}}\nhelpful: {{model: {adapter}, base: rm}}\n")
    path, _ = write_rows(tmp_path, 40)
    good = good_rows(path, 40)
    common = ["score", "--models", str(models), "--model", "helpful", "--dtype", "float32", "--device", "cpu"]
    for engine, source, output in (("local", good, tmp_path / "local.jsonl"), ("ray", path, tmp_path / "ray")):
        done = CliRunner().invoke(app, [*common, "--engine", engine, "--input", str(source), "--output", str(output)])
        assert done.exit_code == 0, done.output
    reference = TransformersBackend(merged, dtype="float32", device="cpu")
    policy = MediaPolicy(media_root=tmp_path)
    expected = reference.score_sync([prepare_sample(s, reference.processor, policy) for s in read_samples(good)])
    local = [json.loads(line)["score"] for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    ray_scores = {row["id"]: row["score"] for row in read_output(tmp_path / "ray").to_pylist()}
    ids = [json.loads(line)["id"] for line in good.read_text().splitlines()]
    assert local == pytest.approx(expected, abs=1e-4)
    assert [ray_scores[i] for i in ids] == pytest.approx(expected, abs=1e-4)
    refused = CliRunner().invoke(app, [*common[:3], "--model", "nobody", "--input", str(path), "--output", "x"])
    assert refused.exit_code == 2 and "its models: rm, helpful" in refused.output


def test_image_urls_are_fetched_under_the_services_url_rules(local_ray, tiny_reward, tmp_path):
    import functools
    import http.server
    import threading

    from tests.helpers import shape_image, uri

    shape_image("red").save(tmp_path / "red.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/red.png"
        rows = [{"id": f"{how}{i}", "prompt": f"Colour {i}?", "response": "Red.", "image": image}
                for i in range(3) for how, image in (("url", url), ("inline", uri(shape_image("red"))))]  # fmt: skip
        (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        settings = SETTINGS | {"allow_urls": True, "url_allow_private": True}  # loopback: a test's server
        score_with_ray(tmp_path / "in.jsonl", tmp_path / "out", tiny_reward, settings, RayOptions(), progress=False)
        refused = score_with_ray(tmp_path / "in.jsonl", tmp_path / "off", tiny_reward, SETTINGS, RayOptions(),
                                 progress=False)  # fmt: skip
    finally:
        server.shutdown()
    scores = {row["id"]: row["score"] for row in read_output(tmp_path / "out").to_pylist()}
    assert [scores[f"url{i}"] for i in range(3)] == pytest.approx([scores[f"inline{i}"] for i in range(3)], abs=1e-6)
    assert sum(done["errors"] for done in refused.done.values()) == 3  # URLs off by default
    assert "URLs are disabled" in (tmp_path / "off" / "errors.jsonl").read_text()
