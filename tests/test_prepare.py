from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
from conftest import POEMS

from st_poetry.cli import main as cli_main
from st_poetry.core import files
from st_poetry.core.config import PrepareConfig
from st_poetry.core.errors import UserError
from st_poetry.core.schema import CORPUS, PAIR
from st_poetry.data import prepare as prepare_stage
from st_poetry.data.prepare import clean_lines, is_eval_group, prepare

FILES = ("train.jsonl", "eval.jsonl", "corpus.jsonl", "stats.json")


def work(id_, lines, translations=None, kind="诗", title="题", author="佚名", dynasty="唐", sep="\r\n"):
    """A chinese-poetry-and-prose record, shaped like the real files (extra fields included)."""
    return {
        "Id": id_,
        "Title": title,
        "Dynasty": dynasty,
        "Author": author,
        "AuthorId": 1,
        "Kind": kind,
        "Content": sep.join(lines),
        "Translation": sep.join(translations) if translations is not None else "",
        "Comment": "",
        "Intro": "",
        "Annotation": "",
        "PostsCount": 0,
    }


def poem_works(poems=POEMS):
    return [
        work(i, lines, tr, title=title, author=author, dynasty=dyn)
        for i, (_, title, author, dyn, lines, tr) in enumerate(poems)
    ]


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    """An input file (CCPM, FlagEmbedding: not a stage's row type, so the generic writer)."""
    files.write_jsonl(path, rows)
    return path


def read(folder: Path, name: str) -> list[dict]:
    """Rows of an output file, each line checked to be exactly what the schema's writer writes for the row."""
    row_type = CORPUS if name == "corpus.jsonl" else PAIR
    lines = (folder / name).read_text(encoding="utf-8").splitlines(keepends=True)
    rows = row_type.read(folder / name)
    assert [row_type.line(row, index) for index, row in enumerate(rows)] == lines
    assert all(list(json.loads(line)) == list(row_type.names) for line in lines)  # every field, declared order
    return rows


def run(tmp_path, **fields) -> tuple[dict, list[dict], list[dict], list[dict]]:
    out = tmp_path / "out"
    stats = prepare(PrepareConfig(out=str(out), **fields))
    return stats, read(out, "train.jsonl"), read(out, "eval.jsonl"), read(out, "corpus.jsonl")


def many_poems(n: int, prefix: str = "") -> list[dict]:
    """n distinct four-line poems with line-by-line translations."""
    return [
        work(f"{prefix}{i}", [f"{prefix}诗{i}句{j}" for j in range(4)], [f"{prefix}译{i}句{j}" for j in range(4)])
        for i in range(n)
    ]


def test_works_lines_align_into_pairs_with_corpus_metadata(tmp_path):
    path = write_json(tmp_path / "works唐.json", poem_works())
    stats, train, evaluation, corpus = run(tmp_path, works=[str(path)], eval_fraction=0.0)
    assert evaluation == []
    by_positive = {row["positive"]: row for row in train}
    assert len(train) == 4 * len(POEMS)
    for i, (*_, lines, translations) in enumerate(POEMS):
        for line, translation in zip(lines, translations, strict=True):
            row = by_positive[line]
            assert row == {
                "anchor": translation,
                "positive": line,
                "negatives": [],
                "source": "works",
                "group": f"works唐.json:{i}",
            }
    first = corpus[0]
    assert first == {
        "id": "c0",
        "text": "床前明月光",
        "title": "静夜思",
        "author": "李白",
        "dynasty": "唐",
        "group": "works唐.json:0",
    }
    assert stats["sources"]["works"]["pairs_made"] == 32 and stats["corpus_size"] == 32


