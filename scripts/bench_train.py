"""Training speed: `st_poetry.train` against FlagEmbedding's own fine-tuning, in one run.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_train.py \
        --model ../shared/models/e5-small-zh --fe-python .bench/fe4-venv/bin/python

Both fine-tune the same base on the same FlagEmbedding-format file (rows of `data/processed/train.jsonl` that
carry at least --num-negatives given negatives), with the same batch size, group size (1 positive + n
negatives), max length, temperature, pooling and prompts, for the same number of steps; st_poetry runs
twice, with the default cached loss and with `--no-cached-loss`. Each reports
transformers' `train_samples_per_second`; st_poetry's run also evaluates once at its last step (it must,
to pick the best model), so its `eval_runtime` is taken out of its training time.

FlagEmbedding needs its own virtual environment (it does not import under transformers 5); the figure is
samples/s of the optimizer steps only, model loading excluded on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sentence_transformers import SentenceTransformer


def write_bench_data(prepared: Path, path: Path, rows: int, negatives: int, seed: int) -> int:
    """A FlagEmbedding file of `rows` sampled prepared rows with at least `negatives` given negatives."""
    with open(prepared / "train.jsonl", encoding="utf-8") as handle:
        candidates = [row for row in map(json.loads, handle) if len(row["negatives"]) >= negatives]
    picked = random.Random(seed).sample(candidates, min(rows, len(candidates)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in picked:
            record = {"query": row["anchor"], "pos": [row["positive"]], "neg": row["negatives"][:negatives]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(picked)


def run(command: list[str], log: Path, env: dict[str, str]) -> str:
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    log.write_text(result.stdout + "\n" + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        sys.exit(f"{command[0]} ... failed ({result.returncode}); see {log}\n{result.stderr[-2000:]}")
    print(f"  {' '.join(command[:4])} ... took {time.time() - started:.0f} s (log: {log})", flush=True)
    return result.stdout + result.stderr


def st_poetry_speed(args: argparse.Namespace, data: Path, work: Path, env: dict[str, str], cached: bool) -> dict:
    name = "st_poetry" if cached else "st_poetry_no_cache"
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "st_poetry.train", "--data", str(data), "--model", args.model]
    command += ["--cached-loss" if cached else "--no-cached-loss"]
    command += ["--out", str(out), "--max-steps", str(args.steps), "--eval-steps", str(args.steps)]
    command += ["--batch-size", str(args.batch_size), "--mini-batch-size", str(args.mini_batch_size)]
    command += ["--num-negatives", str(args.num_negatives), "--max-seq-length", str(args.max_length)]
    command += ["--lr", "2e-5", "--eval-max-rows", "64", "--eval-max-corpus", "512", "--logging-steps", "5"]
    run(command, work / f"{name}.log", env)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    final = next(entry for entry in reversed(log) if "train_runtime" in entry)
    eval_s = sum(entry["eval_runtime"] for entry in log if "eval_runtime" in entry)
    seconds = final["train_runtime"] - eval_s
    return {"steps_s": round(seconds, 1), "eval_s_excluded": round(eval_s, 1), "samples_per_s": samples(args) / seconds}


def flagembedding_speed(args: argparse.Namespace, data: Path, work: Path, env: dict[str, str]) -> dict:
    """FlagEmbedding 1.x's encoder-only fine-tuning, configured like st_poetry's run (single process, CPU)."""
    model = SentenceTransformer(args.model, device="cpu")
    pooling = "mean" if model[1].pooling_mode == "mean" else "cls"
    out = work / "flagembedding"
    shutil.rmtree(out, ignore_errors=True)
    command = [args.fe_python, "-m", "FlagEmbedding.finetune.embedder.encoder_only.base"]
    command += ["--model_name_or_path", args.model, "--train_data", str(data), "--output_dir", str(out)]
    command += [
        "--train_group_size",
        str(args.num_negatives + 1),
        "--per_device_train_batch_size",
        str(args.batch_size),
    ]
    command += ["--query_max_len", str(args.max_length), "--passage_max_len", str(args.max_length)]
    command += ["--max_steps", str(args.steps), "--learning_rate", "2e-5", "--temperature", "0.02"]
    command += ["--sentence_pooling_method", pooling, "--normalize_embeddings", "True"]
    for side, name in (("query", "query"), ("passage", "document")):
        if prompt := model.prompts.get(name):
            command += [f"--{side}_instruction_for_retrieval", prompt]
    command += ["--use_cpu", "True", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "5"]
    command += ["--dataloader_drop_last", "True", "--seed", "42"]
    output = run(command, work / "flagembedding.log", env)
    runtime = float(re.findall(r"'train_runtime': '?([\d.]+)", output)[-1])
    return {"steps_s": round(runtime, 1), "samples_per_s": samples(args) / runtime}


def samples(args: argparse.Namespace) -> int:
    return args.steps * args.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="../shared/models/e5-small-zh")
    parser.add_argument("--prepared", default="data/processed", help="folder written by `just prepare`")
    parser.add_argument("--fe-python", default=".bench/fe4-venv/bin/python", help="python with FlagEmbedding 1.x")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--work", default=".bench/bench_train", help="scratch folder (data, runs, logs)")
    args = parser.parse_args()

    work = Path(args.work)
    data = work / "fe_train.jsonl"
    rows = write_bench_data(Path(args.prepared), data, args.steps * args.batch_size * 2, args.num_negatives, seed=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    print(f"{rows} rows, {args.steps} steps x batch {args.batch_size}, group 1 + {args.num_negatives}, {args.model}")
    results = {
        "flagembedding": flagembedding_speed(args, data, work, env),
        "st_poetry": st_poetry_speed(args, data, work, env, cached=True),
        "st_poetry_no_cache": st_poetry_speed(args, data, work, env, cached=False),
    }
    baseline = results["flagembedding"]["samples_per_s"]
    print(f"{'trainer':<20}{'samples/s':>10}{'step time s':>13}{'vs FlagEmbedding':>18}")
    for name, result in results.items():
        result["ratio"] = result["samples_per_s"] / baseline
        print(f"{name:<20}{result['samples_per_s']:>10.2f}{result['steps_s']:>13.1f}{result['ratio']:>17.2f}x")
    summary = {"args": vars(args), "rows": rows, "results": results}
    (work / "bench_train.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
