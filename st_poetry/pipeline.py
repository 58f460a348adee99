"""`just pipeline --config FILE`: prepare -> mine -> train -> evaluate -> index from one TOML file.

    just pipeline --config configs/cpu-e5-small.toml             # every stage whose output is out of date
    just pipeline --config configs/cpu-e5-small.toml --force --stages train evaluate index

The file holds a [section] per stage with that stage's own fields, exactly what the stage's own `--config` file
would hold, so `just train --help` documents [train]. A stage is skipped when the file it writes last (its
marker) is newer than every file of its inputs (the input files and folders its config names; a Hub id has no
time), so a rerun after an interruption, or after new raw data, runs what is out of date and nothing else.
Times are compared, not settings: after editing a section, run that stage with `--force --stages NAME`; the
stages after it then see a newer input and follow. A rerun of train replaces the earlier run in its `out` only once
the new model is complete (files.replaced_when_complete).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st_poetry.config import PipelineConfig, input_paths, run_cli
from st_poetry.files import recover_set_aside, replaced_when_complete


@dataclass(frozen=True)
class Stage:
    """A stage by name, imported only when it runs: `--stages prepare` (or a run that skips everything) should not
    pay for torch and sentence-transformers."""

    module: str
    function: str
    marker: str  # the file in `out` that the stage writes last (tests check it against the stage's own constant)

    def run(self, config: Any) -> Any:
        return getattr(importlib.import_module(f"st_poetry.{self.module}"), self.function)(config)


# A stage's inputs are its config's `input=True` fields (config.input_paths).
STAGES = {
    "prepare": Stage("prepare", "prepare", "stats.json"),
    "mine": Stage("mine", "mine", "mine_stats.json"),
    "train": Stage("train", "train", "modules.json"),
    "evaluate": Stage("evaluate", "evaluate", "evaluation.json"),
    "index": Stage("search", "build_index", "index.json"),
}
# A rerun of a training stage replaces the run whose checkpoints are in this folder of its `out` (train.CHECKPOINTS).
TRAIN_CHECKPOINTS = "checkpoints"


def newest_input(paths: Iterable[str]) -> float | None:
    """The newest modification time of the files at or under `paths`; None when none exists (e.g. a Hub id)."""
    times = []
    for path in map(Path, paths):
        if path.is_file():
            times.append(path.stat().st_mtime)
        elif path.is_dir():
            times.extend(file.stat().st_mtime for file in path.rglob("*") if file.is_file())
    return max(times, default=None)


def is_fresh(marker: Path, inputs: Iterable[str]) -> bool:
    """True when `marker` exists and is newer than every input file."""
    newest = newest_input(inputs)
    return marker.is_file() and newest is not None and marker.stat().st_mtime > newest


def run_pipeline(config: PipelineConfig) -> dict[str, str]:
    """Run the chosen stages in order, skipping fresh ones unless forced; returns each stage's outcome."""
    outcomes: dict[str, str] = {}
    for name, stage_config in config.stage_configs().items():
        stage = STAGES[name]
        out = Path(stage_config.out)
        replacing = name == "train" and not stage_config.resume
        if replacing:
            recover_set_aside(out, stage.marker)  # a pipeline killed while replacing a run
        marker = out / stage.marker
        if not config.force and is_fresh(marker, input_paths(stage_config)):
            print(f"== {name}: skipped, {marker} is newer than its inputs (--force runs it)")
            outcomes[name] = "skipped"
            continue
        print(f"== {name} -> {out}", flush=True)
        # A new training run needs an empty `out`; the earlier run stays (set aside) until the new one is complete.
        replace = replacing and (out / TRAIN_CHECKPOINTS).is_dir()
        if replace:
            print(
                f"note: replacing the earlier training run in {out} once the new one is complete "
                "(set resume = true in [train] to continue it instead)"
            )
        start = time.perf_counter()
        with replaced_when_complete(out, stage.marker) if replace else nullcontext():
            stage.run(stage_config)
        outcomes[name] = f"ran in {time.perf_counter() - start:.0f} s"
    print("\npipeline: " + "; ".join(f"{name} {outcome}" for name, outcome in outcomes.items()))
    return outcomes


def main(argv: list[str] | None = None) -> None:
    run_cli(PipelineConfig, run_pipeline, argv, prog="python -m st_poetry.pipeline")


if __name__ == "__main__":
    main()
