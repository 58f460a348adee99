"""Evaluation: metric values against hand-computed ranks, CCPM accuracy, BM25 rows, the report files, bad input.

Hand-checkable scores come from a real SentenceTransformer whose similarity we can compute on paper: a
StaticEmbedding with one-hot character embeddings, i.e. the cosine of the two texts' character counts.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import save_bag_of_chars_model
from sentence_transformers import CrossEncoder, SentenceTransformer

from st_poetry.cli import main as cli_main
from st_poetry.core.config import EvaluateConfig
from st_poetry.core.errors import UserError
from st_poetry.core.files import write_jsonl
from st_poetry.core.modeling import load_reranker
from st_poetry.core.schema import PAIR
from st_poetry.evaluation.baselines import bm25_ccpm_accuracy, bm25_retrieval_metrics
from st_poetry.evaluation.evaluate import Reranking, Suite, _short_names, evaluate, reranked_rows
from st_poetry.evaluation.metrics import (
    CCPMRecord,
    build_ir_evaluator,
    ccpm_accuracy,
    ccpm_records_from_eval,
    read_ccpm,
    retrieval_metrics,
)
from st_poetry.retrieval.lexical import single_chars

# Cosine of character counts, query against each line (c0..c4), worked out by hand:
#   "甲乙丙丁丁" (positive c1): c0 5/(√7·2)=.945, c1 3/(√7·2)=.567, c2 .378, c3 .189   -> c1 at rank 2
#   "甲乙丙丁子" (positive c3): c0 4/(√5·2)=.894, c1 .671, c2 .447, c3 1/(√5·2)=.224, c4 1/(√5·√7)=.169 -> rank 4
#   "甲乙丙丁"   (positive c0): identical text, cosine 1                                  -> rank 1
#   "丑寅"       (positive c4): the only line sharing a character                         -> rank 1
CORPUS = ["甲乙丙丁", "甲乙丙戊", "甲乙己庚", "甲辛壬癸", "子丑寅卯卯"]
PAIRS = [("甲乙丙丁丁", "甲乙丙戊"), ("甲乙丙丁子", "甲辛壬癸"), ("甲乙丙丁", "甲乙丙丁"), ("丑寅", "子丑寅卯卯")]
RANKS = [2, 4, 1, 1]
RELEVANT = ["c1", "c3", "c0", "c4"]  # each query's positive
CCPM = [  # the most similar choice is the first one each time: right, right, wrong -> 2/3
    {"translation": "甲乙丙", "choices": ["甲乙丙", "丁戊己", "庚辛壬"], "answer": 0},
    {"translation": "子丑", "choices": ["子丑", "寅卯", "辰巳"], "answer": 0},
    {"translation": "甲乙", "choices": ["甲乙", "丙丁", "戊己"], "answer": 2},
]


def corpus_rows(texts=CORPUS):
    return [{"id": f"c{i}", "text": text} for i, text in enumerate(texts)]


def eval_rows(pairs=PAIRS):
    return [{"anchor": anchor, "positive": positive} for anchor, positive in pairs]


def ccpm_file(path, records):
    """A CCPM input file (not a stage's row type, so the generic writer)."""
    write_jsonl(path, records)
    return path


@pytest.fixture(scope="module")
def bag_of_chars_model(tmp_path_factory) -> str:
    texts = [*CORPUS, *(anchor for anchor, _ in PAIRS), "甲乙丙丁戊己庚辛壬子丑寅卯辰巳"]
    return save_bag_of_chars_model(tmp_path_factory.mktemp("models") / "bag-of-chars", texts)


def test_retrieval_metrics_match_hand_computed_ranks(bag_of_chars_model):
    model = SentenceTransformer(bag_of_chars_model)
    metrics = retrieval_metrics(build_ir_evaluator(eval_rows(), corpus_rows()), model)

    reciprocal = [1 / rank for rank in RANKS]
    assert metrics["recall@1"] == pytest.approx(0.5)
    assert metrics["recall@5"] == metrics["recall@10"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx(sum(reciprocal) / 4)  # 0.6875
    assert metrics["map@100"] == pytest.approx(sum(reciprocal) / 4)  # one relevant line per query
    assert metrics["ndcg@10"] == pytest.approx(sum(1 / math.log2(rank + 1) for rank in RANKS) / 4)


def test_ranked_hands_back_the_ranking_its_metrics_scored(bag_of_chars_model):
    model = SentenceTransformer(bag_of_chars_model)
    evaluator = build_ir_evaluator(eval_rows(), corpus_rows())
    metrics, ranking = evaluator.ranked(model)
    ids = [[hit["corpus_id"] for hit in hits] for hits in ranking]
    assert [query_ids.index(line) + 1 for query_ids, line in zip(ids, RELEVANT, strict=True)] == RANKS
    assert metrics == retrieval_metrics(evaluator, model)


def _ranking(ids_per_query: list[list[str]]) -> list[list[dict]]:
    return [[{"corpus_id": c, "score": float(len(ids) - i)} for i, c in enumerate(ids)] for ids in ids_per_query]


def test_reranked_rows_reorder_the_ranking_they_are_given_whatever_was_scored_last(seeded_reranker):
    evaluator = build_ir_evaluator(eval_rows(), corpus_rows())
    suite = Suite(evaluator, {}, batch_size=8)
    reranker = Reranking(load_reranker(seeded_reranker), "seeded", top_ks=[2], ccpm={}, notes=[])
    found = _ranking([[line, "c2"] for line in RELEVANT])  # c2 is no query's positive
    missed = _ranking([["c2", "c0"], ["c2", "c0"], ["c2", "c1"], ["c2", "c0"]])

    (found_row,), first = reranked_rows(suite, "found", found, reranker)
    suite.metrics(found)  # scored last: reranking reads the ranking it is given, not the evaluator's last one
    (missed_row,), second = reranked_rows(suite, "missed", missed, reranker)
    assert found_row.retrieval["recall@10"] == 1.0 and missed_row.retrieval["recall@10"] == 0.0
    assert (found_row.name, found_row.rerank_top_k, missed_row.model) == ("found + rerank@2", 2, "missed")
    # the positive stays first where the reranker scores it at least as high as c2 (a tie keeps the given order)
    text = dict(zip(evaluator.corpus_ids, evaluator.corpus, strict=True))
    score = reranker.known
    first_places = [
        score[query, text[line]] >= score[query, text["c2"]]
        for query, line in zip(evaluator.queries, RELEVANT, strict=True)
    ]
    assert found_row.retrieval["recall@1"] == sum(first_places) / 4
    # a (query, line) pair is scored once per run: the second pass scores only the pairs the first had not
    assert (first["pairs"], first["scored"], second["pairs"], second["scored"]) == (8, 8, 8, 4)


def test_bm25_ranks_the_line_sharing_characters_first_and_leaves_unmatched_lines_unranked():
    shared = build_ir_evaluator(eval_rows([("丑寅", "子丑寅卯卯")]), corpus_rows())
    assert bm25_retrieval_metrics(shared, single_chars)["recall@1"] == 1.0
    # No shared character with any line: every BM25 score is 0, so nothing is retrieved (c0 would otherwise
    # win the tie on its id and count as a hit).
    unmatched = build_ir_evaluator(eval_rows([("辰巳", "甲乙丙丁")]), corpus_rows())
    assert bm25_retrieval_metrics(unmatched, single_chars)["recall@10"] == 0.0


def test_ccpm_accuracy_on_three_records(tmp_path, bag_of_chars_model):
    empty = {"translation": " ", "choices": ["甲", "乙"], "answer": 0}  # skipped and counted, as prepare does
    records, skipped = read_ccpm(ccpm_file(tmp_path / "ccpm.jsonl", [*CCPM, empty]))
    assert (len(records), skipped) == (3, 1)
    assert records[1] == CCPMRecord("子丑", ["子丑", "寅卯", "辰巳"], 0)
    assert ccpm_accuracy(SentenceTransformer(bag_of_chars_model), records) == pytest.approx(2 / 3)
    assert bm25_ccpm_accuracy(records, single_chars) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"translation": None, "choices": ["甲", "乙"], "answer": 0}, "missing translation"),
        ({"translation": "甲", "choices": ["甲"], "answer": 0}, "choices is not a list of texts"),
        ({"translation": "甲", "choices": ["甲", "乙"], "answer": 2}, "answer out of range"),
        ({"translation": "甲", "choices": ["甲", "乙"], "answer": True}, "answer out of range"),
        (["甲"], "a CCPM record must be a JSON object"),
    ],
)
def test_malformed_ccpm_record_names_file_and_line(tmp_path, bad, message):
    path = ccpm_file(tmp_path / "ccpm.jsonl", [CCPM[0], bad])
    with pytest.raises(UserError, match=rf"ccpm.jsonl:2: {message}"):
        read_ccpm(path)


