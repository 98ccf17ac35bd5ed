"""The transformers backend's async path, its facts, and the prefix key its inputs carry for the batcher."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest

from tests.helpers import shape_image, uri
from vlreward.service.backends import create_backend
from vlreward.service.media import MediaPolicy
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample


def test_async_score_runs_off_the_event_loop_and_matches_sync(hf_backend):
    samples = [
        prepare_sample(Sample(prompt=f"q{i}", response="a" * i), hf_backend.processor, MediaPolicy()) for i in range(5)
    ]
    seen_threads = []
    original = hf_backend.score_sync

    def spy(batch):
        seen_threads.append(threading.current_thread().name)
        return original(batch)

    hf_backend.score_sync = spy
    try:
        result = asyncio.run(hf_backend.score(samples))
    finally:
        del hf_backend.score_sync
    assert seen_threads and all(name.startswith("vlreward-hf") for name in seen_threads)
    assert result == hf_backend.score_sync(samples)


def test_info_reports_model_dtype_device_and_pixel_bounds(hf_backend):
    info = hf_backend.info()
    assert info["backend"] == "transformers" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert (info["min_pixels"], info["max_pixels"]) == (4 * 28 * 28, 64 * 28 * 28)
    assert len(info["checkpoint_hash"]) == 16
    assert hf_backend.health()


def test_pixel_bound_overrides_change_the_image_token_count(tiny_reward):
    backend = create_backend("hf", str(tiny_reward), device="cpu", max_pixels=16 * 28 * 28)
    from tests.helpers import shape_image, uri

    sample = Sample(prompt="p", response="r", image=uri(shape_image(size=(224, 224))))
    encoded = backend.encode(prepare_sample(sample, backend.processor, MediaPolicy()))
    assert int((encoded.mm_token_type_ids == 1).sum()) == 16
    assert backend.info()["max_pixels"] == 16 * 28 * 28


def test_the_prefix_key_is_equal_exactly_for_the_same_prompt_and_images(hf_backend):
    """The key the batcher groups samples of different requests by, whichever way a sample was encoded."""

    def formatted(**fields):
        return prepare_sample(Sample(**fields), hf_backend.processor, MediaPolicy())

    prompt = "What colour is the shape in the picture?"
    red, noisy_red = shape_image("red"), shape_image("red")
    noisy_red.putpixel((0, 0), (0, 0, 1))  # one pixel differs, same size and token count
    encode = hf_backend.encode
    key = encode(formatted(prompt=prompt, response="Red.", image=uri(red))).prefix_key
    assert key is not None
    same = encode(formatted(prompt=prompt, response="Blue, surely.", image=uri(red)))
    assert same.prefix_key == key  # another response: the same prefix
    assert encode(formatted(prompt=prompt, response="Red.", image=uri(noisy_red))).prefix_key != key
    assert encode(formatted(prompt=prompt, response="Red.", system="Be brief.", image=uri(red))).prefix_key != key
    assert encode(formatted(prompt=prompt, response="Red.")).prefix_key is None  # no image
    together = [formatted(prompt=prompt, response=r, image=uri(red)) for r in ("Red.", "Blue, surely.")]
    assert [e.prefix_key for e in hf_backend.encode_shared(together)] == [key, key]  # as encode() gives


def test_planned_batches_run_on_the_cpu_lanes_each_on_its_share_of_the_threads(tiny_reward):
    import torch

    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(tiny_reward, dtype="float32", device="cpu", cpu_lanes=2, max_batch_tokens=64)
    samples = [
        prepare_sample(Sample(prompt=f"Question {i}?", response="word " * (3 + i)), backend.processor, MediaPolicy())
        for i in range(9)
    ]
    encoded = [backend.encode(s) for s in samples]
    alone = [backend.model.score_batch([e])[0] for e in encoded]
    seen: list[tuple[str, int]] = []
    original = backend.model.score_batch

    def spy(batch, padding_side):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return original(batch, padding_side)

    backend.model.score_batch = spy
    try:
        planned = backend.score_sync(samples)
    finally:
        del backend.model.score_batch
        asyncio.run(backend.close())
    assert backend.lanes == min(2, torch.get_num_threads())
    assert max(abs(a - b) for a, b in zip(alone, planned, strict=True)) <= 1e-5
    assert len(seen) == len(backend.plan_batches([e.num_tokens for e in encoded])) > 1
    if backend.lanes == 2:  # a 2-core machine or larger: each batch on its share, off the calling thread
        assert {threads for _, threads in seen} == {backend.cores // 2}
        assert all(name.startswith("vlreward-hf-sync") for name, _ in seen)
        assert torch.get_num_threads() == backend.cores  # the caller's own threads are untouched


def test_the_cpu_threads_follow_omp_num_threads_as_the_helm_chart_sets_them(tiny_reward):
    """The chart sets OMP_NUM_THREADS to the pod's CPU request; the backend plans its lanes with that."""
    code = (
        "import json, sys; from vlreward.service.backends.transformers import TransformersBackend; "
        "b = TransformersBackend(sys.argv[1], dtype='float32', device='cpu'); "
        "print(json.dumps({k: b.info()[k] for k in ('cpu_threads', 'cpu_lanes')}))"
    )
    for threads in (1, 2):
        done = subprocess.run(
            [sys.executable, "-c", code, str(tiny_reward)], env=os.environ | {"OMP_NUM_THREADS": str(threads)},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"cpu_threads": threads, "cpu_lanes": threads}


