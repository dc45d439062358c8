"""Models as users bring them: a .gguf file, and Hugging Face folders of three architectures
with the quirks real checkpoints have (no pad token, several EOS ids, untied embeddings, no
chat template). Each trains, evaluates and chats; checkpoints are ordinary folders."""

import json

import pytest
import torch
from helpers import make_config, weights
from tiny_models import tiny_model, write_gguf
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.errors import DapoError
from dapo_cli.policy import load_policy
from dapo_cli.run import run_training

# (architecture, quirks): together every quirk on at least one architecture
MODELS = {
    "llama-untied-no-template": ("llama", dict(tie=False, chat_template=False)),
    "qwen2-two-eos": ("qwen2", dict(eos_ids=2)),
    "mistral-no-pad": ("mistral", dict(pad=False, eos_ids=2, tie=False)),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    built = {name: tiny_model(arch, root / name, **kw) for name, (arch, kw) in MODELS.items()}
    built["llama-for-gguf"] = tiny_model("llama", root / "llama-for-gguf")
    built["gguf"] = write_gguf(built["llama-for-gguf"], root / "tiny.gguf")
    built["gguf-untied"] = write_gguf(built["llama-untied-no-template"], root / "untied.gguf")
    return built


def _eval_file(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [{"task_type": "math", "prompt": f"What is {i} + 1?", "answer": str(i + 1),
             "split": "test"} for i in range(3)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", ["gguf", "gguf-untied"])
def test_a_gguf_file_loads_as_the_model_it_was_written_from(models, name):
    folder = models["llama-for-gguf"] if name == "gguf" else models["llama-untied-no-template"]
    original, from_gguf = load_policy(str(folder)), load_policy(str(models[name]))
    text = "What is 12 + 345? Answer: 357 (café)"
    ids = original.tokenizer(text)["input_ids"]
    assert from_gguf.tokenizer(text)["input_ids"] == ids
    assert from_gguf.format_prompt("hi") == original.format_prompt("hi")
    x = torch.tensor([ids])
    assert torch.equal(original.model(x).logits, from_gguf.model(x).logits)
    assert from_gguf.model.config.tie_word_embeddings == original.model.config.tie_word_embeddings


def test_a_gguf_model_trains_and_its_checkpoints_are_ordinary_folders(tmp_path, data_file, models):
    result = run_training(make_config(tmp_path, data_file, f"model.name={models['gguf']}",
                                      "algorithm.overlong_filtering=false"))  # fmt: skip
    assert result.status == "completed"
    assert (result.final_dir / "config.json").is_file()
    assert not list(result.final_dir.glob("*.gguf"))
    plain = AutoModelForCausalLM.from_pretrained(result.final_dir)  # no gguf_file, no quantizer
    assert getattr(plain.config, "quantization_config", None) is None
    start = weights(load_policy(str(models["gguf"])).model)
    assert any(not torch.equal(start[k], v) for k, v in weights(plain).items())


def test_eval_and_chat_take_a_gguf_file(tmp_path, models):
    db = tmp_path / "d.db"
    evaluated = CliRunner().invoke(app, [
        "eval", "--model", str(models["gguf"]), "--data", str(_eval_file(tmp_path)), "--k", "2",
        "--max-new-tokens", "8", "--db-path", str(db), "--json",
    ])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["models"][0]["summary"]["all"]["prompts"] == 3
    chat = CliRunner().invoke(app, [
        "chat", "--model", str(models["gguf"]), "--prompt", "What is 3 + 4?", "--seed", "1",
        "--max-new-tokens", "8", "--db-path", str(db),
    ])  # fmt: skip
    assert chat.exit_code == 0, chat.output


def test_a_broken_gguf_file_is_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(DapoError, match=r"could not load the GGUF model .*broken\.gguf"):
        load_policy(str(bad))
    result = CliRunner().invoke(app, ["chat", "--model", str(bad), "--prompt", "hi"])
    assert result.exit_code == 1
    assert "broken.gguf" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", list(MODELS))
def test_models_of_three_architectures_train_evaluate_and_chat(tmp_path, data_file, models, name):
    policy = load_policy(str(models[name]))
    configured = policy.model.generation_config.eos_token_id
    for i in [configured] if isinstance(configured, int) else configured:
        assert i in policy.stop_ids  # every EOS id of generation_config ends a response
    assert policy.tokenizer.pad_token is not None  # eos stands in where the model has none
    # a random model rarely stops within 8 tokens: keep truncated responses in the loss
    cfg = make_config(tmp_path, data_file, f"model.name={models[name]}",
                      "algorithm.overlong_filtering=false")  # fmt: skip
    result = run_training(cfg)
    assert result.status == "completed" and result.steps == 3
    saved = AutoModelForCausalLM.from_pretrained(result.final_dir)
    start = weights(policy.model)
    assert any(not torch.equal(start[k], v) for k, v in weights(saved).items())
    assert saved.config.tie_word_embeddings == policy.model.config.tie_word_embeddings
    evaluated = CliRunner().invoke(app, [
        "eval", "--model", str(result.final_dir), "--data", str(_eval_file(tmp_path)),
        "--k", "2", "--max-new-tokens", "8", "--db-path", str(tmp_path / "e.db"), "--json",
    ])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    chat = CliRunner().invoke(app, [
        "chat", "--model", str(result.final_dir), "--prompt", "What is 3 + 4?",
        "--max-new-tokens", "8", "--db-path", str(tmp_path / "e.db"),
    ])  # fmt: skip
    assert chat.exit_code == 0, chat.output


def test_several_eos_ids_all_end_a_response(models):
    """A response stops at whichever EOS id of generation_config comes first."""
    from dapo_cli.rollout import Sampling, TorchSampler

    policy = load_policy(str(models["qwen2-two-eos"]))
    second = policy.model.generation_config.eos_token_id[1]
    # make the second EOS id by far the likeliest token: every response is that one token
    with torch.no_grad():
        policy.model.lm_head.weight[second] += 50 * policy.model.model.norm.weight
    rollout = TorchSampler().sample(policy, policy.prompts_ids(["hi"]), 2, Sampling(8))
    assert rollout.lengths.tolist() == [1, 1]
