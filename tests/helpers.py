"""Test helpers: images drawn with Pillow, samples, and reward checkpoints built from the tiny base."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageDraw

from loadtest.servers import free_port
from vlreward.service.http.server import BackgroundServer
from vlreward.service.media import image_to_data_uri
from vlreward.training.data.synthetic import COLOURS, draw_shape

__all__ = [
    "COLOURS",
    "LiveServer",
    "build_judge_checkpoint",
    "build_multihead_checkpoint",
    "build_process_checkpoint",
    "build_reward_checkpoint",
    "check_ensemble_formula",
    "copy_with_tensors",
    "free_port",
    "shape_image",
    "uri",
    "wait_ready",
]


def shape_image(colour: str = "red", shape: str = "circle", size: tuple[int, int] = (84, 84)) -> Image.Image:
    """One coloured circle, square or triangle on white (drawn like the synthetic data)."""
    image = Image.new("RGB", size, (255, 255, 255))
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    draw_shape(ImageDraw.Draw(image), shape, box, colour)
    return image


def uri(image: Image.Image) -> str:
    return image_to_data_uri(image)


def build_reward_checkpoint(base_dir: Path, out_dir: Path, bias: float | None = None, seed: int = 1) -> Path:
    """Base model + random head (+ bias) saved in the checkpoint contract, with a probe."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.service.model.checkpoint import save_reward_model
    from vlreward.training.model import reward_model_from_base

    model, processor = reward_model_from_base(base_dir, head_bias=bias is not None, seed=seed)
    if bias is not None:
        with torch.no_grad():
            model.score.bias.fill_(bias)
    save_reward_model(model, processor, out_dir)
    stamp_reference_probe(out_dir)
    return out_dir


def build_process_checkpoint(base_dir: Path, out_dir: Path, seed: int = 3) -> Path:
    """Base model + random head (+ zero bias) saved as a process model (the default step tag, sigmoid,
    min), with a probe of its step scores."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.service.kinds import ProcessHead
    from vlreward.service.model.checkpoint import save_reward_model
    from vlreward.training.model import reward_model_from_base

    model, processor = reward_model_from_base(base_dir, head_bias=True, seed=seed)
    save_reward_model(model, processor, out_dir, process=ProcessHead())
    stamp_reference_probe(out_dir)
    return out_dir


def build_multihead_checkpoint(heads: dict[str, Path], out_dir: Path) -> Path:
    """One multi-head checkpoint from one-head checkpoints on one backbone (``vlreward stack-heads``), with its
    probe: head ``name`` is that checkpoint's head, so its scores are that model's."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.training.multihead import stack_heads

    stamp_reference_probe(stack_heads(heads, out_dir))
    return out_dir


def copy_with_tensors(source: Path, destination: Path, edit) -> Path:
    """A copy of a one-file checkpoint whose tensors ``edit`` changed in place (a dict by on-disk name)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, destination)
    tensors = load_file(source / "model.safetensors")
    edit(tensors)
    save_file(tensors, destination / "model.safetensors")
    return destination


class LiveServer(BackgroundServer):
    """The real app under a real uvicorn server on a loopback port, in a background thread."""

    def __init__(self, backend=None, **settings):
        super().__init__(backend, ready_timeout_s=120, **settings)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of the live /metrics output."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


# The console script of this environment (subprocess tests run the CLI exactly as users do).
VLREWARD = str(Path(sys.executable).parent / "vlreward")


def wait_ready(url: str, process, seconds: float = 300) -> None:
    """Poll ``url/ready`` until 200; fail if the server process exits first."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited during start-up"
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def post_and_leave(port: int, path: str, body: dict | bytes, until, what: str) -> None:
    """POST ``body`` on a raw connection, wait until ``until()`` holds (the request is in the server), then
    close the connection without reading the answer: a client that leaves."""
    import json
    import socket

    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(head.encode() + payload)
        wait_until(until, what=what)