def test_a_lone_batch_takes_every_core_only_for_a_model_large_enough_to_use_them(hf_backend):
    from vlreward.service.backends.facts import SMALL_MODEL_PARAMETERS, language_model_parameters

    parameters = language_model_parameters(hf_backend.model.config.text_config)
    assert parameters < SMALL_MODEL_PARAMETERS  # the tiny model
    assert hf_backend.choose_lone_threads(SMALL_MODEL_PARAMETERS) is None  # large enough: every core
    if hf_backend.lanes == 1:
        assert hf_backend.choose_lone_threads(parameters) is None  # one lane: nothing to choose
    else:
        assert hf_backend.choose_lone_threads(parameters) == hf_backend.cores // hf_backend.lanes
    lone = hf_backend.info()["cpu_lone_batch_threads"]
    assert lone == (hf_backend.lone_threads or hf_backend.cores)


def test_info_names_the_linear_kernels_the_models_layers_run_on(hf_backend):
    import torch

    from vlreward.service.model import cpu_kernels

    # the tiny model's layers are all under the threshold: torch's kernels on any host, AMD's included
    assert hf_backend.info()["cpu_linear_kernels"] == "torch"
    linears = [m for m in hf_backend.model.model.modules() if type(m) is torch.nn.Linear]
    try:
        assert cpu_kernels.use_onednn_linears(hf_backend.model.model, min_weight=1) == len(linears)
        assert hf_backend.info()["cpu_linear_kernels"] == "onednn"
    finally:
        for linear in linears:  # the session's backend back as it was
            linear.__class__ = torch.nn.Linear


MULTI_CORE_WORK_ON_ONE_THREAD = """
import asyncio, json, sys, threading
import torch
from vlreward.service.backends.transformers import TransformersBackend
from vlreward.service.media import MediaPolicy
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample

async def main():
    # built off the event loop, as the service loads a model
    backend = await asyncio.to_thread(TransformersBackend, sys.argv[1], dtype="float32", device="cpu", cpu_lanes=2)
    encoded = backend.encode(prepare_sample(Sample(prompt="Hi?", response="Hello."), backend.processor, MediaPolicy()))
    seen = []
    original = backend.model.score_batch

    def spy(batch, padding_side):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return original(batch, padding_side)

    backend.model.score_batch = spy
    await backend.run_batch([encoded])  # a lone batch on every core
    await asyncio.gather(backend.run_batch([encoded], threads=1), backend.run_batch([encoded], threads=1))  # lanes
    later = []
    started = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    started.start()
    started.join()
    await backend.close()
    print(json.dumps({"cores": backend.cores, "seen": seen, "later": later[0]}))

asyncio.run(main())
"""


