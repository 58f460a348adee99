"""Memory and speed of the default `just train` config with a base-sized BERT, on the CPU: the GPU estimate's basis.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_train_memory.py --data data/mined

bge-base-zh-v1.5 cannot be downloaded here, so the script builds a randomly initialised BERT of its shape
(12 layers, hidden 768, 12 heads, FFN 3072) as a plain Hugging Face folder, with the tokenizer of
--tokenizer-from (a BERT-style Chinese tokenizer that splits CJK text into characters, as bge's does). A plain
folder takes the same path as the default model: Transformer + CLS pooling + Normalize. Then it trains a few
steps of the default config (batch 64, 9 negatives, mini-batch 32, max length 64) and variants, each in its own
process under `scripts/step_timer.py`; the kernel gives each process's peak RSS. `--runs` picks some of them;
results of earlier calls stay in the summary JSON (the model is built once, seeded).

On a GPU the step timer also records torch's peak GPU memory. On a CPU everything is fp32; on a GPU the
weights, gradients and AdamW moments stay fp32 while bf16 autocast halves most activations. What the CPU runs
show that carries over: how peak memory moves with the batch size, with and without the cache.

`--model PATH` trains an existing model instead (issue #10 D11: e5-small-zh with `--no-cached-loss`, batch 64,
3 negatives), and the `*_n3` runs take that config, once as is and once with glibc's malloc told to map every
block of 1 MiB or more on its own (`GLIBC_TUNABLES`), which hands freed activations back to the kernel at once:
if resident memory were fragmentation, that run would stay flat. `--plot` draws resident memory and the padded
tokens of each step, which tells growth from fragmentation apart from growth with the batches' lengths.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_train_memory.py --model models/e5-small-zh \
        --data data/processed --work .bench/bench_train_memory_e5 --steps 12 \
        --runs no_cache_n3 no_cache_n3_mmap preset --plot docs/train_memory_e5_small.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import torch
from benchlib import finish_plot, run_timed, write_result
from matplotlib.figure import Figure
from transformers import AutoTokenizer, BertConfig, BertModel

# name: (what it is, flags over the defaults). "floor" has next to no activations: weights, gradients, AdamW
# moments, the data and the libraries, i.e. what every other run's peak holds besides activations.
MMAP_EACH_MIB = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}  # fixed: no dynamic threshold
RUNS = {
    "default": ("default (batch 64, cached, mini-batch 32)", [], {}),
    "batch128": ("batch 128, cached, mini-batch 32", ["--batch-size", "128"], {}),
    "no_cache": ("batch 64, --no-cached-loss", ["--no-cached-loss"], {}),
    "no_cache_b16": ("batch 16, --no-cached-loss", ["--no-cached-loss", "--batch-size", "16"], {}),
    "floor": ("batch 2, mini-batch 1 (floor)", ["--batch-size", "2", "--mini-batch-size", "1"], {}),
    "no_cache_n3": ("batch 64, --no-cached-loss, 3 negatives", ["--no-cached-loss", "--num-negatives", "3"], {}),
    "no_cache_n3_mmap": (
        "batch 64, --no-cached-loss, 3 negatives, malloc mmaps >= 1 MiB",
        ["--no-cached-loss", "--num-negatives", "3"],
        MMAP_EACH_MIB,
    ),
    "cached_n3": ("batch 64, cached, mini-batch 32, 3 negatives", ["--num-negatives", "3"], {}),
    "preset": (
        "CPU preset: batch 16, --no-cached-loss, 3 negatives",
        ["--no-cached-loss", "--batch-size", "16", "--num-negatives", "3"],
        {},
    ),
}
BGE_BASE_SHAPE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def base_sized_model(folder: Path, tokenizer_from: str) -> int:
    """A random-init BERT of bge-base's shape with `tokenizer_from`'s tokenizer; returns its parameter count."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **BGE_BASE_SHAPE)
    torch.manual_seed(0)
    model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(parameter.numel() for parameter in model.parameters())


