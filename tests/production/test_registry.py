"""The registry on SQLite and PostgreSQL: immutable versions from run folders, aliases that move and roll back as a
stack, compare-and-set, concurrent promotions from several processes, lineage as text and as a picture, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.registry.experiments import Arm, Experiments, assign
from rlhfkit.registry.lineage import lineage
from rlhfkit.registry.store import AliasConflict, Registry, RegistryError
from rlhfkit.runs import Parent, RunCard
from tests.production.conftest import fake_run, tiny_policy

REPO = Path(__file__).resolve().parents[2]


def test_versions_are_immutable_numbered_and_made_only_from_finished_runs(db, tmp_path):
    registry = Registry.open(db)
    sft = fake_run(tmp_path, "sft", "sft")
    v1 = registry.register(str(sft))
    assert (v1.ref, v1.kind, v1.stage, v1.source_kind) == ("policy:1", "policy", "sft", "run")
    assert v1.card["id"] == RunCard.read(sft).id and len(v1.content_hash) == 16
    assert registry.register(str(sft)).id == v1.id  # the same run again: the version it already is
    dpo = fake_run(tmp_path, "dpo", parents=[Parent(role="model", path=str(sft), id=v1.run_id)])
    v2 = registry.register(str(dpo), labels={"live": {"n": 12}})
    assert v2.ref == "policy:2" and registry.resolve("policy:latest").id == v2.id
    assert registry.register(str(fake_run(tmp_path, "rm", "rm"))).ref == "reward:1"
    with pytest.raises(RegistryError, match="has not finished"):
        registry.register(str(fake_run(tmp_path, "half", finished=False)))
    with pytest.raises(RegistryError, match="no such run folder"):
        registry.register(str(tmp_path / "missing"))
    with pytest.raises(RegistryError, match="kind 'model'"):
        registry.register(str(sft), kind="model")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{cut short")
    with pytest.raises(RegistryError, match="broken/config.json: not a JSON object, so not a policy"):
        registry.register(str(tmp_path / "broken"), kind="policy")
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="broken: no weights"):
        registry.register(str(tmp_path / "broken"), kind="policy")
    tiny = tiny_policy(tmp_path, "whole", 0)
    weights = (tiny / "model.safetensors").read_bytes()
    (tmp_path / "broken" / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a copy cut short
    with pytest.raises(RegistryError, match="broken/model.safetensors: not a whole safetensors file"):
        registry.register(str(tmp_path / "broken"), kind="policy")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"\x10" + bytes(7) + b"not json at all!")
    with pytest.raises(RegistryError, match="not a whole safetensors file"):
        registry.register(str(tmp_path / "broken"), kind="policy")
    assert registry.register(str(tiny), kind="policy").source_kind == "folder"
    (tmp_path / "notes.txt").write_text("a policy?")
    with pytest.raises(RegistryError, match="notes.txt: a policy is a model folder or a .gguf file"):
        registry.register(str(tmp_path / "notes.txt"), kind="policy")
    with registry.store.write_conn() as conn, pytest.raises(Exception, match="immutable"):
        conn.execute(text("UPDATE model_versions SET source = 'elsewhere' WHERE id = :id"), {"id": v1.id})
    v1.verify()
    (sft / "final" / "weights.bin").write_bytes(b"changed")
    with pytest.raises(RegistryError, match="changed since it was registered"):
        v1.verify()


def test_promote_and_rollback_move_an_alias_as_a_stack(db, tmp_path):
    registry = Registry.open(db)
    refs = [registry.register(str(fake_run(tmp_path, f"p{i}"))).ref for i in range(3)]
    assert registry.promote("champion", refs[0]).previous is None
    change = registry.promote("champion", refs[1])
    assert (change.previous.ref, change.current.ref) == (refs[0], refs[1])
    registry.promote("champion", refs[2])
    assert registry.rollback("champion").current.ref == refs[1]
    assert registry.rollback("champion").current.ref == refs[0]  # again: one further back
    with pytest.raises(RegistryError, match="no earlier holder"):
        registry.rollback("champion")
    registry.promote("champion", refs[2])
    assert registry.rollback("champion").current.ref == refs[0]
    history = registry.history("champion")
    assert [(e["action"], e["version"]) for e in history] == [
        ("promote", refs[0]), ("promote", refs[1]), ("promote", refs[2]), ("rollback", refs[1]),
        ("rollback", refs[0]), ("promote", refs[2]), ("rollback", refs[0]),
    ]  # fmt: skip
    assert [e["seq"] for e in history] == list(range(1, 8))
    with pytest.raises(AliasConflict, match="moved meanwhile"):
        registry.promote("champion", refs[1], expect=refs[2])
    assert registry.resolve("champion").ref == refs[0]
    assert registry.promote("champion", refs[1], expect=refs[0]).current.ref == refs[1]
    registry.promote("champion", refs[1])  # a retry of that promotion: the rollback still goes back to refs[0]
    assert registry.rollback("champion").current.ref == refs[0]
    registry.promote("champion", refs[1])
    with pytest.raises(RegistryError, match="no such alias"):
        registry.resolve("challenger")
    with pytest.raises(RegistryError, match="no such version"):
        registry.promote("champion", "policy:99")
    with pytest.raises(RegistryError, match="alias 'bad name'"):
        registry.promote("bad name", refs[0])
    # The foreign key keeps an alias from ever naming a version that does not exist.
    with registry.store.write_conn() as conn, pytest.raises(Exception, match="(?i)foreign key"):
        conn.execute(text("UPDATE model_aliases SET version_id = 999999 WHERE name = 'champion'"))
        conn.commit()


PROMOTER = """
import random, sys
from rlhfkit.registry.store import Registry, RegistryError
registry = Registry.open(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
refs = sys.argv[3].split(",")
done = 0
for _ in range(int(sys.argv[4])):
    try:
        if rng.random() < 0.3:
            registry.rollback("champion")
        else:
            registry.promote("champion", rng.choice(refs))
        done += 1
    except RegistryError:
        pass  # nothing to roll back to at that moment
print(done)
"""


def test_an_endpoint_registered_again_elsewhere_is_a_new_version(db):
    """The same name and source served by another endpoint: a new version (it returned the first, still pointing at
    the first host)."""
    registry = Registry.open(db)
    a = registry.register("external", endpoint="http://127.0.0.1:8001/v1#model-1")
    b = registry.register("external", endpoint="http://127.0.0.1:8002/v1#model-2")
    again = registry.register("external", endpoint="http://127.0.0.1:8001/v1#model-1")
    assert a.ref != b.ref and again.ref == a.ref
    assert registry.resolve(b.ref).endpoint == "http://127.0.0.1:8002/v1#model-2"


def test_concurrent_promotions_from_several_processes_keep_the_alias_consistent(db, tmp_path):
    registry = Registry.open(db)
    refs = [registry.register(str(fake_run(tmp_path, f"c{i}"))).ref for i in range(4)]
    registry.promote("champion", refs[0])
    script = tmp_path / "promoter.py"
    script.write_text(PROMOTER)
    procs = [
        subprocess.Popen([sys.executable, str(script), db, str(seed), ",".join(refs), "20"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in range(4)
    ]  # fmt: skip
    done = 0
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        done += int(out.strip())
    history = registry.history("champion")
    assert [e["seq"] for e in history] == list(range(1, done + 2))  # every change recorded once, in order
    stack = []
    for e in history:  # replaying the events gives the holder the alias names (a promotion of the holder: none)
        if e["action"] == "rollback":
            stack.pop()
        elif not stack or stack[-1] != e["version"]:
            stack.append(e["version"])
        assert e["version"] == stack[-1]
    assert registry.resolve("champion").ref == stack[-1] and stack[-1] in refs


def test_lineage_follows_parents_by_id_through_unregistered_runs(db, tmp_path):
    registry = Registry.open(db)
    sft = fake_run(tmp_path, "sft", "sft", parents=[Parent(role="model", path="tiny")])
    rm = fake_run(tmp_path, "rm", "rm", parents=[Parent(role="model", path=str(sft), id=RunCard.read(sft).id)])
    sft_id, rm_id = RunCard.read(sft).id, RunCard.read(rm).id
    ppo = fake_run(tmp_path, "ppo", "ppo", parents=[Parent(role="model", path=str(sft), id=sft_id),
                                                      Parent(role="reward", path=f"rm:{rm}", id=rm_id)])  # fmt: skip
    base = registry.register(str(sft))
    top = registry.register(str(ppo), labels={"live": {"n": 40}, "reward": {"n": 600}})
    registry.add_evaluation(top.ref, {"win_rate": 0.61}, passed=True, against=base.ref)
    registry.promote("champion", top.ref)
    graph = lineage(registry, "champion")
    text_ = graph.text()
    assert text_.splitlines()[0].startswith("policy:2") and "[champion]" in text_
    assert f"model: {base.ref}" in text_  # the registered parent appears as its version
    assert f"reward: {rm_id}" in text_  # the unregistered one as its run, read from its folder...
    assert "not registered" not in text_  # ...though a reward setting names it "rm:FOLDER", as PPO writes it
    assert "model: tiny" in text_  # ...and walked on to the SFT's own parent
    assert text_.count(f"model: {base.ref}") == 2 and "(above)" in text_  # a node reached twice is drawn once
    assert "labels  (live 40, reward 600)" in text_ and "passed vs policy:1, win 0.61" in text_
    assert graph.dot().startswith("digraph lineage {") and '-> "version:' in graph.dot()
    png = graph.draw(tmp_path / "lineage.png")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_experiments_assign_users_stickily_in_the_set_proportions(db, tmp_path):
    registry = Registry.open(db)
    a, b = (registry.register(str(fake_run(tmp_path, n))).ref for n in ("a", "b"))
    registry.promote("champion", a)
    experiments = Experiments(registry)
    exp = experiments.create("greeting", [Arm("control", "champion", 3), Arm("treatment", b, 1)])
    users = [f"user-{i}" for i in range(4000)]
    first = {u: assign(exp, u).name for u in users}
    assert first == {u: assign(exp, u).name for u in users}  # sticky
    share = sum(arm == "treatment" for arm in first.values()) / len(users)
    assert 0.22 < share < 0.28  # 25% +- 3 standard errors
    wider = experiments.set_weights("greeting", {"control": 1, "treatment": 1})
    moved = {u: assign(wider, u).name for u in users}
    assert all(moved[u] == "treatment" for u in users if first[u] == "treatment")  # growing an arm keeps its users
    with pytest.raises(RegistryError, match="exists already"):
        experiments.create("greeting", [Arm("x", a, 1), Arm("y", b, 1)])
    with pytest.raises(RegistryError, match="'champion' is an alias"):
        experiments.create("champion", [Arm("x", a, 1), Arm("y", b, 1)])
    with pytest.raises(RegistryError, match="'greeting' is an experiment"):
        registry.promote("greeting", a)
    with pytest.raises(RegistryError, match="no such alias"):
        experiments.create("other", [Arm("x", "nobody", 1), Arm("y", b, 1)])
    assert experiments.stop("greeting").status == "stopped"


def test_registry_cli(tmp_path):
    db = str(tmp_path / "cli.db")
    run_ = fake_run(tmp_path, "dpo")
    runner = CliRunner()

    def call(*args):
        result = runner.invoke(app, ["registry", *args, "--db", db])
        return result.exit_code, result.output

    code, out = call("register", str(run_), "--name", "policy")
    assert code == 0 and out.startswith("policy:1  policy")
    assert call("register", str(fake_run(tmp_path, "dpo2")))[1].startswith("policy:2")
    assert call("promote", "champion", "policy:1") == (0, "champion: (new) -> policy:1\n")
    assert call("promote", "champion", "policy:2", "--reason", "better")[1] == "champion: policy:1 -> policy:2\n"
    assert call("rollback", "champion")[1] == "champion: policy:2 -> policy:1 (rolled back)\n"
    code, out = call("list")
    assert "policy:1" in out and "[champion]" in out.splitlines()[0]
    shown = json.loads(call("show", "champion")[1])
    assert shown["ref"] == "policy:1" and shown["aliases"] == ["champion"] and shown["card"]["stage"] == "dpo"
    assert "(better)" in call("history", "champion")[1]
    code, out = call("lineage", "champion", "--out", str(tmp_path / "l.svg"))
    assert code == 0 and out.startswith("policy:1") and (tmp_path / "l.svg").exists()
    code, out = call("rollback", "champion")
    assert code == 1 and out.strip() == "error: alias 'champion' has no earlier holder to roll back to"
    code, out = call("promote", "champion", "policy:7")
    assert code == 1 and out.count("\n") == 1 and "no such version" in out
