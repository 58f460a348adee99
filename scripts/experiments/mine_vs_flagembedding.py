"""`just mine` against FlagEmbedding's hn_mine.py: same model, pairs, candidate pool and negatives, time and memory.

    flock /tmp/st_poetry_heavy.lock python scripts/experiments/mine_vs_flagembedding.py --model models/e5-small-zh \
        --fe-python .bench/fe4-venv/bin/python --fe-script FlagEmbedding/scripts/hn_mine.py --corpus 20000 --pairs 2000

Both miners get the same seeded train pairs and candidate pool (all positives included) and run as subprocesses,
one after the other, without a cache; the kernel gives each one's wall time and peak resident memory (wait4).
FlagEmbedding needs its own virtual environment (`--fe-python`) and its repository's scripts/hn_mine.py
(`--fe-script`). Was `python scripts/bench_mine.py flagembedding`; see scripts/experiments/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, for benchlib and bench_mine
from bench_mine import mine_command
from benchlib import ROOT, run_measured

from st_poetry.core.files import write_jsonl
from st_poetry.core.schema import CORPUS, PAIR


def bench_flagembedding(args: argparse.Namespace) -> dict:
    from st_poetry.core.modeling import load_model

    data = Path(args.data)
    rng = random.Random(args.seed)
    train = PAIR.read(data / "train.jsonl")
    pairs = rng.sample(train, min(args.pairs, len(train)))
    corpus = CORPUS.read(data / "corpus.jsonl")
    needed = {r["positive"] for r in pairs}
    others = [r for r in corpus if r["text"] not in needed]
    pool = [r for r in corpus if r["text"] in needed] + rng.sample(others, max(0, args.corpus - len(needed)))

    work = Path(tempfile.mkdtemp(prefix="bench-mine-", dir=ROOT / ".bench"))
    ours = work / "prepared"
    ours.mkdir()
    PAIR.write(ours / "train.jsonl", [r | {"negatives": []} for r in pairs])
    PAIR.write(ours / "eval.jsonl", [])
    CORPUS.write(ours / "corpus.jsonl", pool)

    # hn_mine.py has a query instruction but no passage prompt: prefix the pool and positives with the model's
    # document prompt ourselves, so both miners encode exactly the same strings.
    prompts = load_model(args.model).prompts
    doc, query = prompts.get("document", ""), prompts.get("query", "")
    write_jsonl(work / "fe_input.jsonl", [{"query": r["anchor"], "pos": [doc + r["positive"]]} for r in pairs])
    write_jsonl(work / "fe_pool.jsonl", [{"text": doc + r["text"]} for r in pool])
    fe_command = [
        args.fe_python,
        args.fe_script,
        "--embedder_name_or_path",
        args.model,
        "--embedder_model_class",
        "encoder-only-base",
        "--pooling_method",
        args.fe_pooling,
        "--normalize_embeddings",
        "True",
        "--use_fp16",
        "False",
        "--devices",
        "cpu",
        "--query_instruction_for_retrieval",
        query,
        "--batch_size",
        str(args.batch_size),
        "--embedder_query_max_length",
        str(args.max_seq_length),
        "--embedder_passage_max_length",
        str(args.max_seq_length),
        "--input_file",
        str(work / "fe_input.jsonl"),
        "--output_file",
        str(work / "fe_output.jsonl"),
        "--candidate_pool",
        str(work / "fe_pool.jsonl"),
        "--range_for_sampling",
        f"{args.range_min}-{args.range_max}",
        "--negative_number",
        str(args.num_negatives),
    ]
    results = {
        "pairs": len(pairs),
        "corpus": len(pool),
        "st_poetry": run_measured(mine_command(ours, work / "mined", args.model, args), work / "st_poetry.log"),
        "flagembedding": run_measured(fe_command, work / "flagembedding.log"),
    }
    stats = json.loads((work / "mined" / "mine_stats.json").read_text())["train"]
    results["st_poetry"] |= {k: stats[k] for k in ("encode_seconds", "search_seconds", "short_rows")}
    results["ratio_flagembedding_over_st_poetry"] = round(
        results["flagembedding"]["seconds"] / results["st_poetry"]["seconds"], 2
    )
    results["work"] = str(work)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/processed", help="prepared folder")
    parser.add_argument("--model", default="models/e5-small-zh")
    parser.add_argument("--num-negatives", type=int, default=9)
    parser.add_argument("--range-min", type=int, default=10)
    parser.add_argument("--range-max", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=2000, help="train pairs sampled")
    parser.add_argument("--corpus", type=int, default=20000, help="candidate pool size")
    parser.add_argument("--fe-python", default=".bench/fe4-venv/bin/python", help="a venv with FlagEmbedding")
    parser.add_argument("--fe-script", default=".bench/hn_mine.py", help="FlagEmbedding's scripts/hn_mine.py")
    parser.add_argument("--fe-pooling", default="mean", help="the model's pooling, in hn_mine.py's words")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the results here as JSON")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = bench_flagembedding(args)
    results["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    text = json.dumps(results, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
