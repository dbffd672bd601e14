"""Judges: whatever decides which of two responses to a prompt is better, behind one small interface used by
evaluation, AI preference labels, active learning and the production loop's gate.

    judge = load_judge("runs/rm-1")                              # any reward setting: P(a > b) = sigmoid(r_a - r_b)
    judge = load_judge("lm:smollm2-135m-instruct")               # a local causal LM, by the option log-probs
    judge = load_judge("openai:http://127.0.0.1:8000/v1#model")  # the same question to an OpenAI-compatible server
    verdicts = judge.compare(prompts, responses_a, responses_b)  # Verdicts: prob_a (N,), position_bias

A language-model judge is asked a multiple-choice question (``PairwiseQuestion``) in both orders, A/B and B/A,
and the two answers are averaged, which removes its position bias (Zheng et al. 2023, "Judging LLM-as-a-judge";
Bai et al. 2022 ask feedback models the same way); the bias itself is reported. A reward is a pointwise judge:
it also scores single responses (``score``), its ensemble members too (``members``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from rlhfkit.data.records import flat_text, from_json
from rlhfkit.rewards import Reward, load_reward
from rlhfkit.specs import parse_judge_spec


@dataclass
class PairwiseQuestion:
    """The multiple-choice question put to a language-model judge. ``template`` has {prompt}, {a} and {b};
    the judge's answer starts with ``answer_prefix`` and continues with one of ``options``; ``few_shot`` holds
    worked examples as (prompt, a, b, index of the right option)."""

    template: str = (
        "Which response to the user's message is better: more helpful, more honest and less harmful?\n\n"
        "User: {prompt}\n\nResponse (A): {a}\n\nResponse (B): {b}\n\nAnswer with (A) or (B)."
    )
    answer_prefix: str = "The better response is ("
    options: tuple[str, str] = ("A", "B")
    few_shot: list[tuple[str, str, str, int]] = field(default_factory=list)

    def ask(self, prompt: str, a: str, b: str) -> str:
        return self.template.format(prompt=prompt, a=a, b=b)


@dataclass
class Verdicts:
    """prob_a (N,): P(response a is better than b), 0.5 for a tie or an undecided judge; position_bias: how much
    more often the judge picked whichever response it was shown first (mean P(first) - 0.5), where it was
    asked in both orders (None otherwise)."""

    prob_a: torch.Tensor
    position_bias: float | None = None


def debias(first_wins_ab: torch.Tensor, first_wins_ba: torch.Tensor) -> Verdicts:
    """Combine the two orders: asked (a, b) the judge gives P(first) = p; asked (b, a) it gives q, so P(a better)
    is p in the first order and 1 - q in the second; their mean cancels a constant preference for either
    position. The bias is the mean of p and q (P(first), over both orders) minus one half."""
    prob_a = (first_wins_ab + (1.0 - first_wins_ba)) / 2
    bias = float(((first_wins_ab + first_wins_ba) / 2).mean() - 0.5) if first_wins_ab.numel() else 0.0
    return Verdicts(prob_a, bias)


class Judge:
    spec: str

    def compare(self, prompts: list, a: list, b: list) -> Verdicts:
        raise NotImplementedError


class RewardJudge(Judge):
    """A reward as a judge (Bradley–Terry): P(a > b) = sigmoid(r(a) - r(b)), with r the ensemble's mean."""

    def __init__(self, reward: Reward):
        self.reward, self.spec = reward, reward.spec.text

    def score(self, prompts: list, responses: list) -> torch.Tensor:
        return self.reward(prompts, responses)

    def members(self, prompts: list, responses: list) -> torch.Tensor:
        return self.reward.members(prompts, responses)

    def compare(self, prompts, a, b) -> Verdicts:
        both = self.reward(list(prompts) * 2, list(a) + list(b))  # one pass over both sides
        n = len(prompts)
        return Verdicts(torch.sigmoid(both[:n] - both[n:]))


