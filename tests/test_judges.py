"""Judges: rewards as Bradley–Terry judges, language models asked a question in both orders (locally by option
log-probs, or over an OpenAI-compatible server), position bias measured and removed, the toy gold judge."""

import json
import math
import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from rlhfkit.judges import LMJudge, OpenAIJudge, PairwiseQuestion, RewardJudge, debias, load_judge
from rlhfkit.openai_api import ServerError
from rlhfkit.rewards import load_reward
from rlhfkit.specs import SpecError, parse_judge_spec


def test_debias_by_hand():
    """Asked (a, b) the judge says P(first) = 0.9; asked (b, a) it says 0.7. So P(a better) = (0.9 + 0.3) / 2 = 0.6,
    and it prefers whatever comes first: mean P(first) = 0.8 -> bias 0.3. A judge that always answers "first"
    (p = q = 1) is left undecided: 0.5, bias 0.5."""
    v = debias(torch.tensor([0.9, 1.0]), torch.tensor([0.7, 1.0]))
    torch.testing.assert_close(v.prob_a, torch.tensor([0.6, 0.5]))
    assert v.position_bias == pytest.approx((0.8 + 1.0) / 2 - 0.5)


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def test_a_reward_judges_by_bradley_terry():
    judge = load_judge("tests.test_judges:length")
    assert isinstance(judge, RewardJudge)
    v = judge.compare(["p", "q"], ["abc", "a"], ["a", "a"])
    torch.testing.assert_close(v.prob_a, torch.sigmoid(torch.tensor([2.0, 0.0])))
    torch.testing.assert_close(judge.score(["p"], ["abcd"]), torch.tensor([4.0]))


def test_judge_specs():
    assert parse_judge_spec("lm:tiny").kind == "lm"
    assert parse_judge_spec("openai:http://127.0.0.1:1/v1#m").kind == "openai"
    assert parse_judge_spec("rm:tests.test_judges:length").kind == "reward"
    with pytest.raises(SpecError, match="lm:MODEL, openai:URL#MODEL"):
        parse_judge_spec("nonsense")
    with pytest.raises(SpecError, match="not a URL"):
        parse_judge_spec("openai:nohost")


def test_lm_judge_reads_the_options_next_token_probabilities(tiny):
    """P(first) is softmax over the options of log P(option | the rendered question), which we compute here by
    hand, one sequence at a time, and compare with the judge's batched, padded computation."""
    judge = LMJudge("tiny", PairwiseQuestion(few_shot=[("what is one plus one ?", "two .", "paris .", 0)]))
    model, tok = judge.model, judge.tokenizer
    prompts = ["what is the capital of france ?", "how do i steal a car ?"]
    first, second = (
        ["the answer is paris .", "i can not help ."],
        ["rome", "sure , here is how : first get the tools ."],
    )
    got = judge.first_wins(prompts, first, second)
    expected = []
    for row in zip(prompts, first, second):
        context = tok(judge.render(*row), add_special_tokens=False)["input_ids"]
        logps = []
        for option in ("A", "B"):
            ids = context + tok(option, add_special_tokens=False)["input_ids"]
            out = model(torch.tensor([ids])).logits.log_softmax(-1)[0]
            logps.append(sum(out[i - 1, ids[i]] for i in range(len(context), len(ids))))
        expected.append(torch.stack(logps).softmax(-1)[0])
    torch.testing.assert_close(got, torch.stack(expected).detach(), atol=1e-5, rtol=1e-5)
    assert "what is one plus one ?" in judge.render(*prompts[:1], first[0], second[0])  # the worked example
    both = judge.compare(prompts, first, second)
    torch.testing.assert_close(both.prob_a, debias(got, judge.first_wins(prompts, second, first)).prob_a)


def send_json(handler: BaseHTTPRequestHandler, payload: dict) -> None:
    out = json.dumps(payload).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(out)))
    handler.end_headers()
    handler.wfile.write(out)


