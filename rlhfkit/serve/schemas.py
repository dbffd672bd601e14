"""What clients send to the server: an OpenAI chat-completion request (fields we do not use are ignored, as
OpenAI-compatible servers do) and feedback on a response. Limits keep one request from costing the server
much: a message list, a message and a stop string have maximum sizes, and ``max_tokens`` a server-set ceiling.
Every string is ``Text``: no NUL and no unpaired surrogate, which PostgreSQL cannot store (a 422 here, not a
database error after the answer has been generated)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from rlhfkit.feedback.models import storable
from rlhfkit.registry.tables import FEEDBACK_KINDS, FLAGS


def _storable(value: str) -> str:
    if not storable(value):
        raise ValueError("NUL characters and unpaired surrogates are not allowed")
    return value


Text = Annotated[StrictStr, AfterValidator(_storable)]

MAX_MESSAGE_CHARS = 32_000


class TextPart(BaseModel):
    """OpenAI's content-part form of a message: [{"type": "text", "text": "..."}]."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text = Field(max_length=MAX_MESSAGE_CHARS)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]

    @field_validator("content")
    @classmethod
    def _size(cls, value):
        size = len(value) if isinstance(value, str) else sum(len(p.text) for p in value)
        if size > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message may hold at most {MAX_MESSAGE_CHARS} characters")
        return value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(min_length=1, max_length=200, description="an experiment, an alias or NAME:NUMBER")
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: StrictBool = False
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    stop: Text | list[Text] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=2**63, description="a 64-bit integer")
    user: Text | None = Field(None, min_length=1, max_length=200, description="the end user: assigns the A/B arm")
    n: StrictInt = Field(1, ge=1, le=1, description="one choice per request")
    regenerate_of: Text | None = Field(None, max_length=40, description="the response this one replaces")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s or len(s) > 100 for s in stops):
            raise ValueError("give at most 4 stop strings of 1 to 100 characters")
        return stops

    def plain_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: Text = Field(min_length=1, max_length=40)
    user: Text | None = Field(None, min_length=1, max_length=200, description="the user the response was for")
    kind: Literal[FEEDBACK_KINDS]  # type: ignore[valid-type]
    value: StrictBool | StrictInt | Text | None = Field(
        None, description="thumbs: true (up) / false; rating: 1..scale; flag: " + " | ".join(FLAGS)
    )
    scale: StrictInt = Field(5, ge=2, le=10, description="rating scale")
    other_response_id: Text | None = Field(
        None, max_length=40, description="preference: this response was preferred over that one"
    )
    comment: Text | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _value_fits_kind(self):
        v = self.value
        if self.kind == "thumbs" and not isinstance(v, bool):
            raise ValueError("value: thumbs feedback needs true (up) or false (down)")
        if self.kind == "rating" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= self.scale):
            raise ValueError(f"value: a rating is an integer from 1 to scale ({self.scale})")
        if self.kind == "flag" and v not in FLAGS:
            raise ValueError(f"value: a flag is one of {', '.join(FLAGS)}")
        if self.kind == "preference":
            if not self.other_response_id:
                raise ValueError("other_response_id: a preference names the response this one was preferred over")
            if self.other_response_id == self.response_id:
                raise ValueError("other_response_id: must be another response than response_id")
        elif self.other_response_id is not None:
            raise ValueError("other_response_id: only preference feedback names another response")
        return self

    def stored_value(self):
        if self.kind == "rating":
            return {"rating": self.value, "scale": self.scale}
        return None if self.kind == "preference" else self.value