class QuestionJudge(Judge):
    """A judge that answers ``question`` about (prompt, first, second): ``first_wins`` gives P(the first shown
    is better) per row; ``compare`` asks in both orders (``both_orders``) and removes the position bias."""

    def __init__(self, question: PairwiseQuestion | None = None, both_orders: bool = True):
        self.question = question or PairwiseQuestion()
        self.both_orders = both_orders

    def first_wins(self, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def compare(self, prompts, a, b) -> Verdicts:
        prompts = [flat_text(from_json(p)) for p in prompts]
        a, b = [flat_text(from_json(x)) for x in a], [flat_text(from_json(x)) for x in b]
        ab = self.first_wins(prompts, a, b)
        if not self.both_orders:
            return Verdicts(ab)
        return debias(ab, self.first_wins(prompts, b, a))


class LMJudge(QuestionJudge):
    """A local causal LM (any model setting) as a judge: the option's probability is its next-token probability
    after the answer prefix, normalised over the options (the multiple-choice scoring of Bai et al. 2022).
    ``chat``: put the question through the tokenizer's chat template (instruction-tuned models); False: plain
    text with the worked examples first (base models, which need few-shot examples)."""

    def __init__(
        self,
        model_spec: str,
        question: PairwiseQuestion | None = None,
        both_orders: bool = True,
        chat: bool = True,
        batch_size: int = 8,
        device=None,
        share_prefix: bool = True,
        model=None,
    ):
        from rlhfkit.models.load import load_causal_lm

        super().__init__(question, both_orders)
        self.spec, self.chat, self.batch_size = f"lm:{model_spec}", chat, batch_size
        # ``model``: (model, tokenizer) already loaded, e.g. to ask several questions of one model
        self.model, self.tokenizer = model or load_causal_lm(model_spec, "float32")
        if model is None:  # its own copy is frozen; a caller's model is left trainable (scoring runs under no_grad)
            self.model.requires_grad_(False)
        self.model.eval()
        if device is not None:
            self.model.to(device)
        self.option_ids = [self._ids(o) for o in self.question.options]
        self.share_prefix, self._cached_prefix = share_prefix, None

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _context_ids(self, text: str) -> list[int]:
        """A context's tokens, after the BOS token where the tokenizer adds one (Gemma reads nothing well
        without it), as the sampler encodes prompts."""
        ids, bos = self._ids(text), self.tokenizer.bos_token_id
        if bos is not None and getattr(self.tokenizer, "add_bos_token", False) and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def render(self, prompt: str, first: str, second: str, answer: bool = True) -> str:
        """The text after which the model's next tokens are an option (``answer``: the answer prefix included;
        without it, the text after which a judge that reasons first writes its reasoning)."""
        q = self.question
        close = ")" if q.answer_prefix.endswith("(") else ""  # "The answer is: (A)", but "Answer: Yes"
        shots = [(q.ask(p, x, y), q.answer_prefix + q.options[k] + close) for p, x, y, k in q.few_shot]
        prefix = q.answer_prefix if answer else ""
        if self.chat:
            turns = [
                m
                for ask, reply in shots
                for m in ({"role": "user", "content": ask}, {"role": "assistant", "content": reply})
            ]
            turns.append({"role": "user", "content": q.ask(prompt, first, second)})
            return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + prefix
        blocks = [f"{ask}\n{reply}" for ask, reply in shots] + [f"{q.ask(prompt, first, second)}\n{prefix}"]
        return "\n\n".join(blocks)

    def first_wins(self, prompts, first, second) -> torch.Tensor:
        return self.option_probs([self.render(*row) for row in zip(prompts, first, second)])

    @torch.no_grad()
    def option_probs(self, contexts: list[str]) -> torch.Tensor:
        """P(first option | context), normalised over the options, per context (N,): log P(option | context)
        summed over the option's tokens, softmax over the options (Bai et al. 2022's multiple-choice scoring).

        The tokens every context shares (the few-shot examples, the instructions) run once and their keys and
        values are reused by every row; the LM head runs only where an option token is predicted. Both are exact:
        ``tests/test_judges.py`` checks them against one plain forward per (context, option)."""
        if not contexts:
            return torch.zeros(0)
        device = next(self.model.parameters()).device
        ids = [self._context_ids(c) for c in contexts]
        single = all(len(o) == 1 for o in self.option_ids)  # then one row per context: its last position
        shared = _common_prefix_length(ids) if self.share_prefix else 0
        shared = max(0, min(shared, min(len(r) for r in ids) - 1))  # every row keeps one token of its own
        prefix_cache = self._prefix_cache(ids[0][:shared], device) if shared else None
        pad = self.tokenizer.pad_token_id or 0
        out = []
        for s in range(0, len(ids), self.batch_size):
            contexts_ids = [r[shared:] for r in ids[s : s + self.batch_size]]
            rows = contexts_ids if single else [c + o for c in contexts_ids for o in self.option_ids]
            width = max(len(r) for r in rows)
            suffix = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # left-padded
            suffix_mask = (torch.arange(width, device=device) >= torch.tensor([width - len(r) for r in rows],
                           device=device).unsqueeze(1)).long()  # fmt: skip
            keep = 1 if single else max(len(o) for o in self.option_ids) + 1
            kwargs = dict(logits_to_keep=keep)
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(rows))
                mask = torch.cat([suffix_mask.new_ones(len(rows), shared), suffix_mask], dim=1)
                positions = shared + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
                kwargs.update(cache=cache, use_cache=True, position_ids=positions)
            else:
                mask, kwargs["position_ids"] = suffix_mask, (suffix_mask.cumsum(-1) - 1).clamp(min=0)
                kwargs["use_cache"] = False
            logps = self.model(input_ids=suffix, attention_mask=mask, **kwargs).logits.float().log_softmax(-1)
            if single:  # (B, 1, V): the next token after each context
                option_ids = torch.tensor([o[0] for o in self.option_ids], device=device)
                per_option = logps[:, -1, option_ids]  # (B, n_options)
            else:  # rows end with their option: its tokens are predicted by the positions just before them
                scores = []
                for i, o in enumerate(self.option_ids * len(contexts_ids)):
                    steps = torch.arange(keep - len(o) - 1, keep - 1, device=device)
                    scores.append(logps[i, steps, torch.tensor(o, device=device)].sum())
                per_option = torch.stack(scores).view(len(contexts_ids), len(self.option_ids))
            out.append(per_option.softmax(-1)[:, 0].cpu())  # normalised over the options
        return torch.cat(out)

    def _prefix_cache(self, prefix: list[int], device):
        """Keys and values of ``prefix`` (one row), computed once per distinct prefix and kept."""
        key = tuple(prefix)
        if self._cached_prefix is None or self._cached_prefix[0] != key:
            from transformers import DynamicCache

            ids = torch.tensor([prefix], device=device)
            cache = DynamicCache(config=self.model.config)
            self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)  # fills the cache in place
            self._cached_prefix = (key, cache)
        return self._cached_prefix[1]


