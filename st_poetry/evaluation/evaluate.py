"""Compare models side by side: retrieval on the eval split, CCPM accuracy, and BM25 baselines.

    just evaluate --model models/e5-small-zh models/e5-small-zh-poetry --ccpm path/to/ccpm/valid.jsonl
    just evaluate --model models/st-poetry --backend torch onnx onnx-int8    # what an export costs in quality

1. read the eval split and the corpus of `--data` (a prepared or a mined folder) and any CCPM files;
2. load every model with every `--backend` first (a row each), so a bad path or a missing export fails before
   minutes of encoding;
3. BM25 rows (bm25s; jieba words, single characters): the baseline a user would otherwise reach for;
4. each model: retrieval with the evaluator training uses, each eval anchor against the whole corpus
   (encoded once), then CCPM accuracy (only the CCPM texts are encoded); the time it took;
5. with --reranker, a row per K after a retriever's row: that row's ranking with its top K reordered;
6. with --hybrid, each model's row is followed by its fusion with BM25 over characters (retrieval.hybrid) on the
   same corpus embeddings, ranked lines scored by the same evaluator code, and a sweep of the fusion's settings
   on the eval split (fusion_sweep.png: metric against alpha); CCPM files never tune anything;
7. print the table; write evaluation.md, evaluation.png and evaluation.json (last, the marker) atomically.

Each kind of row has its producer (`bm25_rows`, `dense_row`, `reranked_rows`, `hybrid_row`, `tuned_row`, and
`fusion_sweep`); a producer whose rows build on a ranking returns it, and `reranked_rows` takes the ranking it
reorders as an argument. `Report` holds the rows and renders evaluation.json, evaluation.md and the figures.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import bm25s
import faiss
import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from st_poetry.core.config import EvaluateConfig, FusionOptions
from st_poetry.core.files import atomic_output_dir, write_json
from st_poetry.core.log import get_logger, progress_off
from st_poetry.core.modeling import load_model, load_reranker
from st_poetry.core.schema import CORPUS, PAIR, Split, read_split, require_files
from st_poetry.evaluation.baselines import bm25_ccpm_accuracy, bm25_ccpm_scores, bm25_retrieval_metrics
from st_poetry.evaluation.metrics import (
    RETRIEVAL_METRICS,
    CCPMRecord,
    Ranking,
    RankingEvaluator,
    build_ir_evaluator,
    ccpm_accuracy,
    ccpm_records_from_eval,
    ccpm_scores,
    choice_accuracy,
    evaluator_embeddings,
    max_k,
    read_ccpm,
    reported_metrics,
)
from st_poetry.evaluation.plots import plot_fusion_sweep, plot_metric_bars
from st_poetry.retrieval import hybrid
from st_poetry.retrieval.lexical import BM25_TOKENIZERS, HYBRID_LEXICAL, build_bm25
from st_poetry.retrieval.rerank import reorder, rerank_scores

logger = get_logger(__name__)

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
            logger.info(f"note: {name} is {kept[key]} again: evaluated once")
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


# ---------------------------------------------------------------------------------------------------------
# Rows, and what they are scored on


@dataclass
class Row:
    """A line of the report: a retriever's metrics on the eval split, its CCPM accuracy per set, its time."""

    name: str
    model: str
    retrieval: dict[str, float]
    ccpm: dict[str, float]
    seconds: float
    backend: str | None = None
    rerank_top_k: int | None = None

    def to_json(self) -> dict[str, Any]:
        row = {
            "name": self.name,
            "model": self.model,
            "retrieval": self.retrieval,
            "ccpm": self.ccpm,
            "seconds": round(self.seconds, 1),
        }
        row |= {"backend": self.backend} if self.backend else {}
        return row | ({"rerank_top_k": self.rerank_top_k} if self.rerank_top_k is not None else {})


