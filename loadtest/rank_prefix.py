"""Benchmark: /rank candidates scored as one padded batch vs. shared prefix (prompt + images run once).

    python -m loadtest.rank_prefix --size bench --output runs/rank_prefix

Both paths run in the same process on the same encoded candidates; the ratio is full / prefix time.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import typer
from tqdm import tqdm

app = typer.Typer(add_completion=False)


def _model_dir(size: str, workdir: Path) -> Path:
    from vlreward.service.model.checkpoint import save_reward_model
    from vlreward.training.base_model import build_base_model
    from vlreward.training.model import reward_model_from_base

    base = build_base_model(workdir / "base", size=size)
    model, processor = reward_model_from_base(base)
    return save_reward_model(model, processor, workdir / "reward")


def _time(fn, encoded, repeats: int) -> float:
    fn(encoded)  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(encoded)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@app.command()
def main(
    size: str = typer.Option("bench", help="tiny or bench model (built here, seeded)."),
    model: Path | None = typer.Option(None, help="Use this checkpoint instead of building one."),
    candidates: str = typer.Option("2,4,8,16", help="Numbers of responses per /rank request."),
    images: int = typer.Option(2, help="Images in the shared prompt."),
    repeats: int = typer.Option(5, help="Timed runs per point (median reported)."),
    output: Path = typer.Option(Path("runs/rank_prefix"), help="Where JSON and PNG go."),
) -> None:
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.media import MediaPolicy, image_to_data_uri
    from vlreward.service.model.probe import probe_sample
    from vlreward.service.prepare import Limits, prepare_rank
    from vlreward.service.schemas import RankRequest

    print("command:", " ".join(["python -m loadtest.rank_prefix", *sys.argv[1:]]), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="rank-prefix-"))
    backend = TransformersBackend(model or _model_dir(size, workdir), device="cpu")
    from vlreward.service.media import load_image

    picture = load_image(probe_sample()["images"][0], MediaPolicy()).resize((224, 168))
    refs = [image_to_data_uri(picture)] * images
    rows = []
    for n in tqdm([int(c) for c in candidates.split(",")], desc="candidates", file=sys.stderr):
        request = RankRequest(
            prompt="Look at the picture and answer: what colour is the circle, and where is it?",
            images=refs or None,
            responses=[f"Answer {i}: the circle is red. " * (1 + i % 3) for i in range(n)],
        )
        encoded = prepare_rank(backend, request.candidates(), MediaPolicy(), Limits(max_tokens=1 << 20))
        full = _time(backend.model.score_batch, encoded, repeats)
        shared = _time(backend.model.score_shared_prefix, encoded, repeats)
        diff = max(
            abs(a - b)
            for a, b in zip(backend.model.score_batch(encoded), backend.model.score_shared_prefix(encoded), strict=True)
        )
        rows.append(
            {
                "candidates": n,
                "full_ms": full * 1000,
                "prefix_ms": shared * 1000,
                "ratio": full / shared,
                "max_abs_diff": diff,
                "tokens_per_candidate": encoded[0].num_tokens,
            }
        )
    print(f"{'N':>4} {'full ms':>10} {'prefix ms':>10} {'full/prefix':>12} {'max |diff|':>11}")
    for row in rows:
        print(
            f"{row['candidates']:>4} {row['full_ms']:>10.1f} {row['prefix_ms']:>10.1f} {row['ratio']:>12.2f}"
            f" {row['max_abs_diff']:>11.2e}"
        )
    output.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "rank_prefix",
        "size": size,
        "images": images,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    (output / "rank_prefix.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(rows, output / "rank_prefix.png", f"/rank: shared prefix vs full batch ({size} model, {images} images)")
    print(f"wrote {output / 'rank_prefix.json'} and {output / 'rank_prefix.png'}")


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    ns = [r["candidates"] for r in rows]
    axis.plot(ns, [r["full_ms"] for r in rows], marker="o", label="full batch")
    axis.plot(ns, [r["prefix_ms"] for r in rows], marker="o", label="shared prefix")
    axis.set_xlabel("responses per request")
    axis.set_ylabel("ms per request (median)")
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    app()
