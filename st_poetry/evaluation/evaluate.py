"""Compare models side by side: retrieval on the eval split, CCPM accuracy, and BM25 baselines.

    just evaluate --model models/e5-small-zh models/e5-small-zh-poetry --ccpm path/to/ccpm/valid.jsonl
    just evaluate --model models/st-poetry --backend torch onnx onnx-int8    # what an export costs in quality

1. read the eval split and the corpus of `--data` (a prepared or a mined folder) and any CCPM files;
2. load every model with every `--backend` first (a row each), so a bad path or a missing export fails before
   minutes of encoding;
3. BM25 rows (bm25s; jieba words, single characters): the baseline a user would otherwise reach for;
4. each model: retrieval with the evaluator training uses, each eval anchor against the whole corpus
   (encoded once), then CCPM accuracy (only the CCPM texts are encoded); the time it took;
5. with --hybrid, each model's row is followed by its fusion with BM25 over characters (retrieval.hybrid) on the
   same corpus embeddings, ranked lines scored by the same evaluator code, and a sweep of the fusion's settings
   on the eval split (fusion_sweep.png: metric against alpha); CCPM files never tune anything;
6. print the table; write evaluation.md, evaluation.png and evaluation.json (last, the marker) atomically.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from st_poetry.core.config import EvaluateConfig, FusionOptions
from st_poetry.core.files import atomic_output_dir, write_json
from st_poetry.core.modeling import load_model, load_reranker
from st_poetry.core.schema import CORPUS, PAIR, read_split, require_files
from st_poetry.evaluation.baselines import bm25_ccpm_accuracy, bm25_ccpm_scores, bm25_retrieval_metrics
from st_poetry.evaluation.metrics import (
    RETRIEVAL_METRICS,
    CCPMRecord,
    RankingEvaluator,
    build_ir_evaluator,
    ccpm_records_from_eval,
    ccpm_scores,
    choice_accuracy,
    evaluator_embeddings,
    max_k,
    read_ccpm,
    reported_metrics,
    reranker_ccpm_accuracy,
    retrieval_metrics,
)
from st_poetry.evaluation.plots import plot_fusion_sweep, plot_metric_bars
from st_poetry.retrieval.hybrid import Candidates, candidates, fuse, fused_choice_scores, ranking
from st_poetry.retrieval.lexical import BM25_TOKENIZERS, HYBRID_LEXICAL, build_bm25
from st_poetry.retrieval.rerank import reorder, rerank_scores

MARKER = EvaluateConfig.MARKER
EVAL_SPLIT_CCPM = "eval split"
HEADERS = {
    "recall@1": "R@1",
    "recall@5": "R@5",
    "recall@10": "R@10",
    "mrr@10": "MRR@10",
    "ndcg@10": "NDCG@10",
    "map@100": "MAP@100",
}
PLOTTED = ("recall@1", "recall@10", "mrr@10", "ndcg@10")
# The fusion sweep: every combination is scored on the eval split; the best by TUNED_METRIC is reported.
SWEEP_FUSIONS = ("interpolate", "rrf")
SWEEP_DEPTHS = (10, 20, 50, 100)
SWEEP_ALPHAS = tuple(round(alpha, 1) for alpha in np.linspace(0, 1, 11).tolist())
SWEEP_METRICS = ("recall@1", "recall@10", "mrr@10", "ndcg@10")
TUNED_METRIC = "ndcg@10"
# Li et al. 2021, "CCPM: A Chinese Classical Poetry Matching Dataset", accuracy on the CCPM test split.
CCPM_REFERENCE = {"BERT-Match (bi-encoder, bert-base-chinese)": 0.8260, "BERT-Cls (cross-encoder)": 0.8496}


def _short_names(names: Sequence[str]) -> list[str]:
    """Last path component ("models/e5-small-zh" -> "e5-small-zh"), or the full name where two would clash."""
    short = [name.rstrip("/").rsplit("/", 1)[-1] for name in names]
    return [s if short.count(s) == 1 else name for s, name in zip(short, names, strict=True)]


def _distinct(names: Sequence[str]) -> list[str]:
    """Each model once, in the order given: one folder under two spellings (models/x, ./models/x/) is one model."""
    kept: dict[Any, str] = {}
    for name in names:
        path = Path(name).expanduser()
        key = path.resolve() if path.exists() else name
        if key in kept:
            print(f"note: {name} is {kept[key]} again: evaluated once")
        kept.setdefault(key, name)
    return list(kept.values())


def _variants(names: Sequence[str], backends: Sequence[str]) -> list[tuple[str, str, str]]:
    """(row name, model, backend) per model and backend; the backend joins the name when there are several."""
    backends = list(dict.fromkeys(backends))
    return [
        (name if len(backends) == 1 else f"{name} {backend}", path, backend)
        for name, path in zip(_short_names(names), names, strict=True)
        for backend in backends
    ]


def _row(
    name: str,
    source: str,
    retrieval: dict[str, float],
    ccpm: dict[str, float],
    seconds: float,
    backend: str | None = None,
) -> dict:
    row = {"name": name, "model": source, "retrieval": retrieval, "ccpm": ccpm, "seconds": round(seconds, 1)}
    return row | ({"backend": backend} if backend else {})


def _fusion_settings(options: FusionOptions) -> dict[str, Any]:
    return {key: getattr(options, key) for key in ("fusion", "alpha", "depth", "rrf_k")}


def _unit(embeddings: torch.Tensor) -> np.ndarray:
    """Float32 unit rows, contiguous for faiss: inner product = the evaluator's cosine."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1).cpu().numpy()
    return np.ascontiguousarray(unit, dtype=np.float32)


