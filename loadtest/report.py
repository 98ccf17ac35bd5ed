"""The documentation's figure tables, generated from the results files (as the dashboard is from code).

    python -m loadtest.report            # rewrites the generated tables in docs/
    python -m loadtest.report --check    # exit 1 when a committed table differs from its results file

A generated table sits between ``<!-- table: KIND FILE -->`` and ``<!-- end table -->`` in a docs page;
KIND says how ``FILE`` (under ``loadtest/results/``) becomes markdown. tests/loadtest/test_report.py
fails when a committed table is not what this script writes.
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results"
DOCS = ROOT / "docs"
MARKED = re.compile(r"(<!-- table: (\w+) ([\w.\-+/]+) -->\n)(.*?)(<!-- end table -->)", re.S)


def interquartile(ratios: list[float]) -> str:
    """The rounds' interquartile range (the middle half of the ratios), beside the median so that a reader
    can tell a gain from noise; a dash for fewer than two rounds."""
    if len(ratios) < 2:
        return "—"
    first, _, third = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{first:.2f}–{third:.2f}"


def rounds(row: dict) -> str:
    """A comparison's timed rounds, and the shortest side's round in seconds where the run recorded it."""
    seconds = [side for pair in row.get("round_seconds", []) for side in pair if side is not None]
    return f"{len(row['ratios'])} × ≥ {min(seconds):.0f} s" if seconds else str(len(row["ratios"]))


def suite_table(report: dict) -> str:
    """The performance suite's ratios: median, interquartile range, min-max, rounds, target (in brackets where the
    run is not the bench model's, whose targets they are), and each side's samples/s (tokens written per
    second for a row that compares those)."""
    bench_run = report["size"] == "bench" and not report["smoke"]
    lines = ["| comparison (A / B) | median | IQR | min–max | rounds | target | A samples/s | B samples/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in report["comparisons"]:
        target = ""
        if row["target"] is not None:
            target = (
                f"≥ {row['target']:.2f} {'✓' if row['target_met'] else '✗'}" if bench_run else f"({row['target']:.2f})"
            )
        metric = row.get("metric", "samples_per_s")  # a generate row: tokens written per second
        speeds = [statistics.median(r.get(metric, 0) for r in row[side]) for side in ("a_runs", "b_runs")]
        unit = " tok/s" if metric == "output_token_throughput" else ""
        a, b = (f"{speed:.1f}{unit}" if speed else "" for speed in speeds)
        spread = f"{interquartile(row['ratios'])} | {row['min_ratio']:.2f}–{row['max_ratio']:.2f} | {rounds(row)}"
        lines.append(f"| {row['name']} | **{row['median_ratio']:.3f}** | {spread} | {target} | {a} | {b} |")
    checks = report["score_checks"]
    worst = max(c["max_abs_diff"] for c in checks if c["max_abs_diff"] is not None)
    lines.append("")
    where = f" ({report['cpu']})" if "cpu" in report else ""
    lines.append(f"`{report['command']}`{where}: {report['seconds']:,.0f} s; {sum(c['ok'] for c in checks)} of "
                 f"{len(checks)} score checks ok, largest |diff| {worst:.1e}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def gpu_pair_table(reports: list[dict]) -> str:
    """Two GPU-check runs side by side (``A / B`` in each cell): samples/s, tokens/s, MFU, and each row
    against the same run's naive loop."""
    first, second = reports
    lines = ["| mode | samples/s | tokens/s | MFU | vs naive (same run) |", "| --- | --- | --- | --- | --- |"]
    naive = [report["rows"][0]["samples_per_s"] for report in reports]
    for index, (a, b) in enumerate(zip(first["rows"], second["rows"], strict=True)):
        ratios = [row["samples_per_s"] / base for row, base in zip((a, b), naive, strict=True)]
        versus = "1.00×" if index == 0 else f"{ratios[0]:.2f}× / {ratios[1]:.2f}×"
        speeds = f"{a['samples_per_s']:.2f} / {b['samples_per_s']:.2f}"
        tokens = f"{a['tokens_per_s']:,.0f} / {b['tokens_per_s']:,.0f}"
        lines.append(f"| {a['mode']} | {speeds} | {tokens} | {a['mfu']:.1%} / {b['mfu']:.1%} | {versus} |")
    where = f"{first.get('gpu', first['device'])}, torch {first['torch']}"
    lines += ["", f"`{first['command']}` / `{second['command']}` ({where})."]
    return "\n".join(lines) + "\n"


def sweep_summary_table(report: dict) -> str:
    from loadtest.bootstrap_sweep import summary_table

    return summary_table(report["summary"])


