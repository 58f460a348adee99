"""The small sweep behind configs/cpu-e5-small.toml: short `just train` runs on prepared data, scored on eval.

    flock /tmp/st_poetry_heavy.lock python scripts/experiments/sweep_cpu_preset.py --data data/processed \
        --model models/e5-small-zh --runs lr2e-5 lr1e-4 lr3e-4
    flock /tmp/st_poetry_heavy.lock python scripts/experiments/sweep_cpu_preset.py ... --runs batch32 neg1 len32 \
        --plot docs/cpu_preset_sweep.png

Every run trains on the same number of rows (--samples: e.g. 40 steps of batch 16 or 20 of batch 32), evaluates
once at its last step on a capped eval split (--eval-max-rows sampled eval queries, their lines plus distractors
up to --eval-max-corpus lines; the same sample in every run), and goes through `scripts/step_timer.py`, so each
run reports NDCG@10 before and after, the seconds its optimizer steps took and its peak RSS. The runs vary one
setting at a time from the `base` flags. Cached against plain loss is no quality question (the same gradients):
it is settled by speed and memory (docs/BENCHMARKS.md). Results of earlier calls stay in the summary JSON, so the
sweep can be run in pieces that fit between other jobs; --plot draws NDCG@10 against training seconds for all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, for benchlib
from benchlib import finish_plot, run_timed

BASE = {"--batch-size": "16", "--num-negatives": "3", "--lr": "1e-4", "--max-seq-length": "64"}
# name: the settings that differ from BASE
RUNS = {
    "lr2e-5": {"--lr": "2e-5"},
    "lr1e-4": {},
    "lr3e-4": {"--lr": "3e-4"},
    "batch32": {"--batch-size": "32"},
    "neg1": {"--num-negatives": "1"},
    "len32": {"--max-seq-length": "32"},
}


def label(name: str) -> str:
    settings = {**BASE, **RUNS[name]}
    return (
        f"lr {settings['--lr']}, batch {settings['--batch-size']}, {settings['--num-negatives']} neg, len "
        + (settings["--max-seq-length"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/processed", help="a `just prepare` (or `just mine`) folder")
    parser.add_argument("--model", default="models/e5-small-zh")
    parser.add_argument("--samples", type=int, default=640, help="training rows per run (steps = samples / batch)")
    parser.add_argument("--eval-max-rows", type=int, default=300)
    parser.add_argument("--eval-max-corpus", type=int, default=3000)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--work", default=".bench/sweep_cpu_preset")
    parser.add_argument("--plot", help="draw NDCG@10 against training seconds of every run so far to this PNG")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary_path = work / "sweep.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {"runs": {}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in args.runs:
        settings = {**BASE, **RUNS[name]}
        steps = args.samples // int(settings["--batch-size"])
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        command = ["st_poetry", "train", "--data", args.data, "--model", args.model, "--out", str(out)]
        command += [item for pair in settings.items() for item in pair] + ["--no-cached-loss"]
        command += ["--max-steps", str(steps), "--eval-steps", str(steps), "--logging-steps", "5"]
        command += ["--eval-max-rows", str(args.eval_max_rows), "--eval-max-corpus", str(args.eval_max_corpus)]
        timed = run_timed(sys.executable, command, work, name, env)
        train_summary = json.loads((out / "train_summary.json").read_text(encoding="utf-8"))
        # the timed steps exclude step 1 (warm-up): scale their mean to all steps
        train_seconds = timed["seconds"] / timed["timed_steps"] * steps
        summary["runs"][name] = {
            "label": label(name),
            "command": command,
            "steps": steps,
            "before": train_summary["before"]["NDCG@10"],
            "after": train_summary["after"]["NDCG@10"],
            "train_loss": train_summary["train_loss"],
            "train_seconds": round(train_seconds, 1),
            "samples_per_s": timed["samples_per_s"],
            "peak_rss_mib": timed["process"]["peak_rss_mib"],
            "wall_s": timed["process"]["seconds"],
        }
        shutil.rmtree(out)  # models of a sweep are not kept
        run = summary["runs"][name]
        print(
            f"{name:<8} {run['label']:<40} NDCG@10 {run['before']:.4f} -> {run['after']:.4f}  "
            f"{run['train_seconds']:.0f} s training, {run['samples_per_s']:.2f} samples/s, "
            f"peak RSS {run['peak_rss_mib'] / 1024:.2f} GiB",
            flush=True,
        )
        summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if args.plot:
        plot(summary["runs"], Path(args.plot))


def plot(runs: dict[str, dict], path: Path) -> None:
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for name, run in runs.items():
        axes.scatter(run["train_seconds"], run["after"], s=40)
        axes.annotate(f"{name}: {run['label']}", (run["train_seconds"], run["after"]), fontsize=7, xytext=(4, 3),
                      textcoords="offset points")  # fmt: skip
    before = next(iter(runs.values()))["before"]
    axes.axhline(before, color="grey", linestyle="--", linewidth=1, label=f"e5-small-zh before training ({before:.3f})")
    xlabel = "seconds of optimizer steps (one run's budget of rows; loaded 2-core CPU)"
    finish_plot(figure, axes, path, xlabel, "eval NDCG@10 after the run (capped eval)")


if __name__ == "__main__":
    main()
