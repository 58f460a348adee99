from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from st_poetry.cli import main
from st_poetry.cli.options import parse_config
from st_poetry.core import modeling
from st_poetry.core.config import FusionOptions, IndexConfig, QueryConfig
from st_poetry.core.errors import UserError
from st_poetry.core.modeling import load_model
from st_poetry.retrieval import search, service
from st_poetry.retrieval.search import FAISS_FILE as FAISS_NAME
from st_poetry.retrieval.search import INDEX_INFO, PoetryIndex, build_index, query, read_corpus


@pytest.fixture
def index_dir(tmp_path, tiny_hf_model, prepared_dir):
    """An exact (flat) index built by a model without prompts: a query equal to a corpus line encodes exactly like
    it."""
    out = tmp_path / "index"
    corpus = str(prepared_dir / "corpus.jsonl")
    build_index(IndexConfig(model=tiny_hf_model, corpus=corpus, out=str(out), index_type="flat"))
    return out


def _query(capsys, index_dir, *queries, **fields):
    """Run `query` and return its results and what it printed (and only that)."""
    capsys.readouterr()
    results = query(QueryConfig(queries=list(queries), index=str(index_dir), **fields))
    return results, capsys.readouterr().out


def test_build_writes_index_and_records_model_and_prompts(capsys, tmp_path, tiny_st_model, prepared_dir):
    out = tmp_path / "index"
    corpus = str(prepared_dir / "corpus.jsonl")
    build_index(IndexConfig(model=tiny_st_model, corpus=corpus, out=str(out), index_type="flat"))
    info = json.loads((out / INDEX_INFO).read_text(encoding="utf-8"))
    assert info["model"] == tiny_st_model
    assert info["prompts"] == {"query": "query: ", "document": "passage: "}
    assert info["embedding_dim"] == 32 and len(info["probe"]) == 32
    assert info["index_type"] == "flat" and info["hnsw"] is None
    assert info["size"] == len(read_corpus(prepared_dir / "corpus.jsonl")) == 38
    assert {path.name for path in out.iterdir()} == {"index.faiss", "lines.arrow", "bm25", INDEX_INFO}
    assert info["bm25"] == {"folder": "bm25", "tokens": "bm25-chars", "k1": 1.5, "b": 0.75}
    # the recorded model is found again and passes its own check
    results, _ = _query(capsys, out, "山中下雨后傍晚的秋天", top_k=38)
    assert sorted(hit["text"] for hit in results[0]["results"]) == sorted(
        row["text"] for row in read_corpus(prepared_dir / "corpus.jsonl")
    )


def test_query_instruction_is_recorded_and_reapplied(capsys, tmp_path, tiny_hf_model, prepared_dir):
    out = tmp_path / "index"
    instruction = "为这个句子生成表示以用于检索相关文章："
    corpus = str(prepared_dir / "corpus.jsonl")
    build_index(IndexConfig(model=tiny_hf_model, corpus=corpus, out=str(out), query_instruction=instruction))
    assert json.loads((out / INDEX_INFO).read_text())["prompts"] == {"query": instruction, "document": None}
    index = PoetryIndex(out)
    assert index.model.prompts["query"] == instruction


