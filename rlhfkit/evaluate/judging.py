"""Judging models' responses with any judge: which pairs are compared, what a judgement counts as, win rates against
the baseline (raw and length-controlled) and the battles a Bradley-Terry leaderboard is fitted on.

The models' responses are first put side by side (``align``): the same prompt and sample index for every model, so
every comparison is paired. A pointwise judge (a reward, an ensemble, a function, the toy world's gold) scores each
response once and every pair is compared by its scores; a pairwise judge (a language model, a server) is asked about
each pair, in both orders (``rlhfkit.judges``). A judgement is P(a better than b); ``hard`` turns it into a win, a
loss or a tie (exactly level scores, or an undecided judge), ``soft`` keeps the probability (AlpacaEval 2's weighted
win rate); the leaderboard always fits wins, losses and ties (ties half, as Chatbot Arena).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np

from rlhfkit.evaluate.generate import ModelGenerations
from rlhfkit.evaluate.leaderboard import bradley_terry
from rlhfkit.evaluate.length_control import length_controlled_win_rate
from rlhfkit.evaluate.schema import JudgeResult, LeaderboardEntry

TIE = 1e-9  # judgements this close to 1/2 (scores this close to each other) are ties


@dataclass
class Pool:
    """Every model's responses to the same (prompt, sample) keys, baseline first."""

    names: list[str]
    keys: list[tuple[int, int]]
    prompts: list
    responses: dict[str, list[str]]
    dropped: dict[str, int] = field(default_factory=dict)  # per model: its rows with no partner in every other model

    def lengths(self, name: str) -> np.ndarray:
        """Response lengths in characters (AlpacaEval's unit: independent of any tokenizer)."""
        return np.array([len(t) for t in self.responses[name]], dtype=float)


def align(groups: dict[str, ModelGenerations], baseline: str) -> Pool:
    """Keep the (prompt_index, sample) keys every model answered; a key whose prompt differs between two models
    means they were not sampled from the same prompt file, which is refused."""
    if baseline not in groups:
        raise ValueError(f"setting 'baseline': {baseline!r} is none of the models ({', '.join(groups)})")
    names = [baseline] + [n for n in groups if n != baseline]
    by_key = {n: {(r.prompt_index, r.sample): r for r in groups[n].rows} for n in names}
    keys = sorted(set.intersection(*(set(k) for k in by_key.values())))
    if not keys:
        raise ValueError("the models share no (prompt, sample): give them the same prompt file")
    prompts = []
    for key in keys:
        texts = {n: json.dumps(by_key[n][key].model_dump(mode="json")["prompt"]) for n in names}
        if len(set(texts.values())) > 1:
            other = next(n for n in names if texts[n] != texts[baseline])
            raise ValueError(
                f"model {other!r} answered another prompt than the baseline at prompt {key[0]}: were they sampled "
                "from the same prompt file?"
            )
        prompts.append(by_key[baseline][key].prompt)
    responses = {n: [by_key[n][k].response for k in keys] for n in names}
    dropped = {n: len(by_key[n]) - len(keys) for n in names if len(by_key[n]) > len(keys)}
    return Pool(names, keys, prompts, responses, dropped)


def as_outcome(p: np.ndarray) -> np.ndarray:
    """1 where a won, 0 where b won, 0.5 for a tie."""
    return np.where(p > 0.5 + TIE, 1.0, np.where(p < 0.5 - TIE, 0.0, 0.5))


@dataclass
class Judgements:
    """One judge's verdicts on a pool: P(a better than b) per key for each judged pair, and for a pointwise judge
    every model's scores."""

    spec: str
    kind: str  # pointwise | pairwise
    prefs: dict[tuple[str, str], np.ndarray]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) member mean per response
    spread: dict[str, float | None] = field(default_factory=dict)  # mean member std, ensembles only
    position_bias: float | None = None

    def pref(self, a: str, b: str) -> np.ndarray:
        if (a, b) in self.prefs:
            return self.prefs[(a, b)]
        return 1.0 - self.prefs[(b, a)]


def pairs_to_judge(pool: Pool, all_pairs: bool) -> list[tuple[str, str]]:
    """Every pair of models, or each model with the baseline."""
    if all_pairs:
        return list(itertools.combinations(pool.names, 2))
    return [(n, pool.names[0]) for n in pool.names[1:]]


