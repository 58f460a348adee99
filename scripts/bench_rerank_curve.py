"""Where a reranker's training is going: CCPM accuracy of every checkpoint a `just train-reranker` run kept.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_rerank_curve.py --run models/st-poetry-reranker \
        --data data/processed --bi-encoder models/st-poetry --plot docs/rerank_curve.png

The trainer's own evaluator (train_log.jsonl) ranks each eval positive among its row's negatives; the issue's
target is CCPM accuracy, 1 of 4 choices, so this scores the eval split's held-out CCPM records with each
checkpoint (and with the bi-encoder, the line to beat) and plots both against the step, with the target.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from benchlib import finish_plot, write_result
from matplotlib.figure import Figure

from st_poetry.core.files import read_jsonl
from st_poetry.core.modeling import load_model, load_reranker
from st_poetry.core.schema import PAIR
from st_poetry.evaluation.metrics import ccpm_accuracy, ccpm_records_from_eval
from st_poetry.training.reranker import EVALUATOR_NAME
from st_poetry.training.train import TRAIN_LOG, checkpoint_step, saved_checkpoints

TARGET = 0.87


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a `just train-reranker` output folder")
    parser.add_argument("--data", type=Path, required=True, help="prepared folder whose eval.jsonl holds CCPM rows")
    parser.add_argument("--bi-encoder", help="a bi-encoder whose CCPM accuracy is drawn as the line to beat")
    parser.add_argument("--max-records", type=int, default=None, help="score a seeded sample of the CCPM records")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: RUN/rerank_curve.json)")
    parser.add_argument("--plot", type=Path, default=None, help="figure (default: RUN/rerank_curve.png)")
    args = parser.parse_args()

    records = ccpm_records_from_eval(PAIR.read(args.data / "eval.jsonl"))
    if args.max_records and len(records) > args.max_records:
        records = random.Random(0).sample(records, args.max_records)
    print(f"{len(records):,} CCPM records of {args.data / 'eval.jsonl'}")
    result: dict = {"records": len(records), "data": str(args.data), "run": str(args.run), "checkpoints": []}
    if args.bi_encoder:
        result["bi_encoder"] = {
            "model": args.bi_encoder,
            "ccpm_accuracy": ccpm_accuracy(load_model(args.bi_encoder), records, batch_size=args.batch_size),
        }
        print(f"bi-encoder {args.bi_encoder}: {result['bi_encoder']['ccpm_accuracy']:.4f}")
    for folder in saved_checkpoints(args.run):
        step = checkpoint_step(folder)
        start = time.perf_counter()
        accuracy = ccpm_accuracy(load_reranker(str(folder)), records, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        result["checkpoints"].append({"step": step, "ccpm_accuracy": accuracy, "seconds": round(seconds, 1)})
        print(f"step {step:>6}: CCPM accuracy {accuracy:.4f} ({seconds:.0f} s)")
    log = [record for _, record in read_jsonl(args.run / TRAIN_LOG)]
    result["trainer_eval"] = [
        {"step": r["step"], "mrr@10": r[f"eval_{EVALUATOR_NAME}_mrr@10"]}
        for r in log
        if f"eval_{EVALUATOR_NAME}_mrr@10" in r
    ]
    out = args.out or args.run / "rerank_curve.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(result, args.plot or args.run / "rerank_curve.png")
    print(f"wrote {out}")
    summary = {"CCPM records": result["records"]}
    if bi := result.get("bi_encoder"):
        summary["bi-encoder CCPM accuracy"] = bi["ccpm_accuracy"]
    if points := result["checkpoints"]:
        best = max(points, key=lambda point: point["ccpm_accuracy"])
        summary |= {"best step": best["step"], "best CCPM accuracy": best["ccpm_accuracy"]}
        summary |= {"last step": points[-1]["step"], "last CCPM accuracy": points[-1]["ccpm_accuracy"]}
    write_result("rerank_curve", result, args, summary=summary)


def plot(result: dict, path: Path) -> None:
    figure = Figure(figsize=(8.0, 4.5), layout="constrained")
    axes = figure.add_subplot()
    points = result["checkpoints"]
    axes.plot(
        [p["step"] for p in points],
        [p["ccpm_accuracy"] for p in points],
        "o-",
        label=f"reranker: CCPM accuracy ({result['records']:,} eval records)",
    )
    trainer = result["trainer_eval"]
    axes.plot(
        [p["step"] for p in trainer],
        [p["mrr@10"] for p in trainer],
        "s--",
        alpha=0.6,
        label="reranker: trainer's eval MRR@10",
    )
    if bi := result.get("bi_encoder"):
        axes.axhline(
            bi["ccpm_accuracy"], color="tab:gray", linestyle=":", label=f"bi-encoder alone: {bi['ccpm_accuracy']:.3f}"
        )
    axes.axhline(TARGET, color="tab:red", linestyle="--", label=f"issue's target: {TARGET}")
    axes.grid(alpha=0.3)
    finish_plot(figure, axes, path, "step", "score")


if __name__ == "__main__":
    main()
