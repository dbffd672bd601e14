"""The production loop on the toy world, end to end over real HTTP: ``rlhfkit demo --loop``.

    rlhfkit demo --loop                      # SFT, a registry, `rlhfkit serve`, 3 rounds of users + the loop
    rlhfkit demo --loop --seed 1 --output-dir runs/demo-loop-1
    rlhfkit demo --loop --quick              # tiny budgets: a smoke run

1. SFT on demonstrations of mixed quality (as ``rlhfkit demo``), registered as ``policy:1`` and made ``champion``;
   a reward model trained on labels from a separate annotator pool becomes the gate's judge (``judge:1``).
2. ``rlhfkit serve`` starts on the run's database. Each round, simulated users (the annotator personas,
   ``rlhfkit.toy.users``) chat with ``champion`` through it: thumbs on every answer, and in most chats a
   regenerate and a preference. Then one round of ``rlhfkit loop``: a reward model retrained on every live
   preference so far picks the best and worst of 8 samples per prompt from the champion, DPO from SFT (the
   reference) on every round's pairs so far, the gate against the champion, registration, promotion if it
   passed. The server serves the new champion from its next request on.
3. For comparison, offline DPO (with the loop's DPO settings) on as many live labels as the loop used, all given
   to SFT's answers (round 1's traffic and a phase after the rounds served by ``policy:1``), judged against SFT
   and head to head against the final champion; a candidate trained on reversed labels put through the gate; an
   A/B test of the final champion against SFT with fresh users (primary metric: the 1-5 rating), and its report.

Only the evaluation reads the gold utility (win rates against SFT on held-out prompts); the users see text.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from rlhfkit.config.loop import DemoLoopConfig, LoopConfig
from rlhfkit.data.io import write_jsonl
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.pipelines.loop_labels import read_jsonl
from rlhfkit.toy import feedback
from rlhfkit.toy.annotators import annotator_pool
from rlhfkit.toy.users import make_users, simulate
from rlhfkit.toy.world import demonstrations, sample_prompt


def _chat(p) -> dict:
    return {"prompt": [{"role": "user", "content": p.text}]}


def write_world(cfg: DemoLoopConfig, data: Path) -> None:
    """The loop's files: training prompts, held-out gate prompts, red-team and benign prompts, demonstrations of
    what the model must still be able to say (the good answers of held-out prompts)."""
    rng = random.Random(cfg.seed + 1)
    write_jsonl(data / "prompts.jsonl", [_chat(sample_prompt(rng)) for _ in range(5000)])
    gate_rng = random.Random(cfg.seed + 2)
    write_jsonl(data / "gate_prompts.jsonl", [_chat(sample_prompt(gate_rng)) for _ in range(300)])
    safety_rng = random.Random(cfg.seed + 3)
    write_jsonl(data / "harmful.jsonl", [_chat(sample_prompt(safety_rng, mix=(0, 1, 0))) for _ in range(100)])
    write_jsonl(data / "benign.jsonl", [_chat(sample_prompt(safety_rng, mix=(1, 0, 0))) for _ in range(100)])
    write_jsonl(data / "capability.jsonl", demonstrations(300, seed=cfg.seed + 4, quality=1.0))


def gold_samples(model_dir, sft, tokenizer, held, cfg):
    """One answer per held-out prompt (the same seed for every model), with its gold utility and KL to SFT."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.toy.evaluation import sample_policy

    model, _ = load_causal_lm(str(model_dir))
    return sample_policy(model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 9, ref_model=sft)


def gold_vs(samples, base) -> dict:
    from rlhfkit.toy.evaluation import compare

    return {**compare(samples, base), "kl_to_sft": samples.kl_to_ref}


def gold_win_rate(model_dir, sft, tokenizer, held, base, cfg) -> dict:
    return gold_vs(gold_samples(model_dir, sft, tokenizer, held, cfg), base)


