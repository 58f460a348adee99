"""`just pipeline`: download -> prepare -> mine -> train -> export -> evaluate -> index -> search from one TOML file.

    just pipeline                                                  # the CPU preset, configs/cpu-e5-small.toml
    just pipeline --config configs/gpu-bge-base.toml --force --stages train export evaluate index

The file holds a [section] per stage with that stage's own fields, exactly what the stage's own `--config` file
would hold, so `just train --help` documents [train]. A stage is skipped when the file it writes last (its
marker) is newer than every file of its inputs (the input files and folders its config names; a Hub id has no
time); a stage with no inputs (download) is skipped once its marker exists, and one with no marker (search, the
demo) always runs. So a rerun after an interruption, or after new raw data, runs what is out of date and nothing
else. Times are compared, not settings: after editing a section, run that stage with `--force --stages NAME`; the
stages after it then see a newer input and follow. A rerun of train replaces the earlier run in its `out` only once
the new model is complete (files.replaced_when_complete).

Each stage runs as its own `st-poetry STAGE --config SECTION.json` process, started through measure.py: the kernel
reports its wall time and peak memory (what the summary table shows), and what one stage held is returned to the OS
before the next starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from st_poetry.cli.options import stage_configs
from st_poetry.core.config import FitConfig, PipelineConfig, input_paths
from st_poetry.core.errors import INTERRUPTED_EXIT
from st_poetry.core.files import recover_set_aside, replaced_when_complete, write_json
from st_poetry.core.log import get_logger, verbosity_flags
from st_poetry.core.tables import format_table

logger = get_logger(__name__)
MEASURE = Path(__file__).with_name("measure.py")  # the launcher that measures a stage (its docstring says why)


def newest_input(paths: Iterable[str], ignore: Path | None = None) -> float | None:
    """The newest modification time of the files at or under `paths` but `ignore`; None when none exists (e.g. a
    Hub id)."""
    times = []
    for path in map(Path, paths):
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        times.extend(file.stat().st_mtime for file in files if file.is_file() and file != ignore)
    return max(times, default=None)


def is_fresh(marker: Path, inputs: Iterable[str]) -> bool:
    """True when `marker` exists and is newer than every input file (the marker is not its own input: an export
    writes into the model folder it reads); a stage with no inputs is fresh once its marker exists."""
    inputs = list(inputs)
    if not marker.is_file():
        return False
    newest = newest_input(inputs, ignore=marker)
    return marker.stat().st_mtime > newest if newest is not None else not inputs


def run_stage(name: str, section: dict[str, Any]) -> dict[str, Any]:
    """Run `st-poetry NAME` on its section in a process of its own; its exit code, wall seconds and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="st-poetry-pipeline-") as folder:
        config, result = Path(folder) / f"{name}.json", Path(folder) / "result.json"
        config.write_text(json.dumps(section, ensure_ascii=False), encoding="utf-8")
        stage = [sys.executable, "-m", "st_poetry", name, "--config", str(config), *verbosity_flags()]
        process = subprocess.Popen([sys.executable, "-I", str(MEASURE), str(result), *stage])
        try:
            process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the stage too: it ends in its own words, then the pipeline
            process.wait()
            raise
        if process.returncode:
            raise RuntimeError(f"the stage launcher {MEASURE} failed (exit code {process.returncode})")
        return json.loads(result.read_text(encoding="utf-8"))


def run_pipeline(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Run the chosen stages in order, skipping fresh ones unless forced; returns each stage's outcome and cost."""
    outcomes: dict[str, dict[str, Any]] = {}
    for name, stage_config in stage_configs(config).items():
        marker_name = getattr(type(stage_config), "MARKER", None)
        out = Path(stage_config.out) if marker_name else None
        replacing = name == "train" and not stage_config.resume
        if replacing:
            recover_set_aside(out, marker_name)  # a pipeline killed while replacing a run
        if marker_name and not config.force and is_fresh(out / marker_name, input_paths(stage_config)):
            logger.info(f"== {name}: skipped, {out / marker_name} is newer than its inputs (--force runs it)")
            outcomes[name] = {"outcome": "skipped"}
            continue
        logger.info(f"== {name}" + f" -> {out}" * bool(out))
        # A new training run needs an empty `out`; the earlier run stays (set aside) until the new one is complete.
        replace = replacing and (out / FitConfig.CHECKPOINTS).is_dir()
        if replace:
            logger.info(
                f"note: replacing the earlier training run in {out} once the new one is complete "
                "(set resume = true in [train] to continue it instead)"
            )
        with replaced_when_complete(out, marker_name) if replace else nullcontext():
            outcomes[name] = {"outcome": "ran", **run_stage(name, getattr(config, name) or {})}
            if outcomes[name]["exit_code"]:
                outcomes[name]["outcome"] = "failed"
                _report(outcomes, config)
                if outcomes[name]["exit_code"] == INTERRUPTED_EXIT:
                    raise KeyboardInterrupt
                raise SystemExit(outcomes[name]["exit_code"])  # the stage has said why, in its own last line
    _report(outcomes, config)
    return outcomes


def _report(outcomes: dict[str, dict[str, Any]], config: PipelineConfig) -> None:
    ran = [row for row in outcomes.values() if "seconds" in row]
    total = {
        "seconds": sum(row["seconds"] for row in ran),
        "peak_rss_mib": max((row["peak_rss_mib"] for row in ran), default=0),
    }
    rows = [
        [name, row["outcome"], f"{row['seconds']:,.0f} s", f"{row['peak_rss_mib']:,} MiB"]
        if "seconds" in row
        else [name, row["outcome"], "", ""]
        for name, row in [*outcomes.items(), *([("all", {"outcome": "", **total})] if ran else [])]
    ]
    table = format_table(["stage", "outcome", "wall time", "peak memory (RSS)"], rows, align="llrr", indent="  ")
    logger.info(f"\npipeline:\n{table}")
    if config.summary:
        write_json(config.summary, {"stages": outcomes, "total": total})