def test_work_on_several_cores_runs_on_one_thread_and_every_other_thread_on_one_core(tiny_reward):
    """libgomp gives every OpenMP team short spin-waits once the process holds more OpenMP threads than cores:
    a second multi-threaded team anywhere (the loading thread's, a second lane's) slowed the bench model's lone
    pass from 80 to 102-112 ms. In a fresh process, as the service runs: a lone batch runs on the team
    thread, lane batches on one thread each, and a thread started later begins with one."""
    done = subprocess.run(
        [sys.executable, "-c", MULTI_CORE_WORK_ON_ONE_THREAD, str(tiny_reward)],
        env=os.environ | {"OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cores"] == 2
    (lone_thread, lone_threads), *lanes = result["seen"]
    assert lone_thread.startswith("vlreward-hf-team") and lone_threads == 2
    assert len(lanes) == 2 and all(name.startswith("vlreward-hf_") and threads == 1 for name, threads in lanes)
    assert result["later"] == 1


JUDGED = [
    {"prompt": "What colour is the circle?", "image": uri(shape_image("red")), "response": "It is red."},
    {"prompt": "Say hello.", "response": "Hello there!"},
]


@pytest.mark.parametrize("layout", ["declared", "published", "tied"])
def test_a_judges_verdict_logits_are_its_generative_models_next_token_logits(
    layout, tiny_judge, published_judge, tiny_base, tmp_path
):
    """The judge's head is its LM head's rows for the verdict tokens, read at the token after the prompt:
    the same numbers transformers' own generative model gives (an untied head in the published layout, or
    a tied one read from the embeddings), relative to the first verdict token's."""
    import shutil

    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.judge import verdict_token_ids

    tied = shutil.copytree(tiny_base, tmp_path / "tied")  # a copy: loading caches a hash beside the weights
    directory, setting = {"declared": (tiny_judge, None), "published": (published_judge, "generic"),
                          "tied": (tied, "generic")}[layout]  # fmt: skip
    backend = TransformersBackend(directory, dtype="float32", device="cpu", judge=setting)
    formatted = [backend.format_request_sample(sample) for sample in JUDGED]
    ours = backend.score_sync(formatted)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(directory)
    ids = verdict_token_ids(backend.judge, processor.tokenizer)
    for question, got in zip(formatted, ours, strict=True):
        inputs = processor(text=[question.text], images=question.images or None, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1, ids]
        assert got == pytest.approx((logits - logits[0]).tolist(), abs=1e-4)
        assert question.text.endswith("<|im_start|>assistant\nRating: ")


def test_what_is_not_a_judge_is_refused_saying_how_to_serve_it(tiny_reward, tiny_base, tiny_judge):
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="a judge is a generative checkpoint"):
        TransformersBackend(tiny_reward, judge="generic")
    with pytest.raises(CheckpointError, match="serve it as a judge with the `judge` setting"):
        TransformersBackend(tiny_base)


@pytest.mark.parametrize("declaration", ["generic", "unifiedreward-qwen", "llava-critic-r1"])
def test_each_built_in_declaration_asks_a_published_layout_judge_as_transformers_would(declaration, published_judge):
    """Each built-in declaration's pairwise question on a checkpoint laid out like the published judges:
    the verdict logits equal transformers' generative model's at the token after the answer prefix."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.judge import verdict_token_ids
    from vlreward.service.media import MediaPolicy
    from vlreward.service.model.formatting import format_judged_pair
    from vlreward.service.prepare import load_images
    from vlreward.service.schemas import ComparePair

    backend = TransformersBackend(published_judge, dtype="float32", device="cpu", judge=declaration)
    pair = {"prompt": "What colour is the circle?", "image": uri(shape_image("red")), "a": "Red.", "b": "Blue."}
    a, b = ComparePair.model_validate(pair).samples()
    images = load_images(a.image_refs(), a.image_params(), MediaPolicy(), 8, None)
    question = format_judged_pair(a, b, images, backend.processor, backend.judge)
    assert question.text.endswith(backend.judge.pairwise_answer) and "Red." in question.text
    ours = backend.score_sync([question])[0]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(published_judge, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(published_judge)
    ids = verdict_token_ids(backend.judge, processor.tokenizer)
    with torch.no_grad():
        logits = model(**processor(text=[question.text], images=question.images, return_tensors="pt")).logits[
            0, -1, ids
        ]
    assert ours == pytest.approx((logits - logits[0]).tolist(), abs=1e-4)
