"""Record types for every kind of data the stages read, and their validation.

Field names follow TRL so its datasets load as they are:
- demonstrations: ``prompt``/``completion`` (strings or message lists) or conversational ``messages``;
- comparisons: ``prompt``/``chosen``/``rejected`` (TRL's "explicit prompt" preference format), plus
  optional ``tie``, ``annotator``, ``margin``, ``chosen_prob`` (a soft label: the probability in [0, 1] that
  ``chosen`` is the better response, e.g. an AI judge's normalised option probability or a share of votes) and
  ``source`` (who labelled it: ``human``, ``ai:<judge>``, ..., so that people's and AI labels mix in one file).
  TRL's "implicit prompt" form (conversational
  ``chosen``/``rejected`` with no ``prompt``) is accepted: the shared leading messages become the prompt;
- rankings: ``prompt``, ``completions`` (K >= 2) and ``ranking`` (indices into completions, best first);
- ratings: ``prompt``/``completion`` with either ``rating`` on a 1..``scale`` Likert scale or
  ``label`` (thumbs up = true), TRL's unpaired-preference (KTO) format.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

Role = Literal["system", "user", "assistant", "tool"]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Role
    content: StrictStr


NonEmptyStr = Field(min_length=1)
Text = StrictStr | list[Message]


def _is_empty(text: Text) -> bool:
    if isinstance(text, str):
        return not text.strip()
    return len(text) == 0 or all(not m.content.strip() for m in text)


class Record(BaseModel):
    # Extra columns (ids, scores, sources) are common in public datasets; they are ignored, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    def _require_text(self, *names: str) -> None:
        for name in names:
            if _is_empty(getattr(self, name)):
                raise ValueError(f"field '{name}': must not be empty")


class Demonstration(Record):
    prompt: Text | None = None
    completion: Text | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.messages is not None:
            if self.prompt is not None or self.completion is not None:
                raise ValueError("give either 'messages' or 'prompt'/'completion', not both")
            if not any(m.role == "assistant" for m in self.messages):
                raise ValueError("field 'messages': needs at least one assistant message to learn from")
            if any(not m.content.strip() for m in self.messages if m.role == "assistant"):
                raise ValueError("field 'messages': an assistant message is empty")
        else:
            for name in ("prompt", "completion"):
                if getattr(self, name) is None:
                    raise ValueError(f"field '{name}': missing (or give 'messages')")
            self._require_text("prompt", "completion")
        return self


def _common_prefix(a: list[Message], b: list[Message]) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


class Comparison(Record):
    prompt: Text
    chosen: Text
    rejected: Text
    tie: StrictBool = False
    annotator: StrictStr | None = None
    margin: StrictFloat | StrictInt | None = None
    chosen_prob: StrictFloat | StrictInt | None = None
    source: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _implicit_prompt(cls, data):
        if isinstance(data, dict) and "prompt" not in data:
            chosen, rejected = data.get("chosen"), data.get("rejected")
            if isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected:
                n = _common_prefix(chosen, rejected)
                if n > 0:
                    data = {**data, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}
        return data

    @model_validator(mode="after")
    def _check(self):
        self._require_text("prompt", "chosen", "rejected")
        if self.chosen == self.rejected:
            raise ValueError("fields 'chosen' and 'rejected': are identical, so the pair says nothing")
        if self.margin is not None and not math.isfinite(self.margin):  # JSON's NaN / Infinity: a NaN loss
            raise ValueError(f"field 'margin': {self.margin} is not a finite number")
        if self.chosen_prob is not None:
            if not 0 <= self.chosen_prob <= 1:
                raise ValueError(f"field 'chosen_prob': {self.chosen_prob} is not a probability in [0, 1]")
            if self.tie:
                raise ValueError(
                    "fields 'tie' and 'chosen_prob': give one, not both (a pair is a tie or has a soft label)"
                )
            if self.margin is not None:
                raise ValueError("fields 'margin' and 'chosen_prob': give one; a soft label has no margin")
        return self


class Ranking(Record):
    prompt: Text
    completions: list[Text] = Field(min_length=2)
    ranking: list[StrictInt]
    annotator: StrictStr | None = None

    @model_validator(mode="after")
    def _check(self):
        self._require_text("prompt")
        for i, c in enumerate(self.completions):
            if _is_empty(c):
                raise ValueError(f"field 'completions.{i}': must not be empty")
        if sorted(self.ranking) != list(range(len(self.completions))):
            raise ValueError(
                f"field 'ranking': must list each index 0..{len(self.completions) - 1} once (best first), "
                f"got {self.ranking}"
            )
        seen: dict[str, int] = {}
        for i, c in enumerate(self.completions):
            j = seen.setdefault(repr(c), i)
            if j != i:  # as a comparison of a text with itself: ranked apart, it says nothing
                raise ValueError(f"fields 'completions.{j}' and 'completions.{i}': are identical")
        return self


class Rating(Record):
    prompt: Text
    completion: Text
    rating: StrictFloat | StrictInt | None = None
    scale: StrictInt = Field(5, ge=2)  # a scale of one level says nothing (and would divide by zero)
    label: StrictBool | None = None
    annotator: StrictStr | None = None

    @model_validator(mode="after")
    def _check(self):
        self._require_text("prompt", "completion")
        if (self.rating is None) == (self.label is None):
            raise ValueError("give exactly one of 'rating' (Likert) or 'label' (thumbs up/down)")
        if self.rating is not None and not 1 <= self.rating <= self.scale:
            raise ValueError(f"field 'rating': {self.rating} is outside the scale 1..{self.scale}")
        return self


class PromptRecord(Record):
    """Any record with a prompt, for stages that sample their own responses: ``prompt`` (string or messages),
    or ``messages`` (the conversation up to its last assistant turn). Other fields are ignored."""

    prompt: Text | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.prompt is None:
            if not self.messages:
                raise ValueError("field 'prompt': missing (or give 'messages')")
            msgs = list(self.messages)
            while msgs and msgs[-1].role == "assistant":
                msgs.pop()
            if not msgs:
                raise ValueError("field 'messages': no user turn to use as a prompt")
            object.__setattr__(self, "prompt", msgs)
        return self


class Response(Record):
    """A prompt and one response to it, as a reward scores it: ``response``, or ``completion`` (TRL's name)."""

    prompt: Text
    response: Text | None = None
    completion: Text | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.response is None and self.completion is None:
            raise ValueError("field 'response': missing (or give 'completion')")
        if self.response is not None and self.completion is not None:
            raise ValueError("give 'response' or 'completion', not both")
        if self.response is None:
            object.__setattr__(self, "response", self.completion)
        self._require_text("prompt", "response")
        return self


RECORD_TYPES: dict[str, type[Record]] = {
    "demonstration": Demonstration,
    "comparison": Comparison,
    "ranking": Ranking,
    "rating": Rating,
    "prompt": PromptRecord,
    "response": Response,
}


# --- one converter each way between a text (string or messages) and its JSON form -------------------------


def to_json(text: Text) -> str | list[dict]:
    """A prompt or response as JSON writes it: a string, or a list of {role, content}."""
    if isinstance(text, str):
        return text
    return [m.model_dump() if isinstance(m, Message) else dict(m) for m in text]


def from_json(value: str | list) -> Text:
    """The inverse of ``to_json``: messages (dicts or ``Message``) become ``Message`` objects."""
    if isinstance(value, str):
        return value
    return [m if isinstance(m, Message) else Message(**m) for m in value]


def flat_text(text: Text) -> str:
    """The words of a text: a string as it is, messages' contents joined by newlines."""
    return text if isinstance(text, str) else "\n".join(m.content for m in text)


def user_turn(text: str) -> list[Message]:
    """A one-message chat: how plain prompts are put to a chat model."""
    return [Message(role="user", content=text)]