def test_held_out_ccpm_records_come_from_prepared_eval_rows():
    rows = [
        {"anchor": "子丑", "positive": "戊己", "negatives": ["甲乙", "丙丁"], "source": "ccpm"},
        {"anchor": "子丑", "positive": "寅卯", "negatives": [], "source": "works"},
    ]
    # Choices are sorted, so the answer's position says nothing about which one is right.
    assert ccpm_records_from_eval(rows) == [CCPMRecord("子丑", ["丙丁", "戊己", "甲乙"], 1)]


def test_short_names_keep_the_full_path_only_where_names_clash():
    assert _short_names(["../models/e5-small-zh/", "BAAI/bge-base-zh-v1.5"]) == ["e5-small-zh", "bge-base-zh-v1.5"]
    assert _short_names(["a/final", "b/final"]) == ["a/final", "b/final"]


def test_evaluate_writes_side_by_side_report(tmp_path, prepared_dir, tiny_st_model, bag_of_chars_model, capsys):
    ccpm = ccpm_file(tmp_path / "ccpm.jsonl", CCPM)
    out = tmp_path / "evaluation"
    models = ["--model", tiny_st_model, "--model", bag_of_chars_model]
    cli_main(["evaluate", "--data", str(prepared_dir), *models, "--ccpm", str(ccpm), "--out", str(out)])

    report = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert [row["name"] for row in report["rows"]] == ["bm25-jieba", "bm25-chars", "tiny-st", "bag-of-chars"]
    assert report["queries"] == 8 and report["corpus"] == 38  # eval groups p7, p8 against every line
    for row in report["rows"]:
        assert set(row["retrieval"]) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "map@100"}
        assert all(0.0 <= value <= 1.0 for value in row["retrieval"].values())
        assert set(row["ccpm"]) == {"ccpm.jsonl"} and row["seconds"] >= 0
    by_name = {row["name"]: row for row in report["rows"]}
    assert by_name["bag-of-chars"]["ccpm"]["ccpm.jsonl"] == pytest.approx(2 / 3)
    # Character overlap alone finds these lines: every translation shares characters with its line.
    assert by_name["bm25-chars"]["retrieval"]["recall@10"] > 0.5

    printed = capsys.readouterr().out
    table = (out / "evaluation.md").read_text(encoding="utf-8")
    assert "| bm25-chars |" in printed and "| bag-of-chars |" in table and "82.60%" in table
    assert (out / "evaluation.png").read_bytes().startswith(b"\x89PNG")


