"""Make labelling tasks by sampling K responses per prompt from a Hugging Face causal LM folder.

rlhfkit annotate generate --model runs/sft/final --prompts prompts.jsonl --k 2 --out tasks.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path


def read_prompts(path: Path) -> list[str]:
    """A .txt file (one prompt a line) or JSONL with a 'prompt' field on each line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prompts file")
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"{path}:{lineno}: field 'prompt': must be a non-empty string")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise ValueError(f"{path}: no prompts in the file")
    return prompts


def sample_tasks(
    model_path: str | Path,
    prompts: list[str],
    k: int = 2,
    kind: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    attempts: int = 4,
) -> list[dict]:
    """Return task rows (the JSONL ``annotate load`` reads) with K sampled responses per prompt.

    A sample that decodes to nothing (EOS at once) is drawn again, up to ``attempts`` times, because
    an empty response cannot be judged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if k < 2:
        raise ValueError(f"--k {k}: need at least 2 responses per prompt to compare")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for n, prompt in enumerate(prompts):
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        responses: list[str] = []
        for _ in range(attempts):
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=k - len(responses),
                    pad_token_id=pad,
                )
            new = out[:, ids.shape[1] :]  # (samples, new tokens): drop the prompt
            responses += [t for t in tokenizer.batch_decode(new, skip_special_tokens=True) if t.strip()]
            if len(responses) >= k:
                break
        if len(responses) < k:
            raise RuntimeError(
                f"prompt {n + 1}: the model gave an empty response {attempts} times running; "
                f"raise --max-new-tokens or check its EOS token"
            )
        rows.append(
            {
                "id": f"gen-{n}",
                "prompt": prompt,
                "responses": [r.strip() for r in responses[:k]],
                "kind": kind or ("pairwise" if k == 2 else "ranking"),
                "meta": {"model": str(model_path), "temperature": temperature, "top_p": top_p},
            }
        )
    return rows
