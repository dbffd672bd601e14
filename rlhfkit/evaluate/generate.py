"""`rlhfkit generate`: the responses of one or more models to a prompt file, as JSONL, resumable.

    rlhfkit generate --models '[runs/dpo-1, runs/ppo-1, sft=runs/sft-1]' --data prompts.jsonl --seed 0
    rlhfkit generate --models '[model.gguf]' --data toy --n 4 --temperature 0.7 --max-new-tokens 64

Python: ``rlhfkit.evaluate.generate.run(GenerateConfig(...))`` returns the run folder.

Each model (a run folder, a Hugging Face folder or id, a ``.gguf`` file, a built-in name; ``NAME=SPEC`` names it)
answers every prompt ``n`` times through the sampler the stages share (``rlhfkit.rollout``: the built-in KV-cache
sampler, or vLLM where it is installed and a GPU is there). Every model is sampled with the same seed, so their
samples are paired by random stream as well as by prompt. ``generations.jsonl`` gets one row per response:

    {"model": name, "model_spec": spec, "model_id": run id or null, "prompt_index": i, "sample": j,
     "prompt": ..., "response": "...", "ended": true, "response_tokens": 12, "token_ids": [...],
     "seed": 0, "sampling": {"max_new_tokens": 48, "temperature": 1.0, ...}}

``token_ids`` are the sampled tokens (through the stop), so the KL of these very samples can be computed later
(``rlhfkit eval --reference``) without tokenising the text again. Rows are appended batch by batch, and the random
generator's state is saved with them: an interrupted run resumes where it stopped and ends with exactly the rows an
uninterrupted one writes. ``rlhfkit eval`` takes the file (or the run folder) in place of the models.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import StrictBool, StrictInt, StrictStr

from rlhfkit.config import SamplingPart
from rlhfkit.config.evaluation import GenerateConfig
from rlhfkit.data.io import DataError, read_records
from rlhfkit.data.records import Record, Text, to_json

_NAME = re.compile(r"([A-Za-z0-9_.+-]+)=(.+)")


def parse_named(entry: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); a bare spec is named by ``default_name``."""
    m = _NAME.fullmatch(entry.strip())
    if m and not Path(entry).exists():
        return m.group(1), m.group(2).strip()
    return default_name(entry), entry.strip()


def default_name(spec: str) -> str:
    """A short name for a model: a folder's or file's own name, else the spec itself."""
    path = Path(spec.strip()).expanduser()
    if path.exists():
        name = path.name if path.name != "final" else path.parent.name
        return path.stem if path.is_file() else name
    return spec.strip()


def resolve_backend(name: str) -> str:
    """``auto``: vLLM when it is installed and a GPU is present, else the built-in sampler."""
    if name != "auto":
        return name
    import importlib.util

    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"


class GenerationRow(Record):
    """One row of a generations file (``rlhfkit generate``'s, or any file with these fields)."""

    model: StrictStr
    prompt: Text
    response: StrictStr
    prompt_index: StrictInt | None = None
    sample: StrictInt = 0
    model_spec: StrictStr | None = None
    model_id: StrictStr | None = None
    ended: StrictBool | None = None
    token_ids: list[StrictInt] | None = None
    kl: float | None = None  # KL(model || reference) of this response, where the generator knows it (best-of-N)
    seed: StrictInt | None = None
    sampling: dict | None = None


@dataclass
class ModelGenerations:
    """One model's rows of a generations file, in prompt order."""

    name: str
    rows: list[GenerationRow] = field(default_factory=list)

    @property
    def spec(self) -> str | None:
        return self.rows[0].model_spec if self.rows else None

    @property
    def temperature(self) -> float:
        return float((self.rows[0].sampling or {}).get("temperature", 1.0)) if self.rows else 1.0


