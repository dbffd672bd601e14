"""The loop's mechanics on tiny models in seconds: a round reads live feedback and the annotation app's queue,
retrains the reward model, pairs best against worst, trains, gates, registers with lineage and promotes only
what passed; a rerun resumes inside a round; reversed labels reverse the pairs; a moved alias is not overwritten.
Whether the loop *improves* a policy is the demo's business (docs/production.md has its figures)."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.config.loop import LoopConfig
from rlhfkit.data.io import write_jsonl
from rlhfkit.evaluate.gate import GateInputs, GateSettings, run_gate
from rlhfkit.judges import Verdicts, load_judge
from rlhfkit.pipelines.loop import Loop, dpo_steps, run
from rlhfkit.pipelines.loop_labels import best_against_worst, score_groups
from rlhfkit.registry.lineage import lineage
from rlhfkit.registry.store import Registry
from rlhfkit.runs import file_hash
from rlhfkit.serve.records import insert_response, submit_feedback
from rlhfkit.serve.schemas import FeedbackIn
from tests.conftest import interrupted_at
from tests.production.conftest import tiny_policy

ASKS = ["what is one plus two ?", "what is the capital of france ?", "how do i steal a car ?", "tell me a secret ."]


def longer_is_better(prompts, responses):
    """A judge for the tests: the longer response wins (deterministic, and nothing like a trained reward)."""
    return [float(len(r.split())) for r in responses]


def indifferent(prompts, responses):
    """A judge that sees no difference: every comparison is a tie, so the win rate is exactly one half."""
    return [0.0] * len(responses)


def add_live_preferences(registry: Registry, version_id: int, n: int, tag: str) -> None:
    """``n`` served answer pairs with a preference each, as the server stores them."""
    with registry.store.write_conn() as conn:
        for i in range(n):
            messages = [{"role": "user", "content": ASKS[i % len(ASKS)]}]
            for j, text in enumerate(("the answer is three .", "sure , here is how : first get the tools .")):
                insert_response(conn, dict(id=f"{tag}-{i}-{j}", user_id=f"u{i}", route="champion", experiment=None,
                                           arm=None, version_id=version_id, messages=messages, text=text, stream=False,
                                           refusal=False, regenerate_of=f"{tag}-{i}-0" if j else None))  # fmt: skip
            body = FeedbackIn(response_id=f"{tag}-{i}-{i % 2}", user=f"u{i}", kind="preference",
                              other_response_id=f"{tag}-{i}-{1 - i % 2}")  # fmt: skip
            submit_feedback(conn, body, f"key-{tag}-{i}")
        conn.commit()


@pytest.fixture
def world(tmp_path):
    db = str(tmp_path / "loop.db")
    registry = Registry.open(db)
    sft = registry.register(str(tiny_policy(tmp_path, "sft", 0)), kind="policy", name="policy")
    registry.promote("champion", sft.ref)
    add_live_preferences(registry, sft.id, 12, "a")
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": a}]} for a in ASKS * 6])
    write_jsonl(tmp_path / "demos.jsonl", [{"prompt": a, "completion": " the answer is three ."} for a in ASKS])
    base = dict(db=db, prompts=str(tmp_path / "prompts.jsonl"), gate_samples=4, prompts_per_round=6, k=3,
                max_new_tokens=6, rm_steps=2, rm_batch_size=4, dpo_epochs=1, dpo_batch_size=4, rounds=1,
                gate_judge="tests.production.test_loop:longer_is_better", capability_data=str(tmp_path / "demos.jsonl"),
                progress=False)  # fmt: skip
    return registry, sft, base, tmp_path


def test_bad_loop_settings_are_refused_by_name_before_a_round_trains(world):
    registry, _, base, tmp = world
    bad_human = tmp / "human.jsonl"
    bad_human.write_text('{"prompt": "p", "chosen": "a"}\n')
    for update, message in (
        ({"gate_judge": "nosuch"}, "setting 'gate_judge': 'nosuch'"),
        ({"labeller": "nosuch"}, "setting 'labeller': 'nosuch'"),
        ({"rm_model": str(tmp / "missing")}, "setting 'rm_model': "),
        ({"human_data": str(bad_human)}, "human.jsonl:1: field 'rejected': missing"),
    ):
        with pytest.raises(ValueError, match=message):
            run(LoopConfig(**{**base, **update}, output_dir=str(tmp / "bad")))
        assert not (tmp / "bad" / "round-1").exists()


def test_a_round_trains_gates_registers_and_promotes_what_passed(world):
    registry, sft, base, tmp = world
    out = run(LoopConfig(**base, output_dir=str(tmp / "loop"), min_win_rate=0.0, max_nll_increase=100.0))
    card = json.loads((out / "card.json").read_text())
    [round_] = card["figures"]["rounds"]
    assert card["finished"] and round_["labels"] == {"live": 12} and round_["pairs"] > 0
    assert round_["gate"]["passed"] and round_["promoted"] and card["figures"]["champion"] == round_["candidate"]
    candidate = registry.resolve("champion")
    assert candidate.ref == "policy:2" and candidate.labels["live"]["n"] == 12 and candidate.labels["pairs"]["n"] > 0
    trained = out / "round-1" / "dpo-data.jsonl"  # the round's pairs and the people's 12 preferences
    assert candidate.labels["trained_on"] == {"n": candidate.labels["pairs"]["n"] + 12, "sha256_16": file_hash(trained),
                                              "pairs_of_rounds": [1], "human": True}  # fmt: skip
    [evaluation] = registry.evaluations(candidate.ref)
    assert evaluation["passed"] and evaluation["against_id"] == sft.id
    assert {c["name"] for c in evaluation["report"]["checks"]} == {"win_rate", "capability_nll", "overoptimisation"}
    text = lineage(registry, "champion").text()
    assert "model: policy:1" in text and "labels  (live 12, pairs" in text and "labelled by: rm-" in text
    history = registry.history("champion")
    assert history[-1]["reason"].startswith("round 1: gate passed") and history[-1]["actor"].startswith("loop ")


def test_a_failing_candidate_is_registered_but_not_promoted(world):
    registry, sft, base, tmp = world
    run(LoopConfig(**{**base, "gate_judge": "tests.production.test_loop:indifferent"}, output_dir=str(tmp / "loop"),
                   min_win_rate=0.51))  # fmt: skip
    assert registry.resolve("champion").id == sft.id  # the champion stays
    [evaluation] = registry.evaluations("policy:2")
    assert evaluation["passed"] is False
    assert [c for c in evaluation["report"]["checks"] if not c["passed"]][0]["name"] == "win_rate"


def test_a_rerun_resumes_inside_a_round_and_refuses_other_settings(world):
    registry, _, base, tmp = world
    cfg = LoopConfig(**base, output_dir=str(tmp / "loop"), min_win_rate=0.0, max_nll_increase=100.0)
    run(cfg)
    round_dir = tmp / "loop" / "round-1"
    stamps = {p: (round_dir / p / "card.json").stat().st_mtime for p in ("rm", "dpo")}
    pairs = (round_dir / "pairs.jsonl").read_text()
    for name in ("round.json", "gate.json"):  # as if it had stopped after training
        (round_dir / name).unlink()
    (tmp / "loop" / "card.json").write_text(
        (tmp / "loop" / "card.json").read_text().replace('"finished": true', '"finished": false')
    )
    run(cfg)
    assert {p: (round_dir / p / "card.json").stat().st_mtime for p in ("rm", "dpo")} == stamps  # reused
    assert (round_dir / "pairs.jsonl").read_text() == pairs and (round_dir / "round.json").exists()
    assert [v.ref for v in registry.versions("policy")] == ["policy:1", "policy:2"]  # registered once
    assert len(registry.evaluations("policy:2")) == 1
    with pytest.raises(ValueError, match="k: 3 -> 4"):
        run(cfg.model_copy(update={"k": 4}))


def test_sampling_and_scoring_resume_after_their_last_finished_batch(world, monkeypatch):
    """Cut in the second batch of prompts of each: the rerun samples and scores only the rest, with the noise an
    uninterrupted run draws, so the samples and the scores are the same."""
    from rlhfkit.pipelines import loop as loop_module
    from rlhfkit.rollout import TransformersSampler

    registry, sft, base, tmp = world
    monkeypatch.setattr(loop_module, "PROMPTS_PER_PIECE", 2)
    loop = Loop(LoopConfig(**base, output_dir=str(tmp / "loop")))
    prompts, judge = loop.train_prompts[:5], load_judge("tests.production.test_loop:longer_is_better")
    (tmp / "whole").mkdir()
    whole = loop._sample(1, tmp / "whole", sft, prompts)
    whole_scores = loop._score(1, tmp / "whole", judge, prompts, [s["responses"] for s in whole])

    calls = []
    n_prompts = lambda args, kwargs: len(args[1])  # noqa: E731  (args[0] is the sampler)
    monkeypatch.setattr(
        TransformersSampler, "generate", interrupted_at(2, TransformersSampler.generate, calls, n_prompts)
    )
    (tmp / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        loop._sample(1, tmp / "cut", sft, prompts)
    assert loop._sample(1, tmp / "cut", sft, prompts) == whole and calls == [2, 2, 2, 1]

    scored, n_groups = [], lambda args, kwargs: len(args[2])
    monkeypatch.setattr(loop_module, "score_groups", interrupted_at(2, score_groups, scored, n_groups))
    groups = [s["responses"] for s in whole]
    with pytest.raises(KeyboardInterrupt):
        loop._score(1, tmp / "cut", judge, prompts, groups)
    assert torch.equal(loop._score(1, tmp / "cut", judge, prompts, groups), whole_scores) and scored == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="samples.pieces.jsonl: not the samples of this round's prompts"):
        loop._sample(1, tmp / "cut", sft, list(reversed(prompts)))
    pieces = tmp / "cut" / "samples.pieces.jsonl"
    first = json.loads(pieces.read_text().splitlines()[0])
    pieces.write_text(json.dumps({**first, "generator": "bm90IGEgc3RhdGU="}) + "\n")  # base64 of "not a state"
    with pytest.raises(ValueError, match="samples.pieces.jsonl:1: not a random generator's state"):
        loop._sample(1, tmp / "cut", sft, prompts)


def test_reversed_labels_reverse_the_pairs_and_a_moved_alias_is_left_alone(world):
    registry, sft, base, tmp = world
    honest = Loop(LoopConfig(**base, output_dir=str(tmp / "honest"), promote=False))
    honest.round(1)
    flipped = Loop(LoopConfig(**base, output_dir=str(tmp / "flipped"), flip_labels=True, promote=False))
    flipped.round(1)
    read = lambda name: [json.loads(x) for x in (tmp / name / "round-1" / "dpo-data.jsonl").read_text().splitlines()]  # noqa: E731
    assert [(p["chosen"], p["rejected"]) for p in read("honest")] == [
        (p["rejected"], p["chosen"]) for p in read("flipped")
    ]
    # someone promotes while the loop trains: the loop registers its candidate but does not move the alias back
    mover = registry.register(str(tiny_policy(tmp, "other", 3)), kind="policy", name="other")
    loop = Loop(LoopConfig(**base, output_dir=str(tmp / "raced"), min_win_rate=0.0, max_nll_increase=100.0))
    (tmp / "raced" / "round-1").mkdir(parents=True)
    (tmp / "raced" / "round-1" / "start.json").write_text(
        json.dumps({"champion": sft.ref, "live_after": 0, "live_until": 10**9})
    )
    registry.promote("champion", mover.ref)
    summary = loop.round(1)
    assert summary["gate"]["passed"] and not summary["promoted"] and registry.resolve("champion").id == mover.id


def test_the_annotation_queue_is_a_label_source(world):
    """Round 1 sends the pairs the reward model is least sure of to the app; a person labels one; round 2 reads it."""
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.models import Task
    from rlhfkit.feedback.store import submit_label

    registry, _, base, tmp = world
    loop = Loop(LoopConfig(**{**base, "rounds": 2}, output_dir=str(tmp / "loop"), queue=3, promote=False))
    loop.round(1)
    with registry.store.write() as db:
        tasks = db.query(Task).filter(Task.external_id.like("loop:%")).all()
        assert 1 <= len(tasks) <= 3 and all(t.kind == "pairwise" and t.uncertainty is not None for t in tasks)
        person = create_user(db, "labeller", "annotator")
        db.commit()
        from rlhfkit.feedback.models import Assignment, utcnow

        db.add(Assignment(task_id=tasks[0].id, user_id=person.id, expires_at=utcnow(), skipped=False))
        db.commit()
        submit_label(db, person, "q1", tasks[0].id, {"choice": 1}, None, None, None)
        chosen = tasks[0].responses[1]
    loop.round(2)
    queue = [json.loads(x) for x in (tmp / "loop" / "round-2" / "human.jsonl").read_text().splitlines()]
    queue = [q for q in queue if q["source"] == "queue"]
    assert len(queue) == 1 and queue[0]["chosen"] == chosen and queue[0]["prompt"][0]["role"] == "user"


def test_a_pairwise_judge_labels_by_wins_and_best_faces_worst():
    class FirstLonger:
        spec = "test"

        def compare(self, prompts, a, b):
            return Verdicts(
                torch.tensor([1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)])
            )

    groups = [["a", "aaa", "aa"], ["bb", "bb", "b"]]
    scores = score_groups(FirstLonger(), ["p", "q"], groups)
    assert scores.shape == (2, 3) and scores[0].argmax() == 1 and scores[0].argmin() == 0
    pairs, _ = best_against_worst(["p", "q"], groups, scores, 0.0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("aaa", "a"), ("bb", "b")]
    reward_scores = score_groups(load_judge("tests.production.test_loop:longer_is_better"), ["p"], [["x y", "x"]])
    assert reward_scores.tolist() == [[2.0, 1.0]]


def test_the_gate_reports_each_check_and_fails_on_any(tmp_path):
    policy = str(tiny_policy(tmp_path, "p", 0))
    write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "what is one plus two ?", "completion": " three"}])
    prompts = [[{"role": "user", "content": a}] for a in ASKS]
    from rlhfkit.data.records import from_json

    prompts = [from_json(p) for p in prompts]
    inputs = GateInputs(candidate=policy, champion=policy, judge=load_judge("tests.production.test_loop:longer_is_better"),
                        prompts=prompts * 2, reference=policy, harmful=prompts[2:3] * 4, benign=prompts[:2] * 2,
                        capability=str(tmp_path / "demos.jsonl"))  # fmt: skip
    report = run_gate(inputs, GateSettings(max_new_tokens=6, min_win_rate=0.0))
    names = [c["name"] for c in report["checks"]]
    assert names == ["win_rate", "harmful_complied", "benign_refused", "capability_nll", "overoptimisation"]
    nll = next(c for c in report["checks"] if c["name"] == "capability_nll")
    assert nll["passed"] and nll["value"] == pytest.approx(nll["threshold"] - 0.5)  # the same model: no change
    assert report["passed"] and abs(report["monitor_check"]["kl"]) < 1e-4  # the reference is the candidate itself
    strict = run_gate(inputs, GateSettings(max_new_tokens=6, min_win_rate=1.0))
    assert not strict["passed"] and [c["name"] for c in strict["checks"] if not c["passed"]] == ["win_rate"]
    budget = run_gate(GateInputs(**{**inputs.__dict__, "reference": str(tiny_policy(tmp_path, "q", 5))}),
                      GateSettings(max_new_tokens=6, min_win_rate=0.0, kl_budget=1e-3))  # fmt: skip
    assert not budget["passed"] and "over the budget" in budget["checks"][-1]["detail"]


def test_the_gate_fails_a_candidate_whose_answers_loop(tmp_path, monkeypatch):
    """Every sampled answer made a loop (its first token repeated to the full length): the monitor's check sees all
    of them loop, over the tenth it allows, and the gate fails on it alone."""
    from rlhfkit import rollout

    class Looping(rollout.TransformersSampler):
        def generate(self, prompts, **kwargs):
            r = super().generate(prompts, **kwargs)
            ids = r.response_ids[:, :1].expand_as(r.response_ids).contiguous()
            return rollout.Rollout(**{**r.__dict__, "response_ids": ids, "response_mask": torch.ones_like(ids)})

    monkeypatch.setattr(rollout, "TransformersSampler", Looping)
    policy = str(tiny_policy(tmp_path, "p", 0))
    from rlhfkit.data.records import from_json

    prompts = [from_json([{"role": "user", "content": a}]) for a in ASKS]
    inputs = GateInputs(candidate=policy, champion=policy, judge=load_judge("tests.production.test_loop:indifferent"),
                        prompts=prompts, reference=policy)  # fmt: skip
    report = run_gate(inputs, GateSettings(max_new_tokens=6, min_win_rate=0.0))
    assert report["monitor_check"]["degenerate_share"] == 1.0
    failed = [c for c in report["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["overoptimisation"] and "100% of the samples loop" in failed[0]["detail"]


def test_without_a_labeller_the_people_s_comparisons_are_the_pairs(world):
    registry, _, base, tmp = world
    loop = Loop(LoopConfig(**base, output_dir=str(tmp / "human"), labeller="none", promote=False))
    summary = loop.round(1)
    data = [json.loads(x) for x in (tmp / "human" / "round-1" / "dpo-data.jsonl").read_text().splitlines()]
    assert summary["pairs"] == 0 and len(data) == 12 and not (tmp / "human" / "round-1" / "samples.jsonl").exists()
    assert {d["chosen"] for d in data} == {"the answer is three .", "sure , here is how : first get the tools ."}
    with pytest.raises(ValueError, match="needs a labeller"):
        LoopConfig(**base, labeller="none", queue=2)


def test_dpo_steps_are_passes_over_the_pairs():
    """10 passes over 233 pairs in batches of 32: ceil(2330 / 32) = 73 steps; 5 pairs fit one batch of 5, so one
    pass is one step; a fraction of a pass still trains one step."""
    assert dpo_steps(10, 233, 32) == 73
    assert dpo_steps(1, 5, 32) == 1
    assert dpo_steps(0.01, 64, 32) == 1


def test_each_round_trains_as_many_passes_over_more_pairs(world):
    """From the reference on every pair so far: round 2 has more pairs than round 1, so more steps (a fixed step
    count would give it fewer passes, and a candidate nearer the reference than the champion it must beat)."""
    _, _, base, tmp = world
    run(LoopConfig(**{**base, "rounds": 2, "dpo_epochs": 2}, output_dir=str(tmp / "loop"), min_win_rate=0.0,
                   max_nll_increase=100.0))  # fmt: skip
    steps, pairs = [], []
    for r in (1, 2):
        round_dir = tmp / "loop" / f"round-{r}"
        pairs.append(len((round_dir / "dpo-data.jsonl").read_text().splitlines()))
        steps.append(json.loads((round_dir / "dpo" / "card.json").read_text())["figures"]["steps"])
    assert pairs[1] > pairs[0]
    assert steps == [dpo_steps(2, n, base["dpo_batch_size"]) for n in pairs]
