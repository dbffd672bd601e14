"""An export as a Hugging Face Hub dataset: a folder that ``datasets.load_dataset(folder)`` reads, and
optionally its upload to the Hub.

    folder/
      README.md                          the dataset card: YAML (configs -> data files, tags) + a description
      data/train-00000-of-00001.parquet  the records (``meta`` as a JSON string, see export.columnar)

This is the layout the Hub itself uses for Parquet datasets, so the same folder can be uploaded as it is
(``push_to_hub``, which needs network access and a token: ``huggingface-cli login`` or ``HF_TOKEN``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from rlhfkit.feedback.export import columnar

DATA_FILE = "data/train-00000-of-00001.parquet"
TAGS = {"comparison": ["preference", "dpo", "reward-modeling"], "ranking": ["ranking"], "rating": ["rating", "kto"]}


def _size_category(n: int) -> str:
    """The Hub's size_categories value: n<1K, 1K<n<10K, ... 100B<n<1T, n>1T."""
    names = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    for i, name in enumerate(names):
        if n < 10 ** (3 + i):
            return f"n<{name}" if i == 0 else f"{names[i - 1]}<n<{name}"
    return "n>1T"


def dataset_card(kind: str, records: list[dict], project: str, aggregate: str) -> str:
    # a majority row's annotator is "majority"; the people are in its annotators
    annotators = sorted({a for r in records for a in (r.get("annotators") or [r.get("annotator")]) if a})
    fields = ", ".join(f"`{name}`" for name in records[0])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tags = "\n".join(f"- {t}" for t in ["rlhf", "human-feedback", *TAGS[kind]])
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
tags:
{tags}
size_categories:
- {_size_category(len(records))}
---

# {project}: {kind} labels

Human feedback collected with rlhfkit's annotation app (`rlhfkit annotate`), exported {when}.

- kind: **{kind}** ({len(records)} rows), aggregation: **{aggregate}**
- annotators: {len(annotators)}
- fields: {fields}

Field names follow TRL's dataset formats, so `rlhfkit.data.read_records` and TRL's trainers read the
rows as they are. `task_id` / `task_external_id` name the item the label is about, `meta` is the
item's metadata as a JSON string, and `chosen_model` / `rejected_model` (`models`, `model`) say which
model wrote each response. A row with `tie: true` states no preference between `chosen` and `rejected`.
Labels a reviewer rejected are not included.
"""


def write_hub_folder(records: list[dict], out: Path, kind: str, project: str, aggregate: str = "none") -> Path:
    """Write ``records`` as a Hub-style dataset folder; returns the folder."""
    import datasets

    if not records:
        raise ValueError(f"{out}: nothing to export (no labels of that kind yet)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: the folder exists and is not empty; give a new folder")
    (out / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(columnar(records)).to_parquet(str(out / DATA_FILE))
    (out / "README.md").write_text(dataset_card(kind, records, project, aggregate), encoding="utf-8")
    return out


def push_to_hub(folder: Path, repo_id: str, private: bool = True) -> str:
    """Upload a folder made by ``write_hub_folder`` to a dataset repository; returns its URL.
    Needs network access and a Hub token (not exercised by the offline test suite)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo_id}"
