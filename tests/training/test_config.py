"""Recipes: every field declared once (typed, with a default and a help text), listed by `vlreward train
--help`, overridable with --set (stages too), and a bad key or value anywhere is one line, exit 2."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from vlreward.cli import app
from vlreward.training.config import RECIPES_DIR, RecipeError, StageConfig, TrainConfig, load_recipe


class Done:
    """What a `vlreward train` call printed and returned (in process: typer's runner)."""

    def __init__(self, *args: str):
        result = CliRunner().invoke(app, ["train", *args])
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def train(*args: str) -> Done:
    return Done(*args)


def test_train_help_lists_every_field_of_the_recipe_and_of_a_stage():
    helped = " ".join(train("--help").stdout.split())  # rich wraps lines
    for name, field in TrainConfig.model_fields.items():
        assert field.description and f"{name} (" in helped, name
    for name, field in StageConfig.model_fields.items():
        assert field.description and f"stages.N.{name} (" in helped, name
    assert "--set" in helped


def test_set_overrides_any_field_stages_included_with_yaml_values():
    config = load_recipe("tiny", ["stages.1.learning_rate=3e-5", "batch_size=2", "adam_betas=[0.8, 0.9]"])
    assert config.stages[1].learning_rate == 3e-5 and config.batch_size == 2 and config.adam_betas == (0.8, 0.9)
    assert load_recipe("tiny").stages[1].learning_rate == 2e-5  # the shipped recipe is untouched


def test_a_number_yaml_reads_as_text_is_still_a_number(tmp_path):
    recipe = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())
    recipe["stages"][0]["learning_rate"] = "1e-4"  # PyYAML reads 1e-4 (no dot) as a string
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(str(path)).stages[0].learning_rate == 1e-4


@pytest.mark.parametrize(
    ("change", "named"),
    [({"batchsize": 4}, "batchsize: unknown key"),
     ({"stages": [{"name": "s", "learning_rate": 1e-4, "epoch": 2}]}, "stages.0.epoch: unknown key"),
     ({"batch_size": "four"}, "batch_size:"),
     ({"stages": [{"name": "s", "learning_rate": 1e-4, "schedule": "cosin"}]}, "stages.0.schedule:"),
     ({"lr_multipliers": {"mergr": 2}}, "lr_multipliers.mergr")],
)  # fmt: skip
def test_a_bad_key_or_value_anywhere_is_one_line_naming_it_and_exit_2(tmp_path, change, named):
    recipe = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text()) | change
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match=named.replace(".", r"\.")):
        load_recipe(str(path))
    done = train("--data", str(tmp_path), "--output", str(tmp_path / "run"), "--recipe", str(path))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr


def test_a_bad_override_is_one_line_naming_it_and_exit_2(tmp_path):
    for override, named in (("stages.7.epochs=1", "stages.7"), ("stages.0.learnig_rate=1", "learnig_rate"),
                            ("seed", "KEY=VALUE")):  # fmt: skip
        done = train("--data", str(tmp_path), "--output", str(tmp_path / "run"), "--set", override)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
        assert named in done.stderr and "Traceback" not in done.stderr


def test_an_override_below_a_plain_value_is_one_line_too():
    with pytest.raises(RecipeError, match="seed holds a value, not keys"):
        load_recipe("tiny", ["seed.x=1"])
