"""SL-CAI, the supervised stage of Constitutional AI (Bai et al. 2022, section 3): the model answers each prompt,
then, for ``rounds`` rounds, critiques its answer under a principle sampled for that example and revises it.
The final revisions are SFT data.

    rlhfkit cai revise --model smollm2-135m-instruct --data prompts.jsonl --rounds 2
    rlhfkit cai revise --model runs/sft-1 --data prompts.jsonl --reviser gemma3-270m --reviser-format text

Writes into the run folder: ``sft.jsonl`` (prompt -> final revision, ready for ``rlhfkit sft``) and
``trace.jsonl`` (per prompt: the first answer, and per round the principle, the critique and the revision,
whether the revision opened with a self-reference like "Here is a revised response:", which is cut off and
counted). The constitution's few-shot examples come first in every critique and revision prompt; the tokens
they share run once per batch (the sampler's ``shared_prefix``). Prompts are done a batch at a time and each
finished batch is appended to the trace, so an interrupted run resumes after its last finished batch.

The critic and reviser is the model itself by default, as in the paper; ``--reviser`` names another one (a
base model asked with plain few-shot text: ``--reviser-format text``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rlhfkit.ai_feedback.constitution import Constitution, Principle, load_constitution, strip_leak
from rlhfkit.config.ai_feedback import ReviseConfig
from rlhfkit.data.io import DataError, read_resume_rows, resume_writer, write_jsonl
from rlhfkit.data.prompts import read_prompts
from rlhfkit.data.records import Message, flat_text, to_json, user_turn
from rlhfkit.models.load import load_causal_lm
from rlhfkit.runs import Progress, parent_of
from rlhfkit.samplers import make_sampler
from rlhfkit.train import common

TEXT_STOP = ["\n\n"]  # plain-text few-shot: every field is one paragraph


def end_at_sentence(text: str, ended: bool) -> str:
    """A response cut by the token budget ends at its last full sentence or line (if that keeps a third of it),
    so SFT data never teaches half sentences; a response that ended on its own is kept whole."""
    text = text.strip()
    if ended:
        return text
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("\n"), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")):
        return text
    return text[: cut + 1].strip() if cut > len(text) // 3 else text


class Prompter:
    """The critique and revision prompts: chat turns (an instruction-tuned reviser) or plain text (a base one),
    with the constitution's revision examples first."""

    def __init__(self, constitution: Constitution, chat: bool):
        self.constitution, self.chat = constitution, chat

    def _example_turns(self) -> list[tuple[str, str, str, str, str, str]]:
        out = []
        for ex in self.constitution.revision_examples:
            p = self.constitution.principle(ex.principle)
            out.append((ex.prompt, ex.response, p.critique, ex.critique, p.revision, ex.revision))
        return out

    def critique(self, prompt: str, answer: str, principle: Principle):
        return self._build(prompt, answer, principle, None)

    def revision(self, prompt: str, answer: str, principle: Principle, critique: str):
        return self._build(prompt, answer, principle, critique)

    def _build(self, prompt: str, answer: str, principle: Principle, critique: str | None):
        rows = self._example_turns() + [(prompt, answer, principle.critique, critique, principle.revision, None)]
        if self.chat:
            turns: list[Message] = []
            for p, a, creq, crit, rreq, rev in rows:
                turns += [Message(role="user", content=p), Message(role="assistant", content=a)]
                turns.append(Message(role="user", content=creq))
                if crit is None:
                    return turns
                turns += [Message(role="assistant", content=crit), Message(role="user", content=rreq)]
                if rev is None:
                    return turns
                turns.append(Message(role="assistant", content=rev))
        blocks = []
        for p, a, creq, crit, rreq, rev in rows:
            block = f"Human: {p}\n\nAssistant: {a}\n\nCritique request: {creq}\n\nCritique:"
            if crit is not None:
                block += f" {crit}\n\nRevision request: {rreq}\n\nRevision:"
                if rev is not None:
                    block += f" {rev}"
            blocks.append(block)
        return "\n\n---\n\n".join(blocks)


def echoes(revision: str, critique: str, constitution: Constitution) -> bool:
    """Whether a revision only repeats text it was shown: its own critique, a request of the constitution, or a
    sentence of a few-shot example (small models copy them: docs/ai-feedback.md has samples). Such a revision
    answers nothing, so the answer it was asked to revise is kept."""
    text = revision.strip().lower()
    if not text:
        return False
    shown = [critique] + [x for p in constitution.principles for x in (p.critique, p.revision)]
    for ex in constitution.revision_examples:
        shown += [ex.response, ex.critique, ex.revision]
    for s in shown:
        s = s.strip().lower()
        # containment and shared openings only between long texts: a short critique ("It is fine.") may well
        # open a real revision
        long = len(text) > 40 and len(s) > 40
        if s and (text == s or (long and (text in s or s in text or text[:60] == s[:60]))):
            return True
    return False


def principle_for(constitution: Constitution, seed: int, index: int, round_: int) -> Principle:
    """The principle of one critique-revision step: seeded by the prompt's index and the round, so a resumed
    run draws what the uninterrupted one would have."""
    rng = random.Random(seed * 1_000_003 + index * 101 + round_)
    return constitution.principles[rng.randrange(len(constitution.principles))]


def _generate(sampler, prompts: list, seed: int) -> tuple[list[str], list[bool]]:
    rollout = sampler.generate(prompts, generator=torch.Generator().manual_seed(seed))
    return [t.strip() for t in rollout.texts], rollout.ended.tolist()


