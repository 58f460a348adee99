"""`just mine` on the tiny model: output shape, negative order, filters, no eval leakage, short rows, stats, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from st_poetry.cli import main as cli_main
from st_poetry.core.config import MineConfig
from st_poetry.core.errors import UserError
from st_poetry.core.files import write_jsonl
from st_poetry.core.modeling import load_model
from st_poetry.core.schema import CORPUS, MINED, RowType, read_split
from st_poetry.training.mine import candidate_texts, mine, model_fingerprint, normalize, read_prepared

EVAL_TEXTS = ("空山新雨后", "锄禾日当午")  # eval positives (groups p7, p8) in the conftest poems


def _type(path: Path) -> RowType:
    return CORPUS if path.name == "corpus.jsonl" else read_split(path).type


def _read(path: Path) -> list[dict]:
    """A split or corpus file through the schema's reader."""
    return _type(path).read(path)


def _config(prepared_dir: Path, model: str, **overrides) -> MineConfig:
    """Every corpus line is a candidate (range 0..corpus size, no margin), so drop counts do not depend on the
    random model's ranking."""
    values = dict(
        data=str(prepared_dir),
        out=str(prepared_dir.parent / "mined"),
        model=model,
        num_negatives=3,
        range_min=0,
        relative_margin=None,
        cache_folder=str(prepared_dir.parent / "cache"),
    )
    if "range_max" not in overrides:
        values["range_max"] = len(_read(prepared_dir / "corpus.jsonl")) - 1
    return MineConfig(**(values | overrides))


def _negatives(row: dict) -> list[str | None]:
    return [value for key, value in row.items() if key.startswith("negative_")]


def _edit(prepared_dir: Path, name: str, edit) -> None:
    path = prepared_dir / f"{name}.jsonl"
    rows = _read(path)
    edit(rows)
    _type(path).write(path, rows)


def test_output_files_columns_and_order(prepared_dir, tiny_st_model):
    config = _config(prepared_dir, tiny_st_model, num_negatives=4)
    mine(config)
    out = Path(config.out)
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "eval.jsonl", "mine_stats.json", "train.jsonl"]
    assert (out / "corpus.jsonl").read_bytes() == (prepared_dir / "corpus.jsonl").read_bytes()
    for split in ("train", "eval"):
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        rows = [json.loads(line) for line in lines]
        assert read_split(out / f"{split}.jsonl").type is MINED
        source = _read(prepared_dir / f"{split}.jsonl")
        assert [(r["anchor"], r["positive"]) for r in rows] == [(r["anchor"], r["positive"]) for r in source]
        for line, row in zip(lines, rows, strict=True):
            assert list(row) == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "negative_4"]
            assert line == MINED.line(row)  # the declared format, byte for byte
            assert all(isinstance(n, str) for n in _negatives(row))  # the whole corpus is in range: no short rows


def test_given_negatives_come_first_and_mined_ones_fill_up(prepared_dir, tiny_st_model):
    given = ["大漠孤烟直", "长河落日圆"]
    _edit(prepared_dir, "train", lambda rows: rows[0].update(negatives=given))
    config = _config(prepared_dir, tiny_st_model)
    stats = mine(config)
    first = _read(Path(config.out) / "train.jsonl")[0]
    assert _negatives(first)[:2] == given
    assert _negatives(first)[2] not in given and _negatives(first)[2] is not None
    assert stats["train"]["negatives_given"] == 2
    assert stats["train"]["dropped_mined"]["repeat"] >= 2  # the given ones came back from the search too


def test_same_poem_and_identical_text_are_dropped(prepared_dir, tiny_st_model):
    # "床前明月光" with punctuation, filed under another group: equal to p1's first positive once normalised.
    variant = {"id": "c99", "text": "床前明月光。", "title": "", "author": "", "dynasty": "", "group": "x9"}
    # ... and the couplet of p1's first two lines, filed elsewhere: it holds either line.
    couplet = variant | {"id": "c98", "text": "床前明月光，疑是地上霜。", "group": "x8"}
    _edit(prepared_dir, "corpus", lambda rows: rows.extend([variant, couplet]))
    config = _config(prepared_dir, tiny_st_model)
    stats = mine(config)

    corpus = _read(prepared_dir / "corpus.jsonl")
    groups = {}
    for row in corpus:
        groups.setdefault(normalize(row["text"]), set()).add(row["group"])
    train = _read(Path(config.out) / "train.jsonl")
    for row in train:
        negatives = [normalize(n) for n in _negatives(row)]
        assert normalize(row["positive"]) not in negatives
        assert len(set(negatives)) == len(negatives)
        assert not any(groups[n] & groups[normalize(row["positive"])] for n in negatives)
    dropped = stats["train"]["dropped_mined"]
    assert dropped["same_text"] == 1  # only the row of 床前明月光 meets its variant
    assert dropped["contains_positive"] == 2  # the couplet, for the rows of its two lines
    # 24 train rows x 3 other lines of their poem, plus the variant for p1's three other rows
    assert dropped["same_poem"] == 24 * 3 + 3
    # the 20 rows outside p1 see 床前明月光 twice (plain and with punctuation): the second is a repeat
    assert dropped["repeat"] == 20