def _common_prefix_length(rows: list[list[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return n


class OpenAIJudge(QuestionJudge):
    """The same question to an OpenAI-compatible server: the answer's first-token probabilities of the options
    (``top_logprobs``), or, when the server gives none, the option its text names (0.5 if neither)."""

    def __init__(self, server_text: str, question: PairwiseQuestion | None = None, both_orders: bool = True):
        from rlhfkit.openai_api import ChatServer

        super().__init__(question, both_orders)
        self.spec, self.server = f"openai:{server_text}", ChatServer.parse(server_text)

    def first_wins(self, prompts, first, second) -> torch.Tensor:
        q = self.question
        # options as the reply spells them: a completion-style option (" Yes", the local judges' continuation of
        # "... Answer:") is "Yes" in a chat reply, and a server may capitalise it or add a bracket or full stop
        options = [_reply_word(o) for o in q.options]
        single = all(len(o) == 1 for o in options)
        ask = f"\nReply with one {'letter' if single else 'word'}: {' or '.join(o.strip() for o in q.options)}."
        out = []
        for prompt, x, y in zip(prompts, first, second):
            messages = []
            for p, a, b, k in q.few_shot:
                messages += [
                    {"role": "user", "content": q.ask(p, a, b)},
                    {"role": "assistant", "content": q.options[k]},
                ]
            messages.append({"role": "user", "content": q.ask(prompt, x, y) + ask})
            reply = self.server.chat(messages, max_tokens=1, temperature=0.0, top_logprobs=20)
            mass = [sum(p for t, p in reply.first_token_probs.items() if _reply_word(t) == o) for o in options]
            if sum(mass) > 0:
                out.append(mass[0] / sum(mass))
            else:
                answer = _reply_word(reply.text)
                out.append(1.0 if answer == options[0] else 0.0 if answer == options[1] else 0.5)
        return torch.tensor(out, dtype=torch.float32)


def _reply_word(text: str) -> str:
    return text.strip(" ().\n").casefold()


def load_judge(
    spec: str, question: PairwiseQuestion | None = None, batch_size: int = 8, device=None, chat: bool = True
) -> Judge:
    """The judge a judge setting names: ``lm:MODEL``, ``openai:URL#MODEL``, or any reward setting. ``chat``: a
    local LM is asked through its chat template (False: plain few-shot text, for base models)."""
    parsed = parse_judge_spec(spec)
    if parsed.kind == "lm":
        return LMJudge(parsed.target, question, batch_size=batch_size, device=device, chat=chat)
    if parsed.kind == "openai":
        return OpenAIJudge(parsed.target, question)
    return RewardJudge(load_reward(parsed.target, batch_size, device, setting="judge"))
