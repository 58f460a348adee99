"""Encoding speed and quality per `--backend`: torch fp32 against ONNX Runtime fp32/int8 and OpenVINO fp32/int8.

    just export --model MODEL --backend onnx openvino --calibration-data data/processed
    flock /tmp/st_poetry_heavy.lock python scripts/bench_encode.py --model MODEL --data data/processed --part speed
    flock /tmp/st_poetry_heavy.lock python scripts/bench_encode.py --model MODEL --data data/processed --part cold
    flock /tmp/st_poetry_heavy.lock python scripts/bench_encode.py --model MODEL --data data/processed --part quality

`--part speed`, in one process, every backend loaded once:
- throughput: a fixed seeded sample of `--sample` corpus lines encoded as documents (`--batch-size`,
  `--max-seq-length`, the stages' defaults) in `--rounds` alternating rounds: each round runs every backend once,
  the order rotated, so load from other jobs hits all backends alike; lines/s per round, and per round the ratio
  to torch's lines/s of the same round (the figure that survives a shared machine);
- single-query latency: one description at a time through `encode_query`, the model loaded and warmed up, the
  backends interleaved query by query; p50/p95 over `--queries` eval descriptions;
- the probe cosine of each backend to torch (what `just search`'s probe check sees across backends), and, with
  `--other-model`, of that model to this one (what it sees for another model);
`--part cold`: cold start, `st-poetry search` as a child process, from start to exit with the first
result, against a small index (`--cold-index-lines` lines) built by the same backend; median of `--cold-runs`.
`--part quality`: `just evaluate` with every backend as rows (retrieval on the eval split against a corpus capped
at `--max-corpus`, CCPM accuracy on the eval split), no BM25.

Results: .bench/encode/{speed,quality}.json (and the evaluation folder), summarised on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from benchlib import ROOT, run_measured, write_result

from st_poetry.core.config import EvaluateConfig, IndexConfig
from st_poetry.core.modeling import load_model
from st_poetry.core.schema import CORPUS, read_split
from st_poetry.evaluation.evaluate import evaluate
from st_poetry.retrieval.search import build_index, model_record

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")


def environment() -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
    }


def speed(args: argparse.Namespace, backends: list[str]) -> dict:
    lines = [row["text"] for row in CORPUS.read(Path(args.data) / "corpus.jsonl")]
    sample = random.Random(args.seed).sample(lines, min(args.sample, len(lines)))
    queries = [row["anchor"] for row in read_split(Path(args.data) / "eval.jsonl").rows]
    queries = random.Random(args.seed).sample(sorted(set(queries)), args.queries)
    models = {name: load_model(args.model, max_seq_length=args.max_seq_length, backend=name) for name in backends}
    for model in models.values():  # warm-up: first-call allocations and graph compilation
        model.encode_document(sample[: args.batch_size], batch_size=args.batch_size)

    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        order = backends[number % len(backends) :] + backends[: number % len(backends)]
        timing = {}
        for name in order:
            start = time.perf_counter()
            models[name].encode_document(sample, batch_size=args.batch_size)
            timing[name] = len(sample) / (time.perf_counter() - start)
            print(f"round {number + 1}: {name:<14} {timing[name]:7.1f} lines/s", flush=True)
        rounds.append(timing)

    latency: dict[str, list[float]] = {name: [] for name in backends}
    for query in queries[:5]:
        for model in models.values():
            model.encode_query([query])
    for number, query in enumerate(queries):
        for name in backends[number % len(backends) :] + backends[: number % len(backends)]:
            start = time.perf_counter()
            models[name].encode_query([query])
            latency[name].append((time.perf_counter() - start) * 1000)

    probes = {name: np.array(model_record(model)["probe"]) for name, model in models.items()}
    check = sample[:500]
    reference = models["torch"].encode_document(check, batch_size=args.batch_size)
    results = {}
    for name in backends:
        per_round = [timing[name] for timing in rounds]
        ratios = [timing[name] / timing["torch"] for timing in rounds]
        got = models[name].encode_document(check, batch_size=args.batch_size)
        cosines = (got * reference).sum(axis=1)  # normalized embeddings
        results[name] = {
            "lines_per_s": per_round,
            "lines_per_s_median": round(statistics.median(per_round), 1),
            "ratio_to_torch": [round(r, 3) for r in ratios],
            "ratio_to_torch_median": round(statistics.median(ratios), 2),
            "latency_ms_p50": round(float(np.percentile(latency[name], 50)), 2),
            "latency_ms_p95": round(float(np.percentile(latency[name], 95)), 2),
            "probe_cosine_to_torch": round(float(probes[name] @ probes["torch"]), 5),
            "line_cosine_to_torch_mean": round(float(cosines.mean()), 5),
            "line_cosine_to_torch_min": round(float(cosines.min()), 5),
        }
    other = None
    if args.other_model:
        other_probe = np.array(model_record(load_model(args.other_model, max_seq_length=args.max_seq_length))["probe"])
        other = {"model": args.other_model, "probe_cosine_to_torch": round(float(other_probe @ probes["torch"]), 5)}
    del models
    return {"sample_lines": len(sample), "queries": len(queries), "backends": results, "other_model": other}


def cold_start(args: argparse.Namespace, backends: list[str], work: Path) -> dict:
    lines = CORPUS.read(Path(args.data) / "corpus.jsonl")[: args.cold_index_lines]
    corpus = work / "cold_corpus.jsonl"
    CORPUS.write(corpus, lines)
    for name in backends:
        config = IndexConfig(model=args.model, corpus=str(corpus), out=str(work / f"index-{name}"), backend=name)
        build_index(config)
    runs: dict[str, list[dict]] = {name: [] for name in backends}
    for number in range(args.cold_runs):
        for name in backends[number % len(backends) :] + backends[: number % len(backends)]:
            command = [
                sys.executable,
                "-m",
                "st_poetry",
                "search",
                "--index",
                str(work / f"index-{name}"),
            ]
            runs[name].append(
                run_measured([*command, "--top-k", "1", "山中下雨后傍晚的秋天"], work / f"cold-{name}.log")
            )
    return {
        name: {
            "seconds_median": round(statistics.median(run["seconds"] for run in measured), 2),
            "seconds": [run["seconds"] for run in measured],
            "peak_rss_mib": max(run["peak_rss_mib"] for run in measured),
        }
        for name, measured in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder `just export` wrote every backend into")
    parser.add_argument("--data", default="data/processed", help="a `just prepare` folder")
    parser.add_argument("--part", choices=("speed", "cold", "quality"), required=True)
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), help="torch first")
    parser.add_argument("--sample", type=int, default=20000, help="corpus lines per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200, help="single-query encodes per backend")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--cold-index-lines", type=int, default=2000)
    parser.add_argument("--cold-runs", type=int, default=2)
    parser.add_argument("--other-model", help="another model, for the probe cosine between two models")
    parser.add_argument("--max-corpus", type=int, default=20000, help="quality: corpus cap (every relevant line kept)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=".bench/encode")
    args = parser.parse_args()
    if args.backend[0] != "torch":
        parser.error("--backend must start with torch: ratios are to torch")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "environment": environment()}
    if args.part == "speed":
        result["speed"] = speed(args, args.backend)
    elif args.part == "cold":
        result["cold_start"] = cold_start(args, args.backend, out)
    else:
        report = evaluate(
            EvaluateConfig(
                data=args.data,
                model=[args.model],
                backend=args.backend,
                out=str(out / "evaluation"),
                bm25=False,
                max_corpus=args.max_corpus,
                batch_size=args.batch_size,
                max_seq_length=args.max_seq_length,
                seed=args.seed,
            )
        )
        result["quality"] = report
    result["environment"]["load_average_at_end"] = os.getloadavg()
    (out / f"{args.part}.json").write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({key: value for key, value in result.items() if key != "quality"}, indent=2, ensure_ascii=False))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    print(f"wrote {out / args.part}.json at commit {commit.strip()}")
    write_result(f"encode-{args.part}", result, args, summary=encode_summary(result))


def encode_summary(result: dict) -> dict:
    """Per backend: lines/s as a ratio to torch, torch's own (speed), median seconds (cold), R@1 (quality)."""
    if "speed" in result:
        backends = result["speed"]["backends"]
        summary = {"torch lines/s": backends["torch"]["lines_per_s_median"]}
        return summary | {
            f"{name} x torch": row["ratio_to_torch_median"] for name, row in backends.items() if name != "torch"
        }
    if "cold_start" in result:
        return {f"{name} s": row["seconds_median"] for name, row in result["cold_start"].items()}
    return {f"{row['name']} R@1": round(row["retrieval"]["recall@1"], 4) for row in result["quality"]["rows"]}


if __name__ == "__main__":
    main()
