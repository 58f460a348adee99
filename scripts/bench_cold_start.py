"""Cold start of `just search`: a fresh process, one query against an existing index, from start to exit.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_cold_start.py --index indexes/poetry \
        --tree before=/path/to/older/checkout --tree after=. --runs 5

Each `--tree LABEL=PATH` is a source checkout of st_poetry; the runs alternate between trees so that a drift of the
machine's load hits both alike. A tree without `st_poetry/cli` is run the way it was then
(`python -m st_poetry.search query`). Prints the median and every run's seconds per tree, and their ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import write_result

QUERY = "山中下雨后傍晚的秋天"


def command(tree: Path, index: str) -> list[str]:
    entry = (
        ["-m", "st_poetry", "search"] if (tree / "st_poetry" / "cli").is_dir() else ["-m", "st_poetry.search", "query"]
    )
    return [sys.executable, *entry, "--index", index, "--top-k", "1", QUERY]


def one_run(tree: Path, index: str) -> float:
    # PYTHONSAFEPATH: the current folder (where the index's relative model path holds) does not shadow `tree`
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
    start = time.perf_counter()
    subprocess.run(command(tree, index), env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="an index folder written by `just index` (absolute or relative)")
    parser.add_argument("--tree", action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", help="also write the result as JSON here")
    parser.add_argument("--result", default="cold_start", help="result name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    trees = {label: Path(path).resolve() for label, path in (spec.split("=", 1) for spec in args.tree)}
    index = str(Path(args.index).resolve())
    for tree in trees.values():
        one_run(tree, index)  # warm the OS file cache: every tree reads the same index and libraries
    seconds: dict[str, list[float]] = {label: [] for label in trees}
    for _ in range(args.runs):
        for label, tree in trees.items():
            seconds[label].append(round(one_run(tree, index), 3))
    first = statistics.median(next(iter(seconds.values())))
    result = {
        "command": " ".join(sys.argv),
        "index": index,
        "runs": seconds,
        "median_s": {label: statistics.median(runs) for label, runs in seconds.items()},
        "ratio_to_first": {label: round(statistics.median(runs) / first, 3) for label, runs in seconds.items()},
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    summary = {f"{label} median s": median for label, median in result["median_s"].items()}
    summary |= {f"{label} / {next(iter(trees))}": ratio for label, ratio in list(result["ratio_to_first"].items())[1:]}
    write_result(args.result, result, args, summary=summary)


if __name__ == "__main__":
    main()
