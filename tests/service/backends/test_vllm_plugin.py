"""The vLLM plugin that lets LoRA adapters carry their head on a converted VL classifier: which module it
takes as the head, that the installed package declares it to vLLM, and that registering twice is harmless."""

from __future__ import annotations

from importlib.metadata import entry_points

from torch import nn

from vlreward.service.backends.vllm_plugin import PLUGIN_NAME, nested_head, register

HEADS = {"score", "classifier"}


def model(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


def test_the_one_nested_head_of_a_vl_classifier_is_taken_and_nothing_else():
    vl = model(visual=nn.Linear(2, 2), language_model=model(model=nn.Linear(2, 2), score=nn.Linear(2, 1)))
    assert nested_head(vl, HEADS) == "language_model.score"
    assert nested_head(model(model=nn.Linear(2, 2), score=nn.Linear(2, 1)), HEADS) is None  # vLLM's own case
    two = model(a=model(score=nn.Linear(2, 1)), b=model(classifier=nn.Linear(2, 1)))
    assert nested_head(two, HEADS) is None  # ambiguous: left to vLLM, which refuses it
    assert nested_head(model(language_model=nn.Linear(2, 2)), HEADS) is None


def test_the_package_declares_the_plugin_and_registering_twice_patches_once():
    from vllm.lora.model_manager import LoRAModelManager

    declared = {point.name: point.value for point in entry_points(group="vllm.general_plugins")}
    assert declared[PLUGIN_NAME] == "vlreward.service.backends.vllm_plugin:register"
    register()
    patched = LoRAModelManager._create_lora_modules
    register()
    assert LoRAModelManager._create_lora_modules is patched
