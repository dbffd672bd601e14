"""What the imports a stage no longer makes would cost it: CPU seconds and resident memory of each, measured in
a fresh process on top of what every stage imports anyway (torch and transformers' causal LM classes).

    python bench/import_costs.py               # 3 processes per import, medians
    python bench/import_costs.py --repeats 5

Each line is one import that rlhfkit's stages used to make and now avoid (see docs/performance.md, "Whole
processes"): torch's ``SummaryWriter`` (rlhfkit writes the event files itself, ``rlhfkit/tb_events.py``) and
transformers' ``get_scheduler`` (its trainer utilities, and peft with them; rlhfkit computes the same
multipliers, ``rlhfkit.train.common.lr_factor``). ``rlhfkit.cli`` is measured on its own, from a bare
interpreter, as the cost of starting the program at all. One torch thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "import torch, transformers; from transformers import AutoModelForCausalLM, AutoTokenizer"
IMPORTS = {
    "torch.utils.tensorboard.SummaryWriter": (BASE, "from torch.utils.tensorboard import SummaryWriter"),
    "transformers.get_scheduler": (BASE, "from transformers import get_scheduler"),
    "rlhfkit.cli (from nothing)": ("", "import rlhfkit.cli"),
}
PROBE = """
import json, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
exec({base!r})
cpu, mb = time.process_time(), rss()
exec({target!r})
print(json.dumps({{"cpu_s": time.process_time() - cpu, "rss_mb": rss() - mb}}))
"""


def measure(base: str, target: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    code = PROBE.format(base=base, target=target)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"load average before: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'import':40s}{'CPU s':>8s}{'RSS MB':>8s}   (medians of {args.repeats} processes)")
    for name, (base, target) in IMPORTS.items():
        runs = [measure(base, target) for _ in range(args.repeats)]
        cpu = statistics.median(r["cpu_s"] for r in runs)
        mb = statistics.median(r["rss_mb"] for r in runs)
        print(f"{name:40s}{cpu:8.2f}{mb:8.1f}", flush=True)
    print(f"load average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
