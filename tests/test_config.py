"""The typed config: one definition, rendered to templates/default.yaml; bad input fails early."""

from pathlib import Path

import pytest

from dapo_cli.config import Config, load_config, reference_table, render_yaml, to_yaml
from dapo_cli.errors import DapoError
from dapo_cli.paths import templates_dir


def test_default_yaml_is_rendered_from_the_config():
    on_disk = (templates_dir() / "default.yaml").read_text()
    assert on_disk == render_yaml(), "run: python -m dapo_cli.config > templates/default.yaml"


def test_default_yaml_loads_to_the_defaults():
    assert load_config(templates_dir() / "default.yaml") == Config()


def test_every_field_is_documented_in_yaml_and_table():
    text, table = render_yaml(), reference_table()
    for section, values in Config().to_dict().items():
        for key in values:
            assert f"  {key}: " in text
            assert f"`{section}.{key}`" in table


def test_a_run_config_saved_as_yaml_loads_back_equal(tmp_path: Path):
    """output_dir/config.yaml is what the printed resume command reads."""
    config = load_config(
        None,
        ["model.name=my model: v2", "data.task_types=[puzzle, math]", "algorithm.dual_clip=3",
         "train.lr=3e-7", "rollout.top_p=0.95", "warm_start.enabled=off"],
    )  # fmt: skip
    (tmp_path / "c.yaml").write_text(to_yaml(config), encoding="utf-8")
    assert load_config(tmp_path / "c.yaml") == config
    assert load_config(tmp_path / "c.yaml") != Config()


def test_overrides_are_typed():
    c = load_config(None, ["train.lr=3e-4", "algorithm.dual_clip=3", "data.task_types=math,code",
                           "algorithm.dynamic_sampling=off", "model.name=some/model"])  # fmt: skip
    assert c.train.lr == 3e-4 and c.algorithm.dual_clip == 3.0
    assert c.data.task_types == ["math", "code"]
    assert c.algorithm.dynamic_sampling is False and c.model.name == "some/model"
    assert load_config(None, ["algorithm.dual_clip=null"]).algorithm.dual_clip is None
    # the cache length only matters with the soft punishment on
    off = ["algorithm.soft_overlong_punishment=false", "rollout.max_new_tokens=8"]
    assert load_config(None, off).algorithm.overlong_cache_len >= 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown key train.lrr"),
        ("nope.lr=1", "unknown section 'nope'"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("train.steps=1.5", "train.steps: expected an integer"),
        ("algorithm.dynamic_sampling=maybe", "expected true or false"),
        ("algorithm.loss_agg=sum", "'sum' is not one of token-mean, seq-mean-token-mean"),
        ("train.mini_batch_size=100", "mini_batch_size must be between 1 and"),
        ("algorithm.overlong_cache_len=64", "overlong_cache_len must be in"),
        ("algorithm.dual_clip=0.5", "dual_clip must be > 1"),
        ("lr=1", "--set expects section.key=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(DapoError, match=message.replace("[", r"\[")):
        load_config(None, [override])


def test_bad_files(tmp_path: Path):
    with pytest.raises(DapoError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(DapoError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(DapoError, match="unknown key train.stepz"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(DapoError, match="expected sections"):
        load_config(bad)


def test_docs_config_reference_is_the_generated_table():
    readme = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert readme.split(start, 1)[1].split(end, 1)[0] == reference_table()


def test_a_group_of_one_with_dynamic_sampling_is_rejected_in_one_line():
    with pytest.raises(DapoError) as err:
        load_config(None, ["rollout.group_size=1"])
    assert "\n" not in str(err.value) and "can never fill a batch" in str(err.value)
    load_config(None, ["rollout.group_size=1", "algorithm.dynamic_sampling=false"])