def kept_activations(args: argparse.Namespace, batches: int = 200) -> dict[str, dict]:
    """What the plain loss keeps for backward, measured: the bytes of the tensors autograd saves in the forward
    passes of one batch (every column, parameters excluded), for the median and the longest of `batches` batches
    sampled from --data, as `just train --no-cached-loss` would build them (prompts, token limit 64)."""
    from sentence_transformers import SentenceTransformer

    from st_poetry.core.config import TrainConfig
    from st_poetry.training.train import column_prompts, load_training_data

    config = TrainConfig(data=args.data, model=args.model, num_negatives=args.negatives, eval_max_rows=1)
    rows = list(load_training_data(config).train)
    model = SentenceTransformer(args.model)
    model.max_seq_length = config.max_seq_length
    prompts = column_prompts(model, list(rows[0])) or {}
    rng = random.Random(0)
    sampled = []
    for _ in range(batches):
        batch = rng.sample(rows, args.batch_size)
        columns = {name: [prompts.get(name, "") + row[name] for row in batch] for name in batch[0]}
        features = {name: model.preprocess(texts) for name, texts in columns.items()}
        sampled.append((sum(f["input_ids"].numel() for f in features.values()), features))
    sampled.sort(key=lambda item: item[0])
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages: dict[int, int] = {}  # each saved storage once: several ops may save the same tensor

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    result = {}
    for name, (padded, features) in {"median": sampled[len(sampled) // 2], "longest": sampled[-1]}.items():
        storages.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            embeddings = [model(dict(column))["sentence_embedding"] for column in features.values()]
        del embeddings
        result[name] = {"padded_tokens": padded, "kept_mib": round(sum(storages.values()) / 2**20)}
        kept = result[name]["kept_mib"]
        print(f"  {name} of {batches} sampled batches: {padded:,} padded tokens, {kept:,} MiB kept for backward")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/mined", help="a `just mine` (or `just prepare`) folder")
    parser.add_argument("--tokenizer-from", default="models/e5-small-zh")
    parser.add_argument("--model", help="train this model instead of a random-init BERT of bge-base's shape")
    parser.add_argument("--plot", help="draw resident memory and padded tokens per step of the runs to this PNG")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run; the first is not timed")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--work", default=".bench/bench_train_memory")
    parser.add_argument(
        "--activations",
        action="store_true",
        help="with --model: measure the activations the plain loss keeps for one batch instead of training",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="--activations: rows per batch")
    parser.add_argument("--negatives", type=int, default=3, help="--activations: negatives per row")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary_path = work / "bench_train_memory.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {"runs": {}}
    if args.activations:
        print(f"{args.model}: activations kept for backward, batch {args.batch_size}, {args.negatives} negatives")
        key = f"activations_batch{args.batch_size}_neg{args.negatives}"
        summary[key] = kept_activations(args)
        summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        headline = {f"{batch} batch: kept MiB": kept["kept_mib"] for batch, kept in summary[key].items()}
        write_result("train_memory-activations", {key: summary[key]}, args, summary=headline)
        return
    if args.model:
        model = Path(args.model)
        print(f"model {model}", flush=True)
    else:
        model = work / "bert-base-random"
        if not (model / "config.json").is_file():
            summary["parameters"] = base_sized_model(model, args.tokenizer_from)
        print(f"random-init BERT, {summary['parameters'] / 1e6:.0f}M parameters, at {model}", flush=True)
    for name in args.runs:
        label, flags, malloc = RUNS[name]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **malloc}
        shutil.rmtree(work / name, ignore_errors=True)
        command = ["st_poetry", "train", "--data", args.data, "--model", str(model), "--out", str(work / name)]
        command += ["--max-steps", str(args.steps), "--eval-steps", str(args.steps)]
        command += ["--eval-max-rows", "32", "--eval-max-corpus", "256", *flags]
        timed = run_timed(sys.executable, command, work, name, env, check=False)  # an out-of-memory kill is a result
        cost = timed["process"]
        summary["runs"][name] = {"label": label, "model": str(model), "flags": flags, "env": malloc, **timed}
        outcome = "ok" if cost["exit_code"] == 0 else f"FAILED, exit code {cost['exit_code']}"
        speed = f"{timed['samples_per_s']:5.2f} samples/s" if timed["samples_per_s"] else "no step timed"
        peak = f"peak RSS {cost['peak_rss_mib'] / 1024:5.2f} GiB"
        if "cuda_peak_allocated_gib" in timed:
            peak += f", GPU {timed['cuda_peak_allocated_gib']:.2f} GiB allocated"
        print(f"  {label:<45} {peak}  {speed}  ({cost['seconds']:.0f} s, {outcome})", flush=True)
        summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")  # runs of earlier calls stay
    if args.plot:
        plot_memory([summary["runs"][name] for name in args.runs], Path(args.plot))
    measured = {name: summary["runs"][name] for name in args.runs}  # this call's runs, not earlier calls'
    headline = {
        f"{name} peak GiB": round(run["process"]["peak_rss_mib"] / 1024, 2)
        if run["process"]["exit_code"] == 0
        else f"exit code {run['process']['exit_code']}"
        for name, run in measured.items()
    }
    write_result("train_memory", {"parameters": summary.get("parameters"), "runs": measured}, args, summary=headline)


def plot_memory(runs: list[dict], path: Path) -> None:
    """Resident memory after each step (solid) and the peak so far (dotted) per run; padded tokens on the right."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    tokens = axes.twinx()
    for run in runs:
        memory = run.get("memory") or []
        steps = [entry["step"] for entry in memory]
        (line,) = axes.plot(steps, [entry["rss_mib"] / 1024 for entry in memory], marker="o", label=run["label"])
        axes.plot(steps, [entry["peak_rss_mib"] / 1024 for entry in memory], linestyle=":", color=line.get_color())
        tokens.bar(steps, [entry["padded_tokens"] for entry in memory], alpha=0.12, color=line.get_color())
    tokens.set_ylabel("padded tokens in the step's batch (bars)")
    finish_plot(figure, axes, path, "optimizer step", "resident memory after the step, GiB (dotted: peak so far)")


if __name__ == "__main__":
    main()
