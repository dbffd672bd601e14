"""Chat templates and tokenisation with completion-only loss masks.

Conversational records use the model's own chat template; a model without one gets
``DEFAULT_CHAT_TEMPLATE``, the ChatML layout that SmolLM2 and Qwen use:
``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, and ``<|im_start|>assistant\\n`` as the
generation prompt. Plain-string records are concatenated as they are (prompt + completion + EOS), as
TRL does.
"""

from __future__ import annotations

from rlhfkit.data.records import Message, Text

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IGNORE_INDEX = -100


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def set_chat_template(tokenizer, template: str) -> None:
    """Use ``template`` (the ``chat_template`` setting), tried at once on a two-turn conversation: a template that
    does not parse or does not render fails here, naming the setting, not at the first prompt of a run."""
    from jinja2 import TemplateError

    tokenizer.chat_template = template
    conversation = [Message(role="user", content="hi"), Message(role="assistant", content="hello")]
    try:
        render(tokenizer, conversation[:1], add_generation_prompt=True)
        render(tokenizer, conversation)
    except TemplateError as e:
        raise ValueError(f"setting 'chat_template': {type(e).__name__}: {e}") from None


def _as_dicts(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        _as_dicts(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def prompt_text(tokenizer, prompt: Text) -> str:
    """What the model sees before it answers ``prompt``."""
    if isinstance(prompt, str):
        return prompt
    return render(tokenizer, prompt, add_generation_prompt=True)


def completion_text(tokenizer, prompt: Text, completion: Text) -> str:
    """The text that follows ``prompt_text`` for this completion, end-of-turn marker included."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return completion + (tokenizer.eos_token or "")
    prompt_msgs = [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)
    reply = [Message(role="assistant", content=completion)] if isinstance(completion, str) else list(completion)
    full = render(tokenizer, prompt_msgs + reply)
    head = render(tokenizer, prompt_msgs, add_generation_prompt=True)
    if not full.startswith(head):
        raise ValueError(
            "the chat template does not render a conversation as an extension of its prompt; "
            "give the model a template that does (or set chat_template)"
        )
    return full[len(head) :]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_prompt_completion(tokenizer, prompt: Text, completion: Text) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids). Tokenised apart so the boundary is exact (no merge across it).

    A BOS token, if the tokenizer adds one and the template does not, is put before the prompt.
    """
    prompt_ids, (completion_ids,) = tokenize_prompt_completions(tokenizer, prompt, [completion])
    return prompt_ids, completion_ids


def tokenize_prompt_completions(tokenizer, prompt: Text, completions: list[Text]) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, the ids of each completion), each as ``tokenize_prompt_completion`` gives it, from one call
    of the tokenizer: a call costs more Python around the tokenizer than the tokenizer's own work on a short
    text, and a comparison used to take four."""
    # A plain-string prompt answered by messages is a one-message conversation.
    prompts = [
        [Message(role="user", content=prompt)] if isinstance(prompt, str) and not isinstance(c, str) else prompt
        for c in completions
    ]
    texts = [prompt_text(tokenizer, prompts[-1])]
    texts += [completion_text(tokenizer, p, c) for p, c in zip(prompts, completions)]
    prompt_ids, *completion_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and prompt_ids[:1] != [bos]:
        prompt_ids = [bos] + prompt_ids
    return prompt_ids, completion_ids


def tokenize_demonstration(tokenizer, record) -> tuple[list[int], list[int]]:
    """(input ids, labels) with labels = IGNORE_INDEX everywhere but the assistant's tokens.

    In a multi-turn ``messages`` record every assistant turn is learned; the chunks between them are
    found by rendering growing prefixes of the conversation, which works with any template that renders
    a conversation as an extension of its prefixes.
    """
    if record.messages is None:
        p, c = tokenize_prompt_completion(tokenizer, record.prompt, record.completion)
        return p + c, [IGNORE_INDEX] * len(p) + c
    msgs = record.messages
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, m in enumerate(msgs):
        if m.role == "assistant":
            head = render(tokenizer, msgs[:i], add_generation_prompt=True)
            chunk = _ids(tokenizer, head[len(rendered) :])
            ids += chunk
            labels += [IGNORE_INDEX] * len(chunk)
            rendered = head
        full = render(tokenizer, msgs[: i + 1])
        chunk = _ids(tokenizer, full[len(rendered) :])
        ids += chunk
        labels += chunk if m.role == "assistant" else [IGNORE_INDEX] * len(chunk)
        rendered = full
    return ids, labels