def test_eval_split_ccpm_records_are_scored_without_a_ccpm_file(tmp_path, prepared_dir, bag_of_chars_model):
    rows = PAIR.read(prepared_dir / "eval.jsonl")
    rows[0].update(source="ccpm", negatives=["大漠孤烟直", "长河落日圆", "野火烧不尽"])
    PAIR.write(prepared_dir / "eval.jsonl", rows)
    config = EvaluateConfig(data=str(prepared_dir), model=[bag_of_chars_model], bm25=False, out=str(tmp_path / "o"))
    report = evaluate(config)
    assert report["ccpm_records"] == {"eval split": 1}
    assert [row["name"] for row in report["rows"]] == ["bag-of-chars"]


def test_a_folder_without_ccpm_choices_says_why_there_is_no_eval_split_ccpm_column(
    tmp_path, prepared_dir, bag_of_chars_model, capsys
):
    config = EvaluateConfig(data=str(prepared_dir), model=[bag_of_chars_model], bm25=False, out=str(tmp_path / "o"))
    report = evaluate(config)
    assert report["ccpm_records"] == {}
    assert "has no CCPM records with their choices" in capsys.readouterr().err


def test_bad_inputs_fail_in_one_line_and_leave_no_output(tmp_path, prepared_dir, tiny_st_model, capsys):
    broken_model = tmp_path / "broken-model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    ccpm = ccpm_file(tmp_path / "ccpm.jsonl", [CCPM[0], {"translation": "甲", "choices": "甲乙", "answer": 0}])
    no_eval = tmp_path / "no-eval"
    no_eval.mkdir()
    out = tmp_path / "evaluation"
    cases = [
        (["--model", str(tmp_path / "missing")], "model folder not found"),
        (["--model", str(broken_model)], "cannot load model"),
        (["--model", tiny_st_model, "--ccpm", str(ccpm)], "ccpm.jsonl:2: choices is not a list of texts"),
        (["--model", tiny_st_model, "--data", str(no_eval)], "eval.jsonl is missing: --data must be"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["evaluate", "--data", str(prepared_dir), "--out", str(out), "--no-bm25", *flags])
        assert exit_info.value.code == 2
        [error] = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]
        assert error.startswith("error: ") and message in error
        assert not out.exists()