def test_given_negatives_beyond_num_negatives_are_counted(prepared_dir, tiny_st_model):
    given = ["大漠孤烟直", "长河落日圆", "野火烧不尽", "春风吹又生", "床前明月光"]  # the last is the positive
    _edit(prepared_dir, "train", lambda rows: rows[0].update(negatives=given))
    stats = mine(_config(prepared_dir, tiny_st_model))
    first = _read(prepared_dir.parent / "mined" / "train.jsonl")[0]
    assert _negatives(first) == given[:3]
    assert stats["train"]["dropped_given"] == {"same_text": 1, "over_num_negatives": 1}


def test_no_eval_text_reaches_train(prepared_dir, tiny_st_model):
    leaked = {"anchor": "一句描述", "positive": "空山新雨后", "negatives": [], "source": "works", "group": "p9"}
    _edit(prepared_dir, "train", lambda rows: (rows.append(leaked), rows[1].update(negatives=["锄禾日当午"])))
    config = _config(prepared_dir, tiny_st_model, num_negatives=5)
    stats = mine(config)

    evaluation = _read(prepared_dir / "eval.jsonl")
    eval_texts = {normalize(r[k]) for r in evaluation for k in ("anchor", "positive")}
    train = _read(Path(config.out) / "train.jsonl")
    assert "一句描述" not in {r["anchor"] for r in train}
    for row in train:
        assert normalize(row["positive"]) not in eval_texts
        assert not eval_texts & {normalize(n) for n in _negatives(row)}
    assert stats["train"]["rows_dropped"] == {"positive_is_eval_text": 1}
    assert stats["train"]["dropped_given"] == {"eval_text": 1}
    assert stats["train"]["dropped_mined"]["eval_text"] == 24 * len(evaluation)
    # eval rows, in turn, may use train lines as negatives: they feed only the eval loss
    assert all(None not in _negatives(r) for r in _read(Path(config.out) / "eval.jsonl"))


def test_short_rows_keep_nulls_at_the_end_and_stats_add_up(prepared_dir, tiny_st_model):
    _edit(prepared_dir, "train", lambda rows: rows[0].update(negatives=["大漠孤烟直"]))
    config = _config(prepared_dir, tiny_st_model, num_negatives=6, range_min=0, range_max=8)
    stats = mine(config)
    for split in ("train", "eval"):
        rows = _read(Path(config.out) / f"{split}.jsonl")
        s = stats[split]
        negatives = [_negatives(r) for r in rows]
        for values in negatives:
            filled = [n for n in values if n is not None]
            assert values == filled + [None] * (6 - len(filled))  # nulls only at the end
        assert s["rows_out"] == len(rows)
        assert s["rows_in"] == s["rows_out"] + sum(s["rows_dropped"].values())
        assert s["short_rows"] == sum(None in values for values in negatives)
        assert s["negatives_missing"] == sum(values.count(None) for values in negatives)
        assert s["negatives_given"] + s["negatives_mined"] + s["negatives_missing"] == 6 * len(rows)
    assert stats["train"]["short_rows"] > 0 and stats["train"]["negatives_given"] == 1
    saved = json.loads((Path(config.out) / "mine_stats.json").read_text())
    assert saved["config"]["range_max"] == 8 and saved["train"] == stats["train"]


def test_random_sampling_is_seeded_and_stays_in_range(prepared_dir, tiny_st_model):
    config = _config(prepared_dir, tiny_st_model, sampling_strategy="random", range_max=12)
    mine(config)
    first = _read(Path(config.out) / "train.jsonl")
    mine(config)
    assert _read(Path(config.out) / "train.jsonl") == first
    top = _config(prepared_dir, tiny_st_model, range_max=12, out=str(prepared_dir.parent / "top"))
    mine(top)
    assert first != _read(Path(top.out) / "train.jsonl")


