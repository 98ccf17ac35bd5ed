"""Importing the Skywork-VL-Reward layout reproduces the model card's scores, bias included."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.helpers import VLREWARD, shape_image, uri
from tests.service.model.conftest import BIAS
from vlreward.service.backends.transformers import TransformersBackend
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import CheckpointError
from vlreward.service.model.convert import convert_skywork
from vlreward.service.model.probe import read_probe
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample


def _conversations():
    return [
        ([shape_image("red")], "What colour is the circle?", "It is red."),
        ([shape_image("blue", "square"), shape_image("green", size=(112, 84))], "Describe both.", "Blue, green."),
        ([], "Tell me a joke.", "Why did the chicken cross the road?"),
    ]


def _model_card_scores(directory):
    """Skywork-VL-Reward's model-card procedure: value head on hidden_states[-1][attention_mask.sum-1]."""
    from safetensors.torch import load_file
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(directory)
    head = load_file(directory / "value_head.safetensors")
    v_head = torch.nn.Linear(128, 1)
    v_head.weight.data, v_head.bias.data = head["v_head.summary.weight"], head["v_head.summary.bias"]
    scores = []
    for images, question, answer in _conversations():
        messages = [
            {"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer},
        ]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        inputs = processor(text=[text], images=images or None, padding=True, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs, return_dict=True, output_hidden_states=True)
            last_token_index = inputs["attention_mask"].sum(dim=-1) - 1
            scores.append(v_head(outputs.hidden_states[-1][0, last_token_index]).item())
    return scores


def _samples():
    return [
        {"prompt": question, "response": answer, "images": [uri(i) for i in images]}
        for images, question, answer in _conversations()
    ]


def test_converted_skywork_checkpoint_scores_like_the_model_card(skywork_dir, tmp_path):
    reference = _model_card_scores(skywork_dir)
    converted = convert_skywork(skywork_dir, tmp_path / "converted")
    backend = TransformersBackend(converted, device="cpu")
    formatted = [prepare_sample(Sample(**s), backend.processor, MediaPolicy()) for s in _samples()]
    ours = backend.score_sync(formatted)
    for expected, actual in zip(reference, ours, strict=True):
        assert abs(expected - actual) <= 1e-5
    # The bias is carried over: the same scores minus the bias equal the head without it.
    assert backend.model.score.bias.item() == BIAS


def test_vlreward_convert_and_score_commands_match_the_model_card(skywork_dir, tmp_path):
    reference = _model_card_scores(skywork_dir)
    destination = tmp_path / "converted"
    subprocess.run(
        [VLREWARD, "convert", "--from", "skywork", str(skywork_dir), str(destination)],
        check=True,
    )
    assert read_probe(destination) is not None
    assert TransformersBackend(destination, device="cpu").check_probe() is not None
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(s) + "\n" for s in _samples()))
    outputs = tmp_path / "out.jsonl"
    command = [VLREWARD, "score", "--model", str(destination)]
    subprocess.run([*command, "--input", str(inputs), "--output", str(outputs)], check=True)
    scores = [json.loads(line)["score"] for line in outputs.read_text().splitlines()]
    for expected, actual in zip(reference, scores, strict=True):
        assert abs(expected - actual) <= 1e-5


def test_convert_refuses_a_directory_without_value_head(tiny_base, tmp_path):
    with pytest.raises(CheckpointError, match="value_head.safetensors"):
        convert_skywork(tiny_base, tmp_path / "out")