def test_a_corpus_line_finds_itself_first_with_its_metadata(capsys, index_dir):
    # No prompts: the query is encoded exactly like the line, so it comes first with cosine 1.
    results, out = _query(capsys, index_dir, "空山新雨后", "独钓寒江雪", top_k=3)
    first = results[0]["results"][0]
    assert first["text"] == "空山新雨后" and first["rank"] == 1
    assert (first["title"], first["author"], first["dynasty"], first["group"]) == ("山居秋暝", "王维", "唐", "p7")
    assert results[1]["results"][0]["title"] == "江雪"
    assert [len(result["results"]) for result in results] == [3, 3]
    scores = [hit["score"] for hit in results[0]["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=1e-5)
    # the table: a header and one row per hit under each query
    assert "» 空山新雨后" in out and "山居秋暝" in out and "王维" in out
    assert out.count("score") == 2


def test_json_output_is_one_object_per_query(capsys, index_dir):
    _, out = _query(capsys, index_dir, "床前明月光", "春眠不觉晓", top_k=2, json=True)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["query"] for row in rows] == ["床前明月光", "春眠不觉晓"]
    assert rows[0]["results"][0]["text"] == "床前明月光" and rows[0]["results"][0]["author"] == "李白"
    # hybrid by default: score is the fused one, beside each side's
    metadata = {"rank", "score", "id", "text", "title", "author", "dynasty", "group"}
    assert set(rows[1]["results"][0]) == metadata | {"dense_score", "bm25_score"}
    _, out = _query(capsys, index_dir, "春眠不觉晓", top_k=1, json=True, hybrid=False)
    assert set(json.loads(out)["results"][0]) == metadata


def test_top_k_larger_than_the_corpus_returns_every_line(capsys, index_dir):
    results, _ = _query(capsys, index_dir, "明月", top_k=1000)
    assert len(results[0]["results"]) == 38


def test_a_hybrid_search_returns_top_k_lines_whatever_its_depth(capsys, index_dir):
    index = PoetryIndex(index_dir)
    # depth 3 gathers at most 6 candidates; top_k asks for more, the index has 38
    for top_k, lines in ((20, 20), (1000, 38), (2, 2)):
        (hits,) = index.search(["明月"], top_k=top_k, hybrid=True, fusion=FusionOptions(depth=3))
        assert len(hits) == lines and [hit["rank"] for hit in hits] == list(range(1, lines + 1))
    # the fusion still ranks: the line itself first
    (hits,) = index.search(["孤舟蓑笠翁"], top_k=20, hybrid=True, fusion=FusionOptions(depth=3, fusion="rrf"))
    assert hits[0]["text"] == "孤舟蓑笠翁" and len({hit["id"] for hit in hits}) == 20
    results, _ = _query(capsys, index_dir, "明月", top_k=100, depth=3)
    assert len(results[0]["results"]) == 38


def test_top_k_over_the_index_size_says_so(capsys, index_dir):
    capsys.readouterr()
    query(QueryConfig(queries=["明月"], index=str(index_dir), top_k=1000))
    assert "note: --top-k 1000 is more than the index's 38 lines: all of them" in capsys.readouterr().err
    query(QueryConfig(queries=["明月"], index=str(index_dir), top_k=38))
    assert "note" not in capsys.readouterr().err


def test_queries_from_a_file_and_from_stdin(capsys, monkeypatch, tmp_path, index_dir):
    queries = tmp_path / "queries.txt"
    queries.write_text("春眠不觉晓\n\n  锄禾日当午  \n", encoding="utf-8")
    results, _ = _query(capsys, index_dir, "白日依山尽", file=str(queries), top_k=1)
    assert [result["query"] for result in results] == ["白日依山尽", "春眠不觉晓", "锄禾日当午"]
    assert [result["results"][0]["title"] for result in results] == ["登鹳雀楼", "春晓", "悯农"]

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("红豆生南国\n".encode())))
    results, _ = _query(capsys, index_dir, file="-", top_k=1)
    assert results[0]["results"][0]["title"] == "相思"


def test_a_model_with_other_prompts_is_refused(index_dir, tiny_st_model):
    # The same weights with prompts and mean pooling: the prompts check fires first.
    with pytest.raises(UserError, match=r"was built with .* and prompts"):
        PoetryIndex(index_dir, model=tiny_st_model)