def read_generations(path: str | Path) -> dict[str, ModelGenerations]:
    """The models of a generations JSONL file (or of a ``rlhfkit generate`` run folder), by name; a bad row names
    its file and line. Rows without ``prompt_index`` are numbered by their order within their model."""
    path = Path(path)
    if path.is_dir():
        path = path / "generations.jsonl"
    if not path.exists():
        raise DataError(f"{path}: no such generations file")
    out: dict[str, ModelGenerations] = {}
    for row in read_records(path, GenerationRow)[0]:
        group = out.setdefault(row.model, ModelGenerations(row.model))
        if row.prompt_index is None:
            row = row.model_copy(update={"prompt_index": len(group.rows)})
        group.rows.append(row)
    for group in out.values():
        group.rows.sort(key=lambda r: (r.prompt_index, r.sample))
    return out


def is_generations(entry: str) -> bool:
    """A generations file or a ``rlhfkit generate`` run folder (as opposed to a model setting)."""
    path = Path(entry).expanduser()
    if path.is_file():
        return path.suffix in (".jsonl", ".json")
    return path.is_dir() and (path / "generations.jsonl").exists()


# --- sampling ---------------------------------------------------------------------------------------------------


def sampling_settings(cfg) -> SamplingPart:
    """The shared sampling settings of a generate or eval config, with its backend resolved."""
    values = {name: getattr(cfg, name) for name in SamplingPart.model_fields}
    values["rollout_backend"] = resolve_backend(cfg.rollout_backend)
    return SamplingPart(**values)


class GenerationState:
    """Where an interrupted generation stands: rows written, the model and batch it reached, the generator's state.
    Saved after every batch, after its rows, so the rows on disk are never fewer than the state says."""

    def __init__(self, folder: Path):
        self.path = folder / "generate_state.json"
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
            self.rows, self.model, self.batch = (int(saved.get(k, 0)) for k in ("rows", "model", "batch"))
            self.generator = base64.b64decode(saved["generator"], validate=True) if saved.get("generator") else None
        except (ValueError, TypeError, AttributeError) as e:  # malformed JSON, fields of the wrong type
            raise ValueError(
                f"{self.path}: not a generation state rlhfkit can resume from ({e}); delete it and the rows file "
                "to start again, or give another --output-dir"
            ) from None

    def save(self, rows: int, model: int, batch: int, generator) -> None:
        from rlhfkit.rollout import generator_state_text

        state = {"rows": rows, "model": model, "batch": batch}
        state["generator"] = generator_state_text(generator) if generator else None
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)