@contextlib.contextmanager
def another_request_on_the_way(model) -> Iterator[None]:
    """Count one more admitted request on ``model`` (a ServedModel) that never reaches its batcher: within the
    block its batches wait their whole ``max_wait_ms`` to fill, as they do while a real one is being prepared
    (a lone request does not wait)."""
    model.requests_in_flight += 1
    try:
        yield
    finally:
        model.requests_in_flight -= 1


def wait_until(condition, seconds: float = 60, what: str = "the condition") -> None:
    """Poll ``condition()`` until true (a deadline that only catches hangs, never a timing assert)."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {seconds} s")
        time.sleep(0.02)


def build_judge_checkpoint(base_dir: Path, out_dir: Path, judge: str | None = "generic", seed: int = 5) -> Path:
    """A generative checkpoint laid out like the published Qwen2.5-VL judges (LLaVA-Critic-R1,
    UnifiedReward-qwen): ``Qwen2_5_VLForConditionalGeneration``, an untied ``lm_head.weight`` (random, so
    that verdicts differ from the embeddings'), the backbone under the older ``model.layers.*``/``visual.*``
    names. With ``judge`` (a built-in declaration's name) its config.json declares it, as a judge trained
    here does; None leaves the config as published (served with the ``judge`` setting)."""
    import json
    import shutil

    from vlreward.service.judge import read_declaration
    from vlreward.service.kinds import JUDGE, declare_kind
    from vlreward.service.model.checkpoint import checkpoint_key, iter_checkpoint_tensors, module_key, write_weights

    out_dir.mkdir(parents=True, exist_ok=True)
    for path in base_dir.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors"):
            shutil.copy2(path, out_dir / path.name)
    state = {checkpoint_key(module_key(name) or name): tensor for name, tensor in iter_checkpoint_tensors(base_dir)}
    embeddings = state["model.embed_tokens.weight"]
    generator = torch.Generator().manual_seed(seed)
    state["lm_head.weight"] = torch.randn(embeddings.shape, generator=generator) / embeddings.shape[1] ** 0.5
    write_weights(state, out_dir)
    config = json.loads((base_dir / "config.json").read_text())
    config["tie_word_embeddings"] = False
    config["text_config"]["tie_word_embeddings"] = False
    if judge is not None:
        config = declare_kind(config, JUDGE, judge=read_declaration(judge))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def check_ensemble_formula(url: str, ensemble: str, weights: dict[str, float], items: list[dict]) -> dict:
    """Check an ensemble's /score answer against its formula, recomputed from its members served alone and the
    reference statistics /info reports: each score the weighted sum of the members' z-scores, each disagreement
    their weighted standard deviation. Returns the ensemble's answer."""
    info = httpx.get(url + "/info").json()
    assert info["ensembles"][ensemble]["members"] == weights
    references = {m: info["models"][m]["reference"] for m in weights}
    raw = {m: httpx.post(url + "/score", json={"model": m, "items": items}, timeout=300).json()["scores"]
           for m in weights}  # fmt: skip
    body = httpx.post(url + "/score", json={"model": ensemble, "items": items}, timeout=300).json()
    assert body["model"] == ensemble
    assert body["reference_version"] == ",".join(f"{m}:{references[m]['version']}" for m in weights)
    for i, (score, detail) in enumerate(zip(body["scores"], body["details"], strict=True)):
        z = {m: (raw[m][i] - references[m]["mean"]) / references[m]["std"] for m in weights}
        assert detail["members"] == pytest.approx(z, abs=1e-6)
        assert score == pytest.approx(sum(weights[m] * z[m] for m in weights), abs=1e-6)
        mean = sum(weights[m] * z[m] for m in weights) / sum(weights.values())
        spread = sum(weights[m] * (z[m] - mean) ** 2 for m in weights) / sum(weights.values())
        assert detail["disagreement"] == pytest.approx(math.sqrt(spread), abs=1e-6)
    return body
