"""A vLLM general plugin (entry point ``vllm.general_plugins``): LoRA adapters with their own reward head on a
converted vision-language classifier.

vLLM 0.32 loads an adapter's full head (peft's ``modules_to_save: ["score"]``) only into a classifier whose
head is a top-level module named ``score`` or ``classifier``. A converted Qwen2.5-VL classifier keeps its head
at ``language_model.score``, so without this plugin the engine refuses every reward adapter ("the model does
not expose a unique ClassificationHeadWithLoRA"). The plugin lets vLLM's LoRA manager take that one nested
head as the classification head and find the adapter's ``score`` weights for it; vLLM's own
``ClassificationHeadWithLoRA`` then applies each request's head.

It changes nothing else: a model with a top-level head, a model with several candidate heads, and any engine
started without LoRA behave as without it. vLLM loads plugins in each of its processes (possibly more than
once), so :func:`register` is idempotent. ``VLLM_PLUGINS`` (vLLM's allow-list), when set, must name
``vlreward_lora_heads``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

PLUGIN_NAME = "vlreward_lora_heads"
"""The entry point's name (pyproject.toml), as ``VLLM_PLUGINS`` lists it."""
_PATCHED = "_vlreward_nested_heads"


def nested_head(model: Any, head_names: set[str]) -> str | None:
    """The model's one classification head below its top level (e.g. ``language_model.score``), when it has
    no top-level head and exactly one nested module with a head's name; None otherwise."""
    names = [name for name, _ in model.named_modules()]
    if any(name in head_names for name in names):
        return None
    nested = [name for name in names if name.rpartition(".")[2] in head_names]
    return nested[0] if len(nested) == 1 else None


def register() -> None:
    """Teach vLLM's LoRA manager a converted VL classifier's nested head (idempotent)."""
    try:
        from vllm.lora.model_manager import LoRAModelManager
    except ImportError:  # vLLM without LoRA support: nothing to teach
        return
    if getattr(LoRAModelManager, _PATCHED, False):
        return
    create_modules = LoRAModelManager._create_lora_modules
    module_to_save = LoRAModelManager._get_module_to_save_weights

    def _create_lora_modules(self: Any) -> None:
        head = nested_head(self.model, self.supported_modules_to_save) if self.supported_modules_to_save else None
        if head is not None:
            log.debug("vlreward: LoRA adapters' heads load into %s", head)
            self.supported_modules_to_save = self.supported_modules_to_save | {head}
        create_modules(self)

    def _get_module_to_save_weights(self: Any, lora_model: Any, module_name: str) -> Any:
        weights = module_to_save(self, lora_model, module_name)
        if weights is None and "." in module_name and module_name in self.supported_modules_to_save:
            weights = lora_model.get_module_to_save(module_name.rpartition(".")[2])  # the adapter's `score`
        return weights

    LoRAModelManager._create_lora_modules = _create_lora_modules
    LoRAModelManager._get_module_to_save_weights = _get_module_to_save_weights
    setattr(LoRAModelManager, _PATCHED, True)