def test_mismatched_or_missing_translation_gives_no_pairs_but_keeps_the_lines(tmp_path):
    records = [
        work(1, ["床前明月光", "疑是地上霜"], ["明亮的月光洒在床前", "好像地上泛起了一层白霜"], sep="\n"),
        work(2, ["春眠不觉晓", "处处闻啼鸟", "夜来风雨声"], ["春天睡醒不觉天已大亮", "到处都能听见小鸟的鸣叫声"]),
        work(3, ["白日依山尽", "黄河入海流"]),
    ]
    stats, train, _, corpus = run(tmp_path, works=[str(write_json(tmp_path / "w.json", records))], eval_fraction=0.0)
    assert [row["positive"] for row in train] == ["床前明月光", "疑是地上霜"]
    works = stats["sources"]["works"]
    assert works["records_kept"] == 3 and works["skipped"] == {}
    assert works["kept_without_pairs"] == {"line counts differ": 1, "no Translation": 1}
    assert {"夜来风雨声", "白日依山尽", "黄河入海流"} <= {row["text"] for row in corpus}


def test_kind_filter(tmp_path):
    records = [
        work(1, ["床前明月光"], ["明亮的月光洒在床前"], kind="诗"),
        work(2, ["明月几时有"], ["明月从什么时候才开始出现的"], kind="词"),
        work(3, ["先帝创业未半而中道崩殂"], ["先帝开创大业还未完成一半却中途去世了"], kind="文"),
    ]
    path = str(write_json(tmp_path / "w.json", records))
    stats, train, _, corpus = run(tmp_path, works=[path], eval_fraction=0.0)
    assert {row["positive"] for row in train} == {"床前明月光", "明月几时有"}
    assert "先帝创业未半而中道崩殂" not in {row["text"] for row in corpus}
    assert stats["sources"]["works"]["skipped"] == {"Kind not selected": 1}

    stats, train, _, _ = run(tmp_path, works=[path], eval_fraction=0.0, kinds=["词"])
    assert [row["positive"] for row in train] == ["明月几时有"]
    assert stats["sources"]["works"]["skipped"] == {"Kind not selected": 2}


def test_cleaning_strips_quotes_whitespace_headers_and_blank_lines():
    assert clean_lines("  “床前明月光，\r\n\r\n疑是地上霜。”  \n\u3000举头望明月\n") == [
        "床前明月光，",
        "疑是地上霜。",
        "举头望明月",
    ]
    assert clean_lines("【其一】\r\n白日依山尽\r\n【其二】\r\n黄河入海流") == ["白日依山尽", "黄河入海流"]
    assert clean_lines("【其一】白日依山尽") == ["【其一】白日依山尽"]  # only a line that is all header goes
    # invisible format characters (zero-width space, byte-order mark) are no text: a line of them is empty
    assert clean_lines("\u200b床前明\u200b月光\ufeff\r\n\u200b\u3000 \r\n\u00ad") == ["床前明月光"]


def test_section_headers_do_not_break_alignment(tmp_path):
    record = work(
        1,
        ["【其一】", "白日依山尽", "【其二】", "黄河入海流"],
        ["夕阳依傍着西山慢慢地沉没", "滔滔黄河朝着东海汹涌奔流"],
    )
    _, train, _, corpus = run(tmp_path, works=[str(write_json(tmp_path / "w.json", [record]))], eval_fraction=0.0)
    assert [(row["anchor"], row["positive"]) for row in train] == [
        ("夕阳依傍着西山慢慢地沉没", "白日依山尽"),
        ("滔滔黄河朝着东海汹涌奔流", "黄河入海流"),
    ]
    assert [row["text"] for row in corpus] == ["白日依山尽", "黄河入海流"]


def test_duplicate_pairs_removed_and_corpus_deduplicated_first_metadata_wins(tmp_path):
    poem = (["床前明月光", "疑是地上霜"], ["明亮的月光洒在床前", "好像地上泛起了一层白霜"])
    records = [work(1, *poem, author="李白"), work(2, *poem, author="无名氏"), work(3, ["床前明月光"], kind="词")]
    stats, train, evaluation, corpus = run(
        tmp_path, works=[str(write_json(tmp_path / "w.json", records))], eval_fraction=0.0
    )
    assert len(train) == 2 and evaluation == []
    assert stats["sources"]["works"]["duplicate_pairs_removed"] == 2
    assert [(row["text"], row["author"]) for row in corpus] == [("床前明月光", "李白"), ("疑是地上霜", "李白")]


