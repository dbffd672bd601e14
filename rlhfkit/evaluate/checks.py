"""`rlhfkit eval`'s checks of each model it can load: KL of its samples to the reference, capability (held-out
perplexity, exact match on a task set) and safety (harmful requests complied with, benign ones refused), with the
greedy answers those rates counted. Each model's checks are kept in the evaluation's ``Finished`` pieces."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from rlhfkit.config.evaluation import EvalConfig
from rlhfkit.evaluate.schema import Capability, ModelReport, Safety


def log(message: str) -> None:
    print(f"[eval {time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadable(spec: str | None) -> bool:
    if not spec:
        return False
    from rlhfkit.specs import SpecError, parse_model_spec

    try:
        parse_model_spec(spec)
        return True
    except SpecError:
        return False


def model_checks(cfg: EvalConfig, models: list[ModelReport], by_name: dict, finished: Callable) -> list:
    """KL to the reference, capability and safety for every model that can be loaded; a note on those that cannot.
    Each model's checks are kept in ``finished`` once done. Returns the models' greedy answers to the task, red-team
    and benign sets (a row each, with its verdict), so a user can read what a rate counted."""
    wants_kl = cfg.reference is not None
    given = {m.name: [r.kl for r in by_name[m.name].generations.rows] for m in models}
    for m in models:
        if given[m.name] and all(k is not None for k in given[m.name]):
            m.kl, m.kl_source = sum(given[m.name]) / len(given[m.name]), "given"
    wants_model = wants_kl or cfg.perplexity_data or cfg.task_data or cfg.redteam_data or cfg.benign_data
    if not wants_model:
        return []
    from rlhfkit.evaluate import capability as cap
    from rlhfkit.models.load import load_causal_lm

    # loaded on first use: not at all when every model's checks are kept from an earlier run
    reference = functools.cache(lambda: load_causal_lm(cfg.reference, cfg.dtype)[0].eval())
    sets = load_check_sets(cfg)
    judge = cap.RefusalJudge(cfg.refusal_judge, cfg.judge_batch_size) if cfg.refusal_judge else None

    def checks(m: ModelReport) -> dict:
        log(f"{m.name}: model checks")
        model, tokenizer = load_causal_lm(m.spec, cfg.dtype)
        model.eval()
        rows = by_name[m.name].generations.rows
        out = {"kl": m.kl, "kl_source": m.kl_source}
        if wants_kl and m.kl is None and all(r.token_ids is not None for r in rows):
            temperature = float((rows[0].sampling or {}).get("temperature", 1.0))
            kl = cap.sample_kl(
                model, reference(), tokenizer, [r.prompt for r in rows], [r.token_ids for r in rows], temperature,
                max(cfg.max_length - cfg.max_new_tokens, 1),
            )  # fmt: skip
            out |= {"kl": float(kl.mean()), "kl_source": "monte-carlo"}
        answers = []
        capability = capability_block(cfg, model, tokenizer, sets, answers)
        safety = safety_block(cfg, model, tokenizer, sets, judge, answers)
        out["capability"] = capability.model_dump() if capability is not None else None
        out["safety"] = safety.model_dump() if safety is not None else None
        out["answers"] = answers
        return out

    answers = []
    for m in models:
        if not loadable(m.spec):
            if wants_model:
                m.notes.append("no loadable model setting: KL, capability and safety not measured")
            continue
        rows = by_name[m.name].generations.rows
        key = ("checks", m.name, m.spec, m.kl, [(r.prompt, r.token_ids) for r in rows])
        done = finished(key, lambda m=m: checks(m))
        m.kl, m.kl_source = done["kl"], done["kl_source"]
        m.capability = Capability(**done["capability"]) if done["capability"] else None
        m.safety = Safety(**done["safety"]) if done["safety"] else None
        answers += [{"model": m.name} | row for row in done.get("answers", [])]
    return answers


def load_check_sets(cfg: EvalConfig) -> dict:
    from rlhfkit.data.io import DataError, read_jsonl
    from rlhfkit.data.prompts import read_prompts
    from rlhfkit.evaluate.capability import reference_records

    sets = {}
    if cfg.perplexity_data:
        sets["reference"] = reference_records(read_jsonl(cfg.perplexity_data), cfg.perplexity_data)
    if cfg.task_data:
        rows = read_jsonl(cfg.task_data)[: cfg.max_tasks]
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or "prompt" not in row or not isinstance(row.get("answer"), str):
                raise DataError(f"{cfg.task_data}:{i}: a task row needs 'prompt' and a string 'answer'")
        sets["tasks"] = rows
    for name in ("redteam_data", "benign_data"):
        path = getattr(cfg, name)
        if path:
            sets[name] = read_prompts(path)[: cfg.max_tasks]
    return sets


def capability_block(cfg: EvalConfig, model, tokenizer, sets: dict, answers: list | None = None) -> Capability | None:
    """Held-out perplexity and exact match; each task's greedy answer appended to ``answers`` when given."""
    from rlhfkit.evaluate import capability as cap
    from rlhfkit.evaluate.stats import proportion_interval

    if "reference" not in sets and "tasks" not in sets:
        return None
    out = {}
    if "reference" in sets:
        out["perplexity"], out["perplexity_tokens"] = cap.perplexity(
            model, tokenizer, sets["reference"], source=cfg.perplexity_data
        )
    if "tasks" in sets:
        from rlhfkit.data.records import from_json

        tasks = sets["tasks"]
        responses = cap.answer(model, tokenizer, [from_json(t["prompt"]) for t in tasks], greedy(cfg), cfg.batch_size)
        hits = cap.exact_match_outcomes(responses, [t["answer"] for t in tasks], cfg.task_match)
        if answers is not None:
            answers += [
                {"set": "task", "prompt": t["prompt"], "response": r, "answer": t["answer"], "correct": bool(h)}
                for t, r, h in zip(tasks, responses, hits)
            ]
        rate, lo, hi = proportion_interval(int(sum(hits)), len(hits))
        out |= {"exact_match": rate, "exact_match_lo": lo, "exact_match_hi": hi, "tasks": len(hits)}
    return Capability(**out)