@dataclass
class Suite:
    """What every row is scored on: the eval split's queries against the corpus, and the CCPM record sets."""

    evaluator: RankingEvaluator
    ccpm: dict[str, list[CCPMRecord]]
    batch_size: int

    def metrics(self, ranking: Ranking) -> dict[str, float]:
        """A ranking's reported metrics, by the evaluator's own metric code: every row is scored the same way."""
        return reported_metrics(self.evaluator.compute_metrics(ranking))

    def accuracy(self, scores: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float]:
        """CCPM accuracy per set, from each record's choice scores."""
        return {label: choice_accuracy(records, scores[label]) for label, records in self.ccpm.items()}

    def hits(self, rows: Sequence[Sequence[tuple[int, float]]]) -> Ranking:
        """(corpus position, score) pairs per query as a Ranking of corpus ids."""
        ids = self.evaluator.corpus_ids
        return [[{"corpus_id": ids[i], "score": score} for i, score in row] for row in rows]


def _since(start: float) -> float:
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
# BM25 and the models' own rows


def bm25_rows(suite: Suite) -> list[Row]:
    """A row per BM25 tokenizer (baselines): bm25s over the same queries and corpus."""
    rows = []
    for name, tokenize in BM25_TOKENIZERS.items():
        logger.info(f"{name}: indexing and retrieving")
        start = time.perf_counter()
        retrieval = bm25_retrieval_metrics(suite.evaluator, tokenize, show_progress_bar=not progress_off())
        ccpm = {label: bm25_ccpm_accuracy(records, tokenize) for label, records in suite.ccpm.items()}
        rows.append(Row(name, "bm25s", retrieval, ccpm, _since(start)))
    return rows


def _unit(embeddings: torch.Tensor) -> np.ndarray:
    """Float32 unit rows, contiguous for faiss: inner product = the evaluator's cosine."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1).cpu().numpy()
    return np.ascontiguousarray(unit, dtype=np.float32)


class DenseSide(NamedTuple):
    """A model's side of the fusion: an exact faiss index of its corpus embeddings, its query embeddings."""

    index: faiss.Index
    queries: np.ndarray


def dense_side(evaluator: RankingEvaluator, model: SentenceTransformer) -> DenseSide:
    """The corpus and the queries encoded once, as the evaluator itself would: for the dense row and the fusion."""
    corpus = _unit(evaluator_embeddings(evaluator, model, "document"))
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    return DenseSide(index, _unit(evaluator_embeddings(evaluator, model, "query")))


def faiss_ranking(suite: Suite, dense: DenseSide) -> Ranking:
    """Each query's ranking by exact cosine from the model's faiss index, as deep as the metrics look."""
    scores, ids = dense.index.search(dense.queries, min(max_k(suite.evaluator), dense.index.ntotal))
    return suite.hits(
        [
            zip(row_ids.tolist(), map(float, row_scores), strict=True)
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]
    )


class Dense(NamedTuple):
    """A model's row, the ranking it scored, and what its fusion reuses: its CCPM choice scores, its encoded side."""

    row: Row
    ranking: Ranking
    ccpm_scores: dict[str, list[np.ndarray]]
    side: DenseSide | None


def dense_row(suite: Suite, name: str, path: str, backend: str, model: SentenceTransformer, hybrid: bool) -> Dense:
    """The model's own row: the evaluator's ranking of the corpus (from a faiss index of the embeddings when the
    fusion needs them too: encoded once for both), then CCPM accuracy (only the CCPM texts are encoded)."""
    logger.info(f"{name}: encoding queries and corpus")
    start = time.perf_counter()
    if hybrid:
        side = dense_side(suite.evaluator, model)
        ranking = faiss_ranking(suite, side)
        retrieval = suite.metrics(ranking)
    else:
        side = None
        retrieval, ranking = suite.evaluator.ranked(model)
    scores = {
        label: ccpm_scores(model, records, batch_size=suite.batch_size, show_progress_bar=not progress_off())
        for label, records in suite.ccpm.items()
    }
    row = Row(name, path, retrieval, suite.accuracy(scores), _since(start), backend)
    return Dense(row, ranking, scores, side)


# ---------------------------------------------------------------------------------------------------------
# Reranked rows