def judge_pool(judge, pool: Pool, all_pairs: bool = True, finished=None) -> Judgements:
    """Ask ``judge`` (a ``rlhfkit.judges.Judge``) about the pool. A pointwise judge scores every response once and
    compares every pair by sigmoid(score difference); a pairwise judge is asked about the pairs ``all_pairs`` names.
    ``finished(key, compute)``: where each model's scores and each pair's verdicts are kept once done (a rerun of
    an interrupted evaluation reads them back; ``rlhfkit.evaluate.suite.Finished``)."""
    import torch

    finished = finished or (lambda key, compute: compute())
    if hasattr(judge, "members"):  # a reward: pointwise
        scores, spread = {}, {}
        for name in pool.names:
            members = torch.tensor(
                finished(
                    ("scores", judge.spec, pool.prompts, pool.responses[name]),
                    lambda name=name: judge.members(pool.prompts, pool.responses[name]).float().tolist(),
                )
            )  # (E, N)
            scores[name] = members.mean(0).numpy().astype(float)
            spread[name] = float(members.std(0).mean()) if members.size(0) > 1 else None
        prefs = {
            (a, b): 1.0 / (1.0 + np.exp(-(scores[a] - scores[b]))) for a, b in itertools.combinations(pool.names, 2)
        }
        return Judgements(judge.spec, "pointwise", prefs, scores, spread)
    prefs, biases = {}, []
    for a, b in pairs_to_judge(pool, all_pairs):

        def compare(a=a, b=b) -> dict:
            verdicts = judge.compare(pool.prompts, pool.responses[a], pool.responses[b])
            prob_a = torch.as_tensor(verdicts.prob_a).float().tolist()
            return {"prob_a": prob_a, "position_bias": verdicts.position_bias}

        verdicts = finished(("pair", judge.spec, pool.prompts, pool.responses[a], pool.responses[b]), compare)
        prefs[(a, b)] = np.array(verdicts["prob_a"], dtype=np.float32).astype(float)
        if verdicts["position_bias"] is not None:
            biases.append(verdicts["position_bias"])
    return Judgements(judge.spec, "pairwise", prefs, position_bias=float(np.mean(biases)) if biases else None)


def preferences(j: Judgements, a: str, b: str, mode: str) -> np.ndarray:
    """Per key, a's score against b: a win, a loss or a tie (hard), or the judge's probability (soft). A pointwise
    judge's hard judgement compares the scores themselves (a tie only when they are level)."""
    if j.kind == "pointwise" and mode == "hard":
        diff = j.scores[a] - j.scores[b]
        return np.where(diff > TIE, 1.0, np.where(diff < -TIE, 0.0, 0.5))
    p = j.pref(a, b)
    return as_outcome(p) if mode == "hard" else p


def result_against_baseline(
    j: Judgements, pool: Pool, name: str, mode: str, n_boot: int = 0, seed: int = 0
) -> JudgeResult:
    """The model's win rate against the baseline (ties half, 95% interval), its length-controlled win rate, and, for
    a pointwise judge, its scores' mean and spread."""
    baseline = pool.names[0]
    out = {"n": len(pool.keys), "position_bias": j.position_bias}
    if j.kind == "pointwise":
        s = j.scores[name]
        out |= {"reward_mean": float(s.mean()), "reward_sd": float(s.std(ddof=1)) if s.size > 1 else 0.0}
        out["member_spread"] = j.spread.get(name)
    if name != baseline and ((name, baseline) in j.prefs or (baseline, name) in j.prefs or j.kind == "pointwise"):
        y = preferences(j, name, baseline, mode)
        lc = length_controlled_win_rate(y, pool.lengths(name), pool.lengths(baseline), n_boot=n_boot, seed=seed)
        out |= {
            "win_rate": lc.win_rate,
            "win_lo": lc.win_lo,
            "win_hi": lc.win_hi,
            "lc_win_rate": lc.lc_win_rate,
            "lc_lo": lc.lc_lo,
            "lc_hi": lc.lc_hi,
            "length_coef": lc.phi,
        }
    return JudgeResult(**out)


def battles(j: Judgements, pool: Pool, all_pairs: bool = True) -> list[tuple[str, str, float]]:
    """Every judgement as a battle (a, b, 1 / 0.5 / 0) for the leaderboard."""
    out = []
    for a, b in pairs_to_judge(pool, all_pairs):
        out += [(a, b, float(o)) for o in preferences(j, a, b, "hard")]
    return out


def leaderboard(j: Judgements, pool: Pool, all_pairs: bool, n_bootstrap: int, seed: int) -> list[LeaderboardEntry]:
    """The Bradley-Terry leaderboard (Elo scale, bootstrap interval) of one judge's battles."""
    rows = bradley_terry(battles(j, pool, all_pairs), n_bootstrap=n_bootstrap, seed=seed)
    return [LeaderboardEntry(**vars(r)) for r in rows]