class DenseSide(NamedTuple):
    """A model's side of the fusion: an exact faiss index of its corpus embeddings, its query embeddings."""

    index: faiss.Index
    queries: np.ndarray


def dense_side(evaluator: InformationRetrievalEvaluator, model: SentenceTransformer) -> DenseSide:
    """The corpus and the queries encoded once, as the evaluator itself would: for the dense row and the fusion."""
    corpus = _unit(evaluator_embeddings(evaluator, model, "document"))
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    return DenseSide(index, _unit(evaluator_embeddings(evaluator, model, "query")))


def dense_metrics(evaluator: InformationRetrievalEvaluator, dense: DenseSide) -> dict[str, float]:
    """The model's row from its faiss ranking (exact cosine), scored by the evaluator's own metric code."""
    scores, ids = dense.index.search(dense.queries, min(max_k(evaluator), dense.index.ntotal))
    ranked = [
        [{"corpus_id": evaluator.corpus_ids[i], "score": float(s)} for s, i in zip(row_scores, row_ids, strict=True)]
        for row_scores, row_ids in zip(scores, ids, strict=True)
    ]
    return reported_metrics(evaluator.compute_metrics(ranked))


def fused_metrics(
    evaluator: InformationRetrievalEvaluator, found: Candidates, options: FusionOptions, top_k: int
) -> dict[str, float]:
    """The fused top_k of every query, scored by the evaluator's own metric code like every other row."""
    ranked = [
        [{"corpus_id": evaluator.corpus_ids[i], "score": fused} for i, _, _, fused in hits]
        for hits in ranking(found, fuse(found, options), top_k)
    ]
    return reported_metrics(evaluator.compute_metrics(ranked))


def fused_ccpm(
    ccpm_sets: Mapping[str, Sequence[CCPMRecord]],
    dense: Mapping[str, Sequence[np.ndarray]],
    lexical: Mapping[str, Sequence[np.ndarray]],
    options: FusionOptions,
) -> dict[str, float]:
    """CCPM accuracy of each set when each record's choices are ranked by the fusion of both sides' scores."""
    return {
        label: choice_accuracy(records, fused_choice_scores(dense[label], lexical[label], options))
        for label, records in ccpm_sets.items()
    }


