"""Compare models side by side: retrieval on the eval split, CCPM accuracy, and BM25 baselines.

    just evaluate --model ../shared/models/e5-small-zh models/e5-small-zh-poetry --ccpm path/to/ccpm/valid.jsonl
    just evaluate --model models/st-poetry --backend torch onnx onnx-int8    # what an export costs in quality

1. read the eval split and the corpus of `--data` (a prepared or a mined folder) and any CCPM files;
2. load every model with every `--backend` first (a row each), so a bad path or a missing export fails before
   minutes of encoding;
3. BM25 rows (bm25s; jieba words, single characters): the baseline a user would otherwise reach for;
4. each model: retrieval with the evaluator training uses, each eval anchor against the whole corpus
   (encoded once), then CCPM accuracy (only the CCPM texts are encoded); the time it took;
5. print the table; write evaluation.md, evaluation.png and evaluation.json (last, the marker) atomically.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from st_poetry.config import EvaluateConfig, run_cli
from st_poetry.files import atomic_output_dir, write_json
from st_poetry.lexical import BM25_TOKENIZERS, bm25_ccpm_accuracy, bm25_retrieval_metrics
from st_poetry.metrics import (
    RETRIEVAL_METRICS,
    build_ir_evaluator,
    ccpm_accuracy,
    ccpm_records_from_eval,
    read_ccpm,
    retrieval_metrics,
)
from st_poetry.modeling import load_model
from st_poetry.plots import plot_metric_bars
from st_poetry.schema import CORPUS, PAIR, read_split, require_files

MARKER = "evaluation.json"
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
    name: str, source: str, backend: str | None, retrieval: dict[str, float], ccpm: dict[str, float], seconds: float
) -> dict:
    return {
        "name": name,
        "model": source,
        "backend": backend,
        "retrieval": retrieval,
        "ccpm": ccpm,
        "seconds": round(seconds, 1),
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
    if any(row["model"] == "bm25s" for row in report["rows"]):
        notes.append("bm25-*: bm25s (Lucene BM25, k1=1.5, b=0.75) over the same corpus, jieba words or single chars.")
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

        evaluator = build_ir_evaluator(
            eval_rows,
            corpus_rows,
            max_corpus=config.max_corpus,
            seed=config.seed,
            batch_size=config.batch_size,
            show_progress_bar=True,
        )
        print(f"{len(evaluator.queries):,} queries against {len(evaluator.corpus):,} corpus lines")
        rows = []
        if config.bm25:
            for name, tokenize in BM25_TOKENIZERS.items():
                print(f"{name}: indexing and retrieving")
                start = time.perf_counter()
                retrieval = bm25_retrieval_metrics(evaluator, tokenize, show_progress_bar=True)
                ccpm = {label: bm25_ccpm_accuracy(records, tokenize) for label, records in ccpm_sets.items()}
                rows.append(_row(name, "bm25s", None, retrieval, ccpm, time.perf_counter() - start))
        for (name, path, backend), model in zip(variants, models, strict=True):
            print(f"{name}: encoding queries and corpus")
            start = time.perf_counter()
            retrieval = retrieval_metrics(evaluator, model)
            ccpm = {
                label: ccpm_accuracy(model, records, batch_size=config.batch_size, show_progress_bar=True)
                for label, records in ccpm_sets.items()
            }
            rows.append(_row(name, path, backend, retrieval, ccpm, time.perf_counter() - start))

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
        write_json(out / MARKER, report)

    print()
    print(markdown)
    print(f"wrote {config.out}/evaluation.json, evaluation.md, evaluation.png")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(EvaluateConfig, evaluate, argv, prog="python -m st_poetry.evaluate")


if __name__ == "__main__":
    main()
