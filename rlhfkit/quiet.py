"""Third-party noise off unless asked for: one switch for the `rlhfkit` program and the `python -m` experiments."""

import logging
import os
import sys
import warnings


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_third_parties(verbose: bool = False) -> None:
    """Third-party progress bars ("Loading weights", "Writing model shards"), deprecation warnings and info
    logs stay off unless asked for; rlhfkit's own progress and warnings stay on. Environment variables are set
    before the libraries are imported where possible (the program calls this first, so nothing of them loads
    here); a library imported already is switched off directly. A user's own environment setting wins."""
    if verbose:
        return
    for name, value in {
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # bars drawn with plain tqdm, which the libraries' own switches do not reach (transformers' "Converting
        # and de-quantizing GGUF tensors" on a model's first use); tqdm reads it when imported. rlhfkit's own
        # progress is rich's, so it stays
        "TQDM_DISABLE": "1",
    }.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"rlhfkit(\.|$)")
    # DeepSpeed, where installed, is imported by accelerate and warns "Setting accelerator to CPU" on every CPU run;
    # its logger resets its level on import but keeps a filter set beforehand.
    deepspeed = logging.getLogger("DeepSpeed")
    if _errors_only not in deepspeed.filters:
        deepspeed.addFilter(_errors_only)
    if "transformers" in sys.modules and os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