@dataclass
class Reranking:
    """A reranker and what its rows share: the depths K, its CCPM accuracy, and every (query, line) score so far.

    A pair's score does not depend on the retriever that found it, so `known` lets each pair be scored once per run.
    """

    model: CrossEncoder
    source: str
    top_ks: list[int]
    ccpm: dict[str, float]
    notes: list[str]
    known: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def prepare(cls, suite: Suite, model: CrossEncoder, source: str, rerank_top_k: Sequence[int]) -> Reranking:
        """The reranker's depths against this corpus (a K beyond it reranks it all, with a note), its CCPM accuracy."""
        corpus = len(suite.evaluator.corpus)
        notes = [
            f"--rerank-top-k {k} is more than the {corpus:,} corpus lines: reranked them all"
            for k in rerank_top_k
            if k > corpus
        ]
        for note in notes:
            logger.info(f"note: {note}")
        ccpm = {
            label: ccpm_accuracy(model, records, batch_size=suite.batch_size) for label, records in suite.ccpm.items()
        }
        return cls(model, source, sorted({min(k, corpus) for k in rerank_top_k}), ccpm, notes)


def reranked_rows(suite: Suite, name: str, ranking: Ranking, reranker: Reranking) -> tuple[list[Row], dict[str, Any]]:
    """A row per K: `ranking` (a retriever's, the one its row scored) with each query's top K reordered.

    The reranker scores each query's top max(K) once; a smaller K reorders its own top K by those scores, and a
    pair an earlier pass scored (in `reranker.known`) is not scored again. Returns the rows and the pass's size
    and speed.
    """
    deepest = max(reranker.top_ks)
    logger.info(f"{name}: reranking its top {deepest} with {reranker.source}")
    ordered = [sorted(hits, key=lambda hit: (-hit["score"], hit["corpus_id"])) for hits in ranking]
    evaluator = suite.evaluator
    text_of = dict(zip(evaluator.corpus_ids, evaluator.corpus, strict=True))
    already = len(reranker.known)
    start = time.perf_counter()
    scores = rerank_scores(
        reranker.model,
        evaluator.queries,
        ordered,
        deepest,
        text=lambda hit: text_of[hit["corpus_id"]],
        batch_size=suite.batch_size,
        show_progress_bar=not progress_off(),
        known=reranker.known,
    )
    seconds = _since(start)
    scored = len(reranker.known) - already  # the rest of the pass's pairs an earlier pass had scored
    rows = []
    for k in reranker.top_ks:
        reranked = [reorder(hits, query_scores[:k]) for hits, query_scores in zip(ordered, scores, strict=True)]
        # The metric code ranks by "score": hand it the new order.
        ranks = [
            [{"corpus_id": hit["corpus_id"], "score": -rank} for rank, hit in enumerate(hits)] for hits in reranked
        ]
        rows.append(Row(f"{name} + rerank@{k}", name, suite.metrics(ranks), reranker.ccpm, seconds, rerank_top_k=k))
    return rows, {
        "retriever": name,
        "pairs": sum(map(len, scores)),
        "scored": scored,
        "seconds": round(seconds, 1),
        "pairs_per_second": scored / seconds if scored else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Hybrid rows and the fusion sweep


class Lexical(NamedTuple):
    """The BM25 side of every model's fusion, built once: the corpus index, the queries' tokens, CCPM choice scores."""

    index: bm25s.BM25
    query_tokens: list[list[str]]
    ccpm_scores: dict[str, list[np.ndarray]]


def lexical_side(suite: Suite) -> Lexical:
    """BM25 over characters (HYBRID_LEXICAL) of the corpus, the queries and every CCPM record's choices."""
    tokenize = BM25_TOKENIZERS[HYBRID_LEXICAL]
    index = build_bm25(suite.evaluator.corpus, tokenize, show_progress=not progress_off())
    tokens = [tokenize(query) for query in suite.evaluator.queries]
    return Lexical(index, tokens, {label: bm25_ccpm_scores(records, tokenize) for label, records in suite.ccpm.items()})


class Fusion(NamedTuple):
    """A model's fusion with BM25: both sides' candidates, gathered deep enough for every setting the sweep tries,
    and both sides' CCPM choice scores."""

    name: str
    model: str
    found: hybrid.Candidates
    dense_ccpm: dict[str, list[np.ndarray]]
    lexical_ccpm: dict[str, list[np.ndarray]]

    @classmethod
    def gather(cls, dense: Dense, lexical: Lexical, depth: int) -> Fusion:
        """The model's fusion, its candidates as deep as `depth` and every depth the sweep tries."""
        side = dense.side
        found = hybrid.candidates(
            side.index, side.queries, lexical.index, lexical.query_tokens, max(*SWEEP_DEPTHS, depth)
        )
        return cls(
            f"{dense.row.name} + {HYBRID_LEXICAL}", dense.row.model, found, dense.ccpm_scores, lexical.ccpm_scores
        )


def fused_ranking(suite: Suite, fused: Fusion, options: FusionOptions, top_k: int) -> Ranking:
    """Each query's fused top_k, each line with its fused score (what the metric code ranks by)."""
    found = fused.found
    return suite.hits(
        [[(i, score) for i, _, _, score in hits] for hits in hybrid.ranking(found, hybrid.fuse(found, options), top_k)]
    )


def _fused_row(suite: Suite, fused: Fusion, options: FusionOptions, name: str, start: float) -> tuple[Row, Ranking]:
    """The fused ranking as deep as the metrics look; CCPM accuracy when each record's choices are ranked by the
    fusion of both sides' scores."""
    ranking = fused_ranking(suite, fused, options, top_k=max_k(suite.evaluator))
    ccpm = {
        label: choice_accuracy(
            records, hybrid.fused_choice_scores(fused.dense_ccpm[label], fused.lexical_ccpm[label], options)
        )
        for label, records in suite.ccpm.items()
    }
    return Row(name, fused.model, suite.metrics(ranking), ccpm, _since(start)), ranking


def hybrid_row(suite: Suite, dense: Dense, lexical: Lexical, options: FusionOptions) -> tuple[Row, Ranking, Fusion]:
    """The model fused with BM25 at the configured settings: its row, the fused ranking, and the fusion (reused by
    the sweep and the tuned row)."""
    logger.info(f"{dense.row.name} + {HYBRID_LEXICAL}: fusing")
    start = time.perf_counter()
    fused = Fusion.gather(dense, lexical, options.depth)
    row, ranking = _fused_row(suite, fused, options, fused.name, start)
    return row, ranking, fused


def fusion_sweep(suite: Suite, fused: Fusion, rrf_k: int) -> dict[str, Any]:
    """SWEEP_METRICS of every fusion x depth x alpha (top 10 per query: the metrics look no deeper), and the best
    point by TUNED_METRIC. Only the eval split: CCPM files never tune anything."""
    logger.info(f"{fused.name}: sweeping the fusion settings")
    points = []
    for kind in SWEEP_FUSIONS:
        for depth in SWEEP_DEPTHS:
            for alpha in SWEEP_ALPHAS:
                options = FusionOptions(hybrid=True, fusion=kind, alpha=alpha, depth=depth, rrf_k=rrf_k)
                metrics = suite.metrics(fused_ranking(suite, fused, options, top_k=10))
                points.append(
                    {"fusion": kind, "depth": depth, "alpha": alpha, **{m: metrics[m] for m in SWEEP_METRICS}}
                )
    return {"best": max(points, key=lambda point: point[TUNED_METRIC]), "points": points}


def _fusion_settings(options: FusionOptions) -> dict[str, Any]:
    return {key: getattr(options, key) for key in ("fusion", "alpha", "depth", "rrf_k")}


def tuned_row(suite: Suite, fused: Fusion, sweep: Mapping[str, Any], configured: FusionOptions) -> Row | None:
    """The fusion at the sweep's best settings, where they are not the configured ones: what the fusion gives at its
    best on this eval split (tuned on it, so an optimistic figure)."""
    best = sweep["best"]
    tuned = FusionOptions(
        hybrid=True, fusion=best["fusion"], alpha=best["alpha"], depth=best["depth"], rrf_k=configured.rrf_k
    )
    if tuned == dataclasses.replace(FusionOptions(), **_fusion_settings(configured), hybrid=True):
        return None
    return _fused_row(suite, fused, tuned, f"{fused.name} (tuned)", time.perf_counter())[0]


# ---------------------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """Every row and what it takes to read them; rendered as evaluation.json, evaluation.md and the figures."""

    data: str
    queries: int
    corpus: int
    max_corpus: int | None
    ccpm_records: dict[str, int]
    ccpm_skipped: dict[str, int]  # records with an empty translation, per set that had any
    rows: list[Row]
    fusion: dict[str, Any] | None = None  # --hybrid: the configured settings
    sweeps: dict[str, dict[str, Any]] | None = None  # --hybrid: per model, {"best": point, "points": [...]}
    reranker: dict[str, Any] | None = None  # --reranker: {"model", "scoring": [a pass per retriever], "notes"}

    def to_json(self) -> dict[str, Any]:
        """evaluation.json: every figure, the counts and settings."""
        report = {
            "data": self.data,
            "queries": self.queries,
            "corpus": self.corpus,
            "max_corpus": self.max_corpus,
            "metrics": list(RETRIEVAL_METRICS),
            "ccpm_records": self.ccpm_records,
            "ccpm_skipped_empty_translation": self.ccpm_skipped,
            "ccpm_reference": CCPM_REFERENCE,
            "rows": [row.to_json() for row in self.rows],
        }
        if self.fusion is not None:
            report["fusion"] = self.fusion
            report["fusion_sweep"] = {"tuned_metric": TUNED_METRIC, "models": self.sweeps}
        if self.reranker is not None:
            report["reranker"] = self.reranker
        return report

    def to_markdown(self) -> str:
        """The side-by-side table with the facts needed to read it; printed on screen and saved as evaluation.md."""
        labels = list(self.ccpm_records)
        header = ["model", *HEADERS.values(), *(f"CCPM {label}" for label in labels), "seconds"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for row in self.rows:
            cells = [row.name, *(f"{row.retrieval[metric]:.4f}" for metric in HEADERS)]
            cells += [f"{row.ccpm[label]:.2%}" for label in labels]
            lines.append("| " + " | ".join([*cells, f"{round(row.seconds, 1):.0f}"]) + " |")
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in self._notes()) + "\n"

    def _notes(self) -> list[str]:
        corpus = "the whole corpus" if self.max_corpus is None else f"a corpus capped at {self.max_corpus:,}"
        notes = [
            f"Retrieval: {self.queries:,} eval queries of `{self.data}`, each against {self.corpus:,} "
            f"lines ({corpus}); R@k = recall@k, cosine similarity, each model's own query/document prompts.",
        ]
        if self.ccpm_records:
            counts = ", ".join(
                f"{label}: {count:,} records"
                + (f" ({self.ccpm_skipped[label]} with no translation skipped)" if label in self.ccpm_skipped else "")
                for label, count in self.ccpm_records.items()
            )
            reference = ", ".join(f"{name} {value:.2%}" for name, value in CCPM_REFERENCE.items())
            notes.append(
                f"CCPM accuracy: the translation picks the most similar of its choices ({counts}). "
                f"For context, the CCPM paper on its test split: {reference}."
            )
        if rerank := self.reranker:
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
                f"`+ rerank@K`: the row's top K lines reordered by the reranker `{rerank['model']}`, whose CCPM "
                f"accuracy (its score over the choices) the row shows. One scoring pass per retriever at the deepest "
                f"K ({passes}); the added latency per query is about K / (pairs/s)."
            )
            notes += [f"note: {note}" for note in rerank["notes"]]
        if any(row.model == "bm25s" for row in self.rows):
            notes.append(
                "bm25-*: bm25s (Lucene BM25, k1=1.5, b=0.75) over the same corpus, jieba words or single chars."
            )
        if fusion := self.fusion:
            how = (
                f"alpha {fusion['alpha']} x dense + {1 - fusion['alpha']:.2f} x BM25, each min-max normalised per query"
                if fusion["fusion"] == "interpolate"
                else f"reciprocal rank fusion, k={fusion['rrf_k']}, dense weight {fusion['alpha']}"
            )
            notes.append(
                f"`MODEL + {fusion['lexical']}`: the model's ranking fused with {fusion['lexical']} ({how}) over the "
                f"union of each side's top {fusion['depth']}, on the same corpus embeddings; its CCPM columns fuse the "
                "same way over each record's choices."
            )
            best = "; ".join(
                f"{name}: {sweep['best']['fusion']}, depth {sweep['best']['depth']}, alpha {sweep['best']['alpha']} "
                f"({HEADERS[TUNED_METRIC]} {sweep['best'][TUNED_METRIC]:.4f})"
                for name, sweep in self.sweeps.items()
            )
            notes.append(f"Fusion sweep on this eval split (fusion_sweep.png), best {HEADERS[TUNED_METRIC]}: {best}.")
        if any(row.backend not in (None, "torch") for row in self.rows):
            notes.append(
                "onnx / openvino rows: the same model run by ONNX Runtime or OpenVINO from the files `just export` "
                "wrote; -int8: its int8 copy (quality cost next to the torch row)."
            )
        notes.append("seconds: the time each row took to encode/index and score (model loading excluded).")
        return notes

    @property
    def title(self) -> str:
        return f"{self.queries:,} queries against {self.corpus:,} lines"

    def plot(self, path: str | Path) -> None:
        """evaluation.png: grouped bars, the PLOTTED metrics and the CCPM columns of every row."""
        bars = {
            row.name: {
                **{HEADERS[metric]: row.retrieval[metric] for metric in PLOTTED},
                **{f"CCPM {label}": value for label, value in row.ccpm.items()},
            }
            for row in self.rows
        }
        plot_metric_bars(bars, path, title=self.title)

    def plot_sweep(self, path: str | Path) -> None:
        """fusion_sweep.png (--hybrid): TUNED_METRIC against alpha per model, its own row and BM25's dashed."""
        by_name = {row.name: row.retrieval[TUNED_METRIC] for row in self.rows}
        baselines = {
            name: {side: by_name[side] for side in (name, HYBRID_LEXICAL) if side in by_name} for name in self.sweeps
        }
        plot_fusion_sweep(self.sweeps, baselines, path, metric=TUNED_METRIC, title=self.title)

    def write(self, folder: Path) -> list[str]:
        """evaluation.md, the figures, then evaluation.json (the marker); returns the names written."""
        (folder / "evaluation.md").write_text(f"# Evaluation\n\n{self.to_markdown()}", encoding="utf-8")
        self.plot(folder / "evaluation.png")
        figures = ["evaluation.png"]
        if self.sweeps is not None:
            self.plot_sweep(folder / "fusion_sweep.png")
            figures.append("fusion_sweep.png")
        write_json(folder / MARKER, self.to_json())
        return [MARKER, "evaluation.md", *figures]


