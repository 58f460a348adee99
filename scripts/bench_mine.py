"""`just mine`: false negatives by rank and what each range gives (ranges), cost against corpus size (scale, pool).

    # which ranks hold false negatives, and what each (range, sampling) choice gives, on the eval split
    python scripts/bench_mine.py ranges --model models/e5-small-zh
    # time and peak memory against corpus size (synthetic lines, the test suite's tiny random BERT)
    flock /tmp/st_poetry_heavy.lock python scripts/bench_mine.py scale --sizes 10000 100000 1000000
    # `--max-corpus` candidate pools of two sizes on a slice of the prepared rows, extrapolated to the whole corpus
    flock /tmp/st_poetry_heavy.lock python scripts/bench_mine.py pool --data data/processed --pairs 500 \
        --sizes 4000 12000

`ranges` reads the prepared folder and reuses the corpus embeddings `just mine` cached (same model, same
`--cache-folder`). `scale` runs each miner as a subprocess, one after the other, without a cache, and reads its
wall time and peak resident memory from the kernel (wait4). `pool` does the same with a fresh cache per run (as
`just mine` caches by default, so eval reuses train's corpus embeddings). The race against FlagEmbedding's
hn_mine.py is scripts/experiments/mine_vs_flagembedding.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchlib import ROOT, run_measured, write_result

from st_poetry.core.schema import CORPUS, PAIR, read_split


def mine_command(data: Path, out: Path, model: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "st_poetry",
        "mine",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        model,
        "--cache-folder",
        "none",
        "--num-negatives",
        str(args.num_negatives),
        "--range-min",
        str(args.range_min),
        "--range-max",
        str(args.range_max),
        "--batch-size",
        str(args.batch_size),
        "--max-seq-length",
        str(args.max_seq_length),
    ]


# ---------------------------------------------------------------------------------------------------------
# ranges: where do false negatives sit, and what does each (range, sampling) choice give?


def bench_ranges(args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from st_poetry.core.config import MineConfig
    from st_poetry.core.modeling import load_model
    from st_poetry.training.mine import assemble, candidate_texts, groups_by_text, model_fingerprint, read_prepared

    data = read_prepared(Path(args.data))
    rows = data.eval
    model = load_model(args.model, max_seq_length=args.max_seq_length)
    cache = str(Path(args.cache_folder) / model_fingerprint(model))
    corpus = candidate_texts(data)
    # every candidate in ranks 0..max_rank with its score: no margin, so ranks are the raw model ranks
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]}),
        model,
        corpus=corpus,
        range_min=0,
        range_max=args.max_rank,
        num_negatives=args.max_rank,
        output_format="labeled-list",
        output_scores=True,
        batch_size=args.batch_size,
        use_faiss=True,
        cache_folder=cache,
        verbose=False,
    )
    pools = {(m["anchor"], m["positive"][0]): (m["positive"][1:], m["scores"]) for m in mined}
    groups = groups_by_text(data)
    probe = MineConfig(num_negatives=1, range_min=0, range_max=1)

    def known_false_negative(row: dict, text: str) -> str | None:
        """Our filters' verdict on a lone candidate (same poem, same text, holds the positive), None if it passes."""
        drops = {"given": Counter(), "mined": Counter()}
        assemble(row | {"negatives": []}, [text], groups, set(), probe, random.Random(0), drops)
        return next(iter(drops["mined"]), None)

    # 1. per rank bucket: share of candidates our filters catch, share inside the 5% relative margin, mean score
    edges = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]
    buckets = [(a, min(b, args.max_rank)) for a, b in itertools.pairwise(edges) if a < args.max_rank]
    per_bucket = {f"{a}-{b}": Counter() for a, b in buckets}
    verdicts = {}
    for row in rows:
        key = (row["anchor"], row["positive"])
        texts, scores = pools.get(key, ([], [1.0]))
        threshold = scores[0] - abs(scores[0]) * 0.05
        verdicts[key] = [known_false_negative(row, t) for t in texts]
        for rank, (score, verdict) in enumerate(zip(scores[1:], verdicts[key], strict=True)):
            a, b = next((a, b) for a, b in buckets if a <= rank < b)
            bucket = per_bucket[f"{a}-{b}"]
            bucket["candidates"] += 1
            bucket["known_false_negative"] += verdict is not None
            bucket["within_margin"] += score > threshold
            bucket["score_sum"] += score
    bucket_table = {
        name: {
            "candidates": c["candidates"],
            "known_false_negative": round(c["known_false_negative"] / max(c["candidates"], 1), 4),
            "within_5pct_margin": round(c["within_margin"] / max(c["candidates"], 1), 4),
            "mean_score": round(c["score_sum"] / max(c["candidates"], 1), 4),
        }
        for name, c in per_bucket.items()
    }

    # 2. per (range, sampling): what the library + our filters would give, and what FlagEmbedding's rule gives
    choices = {}
    for spec, margin in [(spec, margin) for spec in args.ranges for margin in args.margins]:
        range_min, range_max = (int(x) for x in spec.split("-"))
        for strategy in ("top", "random"):
            config = MineConfig(
                num_negatives=args.num_negatives,
                range_min=range_min,
                range_max=range_max,
                sampling_strategy=strategy,
            )
            rng = random.Random(0)
            totals, drops = Counter(), {"given": Counter(), "mined": Counter()}
            gaps = []
            for row in rows:
                texts, scores = pools.get((row["anchor"], row["positive"]), ([], [1.0]))
                threshold = scores[0] - abs(scores[0]) * margin
                score_of = dict(zip(texts, scores[1:], strict=True))
                # as the library does: margin first, then ranks range_min..range_max of the survivors
                window = [
                    t for t, s in zip(texts[:range_max], scores[1 : range_max + 1], strict=True) if s <= threshold
                ]
                negatives, n_mined = assemble(row, window[range_min:], groups, set(), config, rng, drops)
                totals["rows"] += 1
                totals["short"] += len(negatives) < config.num_negatives
                for text in negatives[len(negatives) - n_mined :]:
                    gaps.append(scores[0] - score_of[text])
                    totals["mined"] += 1
            choices[f"{spec} margin {margin} {strategy}"] = {
                "short_rows": round(totals["short"] / totals["rows"], 4),
                "mined_per_row": round(totals["mined"] / totals["rows"], 2),
                "mean_gap_to_positive": round(statistics.fmean(gaps), 4) if gaps else None,
                "filtered": dict(drops["mined"]),
            }
        if f"{spec} flagembedding" in choices:
            continue
        # FlagEmbedding's hn_mine on the same ranks: random sample, only the positive and the query text excluded
        caught, sampled = 0, 0
        rng = random.Random(0)
        for row in rows:
            key = (row["anchor"], row["positive"])
            window = list(range(len(pools.get(key, ([], []))[0])))[range_min:range_max]
            for i in rng.sample(window, min(args.num_negatives, len(window))):
                sampled += 1
                caught += verdicts[key][i] is not None
        choices[f"{spec} flagembedding"] = {"known_false_negative_share": round(caught / max(sampled, 1), 4)}

    # how many candidates the base model puts above the gold line: they all sit in the top ranks
    above = Counter()
    for row in rows:
        texts, scores = pools.get((row["anchor"], row["positive"]), ([], [1.0]))
        count = sum(s > scores[0] for s in scores[1:])
        above[
            "0" if count == 0 else "1" if count == 1 else "2-4" if count < 5 else "5-9" if count < 10 else ">=10"
        ] += 1
    return {
        "eval_rows": len(rows),
        "corpus": len(corpus),
        "rank_buckets": bucket_table,
        "choices": choices,
        "candidates_above_positive": {k: round(v / len(rows), 4) for k, v in above.items()},
    }