def test_same_prompts_but_other_weights_are_refused(tmp_path, prepared_dir, tiny_hf_model):
    model = tmp_path / "model"
    load_model(tiny_hf_model).save(str(model))
    out = tmp_path / "index"
    build_index(IndexConfig(model=str(model), corpus=str(prepared_dir / "corpus.jsonl"), out=str(out)))
    other = load_model(tiny_hf_model)
    other[0].auto_model.embeddings.word_embeddings.weight.data.mul_(-1.0)
    other.save(str(tmp_path / "other"))
    with pytest.raises(UserError, match="encodes differently"):
        PoetryIndex(out, model=str(tmp_path / "other"))
    # the very same weights under another name are welcome
    assert PoetryIndex(out, model=tiny_hf_model).search(["千山鸟飞绝"], 1)[0][0]["text"] == "千山鸟飞绝"
    # the recorded model retrained in place since the index was built
    other.save(str(model))
    with pytest.raises(UserError, match="has changed since"):
        PoetryIndex(out)


def test_a_recorded_model_that_is_gone_says_to_pass_one(tmp_path, tiny_hf_model, prepared_dir):
    model = tmp_path / "moved-model"
    load_model(tiny_hf_model).save(str(model))
    out = tmp_path / "index"
    build_index(IndexConfig(model=str(model), corpus=str(prepared_dir / "corpus.jsonl"), out=str(out)))
    model.rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"cannot be loaded .*--model PATH"):
        PoetryIndex(out)
    assert PoetryIndex(out, model=str(tmp_path / "elsewhere")).info["size"] == 38


def test_bad_input_gives_clear_messages(tmp_path, index_dir, capsys):
    with pytest.raises(UserError, match=r"no index at .*just index"):
        query(QueryConfig(queries=["秋天"], index=str(tmp_path / "missing")))
    with pytest.raises(UserError, match="empty query"):
        query(QueryConfig(queries=["  "], index=str(index_dir)))
    with pytest.raises(UserError, match="no query given"):
        query(QueryConfig(index=str(index_dir)))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n", encoding="utf-8")
    with pytest.raises(UserError, match="no queries in it"):
        query(QueryConfig(file=str(blank), index=str(index_dir)))
    with pytest.raises(UserError, match="applies to hnsw"):
        query(QueryConfig(queries=["秋天"], index=str(index_dir), ef_search=64))


def test_corpus_row_without_text_names_file_and_line(tmp_path, tiny_st_model):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "床前明月光"}\n{"title": "静夜思"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"corpus.jsonl:2: 'text' is missing: expected an object with non-empty text"):
        build_index(IndexConfig(model=tiny_st_model, corpus=str(corpus), out=str(tmp_path / "index")))
    assert not (tmp_path / "index").exists()