def fusion_sweep(evaluator: InformationRetrievalEvaluator, found: Candidates, rrf_k: int) -> list[dict[str, Any]]:
    """SWEEP_METRICS of every fusion x depth x alpha (top 10 per query: the metrics look no deeper)."""
    points = []
    for fusion in SWEEP_FUSIONS:
        for depth in SWEEP_DEPTHS:
            for alpha in SWEEP_ALPHAS:
                options = FusionOptions(hybrid=True, fusion=fusion, alpha=alpha, depth=depth, rrf_k=rrf_k)
                metrics = fused_metrics(evaluator, found, options, top_k=10)
                points.append(
                    {"fusion": fusion, "depth": depth, "alpha": alpha, **{m: metrics[m] for m in SWEEP_METRICS}}
                )
    return points


def reranked_rows(
    name: str,
    evaluator: RankingEvaluator,
    reranker: CrossEncoder,
    top_ks: Sequence[int],
    ccpm: dict[str, float],
    batch_size: int,
    known: dict[tuple[str, str], float],
) -> tuple[list[dict], dict[str, Any]]:
    """A row per K: the ranking the evaluator scored last (whichever retriever's) with its top K reranked.

    The reranker scores each query's top max(K) once; a smaller K reorders its own top K by those scores, and a
    pair an earlier retriever's pass scored (in `known`) is not scored again. Returns the rows and the pass's
    size and speed.
    """
    ranking = [sorted(hits, key=lambda hit: (-hit["score"], hit["corpus_id"])) for hits in evaluator.last_ranking]
    text_of = dict(zip(evaluator.corpus_ids, evaluator.corpus, strict=True))
    already = len(known)
    start = time.perf_counter()
    scores = rerank_scores(
        reranker,
        evaluator.queries,
        ranking,
        max(top_ks),
        text=lambda hit: text_of[hit["corpus_id"]],
        batch_size=batch_size,
        show_progress_bar=True,
        known=known,
    )
    seconds = time.perf_counter() - start
    scored = len(known) - already  # the rest of the pass's pairs an earlier pass had scored
    rows = []
    for k in top_ks:
        reranked = [reorder(hits, query_scores[:k]) for hits, query_scores in zip(ranking, scores, strict=True)]
        # The metric code ranks by "score": hand it the new order.
        ranks = [
            [{"corpus_id": hit["corpus_id"], "score": -rank} for rank, hit in enumerate(hits)] for hits in reranked
        ]
        retrieval = reported_metrics(evaluator.compute_metrics(ranks))
        row = _row(f"{name} + rerank@{k}", name, retrieval, ccpm, seconds)
        rows.append({**row, "rerank_top_k": k})
    return rows, {
        "retriever": name,
        "pairs": sum(map(len, scores)),
        "scored": scored,
        "seconds": round(seconds, 1),
        "pairs_per_second": scored / seconds if scored else None,
    }


