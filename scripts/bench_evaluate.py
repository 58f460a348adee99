"""Encode throughput of `st_poetry.evaluation.evaluate`'s retrieval path against raw `SentenceTransformer.encode`.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_evaluate.py --model models/e5-small-zh

Evaluating a model over a 100k-line corpus is dominated by encoding, so our path (build_ir_evaluator +
retrieval_metrics: encode queries and corpus, score, rank, compute metrics) should run at the speed of the
bare encode calls: same model object, texts, prompts, batch size and token limit. The two alternate for
`--repeats` rounds after a warm-up and the best round of each counts. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchlib import write_result

from st_poetry.core.modeling import load_model
from st_poetry.core.schema import CORPUS, read_split
from st_poetry.evaluation.metrics import build_ir_evaluator, retrieval_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--data", default="data/processed", help="prepared folder (eval.jsonl, corpus.jsonl)")
    parser.add_argument("--lines", type=int, default=3000, help="corpus lines (relevant ones + sampled distractors)")
    parser.add_argument("--queries", type=int, default=200, help="eval queries")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    data = Path(args.data)
    eval_rows = read_split(data / "eval.jsonl").rows[: args.queries]
    corpus_rows = CORPUS.read(data / "corpus.jsonl")
    model = load_model(args.model, max_seq_length=args.max_seq_length)
    evaluator = build_ir_evaluator(
        eval_rows, corpus_rows, max_corpus=args.lines, batch_size=args.batch_size, show_progress_bar=False
    )
    texts = len(evaluator.queries) + len(evaluator.corpus)

    def ours() -> None:
        retrieval_metrics(evaluator, model)

    def raw() -> None:
        model.encode_query(evaluator.queries, batch_size=args.batch_size)
        model.encode_document(evaluator.corpus, batch_size=args.batch_size)

    model.encode(evaluator.corpus[:256], batch_size=args.batch_size)  # warm-up: allocator, thread pools
    best = {"evaluate": float("inf"), "raw_encode": float("inf")}
    for _ in range(args.repeats):
        for name, run in (("evaluate", ours), ("raw_encode", raw)):
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)

    rates = {name: texts / seconds for name, seconds in best.items()}
    result = {
        "model": args.model,
        "queries": len(evaluator.queries),
        "corpus_lines": len(evaluator.corpus),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "device": str(model.device),
        "seconds": {name: round(seconds, 2) for name, seconds in best.items()},
        "texts_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "ratio_evaluate_vs_raw": round(rates["evaluate"] / rates["raw_encode"], 3),
    }
    print(
        f"{texts:,} texts ({result['queries']} queries + {result['corpus_lines']:,} lines), batch {args.batch_size}: "
        f"evaluate {rates['evaluate']:.1f} texts/s, raw encode {rates['raw_encode']:.1f} texts/s, "
        f"ratio {result['ratio_evaluate_vs_raw']:.3f}"
    )
    print(json.dumps(result))
    summary = {f"{name} texts/s": rate for name, rate in result["texts_per_s"].items()}
    summary |= {"ratio evaluate / raw": result["ratio_evaluate_vs_raw"], "texts": texts}
    write_result("evaluate", result, args, summary=summary)


if __name__ == "__main__":
    main()