def test_a_foreign_out_folder_is_refused_before_the_model_is_loaded(monkeypatch, tmp_path, prepared_dir):
    """The refusal atomic_output_dir would give after the whole corpus is encoded comes before any encoding."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not an index")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(modeling, "load_model", no_model)  # (search imports it when it builds)
    config = IndexConfig(model="unused", corpus=str(prepared_dir / "corpus.jsonl"), out=str(out))
    with pytest.raises(UserError, match=rf"refusing to overwrite {out}: it is not empty and has no {INDEX_INFO}"):
        build_index(config)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def test_a_corpus_is_encoded_in_chunks_into_the_same_index(monkeypatch, tmp_path, tiny_hf_model, prepared_dir):
    """The chunked build (ENCODE_CHUNK lines per encode call, added as they come) stores the vectors, in corpus
    order, that one call over the whole corpus gives."""
    corpus = prepared_dir / "corpus.jsonl"
    build_index(IndexConfig(model=tiny_hf_model, corpus=str(corpus), out=str(tmp_path / "whole"), index_type="flat"))
    monkeypatch.setattr(search, "ENCODE_CHUNK", 5)  # 38 lines: 7 full chunks and a short one
    chunked = str(tmp_path / "chunked")
    build_index(IndexConfig(model=tiny_hf_model, corpus=str(corpus), out=chunked, index_type="flat"))
    whole, chunked = (faiss.read_index(str(tmp_path / name / "index.faiss")) for name in ("whole", "chunked"))
    assert chunked.ntotal == whole.ntotal == 38
    expected = search.encode(load_model(tiny_hf_model).encode_document, [row["text"] for row in read_corpus(corpus)])
    np.testing.assert_allclose(chunked.reconstruct_n(0, 38), expected, atol=1e-5)
    np.testing.assert_allclose(whole.reconstruct_n(0, 38), expected, atol=1e-5)


def test_hnsw_index_builds_and_finds_the_same_lines(capsys, tmp_path, tiny_hf_model, prepared_dir):
    out = tmp_path / "hnsw"
    config = IndexConfig(
        model=tiny_hf_model, corpus=str(prepared_dir / "corpus.jsonl"), out=str(out), index_type="hnsw", hnsw_m=8
    )
    info = build_index(config)
    assert info["hnsw"] == {"m": 8, "ef_construction": 80, "ef_search": 128}
    results, _ = _query(capsys, out, "举头望明月", "大漠孤烟直", top_k=5, ef_search=64)
    assert [result["results"][0]["text"] for result in results] == ["举头望明月", "大漠孤烟直"]


def test_index_and_search_from_the_command_line(capsys, tmp_path, tiny_hf_model, prepared_dir):
    out = tmp_path / "cli-index"
    main(["index", "--model", tiny_hf_model, "--corpus", str(prepared_dir / "corpus.jsonl"), "--out", str(out)])
    assert "indexed 38 lines" in capsys.readouterr().err
    main(["search", "--index", str(out), "--top-k", "1", "--json", "疑是地上霜"])
    assert json.loads(capsys.readouterr().out)["results"][0]["title"] == "静夜思"

    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(tmp_path / "nowhere"), "秋天"])
    assert exit_info.value.code == 2 and "error: no index at" in capsys.readouterr().err


def test_config_validation_without_a_model():
    with pytest.raises(SystemExit):
        parse_config(IndexConfig, ["--index-type", "ivf"])
    with pytest.raises(ValueError, match="top_k"):
        QueryConfig(top_k=0)
    config = parse_config(QueryConfig, ["a", "b", "--top-k", "3"])
    assert config.queries == ["a", "b"] and config.top_k == 3


def test_hybrid_search_gives_both_sides_scores_and_finds_the_line_by_its_characters(capsys, index_dir):
    index = PoetryIndex(index_dir)
    (dense,) = index.search(["孤舟蓑笠翁"], top_k=38)
    (hybrid,) = index.search(["孤舟蓑笠翁"], top_k=5, hybrid=True)
    assert hybrid[0]["text"] == "孤舟蓑笠翁" and hybrid[0]["score"] == pytest.approx(1.0)  # best on both sides
    cosine = {hit["text"]: hit["score"] for hit in dense}
    lexical = index.bm25.get_scores(list("孤舟蓑笠翁"))
    for hit in hybrid:
        assert hit["dense_score"] == pytest.approx(cosine[hit["text"]], abs=1e-5)
        assert hit["bm25_score"] == pytest.approx(float(lexical[int(hit["id"][1:])]))
    assert [hit["score"] for hit in hybrid] == sorted((hit["score"] for hit in hybrid), reverse=True)

    # a description sharing only characters with its line: BM25 pulls the line up from where the random model has it
    description = "独自在大雪覆盖的寒冷江面上垂钓"
    dense_rank = [hit["text"] for hit in index.search([description], top_k=38)[0]].index("独钓寒江雪")
    (hybrid,) = index.search([description], top_k=38, hybrid=True, fusion=FusionOptions(alpha=0.3))
    assert [hit["text"] for hit in hybrid].index("独钓寒江雪") < dense_rank

    _, printed = _query(capsys, index_dir, "孤舟蓑笠翁", hybrid=True, json=True, top_k=2)
    assert set(json.loads(printed)["results"][0]) >= {"score", "dense_score", "bm25_score", "text"}
    _, table = _query(capsys, index_dir, "孤舟蓑笠翁", hybrid=True, top_k=2)
    assert table.splitlines()[1].split() == ["#", "score", "dense", "bm25", "line", "title", "author", "dynasty"]


def test_an_index_without_its_bm25_part_says_how_to_rebuild(index_dir):
    info = json.loads((index_dir / INDEX_INFO).read_text(encoding="utf-8"))
    del info["bm25"]  # as `just index` wrote it before hybrid search
    (index_dir / INDEX_INFO).write_text(json.dumps(info), encoding="utf-8")
    shutil.rmtree(index_dir / "bm25")
    assert query(QueryConfig(queries=["秋天"], index=str(index_dir), top_k=1, hybrid=False))[0]["results"]
    with pytest.raises(UserError, match=r"has no BM25 part .*: rebuild it with `just index --model .* --no-hybrid"):
        query(QueryConfig(queries=["秋天"], index=str(index_dir)))  # hybrid is the default


def test_a_punctuation_only_query_is_one_line(capsys, tmp_path, index_dir):
    with pytest.raises(UserError, match="punctuation only"):
        query(QueryConfig(queries=["，。！？"], index=str(index_dir)))
    with pytest.raises(UserError, match="punctuation only"):
        PoetryIndex(index_dir).search(["……"], hybrid=True)
    lines = tmp_path / "queries.txt"
    lines.write_text("秋天\n“”\n", encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(index_dir), "--file", str(lines)])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and error.startswith("error: query '“”' is punctuation only") and "\n" not in error


def test_a_query_of_symbols_is_searched_for_and_one_of_invisible_characters_is_refused(capsys, index_dir):
    # an emoji is text a description may be made of: searched for (by the dense side alone in a hybrid search)
    for hybrid in (True, False):
        results, _ = _query(capsys, index_dir, "🌙", "🍂🍁", top_k=3, hybrid=hybrid)
        assert [len(result["results"]) for result in results] == [3, 3]
    for text, message in (
        ("\u200b\u200b", "query '\\u200b\\u200b' has no visible character"),
        ("\ufeff \u2060", "has no visible character"),
        ("\u0301", "has no visible character"),
        ("  \t", "empty query"),
        ("《》", "is punctuation only"),
    ):
        with pytest.raises(UserError, match=re.escape(message)):
            query(QueryConfig(queries=[text], index=str(index_dir)))
        with pytest.raises(UserError, match=re.escape(message)):
            PoetryIndex(index_dir).search([text], hybrid=False)
    assert service.query_problem("⛰️ + 🌧") is None and service.query_problem("１２") is None


def _truncate(path, size=None):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 if size is None else size])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: _truncate(folder / "index.faiss"), r"index\.faiss is unreadable \(truncated or corrupt"),
        (lambda folder: (folder / INDEX_INFO).write_text("{not json"), r"index\.json is unreadable"),
        (lambda folder: (folder / INDEX_INFO).write_text("{}"), r"index\.json lacks model, .*size: not written by"),
        (lambda folder: (folder / "lines.arrow").unlink(), r"lines\.arrow is missing or unreadable"),
        (lambda folder: _truncate(folder / "lines.arrow"), r"lines\.arrow is missing or unreadable"),
        (
            lambda folder: faiss.write_index(faiss.IndexFlatIP(32), str(folder / "index.faiss")),
            r"does not hold together: index\.faiss has 0 32-dim vectors, lines\.arrow 38 lines",
        ),
    ],
)
def test_a_damaged_index_folder_is_one_line_that_says_rebuild(tmp_path, index_dir, damage, message):
    damage(index_dir)
    with pytest.raises(UserError, match=message) as error:
        PoetryIndex(index_dir)
    assert str(error.value).endswith(f"rebuild it: just index --model PATH --out {index_dir}")


def test_the_recorded_model_with_truncated_weights_is_one_line(tmp_path, prepared_dir, tiny_st_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_st_model, model)
    out = tmp_path / "index"
    build_index(IndexConfig(model=str(model), corpus=str(prepared_dir / "corpus.jsonl"), out=str(out)))
    _truncate(model / "model.safetensors")
    with pytest.raises(UserError, match=r"was built with .*, which cannot be loaded \(cannot load model"):
        PoetryIndex(out)


def test_a_query_file_that_is_not_utf8_is_one_line(tmp_path, monkeypatch, index_dir):
    queries = tmp_path / "queries.txt"
    queries.write_bytes("山中下雨".encode("gbk"))
    with pytest.raises(UserError, match=r"queries\.txt: not UTF-8 text"):
        query(QueryConfig(index=str(index_dir), file=str(queries)))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("山中下雨".encode("gbk"))))
    with pytest.raises(UserError, match=r"^stdin: not UTF-8 text"):
        query(QueryConfig(index=str(index_dir), file="-"))


def test_a_damaged_bm25_part_fails_only_a_hybrid_search(index_dir, tmp_path, prepared_dir, tiny_hf_model):
    shutil.rmtree(index_dir / "bm25")
    index = PoetryIndex(index_dir)
    assert index.search(["秋天"], top_k=1)[0]  # the dense search never opens it
    with pytest.raises(UserError, match=r"bm25 is missing or unreadable .*rebuild it: just index"):
        index.search(["秋天"], hybrid=True)
    # a BM25 part of another build (fewer lines than the faiss index)
    other = tmp_path / "other"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(prepared_dir.joinpath("corpus.jsonl").read_text().splitlines(True)[:5]), "utf-8")
    build_index(IndexConfig(model=tiny_hf_model, corpus=str(corpus), out=str(other)))
    shutil.copytree(other / "bm25", index_dir / "bm25")
    with pytest.raises(UserError, match=r"does not hold together: bm25/ indexes 5 lines, index.faiss 38"):
        PoetryIndex(index_dir).search(["秋天"], hybrid=True)


def test_a_reranker_reorders_the_fused_candidates(capsys, index_dir, tiny_reranker):
    config = QueryConfig(queries=["孤舟蓑笠翁"], index=str(index_dir), hybrid=True, reranker=tiny_reranker, top_k=3)
    config.rerank_top_k = 8
    capsys.readouterr()
    (result,) = query(config)
    hits = result["results"]
    fused = PoetryIndex(index_dir).search(["孤舟蓑笠翁"], top_k=8, hybrid=True)[0]
    # the reranker read the fusion's top 8: each hit keeps its fused place and both sides' scores
    by_text = {hit["text"]: hit for hit in fused}
    for hit in hits:
        assert hit["retrieval_rank"] == by_text[hit["text"]]["rank"] and hit["score"] == by_text[hit["text"]]["score"]
        assert {"dense_score", "bm25_score", "rerank_score"} <= set(hit)
    printed = capsys.readouterr().out
    header = printed.splitlines()[1].split()
    assert header[:5] == ["#", "score", "rerank", "dense", "bm25"]


@pytest.mark.parametrize(("index_type", "faiss_type"), [("sq8", "IndexScalarQuantizer"), ("hnsw-sq8", "IndexHNSWSQ")])
def test_8bit_indexes_find_the_same_lines_with_dense_scores_near_the_exact_ones(
    capsys, tmp_path, index_dir, tiny_hf_model, prepared_dir, index_type, faiss_type
):
    """sq8 stores 8-bit codes (trained on the first chunk, here the whole corpus) and the exact vectors beside them:
    a search rescores the codes' candidates, so it returns the flat index's lines with their exact cosines, and a
    hybrid search's dense score (BM25-only candidates included) is the exact cosine too."""
    out = tmp_path / index_type
    config = IndexConfig(
        model=tiny_hf_model, corpus=str(prepared_dir / "corpus.jsonl"), out=str(out), index_type=index_type, hnsw_m=8
    )
    info = build_index(config)
    assert info["index_type"] == index_type
    assert (info["hnsw"] is not None) == index_type.startswith("hnsw")
    opened = PoetryIndex(out)
    assert type(opened.index).__name__ == faiss_type
    flat_size = (index_dir / "index.faiss").stat().st_size
    assert (out / "index.faiss").stat().st_size < flat_size / 2 or index_type.startswith("hnsw")
    assert np.load(out / "vectors.npy", mmap_mode="r").shape == (38, opened.index.d)
    queries = ["举头望明月", "大漠孤烟直"]
    results, _ = _query(capsys, out, *queries, top_k=5, hybrid=False)
    assert [result["results"][0]["text"] for result in results] == queries
    flat = PoetryIndex(index_dir)
    for hybrid in (False, True):
        exact = flat.search(["明月", "孤烟"], 10, hybrid=hybrid)
        found = opened.search(["明月", "孤烟"], 10, hybrid=hybrid)
        for row, exact_row in zip(found, exact, strict=True):  # the same lines, each with its exact scores
            # (lines whose cosines agree to float rounding may swap places: faiss and numpy sum in another order)
            assert {hit["text"] for hit in row} == {hit["text"] for hit in exact_row}
            by_text = {hit["text"]: hit for hit in exact_row}
            for hit, exact_hit in zip(row, exact_row, strict=True):
                assert hit["score"] == pytest.approx(exact_hit["score"], abs=1e-5)
                for key in ("score", "dense_score", "bm25_score"):
                    assert hit.get(key) == pytest.approx(by_text[hit["text"]].get(key), abs=1e-5)
    # the codes alone order lines within quantization noise of their cosine: what the rescoring corrects
    codes, _ = opened.index.search(flat.encode_queries(["明月"]), 5)
    exact_scores, _ = flat.index.search(flat.encode_queries(["明月"]), 5)
    assert np.abs(codes - exact_scores).max() < 0.05