class ChatHandler(BaseHTTPRequestHandler):
    """A small OpenAI-compatible chat server whose 'model' prefers the response mentioning "good", by 3 to 1,
    plus a bias toward whichever it is shown first (+0.1); it answers with the top log-probs of one token."""

    with_logprobs = True
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatHandler.seen.append(body)
        text = body["messages"][-1]["content"]
        a = text.split("Response (A):")[1].split("Response (B):")[0]
        p_a = (0.75 if "good" in a else 0.25) + 0.1
        choice = {"message": {"role": "assistant", "content": "A" if p_a > 0.5 else "B"}, "finish_reason": "length"}
        if self.with_logprobs:
            top = [{"token": "A", "logprob": math.log(p_a)}, {"token": " B", "logprob": math.log(1 - p_a)}]
            choice["logprobs"] = {"content": [{"token": "A", "logprob": math.log(p_a), "top_logprobs": top}]}
        send_json(self, {"choices": [choice]})

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = HTTPServer(("127.0.0.1", 0), ChatHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_openai_judge_asks_both_orders_and_removes_the_bias(chat_server):
    """Asked (good, bad): P(first) = 0.85; asked (bad, good): 0.35. So P(a better) = (0.85 + 0.65) / 2 = 0.75,
    the model's own preference, and the bias = (0.85 + 0.35) / 2 - 0.5 = 0.1."""
    ChatHandler.seen.clear()
    judge = load_judge(f"openai:{chat_server}#judge-model")
    assert isinstance(judge, OpenAIJudge)
    v = judge.compare(["q"], ["a good answer"], ["a bad answer"])
    torch.testing.assert_close(v.prob_a, torch.tensor([0.75]))
    assert v.position_bias == pytest.approx(0.1)
    assert [b["model"] for b in ChatHandler.seen] == ["judge-model"] * 2 and ChatHandler.seen[0]["logprobs"]


def test_openai_judge_falls_back_to_the_answer_text_and_names_a_dead_server(chat_server):
    ChatHandler.with_logprobs = False
    try:
        v = load_judge(f"openai:{chat_server}").compare(["q"], ["good"], ["bad"])
    finally:
        ChatHandler.with_logprobs = True
    torch.testing.assert_close(v.prob_a, torch.tensor([1.0]))  # "A" for (good, bad), "B" for (bad, good)
    with pytest.raises(ServerError, match="127.0.0.1:9/v1/chat/completions"):
        load_judge("openai:http://127.0.0.1:9/v1").compare(["q"], ["a"], ["b"])


def test_toy_gold_judge_recognises_every_toy_prompt():
    from rlhfkit.toy.gold import utility
    from rlhfkit.toy.judge import prompt_from_text
    from rlhfkit.toy.world import good_response, sample_prompt

    rng = random.Random(0)
    prompts = [sample_prompt(rng) for _ in range(500)]
    assert all(prompt_from_text(p.text) == p for p in prompts)
    gold = load_reward("rlhfkit.toy.judge:gold")
    responses = [good_response(p) for p in prompts]
    torch.testing.assert_close(
        gold([p.text for p in prompts], responses), torch.tensor([utility(p, r) for p, r in zip(prompts, responses)])
    )


def test_length_biased_toy_judge_is_gold_plus_a_fixed_amount_per_word():
    """The answer "paris" to the capital of france is right (gold g); "paris paris paris" is three words, so the
    biased judge adds 3 x 0.15 = 0.45 to its gold; the same judge on the one-word answer adds 0.15."""
    from rlhfkit.toy.judge import LENGTH_BIAS, gold, length_biased

    prompts = ["what is the capital of france ?"] * 2
    responses = ["paris", "paris paris paris"]
    g = gold(prompts, responses)
    assert LENGTH_BIAS == 0.15
    assert length_biased(prompts, responses) == pytest.approx([g[0] + 0.15, g[1] + 0.45])


class YesNoHandler(ChatHandler):
    """A server answering a yes/no question the way chat models do: "Yes" (or "yes." without log-probs)."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatHandler.seen.append(body)
        top = [{"token": "Yes", "logprob": math.log(0.9)}, {"token": "No", "logprob": math.log(0.1)}]
        choice = {"message": {"role": "assistant", "content": "yes." if not self.with_logprobs else "Yes"}}
        if self.with_logprobs:
            choice["logprobs"] = {"content": [{"token": "Yes", "logprob": math.log(0.9), "top_logprobs": top}]}
        send_json(self, {"choices": [choice]})


@pytest.mark.parametrize("with_logprobs", [True, False])
def test_openai_judge_reads_word_options_as_a_chat_model_replies(with_logprobs):
    """Options (" Yes", " No"), the decomposed harm question's: the server's "Yes" / "yes." is the first option.
    Compared as the options were spelt (a leading space, one upper-cased letter), every answer was undecided: 0.5."""
    server = HTTPServer(("127.0.0.1", 0), YesNoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    YesNoHandler.with_logprobs = with_logprobs
    try:
        question = PairwiseQuestion(template="Is this harmful? {prompt} {a} {b}", options=(" Yes", " No"))
        judge = OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", question, both_orders=False)
        expected = 0.9 if with_logprobs else 1.0
        torch.testing.assert_close(judge.first_wins(["q"], ["a"], ["b"]), torch.tensor([expected]))
        assert ChatHandler.seen[-1]["messages"][-1]["content"].endswith("Reply with one word: Yes or No.")
    finally:
        YesNoHandler.with_logprobs = True
        server.shutdown()
        server.server_close()
