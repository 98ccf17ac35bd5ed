"""The GPU check's report: its table, its plot, and the memory verdict (what ``loadtest.gpu_check`` prints
and writes from the report dict it measured)."""

from __future__ import annotations

from pathlib import Path


def stamping_released_memory(report: dict) -> bool:
    """Whether stamping the probe left the GPU's reserved memory where it found it (always true on the CPU)."""
    memory = report["stamping_memory"]
    return memory["reserved_before_gb"] is None or memory["reserved_after_gb"] <= memory["reserved_before_gb"]


def print_table(report: dict) -> None:
    """The check's one table, plus the comparisons below it."""
    print(
        f"\nGPU check: {report['size']} on {report.get('gpu', report['device'])}, {report['dtype']}, "
        f"torch {report['torch']}; matrix products {report['matmul_tflops']} TFLOP/s; "
        f"{report['parameters'] / 1e9:.2f}B parameters; {report['tokens_per_sample']['mean']:.0f} tokens per sample"
    )
    print(f"{'mode':44} {'samples/s':>10} {'tokens/s':>11} {'MFU':>7} {'vs naive':>9}")
    naive = report["rows"][0]["samples_per_s"]
    for r in report["rows"]:
        print(
            f"{r['mode']:44} {r['samples_per_s']:10.2f} {r['tokens_per_s']:11.1f} {r['mfu']:7.1%} "
            f"{r['samples_per_s'] / naive:8.2f}x"
        )
    prm = report.get("process")
    for r in prm["rows"] if prm else []:  # step lists of the same samples (their naive loop: the scalar one)
        print(
            f"{r['mode']:44} {r['samples_per_s']:10.2f} {r['tokens_per_s']:11.1f} {r['mfu']:7.1%} "
            f"{r['samples_per_s'] / naive:8.2f}x"
        )
    rank = report["rank"]
    print(
        f"/rank N=8: {rank['rank_s']:.3f} s vs 8 separate /score calls {rank['separate_score_s']:.3f} s "
        f"over {rank['prompts']} prompts: {rank['speed-up']:.2f}x (largest score difference "
        f"{rank['max_abs_score_difference']:.2e})"
    )
    grpo = report["grpo"]
    print(
        f"GRPO G=8 /score sharing prompt + image: {grpo['shared_s']:.3f} s vs own images {grpo['own_images_s']:.3f} s "
        f"over {grpo['groups']} groups: {grpo['speed-up']:.2f}x (largest difference from solo "
        f"{grpo['max_abs_score_difference']:.2e})"
    )
    if prm:
        print(
            f"process model ({prm['steps_per_item']} steps per item, {prm['dtype']}): probe "
            f"{'passes' if prm['probe_passes'] else 'FAILS'}; HTTP vs in-process step scores max |diff| "
            f"{prm['http_vs_in_process_max_abs']:.2e}; prefix property max |diff| {prm['prefix_property_max_abs']:.2e}"
        )
    load = report["load"]
    print(
        f"load: {load['seconds']} s, weights {load['weights_gb']} GB, peak during load "
        f"{_gigabytes(load['peak_gb'])}; peak while serving {_gigabytes(report['peak_gpu_memory_gb'])}"
    )
    diff = report["bf16_vs_fp32"]
    print(
        f"{diff['dtype']} vs float32 on {diff['samples']} samples: max |diff| {diff['max_abs']:.4g}, mean "
        f"{diff['mean_abs']:.4g}, max share of the probe's scale {diff['max_share_of_probe_scale']:.3g} "
        f"(fp32 score spread {diff['fp32_score_std']:.4g})"
    )
    probe = report["probe_check"]
    print(
        f"start-up probe in {report['dtype']}: off by {probe['deviation']:.4g} ({probe['share_of_scale']:.3g} of "
        f"its scale), tolerance {probe['tolerance']:.4g}: {'passes' if probe['passes'] else 'FAILS'}"
    )
    memory = report["stamping_memory"]
    print(
        f"reserved GPU memory around stamping the probe: {_gigabytes(memory['reserved_before_gb'])} before, "
        f"{_gigabytes(memory['reserved_after_gb'])} after: {'released' if stamping_released_memory(report) else 'KEPT'}"
    )
    print(f"HTTP vs in-process scores: max |diff| {report['http_vs_in_process_max_abs']:.3g}")


def _gigabytes(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.2f} GB"


def write_plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    modes = [r["mode"] for r in report["rows"]]
    values = [r["samples_per_s"] for r in report["rows"]]
    figure, axis = plt.subplots(figsize=(9, 4))
    axis.barh(modes, values, color="tab:blue")
    axis.invert_yaxis()
    axis.set_xlabel("samples/s")
    axis.set_title(f"GPU check ({report['size']}, {report.get('gpu', report['device'])}, {report['dtype']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