def test_an_8bit_index_without_its_vectors_says_rebuild(tmp_path, tiny_hf_model, prepared_dir):
    out = tmp_path / "sq8"
    build_index(
        IndexConfig(model=tiny_hf_model, corpus=str(prepared_dir / "corpus.jsonl"), out=str(out), index_type="sq8")
    )
    np.save(out / "vectors.npy", np.zeros((37, 4), dtype=np.float32))
    with pytest.raises(UserError, match=r"does not hold together: vectors\.npy holds float32 \(37, 4\)"):
        PoetryIndex(out)
    (out / "vectors.npy").unlink()
    with pytest.raises(UserError, match=r"vectors\.npy is missing or unreadable .*rebuild it: just index"):
        PoetryIndex(out)


def test_the_index_file_is_memory_mapped_so_processes_share_it(index_dir):
    """Opened with IO_FLAG_MMAP_IFC: the vectors are a shared read-only mapping of index.faiss (Linux /proc), not
    a private copy, so every worker that opens it shares the OS page cache's one copy."""
    opened = PoetryIndex(index_dir)
    mapped = Path("/proc/self/maps").read_text().splitlines()
    maps = [line for line in mapped if line.endswith(str(index_dir / FAISS_NAME))]
    assert maps and all(line.split()[1] == "r--s" for line in maps)
    assert opened.search(["举头望明月"], 1, hybrid=False)[0][0]["text"] == "举头望明月"