def sweep_runs_table(report: dict) -> str:
    from loadtest.bootstrap_sweep import runs_table

    return runs_table(report["runs"])


def process_sweep_summary_table(report: dict) -> str:
    """The summary of a sweep of the models fine-tuned from the default one (a process model's, a judge's)."""
    from loadtest.process_sweep import summary_table, sweep_of

    return summary_table(report["summary"], sweep_of(report))


def process_sweep_runs_table(report: dict) -> str:
    from loadtest.process_sweep import runs_table, sweep_of

    return runs_table(report["runs"], sweep_of(report))


def judge_engine_table(report: dict) -> str:
    """A judge's vLLM engine beside a reward model's on one backbone: start-up and resident memory."""
    lines = ["| engine | start-up s (median, min–max) | engine RSS MiB (median) | rounds |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for name, rows in report["runs"].items():
        starts = [r["start_s"] for r in rows]
        memory = statistics.median(r["engine_rss_mib"] for r in rows)
        lines.append(f"| {name} | {statistics.median(starts):.1f} ({min(starts):.1f}–{max(starts):.1f}) "
                     f"| {memory:,.0f} | {len(rows)} |")  # fmt: skip
    lines += ["", f"`{report['command']}`."]
    return "\n".join(lines) + "\n"


def heads_table(report: dict) -> str:
    """The multi-head model's held-out accuracy per head over seeds (loadtest/multihead_seeds.py)."""
    seeds = [run["seed"] for run in report["runs"]]
    lines = ["| head | pairs | " + " | ".join(f"seed {s}" for s in seeds) + " | median (min–max) |",
             "| --- | --- | " + " | ".join("---" for _ in seeds) + " | --- |"]  # fmt: skip
    for head, row in report["summary"].items():
        values = " | ".join(f"{run['heads'][head]['accuracy']:.3f}" for run in report["runs"])
        lines.append(f"| {head} | {row['n']} | {values} | {row['median']:.3f} ({row['min']:.3f}–{row['max']:.3f}) |")
    seconds = [run["seconds"] for run in report["runs"]]
    lines += ["", f"`{report['command']}` (training {min(seconds):.0f}–{max(seconds):.0f} s per seed)."]
    return "\n".join(lines) + "\n"


def table_of(module: str, function: str = "table") -> Callable[[dict], str]:
    """A benchmark module's own table function (``loadtest.<module>.<function>``), imported when used."""

    def table(report: dict) -> str:
        return getattr(importlib.import_module(f"loadtest.{module}"), function)(report)

    return table


def eval_table(report: dict) -> str:
    from vlreward.training.evaluate import results_markdown

    return results_markdown(report)


KINDS: dict[str, Callable[..., str]] = {
    "suite": suite_table,
    "gpu_pair": gpu_pair_table,
    "sweep_summary": sweep_summary_table,
    "sweep_runs": sweep_runs_table,
    "process_sweep_summary": process_sweep_summary_table,
    "process_sweep_runs": process_sweep_runs_table,
    "judge_engine": judge_engine_table,
    "eval": eval_table,
    "heads": heads_table,
    "linear_kernels": table_of("linear_kernels"),
    "linear_kernels_forward": table_of("linear_kernels", "forward_table"),
    "openmp_teams": table_of("openmp_teams"),
    "prepare_threads": table_of("prepare_threads"),
    "packing": table_of("packing"),
}
"""How each kind of results file becomes a table (``gpu_pair`` takes two files joined by ``+``)."""


def results_path(name: str) -> Path:
    """A results file: a name in loadtest/results/, or a path from the repository's root."""
    return ROOT / name if "/" in name else RESULTS / name


def render(page: str) -> str:
    """``page`` with every marked table regenerated from its results file."""

    def table(match: re.Match) -> str:
        opening, kind, names, _, closing = match.groups()
        reports = [json.loads(results_path(name).read_text()) for name in names.split("+")]
        return opening + KINDS[kind](*(reports if len(reports) == 1 else [reports])) + closing

    return MARKED.sub(table, page)


def pages() -> list[Path]:
    return sorted(path for path in DOCS.glob("*.md") if MARKED.search(path.read_text()))


def main() -> None:
    check = "--check" in sys.argv[1:]
    stale = []
    for path in pages():
        text = path.read_text()
        fresh = render(text)
        if fresh != text:
            stale.append(path)
            if not check:
                path.write_text(fresh)
    for path in stale:
        print(f"{'stale' if check else 'rewrote'} {path.relative_to(ROOT)}", file=sys.stderr)
    sys.exit(1 if check and stale else 0)


if __name__ == "__main__":
    main()