def test_grouped_split_has_no_leakage(tmp_path):
    records = many_poems(300)
    # a famous line quoted in many works, each time with another rendering: some copies hash to eval
    records += [work(f"q{i}", ["春风又绿江南岸"], [f"第{i}种说法的春风吹绿了江南"]) for i in range(40)]
    stats, train, evaluation, _ = run(
        tmp_path, works=[str(write_json(tmp_path / "w.json", records))], eval_fraction=0.3
    )
    train_groups, eval_groups = {r["group"] for r in train}, {r["group"] for r in evaluation}
    assert train_groups and eval_groups and not train_groups & eval_groups
    assert 0.2 < len(eval_groups) / (len(train_groups) + len(eval_groups)) < 0.4
    assert not {r["positive"] for r in train} & {r["positive"] for r in evaluation}
    works = stats["sources"]["works"]
    assert works["eval_pairs_dropped_as_leak"] > 0
    assert works["pairs_made"] == works["train_pairs"] + works["eval_pairs"] + works["eval_pairs_dropped_as_leak"]
    for poem_group in train_groups | eval_groups:  # whole poems stay together
        rows = [r for r in train + evaluation if r["group"] == poem_group]
        assert len(rows) in (1, 4)


def test_same_inputs_give_identical_files_and_new_files_do_not_move_old_groups(tmp_path):
    first = write_json(tmp_path / "works1.json", many_poems(100))
    outputs = []
    for name in ("a", "b"):
        prepare(PrepareConfig(works=[str(first)], out=str(tmp_path / name), eval_fraction=0.2))
        outputs.append({f: (tmp_path / name / f).read_bytes() for f in FILES})
    assert outputs[0] == outputs[1]

    second = write_json(tmp_path / "works2.json", many_poems(100, prefix="新"))
    prepare(PrepareConfig(works=[str(first), str(second)], out=str(tmp_path / "c"), eval_fraction=0.2))
    before = {row["group"] for row in read(tmp_path / "a", "eval.jsonl")}
    after = {row["group"] for row in read(tmp_path / "c", "eval.jsonl")}
    assert before == {group for group in after if group.startswith("works1.json")}
    groups = [f"g{i}" for i in range(200)]
    assert [is_eval_group(g, 1, 0.5) for g in groups] != [is_eval_group(g, 42, 0.5) for g in groups]