def test_a_missing_index_type_is_refused():
    with pytest.raises(SystemExit):
        parse_config(IndexConfig, ["--index-type", "pq"])
    assert parse_config(IndexConfig, ["--index-type", "pq4-sq8"]).index_type == "pq4-sq8"


def test_the_default_index_is_sq8_below_the_auto_size_and_pq4_sq8_from_it(
    monkeypatch, tmp_path, tiny_hf_model, prepared_dir, index_dir
):
    """`auto` (chosen on the whole collection, docs/BENCHMARKS.md): 8-bit codes with the exact vectors beside them
    for a small corpus (the same hits and scores as the flat index), pq4-sq8 for a large one; index.json records
    the type it chose."""
    corpus = str(prepared_dir / "corpus.jsonl")
    out = tmp_path / "default"
    info = build_index(IndexConfig(model=tiny_hf_model, corpus=corpus, out=str(out)))
    assert IndexConfig().index_type == "auto" and info["index_type"] == "sq8" and info["hnsw"] is None
    assert {path.name for path in out.iterdir()} == {"index.faiss", "vectors.npy", "lines.arrow", "bm25", INDEX_INFO}
    exact = PoetryIndex(index_dir).search(["举头望明月"], 3, hybrid=False)[0]
    found = PoetryIndex(out).search(["举头望明月"], 3, hybrid=False)[0]
    assert found[0]["text"] == exact[0]["text"] == "举头望明月"
    assert [hit["score"] for hit in found] == pytest.approx([hit["score"] for hit in exact], abs=1e-5)

    monkeypatch.setattr(search, "AUTO_PQ_LINES", 38)
    large = tmp_path / "large"
    assert build_index(IndexConfig(model=tiny_hf_model, corpus=corpus, out=str(large)))["index_type"] == "pq4-sq8"