def test_second_run_with_other_ranges_reuses_the_cache(prepared_dir, tiny_st_model):
    first = mine(_config(prepared_dir, tiny_st_model, range_min=0, range_max=10))
    assert first["train"]["encoded_texts"] > 0 and first["eval"]["encoded_texts"] > 0
    second = mine(_config(prepared_dir, tiny_st_model, range_min=3, range_max=20, sampling_strategy="random"))
    assert second["train"]["encoded_texts"] == 0 and second["eval"]["encoded_texts"] == 0
    (model_cache,) = (prepared_dir.parent / "cache").iterdir()
    assert len(list(model_cache.glob("corpus_embeddings_*.npy"))) == 1  # train and eval share the corpus
    # another token limit is another model as far as embeddings go: it gets its own cache folder
    third = mine(_config(prepared_dir, tiny_st_model, max_seq_length=16))
    assert third["train"]["encoded_texts"] > 0
    assert len(list((prepared_dir.parent / "cache").iterdir())) == 2


@pytest.mark.parametrize("name", ["train", "eval", "corpus"])
def test_missing_input_file_is_a_clear_error(prepared_dir, tiny_st_model, name):
    (prepared_dir / f"{name}.jsonl").unlink()
    with pytest.raises(UserError, match=f"{name}.jsonl is missing"):
        mine(_config(prepared_dir, tiny_st_model, range_max=10))
    assert not (prepared_dir.parent / "mined").exists()


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["mine", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "mined")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: data folder not found: {tmp_path / 'nowhere'}: --data must be a folder written by `just prepare`"
    )


