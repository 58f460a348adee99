"""What the benchmark scripts share: running a stage as a child process, reading its cost from the kernel, and
writing the result file (`write_result`) that docs/BENCHMARKS.md's generated table is made from.

Only the standard library: `python scripts/bench.py --list` and the docs hook stay fast, and a benchmark that needs
no torch does not load it to record versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMER = str(ROOT / "scripts" / "step_timer.py")
RESULTS = ROOT / "benchmarks" / "results"  # committed: a result's history is in git
HEAVY_LOCK = Path("/tmp/st_poetry_heavy.lock")
# distributions whose versions a result records when installed (faiss under any of its builds' names)
PACKAGES = (
    "torch",
    "sentence-transformers",
    "transformers",
    "faiss-cpu",
    "faiss-gpu",
    "onnxruntime",
    "openvino",
    "nncf",
    "numpy",
    "bm25s",
)
# a benchmark imports this module first thing, so this is the load average and time at its start
STARTED = {"time": time.time(), "load_average": os.getloadavg()}


def run_measured(
    command: list[str], log: Path, env: dict[str, str] | None = None, check: bool = True, cwd: Path = ROOT
) -> dict[str, float]:
    """Run `command` in `cwd` (the repository root), its output to `log`; wall and CPU seconds, peak RSS in MiB.

    CPU time is reported beside wall time because this machine is shared: wall time grows when others run.
    With `check=False` a failed command is a result too (its exit code; -9 is the kernel's out-of-memory kill).
    """
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env)
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


def write_result(
    name: str,
    figures: dict[str, Any],
    args: argparse.Namespace | dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    folder: Path | None = None,
) -> Path:
    """Write `figures` as benchmarks/results/NAME.json with what it takes to read and repeat them.

    NAME is the benchmark's name, with its mode when it has several (`encode-speed`); a new run replaces the file.
    Beside the figures: the command line, the date (UTC), the st_poetry commit, package versions, the machine, the
    load average at the start and at the end, whether the heavy-run lock was held, the parsed arguments, and
    `summary`: the few headline figures (name -> number or text) the docs' table shows.
    """
    if not re.fullmatch(r"[a-z0-9_]+(-[a-z0-9_]+)*", name):
        raise ValueError(f"result name {name!r}: lower-case letters, digits and _, modes joined by -")
    summary = summary or {}
    for key, value in summary.items():
        if not isinstance(value, (int, float, str)) and value is not None:
            raise TypeError(f"{name}: summary[{key!r}] is a {type(value).__name__}; the table shows numbers or text")
    command = ["python", *sys.orig_argv[1:]] if sys.orig_argv else ["python", *sys.argv]
    result = {
        "name": name,
        "command": shlex.join(command),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - STARTED["time"], 1),
        "commit": _commit(),
        "versions": versions(),
        "machine": machine(),
        "load_average": {"before": _rounded(STARTED["load_average"]), "after": _rounded(os.getloadavg())},
        "heavy_lock": heavy_lock(),
        "args": vars(args) if isinstance(args, argparse.Namespace) else dict(args or {}),
        "summary": summary,
        "figures": figures,
    }
    folder = Path(folder) if folder is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    partial.replace(path)  # a reader never sees half a file
    lock = result["heavy_lock"]
    if not lock["held_by_this_run"]:
        others = f" (held by pid {', '.join(map(str, lock['held_by_others']))})" if lock["held_by_others"] else ""
        print(f"note: this run did not hold the heavy-run lock {HEAVY_LOCK}{others}; the result file says so")
    print(f"wrote {path}")
    return path


def versions() -> dict[str, str]:
    """Python's version and those of the installed `PACKAGES`, read from their metadata (nothing is imported)."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def machine() -> dict[str, Any]:
    """What the figures were measured on: platform, CPU model and count, memory, and GPUs when torch sees any."""
    described: dict[str, Any] = {"platform": platform.platform(), "arch": platform.machine()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.MULTILINE)
        if model:
            described["cpu"] = model.group(1).strip()
    described["cpus"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        described["usable_cpus"] = len(os.sched_getaffinity(0))
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.MULTILINE)
        if total:
            described["memory_gib"] = round(int(total.group(1)) / 2**20, 1)
    torch = sys.modules.get("torch")  # only a benchmark that loaded torch anyway is asked about GPUs
    if torch is not None and torch.cuda.is_available():
        described["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return described


def heavy_lock(lock: Path | None = None) -> dict[str, Any]:
    """Who holds the heavy-run lock now, from the kernel's table of locks (/proc/locks): this run (this process or
    one it was started by, such as the `flock` wrapping it) and other processes."""
    lock = lock or HEAVY_LOCK
    described: dict[str, Any] = {"file": str(lock), "held_by_this_run": False, "held_by_others": []}
    try:
        stat = lock.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return described
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    holders = {
        int(fields[4])
        for fields in (line.split() for line in table.splitlines())
        if len(fields) >= 6 and fields[1] != "->" and fields[5] == file_id  # "->": a process waiting for it
    }
    ours = _ancestors()
    described["held_by_this_run"] = bool(holders & ours)
    described["held_by_others"] = sorted(holders - ours)
    return described


def _ancestors() -> set[int]:
    """This process's id and those of its parents, up to init."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the fields after the command name: state, ppid, ...
    return pids


def _commit() -> str | None:
    """The checkout's commit, with `-dirty` when tracked files have changed; None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _rounded(load: tuple[float, ...] | list[float]) -> list[float]:
    return [round(value, 2) for value in load]
