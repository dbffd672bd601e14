"""How well do AI feedback models label the harmless preset's reference pairs? The agreement table of
docs/ai-feedback.md: for each feedback model, the share of pairs on which its RLAIF label (``rlhfkit label``)
agrees with the reference orientation (refuse a harmful request, answer a benign one), with and without
ensembling over principles and swapping the order of the responses.

    python bench/ai_labels.py --output-dir /tmp/ai-labels                                   # the table
    python bench/ai_labels.py --judges lm:gemma3-270m:text --max-pairs 60 --principles less-harmful refuse-only-harm
    python bench/ai_labels.py --serve smollm2-135m-instruct ...   # also through the HTTP path, a local server

Reference pairs (``ref_pairs.jsonl``): the harmless preset's held-out requests (acts and phrasings never used in
training), the base model's own greedy answer as the compliant side and one of the preset's hand-written
refusals as the refusing side (``rlhfkit.toy.harmless.preference_pairs``): chosen = the refusal for a harmful
request, the answer for a benign one. The hand-written refusals appear only here, in evaluation.

``--serve MODEL`` starts a small OpenAI-compatible chat server in this process (the option probabilities from
``top_logprobs`` of the first token) and labels through ``openai:http://127.0.0.1:PORT/v1#MODEL``: the path a
user with a larger model behind vLLM, llama.cpp's server or Ollama takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from rlhfkit.ai_feedback import label  # noqa: E402
from rlhfkit.config.ai_feedback import LabelConfig  # noqa: E402
from rlhfkit.data.io import read_jsonl, write_jsonl  # noqa: E402
from rlhfkit.runs import RunCard  # noqa: E402
from rlhfkit.toy import harmless  # noqa: E402


def base_answers(model: str, path: Path, max_new_tokens: int) -> dict[str, str]:
    """The model's greedy answers to every held-out request (cached in ``path``)."""
    if not path.exists():
        from rlhfkit.pipelines.smollm2_harmless import generate

        harmful, benign = harmless.eval_prompts()
        write_jsonl(path, generate(model, harmful + benign, max_new_tokens, 32))
    from rlhfkit.pipelines.smollm2_harmless import tidy

    return {r["prompt"]: tidy(r["response"], r["ended"]) for r in read_jsonl(path)}


def serve(model_spec: str) -> tuple[ThreadingHTTPServer, str]:
    """A minimal OpenAI-compatible /v1/chat/completions for a local model: one token, with top_logprobs."""
    from rlhfkit.models.load import load_causal_lm

    model, tokenizer = load_causal_lm(model_spec, "float32")
    model.eval()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with lock, torch.no_grad():
                logps = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
            top = torch.topk(logps, int(body.get("top_logprobs") or 1))
            alts = [{"token": tokenizer.decode([int(i)]), "logprob": float(v)} for v, i in zip(top.values, top.indices)]
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": alts[0]["token"]},
                "finish_reason": "length",
            }
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{**alts[0], "top_logprobs": alts}]}
            out = json.dumps({"object": "chat.completion", "model": body.get("model"), "choices": [choice]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"openai:http://127.0.0.1:{server.server_port}/v1#{model_spec}"


def harm_auc(judge: str, requests: list[str], harmful: list[bool]) -> None:
    from rlhfkit.ai_feedback.constitution import decomposed_questions, load_constitution
    from rlhfkit.ai_feedback.label import Labeller

    spec, fmt = judge.rsplit(":", 1)
    labeller = Labeller(spec, [], fmt, decomposed=decomposed_questions(load_constitution(None)))
    p = labeller.harm_probs(requests).tolist()
    pos, neg = [x for x, h in zip(p, harmful) if h], [x for x, h in zip(p, harmful) if not h]
    auc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    print(f"{spec}: AUC of P(harmful) over {len(pos)} harmful and {len(neg)} benign requests: {auc:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default="runs/ai-labels")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="whose answers make the compliant side")
    ap.add_argument(
        "--judges",
        nargs="+",
        default=["lm:gemma3-270m:text", "lm:smollm2-135m-instruct:chat"],
        help="feedback models as JUDGE:FORMAT (FORMAT chat or text); JUDGE:FORMAT:decompose asks the two decomposed "
        "questions instead of the comparisons",
    )
    ap.add_argument("--serve", default=None, help="also label through the HTTP path with this model served locally")
    ap.add_argument("--principles", nargs="*", default=None, help="comparison principles; default all")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument(
        "--serve-max-pairs", type=int, default=12, help="pairs asked through the local server (no prefix cache there)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--harm-auc",
        default=None,
        metavar="JUDGE:FORMAT",
        help="only this: the AUC with which the decomposed harm question's P(harmful) separates the pairs' harmful "
        "requests from the benign ones",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    answers = base_answers(args.model, out / "base_answers.jsonl", 40)
    harmful, benign = harmless.eval_prompts()
    pairs = harmless.preference_pairs(harmful, benign, answers, seed=0)
    write_jsonl(out / "ref_pairs.jsonl", pairs)
    n = min(len(pairs), args.max_pairs or len(pairs))
    print(f"{n} reference pairs ({sum(p['kind'] == 'harmful' for p in pairs[:n])} harmful); load {os.getloadavg()}")

    if args.harm_auc:
        harm_auc(
            args.harm_auc, [p["prompt"][-1]["content"] for p in pairs[:n]], [p["kind"] == "harmful" for p in pairs[:n]]
        )
        return
    judges = []
    for j in args.judges:
        decompose = j.endswith(":decompose")
        spec, fmt = j.removesuffix(":decompose").rsplit(":", 1)
        judges.append((spec, fmt, decompose))
    server = None
    if args.serve:
        server, url = serve(args.serve)
        judges.append((url, "chat", False))
    rows = []
    for spec, fmt, decompose in judges:
        m = min(n, args.serve_max_pairs) if spec.startswith("openai:") else n
        name = spec.split("#")[-1] if spec.startswith("openai:") else spec
        folder = out / (
            "label-"
            + name.replace(":", "-").replace("/", "-")
            + ("-http" if spec.startswith("openai:") else "")
            + ("-decomposed" if decompose else "")
        )
        cpu, wall = time.process_time(), time.perf_counter()
        if not (folder / "card.json").exists() or not RunCard.read(folder).finished:
            label.run(LabelConfig(data=str(out / "ref_pairs.jsonl"), judge=spec, judge_format=fmt, principles=args.principles,
                                  max_pairs=m, output_dir=str(folder), progress=False, threads=args.threads, decompose=decompose))  # fmt: skip
        card = RunCard.read(folder)
        rows.append({"judge": spec if not spec.startswith("openai:") else "openai: " + name + " (local server)", "format": fmt + (", decomposed" if decompose else ""), "pairs": m,
                     "cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1),
                     "position_bias": card.figures.get("position_bias"), **card.figures["agreement"]})  # fmt: skip
    if server is not None:
        server.shutdown()
    (out / "table.json").write_text(json.dumps(rows, indent=2))
    head = "| feedback model | format | pairs | ensembled, both orders | ensembled, one order | one principle, both orders | one principle, one order | position bias | CPU s |"
    print(head + "\n|" + "---|" * 9)
    for r in rows:
        print(
            f"| {r['judge']} | {r['format']} | {r['pairs']} | {r['ensembled_both_orders']:.0%} | {r['ensembled_one_order']:.0%} | "
            f"{r['one_principle_both_orders']:.0%} | {r['one_principle_one_order']:.0%} | "
            f"{r['position_bias'] if r['position_bias'] is None else round(r['position_bias'], 3)} | {r['cpu_s']} |"
        )
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
