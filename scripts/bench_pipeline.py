"""The whole job end to end: `just download`, then `just pipeline` on a preset, each stage's wall time and peak RSS.

    git clone REPO WORK && cd WORK && pip install -r requirements.lock -e .
    flock /tmp/st_poetry_heavy.lock python scripts/bench.py pipeline --work WORK [--from DIR]

In WORK (a fresh clone: the preset's paths are relative to it), `st-poetry download` (`--from DIR`: offline) and
then `st-poetry pipeline --config PRESET`, each one process tree whose wall time and peak RSS the kernel reports;
the pipeline's own table gives each stage's. Then the evaluation's rows and the demo query's top 3 (`st-poetry
search --json`) are read back. Run it alone: on 2 cores any other process slows torch several times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import tomllib
from benchlib import run_measured, write_result

QUERY = "山中下雨后傍晚的秋天"
EXPECTED = "空山新雨后，天气晚来秋。"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="a fresh clone of the repository to run in")
    parser.add_argument("--preset", default="configs/cpu-e5-small.toml", help="the pipeline file, relative to WORK")
    parser.add_argument("--from", dest="from_dir", help="download offline from this folder (`just download --from`)")
    args = parser.parse_args()
    work, python = args.work.resolve(), sys.executable
    logs = work / "outputs" / "bench_pipeline"
    logs.mkdir(parents=True, exist_ok=True)
    download = [python, "-m", "st_poetry", "download", *(["--from", args.from_dir] if args.from_dir else [])]
    costs = {"download": run_measured(download, logs / "download.log", cwd=work)}
    summary_file = logs / "summary.json"
    pipeline = [python, "-m", "st_poetry", "pipeline", "--config", args.preset, "--summary", str(summary_file)]
    costs["pipeline"] = run_measured(pipeline, logs / "pipeline.log", cwd=work)
    stages = json.loads(summary_file.read_text(encoding="utf-8"))["stages"]

    preset = tomllib.loads((work / args.preset).read_text(encoding="utf-8"))
    evaluation = json.loads((work / preset["evaluate"]["out"] / "evaluation.json").read_text(encoding="utf-8"))
    rows = {row["name"]: row["retrieval"] for row in evaluation["rows"]}
    search = [python, "-m", "st_poetry", "search", "--json", "--top-k", "3", "--index", preset["index"]["out"], QUERY]
    demo = json.loads(subprocess.run(search, cwd=work, check=True, capture_output=True, text=True).stdout)
    lines = [hit["text"] for hit in demo["results"]]
    rank = lines.index(EXPECTED) + 1 if EXPECTED in lines else None
    trained = next(name for name in rows if name.startswith(Path(preset["train"]["out"]).name))
    figures = {"costs": costs, "stages": stages, "evaluation": rows, "demo": {"query": QUERY, "top3": demo["results"]}}
    peak = max(costs["download"]["peak_rss_mib"], costs["pipeline"]["peak_rss_mib"])
    write_result(
        "pipeline",
        figures,
        args,
        summary={
            "minutes": round((costs["download"]["seconds"] + costs["pipeline"]["seconds"]) / 60, 1),
            "peak_rss_gib": round(peak / 1024, 2),
            f"rank of {EXPECTED}": rank,
            "trained NDCG@10": round(rows[trained]["ndcg@10"], 4),
        },
    )
    print(json.dumps({"costs": costs, "stages": stages, "top3": lines}, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