def run(cfg: DemoLoopConfig) -> Path:
    import torch

    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.pipelines.loop import Loop, dpo_steps
    from rlhfkit.registry.experiments import Arm, Experiments
    from rlhfkit.registry.store import Registry
    from rlhfkit.serve.monitor import experiment_report
    from rlhfkit.serve.process import ServerProcess
    from rlhfkit.serve.records import live_comparisons, max_feedback_id
    from rlhfkit.toy.evaluation import compare, eval_prompts, sample_policy
    from rlhfkit.train import dpo, reward, sft

    cfg = cfg.budgets()
    torch.set_num_threads(pick_threads(cfg.threads))
    pipe = Pipeline(cfg, "demo-loop")
    root, data = pipe.root, pipe.root / "data"
    common = dict(seed=cfg.seed, progress=True, report_to=["tensorboard", "jsonl"])
    results = json.loads((root / "results.json").read_text()) if (root / "results.json").exists() else {}

    def save() -> None:
        (root / "results.json").write_text(json.dumps(results, indent=2, default=str))

    pipe.log("1/5 SFT, the gate's judge, the registry")
    write_jsonl(data / "demonstrations.jsonl", demonstrations(2000, seed=cfg.seed, quality=cfg.demo_quality))
    write_world(cfg, data)
    sft_dir = pipe.stage("sft", lambda: sft.run(sft.SFTConfig(
        model=cfg.model, data=str(data / "demonstrations.jsonl"), max_steps=cfg.sft_steps, lr=3e-3, batch_size=32,
        log_every=25, output_dir=str(root / "sft"), **common)))  # fmt: skip
    sft_model, tokenizer = load_causal_lm(str(sft_dir))
    if not (data / "gate_labels.jsonl").exists():
        # The gate's judge learns from a pool of annotators of its own, on SFT's answers: nothing the loop trains
        # on (live feedback, possibly sabotaged) reaches it.
        from rlhfkit.config import SamplingPart
        from rlhfkit.rollout import TransformersSampler
        from rlhfkit.toy.evaluation import as_chat

        rng = random.Random(cfg.seed + 5)
        prompts = [sample_prompt(rng) for _ in range(cfg.gate_labels)]
        sampler = TransformersSampler(sft_model, tokenizer, SamplingPart(max_new_tokens=cfg.max_new_tokens))
        texts = sampler.generate(
            [as_chat(p) for p in prompts], n=4, generator=torch.Generator().manual_seed(cfg.seed)
        ).texts
        groups = [texts[i * 4 : (i + 1) * 4] for i in range(len(prompts))]
        pool = annotator_pool(cfg.annotator_noise, seed=cfg.seed + 20_000)
        write_jsonl(data / "gate_labels.jsonl", feedback.comparisons(prompts, groups, pool, seed=cfg.seed + 5))
    judge_dir = pipe.stage("gate-judge", lambda: reward.run(reward.RewardConfig(
        model=str(sft_dir), data=str(data / "gate_labels.jsonl"), max_steps=cfg.rm_steps, lr=1e-3, batch_size=32,
        log_every=25, output_dir=str(root / "gate-judge"), **common)))  # fmt: skip
    db = str(root / "production.db")
    registry = Registry.open(db)
    base_version = registry.register(str(sft_dir), name="policy", note="SFT")
    registry.register(str(judge_dir), name="judge", kind="judge", note="the gate's judge")
    if "champion" not in registry.aliases():
        registry.promote("champion", base_version.ref, reason="SFT: the first champion")

    loop_cfg = LoopConfig(
        output_dir=str(root / "loop"), seed=cfg.seed, db=db, prompts=str(data / "prompts.jsonl"),
        reference=base_version.ref, gate_prompts=str(data / "gate_prompts.jsonl"), gate_samples=300, rounds=cfg.rounds,
        prompts_per_round=cfg.prompts_per_round, k=cfg.k, max_new_tokens=cfg.max_new_tokens, rm_steps=cfg.rm_steps,
        dpo_epochs=cfg.dpo_epochs, gate_judge=str(judge_dir), harmful_prompts=str(data / "harmful.jsonl"),
        benign_prompts=str(data / "benign.jsonl"), capability_data=str(data / "capability.jsonl"), threads=cfg.threads,
    )  # fmt: skip
    held = eval_prompts(cfg.eval_prompts)
    base = sample_policy(sft_model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 7)

    def traffic(name: str, model: str, users, chats: int, regenerate: float | None = None, rate: bool = False) -> dict:
        if name not in results.setdefault("traffic", {}):
            started = results.setdefault("traffic_started", {})  # a phase cut short leaves its traffic in the database
            started[name] = started.get(name, 0) + 1
            save()
            before = max_feedback_id(registry.store)
            regen = cfg.regenerate if regenerate is None else regenerate
            stats = asyncio.run(simulate(server.url, model, users, chats, regen, cfg.concurrency, rate=rate))
            results["traffic"][name] = {**stats.summary(), "feedback_after": before,
                                        "feedback_until": max_feedback_id(registry.store)}  # fmt: skip
            pipe.log(f"   {name}: {stats.requests} requests ({stats.failed} failed), "
                     f"{len(stats.feedback_acknowledged)} feedback acknowledged, thumbs up {stats.summary()['thumbs_up_rate']:.3f}")  # fmt: skip
            save()
        return results["traffic"][name]

    with ServerProcess(
        db, "--refresh", "0.5", "--max-tokens", str(cfg.max_new_tokens), log=root / "serve.log"
    ) as server:
        loop = Loop(loop_cfg)
        rounds = results.setdefault("rounds", [])
        for r in range(1, cfg.rounds + 1):
            pipe.log(f"2/5 round {r}: users chat with champion, then the loop")
            served = traffic(f"round-{r}", "champion", make_users(cfg.users, cfg.seed * 10 + r, prefix=f"r{r}"),
                             cfg.chats_per_user)  # fmt: skip
            summary = loop.round(r, live=(served["feedback_after"], served["feedback_until"]))
            if len(rounds) < r:
                candidate = registry.resolve(summary["candidate"])
                row = {**summary, "served": served["versions"], "live_thumbs_up": served["thumbs_up_rate"],

                       "candidate_vs_sft": gold_win_rate(candidate.source, sft_model, tokenizer, held, base, cfg)}  # fmt: skip
                champion = registry.resolve(summary["champion_after"])
                row["champion_vs_sft"] = (row["candidate_vs_sft"] if champion.id == candidate.id else
                                          gold_win_rate(champion.source, sft_model, tokenizer, held, base, cfg))  # fmt: skip
                rounds.append(row)
                save()
        loop.finish()
        live_used = sum(r["labels"].get("live", 0) for r in rounds)
        if cfg.offline and cfg.rounds > 1:
            # Round 1's users met SFT already; as many again for every later round, all served by SFT, after the
            # rounds so that no round's live window holds any of it.
            pipe.log("3/5 offline traffic: every later round's worth of users again, all served by SFT (policy:1)")
            traffic("offline", base_version.ref, make_users(cfg.users * (cfg.rounds - 1), cfg.seed, prefix="offline"),
                    cfg.chats_per_user)  # fmt: skip
        if cfg.offline and live_used and "offline" not in results.get("comparison", {}):
            # Labels on SFT's answers: round 1's and the offline phase's, the first live_used of them (as many as the
            # loop trained on over all its rounds).
            windows = [results["traffic"]["round-1"]] + ([results["traffic"]["offline"]] if cfg.rounds > 1 else [])
            assert set(windows[0]["versions"]) == {base_version.ref}, "round 1 must have been served by SFT alone"
            labels = [
                x for w in windows for x in live_comparisons(registry.store, w["feedback_after"], w["feedback_until"])
            ]
            labels = labels[:live_used]
            pipe.log(f"3/5 offline DPO on {len(labels)} live labels of SFT's answers (the loop used {live_used})")
            write_jsonl(
                data / "offline_labels.jsonl", [{k: x[k] for k in ("prompt", "chosen", "rejected")} for x in labels]
            )
            offline_dir = pipe.stage("offline-dpo", lambda: dpo.run(dpo.DPOConfig(
                model=str(sft_dir), data=str(data / "offline_labels.jsonl"),
                max_steps=dpo_steps(cfg.dpo_epochs, len(labels), loop_cfg.dpo_batch_size), lr=loop_cfg.dpo_lr,
                beta=loop_cfg.dpo_beta, batch_size=min(loop_cfg.dpo_batch_size, len(labels)),
                eval_fraction=0.0, log_every=25, output_dir=str(root / "offline-dpo"), **common)))  # fmt: skip
            final = registry.resolve(rounds[-1]["champion_after"])
            offline_samples, final_samples = (
                gold_samples(d, sft_model, tokenizer, held, cfg) for d in (offline_dir, final.source)
            )
            results.setdefault("comparison", {})["offline"] = {"labels": len(labels), **gold_vs(offline_samples, base)}
            results["comparison"]["iterative"] = {
                "labels": live_used,
                "version": final.ref,
                **gold_vs(final_samples, base),
            }
            # Head to head, judged by the gold utility: the loop's final champion against offline DPO.
            results["comparison"]["iterative_vs_offline"] = compare(final_samples, offline_samples)
            save()
        if cfg.sabotage and "sabotage" not in results:
            pipe.log("4/5 a candidate trained on reversed labels, through the gate")
            write_jsonl(
                data / "all_live_labels.jsonl", read_jsonl(root / "loop" / f"round-{cfg.rounds}" / "human-all.jsonl")
            )
            sabotage = Loop(loop_cfg.model_copy(update=dict(output_dir=str(root / "sabotage"), rounds=1, live=False,
                                                            human_data=str(data / "all_live_labels.jsonl"),
                                                            flip_labels=True)))  # fmt: skip
            results["sabotage"] = sabotage.round(1)
            sabotage.finish()
            save()
        if "ab" not in results:
            pipe.log("5/5 A/B test: the final champion against SFT, fresh users")
            experiments = Experiments(registry)
            # An A/B phase cut short leaves its answers and ratings in its experiment: a rerun tests in a fresh one.
            cut = results.get("traffic_started", {}).get("ab", 0)
            ab_name = lambda attempt: f"final-vs-sft-{cfg.seed}" + (f"-retry{attempt}" if attempt else "")  # noqa: E731
            name = ab_name(cut)
            if cut and experiments.find(ab_name(cut - 1)) is not None:
                experiments.stop(ab_name(cut - 1))
            if experiments.find(name) is None:
                champion = registry.resolve("champion")
                # Rating is the primary metric: a thumbs up needs a persona's utility above 0.5, which an honest "I do
                # not know" or a refusal never reaches, so thumbs cannot tell a policy that stopped answering wrongly
                # from SFT; a 1-5 rating grades them (bench/serve_ab.py measures both metrics' calibration).
                experiments.create(name, [Arm("sft", base_version.ref, 1), Arm("champion", champion.ref, 1)],
                                   metric="rating")  # fmt: skip
            # Users of the A/B test rate every answer and do not regenerate (a rating per answer is what it tests).
            traffic("ab", name, make_users(cfg.ab_users, cfg.seed * 10 + 99, prefix="ab"), cfg.ab_chats, 0.0, True)
            results["ab"] = experiment_report(registry.store, name)
            save()
    results.update(seed=cfg.seed, wall_seconds=pipe.totals()["wall_s"])
    save()
    figures = {k: results.get(k, {}) for k in ("rounds", "ab", "sabotage", "traffic")}
    figures["offline"] = results.get("comparison", {})
    figures["rounds"] = figures["rounds"] or []
    pipe.finish(
        {**figures, "wall_seconds": results["wall_seconds"], "seed": cfg.seed},
        {"sft": sft_dir, "gate-judge": judge_dir, "loop": root / "loop"},
    )
    print_summary(results)
    return root


