"""Configs: defaults < YAML < flags; unknown and ill-typed settings are named; the CLI is a thin layer."""

import importlib.util
import re

import pytest
import yaml
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import ConfigError, load_config, parse_overrides
from rlhfkit.train.sft import SFTConfig


def test_yaml_then_flags_override_defaults(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("lr: 1e-4\nbatch_size: 4\nlora: true\nlora_target_modules: [q_proj, v_proj]\n")
    flags = ["--batch-size", "8", "--max-steps=3", "--no-packing", "--data", "d.jsonl"]
    cfg = load_config(SFTConfig, path, parse_overrides(flags))
    assert cfg.lr == 1e-4 and cfg.batch_size == 8 and cfg.max_steps == 3 and cfg.lora is True
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.packing is False
    assert cfg.weight_decay == SFTConfig.model_fields["weight_decay"].default


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--lrr", "1"], "unknown setting 'lrr' (did you mean 'lr'?)"),
        (["--lr", "fast"], "setting 'lr': Input should be a valid number"),
        (["--batch-size", "0"], "setting 'batch_size': Input should be greater than 0"),
        (["--dtype", "float8"], "setting 'dtype'"),
        (["--seed", "-1"], "setting 'seed': Input should be greater than or equal to 0"),
        (["--adam-beta1", "2"], "setting 'adam_beta1': Input should be less than 1"),
        (["--max-grad-norm", "-1"], "setting 'max_grad_norm': Input should be greater than 0"),
    ],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, parse_overrides(overrides))
    assert message in str(err.value)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: not valid YAML \(expected .* at column 1\)"):
        load_config(SFTConfig, path)
    path.write_text("epochs: -1\n")
    with pytest.raises(ConfigError, match="bad.yaml: setting 'epochs'"):
        load_config(SFTConfig, path)


@pytest.mark.parametrize(
    "stage, overrides, message",
    [
        # PPO's own default dropped the bound: -1 failed late in torch, 0 turned zero-gradient weights into NaN
        ("ppo", ["--adam-eps", "0"], "setting 'adam_eps': Input should be greater than 0"),
        ("ppo", ["--adam-eps", "-1"], "setting 'adam_eps': Input should be greater than 0"),
        # an empty stop string cut every response to nothing, and counted it as ended
        ("ppo", ["--stop", "['', '.']"], "setting 'stop.0': String should have at least 1 character"),
    ],
)
def test_bad_settings_of_other_stages_are_named(stage, overrides, message):
    from rlhfkit.train.ppo import PPOConfig

    with pytest.raises(ConfigError) as err:
        load_config({"ppo": PPOConfig}[stage], None, parse_overrides(overrides))
    assert message in str(err.value)


def test_one_lora_module_name_is_a_list_of_one(tiny):
    """peft reads a string as a regex over the whole module path: "q_proj" alone matched nothing and failed after
    the model had loaded. One name is a list of one; "all-linear" stays peft's keyword."""
    import copy

    from rlhfkit.models.load import add_lora

    flags = ["--data", "toy", "--lora", "true", "--lora-target-modules", "q_proj"]
    cfg = load_config(SFTConfig, None, parse_overrides(flags))
    assert cfg.lora_target_modules == ["q_proj"]
    assert load_config(SFTConfig, None, {"data": "toy"}).lora_target_modules == "all-linear"
    model = add_lora(copy.deepcopy(tiny[0]), cfg)
    assert {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n} == {"q_proj"}


def test_a_config_file_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"# caf\xe9\nlr: 1e-4\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 5\)"):
        load_config(SFTConfig, tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match=r"config file: .*: cannot read it \(Is a directory\)"):
        load_config(SFTConfig, tmp_path)  # a folder


def test_a_bare_value_for_a_list_setting_is_one_item():
    """``--report-to tensorboard`` as ``[tensorboard]``; a setting that also takes a string keeps it as given."""
    flags = ["--data", "d.jsonl", "--report-to", "tensorboard", "--lora-target-modules", "all-linear"]
    cfg = load_config(SFTConfig, None, parse_overrides(flags))
    assert cfg.report_to == ["tensorboard"] and cfg.lora_target_modules == "all-linear"
    cfg = load_config(SFTConfig, None, parse_overrides([*flags[:2], "--report-to", "[jsonl, tensorboard]"]))
    assert cfg.report_to == ["jsonl", "tensorboard"]
    assert "--report-to (list: one value, or [a, b]," in CliRunner().invoke(app, ["sft", "--help"]).output