def test_malformed_row_names_file_and_line(prepared_dir, tiny_st_model):
    rows = _read(prepared_dir / "eval.jsonl")
    rows[2].pop("positive")
    write_jsonl(prepared_dir / "eval.jsonl", rows)  # a row the schema's writer would refuse to write
    with pytest.raises(UserError, match=r"eval.jsonl:3: 'positive' is missing: expected an object with non-empty"):
        mine(_config(prepared_dir, tiny_st_model, range_max=10))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_negatives": 0}, "num_negatives"),
        ({"range_min": 5, "range_max": 5}, "range_min < range_max"),
        ({"range_min": 0, "range_max": 4, "num_negatives": 5}, "more than the 4 candidates of ranks"),
        ({"relative_margin": 1.5}, "relative_margin"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        MineConfig(**overrides)


def test_normalize_ignores_punctuation_width_and_spaces():
    assert normalize("空山新雨后，天气晚来秋。") == normalize("空山新雨后 天气晚来秋") == "空山新雨后天气晚来秋"
    assert normalize("“春眠不觉晓”！") == "春眠不觉晓"


def test_candidate_pool_keeps_positives_and_given_negatives_and_samples_the_rest(prepared_dir, tiny_st_model):
    extra = [
        {"id": f"x{i}", "text": f"远方第{i}句诗", "title": "", "author": "", "dynasty": "", "group": f"x{i}"}
        for i in range(40)
    ]
    _edit(prepared_dir, "corpus", lambda rows: rows.extend(extra))
    _edit(prepared_dir, "train", lambda rows: rows[0].update(negatives=["远方第3句诗"]))
    data = read_prepared(prepared_dir)
    positives = {row["positive"] for row in data.pairs}
    keep = positives | {"远方第3句诗"}
    pool = candidate_texts(data, max_corpus=len(keep) + 5, seed=1)
    assert keep <= set(pool) and len(pool) == len(keep) + 5
    assert pool == candidate_texts(data, max_corpus=len(keep) + 5, seed=1)  # seeded
    assert pool != candidate_texts(data, max_corpus=len(keep) + 5, seed=2)
    assert candidate_texts(data, max_corpus=3) == [t for t in candidate_texts(data) if t in keep]  # never fewer
    assert len(candidate_texts(data, max_corpus=10**6)) == len(candidate_texts(data))

    config = _config(prepared_dir, tiny_st_model, max_corpus=len(keep) + 5, seed=1, range_max=len(keep) + 4)
    stats = mine(config)
    assert stats["candidates"] == len(keep) + 5
    for row in _read(Path(config.out) / "train.jsonl"):
        assert set(_negatives(row)) - {None} <= set(pool)


def test_a_changed_query_prompt_does_not_reuse_cached_embeddings(prepared_dir, tiny_hf_model):
    first = mine(_config(prepared_dir, tiny_hf_model, range_max=10))
    assert first["train"]["encoded_texts"] > 0
    again = mine(_config(prepared_dir, tiny_hf_model, range_max=10))
    assert again["train"]["encoded_texts"] == 0  # same model, same prompts: served from the cache
    instructed = mine(_config(prepared_dir, tiny_hf_model, range_max=10, query_instruction="为这个句子生成表示："))
    assert instructed["train"]["encoded_texts"] > 0  # the queries now carry a prompt: encoded anew
    assert len(list((prepared_dir.parent / "cache").iterdir())) == 2

    model = load_model(tiny_hf_model)
    plain = model_fingerprint(model)
    model.prompts["query"] = "问："
    with_query = model_fingerprint(model)
    model.prompts["document"] = "答："
    assert len({plain, with_query, model_fingerprint(model)}) == 3


def test_num_negatives_beyond_the_corpus_is_refused(prepared_dir, tiny_st_model):
    # Allowed by the range, but 38 lines cannot give 100 negatives: it used to write rows of nulls.
    with pytest.raises(UserError, match=r"--num-negatives 100 from rank --range-min 0 on needs 101 .* has 38:"):
        mine(_config(prepared_dir, tiny_st_model, num_negatives=100, range_max=200))
    # a --max-corpus pool keeps every positive (32 here) and samples the rest
    with pytest.raises(UserError, match=r"needs 36 candidate lines, but .* has 33 in a --max-corpus 33 pool"):
        mine(_config(prepared_dir, tiny_st_model, num_negatives=30, range_min=5, max_corpus=33))
    assert not (prepared_dir.parent / "mined").exists()


def test_an_empty_eval_split_is_reported(prepared_dir, tiny_st_model, capsys):
    (prepared_dir / "eval.jsonl").write_text("")
    stats = mine(_config(prepared_dir, tiny_st_model, range_max=10))
    assert stats["eval"]["rows_out"] == 0
    assert "warning: " in (err := capsys.readouterr().err) and "eval.jsonl has no rows" in err


def test_a_cache_file_replaced_by_another_valid_array_is_computed_again(prepared_dir, tiny_st_model, capsys):
    config = _config(prepared_dir, tiny_st_model, range_max=10)
    first = _read(Path(mine(config)["config"]["out"]) / "train.jsonl")
    (corpus_cache,) = (prepared_dir.parent / "cache").rglob("corpus_embeddings_*.npy")
    written = np.load(corpus_cache)
    # a valid .npy of the same shape and dtype, in place: its header loads, only the vectors differ
    np.save(corpus_cache, written[::-1].copy())
    capsys.readouterr()
    second = mine(config)
    err = capsys.readouterr().err
    assert f"warning: {corpus_cache} changed after it was cached" in err
    assert second["train"]["encoded_texts"] > 0
    assert _read(Path(config.out) / "train.jsonl") == first
    np.testing.assert_array_equal(np.load(corpus_cache), written)  # computed again, not the replaced array
    capsys.readouterr()
    third = mine(config)  # the recomputed file has its checksum again: served from the cache, no warning
    assert third["train"]["encoded_texts"] == 0 and "warning" not in capsys.readouterr().err


def test_a_foreign_out_folder_is_refused_before_the_model_is_loaded(prepared_dir, monkeypatch):
    from st_poetry.training import mine as mine_module

    out = prepared_dir.parent / "mined"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(mine_module, "load_model", no_model)
    with pytest.raises(UserError, match=f"refusing to overwrite {out}: it is not empty and has no mine_stats.json"):
        mine(_config(prepared_dir, "unused"))


def test_a_truncated_cache_file_is_a_cache_miss(prepared_dir, tiny_st_model, capsys):
    config = _config(prepared_dir, tiny_st_model, range_max=10)
    first = _read(Path(mine(config)["config"]["out"]) / "train.jsonl")
    cached = sorted((prepared_dir.parent / "cache").rglob("*.npy"))
    for path in cached:  # what a run killed while np.save wrote the cache leaves
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    second = mine(config)
    assert second["train"]["encoded_texts"] > 0 and "unreadable" in capsys.readouterr().err
    assert _read(Path(config.out) / "train.jsonl") == first
    assert all(np.load(path).ndim == 2 for path in cached)  # written again, whole
