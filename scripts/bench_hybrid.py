"""What hybrid search adds to a query: BM25 scoring + candidate union + fusion, per query, on the whole corpus.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_hybrid.py --data data/processed

The BM25 side is real: the character index `just index` stores (`retrieval.lexical.build_bm25`) over every line
of `corpus.jsonl`, queried with the eval split's descriptions. The dense side is a flat faiss index of random
unit vectors of the model's size (384 = e5-small): what hybrid search adds (BM25 scores of the whole corpus, the
candidates' vectors, the fusion) costs the same whatever the vectors hold, and no model has to encode 133k lines
for it. Query encoding is left out: it is the same with or without BM25.

Reported: BM25 build time and size on disk, load time (memory-mapped and not), and the latency of one query
(batch 1, as `just search` runs one description), dense alone against dense + BM25 + fusion, p50/p95.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import bm25s
import faiss
import numpy as np
from benchlib import write_result

from st_poetry.core.config import FusionOptions
from st_poetry.core.schema import read_split
from st_poetry.retrieval.hybrid import candidates, fuse, ranking
from st_poetry.retrieval.lexical import BM25_TOKENIZERS, HYBRID_LEXICAL, build_bm25
from st_poetry.retrieval.search import read_corpus


def percentiles(times: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/processed", help="a `just prepare` folder (corpus.jsonl, eval.jsonl)")
    parser.add_argument("--queries", type=int, default=500, help="eval descriptions to time, one at a time")
    parser.add_argument("--dim", type=int, default=384, help="embedding size of the dense side")
    parser.add_argument("--depths", type=int, nargs="+", default=[FusionOptions().depth, 100])
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--out", default=".bench/hybrid")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    texts = [row["text"] for row in read_corpus(data / "corpus.jsonl")]
    anchors = list(dict.fromkeys(row["anchor"] for row in read_split(data / "eval.jsonl").rows))
    queries = anchors[: args.queries]
    tokenize = BM25_TOKENIZERS[HYBRID_LEXICAL]
    result: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "corpus": len(texts),
        "queries": len(queries),
    }

    start = time.perf_counter()
    bm25 = build_bm25(texts, tokenize)
    result["bm25_build_s"] = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory(dir=out) as folder:
        bm25.save(folder, show_progress=False)
        result["bm25_mb"] = round(sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**20, 1)
        for mmap in (True, False):
            start = time.perf_counter()
            loaded = bm25s.BM25.load(folder, mmap=mmap, show_progress=False)
            result[f"bm25_load_s_mmap_{mmap}"] = round(time.perf_counter() - start, 3)
        bm25 = bm25s.BM25.load(folder, mmap=True, show_progress=False)  # as `just search` opens it
        del loaded

        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((len(texts), args.dim), dtype=np.float32)
        faiss.normalize_L2(vectors)
        index = faiss.IndexFlatIP(args.dim)
        index.add(vectors)
        result["faiss_mb"] = round(vectors.nbytes / 2**20, 1)
        embeddings = rng.standard_normal((len(queries), args.dim), dtype=np.float32)
        faiss.normalize_L2(embeddings)
        tokens = [tokenize(query) for query in queries]

        dense = []
        for row in range(len(queries)):
            tick = time.perf_counter()
            index.search(embeddings[row : row + 1], args.top_k)
            dense.append(time.perf_counter() - tick)
        result["dense"] = percentiles(dense)
        for depth in args.depths:
            options = FusionOptions(hybrid=True, depth=depth)
            hybrid, added = [], []
            for row in range(len(queries)):
                tick = time.perf_counter()
                found = candidates(index, embeddings[row : row + 1], bm25, tokens[row : row + 1], depth)
                ranking(found, fuse(found, options), args.top_k)
                hybrid.append(time.perf_counter() - tick)
                added.append(hybrid[-1] - dense[row])
            result[f"hybrid_depth_{depth}"] = {**percentiles(hybrid), "added": percentiles(added)}

    (out / "bench.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    depth = args.depths[0]
    summary = {"corpus lines": result["corpus"], "dense p50 ms": result["dense"]["p50_ms"]}
    summary |= {
        f"BM25 + fusion added p{p}, depth {depth}, ms": result[f"hybrid_depth_{depth}"]["added"][f"p{p}_ms"]
        for p in (50, 95)
    }
    summary |= {"BM25 MB": result["bm25_mb"], "BM25 build s": result["bm25_build_s"]}
    write_result("hybrid", result, args, summary=summary)


if __name__ == "__main__":
    main()