def test_ccpm_format(tmp_path):
    rows = [
        {
            "translation": "诗人啊，你竟像在遥远的地方站立船头。",
            "choices": ["行人初上木兰舟", "骚人遥驻木兰舟", "有人独上木兰舟", "行人迢递木兰舟"],
            "answer": 1,
        },
        {
            "translation": "“他的双眼眼瞳碧绿而有光”",
            "choices": ["绿玉觜攒鸡脑破", "翅金肉白顶红麻", "头似珊瑚项班红", "碧玉炅炅双目瞳"],
            "answer": 3,
        },
        {"translation": "缺了答案", "choices": ["甲", "乙", "丙", "丁"]},
        {"translation": "答案越界", "choices": ["甲", "乙", "丙", "丁"], "answer": 4},
        {"translation": "", "choices": ["甲", "乙", "丙", "丁"], "answer": 0},
        {"translation": "空的选项", "choices": ["甲", " ", "丙", "丁"], "answer": 0},
        {"translation": "选项不是列表", "choices": "甲乙丙丁", "answer": 0},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    stats, train, _, corpus = run(tmp_path, ccpm=[str(path)], eval_fraction=0.0)
    assert train == [
        {
            "anchor": "诗人啊，你竟像在遥远的地方站立船头。",
            "positive": "骚人遥驻木兰舟",
            "negatives": ["行人初上木兰舟", "有人独上木兰舟", "行人迢递木兰舟"],
            "source": "ccpm",
            "group": "train.jsonl:1",
        },
        {
            "anchor": "他的双眼眼瞳碧绿而有光",
            "positive": "碧玉炅炅双目瞳",
            "negatives": ["绿玉觜攒鸡脑破", "翅金肉白顶红麻", "头似珊瑚项班红"],
            "source": "ccpm",
            "group": "train.jsonl:2",
        },
    ]
    assert len(corpus) == 8 and corpus[0]["group"] == "train.jsonl:1" and corpus[0]["title"] == ""
    ccpm = stats["sources"]["ccpm"]
    assert ccpm["skipped"] == {
        "missing answer": 1,
        "answer out of range": 1,
        "empty translation": 1,
        "empty choice": 1,
        "choices is not a list of texts": 1,
    }
    assert ccpm["first_skipped"]["answer out of range"] == f"{path} line 4"


def test_flagembedding_format(tmp_path):
    rows = [
        {"query": "明亮的月光洒在床前", "pos": ["床前明月光", "明月光"], "neg": ["白日依山尽", "床前明月光"]},
        {"query": "到处都能听见小鸟的鸣叫声", "pos": ["处处闻啼鸟"], "neg": None},  # neg is optional
        {"query": "没有正例", "pos": [], "neg": ["甲"]},
        {"query": "正例不是文本", "pos": [1]},
        {"pos": ["缺了查询"]},
        {"query": 'JSON 要转义的 "引号" \\ 和\t制表符', "pos": ["转义"], "neg": ['"反例"']},
    ]
    path = write_jsonl(tmp_path / "fe.jsonl", rows)
    stats, train, _, corpus = run(tmp_path, flagembedding=[str(path)], eval_fraction=0.0)
    assert [(r["anchor"], r["positive"], r["negatives"]) for r in train] == [
        ("明亮的月光洒在床前", "床前明月光", ["白日依山尽"]),  # a negative equal to a positive is no negative
        ("明亮的月光洒在床前", "明月光", ["白日依山尽"]),
        ("到处都能听见小鸟的鸣叫声", "处处闻啼鸟", []),
        ('JSON 要转义的 "引号" \\ 和\t制表符', "转义", ['"反例"']),
    ]
    assert {r["source"] for r in train} == {"flagembedding"}
    assert {r["text"] for r in corpus} == {"床前明月光", "明月光", "白日依山尽", "处处闻啼鸟", "转义", '"反例"'}
    assert stats["sources"]["flagembedding"]["skipped"] == {
        "no non-empty pos": 1,
        "pos is not a list of texts": 1,
        "missing query": 1,
    }


def test_eval_only_inputs_go_wholly_to_eval(tmp_path):
    train_file = write_json(tmp_path / "works.json", many_poems(50))
    rows = [
        {"translation": f"译文{i}", "choices": [f"甲{i}", f"乙{i}", f"丙{i}", f"丁{i}"], "answer": i % 4}
        for i in range(30)
    ]
    rows.append({"translation": "又一种说法", "choices": ["诗0句0", "乙", "丙", "丁"], "answer": 0})  # a train positive
    valid = write_jsonl(tmp_path / "valid.jsonl", rows)
    fe_valid = write_jsonl(tmp_path / "fe_valid.jsonl", [{"query": "问", "pos": ["答"], "neg": []}])
    stats, train, evaluation, corpus = run(
        tmp_path, works=[str(train_file)], ccpm_eval=[str(valid)], flagembedding_eval=[str(fe_valid)], eval_fraction=0.0
    )
    assert {r["source"] for r in train} == {"works"}
    assert len([r for r in evaluation if r["source"] == "ccpm"]) == 30
    assert [r["positive"] for r in evaluation if r["source"] == "flagembedding"] == ["答"]
    assert stats["sources"]["ccpm"]["eval_pairs_dropped_as_leak"] == 1
    assert {"甲0", "乙0", "丙0", "丁0", "答"} <= {r["text"] for r in corpus}


@pytest.mark.parametrize("flags", [("ccpm", "ccpm_eval"), ("flagembedding", "flagembedding_eval"), ("ccpm", "ccpm")])
def test_a_file_given_twice_is_one_error_naming_both(tmp_path, flags):
    """Read twice, its pairs would be deduplicated and its eval-only role silently lost."""
    rows = [{"translation": "译", "choices": ["甲", "乙"], "answer": 0, "query": "问", "pos": ["答"]}]
    path = write_jsonl(tmp_path / "both.jsonl", rows)
    first, second = (f"--{flag.replace('_', '-')}" for flag in flags)
    for given in ([str(path), str(path)], [str(tmp_path), str(path)]):  # a folder reaches the file too
        fields: dict[str, list[str]] = {}
        for flag, value in zip(flags, given, strict=True):
            fields.setdefault(flag, []).append(value)
        message = f"{path} is given twice, by {first} {given[0]} and by {second} {given[1]}: "
        with pytest.raises(UserError, match=re.escape(message)):
            prepare(PrepareConfig(**fields, out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_an_input_inside_the_output_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    cli_main(["prepare", "--works", str(write_json(tmp_path / "w.json", poem_works())), "--out", str(out)])
    raw = write_json(out / "myraw.json", poem_works())  # kept in the folder of an earlier prepare
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", "--works", str(raw), "--out", str(out)])
    assert exit_info.value.code == 2
    assert f"--works {raw} is inside --out {out}, which each run replaces" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_folders_are_read_in_sorted_order(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    write_json(folder / "works宋.json", [work(2, ["明月几时有"], ["明月从什么时候开始有的"])])
    write_json(folder / "works唐.json", [work(1, ["床前明月光"], ["明亮的月光洒在床前"])])
    write_json(folder / "authors.json", {"not": "a works file"})  # ignored: not works*.json
    ccpm_folder = tmp_path / "ccpm"
    ccpm_folder.mkdir()
    write_jsonl(ccpm_folder / "train.jsonl", [{"translation": "译", "choices": ["甲", "乙"], "answer": 0}])
    stats, train, _, _ = run(tmp_path, works=[str(folder)], ccpm=[str(ccpm_folder)], eval_fraction=0.0)
    assert [r["group"] for r in train] == ["works唐.json:1", "works宋.json:2", "train.jsonl:1"]
    assert [i["path"] for i in stats["inputs"]] == [
        str(folder / "works唐.json"),
        str(folder / "works宋.json"),
        str(ccpm_folder / "train.jsonl"),
    ]


def test_stats_add_up(tmp_path):
    works = [*poem_works(), work(90, ["先帝创业未半"], kind="文"), {"Id": 91, "Kind": "诗"}, work(92, ["", "  "])]
    ccpm = [
        {"translation": "译", "choices": ["甲", "乙"], "answer": 0},
        {"translation": "译", "choices": ["甲", "乙"], "answer": 0},
    ]
    stats, train, evaluation, corpus = run(
        tmp_path,
        works=[str(write_json(tmp_path / "w.json", works))],
        ccpm=[str(write_jsonl(tmp_path / "c.jsonl", ccpm))],
        eval_fraction=0.5,
    )
    assert stats["sources"]["works"]["skipped"] == {"Kind not selected": 1, "missing Content": 1, "empty Content": 1}
    for counts in [*stats["sources"].values(), stats["total"]]:
        assert counts["records_read"] == counts["records_kept"] + sum(counts["skipped"].values())
        made = counts["train_pairs"] + counts["eval_pairs"]
        assert counts["pairs_made"] == made + counts["duplicate_pairs_removed"] + counts["eval_pairs_dropped_as_leak"]
    assert stats["total"]["records_read"] == len(works) + len(ccpm)
    assert (stats["train_pairs"], stats["eval_pairs"], stats["corpus_size"]) == (
        len(train),
        len(evaluation),
        len(corpus),
    )
    assert stats == json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("name", "text", "flag", "message"),
    [
        (
            "works.json",
            '[{"Id": 1, "Kind": "诗", "Content": "床前明月光"},\n{"Id": 2,, }]',
            "works",
            r"works\.json:2: record 1: not valid JSON",
        ),
        ("works.json", '{"Id": 1}', "works", r"works\.json: not a JSON array"),
        ("works.json", '[{"Id": 1} {"Id": 2}]', "works", r"works\.json:1: not valid JSON \(expected ','"),
        ("works.json", '[{"Id": 1}] trailing', "works", r"works\.json: not valid JSON \(extra data"),
        ("works.json", '[["not", "an object"]]', "works", r"works\.json record 0: not a JSON object"),
        (
            "c.jsonl",
            '{"translation": "译", "choices": ["甲", "乙"], "answer": 0}\n{"translation": \n',
            "ccpm",
            r"c\.jsonl:2: not valid JSON",
        ),
        ("c.jsonl", "[1, 2]\n", "ccpm", r"c\.jsonl line 1: not a JSON object"),
    ],
)
def test_malformed_input_is_a_user_error_naming_file_and_place(tmp_path, name, text, flag, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        prepare(PrepareConfig(out=str(tmp_path / "out"), **{flag: [str(path)]}))
    assert not (tmp_path / "out").exists()


def test_not_utf8_is_a_user_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes('{"translation": "译"}\n'.encode("gbk"))
    with pytest.raises(UserError, match=r"c\.jsonl: not UTF-8 text"):
        prepare(PrepareConfig(ccpm=[str(path)], out=str(tmp_path / "out")))
    works = tmp_path / "works_tang.json"
    works.write_bytes('[{"Title": "静夜思"}]'.encode("gbk"))
    with pytest.raises(UserError, match=r"works_tang\.json: not UTF-8 text"):
        prepare(PrepareConfig(works=[str(works)], out=str(tmp_path / "out")))


def test_wrong_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"--works: no such file or folder: .*nope"):
        prepare(PrepareConfig(works=[str(tmp_path / "nope")], out=str(tmp_path / "out")))
    with pytest.raises(UserError, match=r"--ccpm-eval: no \*\.jsonl files in"):
        prepare(PrepareConfig(ccpm_eval=[str(tmp_path)], out=str(tmp_path / "out")))


def test_no_pairs_is_an_error_that_says_why(tmp_path):
    records = [work(1, ["床前明月光"]), work(2, ["先帝创业未半"], ["先帝开创大业"], kind="文")]
    with pytest.raises(
        UserError, match=r"gave no pairs: works: 2 records read \(Kind not selected x1, no Translation x1\)"
    ):
        prepare(PrepareConfig(works=[str(write_json(tmp_path / "w.json", records))], out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_failure_keeps_the_old_output_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    path = write_json(tmp_path / "w.json", poem_works())
    out = tmp_path / "out"
    prepare(PrepareConfig(works=[str(path)], out=str(out)))
    before = {f: (out / f).read_bytes() for f in FILES}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_stage, "write_json", interrupted)  # dies after the .jsonl files, before the marker
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(works=[str(path)], out=str(out), seed=7))
    assert {f: (out / f).read_bytes() for f in FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "w.json"]

    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(works=[str(path)], out=str(tmp_path / "fresh")))
    assert not (tmp_path / "fresh").exists()


def test_a_foreign_folder_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="refusing to overwrite"):
        prepare(PrepareConfig(works=[str(write_json(tmp_path / "w.json", poem_works()))], out=str(out)))
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_prints_a_summary_and_reports_user_errors_in_one_line(tmp_path, capsys):
    path = write_json(tmp_path / "w.json", poem_works())
    cli_main(["prepare", "--works", str(path), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().err
    assert "works" in printed and "32" in printed and "corpus 32 unique lines" in printed

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", "--works", str(tmp_path / "nope.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --works: no such file or folder: {tmp_path / 'nope.json'}"


def test_group_falls_back_to_the_record_index_without_an_id(tmp_path):
    record = work(None, ["床前明月光"], ["明亮的月光洒在床前"])
    del record["Id"]
    _, train, _, _ = run(tmp_path, works=[str(write_json(tmp_path / "w.json", [record]))], eval_fraction=0.0)
    assert train[0]["group"] == "w.json:#0"


def test_group_ids_are_unique_per_input_file_and_do_not_depend_on_where_it_lives(tmp_path, monkeypatch):
    for name, line in (("a", "床前明月光"), ("b", "疑是地上霜")):
        (tmp_path / "raw" / name).mkdir(parents=True)
        record = {"translation": f"描写{line}", "choices": [line, "举头望明月"], "answer": 0}
        write_jsonl(tmp_path / "raw" / name / "train.jsonl", [record])
    monkeypatch.chdir(tmp_path)
    _, train, _, _ = run(tmp_path, ccpm=["raw/a/train.jsonl", "raw/b"], eval_fraction=0.0)
    # two files named train.jsonl: the first record of each is its own group (it used to be train.jsonl:1 twice)
    assert [r["group"] for r in train] == ["a/train.jsonl:1", "b/train.jsonl:1"]

    # the same files given by absolute path from elsewhere, or moved to another machine's folder: the same ids
    monkeypatch.chdir(tmp_path / "raw")
    given = [tmp_path / "raw/a/train.jsonl", Path("b/train.jsonl")]
    assert prepare_stage.input_names(given) == ["a/train.jsonl", "b/train.jsonl"]
    moved = tmp_path / "elsewhere"
    (tmp_path / "raw").rename(moved)
    assert prepare_stage.input_names([moved / "a/train.jsonl", moved / "b/train.jsonl"]) == [
        "a/train.jsonl",
        "b/train.jsonl",
    ]
    # a file whose name no other input shares keeps its plain name (and so the split of earlier versions)
    names = prepare_stage.input_names([moved / "a/train.jsonl", moved / "b/valid.jsonl"])
    assert names == ["train.jsonl", "valid.jsonl"]


def test_an_empty_eval_split_is_a_warning(tmp_path, capsys):
    stats, train, evaluation, _ = run(
        tmp_path, works=[str(write_json(tmp_path / "w.json", poem_works()))], eval_fraction=0.0
    )
    assert train and not evaluation
    (warning,) = stats["warnings"]
    assert warning.startswith("the eval split is empty (--eval-fraction 0.0)")
    assert f"warning: {warning}" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))["warnings"] == [warning]


def test_a_bom_jsonl_input_is_read(tmp_path):
    ccpm = {"translation": "明亮的月光洒在床前", "choices": ["床前明月光", "大漠孤烟直", "长河落日圆"], "answer": 0}
    path = tmp_path / "ccpm.jsonl"
    path.write_text("\ufeff" + json.dumps(ccpm, ensure_ascii=False) + "\n", encoding="utf-8")
    _, train, _, _ = run(tmp_path, ccpm=[str(path)], eval_fraction=0.0)
    assert [row["positive"] for row in train] == ["床前明月光"]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (".", "--out . is the current folder or one above it"),
        ("w.json", "--out w.json is a file"),
        ("w.json/out", "w.json is a file, not a folder"),
    ],
)
def test_an_output_path_that_cannot_be_a_folder_is_one_line(tmp_path, monkeypatch, capsys, out, message):
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "w.json", poem_works())
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", "--works", "w.json", "--out", out])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json"]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepare_stage, "write_json", full)
    path = write_json(tmp_path / "w.json", poem_works())
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", "--works", str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # the reading progress bar, then one line
    assert err.splitlines()[-1].startswith("error: could not write") and "No space left on device" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json"]