def truncate_rows(path: Path, keep: int) -> None:
    """Drop rows past the first ``keep`` (written by a batch whose state was not saved before an interruption)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) > keep:
        path.write_text("".join(lines[:keep]), encoding="utf-8")


def sample_rows(
    model,
    tokenizer,
    prompts: list,
    sampling: SamplingPart,
    *,
    name: str,
    spec: str | None,
    n: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
    start_batch: int = 0,
    generator_state: bytes | None = None,
    on_batch=None,
):
    """Sample ``n`` responses per prompt from ``model`` batch by batch, with one generator seeded ``seed`` for the
    whole model (so the first batches are the same whatever the prompt count). ``on_batch(batch, rows, generator)``
    is called after each batch; returns every row."""
    import torch

    from rlhfkit.runs import RunCard
    from rlhfkit.samplers import make_sampler

    sampler = make_sampler(model, tokenizer, sampling, max_prompt_tokens=max_prompt_tokens)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    if generator_state is not None:
        generator.set_state(torch.tensor(list(generator_state), dtype=torch.uint8))
    card = RunCard.read(spec) if spec and Path(spec).is_dir() else None
    settings = sampling.model_dump(mode="json")
    rows = []
    starts = list(range(0, len(prompts), batch_size))
    for b in range(start_batch, len(starts)):
        s = starts[b]
        rollout = sampler.generate(prompts[s : s + batch_size], n=n, generator=generator)
        batch_rows = []
        for k, text in enumerate(rollout.texts):
            i, j = s + k // n, k % n
            ids = rollout.response_ids[k][rollout.response_mask[k].bool()].tolist()
            batch_rows.append(
                {
                    "model": name,
                    "model_spec": spec,
                    "model_id": card.id if card else None,
                    "prompt_index": i,
                    "sample": j,
                    "prompt": to_json(prompts[i]),
                    "response": text,
                    "ended": bool(rollout.ended[k]),
                    "response_tokens": len(ids),
                    "token_ids": ids,
                    "seed": seed,
                    "sampling": settings,
                }
            )
        rows += batch_rows
        if on_batch is not None:
            on_batch(b + 1, batch_rows, generator)
    return rows


def generate_to_file(cfg, models: list[tuple[str, str]], prompts: list, folder: Path, progress=None) -> Path:
    """Sample every model into ``folder/generations.jsonl``, resuming from ``folder/generate_state.json``."""
    import torch

    from rlhfkit.models.load import load_causal_lm

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "generations.jsonl"
    state = GenerationState(folder)
    truncate_rows(out, state.rows)
    sampling = sampling_settings(cfg)
    written = state.rows
    batches = -(-len(prompts) // cfg.batch_size)
    for m, (name, spec) in enumerate(models):
        if m < state.model or (m == state.model and state.batch >= batches):
            continue
        start_batch = state.batch if m == state.model else 0
        generator_state = state.generator if m == state.model and start_batch else None
        model, tokenizer = load_causal_lm(spec, cfg.dtype, getattr(cfg, "chat_template", None), seed=cfg.seed)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        if progress is not None:
            progress.update(0, info=name)

        def on_batch(b, rows, generator, m=m):
            nonlocal written
            with out.open("a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += len(rows)
            state.save(written, m if b < batches else m + 1, b if b < batches else 0, generator)
            if progress is not None:
                progress.update(1)

        sample_rows(
            model,
            tokenizer,
            prompts,
            sampling,
            name=name,
            spec=spec,
            n=cfg.n,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            max_prompt_tokens=max(cfg.max_length - cfg.max_new_tokens, 1),
            start_batch=start_batch,
            generator_state=generator_state,
            on_batch=on_batch,
        )
        del model
    return out


def generation_progress(cfg, n_models: int, n_prompts: int, folder: Path, title: str):
    """The progress bar of ``generate_to_file`` (one step per batch), starting at what ``folder``'s state has done."""
    from rlhfkit.runs import Progress

    batches = -(-n_prompts // cfg.batch_size)
    state = GenerationState(folder)
    done = min(state.model * batches + state.batch, n_models * batches)
    return Progress(n_models * batches, title, cfg.progress, completed=done)


def run(cfg: GenerateConfig) -> Path:
    import torch

    from rlhfkit.data.prompts import read_prompts
    from rlhfkit.runs import RunFolder, parent_of
    from rlhfkit.specs import parse_model_spec

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = RunFolder.open(cfg.stage, cfg)
    models = [parse_named(entry) for entry in cfg.models]
    names = [name for name, _ in models]
    if len(set(names)) < len(names):
        raise ValueError(f"setting 'models': two models have the same name ({names}); name them as NAME=SPEC")
    for _, spec in models:
        parse_model_spec(spec, "models")  # a mistyped model fails before anything is sampled
    prompts = read_prompts(cfg.data, cfg.skip_invalid)[: cfg.max_prompts]
    torch.manual_seed(cfg.seed)
    run_dir.start([parent_of(f"model:{name}", spec) for name, spec in models], {"prompts": cfg.data})
    if not cfg.resume:
        (run_dir.path / "generate_state.json").unlink(missing_ok=True)
        (run_dir.path / "generations.jsonl").unlink(missing_ok=True)
    progress = generation_progress(cfg, len(models), len(prompts), run_dir.path, "generate")
    out = generate_to_file(cfg, models, prompts, run_dir.path, progress)
    progress.close()
    summary = []
    for name, group in read_generations(out).items():
        rows = group.rows
        summary.append(
            {
                "name": name,
                "spec": group.spec,
                "rows": len(rows),
                "mean_length": sum(len(r.response) for r in rows) / len(rows),
                "eos_rate": sum(bool(r.ended) for r in rows) / len(rows),
            }
        )
    run_dir.finish(
        {"models": summary, "prompts": len(prompts), "rows": sum(s["rows"] for s in summary), "file": str(out)}
    )
    return run_dir.path
