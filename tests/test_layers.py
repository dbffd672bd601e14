"""The command line's start-up (no ML stack imported for --help or the annotation server), third-party noise kept
off, and the layering of the package (the toy world at the edge, no import back up a layer)."""

import ast
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rlhfkit
from rlhfkit.config import stages

PACKAGE = Path(rlhfkit.__file__).parent
REPO = PACKAGE.parent


def test_the_cli_and_the_annotation_server_import_no_ml_stack(tmp_path):
    code = f"""
import os, sys
os.environ.update(RLHFKIT_ANNOTATE_DB={str(tmp_path / "a.db")!r}, RLHFKIT_ANNOTATE_STRATEGY="round-robin",
                  RLHFKIT_ANNOTATE_OVERLAP="1", RLHFKIT_ANNOTATE_GOLD_RATE="0", RLHFKIT_ANNOTATE_SESSION_HOURS="1")
import rlhfkit.cli
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
from rlhfkit.feedback.cli import app_from_env
from rlhfkit.feedback.cli_admin import open_store
open_store(os.environ["RLHFKIT_ANNOTATE_DB"])
app_from_env()
heavy += [m for m in ("torch", "transformers") if m in sys.modules]
print(heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["annotate", "--help"]])
def test_help_starts_fast(argv):
    """Under 0.5 s of CPU on an idle machine (the figure is in the closing note); asserted with room for a busy
    CI machine, and far under the ~3 s that importing torch alone would take."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "rlhfkit.cli", *argv], capture_output=True, text=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert out.returncode == 0 and "Usage" in out.stdout
    print(f"rlhfkit {' '.join(argv)}: {cpu:.2f} s CPU")
    assert cpu < 1.5


# Layers from the bottom up: a module may import its own layer and those below, never one above. The toy world
# sits near the top, beside the pipelines that use it: no core layer imports it.
LAYERS = [
    ["config", "losses", "models.catalog", "openai_api", "tb_events", "quiet"],
    ["specs", "runs", "data"],
    ["models"],
    ["rollout", "rewards", "judges"],
    ["vllm_backend"],  # the optional engine, built on the built-in sampler's types
    ["samplers"],  # picks a backend: above both, so neither imports the other back
    ["train", "evaluate", "ai_feedback"],
    ["toy", "feedback", "registry", "serve", "pipelines"],
    ["cli", "cli_run", "launch"],
]


def layer_of(module: str) -> int | None:
    name = module.removeprefix("rlhfkit.")
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or name.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[1]):  # the most specific prefix decides
                best = (level, len(prefix))
    return best[0] if best else None


def test_no_import_runs_back_up_a_layer_and_the_toy_world_stays_at_the_edge():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        own = layer_of(module)
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                target = layer_of(name) if name.startswith("rlhfkit.") else None
                if target is not None and target > own:
                    offenders.append(f"{module} -> {name}")
    assert offenders == []
    assert layer_of("rlhfkit.toy.world") > max(layer_of(f"rlhfkit.{core}") for core in ("data", "train", "rollout"))


def test_the_shipped_tiny_tokenizer_is_what_the_toy_corpus_trains():
    from rlhfkit.models.tiny import TOKENIZER_FILE
    from rlhfkit.toy.tokenizer import serialized

    assert TOKENIZER_FILE.read_text().strip() == serialized()


def test_sampling_settings_have_one_set_of_defaults():
    from rlhfkit.config import SamplingPart

    for cls in (stages.PPOConfig, stages.BestOfNConfig, stages.RejectionConfig):
        for name, field in SamplingPart.model_fields.items():
            assert cls.model_fields[name].default == field.default, (cls.__name__, name)
    assert yaml.safe_load(SamplingPart().to_yaml())["temperature"] == 1.0


def test_the_experiments_are_as_quiet_as_the_program_even_with_transformers_imported_first():
    """`python -m rlhfkit.toy.experiments.X` imports transformers before it parses its arguments, so the
    environment variables come too late there: the switch then turns the library's bars and logs off itself."""
    code = (
        "import transformers.utils.logging as log\n"
        "assert log.is_progress_bar_enabled()\n"
        "from rlhfkit.quiet import quiet_third_parties\n"
        "quiet_third_parties()\n"
        "assert not log.is_progress_bar_enabled() and log.get_verbosity() == log.ERROR\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_", "HF_"))}
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "PYTHONPATH": str(PACKAGE.parent)})


def test_plain_tqdm_bars_stay_off_unless_asked_for():
    """transformers converts a GGUF model on its first use under a plain tqdm bar that its own progress-bar switch
    does not reach; the switch turns tqdm off before it is imported, and leaves it on when asked to."""
    code = (
        "import sys\n"
        "from rlhfkit.quiet import quiet_third_parties\n"
        "quiet_third_parties(verbose=sys.argv[1] == 'verbose')\n"
        "from tqdm.auto import tqdm\n"
        "for _ in tqdm(range(3), desc='Converting and de-quantizing GGUF tensors...'): pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    env["PYTHONPATH"] = str(PACKAGE.parent)
    for mode in ("quiet", "verbose"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, check=True)
        assert ("Converting" in out.stderr) is (mode == "verbose"), (mode, out.stderr)


def test_deepspeed_warnings_stay_off_unless_asked_for():
    """DeepSpeed (installed with the `deepspeed` extra) is imported by accelerate and logs a warning on every CPU
    run; its logger sets its own level and handler on import, so the switch filters it beforehand."""
    code = (
        "import logging, sys\n"
        "from rlhfkit.quiet import quiet_third_parties\n"
        "quiet_third_parties(verbose=sys.argv[1] == 'verbose')\n"
        "log = logging.getLogger('DeepSpeed')\n"  # what deepspeed.utils.logging does on import
        "log.setLevel(logging.WARNING); log.propagate = False; log.addHandler(logging.StreamHandler(sys.stdout))\n"
        "log.warning('Setting accelerator to CPU.')\n"
        "log.error('a real error')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    for mode, expected in (("quiet", "a real error\n"), ("verbose", "Setting accelerator to CPU.\na real error\n")):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, check=True)
        assert out.stdout == expected, mode


def test_the_experiments_help_lists_their_own_settings(capsys, monkeypatch):
    """`python -m rlhfkit.toy.experiments.X --help` names every setting the experiment takes after --seeds and
    --output-dir (they reach its config through parse_known_args, which argparse's own help does not see)."""
    from rlhfkit.toy.experiments.common import run_seeds
    from rlhfkit.toy.experiments.overoptimisation import OveroptimisationConfig

    monkeypatch.setattr(sys, "argv", ["overoptimisation", "--help"])
    with pytest.raises(SystemExit) as exit_:
        run_seeds("the experiment", OveroptimisationConfig, run=None, summarise=None, default_dir="unused")
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for name in OveroptimisationConfig.model_fields:
        assert f"--{name.replace('_', '-')} (" in shown, name
