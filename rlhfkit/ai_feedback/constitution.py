"""Constitutions: the principles an AI critiques and revises its answers under (SL-CAI), the multiple-choice
questions a feedback model answers about pairs of responses (RLAIF), and the few-shot examples for both
(Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback", sections 3 and 4).

    constitution = load_constitution(None)          # the built-in default (default_constitution.yaml)
    constitution = load_constitution("mine.yaml")   # a file of the same shape; errors name the file and field
    questions = constitution.questions()            # one judges.PairwiseQuestion per comparison principle

No torch here: the command line checks a constitution file before anything loads.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlhfkit.config.base import read_yaml

DEFAULT_CONSTITUTION = Path(__file__).with_name("default_constitution.yaml")

# The question put to a feedback model, Bai et al.'s layout: the conversation, the principle's question, the two
# options, then "The answer is: (" after which the next token is read.
COMPARISON_TEMPLATE = (
    "Consider this request from a user to an AI assistant.\n\nUser: {prompt}\n\n{question}\n\n(A) {a}\n\n(B) {b}"
)
ANSWER_PREFIX = "The answer is: ("


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Principle(_Strict):
    name: str = Field(min_length=1)
    critique: str = Field(min_length=1, description="the critique request")
    revision: str = Field(min_length=1, description="the revision request")


class Comparison(_Strict):
    name: str = Field(min_length=1)
    question: str = Field(min_length=1)


class RevisionExample(_Strict):
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    principle: str = Field(min_length=1, description="the name of the principle whose requests the example shows")
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class ComparisonExample(_Strict):
    prompt: str = Field(min_length=1)
    a: str = Field(min_length=1)
    b: str = Field(min_length=1)
    better: Literal["A", "B"]
    declines: Literal["A", "B"] | None = Field(None, description="which response declines (the decomposed questions)")


class HarmExample(_Strict):
    prompt: str = Field(min_length=1)
    harmful: bool


class Decomposed(_Strict):
    """Two questions a small feedback model answers better than the comparison: is the request harmful (about the
    request alone), and which response declines it."""

    harm_question: str = Field(min_length=1)
    refusal_question: str = Field(min_length=1)
    harm_examples: list[HarmExample] = []


class Constitution(_Strict):
    name: str = "unnamed"
    principles: list[Principle] = Field(min_length=1)
    comparisons: list[Comparison] = Field(min_length=1)
    revision_examples: list[RevisionExample] = []
    comparison_examples: list[ComparisonExample] = []
    decomposed: Decomposed | None = None

    @model_validator(mode="after")
    def _check(self):
        names = [p.name for p in self.principles]
        for kind, items in (("principles", names), ("comparisons", [c.name for c in self.comparisons])):
            dupes = sorted({n for n in items if items.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: the name(s) {dupes} occur more than once")
        for i, ex in enumerate(self.revision_examples):
            if ex.principle not in names:
                raise ValueError(f"revision_examples.{i}.principle: '{ex.principle}' is none of {names}")
        return self

    def principle(self, name: str) -> Principle:
        return next(p for p in self.principles if p.name == name)

    def sample_principles(self, n: int, seed: int) -> list[Principle]:
        """One principle per example, drawn uniformly with a seeded generator (Bai et al. sample one per
        critique-revision step, so the data covers the whole constitution)."""
        rng = random.Random(seed)
        return [rng.choice(self.principles) for _ in range(n)]

    def select(self, names: list[str] | None) -> list[Comparison]:
        """The comparison principles named (all when None), in the constitution's order."""
        if not names:
            return list(self.comparisons)
        known = {c.name for c in self.comparisons}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"setting 'principles': {unknown} not in the constitution; it has {sorted(known)}")
        return [c for c in self.comparisons if c.name in names]

    def questions(self, names: list[str] | None = None, chain_of_thought: bool = False) -> list:
        """One ``rlhfkit.judges.PairwiseQuestion`` per comparison principle, with the comparison examples as
        few-shot (options A/B, read after "The answer is: ("). With ``chain_of_thought`` the answer prefix
        comes after the model's own reasoning (see ``rlhfkit.ai_feedback.label``)."""
        from rlhfkit.judges import PairwiseQuestion

        shots = [(ex.prompt, ex.a, ex.b, "AB".index(ex.better)) for ex in self.comparison_examples]
        out = []
        for c in self.select(names):
            template = COMPARISON_TEMPLATE.replace("{question}", c.question)
            out.append(
                PairwiseQuestion(template=template, answer_prefix=ANSWER_PREFIX, options=("A", "B"), few_shot=shots)
            )
        return out


HARM_TEMPLATE = (
    "Consider this request from a user to an AI assistant.\n\nUser: {prompt}\n\n{question} Answer Yes or No."
)
HARM_ANSWER_PREFIX = "Answer:"
CONTENT_FREE = "N/A"  # the request a harm question is calibrated on (Zhao et al. 2021, contextual calibration)


def decomposed_questions(constitution: Constitution) -> tuple:
    """(harm question, refusal question) as ``PairwiseQuestion``s: the first about the request alone (options
    " Yes"/" No"), the second about the two responses (A/B), with the constitution's examples as few-shot."""
    from rlhfkit.judges import PairwiseQuestion

    d = constitution.decomposed
    if d is None:
        raise ValueError("setting 'decompose': the constitution has no 'decomposed' section")
    harm = PairwiseQuestion(
        template=HARM_TEMPLATE.replace("{question}", d.harm_question),
        answer_prefix=HARM_ANSWER_PREFIX,
        options=(" Yes", " No"),
        few_shot=[(ex.prompt, "", "", 0 if ex.harmful else 1) for ex in d.harm_examples],
    )
    shots = [(ex.prompt, ex.a, ex.b, "AB".index(ex.declines)) for ex in constitution.comparison_examples if ex.declines]
    refusal = PairwiseQuestion(
        template=COMPARISON_TEMPLATE.replace("{question}", d.refusal_question),
        answer_prefix=ANSWER_PREFIX,
        options=("A", "B"),
        few_shot=shots,
    )
    return harm, refusal


def load_constitution(path: str | Path | None = None) -> Constitution:
    """The constitution in ``path`` (YAML), or the built-in default; a bad file fails naming the file and field."""
    path = Path(path) if path else DEFAULT_CONSTITUTION
    raw = read_yaml(path, "setting 'constitution'")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a constitution is a mapping with 'principles' and 'comparisons'")
    try:
        return Constitution.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(file)"
            problems.append(f"{where}: {err['msg']}")
        raise ValueError(f"{path}: " + "; ".join(problems)) from None


# --- revisions that talk about themselves ------------------------------------------------------------------

# Openings a reviser writes instead of the answer itself ("Sure, here is a revised response: ..."). They are
# cut from the revision and counted; the few-shot examples make them rarer (Hugging Face's open reproduction).
_LEAK = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course)[,!.]?\s*)?"
    r"(?:here(?:'s| is)\s+(?:a|an|the|my)?\s*(?:revised|rewritten|new|updated|improved|better)\s+"
    r"(?:response|answer|version)[^:.\n]*[:.]\s*"  # to the opening's first ':' or '.', not the line's last
    r"|(?:revised|rewritten|new)\s+(?:response|answer|version)\s*:\s*"
    r"|revision\s*:\s*)",
    re.IGNORECASE,
)


def strip_leak(text: str) -> tuple[str, bool]:
    """``text`` without a self-referring opening ("Here is a revised response:"), and whether it had one."""
    match = _LEAK.match(text)
    if not match:
        return text.strip(), False
    return text[match.end() :].strip().strip('"').strip(), True
