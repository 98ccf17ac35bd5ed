"""LoRA reward adapters on the training side: train one with peft (``vlreward train --lora``), write one, and
merge one into its base (``vlreward merge-adapter``: a plain reward checkpoint that scores the same).

The adapter format is peft's (:mod:`vlreward.service.model.lora`): the language model's linear layers adapted,
the head saved whole (``modules_to_save: ["score"]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlreward.service.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_MODULE, PEFT_PREFIX, read_adapter

TARGET_MODULES = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""The layers ``vlreward train --lora`` adapts (a peft regex): every linear layer of the language model."""
RUN_LORA_FILE = "lora.json"
"""In a training run's folder: the LoRA configuration a LoRA run trains (its export writes an adapter)."""


def adapter_config(rank: int, alpha: float, targets: str | list[str] = TARGET_MODULES, base: str = "") -> dict:
    """peft's ``adapter_config.json`` of a reward adapter."""
    return {"peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
            "target_modules": targets, "modules_to_save": [HEAD_MODULE], "bias": "none", "use_rslora": False,
            "use_dora": False, "base_model_name_or_path": base, "fan_in_fan_out": False}  # fmt: skip


def write_adapter(
    directory: Path, layers: dict[str, tuple[torch.Tensor, torch.Tensor]], head_weight: torch.Tensor,
    head_bias: torch.Tensor | None, config: dict,
) -> Path:  # fmt: skip
    """An adapter folder in peft's layout from its weights: module -> (A, B), and the head."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in layers.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    tensors[f"{PEFT_PREFIX}{HEAD_MODULE}.weight"] = head_weight.contiguous()
    if head_bias is not None:
        tensors[f"{PEFT_PREFIX}{HEAD_MODULE}.bias"] = head_bias.contiguous()
    save_file(tensors, directory / ADAPTER_WEIGHTS)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def merge_adapter(base_dir: Path, adapter_dir: Path, output: Path) -> Path:
    """The base with the adapter merged in (W + s B A in every adapted layer, the adapter's head): a reward
    checkpoint that scores what the adapter served on the base scores (float rounding apart), with its probe."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.service.kinds import process_head
    from vlreward.service.model.checkpoint import load_reward_model, save_reward_model

    adapter = read_adapter(adapter_dir)
    model, processor = load_reward_model(base_dir)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, (a, b) in adapter.layers.items():
            weight = modules[name].weight
            weight += (adapter.scale * (b @ a)).to(weight.dtype)
        model.score.weight.copy_(adapter.head_weight)
        if model.score.bias is not None:
            model.score.bias.copy_(adapter.head_bias if adapter.head_bias is not None else torch.zeros(1))
        elif adapter.head_bias is not None:
            model.score.bias = torch.nn.Parameter(adapter.head_bias.clone())
    save_reward_model(model, processor, output, process=process_head(base_dir))  # the base's kind
    stamp_reference_probe(output)
    return Path(output)


def random_adapter(base_dir: Path, output: Path, seed: int, rank: int = 4, std: float = 0.05) -> Path:
    """An adapter of the base's attention projections with seeded random weights (tests, benchmarks)."""
    from vlreward.service.model.checkpoint import load_reward_model

    model, _ = load_reward_model(base_dir)
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in model.named_modules():
        if name.startswith("model.language_model.layers.") and name.endswith(("q_proj", "v_proj", "down_proj")):
            a = torch.randn(rank, module.in_features, generator=generator) * std
            b = torch.randn(module.out_features, rank, generator=generator) * std
            layers[name] = (a, b)
    hidden = model.score.weight.shape[1]
    head = torch.randn(1, hidden, generator=generator) / hidden**0.5
    bias = torch.randn(1, generator=generator)
    config = adapter_config(rank, 2.0 * rank, sorted({n.rsplit(".", 1)[1] for n in layers}), str(base_dir))
    return write_adapter(output, layers, head, bias, config)


def stamp_adapter_probe(base_dir: Path, *adapter_dirs: Path) -> Any:
    """Each adapter's probe: the probe sample scored in float32 on its base with the adapter (no scale: 16-bit
    backends are held to the absolute tolerance); the base is loaded once. Returns the last probe."""
    from vlreward.service.backends.adapter import AdapterBackend
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.model.probe import Probe, probe_sample, write_probe
    from vlreward.service.prepare import prepare_request_sample

    base = TransformersBackend(base_dir, dtype="float32", device="cpu")
    sample = probe_sample(steps=base.process is not None)
    try:
        for adapter_dir in adapter_dirs:
            backend = AdapterBackend(base, adapter_dir, Path(adapter_dir).name)
            score = backend.score_sync([prepare_request_sample(sample, base.processor, None, base.step_tag)])[0]
            steps = score if isinstance(score, list) else None  # a process model's: every step's
            last = score if steps is None else steps[-1]
            probe = Probe(sample=sample, score=last, dtype="float32", device="cpu", step_scores=steps)
            write_probe(adapter_dir, probe)
        return probe
    finally:
        base.release()


def lora_model_from_base(base_dir: Path, rank: int = 8, alpha: float | None = None) -> tuple[Any, Any]:
    """A reward checkpoint with peft's LoRA on its language model's linear layers (:data:`TARGET_MODULES`) and
    its head trained whole (a copy: ``modules_to_save``); only those train."""
    from peft import LoraConfig, get_peft_model

    from vlreward.service.model.checkpoint import load_reward_model

    model, processor = load_reward_model(base_dir)
    model.train()
    config = LoraConfig(r=rank, lora_alpha=alpha or 2.0 * rank, lora_dropout=0.0, target_modules=TARGET_MODULES,
                        modules_to_save=[HEAD_MODULE])  # fmt: skip
    return get_peft_model(model, config), processor


def write_run_lora(run_dir: Path, base_dir: Path, rank: int, alpha: float | None) -> None:
    """Record that the run in ``run_dir`` trains a LoRA adapter of ``base_dir`` (its export writes the adapter)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / RUN_LORA_FILE).write_text(json.dumps({"base": str(base_dir), "rank": rank, "alpha": alpha}) + "\n")


def run_lora(run_dir: Path) -> dict | None:
    """The LoRA settings the run in ``run_dir`` trained with (None: not a LoRA run)."""
    path = Path(run_dir) / RUN_LORA_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def export_adapter(checkpoint_dir: Path, output: Path) -> Any:
    """A LoRA run's trainer checkpoint -> its adapter folder (peft's ``save_pretrained``) with its probe."""
    from safetensors.torch import load_file

    lora = run_lora(Path(checkpoint_dir).parent)
    model, _ = lora_model_from_base(Path(lora["base"]), lora["rank"], lora["alpha"])
    result = model.load_state_dict(load_file(Path(checkpoint_dir) / "model.safetensors"), strict=False)
    if result.unexpected_keys or any("lora_" in key or "modules_to_save" in key for key in result.missing_keys):
        raise ValueError(f"{checkpoint_dir}: the checkpoint does not match a LoRA model of {lora['base']}")
    model.save_pretrained(output)
    read_adapter(output)  # what the server loads
    return stamp_adapter_probe(Path(lora["base"]), Path(output))
