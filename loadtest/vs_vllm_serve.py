"""Benchmark: requests/s of `vlreward serve --backend vllm` vs vLLM's own server (`/classify`), same model,
same requests, one run each in this command (servers run one after the other, not side by side).

    python -m loadtest.vs_vllm_serve --requests 300 --concurrency 16 --output runs/vs_vllm_serve

Each request scores one sample (0-2 small images), as an RLHF reward call does; both servers get the
same conversation: ours as a Sample, vLLM's as chat messages it templates with the same checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import typer
from tqdm import tqdm

app = typer.Typer(add_completion=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _samples(n: int = 24) -> list[dict]:
    from PIL import Image, ImageDraw

    from vlreward.service.media import image_to_data_uri

    colours = ["red", "green", "blue", "orange", "purple", "yellow"]
    samples = []
    for i in range(n):
        images = []
        for k in range(i % 3):
            image = Image.new("RGB", (84 + 28 * k, 84), "white")
            ImageDraw.Draw(image).ellipse((20, 20, 64, 64), fill=colours[(i + k) % 6])
            images.append(image_to_data_uri(image))
        samples.append(
            {"prompt": f"Question {i}: what is shown?", "response": f"A {colours[i % 6]} circle.", "images": images}
        )
    return samples


def _messages(sample: dict) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": ref}} for ref in sample["images"]]
    parts.append({"type": "text", "text": sample["prompt"]})
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": sample["response"]}]


def _start(command: list[str], url: str, env: dict | None = None, timeout_s: float = 600) -> subprocess.Popen:
    log_path = Path(tempfile.mkdtemp(prefix="server-")) / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited; see {log_path}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server not ready; see {log_path}")


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


async def _load(url: str, bodies: list[dict], concurrency: int, read_score, label: str) -> tuple[float, list[float]]:
    limit = asyncio.Semaphore(concurrency)
    scores: list[float] = [0.0] * len(bodies)
    async with httpx.AsyncClient(timeout=120) as client:
        for body in bodies[:concurrency]:  # warm-up, not timed
            (await client.post(url, json=body)).raise_for_status()
        with tqdm(total=len(bodies), desc=label, file=sys.stderr) as bar:

            async def one(index: int) -> None:
                async with limit:
                    response = await client.post(url, json=bodies[index])
                    response.raise_for_status()
                    scores[index] = read_score(response.json())
                    bar.update(1)

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(len(bodies))))
            elapsed = time.perf_counter() - started
    return len(bodies) / elapsed, scores


@app.command()
def main(
    model: Path | None = typer.Option(None, help="Reward checkpoint (default: a tiny one built here)."),
    requests: int = typer.Option(300, help="Timed requests per server."),
    concurrency: int = typer.Option(16, help="Requests in flight."),
    output: Path = typer.Option(Path("runs/vs_vllm_serve"), help="Where JSON and PNG go."),
) -> None:
    print("command:", " ".join(["python -m loadtest.vs_vllm_serve", *sys.argv[1:]]), flush=True)
    if model is None:
        from tests.helpers import build_reward_checkpoint
        from vlreward.training.base_model import build_base_model

        work = Path(tempfile.mkdtemp(prefix="vs-vllm-"))
        model = build_reward_checkpoint(build_base_model(work / "base"), work / "reward")
    samples = _samples()
    chosen = [samples[i % len(samples)] for i in range(requests)]
    python = sys.executable
    results = {}

    port = _free_port()
    env = {**os.environ, "VLREWARD_VLLM_GPU_MEMORY_UTILIZATION": "0.2", "VLREWARD_MAX_QUEUE": "100000"}
    ours = _start([python, "-m", "vlreward", "serve", "--backend", "vllm", "--model", str(model), "--port", str(port)],
                  f"http://127.0.0.1:{port}/ready", env)  # fmt: skip
    try:
        bodies = [{"items": [s]} for s in chosen]
        rate, our_scores = asyncio.run(
            _load(f"http://127.0.0.1:{port}/score", bodies, concurrency, lambda j: j["scores"][0], "vlreward")
        )
        results["vlreward_vllm_backend"] = rate
    finally:
        _stop(ours)

    port = _free_port()
    baseline = _start(
        [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--runner", "pooling",
         "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.2",
         "--limit-mm-per-prompt", json.dumps({"image": 2}), "--pooler-config", json.dumps({"use_activation": False}),
         "--port", str(port)],
        f"http://127.0.0.1:{port}/health",
    )  # fmt: skip
    try:
        bodies = [{"model": str(model), "messages": _messages(s)} for s in chosen]
        rate, their_scores = asyncio.run(
            _load(
                f"http://127.0.0.1:{port}/classify",
                bodies,
                concurrency,
                lambda j: j["data"][0]["probs"][0],
                "vllm serve",
            )
        )
        results["vllm_serve_classify"] = rate
    finally:
        _stop(baseline)

    ratio = results["vlreward_vllm_backend"] / results["vllm_serve_classify"]
    max_diff = max(abs(a - b) for a, b in zip(our_scores, their_scores, strict=True))
    print(f"{'server':<28} {'requests/s':>10}")
    for name, rate in results.items():
        print(f"{name:<28} {rate:>10.1f}")
    print(f"ratio vlreward/vllm-serve: {ratio:.2f}  (max |score diff| {max_diff:.2e})")
    print(f"{requests} requests, concurrency {concurrency}, one sample per request")
    output.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "vs_vllm_serve", "requests": requests, "concurrency": concurrency, "requests_per_s": results,
              "ratio": ratio, "max_abs_score_diff": max_diff, "model": str(model)}  # fmt: skip
    (output / "vs_vllm_serve.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(results, ratio, output / "vs_vllm_serve.png")
    print(f"wrote {output / 'vs_vllm_serve.json'} and {output / 'vs_vllm_serve.png'}")


def _plot(results: dict[str, float], ratio: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    bars = axis.bar(list(results), list(results.values()), color=["#4c72b0", "#dd8452"])
    axis.bar_label(bars, fmt="%.1f")
    axis.set_ylabel("requests/s")
    axis.set_title(f"one sample per request; ratio {ratio:.2f}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    app()
