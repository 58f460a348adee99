"""Approximate (HNSW) against exact (flat inner product) search on a large corpus: recall, speed, memory.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_search.py               # 1M synthetic vectors, dim 384
    flock /tmp/st_poetry_heavy.lock python scripts/bench_search.py --vectors indexes/poetry   # a real flat index
    flock /tmp/st_poetry_heavy.lock python scripts/bench_search.py --n 1680103 --no-hnsw   # the corpus with --poems

The synthetic corpus is a mixture of Gaussian clusters (random centres, per-dimension noise as large as the
centre's), normalized to unit length like sentence embeddings; the queries are fresh draws from the same mixture,
not corpus points. No model is involved: this measures the faiss index, which is all that changes between the
two index types (query encoding costs the same either way). With `--vectors DIR` the vectors of a flat index
built by `just index` are used instead, and a held-out sample of them serves as queries.

Both indexes are made by `st_poetry.retrieval.search.new_faiss_index` with `IndexConfig`'s defaults, i.e. what
`just index --index-type hnsw` builds. Reported: recall@k of HNSW against the exact top k (per efSearch), build
time, latency p50/p95 for one query and for batches, resident memory added by each index and its size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from benchlib import write_result

from st_poetry.core.config import IndexConfig
from st_poetry.retrieval.search import FAISS_FILE, new_faiss_index


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
    """The vectors of a flat index; `queries` of them are held out as queries."""
    index = faiss.read_index(str(folder / FAISS_FILE))
    vectors = index.reconstruct_n(0, index.ntotal)
    held_out = np.zeros(len(vectors), dtype=bool)
    held_out[np.random.default_rng(seed).choice(len(vectors), queries, replace=False)] = True
    return vectors[~held_out], vectors[held_out]


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
    index.add(corpus)
    build = time.perf_counter() - tick
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        faiss.write_index(index, f"{tmp}/index.faiss")
        size = os.path.getsize(f"{tmp}/index.faiss") / 2**20
    return index, build, rss_mb() - before, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic corpus size")
    parser.add_argument("--dim", type=int, default=384, help="synthetic vector size (e5-small's is 384)")
    parser.add_argument("--clusters", type=int, default=1000, help="synthetic mixture components")
    parser.add_argument("--vectors", type=Path, help="use a flat index folder's vectors instead of synthetic ones")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall")
    parser.add_argument("--k", type=int, default=10, help="recall@k and the k of every search")
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m)
    parser.add_argument("--hnsw-ef-construction", type=int, default=IndexConfig.hnsw_ef_construction)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256], help="query batch sizes to time")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per batch size (fewer for big batches)")
    parser.add_argument("--no-hnsw", action="store_true", help="measure the flat index only (HNSW builds take minutes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmp", default=None, help="folder for the index files whose size is measured")
    parser.add_argument("--out", type=Path, default=Path(".bench/bench_search.json"))
    args = parser.parse_args()

    tick = time.perf_counter()
    if args.vectors:
        corpus, queries = real_vectors(args.vectors, args.queries, args.seed)
        source = f"vectors of {args.vectors}"
    else:
        corpus = synthetic(args.n, args.dim, args.clusters, args.seed)
        queries = synthetic(args.queries, args.dim, args.clusters, args.seed + 1)
        source = f"synthetic: {args.clusters}-cluster Gaussian mixture, unit vectors"
    elapsed = time.perf_counter() - tick
    print(f"{source}: {len(corpus):,} x {corpus.shape[1]} corpus, {len(queries)} queries ({elapsed:.0f}s)")
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs")

    def timings(index: faiss.Index) -> list[dict]:
        # large batches are slow on a flat index: time fewer of them
        return [latencies_ms(index, queries, args.k, b, max(5, args.repeats // b)) for b in args.batches]

    flat, flat_build, flat_rss, flat_size = measure("flat", corpus, args)
    tick = time.perf_counter()
    _, exact = flat.search(queries, args.k)
    print(
        f"flat: add {flat_build:.1f}s, exact top-{args.k} of {len(queries)} queries {time.perf_counter() - tick:.1f}s"
    )
    exact_row = {"build_s": flat_build, "rss_mb": flat_rss, "size_mb": flat_size, "latency": timings(flat)}
    rows = [{"index": "flat (exact)", "recall": 1.0, **exact_row}]
    del flat

    if not args.no_hnsw:
        hnsw, hnsw_build, hnsw_rss, hnsw_size = measure("hnsw", corpus, args)
        name = f"hnsw M={args.hnsw_m} efC={args.hnsw_ef_construction}"
        print(f"{name}: build {hnsw_build:.1f}s")
    for ef in [] if args.no_hnsw else args.ef_search:
        hnsw.hnsw.efSearch = ef
        _, found = hnsw.search(queries, args.k)
        measured = {"build_s": hnsw_build, "rss_mb": hnsw_rss, "size_mb": hnsw_size, "latency": timings(hnsw)}
        rows.append({"index": f"{name} efSearch={ef}", "recall": recall_at_k(found, exact), **measured})
        print(f"  efSearch={ef}: recall@{args.k} {rows[-1]['recall']:.4f}")

    header = ["index", f"recall@{args.k}", "build s", "RSS MB", "file MB"]
    header += [f"{name} b={b}" for b in args.batches for name in ("p50 ms", "p95 ms")]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        cells = [row["index"], f"{row['recall']:.4f}", f"{row['build_s']:.1f}", f"{row['rss_mb']:.0f}"]
        cells += [f"{row['size_mb']:.0f}"]
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
    summary = {"corpus": len(corpus), f"flat b={args.batches[0]} p50 ms": round(rows[0]["latency"][0]["p50_ms"], 2)}
    default = next((row for row in rows if row["index"].endswith(f"efSearch={IndexConfig.hnsw_ef_search}")), None)
    if default:
        summary[f"HNSW efSearch={IndexConfig.hnsw_ef_search} recall@{args.k}"] = round(default["recall"], 4)
        summary[f"HNSW b={args.batches[0]} p50 ms"] = round(default["latency"][0]["p50_ms"], 2)
        summary["HNSW build s"] = round(default["build_s"], 1)
    write_result("search", report, args, summary=summary)


if __name__ == "__main__":
    main()
