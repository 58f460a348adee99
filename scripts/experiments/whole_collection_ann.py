"""Which approximate index finds the exact top 10 of real descriptions on the whole collection, fast and small.

    flock /tmp/st_poetry_heavy.lock python scripts/experiments/whole_collection_ann.py \
        --index indexes/poetry --pairs data/processed/eval.jsonl

The index folder must hold the exact vectors (`vectors.npy`: an sq8 index). Queries: the first --queries eval
descriptions, encoded by the index's model with its query prompt; the truth: their exact top 10 by a flat scan.
Every candidate structure is trained on the same TRAIN_SAMPLE random rows that `just index` trains on. Rows:

- IVF (faiss `IndexIVFScalarQuantizer`, 4,096 lists, 8-bit codes) at several nprobe, its top 40 rescored exactly;
- 4-bit PQ fast scan (`IndexPQFastScan`) at 96, 128 and 192 codes, its top D rescored exactly from vectors.npy;
- the same 96-code scan refined by 8-bit codes (`IndexRefine`, what `--index-type pq4-sq8` builds), no vectors;
- 384-bit binary codes (sign of each dimension, `IndexBinaryFlat`), the top D rescored exactly.

For each: recall@10 against exact, one query's search p50 (100 calls), and how many distinct vector pages the
exact rescoring of all queries would touch (what a server maps of vectors.npy).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from st_poetry.core.schema import PAIR
from st_poetry.retrieval.search import TRAIN_SAMPLE, VECTORS_FILE, PoetryIndex, training_rows


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10, block: int = 200_000) -> np.ndarray:
    """The exact top k ids per query, scanning the memory-mapped vectors a block at a time."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), block):
        scores = queries @ np.asarray(vectors[start : start + block]).T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        best = np.concatenate([best, np.take_along_axis(scores, top, 1)], 1)
        best_ids = np.concatenate([best_ids, top + start], 1)
        order = np.argsort(-best, 1)[:, :k]
        best, best_ids = np.take_along_axis(best, order, 1), np.take_along_axis(best_ids, order, 1)
    return best_ids


def rescored_recall(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, truth: np.ndarray) -> float:
    found = []
    for query, ids, best in zip(queries, candidates, truth, strict=True):
        ids = np.sort(ids[ids >= 0])
        top = ids[np.argsort(-(np.asarray(vectors[ids]) @ query))[:10]]
        found.append(len(set(top.tolist()) & set(best.tolist())) / 10)
    return float(np.mean(found))


def pages(vectors: np.ndarray, candidates: np.ndarray) -> int:
    rows = np.unique(candidates[candidates >= 0])
    first = (vectors.offset + rows * vectors.shape[1] * 4) // 4096
    last = (vectors.offset + (rows + 1) * vectors.shape[1] * 4 - 1) // 4096
    return len(np.unique(np.concatenate([first, last])))


def p50_ms(search, queries: np.ndarray) -> float:
    times = []
    for query in queries[:100]:
        tick = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - tick)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--model", help="the index's model, when its recorded path is elsewhere")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    vectors = np.load(args.index / VECTORS_FILE, mmap_mode="r")
    descriptions = [row["anchor"] for row in PAIR.read(args.pairs)][: args.queries]
    queries = PoetryIndex(args.index, model=args.model).encode_queries(descriptions)
    truth = exact_top(vectors, queries)
    train = np.ascontiguousarray(vectors[training_rows(len(vectors), TRAIN_SAMPLE)])
    dim = vectors.shape[1]

    def built(index: faiss.Index, convert=lambda x: x) -> faiss.Index:
        tick = time.perf_counter()
        index.train(convert(train))
        for start in range(0, len(vectors), 65_536):
            index.add(convert(np.ascontiguousarray(vectors[start : start + 65_536])))
        print(f"  built in {time.perf_counter() - tick:.0f}s", flush=True)
        return index

    def row(name: str, search, depth: int, convert=lambda x: x) -> None:
        _, candidates = search(convert(queries), depth)
        recall = rescored_recall(vectors, queries, candidates, truth)
        latency = p50_ms(lambda q: search(convert(q), depth), queries)
        touched = pages(vectors, candidates) * 4 / 1024
        print(f"| {name} | {depth} | {recall:.4f} | {latency:.2f} | {touched:,.0f} |", flush=True)

    print("| index | candidates | recall@10 | b=1 p50 ms | vectors.npy pages touched, MB |\n|---|---:|---:|---:|---:|")
    ivf = built(
        faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(dim), dim, 4096, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    )
    for nprobe in (16, 64, 128, 256, 512):
        ivf.nprobe = nprobe
        row(f"IVF4096,SQ8 nprobe {nprobe}", ivf.search, 40)
    del ivf
    for codes, depths in ((96, (400, 1000, 2000)), (128, (100, 200, 400)), (192, (40, 100))):
        pq = built(faiss.IndexPQFastScan(dim, codes, 4, faiss.METRIC_INNER_PRODUCT))
        for depth in depths:
            row(f"PQ{codes}x4fs", pq.search, depth)
        if codes == 96:
            refine = built(faiss.index_factory(dim, f"PQ{codes}x4fs,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT))
            for depth in (1000, 2000, 3000, 4000):
                params = faiss.IndexRefineSearchParameters(k_factor=depth / 10)
                _, found = refine.search(queries, 10, params=params)
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
                latency = p50_ms(lambda q, index=refine, params=params: index.search(q, 10, params=params), queries)
                print(f"| PQ{codes}x4fs,Refine(SQ8): no vectors read | {depth} | {recall:.4f} | {latency:.2f} | 0 |")
            del refine
        del pq
    binary = built(faiss.IndexBinaryFlat(dim), lambda x: np.packbits(x > 0, axis=1))
    for depth in (200, 800):
        row("binary (sign bits)", binary.search, depth, lambda x: np.packbits(x > 0, axis=1))


if __name__ == "__main__":
    main()