def revise_batch(
    cfg: ReviseConfig,
    constitution: Constitution,
    prompter: Prompter,
    samplers: dict,
    prompts: list,
    start: int,
) -> list[dict]:
    """The trace rows of ``prompts`` (the ``start``-th prompt onward): answer, then critique and revise."""
    texts = [flat_text(p) for p in prompts]
    answers, ended = _generate(
        samplers["answer"], [p if not isinstance(p, str) else user_turn(p) for p in prompts], cfg.seed + start
    )
    current = [end_at_sentence(a, e) for a, e in zip(answers, ended)]
    rows = [{"prompt": to_json(p), "initial": a, "rounds": []} for p, a in zip(prompts, current)]
    for r in range(cfg.rounds):
        principles = [principle_for(constitution, cfg.seed, start + i, r) for i in range(len(prompts))]
        asks = [prompter.critique(t, a, p) for t, a, p in zip(texts, current, principles)]
        critiques, _ = _generate(samplers["critique"], asks, cfg.seed + start + 7 * r + 1)
        asks = [prompter.revision(t, a, p, c) for t, a, p, c in zip(texts, current, principles, critiques)]
        revisions, ended = _generate(samplers["revision"], asks, cfg.seed + start + 7 * r + 2)
        for i, (p, c, rev, e) in enumerate(zip(principles, critiques, revisions, ended)):
            text, leaked = strip_leak(end_at_sentence(rev, e))
            copied = echoes(text, c, constitution)
            rows[i]["rounds"].append(
                {"principle": p.name, "critique": c, "revision": text, "leaked": leaked, "copied": copied}
            )
            if text and not copied:  # an empty or copied revision keeps the answer it was asked to revise
                current[i] = text
    for row, final in zip(rows, current):
        row["final"] = final
    return rows


def figures(trace: list[dict], rounds: int) -> dict:
    steps = [s for row in trace for s in row["rounds"]]
    n = max(len(trace), 1)
    return {
        "prompts": len(trace),
        "rounds": rounds,
        "revised_share": sum(row["final"] != row["initial"] for row in trace) / n,
        "leak_share": sum(s["leaked"] for s in steps) / max(len(steps), 1),
        "copied_share": sum(s.get("copied", False) for s in steps) / max(len(steps), 1),
        "mean_answer_chars": sum(len(row["initial"]) for row in trace) / n,
        "mean_revision_chars": sum(len(row["final"]) for row in trace) / n,
    }


def run(cfg: ReviseConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = common.make_accelerator(cfg)
    run_dir = common.open_run(cfg, accelerator)
    constitution = load_constitution(cfg.constitution)
    prompts = read_prompts(cfg.data, cfg.skip_invalid)[: cfg.max_prompts]
    model, tokenizer = load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
    model.to(accelerator.device).eval()
    if cfg.reviser:
        reviser, reviser_tok = load_causal_lm(cfg.reviser, common.training_dtype(cfg), seed=cfg.seed, setting="reviser")
        reviser.to(accelerator.device).eval()
    else:
        reviser, reviser_tok = model, tokenizer
    parents = [parent_of("model", cfg.model)] + ([parent_of("reviser", cfg.reviser)] if cfg.reviser else [])
    logger = common.start_run(
        run_dir, cfg, accelerator, parents, {"prompts": cfg.data, "constitution": cfg.constitution}
    )

    text = cfg.reviser_format == "text"
    base = cfg.sampling()
    critique_params = base.model_copy(update={"max_new_tokens": cfg.critique_max_new_tokens})
    if text:
        critique_params = critique_params.model_copy(update={"stop": base.stop + TEXT_STOP})
    revision_params = base.model_copy(update={"stop": base.stop + TEXT_STOP}) if text else base
    samplers = {
        "answer": make_sampler(model, tokenizer, base),
        "critique": make_sampler(reviser, reviser_tok, critique_params, shared_prefix=True),
        "revision": make_sampler(reviser, reviser_tok, revision_params, shared_prefix=True),
    }
    prompter = Prompter(constitution, chat=not text)

    trace_path = run_dir.path / "trace.jsonl"
    trace = read_resume_rows(trace_path, ("prompt", "final", "rounds")) if cfg.resume and trace_path.exists() else []
    if len(trace) > len(prompts):
        raise DataError(
            f"{trace_path}: {len(trace)} rows for {len(prompts)} prompts; move the file aside to start over"
        )
    trace = trace[: len(trace) - len(trace) % cfg.batch_size] if len(trace) < len(prompts) else trace
    progress = Progress(len(prompts), "cai revise", cfg.progress, completed=len(trace))
    with resume_writer(trace_path, trace) as f:  # a half-written batch is done again
        for s in range(len(trace), len(prompts), cfg.batch_size):
            batch = revise_batch(cfg, constitution, prompter, samplers, prompts[s : s + cfg.batch_size], s)
            for row in batch:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            trace += batch
            logger.log(s // cfg.batch_size, {f"revise/{k}": v for k, v in figures(batch, cfg.rounds).items()})
            progress.update(len(batch))
    progress.close()
    # A plain-string request is written as a one-message chat: the model answered it through its chat template.
    as_chat = lambda p: to_json(user_turn(p)) if isinstance(p, str) else p  # noqa: E731
    sft_rows = [{"prompt": as_chat(r["prompt"]), "completion": r["final"]} for r in trace if r["final"]]
    write_jsonl(run_dir.path / "sft.jsonl", sft_rows)
    logger.close()
    run_dir.finish(figures(trace, cfg.rounds))
    return run_dir.path
