"""Make labelling tasks by sampling K responses per prompt from a Hugging Face causal LM folder.

rlhfkit annotate generate --model runs/sft/final --prompts prompts.jsonl --k 2 --out tasks.jsonl
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rlhfkit.data.io import BLANK, decode_line, parse_json_line


def read_prompts(path: Path) -> list[str]:
    """A .txt file (one prompt a line) or JSONL with a 'prompt' field on each line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prompts file")
    prompts = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if path.suffix == ".jsonl":
            row = parse_json_line(path, lineno, raw)
            if row is BLANK:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"{path}:{lineno}: field 'prompt': must be a non-empty string")
            prompts.append(row["prompt"])
        elif (line := decode_line(path, lineno, raw)).strip():
            prompts.append(line)
    if not prompts:
        raise ValueError(f"{path}: no prompts in the file")
    return prompts


def sample_tasks(
    model_spec: str | Path,
    prompts: list[str],
    k: int = 2,
    kind: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    attempts: int = 4,
    backend: str = "transformers",
    progress: bool = False,
) -> list[dict]:
    """Return task rows (the JSONL ``annotate load`` reads) with K sampled responses per prompt, from any model
    setting (a run folder, a Hugging Face folder, a built-in name...), through the stages' sampler.

    A sample that decodes to nothing (EOS at once) is drawn again, up to ``attempts`` times, because
    an empty response cannot be judged. ``backend``: the stages' rollout backend (``vllm`` on a GPU); ``progress``:
    show a progress bar."""
    import torch

    from rlhfkit.config import SamplingPart
    from rlhfkit.data.records import user_turn
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.runs import Progress
    from rlhfkit.samplers import make_sampler

    if k < 2:
        raise ValueError(f"--k {k}: need at least 2 responses per prompt to compare")
    model, tokenizer = load_causal_lm(str(model_spec), "float32")
    settings = SamplingPart(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, rollout_backend=backend
    )
    sampler = make_sampler(model.eval(), tokenizer, settings, model_spec=str(model_spec))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    bar = Progress(len(prompts), "annotate generate", progress)
    for n, prompt in enumerate(prompts):
        responses: list[str] = []
        for _ in range(attempts):
            rollout = sampler.generate([user_turn(prompt)], n=k - len(responses), generator=generator)
            responses += [t.strip() for t in rollout.texts if t.strip()]
            if len(responses) >= k:
                break
        if len(responses) < k:
            raise RuntimeError(
                f"prompt {n + 1}: the model gave an empty response {attempts} times running; "
                f"raise --max-new-tokens or check its EOS token"
            )
        rows.append(
            {
                # of what made it, not its place in this batch: "gen-0" of a second batch was the first's, and
                # loading it into the same project skipped it as already present
                "id": "gen-"
                + hashlib.sha256(
                    json.dumps([str(model_spec), prompt, seed, n, k, temperature, top_p]).encode()
                ).hexdigest()[:16],
                "prompt": prompt,
                "responses": responses[:k],
                "kind": kind or ("pairwise" if k == 2 else "ranking"),
                "meta": {"model": str(model_spec), "temperature": temperature, "top_p": top_p},
            }
        )
        bar.update()
    bar.close()
    return rows