# ---------------------------------------------------------------------------------------------------------
# The stage


def _read_ccpm_sets(
    config: EvaluateConfig, data: Path, eval_split: Split
) -> tuple[dict[str, list[CCPMRecord]], dict[str, int]]:
    """The CCPM record sets (the files', then the eval split's held-out records) and the records each file skipped."""
    ccpm_sets, skipped = {}, {}
    for label, path in zip(_short_names(config.ccpm), config.ccpm, strict=True):
        ccpm_sets[label], skipped[label] = read_ccpm(path)
    if config.ccpm_eval_split:
        held_out = ccpm_records_from_eval(eval_split.rows) if eval_split.type is PAIR else []
        if held_out:
            ccpm_sets[EVAL_SPLIT_CCPM] = held_out
        else:  # e.g. a `just mine` folder: its rows no longer carry CCPM's choices
            logger.info(
                f"note: {data / 'eval.jsonl'} has no CCPM records with their choices: no eval-split CCPM column"
            )
    return ccpm_sets, {label: count for label, count in skipped.items() if count}


def _model_rows(
    suite: Suite,
    variant: tuple[str, str, str],
    model: SentenceTransformer,
    config: EvaluateConfig,
    lexical: Lexical | None,
    reranker: Reranking | None,
) -> tuple[list[Row], list[dict[str, Any]], dict[str, Any] | None]:
    """A model's rows in report order (its own, reranked, hybrid, hybrid reranked, tuned), its rerank passes, its
    sweep."""
    dense = dense_row(suite, *variant, model, hybrid=lexical is not None)
    rows, passes, sweep = [dense.row], [], None
    if reranker:
        reranked, scoring = reranked_rows(suite, dense.row.name, dense.ranking, reranker)
        rows += reranked
        passes.append(scoring)
    if lexical is not None:
        hybrid, fused_ranking, fused = hybrid_row(suite, dense, lexical, config)
        rows.append(hybrid)
        if reranker:
            reranked, scoring = reranked_rows(suite, hybrid.name, fused_ranking, reranker)
            rows += reranked
            passes.append(scoring)
        sweep = fusion_sweep(suite, fused, config.rrf_k)
        if tuned := tuned_row(suite, fused, sweep, config):
            rows.append(tuned)
    return rows, passes, sweep


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Score every model (and the BM25 baselines) and write evaluation.{json,md,png} to `config.out`."""
    data = require_files(
        config.data, ("eval.jsonl", "corpus.jsonl"), "a folder written by `just prepare` or `just mine`"
    )
    eval_split = read_split(data / "eval.jsonl")
    corpus_rows = CORPUS.read(data / "corpus.jsonl")
    ccpm_sets, ccpm_skipped = _read_ccpm_sets(config, data, eval_split)

    names = _distinct(config.model)
    with atomic_output_dir(config.out, MARKER) as out:
        variants = _variants(names, config.backend)
        models = [
            load_model(
                path, max_seq_length=config.max_seq_length, query_instruction=config.query_instruction, backend=backend
            )
            for _, path, backend in variants
        ]
        cross_encoder = load_reranker(config.reranker) if config.reranker else None

        evaluator = build_ir_evaluator(
            eval_split.rows,
            corpus_rows,
            max_corpus=config.max_corpus,
            seed=config.seed,
            batch_size=config.batch_size,
            show_progress_bar=not progress_off(),
            rank_depth=max(config.rerank_top_k),
        )
        logger.info(f"{len(evaluator.queries):,} queries against {len(evaluator.corpus):,} corpus lines")
        suite = Suite(evaluator, ccpm_sets, config.batch_size)
        reranker = (
            Reranking.prepare(suite, cross_encoder, config.reranker, config.rerank_top_k) if cross_encoder else None
        )
        lexical = lexical_side(suite) if config.hybrid else None  # shared by every model's fusion
        rows = bm25_rows(suite) if config.bm25 else []
        passes, sweeps = [], {}
        for variant, model in zip(variants, models, strict=True):
            model_rows, model_passes, sweep = _model_rows(suite, variant, model, config, lexical, reranker)
            rows += model_rows
            passes += model_passes
            if sweep is not None:
                sweeps[variant[0]] = sweep

        report = Report(
            data=str(data),
            queries=len(evaluator.queries),
            corpus=len(evaluator.corpus),
            max_corpus=config.max_corpus,
            ccpm_records={label: len(records) for label, records in ccpm_sets.items()},
            ccpm_skipped=ccpm_skipped,
            rows=rows,
        )
        if config.hybrid:
            report.fusion = {"lexical": HYBRID_LEXICAL, **_fusion_settings(config)}
            report.sweeps = sweeps
        if reranker:
            report.reranker = {"model": config.reranker, "scoring": passes, "notes": reranker.notes}
        written = report.write(out)

    print(report.to_markdown())  # the result: on stdout
    logger.info(f"wrote {config.out}/" + ", ".join(written))
    return report.to_json()
