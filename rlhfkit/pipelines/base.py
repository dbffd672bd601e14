"""What every pipeline (the toy demo, the real-model presets) needs, written once: a folder of stages in which
a rerun reuses each finished stage and refuses other settings, clocks per step, and the pipeline's own card.

    pipe = Pipeline(cfg, "demo")                          # refuses a folder made with other settings
    sft_dir = pipe.stage("sft", lambda: sft.run(...))     # reused if pipe.root / "sft" holds a finished run
    figures = pipe.kept("feedback", lambda: {...})        # a step without a run folder, reused once it finished
    with pipe.step("evaluation"):                         # timed, printed
        ...
    pipe.finish(figures, stages={"sft": sft_dir, ...})    # the pipeline's card, with its stages as parents
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rlhfkit.config.base import Figures, StageConfig
from rlhfkit.runs import RunCard, RunFolder, parent_of


class Pipeline:
    def __init__(self, cfg: StageConfig, name: str):
        self.cfg, self.name = cfg, name
        self.root = Path(getattr(cfg, "output_dir", None) or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.folder = RunFolder(self.root)
        self.folder.config, self.folder.stage = cfg, cfg.stage
        self.folder.refuse_other_settings()  # finished stages are reused on a rerun, so the settings must match
        self.folder.start()
        self.steps: dict[str, dict] = {}
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def log(self, message: str) -> None:
        print(f"[{self.name} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a step (wall and this process's CPU, all threads) and print it."""
        self.log(f"{name} ...")
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.steps[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        self.log(f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU")

    def stage(self, name: str, run: Callable[[], Path | str]) -> Path:
        """The stage run in ``root/name``: reused when it finished before, else run (``run`` must write there)."""
        folder = self.root / name
        if RunFolder(folder).is_finished():
            self.log(f"{name}: finished in an earlier run, reused")
            self.steps[name] = {"reused": True}
            return folder
        with self.step(name):
            return Path(run())

    def kept(self, name: str, compute: Callable[[], dict]) -> dict:
        """A step that is not a stage (no run folder: it writes files into the pipeline's folder and returns a few
        figures): its figures read back from ``root/data/<name>.json`` when an earlier run finished it, else
        computed and kept there. The figures are written last, after the files they sum up, so their presence
        says the step finished."""
        path = self.root / "data" / f"{name}.json"
        if path.exists():
            self.log(f"{name}: finished in an earlier run, reused")
            return json.loads(path.read_text())
        figures = compute()
        write_json(path, figures)
        return figures

    def totals(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "wall_s": round(time.perf_counter() - self.wall0, 1),
            "cpu_s": round(time.process_time() - self.cpu0, 1),
            "cpu_s_user_sys_process": round(usage.ru_utime + usage.ru_stime, 1),
        }

    def finish(self, figures: Figures | dict, stages: dict[str, Path]) -> RunCard | None:
        """The pipeline's card: finished, its figures, and every stage it ran as a parent (by id)."""
        card = self.folder.card()
        card.parents = [parent_of(name, str(path)) for name, path in stages.items()]
        card.write(self.root)
        return self.folder.finish(figures)


def write_json(path: Path, data) -> None:
    """``data`` as JSON at ``path``, through a temporary file: a reader (a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def pick_threads(requested: int) -> int:
    """``requested`` torch threads, or with 0: one when the machine is already busy (load >= cores, where
    OpenMP threads would spin-wait on each other), else all cores."""
    if requested:
        return requested
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if load >= cores else cores