def report_markdown(report: Mapping[str, Any]) -> str:
    """The side-by-side table with the facts needed to read it; printed on screen and saved as evaluation.md."""
    ccpm_labels = list(report["ccpm_records"])
    header = ["model", *HEADERS.values(), *(f"CCPM {label}" for label in ccpm_labels), "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in report["rows"]:
        cells = [row["name"], *(f"{row['retrieval'][metric]:.4f}" for metric in HEADERS)]
        cells += [f"{row['ccpm'][label]:.2%}" for label in ccpm_labels]
        lines.append("| " + " | ".join([*cells, f"{row['seconds']:.0f}"]) + " |")
    corpus = "the whole corpus" if report["max_corpus"] is None else f"a corpus capped at {report['max_corpus']:,}"
    notes = [
        f"Retrieval: {report['queries']:,} eval queries of `{report['data']}`, each against {report['corpus']:,} "
        f"lines ({corpus}); R@k = recall@k, cosine similarity, each model's own query/document prompts.",
    ]
    if ccpm_labels:
        skipped = report["ccpm_skipped_empty_translation"]
        counts = ", ".join(
            f"{label}: {count:,} records"
            + (f" ({skipped[label]} with no translation skipped)" if label in skipped else "")
            for label, count in report["ccpm_records"].items()
        )
        reference = ", ".join(f"{name} {value:.2%}" for name, value in CCPM_REFERENCE.items())
        notes.append(
            f"CCPM accuracy: the translation picks the most similar of its choices ({counts}). "
            f"For context, the CCPM paper on its test split: {reference}."
        )
    if rerank := report.get("reranker"):
        passes = "; ".join(
            f"{scoring['retriever']}: {scoring['scored']:,} pairs scored in {scoring['seconds']:.0f} s"
            + (f" ({scoring['pairs_per_second']:.0f} pairs/s)" if scoring["scored"] else "")
            + (
                f", {scoring['pairs'] - scoring['scored']:,} of its {scoring['pairs']:,} scored by an earlier pass"
                if scoring["pairs"] > scoring["scored"]
                else ""
            )
            for scoring in rerank["scoring"]
        )
        notes.append(
            f"`+ rerank@K`: the row's top K lines reordered by the reranker `{rerank['model']}`, whose CCPM accuracy "
            f"(its score over the choices) the row shows. One scoring pass per retriever at the deepest K ({passes}); "
            "the added latency per query is about K / (pairs/s)."
        )
        notes += [f"note: {note}" for note in rerank["notes"]]
    if any(row["model"] == "bm25s" for row in report["rows"]):
        notes.append("bm25-*: bm25s (Lucene BM25, k1=1.5, b=0.75) over the same corpus, jieba words or single chars.")
    if fusion := report.get("fusion"):
        how = (
            f"alpha {fusion['alpha']} x dense + {1 - fusion['alpha']:.2f} x BM25, each min-max normalised per query"
            if fusion["fusion"] == "interpolate"
            else f"reciprocal rank fusion, k={fusion['rrf_k']}, dense weight {fusion['alpha']}"
        )
        notes.append(
            f"`MODEL + {fusion['lexical']}`: the model's ranking fused with {fusion['lexical']} ({how}) over the union "
            f"of each side's top {fusion['depth']}, on the same corpus embeddings; its CCPM columns fuse the same "
            "way over each record's choices."
        )
        sweep = report["fusion_sweep"]
        best = "; ".join(
            f"{name}: {point['fusion']}, depth {point['depth']}, alpha {point['alpha']} "
            f"({HEADERS[sweep['tuned_metric']]} {point[sweep['tuned_metric']]:.4f})"
            for name, point in ((name, model["best"]) for name, model in sweep["models"].items())
        )
        notes.append(
            f"Fusion sweep on this eval split (fusion_sweep.png), best {HEADERS[sweep['tuned_metric']]}: {best}."
        )
    if any(row.get("backend") not in (None, "torch") for row in report["rows"]):
        notes.append(
            "onnx / openvino rows: the same model run by ONNX Runtime or OpenVINO from the files `just export` wrote; "
            "-int8: its int8 copy (quality cost next to the torch row)."
        )
    notes.append("seconds: the time each row took to encode/index and score (model loading excluded).")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Score every model (and the BM25 baselines) and write evaluation.{json,md,png} to `config.out`."""
    data = require_files(
        config.data, ("eval.jsonl", "corpus.jsonl"), "a folder written by `just prepare` or `just mine`"
    )
    eval_split = read_split(data / "eval.jsonl")
    eval_rows = eval_split.rows
    corpus_rows = CORPUS.read(data / "corpus.jsonl")
    ccpm_sets, ccpm_skipped = {}, {}
    for label, path in zip(_short_names(config.ccpm), config.ccpm, strict=True):
        ccpm_sets[label], ccpm_skipped[label] = read_ccpm(path)
    if config.ccpm_eval_split:
        held_out = ccpm_records_from_eval(eval_rows) if eval_split.type is PAIR else []
        if held_out:
            ccpm_sets[EVAL_SPLIT_CCPM] = held_out
        else:  # e.g. a `just mine` folder: its rows no longer carry CCPM's choices
            print(f"note: {data / 'eval.jsonl'} has no CCPM records with their choices: no eval-split CCPM column")

    names = _distinct(config.model)
    with atomic_output_dir(config.out, MARKER) as out:
        variants = _variants(names, config.backend)
        models = [
            load_model(
                path, max_seq_length=config.max_seq_length, query_instruction=config.query_instruction, backend=backend
            )
            for _, path, backend in variants
        ]
        reranker = load_reranker(config.reranker) if config.reranker else None

        evaluator = build_ir_evaluator(
            eval_rows,
            corpus_rows,
            max_corpus=config.max_corpus,
            seed=config.seed,
            batch_size=config.batch_size,
            show_progress_bar=True,
            rank_depth=max(config.rerank_top_k),
        )
        print(f"{len(evaluator.queries):,} queries against {len(evaluator.corpus):,} corpus lines")
        top_ks = sorted({min(k, len(evaluator.corpus)) for k in config.rerank_top_k})
        rerank_notes = [
            f"--rerank-top-k {k} is more than the {len(evaluator.corpus):,} corpus lines: reranked them all"
            for k in config.rerank_top_k
            if k > len(evaluator.corpus)
        ]
        for note in rerank_notes if reranker else ():
            print(f"note: {note}")
        rows, scoring, reranker_ccpm, sweeps = [], [], {}, {}
        reranked_pairs: dict[tuple[str, str], float] = {}  # (query, line) -> score, across retrievers
        if config.hybrid:  # one BM25 index and the queries' tokens, shared by every model's fusion
            tokenize = BM25_TOKENIZERS[HYBRID_LEXICAL]
            corpus_bm25 = build_bm25(evaluator.corpus, tokenize, show_progress=True)
            query_tokens = [tokenize(query) for query in evaluator.queries]
            ccpm_lexical = {label: bm25_ccpm_scores(records, tokenize) for label, records in ccpm_sets.items()}
        if config.bm25:
            for name, tokenize in BM25_TOKENIZERS.items():
                print(f"{name}: indexing and retrieving")
                start = time.perf_counter()
                retrieval = bm25_retrieval_metrics(evaluator, tokenize, show_progress_bar=True)
                ccpm = {label: bm25_ccpm_accuracy(records, tokenize) for label, records in ccpm_sets.items()}
                rows.append(_row(name, "bm25s", retrieval, ccpm, time.perf_counter() - start))
        for (name, path, backend), model in zip(variants, models, strict=True):
            print(f"{name}: encoding queries and corpus")
            start = time.perf_counter()
            # With --hybrid the model encodes the corpus and the queries once, for its row and the fusion alike.
            dense = dense_side(evaluator, model) if config.hybrid else None
            retrieval = dense_metrics(evaluator, dense) if dense else retrieval_metrics(evaluator, model)
            dense_ccpm = {
                label: ccpm_scores(model, records, batch_size=config.batch_size, show_progress_bar=True)
                for label, records in ccpm_sets.items()
            }
            ccpm = {label: choice_accuracy(ccpm_sets[label], scores) for label, scores in dense_ccpm.items()}
            rows.append(_row(name, path, retrieval, ccpm, time.perf_counter() - start, backend))
            if reranker:
                print(f"{name}: reranking its top {max(top_ks)} with {config.reranker}")
                reranker_ccpm = reranker_ccpm or {
                    label: reranker_ccpm_accuracy(reranker, records, batch_size=config.batch_size)
                    for label, records in ccpm_sets.items()
                }
                reranked, pass_stats = reranked_rows(
                    name, evaluator, reranker, top_ks, reranker_ccpm, config.batch_size, reranked_pairs
                )
                rows += reranked
                scoring.append(pass_stats)
            if config.hybrid:
                print(f"{name} + {HYBRID_LEXICAL}: fusing, and sweeping the fusion settings")
                start = time.perf_counter()
                depth = max(*SWEEP_DEPTHS, config.depth)
                found = candidates(dense.index, dense.queries, corpus_bm25, query_tokens, depth)
                retrieval = fused_metrics(evaluator, found, config, top_k=max_k(evaluator))
                ccpm = fused_ccpm(ccpm_sets, dense_ccpm, ccpm_lexical, config)
                rows.append(_row(f"{name} + {HYBRID_LEXICAL}", path, retrieval, ccpm, time.perf_counter() - start))
                if reranker:  # the fused ranking, which the evaluator scored last, reordered by the reranker
                    hybrid_name = f"{name} + {HYBRID_LEXICAL}"
                    print(f"{hybrid_name}: reranking its top {max(top_ks)} with {config.reranker}")
                    reranked, pass_stats = reranked_rows(
                        hybrid_name, evaluator, reranker, top_ks, reranker_ccpm, config.batch_size, reranked_pairs
                    )
                    rows += reranked
                    scoring.append(pass_stats)
                points = fusion_sweep(evaluator, found, config.rrf_k)
                best = max(points, key=lambda point: point[TUNED_METRIC])
                sweeps[name] = {"best": best, "points": points}
                tuned = FusionOptions(
                    hybrid=True, fusion=best["fusion"], alpha=best["alpha"], depth=best["depth"], rrf_k=config.rrf_k
                )
                if tuned != dataclasses.replace(FusionOptions(), **_fusion_settings(config), hybrid=True):
                    # what the fusion gives at its best on this eval split: tuned here, so an optimistic figure
                    start = time.perf_counter()
                    retrieval = fused_metrics(evaluator, found, tuned, top_k=max_k(evaluator))
                    ccpm = fused_ccpm(ccpm_sets, dense_ccpm, ccpm_lexical, tuned)
                    label = f"{name} + {HYBRID_LEXICAL} (tuned)"
                    rows.append(_row(label, path, retrieval, ccpm, time.perf_counter() - start))

        report = {
            "data": str(data),
            "queries": len(evaluator.queries),
            "corpus": len(evaluator.corpus),
            "max_corpus": config.max_corpus,
            "metrics": list(RETRIEVAL_METRICS),
            "ccpm_records": {label: len(records) for label, records in ccpm_sets.items()},
            "ccpm_skipped_empty_translation": {label: count for label, count in ccpm_skipped.items() if count},
            "ccpm_reference": CCPM_REFERENCE,
            "rows": rows,
        }
        if config.hybrid:
            report["fusion"] = {"lexical": HYBRID_LEXICAL, **_fusion_settings(config)}
            report["fusion_sweep"] = {"tuned_metric": TUNED_METRIC, "models": sweeps}
        if reranker:
            report["reranker"] = {"model": config.reranker, "scoring": scoring, "notes": rerank_notes}
        markdown = report_markdown(report)
        (out / "evaluation.md").write_text(f"# Evaluation\n\n{markdown}", encoding="utf-8")
        bars = {
            row["name"]: {
                **{HEADERS[metric]: row["retrieval"][metric] for metric in PLOTTED},
                **{f"CCPM {label}": value for label, value in row["ccpm"].items()},
            }
            for row in rows
        }
        title = f"{report['queries']:,} queries against {report['corpus']:,} lines"
        plot_metric_bars(bars, out / "evaluation.png", title=title)
        if config.hybrid:
            by_name = {row["name"]: row["retrieval"][TUNED_METRIC] for row in rows}
            baselines = {
                name: {side: by_name[side] for side in (name, HYBRID_LEXICAL) if side in by_name} for name in sweeps
            }
            plot_fusion_sweep(sweeps, baselines, out / "fusion_sweep.png", metric=TUNED_METRIC, title=title)
        write_json(out / MARKER, report)

    print()
    print(markdown)
    figures = "evaluation.png" + (", fusion_sweep.png" if config.hybrid else "")
    print(f"wrote {config.out}/evaluation.json, evaluation.md, {figures}")
    return report