def greedy(cfg: EvalConfig):
    from rlhfkit.evaluate.capability import greedy_sampling

    return greedy_sampling(cfg.max_new_tokens)


def safety_block(cfg: EvalConfig, model, tokenizer, sets: dict, judge, answers: list | None = None) -> Safety | None:
    """The shares of harmful requests complied with and benign ones refused; each greedy answer appended to
    ``answers`` when given, with the detector's verdict (and the judge's)."""
    from rlhfkit.data.records import to_json
    from rlhfkit.evaluate import capability as cap
    from rlhfkit.evaluate.safety import is_refusal, safety_rates

    if "redteam_data" not in sets and "benign_data" not in sets:
        return None
    harmful_prompts, benign_prompts = sets.get("redteam_data", []), sets.get("benign_data", [])
    harmful = cap.answer(model, tokenizer, harmful_prompts, greedy(cfg), cfg.batch_size) if harmful_prompts else []
    benign = cap.answer(model, tokenizer, benign_prompts, greedy(cfg), cfg.batch_size) if benign_prompts else []
    refused = {t: is_refusal(t) for t in harmful + benign}  # the detector once per answer: rates, agreement, rows
    out = Safety(**safety_rates(harmful, benign, detector=refused.__getitem__))
    if judge is not None:
        verdicts = judge(harmful_prompts + benign_prompts, harmful + benign)
        by_text = dict(zip(harmful + benign, verdicts))
        out.judge = safety_rates(harmful, benign, detector=lambda t: by_text[t])
        agree = [refused[t] == v for t, v in zip(harmful + benign, verdicts)]
        out.judge_agreement = sum(agree) / max(len(verdicts), 1)
    if answers is not None:
        for name, prompts, responses in (("redteam", harmful_prompts, harmful), ("benign", benign_prompts, benign)):
            for prompt, response in zip(prompts, responses):
                row = {"set": name, "prompt": to_json(prompt), "response": response, "refused": refused[response]}
                answers.append(row | ({"judge_refused": bool(by_text[response])} if judge is not None else {}))
    return out
