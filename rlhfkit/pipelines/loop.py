"""The production loop: rounds of sample, label, pair, train, gate, register, promote (``rlhfkit loop``).

    rlhfkit loop --db annotations.db --prompts prompts.jsonl --gate-judge runs/judge-rm --rounds 3

Each round, from the version the ``policy`` alias names (the champion):

1. human labels new since the last round: live feedback from serving, labels from the annotation app's queue;
2. the labeller: a reward model retrained on every human label so far (``labeller: reward``), or a fixed judge;
3. ``k`` responses for each of ``prompts_per_round`` fresh prompts, sampled from the champion;
4. the labeller scores them; the best against the worst of each prompt is a pair ("RLHF Workflow", Dong et al.
   2024: 8 samples, best and worst by a reward model, ~3 rounds); the pairs it is least sure of go to the queue;
5. DPO with the first round's policy as the fixed reference, by default from that reference on every pair so far
   (``dpo_start: champion`` and ``dpo_data: round`` train from the champion on the round's pairs, as the
   Online-RLHF scripts do: ``model_path`` the last iteration, ``ref_model`` the initial model), or PPO against
   the reward model;
6. the gate (``rlhfkit.evaluate.gate``): win rate against the champion by an independent judge, safety,
   capability, the over-optimisation monitor;
7. the candidate is registered (with the labels it was trained on and the gate's report) and promoted only if
   it passed, and only if the alias still names the champion it was measured against.

Every step leaves a file or a finished run folder in ``round-N/``, so a rerun of the same command continues
where it stopped, inside a round too (sampling and scoring after their last finished batch of prompts, a training
stage from its checkpoint). A rerun with other settings
is refused, naming them.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from rlhfkit.config.loop import LoopConfig
from rlhfkit.data.io import DataError, n_training, read_resume_rows, read_state_json, resume_writer, write_jsonl
from rlhfkit.pipelines.base import Pipeline, pick_threads, write_json
from rlhfkit.pipelines.loop_labels import (
    best_against_worst,
    live_labels,
    queue_pull,
    queue_push,
    read_jsonl,
    score_groups,
)
from rlhfkit.runs import Progress

PROMPTS_PER_PIECE = 32  # prompts sampled (and scored) together: one resume point each


def _json(path: Path) -> dict | None:
    """A state file the loop wrote, or None before it has; one that is not JSON fails naming it."""
    if not path.exists():
        return None
    return read_state_json(path, "not the JSON the loop wrote", "move it aside or give another --output-dir")


class Loop:
    def __init__(self, cfg: LoopConfig):
        import torch

        from rlhfkit.data.prompts import read_prompts
        from rlhfkit.registry.store import Registry
        from rlhfkit.specs import parse_judge_spec, parse_model_spec

        # The judges and the reward model's start, checked before any round trains (the gate's judge is first
        # used after the round), each refused under its own setting's name
        if cfg.labeller not in ("reward", "none"):
            parse_judge_spec(cfg.labeller, "labeller")
        parse_judge_spec(cfg.gate_judge, "gate_judge")
        if cfg.rm_model is not None:
            parse_model_spec(cfg.rm_model, "rm_model")
        if cfg.human_data:  # checked as the user's file (each round trains on a copy of it)
            from rlhfkit.data.io import read_records

            read_records(cfg.human_data, "comparison")
        torch.set_num_threads(pick_threads(cfg.threads))
        self.cfg = cfg
        self.registry = Registry.open(cfg.db)
        self.pipe = Pipeline(cfg, "loop")
        self.root = self.pipe.root
        state = _json(self.root / "state.json")
        if state is None:  # the reference and the loop's id are fixed at the first start, kept by every resume
            reference = self.registry.resolve(cfg.reference or cfg.policy)
            # The first round takes every live label stored so far; each later round those that came after.
            state = {"reference": reference.ref, "loop_id": self.pipe.folder.card().id, "live_after": 0}
            write_json(self.root / "state.json", state)
        self.state = state
        self.reference = self.registry.resolve(state["reference"])
        prompts = read_prompts(cfg.prompts)
        if cfg.gate_prompts:
            self.gate_prompts = read_prompts(cfg.gate_prompts)[: cfg.gate_samples]
            self.train_prompts = prompts
        else:  # held out from the training prompts: the last gate_samples of them
            self.gate_prompts, self.train_prompts = prompts[-cfg.gate_samples :], prompts[: -cfg.gate_samples]
        if not self.train_prompts:
            raise ValueError(f"{cfg.prompts}: no prompts left for training after holding out {cfg.gate_samples}")
        self.rounds: list[dict] = []

    def log(self, message: str) -> None:
        self.pipe.log(message)

    # ---------------------------------------------------------------- one round

    def round(self, r: int, live: tuple[int, int] | None = None) -> dict:
        """Run round ``r`` (or read it back, if it finished before). ``live``: the ids (after, until] of the live
        feedback the round learns from, where the caller knows them (the demo: its finished traffic phase's, so what
        a phase cut short left in the database is not the round's); by default every label since the last round."""
        cfg, rd = self.cfg, self.root / f"round-{r}"
        done = _json(rd / "round.json")
        if done is not None:
            self.log(f"round {r}: finished in an earlier run, reused")
            self.rounds.append(done)
            return done
        start = _json(rd / "start.json")
        if start is None:  # the champion and the live window are fixed when the round first starts
            from rlhfkit.serve.records import max_feedback_id

            if live is None:  # every label stored since the last round's window
                after = self.rounds[-1]["live_until"] if self.rounds else self.state["live_after"]
                live = (after, max_feedback_id(self.registry.store) if cfg.live else after)
            start = {"champion": self.registry.resolve(cfg.policy).ref, "live_after": live[0], "live_until": live[1]}
            write_json(rd / "start.json", start)
        champion = self.registry.resolve(start["champion"])
        self.log(f"round {r}: champion {champion.ref}")
        human = self._human_labels(r, rd, start)
        labeller, rm_dir = self._labeller(r, rd)
        pairs, candidates = self._pairs(r, rd, champion, labeller)
        if cfg.queue and not (rd / "queued.jsonl").exists():
            write_jsonl(
                rd / "queued.jsonl",
                queue_push(self.registry.store, self.state["loop_id"], r, candidates, cfg.queue, labeller),
            )
        candidate_dir = self._train(r, rd, champion, pairs, rm_dir)
        gate = _json(rd / "gate.json")
        if gate is None:
            with self.pipe.step(f"round {r}: gate"):
                gate = self._gate(candidate_dir, champion, labeller if rm_dir else None)
            write_json(rd / "gate.json", gate)
        version = self.registry.register(
            str(candidate_dir), name=champion.name, labels=self._label_summary(human, pairs, rd, rm_dir)
        )
        if not any(e["against_id"] == champion.id for e in self.registry.evaluations(version.ref)):
            self.registry.add_evaluation(version.ref, gate, passed=gate["passed"], against=champion.ref)
        promoted = self._promote(version, champion, gate, r)
        summary = {
            "round": r,
            "champion": champion.ref,
            "candidate": version.ref,
            "labels": _count(human),
            "pairs": len(pairs),
            "gate": {
                "passed": gate["passed"],
                "win_rate": gate["win_rate"],
                "win_lo": gate["win_lo"],
                "win_hi": gate["win_hi"],
                "failed": [c["name"] for c in gate["checks"] if not c["passed"]],
            },  # fmt: skip
            "promoted": promoted,
            "champion_after": self.registry.resolve(cfg.policy).ref,
            "live_until": start["live_until"],
            "monitor_check": gate["monitor_check"],
        }
        write_json(rd / "round.json", {**summary, "done": True})
        self.rounds.append(summary)
        self.log(f"round {r}: candidate {version.ref}, win rate vs {champion.ref} {gate['win_rate']:.3f}; "
                 f"gate {'passed' if gate['passed'] else 'failed ' + str(summary['gate']['failed'])}; "
                 f"{'promoted' if promoted else 'not promoted'}")  # fmt: skip
        return summary

    def _human_labels(self, r: int, rd: Path, start: dict) -> list[dict]:
        """This round's new human labels (live and from the queue), written once; every round's so far is the
        reward model's data, with ``human_data`` in front."""
        path = rd / "human.jsonl"
        if not path.exists():
            rows = []
            if self.cfg.live:
                rows += live_labels(self.registry.store, start["live_after"], start["live_until"], self.cfg.live_thumbs,
                                    self.cfg.seed + r)  # fmt: skip
            if self.cfg.queue:
                pushed = {
                    q["id"]: q["chat"]
                    for k in range(1, r)
                    for q in read_jsonl(self.root / f"round-{k}" / "queued.jsonl")
                }
                seen = {
                    json.dumps(x, sort_keys=True)
                    for k in range(1, r)
                    for x in read_jsonl(self.root / f"round-{k}" / "human.jsonl")
                }
                rows += [x for x in queue_pull(self.registry.store, self.state["loop_id"], pushed)
                         if json.dumps(x, sort_keys=True) not in seen]  # fmt: skip
            write_jsonl(path, rows)
        everything = read_jsonl(Path(self.cfg.human_data)) if self.cfg.human_data else []
        for k in range(1, r + 1):
            everything += read_jsonl(self.root / f"round-{k}" / "human.jsonl")
        write_jsonl(rd / "human-all.jsonl", [{k: v for k, v in x.items() if k != "feedback_id"} for x in everything])
        self.log(
            f"round {r}: {len(read_jsonl(path))} new human labels ({_count(read_jsonl(path))}), {len(everything)} in all"
        )
        return read_jsonl(path)

    def _labeller(self, r: int, rd: Path):
        cfg = self.cfg
        if cfg.labeller == "none":
            return None, None
        if cfg.labeller != "reward":
            from rlhfkit.judges import load_judge

            return load_judge(cfg.labeller), None
        from rlhfkit.rewards import load_reward
        from rlhfkit.train import reward

        data = rd / "human-all.jsonl"
        n = len(read_jsonl(data))
        if not n:
            raise ValueError(
                f"round {r}: no human labels yet to train the reward model on (live feedback, queue, human_data)"
            )
        eval_fraction = 0.1 if n >= 20 else 0.0
        n_train = n_training(n, eval_fraction)  # a batch may not exceed what the held-out split leaves
        rm_dir = self.pipe.stage(f"round-{r}/rm", lambda: reward.run(reward.RewardConfig(
            model=cfg.rm_model or self.reference.source, data=str(data), max_steps=cfg.rm_steps, lr=cfg.rm_lr,
            batch_size=min(cfg.rm_batch_size, n_train), eval_fraction=eval_fraction, log_every=25, seed=cfg.seed + r,
            output_dir=str(rd / "rm"), progress=cfg.progress)))  # fmt: skip
        return load_reward(str(rm_dir)), rm_dir

    def _pairs(self, r: int, rd: Path, champion, labeller) -> tuple[list[dict], list[dict]]:
        from rlhfkit.data.records import from_json

        cfg = self.cfg
        if labeller is None:  # no automatic labeller: the people's comparisons are the pairs, nothing to sample
            for name in ("pairs.jsonl", "candidates.jsonl"):
                if not (rd / name).exists():
                    write_jsonl(rd / name, [])
            return [], []
        if not (rd / "samples.jsonl").exists():
            with self.pipe.step(f"round {r}: {cfg.k} samples for {cfg.prompts_per_round} prompts from {champion.ref}"):
                rng = random.Random(cfg.seed * 1000 + r)
                prompts = rng.sample(self.train_prompts, min(cfg.prompts_per_round, len(self.train_prompts)))
                write_jsonl(rd / "samples.jsonl", self._sample(r, rd, champion, prompts))
                (rd / "samples.pieces.jsonl").unlink(missing_ok=True)
        if not (rd / "pairs.jsonl").exists():
            samples = read_jsonl(rd / "samples.jsonl")
            prompts = [from_json(s["prompt"]) for s in samples]
            scores = self._score(r, rd, labeller, prompts, [s["responses"] for s in samples])
            pairs, candidates = best_against_worst(prompts, [s["responses"] for s in samples], scores, cfg.min_margin)
            write_jsonl(rd / "candidates.jsonl", candidates)
            write_jsonl(rd / "pairs.jsonl", pairs)
            (rd / "scores.pieces.jsonl").unlink(missing_ok=True)
        return read_jsonl(rd / "pairs.jsonl"), read_jsonl(rd / "candidates.jsonl")

    def _sample(self, r: int, rd: Path, champion, prompts: list) -> list[dict]:
        """``k`` responses of the champion to each prompt, a batch of prompts at a time. Each finished batch goes to
        ``samples.pieces.jsonl`` with the generator's state after it, so a rerun goes on after the last finished
        batch with the noise an uninterrupted run would have drawn."""
        import torch

        from rlhfkit.config import SamplingPart
        from rlhfkit.data.records import to_json
        from rlhfkit.models.load import load_causal_lm
        from rlhfkit.rollout import TransformersSampler, generator_state_text, restore_generator

        cfg, path = self.cfg, rd / "samples.pieces.jsonl"
        pieces = read_resume_rows(path, ("rows", "generator")) if path.exists() else []
        rows = [row for piece in pieces for row in piece["rows"]]
        if [row.get("prompt") for row in rows] != [to_json(p) for p in prompts[: len(rows)]]:
            raise DataError(f"{path}: not the samples of this round's prompts; move it aside to sample the round again")
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + r)
        if pieces:
            restore_generator(generator, pieces[-1]["generator"], f"{path}:{len(pieces)}")
        model, tokenizer = load_causal_lm(champion.source, "float32")
        sampler = TransformersSampler(model, tokenizer, SamplingPart(max_new_tokens=cfg.max_new_tokens,
                                                                     temperature=cfg.temperature))  # fmt: skip
        progress = Progress(len(prompts), f"round {r}: sampling", cfg.progress, completed=len(rows))
        with resume_writer(path, pieces) as out:
            for s in range(len(rows), len(prompts), PROMPTS_PER_PIECE):
                chunk = prompts[s : s + PROMPTS_PER_PIECE]
                texts = sampler.generate(chunk, n=cfg.k, generator=generator).texts
                new = [
                    {"prompt": to_json(p), "responses": texts[i * cfg.k : (i + 1) * cfg.k]} for i, p in enumerate(chunk)
                ]
                piece = {"rows": new, "generator": generator_state_text(generator)}
                out.write(json.dumps(piece, ensure_ascii=False) + "\n")
                out.flush()
                rows += new
                progress.update(len(new))
        progress.close()
        return rows

    def _score(self, r: int, rd: Path, labeller, prompts: list, groups: list[list[str]]):
        """(P, k) scores of every prompt's responses by the labeller, a batch of prompts at a time, each finished
        batch kept in ``scores.pieces.jsonl`` so a rerun scores only the rest."""
        import torch

        cfg, path = self.cfg, rd / "scores.pieces.jsonl"
        pieces = read_resume_rows(path, ("scores",)) if path.exists() else []
        scores = [row for piece in pieces for row in piece["scores"]]
        if len(scores) > len(groups) or any(not isinstance(row, list) or len(row) != cfg.k for row in scores):
            raise DataError(f"{path}: not {cfg.k} scores per prompt of this round; move it aside to score again")
        progress = Progress(len(groups), f"round {r}: scoring", cfg.progress, completed=len(scores))
        with resume_writer(path, pieces) as out:
            for s in range(len(scores), len(groups), PROMPTS_PER_PIECE):
                piece = slice(s, s + PROMPTS_PER_PIECE)
                new = score_groups(labeller, prompts[piece], groups[piece]).tolist()
                out.write(json.dumps({"scores": new}) + "\n")
                out.flush()
                scores += new
                progress.update(len(new))
        progress.close()
        return torch.tensor(scores, dtype=torch.float32).view(len(groups), cfg.k)

    def _train(self, r: int, rd: Path, champion, pairs: list[dict], rm_dir) -> Path:
        from rlhfkit.train import dpo, ppo

        cfg = self.cfg
        common = dict(seed=cfg.seed + r, progress=cfg.progress, log_every=25)
        if cfg.algorithm == "ppo":
            prompts_file = rd / "prompts.jsonl"
            write_jsonl(prompts_file, [{"prompt": p["prompt"]} for p in read_jsonl(rd / "samples.jsonl")])
            return self.pipe.stage(f"round-{r}/ppo", lambda: ppo.run(ppo.PPOConfig(
                model=champion.source, reward=str(rm_dir), data=str(prompts_file), max_steps=cfg.ppo_steps, lr=cfg.ppo_lr,
                kl_coef=cfg.ppo_kl_coef, batch_size=cfg.ppo_batch_size, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, eval_fraction=0.0, output_dir=str(rd / "ppo"), **common)))  # fmt: skip
        rounds = [r] if cfg.dpo_data == "round" else list(range(1, r + 1))
        data = [p for k in rounds for p in read_jsonl(self.root / f"round-{k}" / "pairs.jsonl")]
        if cfg.dpo_human:  # the people's own comparisons too: this round's, or every one so far
            data += [x for x in read_jsonl(rd / ("human.jsonl" if cfg.dpo_data == "round" else "human-all.jsonl"))
                     if not x.get("tie")]  # fmt: skip
        if cfg.flip_labels:  # deliberately wrong: the gate must catch a candidate trained on these
            data = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in data]
        if not data:
            raise ValueError(
                f"round {r}: no pairs to train on (no human labels, and every prompt's best and worst tie)"
            )
        write_jsonl(rd / "dpo-data.jsonl", [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in data])
        start = champion.source if cfg.dpo_start == "champion" else self.reference.source
        return self.pipe.stage(f"round-{r}/dpo", lambda: dpo.run(dpo.DPOConfig(
            model=start, ref_model=self.reference.source if start != self.reference.source else None,
            data=str(rd / "dpo-data.jsonl"), max_steps=dpo_steps(cfg.dpo_epochs, len(data), cfg.dpo_batch_size),
            lr=cfg.dpo_lr, beta=cfg.dpo_beta, batch_size=min(cfg.dpo_batch_size, len(data)), eval_fraction=0.0,
            output_dir=str(rd / "dpo"), **common)))  # fmt: skip

    def _gate(self, candidate_dir: Path, champion, proxy) -> dict:
        from rlhfkit.data.prompts import read_prompts
        from rlhfkit.evaluate.gate import GateInputs, GateSettings, run_gate
        from rlhfkit.evaluate.monitor import Check
        from rlhfkit.judges import load_judge

        cfg = self.cfg
        inputs = GateInputs(
            candidate=str(candidate_dir),
            champion=champion.source,
            judge=load_judge(cfg.gate_judge),
            prompts=self.gate_prompts,
            reference=self.reference.source,
            harmful=read_prompts(cfg.harmful_prompts) if cfg.harmful_prompts else [],
            benign=read_prompts(cfg.benign_prompts) if cfg.benign_prompts else [],
            capability=cfg.capability_data,
            proxy=proxy,
            history=[Check(**r["monitor_check"]) for r in self.rounds],
        )
        settings = GateSettings(min_win_rate=cfg.min_win_rate, max_harmful_increase=cfg.max_harmful_increase,
                                max_benign_refusal_increase=cfg.max_benign_refusal_increase,
                                max_nll_increase=cfg.max_nll_increase, kl_budget=cfg.kl_budget,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)  # fmt: skip
        return run_gate(inputs, settings)

    def _promote(self, version, champion, gate: dict, r: int) -> bool:
        from rlhfkit.registry.store import AliasConflict

        cfg = self.cfg
        if not (gate["passed"] and cfg.promote):
            return False
        if self.registry.resolve(cfg.policy).id == version.id:
            return True  # promoted before an interruption
        try:
            self.registry.promote(cfg.policy, version.ref, expect=champion.ref, actor=f"loop {self.state['loop_id']}",
                                  reason=f"round {r}: gate passed, win rate {gate['win_rate']:.3f} vs {champion.ref}")  # fmt: skip
        except AliasConflict:
            self.log(f"round {r}: {cfg.policy} moved meanwhile; {version.ref} registered but not promoted")
            return False
        return True

    def _label_summary(self, human: list[dict], pairs: list[dict], rd: Path, rm_dir) -> dict:
        """What the candidate learnt from, for its registry entry (and its lineage: the reward model that picked the
        pairs is named by run id): this round's new labels by source, and for DPO the data it trained on, which with
        ``dpo_data: all`` and ``dpo_human`` holds every round's pairs and people's comparisons so far."""
        from rlhfkit.runs import RunCard, file_hash

        out = {source: {"n": n, "sha256_16": file_hash(rd / "human.jsonl")} for source, n in _count(human).items()}
        out["pairs"] = {"n": len(pairs), "labeller": self.cfg.labeller, "sha256_16": file_hash(rd / "pairs.jsonl")}
        if rm_dir is not None:
            out["pairs"].update(run_id=RunCard.read(rm_dir).id, path=str(rm_dir))
        trained = rd / "dpo-data.jsonl"
        if self.cfg.algorithm == "dpo" and trained.exists():
            r = int(rd.name.split("-")[1])
            out["trained_on"] = {
                "n": len(read_jsonl(trained)),
                "sha256_16": file_hash(trained),
                "pairs_of_rounds": [r] if self.cfg.dpo_data == "round" else list(range(1, r + 1)),
                "human": self.cfg.dpo_human,
            }
        return out

    def finish(self) -> Path:
        figures = {
            "rounds": self.rounds,
            "champion": self.registry.resolve(self.cfg.policy).ref,
            "promoted": sum(bool(r["promoted"]) for r in self.rounds),
        }
        stages = {f"round-{r['round']}": self.root / f"round-{r['round']}" / ("dpo" if self.cfg.algorithm == "dpo" else "ppo")
                  for r in self.rounds}  # fmt: skip
        self.pipe.finish(figures, stages)
        return self.root


def dpo_steps(epochs: float, pairs: int, batch_size: int) -> int:
    """Optimiser steps for ``epochs`` passes over ``pairs`` in batches of ``batch_size`` (at least one step)."""
    return max(1, math.ceil(epochs * pairs / min(batch_size, pairs)))


def _count(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row.get("source", "human")] = out.get(row.get("source", "human"), 0) + 1
    return out


def run(cfg: LoopConfig) -> Path:
    """``rlhfkit loop``: every round, then the loop's card with the rounds' figures."""
    loop = Loop(cfg)
    start = time.perf_counter()
    for r in range(1, cfg.rounds + 1):
        loop.round(r)
    loop.log(f"{cfg.rounds} rounds in {time.perf_counter() - start:.0f} s")
    return loop.finish()
