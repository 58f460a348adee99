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

import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

from st_poetry.cli import run_command
from st_poetry.cli.options import stage_configs
from st_poetry.core.config import FitConfig, PipelineConfig, input_paths
from st_poetry.core.files import recover_set_aside, replaced_when_complete
from st_poetry.core.log import get_logger
from st_poetry.core.tables import format_table

logger = get_logger(__name__)


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
    for name, stage_config in stage_configs(config).items():
        out, marker_name = Path(stage_config.out), type(stage_config).MARKER
        replacing = name == "train" and not stage_config.resume
        if replacing:
            recover_set_aside(out, marker_name)  # a pipeline killed while replacing a run
        marker = out / marker_name
        inputs = input_paths(stage_config)
        logger.debug(f"{name}: inputs {', '.join(inputs) or 'none'}; marker {marker}")
        if not config.force and is_fresh(marker, inputs):
            logger.info(f"== {name}: skipped, {marker} is newer than its inputs (--force runs it)")
            outcomes[name] = "skipped"
            continue
        logger.info(f"== {name} -> {out}")
        # A new training run needs an empty `out`; the earlier run stays (set aside) until the new one is complete.
        replace = replacing and (out / FitConfig.CHECKPOINTS).is_dir()
        if replace:
            logger.info(
                f"note: replacing the earlier training run in {out} once the new one is complete "
                "(set resume = true in [train] to continue it instead)"
            )
        start = time.perf_counter()
        with replaced_when_complete(out, marker_name) if replace else nullcontext():
            run_command(name, stage_config)
        outcomes[name] = f"ran in {time.perf_counter() - start:.0f} s"
    logger.info("\npipeline:\n" + format_table(["stage", "outcome"], list(outcomes.items()), indent="  "))
    return outcomes
