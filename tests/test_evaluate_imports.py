"""What the evaluation modules may import: the monitor never reaches the gold utility (it must judge what training
can see), the general safety checks never reach the toy world, and the pure modules load without torch or
matplotlib (the CLI imports them before any stage runs).

Run: PYTHONPATH=. python -m pytest tests/test_evaluate_imports.py -q
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rlhfkit

PACKAGE = Path(rlhfkit.__file__).parent
PURE = [
    "rlhfkit.evaluate.stats",
    "rlhfkit.evaluate.length_control",
    "rlhfkit.evaluate.reward_model_metrics",
    "rlhfkit.evaluate.overoptimisation",
    "rlhfkit.evaluate.monitor",
    "rlhfkit.evaluate.safety",
    "rlhfkit.evaluate.schema",
    "rlhfkit.evaluate.leaderboard",
]
# Everything that measures the monitor's signals or acts on them: none of it may reach the gold utility.
MONITOR_SIDE = [
    "rlhfkit.evaluate.monitor",
    "rlhfkit.train.monitoring",
    "rlhfkit.train.ppo",
    "rlhfkit.train.dpo",
    "rlhfkit.train.best_of_n",
    "rlhfkit.train.rejection",
]


def module_file(name: str) -> Path | None:
    """The file of an rlhfkit module (package -> its __init__.py), None for a name that is not a module."""
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def rlhfkit_imports(path: Path) -> set[str]:
    """rlhfkit modules a file imports anywhere in it (also inside functions), ``from a import b`` giving a and a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] == "rlhfkit" and module_file(n) is not None}


def reachable(module: str) -> set[str]:
    """Every rlhfkit module ``module`` imports, directly or through others, with the packages on the way."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for n in [".".join(parts[:i]) for i in range(1, len(parts) + 1)]:  # importing a.b.c runs a and a.b
            if n not in seen:
                seen.add(n)
                todo.extend(rlhfkit_imports(module_file(n)))
    return seen


def test_reachable_follows_imports_inside_functions():
    """Sanity check of the walker: reward_model_metrics imports rlhfkit.losses only inside a function."""
    assert "rlhfkit.losses" in reachable("rlhfkit.evaluate.reward_model_metrics")


@pytest.mark.parametrize("module", MONITOR_SIDE)
def test_the_monitor_never_reaches_the_gold_utility(module):
    assert {m for m in reachable(module) if m.startswith("rlhfkit.toy")} == set()


def test_the_monitor_refuses_the_gold_utility_as_a_signal():
    """The imports cannot see a reward setting given at run time: the monitor refuses the gold one by name."""
    from rlhfkit.train.monitoring import refuse_gold

    for spec in ("rlhfkit.toy.judge:gold", "runs/rm-2, rlhfkit.toy.gold:utility"):
        with pytest.raises(ValueError, match="gold utility, which the monitor must not see"):
            refuse_gold(spec, "monitor_reward")
    refuse_gold("runs/rm-2,rlhfkit.toy.rewards:length", "monitor_reward")  # other toy rewards are ordinary signals


def test_the_general_safety_checks_never_reach_the_toy_world():
    assert {m for m in reachable("rlhfkit.evaluate.safety") if m.startswith("rlhfkit.toy")} == set()


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_load_without_torch_or_matplotlib(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"