# ---------------------------------------------------------------------------------------------------------
# scale: synthetic corpora of growing size, a fixed set of queries, the tiny random BERT


def synthetic_lines(count: int, rng: random.Random, lengths: tuple[int, int]) -> list[str]:
    """Distinct random strings of common CJK characters, as long as poetry lines (or their descriptions)."""
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    lines: dict[str, None] = {}
    while len(lines) < count:
        lines["".join(rng.choices(alphabet, k=rng.randint(*lengths)))] = None
    return list(lines)


def bench_scale(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _build_tiny_bert  # the test suite's random-init BERT with a CJK character vocabulary

    work = Path(tempfile.mkdtemp(prefix="bench-mine-scale-", dir=ROOT / ".bench"))
    model = str(_build_tiny_bert(work / "tiny-bert"))
    rng = random.Random(args.seed)
    results = {"queries": args.queries, "model": "tiny random BERT (2 layers, hidden 32)", "sizes": {}}
    for size in args.sizes:
        folder = work / f"prepared-{size}"
        folder.mkdir()
        lines = synthetic_lines(size, rng, (5, 14))
        anchors = synthetic_lines(args.queries, rng, (10, 24))
        CORPUS.write(
            folder / "corpus.jsonl",
            [{"id": f"c{i}", "text": t, "group": f"g{i // 4}"} for i, t in enumerate(lines)],
        )
        pairs = [
            {"anchor": a, "positive": lines[i], "negatives": [], "group": f"g{i // 4}"}
            for a, i in zip(anchors, rng.sample(range(size), args.queries), strict=True)
        ]
        PAIR.write(folder / "train.jsonl", pairs)
        PAIR.write(folder / "eval.jsonl", [])
        measured = run_measured(mine_command(folder, work / f"mined-{size}", model, args), work / f"mine-{size}.log")
        stats = json.loads((work / f"mined-{size}" / "mine_stats.json").read_text())["train"]
        results["sizes"][size] = measured | {k: stats[k] for k in ("encode_seconds", "search_seconds")}
        print(size, results["sizes"][size], flush=True)
    return results


# ---------------------------------------------------------------------------------------------------------
# pool: `--max-corpus` on a slice of the real prepared rows, the real model; the whole corpus extrapolated


def bench_pool(args: argparse.Namespace) -> dict:
    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-mine-pool-", dir=ROOT / ".bench"))
    folder = work / "slice"
    folder.mkdir()
    rng = random.Random(args.seed)
    rows = {split: read_split(data / f"{split}.jsonl", accept=(PAIR,)).rows for split in ("train", "eval")}
    sliced = {"train": args.pairs, "eval": max(1, args.pairs // 10)}
    for split, count in sliced.items():
        PAIR.write(folder / f"{split}.jsonl", rng.sample(rows[split], min(count, len(rows[split]))))
    shutil.copyfile(data / "corpus.jsonl", folder / "corpus.jsonl")
    with open(data / "corpus.jsonl", encoding="utf-8") as handle:
        corpus_size = sum(1 for _ in handle)
    results = {"model": args.model, "corpus_lines": corpus_size, "rows": {k: len(v) for k, v in rows.items()}}
    results |= {"slice": sliced, "sizes": {}}
    for size in args.sizes:
        out, cache = work / f"mined-{size}", work / f"cache-{size}"
        command = [*mine_command(folder, out, args.model, args), "--max-corpus", str(size)]
        command += ["--cache-folder", str(cache)]
        measured = run_measured(command, work / f"mine-{size}.log")
        stats = json.loads((out / "mine_stats.json").read_text())
        keys = ("encode_seconds", "search_seconds", "encoded_texts")
        results["sizes"][size] = measured | {k: sum(stats[split][k] for split in ("train", "eval")) for k in keys}
        print(size, results["sizes"][size], flush=True)
    # Extrapolated, not measured: encoding is linear in the texts encoded (the pool once, cached, plus every
    # description). The exact search (descriptions x candidates) is scaled from scripts/bench_search.py instead:
    # at these pool sizes its fixed costs hide the part that grows.
    small, large = (results["sizes"][size] for size in sorted(args.sizes)[:1] + sorted(args.sizes)[-1:])
    per_text = (large["encode_seconds"] - small["encode_seconds"]) / (large["encoded_texts"] - small["encoded_texts"])
    queries = sum(len(v) for v in rows.values())
    results["extrapolated_encode_hours"] = {
        str(pool): round((pool + queries) * per_text / 3600, 2) for pool in (*args.extrapolate, corpus_size)
    }
    results["encode_seconds_per_text"] = per_text
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("ranges", "scale", "pool"))
    parser.add_argument("--data", default="data/processed", help="prepared folder (ranges, pool)")
    parser.add_argument("--model", default="models/e5-small-zh")
    parser.add_argument("--cache-folder", default="data/cache", help="ranges: where `just mine` cached embeddings")
    parser.add_argument("--max-rank", type=int, default=100, help="ranges: deepest rank looked at")
    parser.add_argument("--ranges", nargs="+", default=["0-20", "2-20", "5-30", "10-50", "20-60", "30-100"])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.05, 0.02, 0.0], help="ranges: relative margins")
    parser.add_argument("--num-negatives", type=int, default=9)
    parser.add_argument("--range-min", type=int, default=10)
    parser.add_argument("--range-max", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=2000, help="pool: train pairs sampled")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2000, help="scale: queries per corpus size")
    parser.add_argument(
        "--extrapolate", type=int, nargs="+", default=[200_000], help="pool: pool sizes to extrapolate to"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the results here as JSON")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    modes = {"ranges": bench_ranges, "scale": bench_scale, "pool": bench_pool}
    results = modes[args.mode](args)
    results["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    text = json.dumps(results, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    write_result(f"mine-{args.mode}", results, args, summary=mine_summary(args.mode, results))


def mine_summary(mode: str, results: dict) -> dict:
    """ranges: the known false negatives at the top ranks and at the default range's start, and the rows it leaves
    short; scale and pool: wall seconds and peak memory per size."""
    if mode == "ranges":
        buckets = results["rank_buckets"]
        summary = {"eval rows": results["eval_rows"]}
        summary |= {
            f"false negatives, ranks {b}": buckets[b]["known_false_negative"] for b in ("0-1", "10-20") if b in buckets
        }
        for choice in ("10-50 margin 0.0 top", "10-50 margin 0.05 top"):
            if choice in results["choices"]:
                summary[f"short rows, {choice}"] = results["choices"][choice]["short_rows"]
        return summary
    summary = {}
    for size, run in results["sizes"].items():
        summary[f"{int(size):,} s"] = run["seconds"]
        summary[f"{int(size):,} peak MiB"] = run["peak_rss_mib"]
    return summary


if __name__ == "__main__":
    main()
