"""What the benchmark scripts share: running a stage as a child process and reading its cost from the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMER = str(ROOT / "scripts" / "step_timer.py")


def run_measured(
    command: list[str], log: Path, env: dict[str, str] | None = None, check: bool = True
) -> dict[str, float]:
    """Run `command` from the repository root, its output to `log`; wall and CPU seconds, peak RSS in MiB.

    CPU time is reported beside wall time because this machine is shared: wall time grows when others run.
    With `check=False` a failed command is a result too (its exit code; -9 is the kernel's out-of-memory kill).
    """
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    exit_code = os.waitstatus_to_exitcode(status)
    if check and exit_code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"{' '.join(command[:4])} ... failed; see {log}\n{tail}")
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # ru_maxrss is in KiB on Linux
        "exit_code": exit_code,
    }


def run_timed(
    python: str, module_args: list[str], work: Path, name: str, env: dict[str, str], check: bool = True
) -> dict:
    """Run a training module (module and arguments) under scripts/step_timer.py: its step timings and process cost.

    A process that was killed writes no timings; with `check=False` that is a result (samples_per_s None).
    """
    times = work / f"{name}.times.json"
    times.unlink(missing_ok=True)
    cost = run_measured([python, STEP_TIMER, str(times), *module_args], work / f"{name}.log", env, check=check)
    timed = json.loads(times.read_text(encoding="utf-8")) if times.exists() else {"samples_per_s": None}
    return {**timed, "process": cost}


def finish_plot(figure: Any, axes: Any, path: Path, xlabel: str, ylabel: str) -> None:
    """Label the axes, add the legend and save `figure` (a matplotlib Figure) to `path`."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7, loc="lower right")
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")
