"""RLAIF preference labels (Bai et al. 2022, section 4): a feedback model answers each of the constitution's
comparison questions about a pair of responses as a multiple choice; the normalised probabilities of the
options are the soft label, averaged over the principles (ensembling) and over both orders (A/B and B/A, which
removes the position bias); with chain of thought the judge reasons first and its probability is clamped to
40-60%, as in the paper, since a reasoned answer is near-certain and badly calibrated.

    rlhfkit label --data pairs.jsonl --judge lm:gemma3-270m --judge-format text
    rlhfkit label --data pairs.jsonl --judge openai:http://127.0.0.1:8080/v1#qwen2.5-7b-instruct
    rlhfkit label --data pairs.jsonl --judge lm:smollm2-135m-instruct --human-data people.jsonl

Input rows: ``prompt`` with ``response_a``/``response_b``, or with ``chosen``/``rejected`` (any comparison file;
then the figures also give the agreement of the AI labels with that orientation, with and without ensembling
and position swapping). Output (``labels.jsonl`` in the run folder): ordinary comparison rows with the AI's
preferred response as ``chosen``, ``chosen_prob`` = P(chosen is better) >= 0.5, ``source`` ``ai:<judge>``, and
``ai_principles``: each principle's own P(chosen is better). ``--human-data`` rows are copied in with
``source: human``, so one file trains on both. Labels are written in chunks; an interrupted run resumes.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.ai_feedback.constitution import decomposed_questions, load_constitution
from rlhfkit.config import SamplingPart
from rlhfkit.config.ai_feedback import LabelConfig
from rlhfkit.data.io import DataError, read_jsonl, read_records, read_resume_rows, resume_writer, write_jsonl
from rlhfkit.data.records import flat_text, from_json, to_json
from rlhfkit.judges import LMJudge, OpenAIJudge, PairwiseQuestion
from rlhfkit.runs import RunFolder, parent_of
from rlhfkit.specs import parse_judge_spec

COT_PREFIX = "Let's think step by step:"
CHUNK = 32  # pairs per resume point


@dataclass
class Pair:
    prompt: object  # str or messages, as read
    a: object
    b: object
    oriented: bool  # read as chosen (a) / rejected (b)


def read_pairs(path: str) -> list[Pair]:
    """Rows with prompt + response_a/response_b, or comparisons (prompt/chosen/rejected, validated as such)."""
    rows = read_jsonl(path) if str(path).endswith(".jsonl") else None
    if rows is not None and rows and "response_a" in rows[0]:
        pairs = []
        for i, r in enumerate(rows, start=1):
            for name in ("prompt", "response_a", "response_b"):
                if not r.get(name):
                    raise DataError(f"{path}:{i}: field '{name}': missing or empty")
            pairs.append(Pair(r["prompt"], r["response_a"], r["response_b"], False))
        return pairs
    records, _ = read_records(path, "comparison")
    return [Pair(to_json(r.prompt), to_json(r.chosen), to_json(r.rejected), True) for r in records]


class Labeller:
    """The feedback model asked every principle's question about pairs: ``ask(prompts, a, b)`` returns
    ``(ab, ba)``, each (K principles, N): P(a is better) asked with a shown first, and asked with b shown first."""

    def __init__(
        self,
        judge: str,
        questions: list[PairwiseQuestion],
        judge_format: str = "chat",
        chain_of_thought: bool = False,
        cot_max_new_tokens: int = 64,
        cot_clamp_low: float = 0.4,
        batch_size: int = 8,
        model=None,
        decomposed: tuple[PairwiseQuestion, PairwiseQuestion] | None = None,
    ):
        """``decomposed``: (harm question, refusal question) from ``constitution.decomposed_questions``, asked
        instead of ``questions`` (see ``ask``)."""
        self.spec, self.kind = judge, parse_judge_spec(judge).kind
        self.cot, self.cot_tokens, self.clamp = chain_of_thought, cot_max_new_tokens, cot_clamp_low
        if decomposed is not None and (chain_of_thought or self.kind == "reward"):
            raise ValueError(
                "setting 'decompose': asks an lm: or openai: judge two plain questions (no chain of thought)"
            )
        questions = list(decomposed) if decomposed is not None else questions
        self.decomposed, self._content_free = decomposed is not None, None
        target = parse_judge_spec(judge).target
        if self.kind == "lm":
            from rlhfkit.models.load import load_causal_lm

            loaded = model or load_causal_lm(target, "float32")
            if model is None:  # a caller's model stays as it was given (the judges score under no_grad)
                loaded[0].requires_grad_(False)
            loaded[0].eval()
            self.judges = [
                LMJudge(target, q, chat=judge_format == "chat", batch_size=batch_size, model=loaded) for q in questions
            ]
            self.model, self.tokenizer = loaded
        elif self.kind == "openai":
            self.judges = [OpenAIJudge(target, q) for q in questions]
        else:
            from rlhfkit.judges import load_judge

            if chain_of_thought:
                raise ValueError(
                    "setting 'chain_of_thought': a reward judge does not reason; use an lm: or openai: judge"
                )
            self.judges = [load_judge(judge, batch_size=batch_size)]  # one 'principle': the reward itself

    def first_wins(self, judge, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        if self.kind == "reward":
            return judge.compare(prompts, first, second).prob_a
        if not self.cot:
            return judge.first_wins(prompts, first, second)
        if self.kind == "openai":
            return self._openai_cot(judge, prompts, first, second)
        return self._lm_cot(judge, prompts, first, second)

    def harm_probs(self, prompts: list[str]) -> torch.Tensor:
        """P(the request is harmful), (N,), calibrated on a content-free request (Zhao et al. 2021, "Calibrate
        before use"): the odds are divided by the odds the judge gives "N/A", which removes its prior for " Yes"."""
        from rlhfkit.ai_feedback.constitution import CONTENT_FREE

        harm = self.judges[0]
        blank = [""] * len(prompts)
        p = harm.first_wins(prompts, blank, blank).clamp(1e-6, 1 - 1e-6)
        if self._content_free is None:
            self._content_free = float(harm.first_wins([CONTENT_FREE], [""], [""])[0].clamp(1e-6, 1 - 1e-6))
        p0 = self._content_free
        odds = p / (1 - p) / (p0 / (1 - p0))
        return odds / (1 + odds)

    def ask(self, prompts: list, a: list, b: list) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [flat_text(from_json(p)) for p in prompts]
        a, b = [flat_text(from_json(x)) for x in a], [flat_text(from_json(x)) for x in b]
        if self.decomposed:
            # P(a better) = P(harmful) P(a declines) + P(benign) P(b declines), with P(a declines) asked in each order
            p_harm, refusal = self.harm_probs(prompts), self.judges[1]
            a_declines_ab = refusal.first_wins(prompts, a, b)
            a_declines_ba = 1 - refusal.first_wins(prompts, b, a)
            combine = lambda d: p_harm * d + (1 - p_harm) * (1 - d)  # noqa: E731
            return combine(a_declines_ab).unsqueeze(0), combine(a_declines_ba).unsqueeze(0)  # (1, N) each
        ab = torch.stack([self.first_wins(j, prompts, a, b) for j in self.judges])  # (K, N)
        if self.kind == "reward":  # symmetric already: no order to swap
            return ab, ab
        ba = 1 - torch.stack([self.first_wins(j, prompts, b, a) for j in self.judges])  # (K, N): P(a) asked b first
        return ab, ba

    def _lm_cot(self, judge: LMJudge, prompts, first, second) -> torch.Tensor:
        """The judge writes its reasoning (greedy) after the question, then the answer prefix; the option
        probabilities after that are clamped to [low, 1 - low] (Bai et al. 2022, section 4.1)."""
        from rlhfkit.samplers import make_sampler

        stop = ["\n\n", judge.question.answer_prefix]
        sampler = make_sampler(
            self.model, self.tokenizer, SamplingPart(max_new_tokens=self.cot_tokens, top_k=1, stop=stop)
        )
        heads = [judge.render(*row, answer=False) + COT_PREFIX for row in zip(prompts, first, second)]
        reasons = []
        for s in range(0, len(heads), judge.batch_size):
            reasons += sampler.generate(heads[s : s + judge.batch_size]).texts
        contexts = [h + r.rstrip() + "\n" + judge.question.answer_prefix for h, r in zip(heads, reasons)]
        self.last_reasons = reasons
        return judge.option_probs(contexts).clamp(self.clamp, 1 - self.clamp)

    def _openai_cot(self, judge: OpenAIJudge, prompts, first, second) -> torch.Tensor:
        """One reasoned reply per question; its final '(A)' or '(B)' becomes 1 - low or low (0.5 if neither)."""
        q, out = judge.question, []
        for prompt, x, y in zip(prompts, first, second):
            ask = (
                q.ask(prompt, x, y) + f"\n\n{COT_PREFIX} reason briefly, then end with '{q.answer_prefix}A)' or '(B)'."
            )
            reply = judge.server.chat([{"role": "user", "content": ask}], max_tokens=self.cot_tokens, temperature=0.0)
            picks = re.findall(r"\((" + "|".join(map(re.escape, q.options)) + r")\)", reply.text)
            out.append(0.5 if not picks else 1 - self.clamp if picks[-1] == q.options[0] else self.clamp)
        return torch.tensor(out, dtype=torch.float32)


def agree(p: torch.Tensor) -> float:
    """(..., N) P(a better) -> the share of pairs won by a, ties half."""
    return float(((p > 0.5).float() + 0.5 * (p == 0.5).float()).mean())


def agreement(ab: torch.Tensor, ba: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """How often the AI prefers response a (the input's chosen one), a tie counting half, four ways:
    ensembled (mean over the K principles) or one principle (each alone, averaged over principles), and both
    orders (debiased) or one order (each pair asked once, a seeded coin deciding which response is shown first,
    which is what an unswapped labeller does). ab, ba: (K, N) as ``Labeller.ask`` returns them."""
    coin = torch.tensor([random.Random(seed * 7919 + i).random() < 0.5 for i in range(ab.size(1))])
    one_order = torch.where(coin, ab, ba)  # (K, N)
    both = (ab + ba) / 2

    return {
        "ensembled_both_orders": agree(both.mean(0)),
        "ensembled_one_order": agree(one_order.mean(0)),
        "one_principle_both_orders": sum(agree(both[k]) for k in range(len(ab))) / len(ab),
        "one_principle_one_order": sum(agree(one_order[k]) for k in range(len(ab))) / len(ab),
    }


def label_rows(pairs: list[Pair], ab: torch.Tensor, ba: torch.Tensor, names: list[str], spec: str, both_orders: bool):
    """Comparison rows: the preferred response as chosen, chosen_prob = P(chosen better), each principle's own."""
    per_principle = (ab + ba) / 2 if both_orders else ab  # (K, N): P(a better)
    prob_a = per_principle.mean(0)
    rows = []
    for i, pair in enumerate(pairs):
        p = float(prob_a[i])
        a_wins = p >= 0.5
        chosen, rejected = (pair.a, pair.b) if a_wins else (pair.b, pair.a)
        own = {n: round(float(v) if a_wins else 1 - float(v), 4) for n, v in zip(names, per_principle[:, i])}
        rows.append(
            {
                "prompt": pair.prompt,
                "chosen": chosen,
                "rejected": rejected,
                "chosen_prob": round(p if a_wins else 1 - p, 4),
                "source": f"ai:{spec}",
                "annotator": spec,
                "ai_principles": own,
            }
        )
    return rows


def run(cfg: LabelConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder = RunFolder.open(cfg.stage, cfg)
    constitution = load_constitution(cfg.constitution)
    comparisons = constitution.select(cfg.principles)
    decomposed = decomposed_questions(constitution) if cfg.decompose else None
    pairs = read_pairs(cfg.data)[: cfg.max_pairs]
    human = read_records(cfg.human_data, "comparison")[0] if cfg.human_data else []
    labeller = Labeller(
        cfg.judge,
        constitution.questions(cfg.principles),
        cfg.judge_format,
        cfg.chain_of_thought,
        cfg.cot_max_new_tokens,
        cfg.cot_clamp_low,
        cfg.batch_size,
        decomposed=decomposed,
    )
    names = [c.name for c in comparisons] if labeller.kind != "reward" else ["reward"]
    names = ["decomposed"] if cfg.decompose else names
    parents = [parent_of("judge", cfg.judge.removeprefix("lm:"))]
    folder.start(parents, {"pairs": cfg.data, "human": cfg.human_data, "constitution": cfg.constitution})

    raw_path = folder.path / "raw.jsonl"  # per pair: P(a better) per principle, each order; the resume record
    done = read_resume_rows(raw_path, ("i", "ab", "ba")) if cfg.resume and raw_path.exists() else []
    for n, row in enumerate(done):  # each pair's row, in order, with one probability per principle
        if row["i"] != n or any(not isinstance(row[o], list) or len(row[o]) != len(names) for o in ("ab", "ba")):
            raise DataError(
                f"{raw_path}: row {n + 1} is not pair {n}'s {len(names)} probabilities per order; move the file "
                "aside to label again"
            )
    limit = lambda t: flat_text(from_json(t))[: cfg.max_response_chars]  # noqa: E731
    with resume_writer(raw_path, done) as f:
        for s in range(len(done), len(pairs), CHUNK):
            chunk = pairs[s : s + CHUNK]
            ab, ba = labeller.ask([p.prompt for p in chunk], [limit(p.a) for p in chunk], [limit(p.b) for p in chunk])
            for i in range(len(chunk)):
                row = {"i": s + i, "ab": ab[:, i].tolist(), "ba": ba[:, i].tolist()}
                f.write(json.dumps(row) + "\n")
                done.append(row)
            f.flush()
            print(f"[label] {min(s + CHUNK, len(pairs))}/{len(pairs)} pairs", flush=True)
    ab = torch.tensor([r["ab"] for r in done]).T  # (N, K) -> (K, N)
    ba = torch.tensor([r["ba"] for r in done]).T
    rows = label_rows(pairs, ab, ba, names, cfg.judge, cfg.both_orders)
    rows += [{**r.model_dump(exclude_none=True, mode="json"), "source": r.source or "human"} for r in human]
    write_jsonl(folder.path / "labels.jsonl", rows)
    ai = rows[: len(pairs)]
    figures = {
        "pairs": len(pairs),
        "judge": cfg.judge,
        "principles": names,
        "mean_confidence": sum(abs(r["chosen_prob"] - 0.5) * 2 for r in ai) / max(len(ai), 1),
        "position_bias": float(((ab + (1 - ba)) / 2).mean() - 0.5) if labeller.kind != "reward" else None,
        "human_rows": len(human),
    }
    if pairs and all(p.oriented for p in pairs):
        figures["agreement"] = agreement(ab, ba, cfg.seed)
        both = (ab + ba) / 2
        figures["agreement_per_principle"] = {n: agree(both[k]) for k, n in enumerate(names)}  # ties half, as above
        print("[label] agreement with the input's orientation: " + json.dumps(figures["agreement"]), flush=True)
    folder.finish(figures)
    return folder.path