def test_a_flag_is_read_as_yaml_only_where_its_setting_takes_a_list_or_mapping():
    """A chat template starting with '{%' stays text; a list that is not valid YAML is one error naming the setting."""
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    flags = ["--data", "d.jsonl", "--chat-template", template, "--eval-data", "null"]
    cfg = load_config(SFTConfig, None, parse_overrides(flags))
    assert cfg.chat_template == template and cfg.eval_data is None
    with pytest.raises(ConfigError, match=r"setting 'report_to': .*lists are written \[a, b\]"):
        load_config(SFTConfig, None, parse_overrides(["--data", "d.jsonl", "--report-to", "[jsonl, tensor"]))


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    commands = [line.split()[0] for line in top.output.split("Commands:")[1].splitlines() if line.strip()]
    assert "sft" in commands
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, name
    sft_help = runner.invoke(app, ["sft", "--help"]).output
    assert "--lr" in sft_help and "--packing" in sft_help


def test_cli_runs_sft_and_saves_resolved_config(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["sft", "--data", "toy", "--output-dir", str(out), "--max-steps", "2", "--lr", "5e-4", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 5e-4 and saved["max_steps"] == 2 and saved["model"] == "tiny"
    assert load_config(SFTConfig, out / "config.yaml") == SFTConfig(**saved)
    # 'toy' was resolved at the edge to an ordinary file, which the card hashes like any user's data
    assert saved["data"].endswith("demonstration-seed0.jsonl")
    # the stage ends with its figures, not a bare folder name
    assert "sft finished" in result.output and "eval_loss" in result.output and "steps" in result.output


def test_cli_reports_bad_settings_with_exit_code_2():
    result = CliRunner().invoke(app, ["sft", "--lrr", "1", "--data", "toy"])
    assert result.exit_code == 2
    assert "unknown setting 'lrr'" in result.output


def test_data_and_reward_must_be_given():
    """No stage silently trains on the toy world or a toy reward."""
    for argv, missing in [(["sft"], "data"), (["ppo", "--data", "toy"], "reward"), (["bon"], "reward")]:
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2 and f"setting '{missing}': Field required" in result.output, argv


def test_help_lists_model_and_data_settings_first():
    text = CliRunner().invoke(app, ["ppo", "--help"]).output
    order = [text.index(s) for s in ("Model settings", "Data settings", "Reward settings", "Sampling settings")]
    assert order == sorted(order)
    assert order[-1] < text.index("This stage settings") < text.index("Optimiser settings") < text.index("Run settings")
    assert "--data (str, required)" in text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_serve_without_vllm_says_what_it_needs():
    result = CliRunner().invoke(app, ["vllm-serve", "--model", "tiny"])
    assert result.exit_code == 2 and "needs vLLM" in result.output and not isinstance(result.exception, Exception)


def test_a_check_across_settings_is_its_own_message_and_refuses_a_rejection_round_smaller_than_a_batch():
    from rlhfkit.config.stages import RejectionConfig

    flags = ["--data", "d.jsonl", "--reward", "r", "--max-prompts", "4"]
    with pytest.raises(ConfigError) as err:
        load_config(RejectionConfig, None, parse_overrides(flags))
    assert str(err.value).startswith("sft_batch_size 16 is more than the 4 examples a round trains on")
    assert load_config(RejectionConfig, None, parse_overrides([*flags, "--sft-batch-size", "4"])).max_prompts == 4


def test_a_stage_ends_by_printing_its_figures_per_model_and_round(tmp_path, capsys, monkeypatch):
    """Plain figures as they are; a list of named or numbered entries (a loop's rounds) as one row each, with one
    level of nesting (the round's gate) flattened; what cannot be shown in a cell is left out."""
    from rlhfkit.cli_run import print_figures
    from rlhfkit.runs import RunCard

    monkeypatch.setenv("COLUMNS", "200")
    figures = {"promoted": 1, "rounds": [{"round": 1, "pairs": 12, "gate": {"win_rate": 0.625, "failed": []}}],
               "models": [{"name": "a", "rows": 2}], "curve": [[1, 2]]}  # fmt: skip
    RunCard(id="loop-1", stage="loop", created="2026-12-03T10:00:00+0000", finished=True, figures=figures).write(
        tmp_path
    )
    print_figures(tmp_path)
    out = capsys.readouterr().out
    assert re.search(r"promoted\s*│\s*1\s", out)
    assert "rounds 1" in out and "pairs 12, gate.win_rate 0.625" in out and "models a" in out and "rows 2" in out
    assert "curve" not in out and "failed" not in out
