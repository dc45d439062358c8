"""LoRA (peft): only the adapters train, checkpoints hold the adapter and name its base,
eval and chat load it merged, `dapo merge` writes an ordinary model, a run resumes exactly."""

import json

import pytest
import torch
from helpers import Crash, CrashAt, make_config, weights
from tiny_models import tiny_model, write_gguf
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.errors import DapoError
from dapo_cli.observer import TrainObserver
from dapo_cli.policy import load_policy
from dapo_cli.run import run_training

# a random model rarely stops within 8 tokens: keep truncated responses in the loss
LORA = ("lora.r=4", "algorithm.overlong_filtering=false")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_model("llama", tmp_path_factory.mktemp("base") / "llama")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base, data_file):
    """One LoRA run: (its result, what it said)."""
    said = []

    class Listen(TrainObserver):
        def message(self, text):
            said.append(text)

    out = tmp_path_factory.mktemp("lora")
    cfg = make_config(out, data_file, f"model.name={base}", *LORA)
    return run_training(cfg, observer=Listen()), said


def test_only_the_adapters_train_and_the_checkpoint_is_the_adapter(base, trained):
    result, said = trained
    assert result.status == "completed"
    files = {p.name for p in result.final_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files and "config.json" not in files
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve()) and config["r"] == 4
    assert any(m.startswith("LoRA: r 4, alpha 32 on all-linear") for m in said)
    merged = weights(load_policy(str(result.final_dir), dtype="float32").model)
    start = weights(base)
    changed = {k for k in start if not torch.equal(start[k], merged[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # adapted layers only
    assert "model.embed_tokens.weight" not in changed and "model.norm.weight" not in changed


def test_eval_and_chat_load_the_adapter_and_merge_writes_an_ordinary_model(tmp_path, trained):
    adapter = trained[0].final_dir
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"task_type": "math", "prompt": "What is 1 + 1?", "answer": "2",
                                "split": "test"}) + "\n")  # fmt: skip
    db = str(tmp_path / "d.db")
    evaluated = CliRunner().invoke(app, [
        "eval", "--model", str(adapter), "--data", str(data), "--k", "2",
        "--max-new-tokens", "6", "--db-path", db,
    ])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    chat = CliRunner().invoke(app, ["chat", "--model", str(adapter), "--prompt", "hi",
                                    "--max-new-tokens", "6", "--db-path", db])  # fmt: skip
    assert chat.exit_code == 0, chat.output

    merged = CliRunner().invoke(app, ["merge", str(adapter), "--output", str(tmp_path / "m")])
    assert merged.exit_code == 0, merged.output
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # no peft involved
    x = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(
        plain(x).logits, load_policy(str(adapter), dtype="float32").model(x).logits, atol=1e-6
    )
    assert not list((tmp_path / "m").glob("adapter_*"))


def test_a_lora_run_resumes_exactly(tmp_path, base, data_file):
    extra = (f"model.name={base}", *LORA, "train.steps=4")
    straight = run_training(make_config(tmp_path / "a", data_file, *extra))
    cfg = make_config(tmp_path / "b", data_file, *extra)
    with pytest.raises(Crash):
        run_training(cfg, observer=CrashAt(3))
    resumed = run_training(cfg, resume=True)
    a, b = (
        weights(load_policy(str(straight.final_dir)).model),
        weights(load_policy(str(resumed.final_dir)).model),
    )
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed LoRA run diverged"


def test_an_adapter_on_a_gguf_base_names_the_file(tmp_path, base, data_file):
    gguf = write_gguf(base, tmp_path / "base.gguf")
    result = run_training(make_config(tmp_path, data_file, f"model.name={gguf}", *LORA))
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(gguf.resolve())
    assert load_policy(str(result.final_dir)).model.config.model_type == "llama"


def test_lora_mistakes_are_one_line(tmp_path, base, data_file):
    with pytest.raises(DapoError, match="lora.target_modules='nope'"):
        run_training(make_config(tmp_path, data_file, f"model.name={base}", *LORA,
                                 "lora.target_modules=nope"))  # fmt: skip
    with pytest.raises(DapoError, match="lora.r > 0 with rollout.engine=vllm"):
        make_config(tmp_path, data_file, *LORA, "rollout.engine=vllm")
    result = CliRunner().invoke(app, ["merge", str(base), "--output", str(tmp_path / "m")])
    assert result.exit_code == 1 and "is not a LoRA adapter folder" in result.output