def test_hybrid_rows_and_sweep_use_the_same_metric_code_and_never_tune_on_ccpm(tmp_path, prepared_dir, tiny_st_model):
    ccpm = ccpm_file(tmp_path / "ccpm.jsonl", CCPM)
    # a random tiny BERT: continuous scores, so no ties that the dense and the fused rankings could break apart
    base = {"data": str(prepared_dir), "model": [tiny_st_model], "hybrid": True}
    report = evaluate(EvaluateConfig(**base, ccpm=[str(ccpm)], out=str(tmp_path / "with-ccpm")))

    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows)[:4] == ["bm25-jieba", "bm25-chars", "tiny-st", "tiny-st + bm25-chars"]
    hybrid = rows["tiny-st + bm25-chars"]
    assert set(hybrid["retrieval"]) == set(rows["tiny-st"]["retrieval"])
    assert set(hybrid["ccpm"]) == {"ccpm.jsonl"}
    assert report["fusion"] == {
        "lexical": "bm25-chars",
        "fusion": "interpolate",
        "alpha": 0.6,
        "depth": 50,
        "rrf_k": 60,
    }

    sweep = report["fusion_sweep"]["models"]["tiny-st"]
    point = {(p["fusion"], p["depth"], p["alpha"]): p for p in sweep["points"]}
    assert len(point) == 2 * 4 * 11
    # the row is the sweep's point at the configured settings
    for metric in ("recall@1", "recall@10", "mrr@10", "ndcg@10"):
        assert hybrid["retrieval"][metric] == pytest.approx(point["interpolate", 50, 0.6][metric])
        # alpha = 1 is the dense ranking, scored by the same code as the model's own row
        assert point["interpolate", 10, 1.0][metric] == pytest.approx(rows["tiny-st"]["retrieval"][metric])
    assert point["interpolate", 10, 0.0]["recall@1"] == pytest.approx(rows["bm25-chars"]["retrieval"]["recall@1"])
    best = sweep["best"]
    assert best["ndcg@10"] == max(p["ndcg@10"] for p in sweep["points"])
    # the best settings get a row of their own, every metric and the CCPM column included
    assert (best["fusion"], best["depth"], best["alpha"]) != ("interpolate", 50, 0.6)
    assert list(rows)[4:] == ["tiny-st + bm25-chars (tuned)"]
    tuned = rows["tiny-st + bm25-chars (tuned)"]
    assert tuned["retrieval"]["ndcg@10"] == pytest.approx(best["ndcg@10"]) and set(tuned["ccpm"]) == {"ccpm.jsonl"}

    # the model's row (from the faiss ranking that the fusion reuses) is what the evaluator itself reports
    plain = evaluate(EvaluateConfig(**{**base, "hybrid": False}, bm25=False, out=str(tmp_path / "plain")))
    assert plain["rows"][0]["retrieval"] == pytest.approx(rows["tiny-st"]["retrieval"])

    # a CCPM file changes no sweep figure: the settings are chosen on the eval split alone
    without = evaluate(EvaluateConfig(**base, bm25=False, out=str(tmp_path / "without-ccpm")))
    assert without["fusion_sweep"] == report["fusion_sweep"]
    assert (tmp_path / "with-ccpm" / "fusion_sweep.png").read_bytes().startswith(b"\x89PNG")
    assert "Fusion sweep on this eval split" in (tmp_path / "with-ccpm" / "evaluation.md").read_text(encoding="utf-8")


