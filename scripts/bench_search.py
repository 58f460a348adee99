"""Compressed (sq8, pq4-sq8) and approximate (HNSW) against exact (flat inner product) search: recall, speed, memory.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_search.py               # 1M synthetic vectors, dim 384
    flock /tmp/st_poetry_heavy.lock python scripts/bench_search.py --vectors indexes/poetry   # a real index
    flock /tmp/st_poetry_heavy.lock python scripts/bench_search.py --vectors indexes/poetry \
        --queries-from data/processed/eval.jsonl --types sq8 hnsw-sq8     # real descriptions as queries
    flock /tmp/st_poetry_heavy.lock python scripts/bench_search.py --n 1680103 --types   # flat only, the corpus

The synthetic corpus is a mixture of Gaussian clusters (random centres, per-dimension noise as large as the
centre's), normalized to unit length like sentence embeddings; the queries are fresh draws from the same mixture,
not corpus points. No model is involved: this measures the faiss index, which is all that changes between the
two index types (query encoding costs the same either way). With `--vectors DIR` the exact vectors of an index
built by `just index` are used instead, and a held-out sample of them serves as queries; with `--queries-from
JSONL` the first --queries descriptions (`anchor`) of that file, encoded by the index's model with its query
prompt, are the queries and the whole index is the corpus.

Both indexes are made by `st_poetry.retrieval.search.new_faiss_index` with `IndexConfig`'s defaults, i.e. what
`just index --index-type hnsw` builds. Reported: recall@k of HNSW against the exact top k (per efSearch), build
time, latency p50/p95 for one query and for batches, resident memory added by each index and its size on disk,
and for each index type the memory of a fresh process that opens the file as `PoetryIndex` does (memory-mapped,
`read_faiss`) or reads it whole, then searches the queries: its USS (pages only it holds) and its RSS. For the
8-bit types, the error of the dense score a hybrid search gives a candidate (`reconstruct_batch` . query, the
dequantized vector) against the exact cosine, over each query's exact top 100.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from benchlib import write_result

from st_poetry.core.config import IndexConfig
from st_poetry.core.files import read_jsonl
from st_poetry.retrieval.search import (
    FAISS_FILE,
    REFINE_CANDIDATES,
    TRAIN_SAMPLE,
    VECTORS_FILE,
    PoetryIndex,
    RefinedIndex,
    RescoredIndex,
    new_faiss_index,
    training_rows,
)


def rss_mb() -> float:
    """Current resident memory of this process (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic(n: int, dim: int, clusters: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors from a Gaussian mixture; generated in chunks so the peak stays near the final array."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += rng.standard_normal(block.shape, dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def real_vectors(folder: Path, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An index folder's exact vectors; `queries` of them are held out as queries."""
    vectors = flat_vectors(folder)
    held_out = np.zeros(len(vectors), dtype=bool)
    held_out[np.random.default_rng(seed).choice(len(vectors), queries, replace=False)] = True
    return vectors[~held_out], vectors[held_out]


def flat_vectors(folder: Path) -> np.ndarray:
    """An index folder's exact vectors: an 8-bit index's vectors.npy, or a flat index's own."""
    if (folder / VECTORS_FILE).is_file():
        return np.load(folder / VECTORS_FILE)
    index = faiss.read_index(str(folder / FAISS_FILE))
    return index.reconstruct_n(0, index.ntotal)


def encoded_queries(folder: Path, path: Path, n: int, model: str | None) -> np.ndarray:
    """The first n descriptions of a pairs file, encoded as `just search` encodes them."""
    texts = [row["anchor"] for _, row in read_jsonl(path)][:n]
    return PoetryIndex(folder, model=model).encode_queries(texts)


# Run in a fresh process: open an index file one way, search the queries, print its memory (psutil).
OPEN_AND_SEARCH = """
import sys, json, faiss, numpy as np, psutil
from st_poetry.retrieval.search import read_faiss
process = psutil.Process()
before = process.memory_full_info()
index = read_faiss(__import__("pathlib").Path(sys.argv[1])) if sys.argv[2] == "mmap" else faiss.read_index(sys.argv[1])
index.search(np.load(sys.argv[3]), 10)
after = process.memory_full_info()
grown = {key: (getattr(after, key) - getattr(before, key)) / 2**20 for key in ("rss", "uss", "pss", "shared")}
print(json.dumps({key: round(value, 1) for key, value in grown.items()}))
"""


def open_memory(path: str, queries: np.ndarray, tmp: str) -> dict[str, dict[str, float]]:
    """Memory (MB) a fresh process adds by opening the index file memory-mapped or read whole, then searching."""
    np.save(f"{tmp}/queries.npy", queries)
    found = {}
    for how in ("mmap", "read"):
        command = [sys.executable, "-c", OPEN_AND_SEARCH, path, how, f"{tmp}/queries.npy"]
        found[how] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return found


def score_error(index: faiss.Index, corpus: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray) -> dict:
    """|reconstructed . query - exact cosine| over each query's candidates (`exact_ids`), as hybrid search gets them."""
    pairs = zip(queries, exact_ids, strict=True)
    errors = np.concatenate([np.abs(index.reconstruct_batch(ids) @ q - corpus[ids] @ q) for q, ids in pairs])
    return {"mean": float(errors.mean()), "p99": float(np.percentile(errors, 99)), "max": float(errors.max())}


def latencies_ms(index: faiss.Index, queries: np.ndarray, k: int, batch: int, repeats: int) -> dict[str, float]:
    """p50/p95 wall time of `repeats` search calls of `batch` queries each, and the resulting queries per second."""
    times = []
    for call in range(repeats):
        start = (call * batch) % (len(queries) - batch + 1)
        tick = time.perf_counter()
        index.search(queries[start : start + batch], k)
        times.append((time.perf_counter() - tick) * 1000)
    p50, p95 = np.percentile(times, [50, 95])
    return {"batch": batch, "p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "qps": round(batch * 1000 / p50, 1)}


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def measure(kind: str, corpus: np.ndarray, args: argparse.Namespace) -> tuple[faiss.Index, float, float, float]:
    """Build one index type; returns (index, build seconds, RSS added in MB, size on disk in MB)."""
    config = IndexConfig(index_type=kind, hnsw_m=args.hnsw_m, hnsw_ef_construction=args.hnsw_ef_construction)
    before = rss_mb()
    tick = time.perf_counter()
    index = new_faiss_index(config, corpus.shape[1])
    if not index.is_trained:
        index.train(corpus[training_rows(len(corpus), TRAIN_SAMPLE)])  # what `just index` trains on
    index.add(corpus)
    build = time.perf_counter() - tick
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        faiss.write_index(index, f"{tmp}/index.faiss")
        size = os.path.getsize(f"{tmp}/index.faiss") / 2**20
        memory = open_memory(f"{tmp}/index.faiss", args.query_vectors, tmp)
    print(f"{kind}: build {build:.1f}s, {size:.0f} MB on disk, opened: {memory}")
    return index, build, rss_mb() - before, size, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic corpus size")
    parser.add_argument("--dim", type=int, default=384, help="synthetic vector size (e5-small's is 384)")
    parser.add_argument("--clusters", type=int, default=1000, help="synthetic mixture components")
    parser.add_argument("--vectors", type=Path, help="use an index folder's exact vectors instead of synthetic ones")
    parser.add_argument("--queries-from", type=Path, help="with --vectors: encode these pairs' descriptions as queries")
    parser.add_argument("--model", help="with --queries-from: the index's model, when its recorded path is elsewhere")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall")
    parser.add_argument("--k", type=int, default=10, help="recall@k and the k of every search")
    parser.add_argument(
        "--types", nargs="*", default=["hnsw"], help="index types measured against flat (sq8, pq4-sq8, hnsw, hnsw-sq8)"
    )
    parser.add_argument(
        "--refine-candidates",
        type=int,
        nargs="+",
        default=[REFINE_CANDIDATES],
        help="pq4-sq8: the 4-bit scan's candidates reordered by the 8-bit codes",
    )
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m)
    parser.add_argument("--hnsw-ef-construction", type=int, default=IndexConfig.hnsw_ef_construction)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256], help="query batch sizes to time")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per batch size (fewer for big batches)")
    parser.add_argument("--no-hnsw", action="store_true", help="the same as --types with nothing after it")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmp", default=None, help="folder for the index files whose size is measured")
    parser.add_argument("--out", type=Path, default=Path(".bench/bench_search.json"))
    parser.add_argument("--result", help="result name (default: search, or search-compressed with --queries-from)")
    args = parser.parse_args()
    types = [] if args.no_hnsw else args.types

    tick = time.perf_counter()
    if args.vectors and args.queries_from:
        corpus = flat_vectors(args.vectors)
        queries = encoded_queries(args.vectors, args.queries_from, args.queries, args.model)
        source = f"vectors of {args.vectors}; queries: {len(queries)} descriptions of {args.queries_from}, encoded"
    elif args.vectors:
        corpus, queries = real_vectors(args.vectors, args.queries, args.seed)
        source = f"vectors of {args.vectors}; queries: {len(queries)} held-out corpus vectors"
    else:
        corpus = synthetic(args.n, args.dim, args.clusters, args.seed)
        queries = synthetic(args.queries, args.dim, args.clusters, args.seed + 1)
        source = f"synthetic: {args.clusters}-cluster Gaussian mixture, unit vectors"
    args.query_vectors = queries
    elapsed = time.perf_counter() - tick
    print(f"{source}: {len(corpus):,} x {corpus.shape[1]} corpus, {len(queries)} queries ({elapsed:.0f}s)")
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs")

    def timings(index: faiss.Index) -> list[dict]:
        # large batches are slow on a flat index: time fewer of them
        return [latencies_ms(index, queries, args.k, b, max(5, args.repeats // b)) for b in args.batches]

    flat, flat_build, flat_rss, flat_size, flat_memory = measure("flat", corpus, args)
    tick = time.perf_counter()
    _, exact = flat.search(queries, args.k)
    _, candidates = flat.search(queries, 100)
    print(
        f"flat: add {flat_build:.1f}s, exact top-{args.k} of {len(queries)} queries {time.perf_counter() - tick:.1f}s"
    )
    exact_row = {"build_s": flat_build, "rss_mb": flat_rss, "size_mb": flat_size, "opened": flat_memory}
    rows = [{"index": "flat (exact)", "recall": 1.0, **exact_row, "latency": timings(flat)}]
    del flat

    for kind in types:
        index, build, rss, size, memory = measure(kind, corpus, args)
        measured = {"build_s": build, "rss_mb": rss, "size_mb": size, "opened": memory}
        if kind.endswith("sq8"):
            measured["score_error"] = score_error(index, corpus, queries, candidates)
            print(f"  hybrid dense-score error against the exact cosine: {measured['score_error']}")
        name = f"{kind} M={args.hnsw_m} efC={args.hnsw_ef_construction}" if kind.startswith("hnsw") else kind
        for candidates in args.refine_candidates if kind == "pq4-sq8" else []:  # as `just search` uses it
            refined = RefinedIndex(index, candidates)
            _, found = refined.search(queries, args.k)
            label = f"{name}, {candidates} candidates"
            rows.append({"index": label, "recall": recall_at_k(found, exact), **measured, "latency": timings(refined)})
            print(f"  {label}: recall@{args.k} {rows[-1]['recall']:.4f}")
        for ef in args.ef_search if kind.startswith("hnsw") else [] if kind == "pq4-sq8" else [None]:
            if ef is not None:
                index.hnsw.efSearch = ef
            _, found = index.search(queries, args.k)
            label = f"{name} efSearch={ef}" if ef is not None else name
            rows.append({"index": label, "recall": recall_at_k(found, exact), **measured, "latency": timings(index)})
            print(f"  {label}: recall@{args.k} {rows[-1]['recall']:.4f}")
            if kind.endswith("sq8"):  # as `just search` uses it: candidates rescored from the exact vectors
                rescored = RescoredIndex(index, corpus)
                _, found = rescored.search(queries, args.k)
                label = f"{label} + rescoring"
                rows.append(
                    {"index": label, "recall": recall_at_k(found, exact), **measured, "latency": timings(rescored)}
                )
                print(f"  {label}: recall@{args.k} {rows[-1]['recall']:.4f}")
        del index

    header = ["index", f"recall@{args.k}", "build s", "RSS MB", "file MB", "mmap USS MB", "read USS MB"]
    header += [f"{name} b={b}" for b in args.batches for name in ("p50 ms", "p95 ms")]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        cells = [row["index"], f"{row['recall']:.4f}", f"{row['build_s']:.1f}", f"{row['rss_mb']:.0f}"]
        cells += [f"{row['size_mb']:.0f}", f"{row['opened']['mmap']['uss']:.0f}", f"{row['opened']['read']['uss']:.0f}"]
        cells += [f"{t[key]:.2f}" for t in row["latency"] for key in ("p50_ms", "p95_ms")]
        print("| " + " | ".join(cells) + " |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the whole run: {peak:.0f} MB (vectors alone: {corpus.nbytes / 2**20:.0f} MB)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}",
        "source": source,
        "corpus": len(corpus),
        "dim": int(corpus.shape[1]),
        "queries": len(queries),
        "k": args.k,
        "rows": rows,
        "peak_rss_mb": peak,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    del args.query_vectors
    summary = {"corpus": len(corpus), f"flat b={args.batches[0]} p50 ms": round(rows[0]["latency"][0]["p50_ms"], 2)}
    for row in rows[1:]:
        if row["index"].startswith("hnsw") and f"efSearch={IndexConfig.hnsw_ef_search}" not in row["index"]:
            continue
        kind = row["index"].split()[0].rstrip(",") + (" + rescoring" if row["index"].endswith("rescoring") else "")
        kind += f" {row['index'].split(', ')[1]}" if ", " in row["index"] else ""
        summary[f"{kind} recall@{args.k}"] = round(row["recall"], 4)
        summary[f"{kind} b={args.batches[0]} p50 ms"] = round(row["latency"][0]["p50_ms"], 2)
        summary[f"{kind} file MB"] = round(row["size_mb"])
    name = args.result or ("search" if not args.queries_from else "search-compressed")
    write_result(name, report, args, summary=summary)


if __name__ == "__main__":
    main()