def test_a_pq4_sq8_index_reorders_its_fast_scan_by_8bit_codes(tmp_path):
    """4-bit codes (trained on a sample of the rows) scanned for candidates that 8-bit codes reorder: nearly the
    exact top 10 on clustered unit vectors, dense scores within the 8-bit codes' rounding of the exact cosines."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32)).astype(np.float32)
    rows = centres[rng.integers(0, 50, 3000)] + 0.5 * rng.standard_normal((3000, 32)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    queries = rows[:100] + 0.3 * rng.standard_normal((100, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    vectors = search.VectorsFile(tmp_path / "vectors.npy", len(rows), 32)
    vectors.append(rows[:1234])
    vectors.append(rows[1234:])
    np.testing.assert_array_equal(np.load(tmp_path / "vectors.npy"), rows)
    index = search.RefinedIndex(
        search.index_vectors(search.new_faiss_index(IndexConfig(index_type="pq4-sq8"), 32), vectors)
    )
    exact = rows @ queries.T
    scores, ids = index.search(queries, 10)
    top = np.argsort(-exact, axis=0)[:10].T
    assert np.mean([len(set(found) & set(best)) / 10 for found, best in zip(ids, top, strict=True)]) >= 0.95
    assert np.abs(scores - np.take_along_axis(exact.T, ids, axis=1)).max() < 0.02
    assert np.abs(index.reconstruct_batch(ids[0]) @ queries[0] - scores[0]).max() < 1e-5
    _, every = index.search(queries[:1], 3000)  # more than the scan's candidates: every row, once
    assert sorted(every[0]) == list(range(3000))


def test_a_pq4_sq8_index_folder_is_searched_without_a_vectors_file(capsys, tmp_path, tiny_hf_model, prepared_dir):
    out = tmp_path / "pq"
    corpus = str(prepared_dir / "corpus.jsonl")
    assert build_index(IndexConfig(model=tiny_hf_model, corpus=corpus, out=str(out), index_type="pq4-sq8"))
    assert {path.name for path in out.iterdir()} == {"index.faiss", "scan.faiss", "lines.arrow", "bm25", INDEX_INFO}
    opened = PoetryIndex(out)
    assert type(opened.index).__name__ == "IndexScalarQuantizer"  # the 8-bit codes, memory-mapped
    assert type(opened.searched.index).__name__ == "IndexRefine" and opened.searched.index.ntotal == 38
    for hybrid in (False, True):
        (hits,) = opened.search(["明月"], 38, hybrid=hybrid)
        assert len({hit["text"] for hit in hits}) == 38
    maps = Path("/proc/self/maps").read_text().splitlines()
    codes = [line for line in maps if line.endswith(str(out / FAISS_NAME))]
    assert codes and all(line.split()[1] == "r--s" for line in codes)
    assert not [line for line in maps if line.endswith(str(out / "scan.faiss"))]  # read: faiss copies it anyway

    (out / "scan.faiss").unlink()
    with pytest.raises(UserError, match=r"scan\.faiss is unreadable .*: rebuild it: just index"):
        PoetryIndex(out)
    faiss.write_index(faiss.IndexPQFastScan(32, 8, 4), str(out / "scan.faiss"))
    with pytest.raises(UserError, match=r"does not hold together: scan\.faiss has 0 32-dim vectors, index\.faiss 38"):
        PoetryIndex(out)
