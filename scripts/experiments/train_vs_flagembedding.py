"""Training speed: `st_poetry.training.train` against FlagEmbedding's own fine-tuning, measured alike, in one run.

    flock /tmp/st_poetry_heavy.lock python scripts/experiments/train_vs_flagembedding.py \
        --model models/e5-small-zh --fe-python .bench/fe4-venv/bin/python

All trainers fine-tune the same base on the same FlagEmbedding-format file (rows of `data/processed/train.jsonl`
with at least --num-negatives given negatives) with the same batch size, group size (1 positive + n negatives),
max length, learning rate, temperature, pooling and prompts, for the same number of steps:

- flagembedding:      FlagEmbedding's encoder-only fine-tuning, in-batch + group negatives, no memory saving;
- flagembedding_gc:   the same with `--gradient_checkpointing`, as FlagEmbedding's own example scripts run it:
                      its memory saving, which, like a cached loss, pays for itself with a second forward pass;
- st_poetry:          `just train` defaults: CachedMultipleNegativesRankingLoss;
- st_poetry_no_cache: `--no-cached-loss`: MultipleNegativesRankingLoss.

Each runs through `scripts/step_timer.py`, which times optimizer steps 2..n the same way for every trainer
and counts the real tokens they trained on; the kernel gives each process's peak RSS. The trainers run
--rounds times in alternating order, so a slower or faster spell of the machine does not favour one of them;
a ratio is taken within a round and the table shows the median. A step's time depends on how its batch pads
(the longest query and line in it), and each trainer groups rows into batches its own way: one seed could
hand one of them the luckier batches every round, so each round uses another seed (--seed + round) for all.
Tokens/s (real tokens, from the attention masks) is the throughput with the batches' text lengths taken out.

FlagEmbedding needs its own virtual environment (1.4.2 does not import under transformers 5).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
from functools import partial
from pathlib import Path

from sentence_transformers import SentenceTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, for benchlib
from benchlib import run_timed

from st_poetry.core.files import write_jsonl
from st_poetry.core.modeling import load_model
from st_poetry.core.prompts import document_prompt, query_prompt
from st_poetry.core.schema import PAIR


def write_bench_data(prepared: Path, path: Path, rows: int, negatives: int, seed: int) -> int:
    """A FlagEmbedding file of `rows` sampled prepared rows with at least `negatives` given negatives."""
    candidates = [row for row in PAIR.read(prepared / "train.jsonl") if len(row["negatives"]) >= negatives]
    picked = random.Random(seed).sample(candidates, min(rows, len(candidates)))
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {"query": row["anchor"], "pos": [row["positive"]], "neg": row["negatives"][:negatives]} for row in picked
    ]
    write_jsonl(path, records)  # an input format (FlagEmbedding's), not one of the stages' rows
    return len(picked)


def st_poetry_command(args: argparse.Namespace, data: Path, out: Path, seed: int, cached: bool) -> list[str]:
    """`just train` (module and arguments) on the benchmark file; it evaluates once, at the last step."""
    command = ["st_poetry", "train", "--data", str(data), "--model", args.model]
    command += ["--cached-loss" if cached else "--no-cached-loss"]
    command += ["--out", str(out), "--max-steps", str(args.steps), "--eval-steps", str(args.steps)]
    command += ["--batch-size", str(args.batch_size), "--mini-batch-size", str(args.mini_batch_size)]
    command += ["--num-negatives", str(args.num_negatives), "--max-seq-length", str(args.max_length)]
    command += ["--lr", "2e-5", "--eval-max-rows", "64", "--eval-max-corpus", "512", "--logging-steps", "5"]
    return [*command, "--seed", str(seed)]


def flagembedding_model_flags(model: SentenceTransformer) -> list[str]:
    """FlagEmbedding's flags for the pooling and prompts that st_poetry's loading gives the same model."""
    flags = ["--sentence_pooling_method", "mean" if model[1].pooling_mode == "mean" else "cls"]
    for side, prompt in (("query", query_prompt(model)), ("passage", document_prompt(model))):
        if prompt:
            flags += [f"--{side}_instruction_for_retrieval", prompt]
    return flags


def flagembedding_command(
    args: argparse.Namespace, model_flags: list[str], data: Path, out: Path, seed: int, checkpointing: bool
) -> list[str]:
    """FlagEmbedding 1.x's encoder-only fine-tuning, configured like st_poetry's run (single process, CPU)."""
    command = ["FlagEmbedding.finetune.embedder.encoder_only.base"]
    command += ["--model_name_or_path", args.model, "--train_data", str(data), "--output_dir", str(out)]
    command += ["--train_group_size", str(args.num_negatives + 1)]
    command += ["--per_device_train_batch_size", str(args.batch_size)]
    command += ["--query_max_len", str(args.max_length), "--passage_max_len", str(args.max_length)]
    command += ["--max_steps", str(args.steps), "--learning_rate", "2e-5", "--temperature", "0.02"]
    command += [*model_flags, "--normalize_embeddings", "True"]
    command += ["--use_cpu", "True", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "5"]
    command += ["--dataloader_drop_last", "True", "--seed", str(seed)]
    if checkpointing:
        command += ["--gradient_checkpointing", "True"]
    return command


def measure(name: str, python: str, module_args: list[str], work: Path, env: dict[str, str]) -> dict:
    """Run one trainer under the step timer and print its line."""
    timed = run_timed(python, module_args, work, name, env)
    cost = timed["process"]
    print(
        f"  {name:<20} {timed['samples_per_s']:6.2f} samples/s {timed['tokens_per_s']:7.0f} tokens/s "
        f"peak RSS {cost['peak_rss_mib']:5d} MiB  ({cost['seconds']:.0f} s)",
        flush=True,
    )
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/e5-small-zh")
    parser.add_argument("--prepared", default="data/processed", help="folder written by `just prepare`")
    parser.add_argument("--fe-python", default=".bench/fe4-venv/bin/python", help="python with FlagEmbedding 1.x")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42, help="round i runs every trainer with seed + i")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=16)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--work", default=".bench/bench_train", help="scratch folder (data, runs, logs)")
    args = parser.parse_args()

    work = Path(args.work)
    data = work / "fe_train.jsonl"
    rows = write_bench_data(Path(args.prepared), data, args.steps * args.batch_size * 2, args.num_negatives, seed=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    print(f"{rows} rows, {args.steps} steps x batch {args.batch_size}, group 1 + {args.num_negatives}, {args.model}")
    fe_flags = flagembedding_model_flags(load_model(args.model, max_seq_length=args.max_length))
    trainers = {
        "flagembedding": (args.fe_python, partial(flagembedding_command, args, fe_flags, data, checkpointing=False)),
        "flagembedding_gc": (args.fe_python, partial(flagembedding_command, args, fe_flags, data, checkpointing=True)),
        "st_poetry": (sys.executable, partial(st_poetry_command, args, data, cached=True)),
        "st_poetry_no_cache": (sys.executable, partial(st_poetry_command, args, data, cached=False)),
    }
    rounds = []
    for round_index in range(args.rounds):
        order = list(trainers) if round_index % 2 == 0 else list(reversed(trainers))
        seed = args.seed + round_index
        print(f"round {round_index + 1}, seed {seed}: {', '.join(order)}", flush=True)
        results = {}
        for name in order:
            python, command = trainers[name]
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            results[name] = measure(name, python, command(out, seed), work, env)
        rounds.append(results)

    def median(name: str, key: str, baseline: str | None = None) -> float:
        values = [r[name][key] / (r[baseline][key] if baseline else 1) for r in rounds]
        return statistics.median(values)

    print(f"\n{'trainer':<20}{'samples/s':>10}{'tokens/s':>10}{'peak RSS':>10}{'vs FE':>8}{'vs FE+GC':>10}")
    table = {}
    for name in trainers:
        table[name] = {
            "samples_per_s": median(name, "samples_per_s"),
            "tokens_per_s": median(name, "tokens_per_s"),
            "tokens_per_step": median(name, "tokens_per_step"),
            "peak_rss_mib": statistics.median(r[name]["process"]["peak_rss_mib"] for r in rounds),
            "samples_ratio_vs_flagembedding": median(name, "samples_per_s", "flagembedding"),
            "samples_ratio_vs_flagembedding_gc": median(name, "samples_per_s", "flagembedding_gc"),
            "tokens_ratio_vs_flagembedding": median(name, "tokens_per_s", "flagembedding"),
            "tokens_ratio_vs_flagembedding_gc": median(name, "tokens_per_s", "flagembedding_gc"),
        }
        row = table[name]
        print(
            f"{name:<20}{row['samples_per_s']:>10.2f}{row['tokens_per_s']:>10.0f}{row['peak_rss_mib']:>7.0f} MiB"
            f"{row['samples_ratio_vs_flagembedding']:>7.2f}x{row['samples_ratio_vs_flagembedding_gc']:>9.2f}x"
        )
    summary = {"args": vars(args), "rows": rows, "median": table, "rounds": rounds}
    (work / "bench_train.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