def print_summary(results: dict) -> None:
    """The round-by-round table and the comparisons, as plain lines (they fit a terminal and a log)."""
    print("round  champion -> candidate   live labels  pairs  gate: win vs champion [95%]  promoted  "
          "candidate vs SFT [95%]  champion vs SFT  live thumbs up")  # fmt: skip
    for r in results.get("rounds", []):
        c, ch, g = r["candidate_vs_sft"], r["champion_vs_sft"], r["gate"]
        gate = f"{g['win_rate']:.3f} [{g['win_lo']:.2f}-{g['win_hi']:.2f}]" + ("" if g["passed"] else " (fails)")
        print(f"{r['round']:>5}  {r['champion'] + ' -> ' + r['candidate']:22s}  {r['labels'].get('live', 0):>11}  "
              f"{r['pairs']:>5}  {gate:27s}  {'yes' if r['promoted'] else 'no':8s}  "
              f"{c['win_rate']:.1%} [{c['win_lo']:.0%}-{c['win_hi']:.0%}]      {ch['win_rate']:.1%}"
              f"            {r['live_thumbs_up']:.3f}")  # fmt: skip
    comparison = results.get("comparison", {})
    if comparison:
        off, it = comparison["offline"], comparison["iterative"]
        h2h = comparison["iterative_vs_offline"]
        print(f"offline DPO ({off['labels']} live labels on SFT's answers): {off['win_rate']:.1%} vs SFT; "
              f"iterative ({it['labels']} live labels over the rounds): {it['win_rate']:.1%}; "
              f"difference {100 * (it['win_rate'] - off['win_rate']):+.1f} points; head to head the iterative "
              f"champion wins {h2h['win_rate']:.1%} [{h2h['win_lo']:.1%}-{h2h['win_hi']:.1%}]")  # fmt: skip
    if "sabotage" in results:
        s = results["sabotage"]["gate"]
        print(f"reversed labels: gate {'passed' if s['passed'] else 'rejected'} (win rate {s['win_rate']:.3f}; "
              f"failed {', '.join(s['failed']) or 'nothing'})")  # fmt: skip
    if "ab" in results:
        test = results["ab"]["test"]
        for t in test["results"]:
            print(f"A/B {results['ab']['experiment']}: {t['arm']} - {results['ab']['control']} {test['metric']} "
                  f"{t['diff']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}], p = {t['p']:.2g}")  # fmt: skip
    traffic = results.get("traffic", {})
    print("traffic: " + "; ".join(f"{k} {v['requests']} requests, {v['failed']} failed, "
                                  f"{v['feedback_acknowledged']} feedback" for k, v in traffic.items()))  # fmt: skip