def test_the_exact_bytes_written_for_awkward_inputs(tmp_path):
    """The exact files for inputs with JSON's awkward characters (quotes, a backslash, a tab, U+2028, a character
    outside the BMP): compact JSON lines, other characters as they are, as json.dumps with ensure_ascii=False and
    separators (",", ":") writes them."""
    moon = [
        "明亮的月光洒在床前，好像地上泛起了一层白霜。",
        "我抬起头来望着天上的明月，不由得低头沉思，想起远方的故乡。",
    ]
    works = [
        work(
            1, ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"], moon, title='他说"好"\t\\', author="李白\u2028"
        ),
        work(
            2,
            ["“明月几时有？”把酒问青天。"],
            ["明月从什么时候才开始出现的？"],
            title="𠀀字",
            author="",
            dynasty="宋",
            kind="词",
        ),
    ]
    ccpm = [
        {"translation": "一只\\孤雁", "choices": ["孤雁飞南游", "大漠孤烟直", "长河落日圆", "孤雁飞南游"], "answer": 0}
    ]
    flagembedding = [{"query": "夕阳下的长河", "pos": ["长河落日圆"], "neg": ["大漠孤烟直", "空山新雨后"]}]
    out = tmp_path / "out"
    config = PrepareConfig(
        works=[str(write_json(tmp_path / "works唐.json", works))],
        ccpm=[str(write_jsonl(tmp_path / "ccpm.jsonl", ccpm))],
        flagembedding_eval=[str(write_jsonl(tmp_path / "fe.jsonl", flagembedding))],
        eval_fraction=0.01,
        out=str(out),
    )
    prepare(config)

    def pair(anchor, positive, negatives, source, group):
        return (
            f'{{"anchor":"{anchor}","positive":"{positive}","negatives":[{negatives}],"source":"{source}",'
            f'"group":"{group}"}}\n'
        )

    def corpus(index, text, title, author, dynasty, group):
        return (
            f'{{"id":"c{index}","text":"{text}","title":"{title}","author":"{author}","dynasty":"{dynasty}",'
            f'"group":"{group}"}}\n'
        )

    negatives = '"大漠孤烟直","长河落日圆"'
    assert (out / "train.jsonl").read_bytes().decode() == "".join(
        [
            pair(moon[0], "床前明月光，疑是地上霜。", "", "works", "works唐.json:1"),
            pair(moon[1], "举头望明月，低头思故乡。", "", "works", "works唐.json:1"),
            pair("明月从什么时候才开始出现的？", "明月几时有？把酒问青天。", "", "works", "works唐.json:2"),
            pair("一只\\\\孤雁", "孤雁飞南游", negatives, "ccpm", "ccpm.jsonl:1"),
        ]
    )
    assert (out / "eval.jsonl").read_bytes().decode() == pair(
        "夕阳下的长河", "长河落日圆", '"大漠孤烟直","空山新雨后"', "flagembedding", "fe.jsonl:1"
    )
    title = '他说\\"好\\"\\t\\\\'
    assert (out / "corpus.jsonl").read_bytes().decode() == "".join(
        [
            corpus(0, "床前明月光，疑是地上霜。", title, "李白\u2028", "唐", "works唐.json:1"),
            corpus(1, "举头望明月，低头思故乡。", title, "李白\u2028", "唐", "works唐.json:1"),
            corpus(2, "明月几时有？把酒问青天。", "𠀀字", "", "宋", "works唐.json:2"),
            *(
                corpus(3 + n, text, "", "", "", "ccpm.jsonl:1")
                for n, text in enumerate(["孤雁飞南游", "大漠孤烟直", "长河落日圆"])
            ),
            corpus(6, "空山新雨后", "", "", "", "fe.jsonl:1"),
        ]
    )