def test_the_same_model_given_twice_is_one_row(tmp_path, prepared_dir, bag_of_chars_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = [bag_of_chars_model, bag_of_chars_model + "/", os.path.relpath(bag_of_chars_model)]
    config = EvaluateConfig(data=str(prepared_dir), model=same, bm25=False, out=str(tmp_path / "o"))
    report = evaluate(config)
    assert [(row["name"], row["model"]) for row in report["rows"]] == [("bag-of-chars", bag_of_chars_model)]
    assert capsys.readouterr().err.count("evaluated once") == 2


# ---------------------------------------------------------------------------------------------------------
# The whole report, pinned: every kind of row (BM25, dense, reranked, hybrid, hybrid reranked, tuned), the sweep,
# the CCPM columns and the notes, as the report looked before it was split into row producers.

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "ST_POETRY_REGENERATE_GOLDEN"  # =1 rewrites the golden files: only for an intended change


@pytest.fixture(scope="module")
def seeded_reranker(tmp_path_factory, tiny_hf_model) -> str:
    """The tiny BERT with a one-score head drawn from a fixed seed, whatever ran before (unlike tiny_reranker)."""
    folder = tmp_path_factory.mktemp("models") / "seeded-reranker"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        CrossEncoder(tiny_hf_model, num_labels=1).save_pretrained(str(folder))
    return str(folder)


def _observable(value, paths: dict[str, str]):
    """The report without what varies between runs: timings set to None, floats to 6 places, tmp paths named."""
    if isinstance(value, dict):
        return {
            key: None if key in ("seconds", "pairs_per_second") else _observable(item, paths)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_observable(item, paths) for item in value]
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str):
        for name, path in paths.items():
            value = value.replace(path, name)
    return value


def _observable_markdown(text: str, paths: dict[str, str]) -> str:
    for name, path in paths.items():
        text = text.replace(path, name)
    text = re.sub(r"\| \d+ \|$", "| _ |", text, flags=re.MULTILINE)  # the seconds column
    return re.sub(r"\(\d+ pairs/s\)", "(_ pairs/s)", re.sub(r"scored in \d+ s", "scored in _ s", text))


def test_the_report_is_what_it_was_before_the_row_producers(
    tmp_path, prepared_dir, tiny_st_model, bag_of_chars_model, seeded_reranker
):
    rows = PAIR.read(prepared_dir / "eval.jsonl")
    rows[0].update(source="ccpm", negatives=["大漠孤烟直", "长河落日圆", "野火烧不尽"])
    PAIR.write(prepared_dir / "eval.jsonl", rows)
    out = tmp_path / "evaluation"
    config = EvaluateConfig(
        data=str(prepared_dir),
        model=[tiny_st_model, bag_of_chars_model],
        ccpm=[str(ccpm_file(tmp_path / "ccpm.jsonl", CCPM))],
        hybrid=True,
        reranker=seeded_reranker,
        rerank_top_k=[3, 10],
        max_corpus=30,
        out=str(out),
    )
    report = evaluate(config)

    written = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(report))
    paths = {"<data>": str(prepared_dir), "<reranker>": seeded_reranker}
    paths |= {"<tiny-st>": tiny_st_model, "<bag-of-chars>": bag_of_chars_model}
    observed = _observable(written, paths)
    markdown = _observable_markdown((out / "evaluation.md").read_text(encoding="utf-8"), paths)
    if os.environ.get(REGENERATE) == "1":
        GOLDEN.mkdir(exist_ok=True)
        text = json.dumps(observed, ensure_ascii=False, indent=1) + "\n"
        (GOLDEN / "evaluation.json").write_text(text, encoding="utf-8")
        (GOLDEN / "evaluation.md").write_text(markdown, encoding="utf-8")
        pytest.skip(f"{REGENERATE}=1: golden files rewritten")
    golden = json.loads((GOLDEN / "evaluation.json").read_text(encoding="utf-8"))
    assert list(observed) == list(golden)  # the keys, in their order
    assert [row["name"] for row in observed["rows"]] == [row["name"] for row in golden["rows"]]
    assert observed == golden
    assert markdown == (GOLDEN / "evaluation.md").read_text(encoding="utf-8")
    for figure in ("evaluation.png", "fusion_sweep.png"):
        assert (out / figure).read_bytes().startswith(b"\x89PNG")
