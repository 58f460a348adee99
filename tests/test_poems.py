"""`just prepare --poems`: every chinese-poetry schema, OpenCC conversion, sentence lines, linking, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_poetry.core.config import MineConfig, PrepareConfig
from st_poetry.core.errors import UserError
from st_poetry.data.poems import sentences
from st_poetry.data.prepare import prepare
from st_poetry.training.mine import mine

# Fixtures in traditional characters, shaped like the files of the npm package chinese-poetry 2.0.1.
TANG = [
    {
        "author": "王維",
        "paragraphs": ["空山新雨後，天氣晚來秋。", "明月松間照，清泉石上流。"],
        "title": "山居秋暝",
        "id": "t-1",
    },
    {
        "author": "李白",
        "paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"],
        "title": "靜夜思",
        "id": "t-2",
    },
    {"author": "無名", "paragraphs": [], "title": "空", "id": "t-3"},  # empty paragraphs
    {"author": "無名", "paragraphs": "一行字。", "title": "串", "id": "t-4"},  # paragraphs as a string
    {"author": "無名", "title": "無詩", "id": "t-5"},  # no paragraphs at all
]
SONG_POEMS = [{"author": "蘇軾", "paragraphs": ["横看成嶺側成峰，遠近高低各不同。"], "title": "題西林壁", "id": "s-1"}]
CI = [
    {"author": "李清照", "paragraphs": ["尋尋覓覓，冷冷清清，悽悽慘慘慼慼。"], "rhythmic": "聲聲慢"},
    {"author": "蘇軾", "paragraphs": ["明月幾時有？把酒問青天。"], "rhythmic": "水调歌头"},  # mixed scripts
]
YUANQU = [
    {"dynasty": "yuan", "author": "马致远", "paragraphs": ["枯藤老树昏鸦，小桥流水人家。"], "title": "天净沙·秋思"}
]
SHIJING = [
    {
        "title": "关雎",
        "chapter": "国风",
        "section": "周南",
        "content": ["关关雎鸠，在河之洲。窈窕淑女，君子好逑。"],
    }
]
CHUCI = [{"title": "离骚", "section": "离骚", "author": "屈原", "content": ["帝高阳之苗裔兮，朕皇考曰伯庸。"]}]
HUAJIANJI = [
    {
        "title": "菩萨蛮 其一",
        "paragraphs": ["小山重叠金明灭，鬓云欲度香腮雪。"],
        "author": "温庭筠",
        "rhythmic": "菩萨蛮",
        "notes": [],
    }
]
TANGSHI_300 = {
    "title": "唐詩三百首",
    "content": [
        {
            "type": "五言律詩",
            "content": [
                {
                    "chapter": "山居秋暝",
                    "subchapter": None,
                    "author": "王維",
                    "paragraphs": ["空山新雨後，天氣晚來秋。", "竹喧歸浣女，蓮動下漁舟。"],
                }
            ],
        }
    ],
}
QIANJIASHI = {
    "title": "千家詩",
    "author": "南宋謝枋得",
    "content": [
        {
            "type": "七言絕句",
            "content": [
                {"chapter": "春日", "author": "（宋）朱熹", "paragraphs": ["勝日尋芳泗水濱，無邊光景一時新。"]},
                {
                    "chapter": "雪梅",
                    "author": "（宋）盧梅坡",
                    "paragraphs": [
                        {"subchapter": "其一", "paragraphs": ["梅雪爭春未肯降，騷人閣筆費評章。"]},
                        {"subchapter": "其二", "paragraphs": ["有梅無雪不精神，有雪無詩俗了人。"]},
                    ],
                },
                {"chapter": "題壁", "author": "無名氏", "paragraphs": ["一團茅草亂蓬蓬，驀地燒天驀地空。"]},
            ],
        }
    ],
}
AUTHORS = [{"desc": "唐代詩人。", "id": "a-1", "name": "王維"}]
INTRO = {"title": "南唐二主詞", "desc": ["《南唐二主詞》"]}


def write(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return path


def collection(root: Path) -> Path:
    """A small chinese-poetry folder with one file of every shape."""
    write(root / "quantangshi" / "poet.tang.0.json", TANG)
    write(root / "quantangshi" / "poet.song.0.json", SONG_POEMS)
    write(root / "quantangshi" / "authors.tang.json", AUTHORS)
    write(root / "songci" / "ci.song.0.json", CI)
    write(
        root / "songci" / "author.song.json", [{"description": "宋代词人", "name": "李清照", "short_description": ""}]
    )
    write(root / "yuanqu" / "yuanqu.json", YUANQU)
    write(root / "shijing" / "shijing.json", SHIJING)
    write(root / "chuci" / "chuci.json", CHUCI)
    write(root / "wudaishici" / "huajianji" / "huajianji-1-juan.json", HUAJIANJI)
    write(root / "wudaishici" / "nantang" / "intro.json", INTRO)
    write(root / "mengxue" / "tangshisanbaishou.json", TANGSHI_300)
    write(root / "mengxue" / "qianjiashi.json", QIANJIASHI)
    return root


def ccpm(path: Path, records: list[tuple[str, list[str], int]]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"translation": t, "choices": c, "answer": a}, ensure_ascii=False) + "\n" for t, c, a in records
        ),
        encoding="utf-8",
    )
    return path


CCPM_RECORDS = [
    ("山中下雨后傍晚的秋天。", ["空山新雨后", "春山新雨后", "深山夜雨后", "青山新雨时"], 0),
    ("明亮的月光照在松林间。", ["明月松间照", "明月松间落", "清风竹间来", "明月林间照"], 0),
    ("月光洒在床前。", ["床前明月光，疑是地上霜。", "门前流水声", "窗前明月光", "床头明月光"], 0),
    ("一句不在任何诗里的话。", ["无人知晓处", "何人可晓知", "天下皆知之", "一句无名诗"], 0),
]


def run(tmp_path: Path, **inputs) -> tuple[dict, dict[str, list[dict]]]:
    out = tmp_path / "out"
    stats = prepare(PrepareConfig(out=str(out), eval_fraction=0.0, **inputs))
    files = {
        name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        for name in ("train", "eval", "corpus")
    }
    return stats, files


@pytest.fixture
def prepared(tmp_path):
    root = collection(tmp_path / "chinese-poetry")
    return run(tmp_path, ccpm=[str(ccpm(tmp_path / "ccpm.jsonl", CCPM_RECORDS))], poems=[str(root)])


def test_every_schema_is_read_converted_and_split_into_sentences(prepared):
    stats, files = prepared
    corpus = {row["text"]: row for row in files["corpus"]}
    expected = {
        "空山新雨后，天气晚来秋。": ("山居秋暝", "王维", "唐"),  # quantangshi, traditional
        "横看成岭侧成峰，远近高低各不同。": ("题西林壁", "苏轼", "宋"),
        "寻寻觅觅，冷冷清清，凄凄惨惨戚戚。": ("声声慢", "李清照", "宋"),  # a ci: its tune is the title
        "枯藤老树昏鸦，小桥流水人家。": ("天净沙·秋思", "马致远", "元"),  # dynasty from the record
        "关关雎鸠，在河之洲。": ("关雎", "", "先秦"),  # content, split into sentences
        "窈窕淑女，君子好逑。": ("关雎", "", "先秦"),
        "帝高阳之苗裔兮，朕皇考曰伯庸。": ("离骚", "屈原", "先秦"),
        "小山重叠金明灭，鬓云欲度香腮雪。": ("菩萨蛮 其一", "温庭筠", "五代十国"),
        "竹喧归浣女，莲动下渔舟。": ("山居秋暝", "王维", "唐"),  # mengxue 唐诗三百首, nested
        "胜日寻芳泗水滨，无边光景一时新。": ("春日", "朱熹", "宋"),  # 千家诗: dynasty from （宋）
        "有梅无雪不精神，有雪无诗俗了人。": ("雪梅·其二", "卢梅坡", "宋"),  # a series: one poem per part
        "一团茅草乱蓬蓬，蓦地烧天蓦地空。": ("题壁", "无名氏", ""),
    }
    for text, meta in expected.items():
        row = corpus[text]
        assert (row["title"], row["author"], row["dynasty"]) == meta, text
    assert "明月几时有？" in corpus and "把酒问青天。" in corpus  # mixed-script record, sentence split on ？
    assert not any(ch in row["text"] for row in files["corpus"] for ch in "後氣間舉鄉嶺遠覓")
    poems = stats["sources"]["poems"]
    assert poems["skipped"] == {
        "no text in paragraphs": 1,
        "paragraphs is a text, not a list": 1,
        "missing paragraphs": 1,
    }
    assert poems["notes"]["files without poems (author lists, intro)"] == 3
    assert poems["notes"]["unknown dynasty"] == 1
    assert poems["notes"]["converted to simplified"] == 10  # 2 tang + 1 song + 2 ci (one mixed) + 1 + 4 mengxue
    assert poems["records_read"] == poems["records_kept"] + 3


def test_linking_gives_ccpm_pairs_and_choices_the_poem(prepared):
    stats, files = prepared
    corpus = {row["text"]: row for row in files["corpus"]}
    pairs = {row["positive"]: row for row in files["train"]}
    tang = corpus["空山新雨后，天气晚来秋。"]
    # a half-line choice links to its poem: the corpus row and the pair take its title, author, dynasty and group
    assert {k: corpus["空山新雨后"][k] for k in ("title", "author", "dynasty", "group")} == {
        k: tang[k] for k in ("title", "author", "dynasty", "group")
    }
    assert pairs["空山新雨后"]["group"] == pairs["明月松间照"]["group"] == tang["group"]
    assert pairs["床前明月光，疑是地上霜。"]["group"] == corpus["床前明月光，疑是地上霜。"]["group"] != tang["group"]
    # wrong choices that are in no poem, and a record that is in none, keep their CCPM group
    assert corpus["春山新雨后"]["group"] == "ccpm.jsonl:1"
    assert pairs["无人知晓处"]["group"] == corpus["无人知晓处"]["group"] == "ccpm.jsonl:4"
    assert corpus["春山新雨后"]["title"] == ""
    assert stats["linking"]["ccpm"] == {
        "lines": 16,
        "lines_linked": 3,
        "lines_linked_by_half_line": 2,
        "positives": 4,
        "positives_linked": 3,
    }


def test_a_line_in_several_poems_belongs_to_the_earliest(prepared):
    stats, files = prepared
    corpus = {row["text"]: row for row in files["corpus"]}
    # 空山新雨后 is in 全唐诗 and again in the 唐诗三百首 anthology, read last: the 全唐诗 poem keeps it
    assert corpus["空山新雨后，天气晚来秋。"]["group"] == "poet.tang.0.json:t-1"
    assert stats["lines_in_several_poems"] == 1


def test_no_poems_no_linking(tmp_path):
    stats, files = run(tmp_path, ccpm=[str(ccpm(tmp_path / "ccpm.jsonl", CCPM_RECORDS))])
    assert "linking" not in stats
    assert {row["group"] for row in files["train"]} == {f"ccpm.jsonl:{n}" for n in range(1, 5)}


def test_works_positives_link_and_take_the_poem_group(tmp_path):
    root = collection(tmp_path / "chinese-poetry")
    works = tmp_path / "works唐.json"
    record = {
        "Id": 7,
        "Title": "山居秋暝",
        "Dynasty": "唐",
        "Author": "王维",
        "Kind": "诗",
        "Content": "空山新雨后，天气晚来秋。\r\n明月松间照，清泉石上流。",
        "Translation": "空旷的群山沐浴了一场新雨。\r\n皎皎明月从松隙间洒下清光。",
    }
    write(works, [record])
    stats, files = run(tmp_path, works=[str(works)], poems=[str(root)])
    assert {row["group"] for row in files["train"]} == {"poet.tang.0.json:t-1"}
    assert stats["linking"]["works"]["positives_linked"] == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [("odd.json", {"poems": []}), ("odd2.json", [1, 2]), ("odd3.json", {"title": "x", "content": "not sections"})],
)
def test_a_file_of_another_shape_is_one_error_naming_it(tmp_path, name, value):
    path = write(tmp_path / name, value)
    with pytest.raises(UserError, match=f"{name}: not a chinese-poetry file"):
        run(tmp_path, poems=[str(path)])


@pytest.mark.parametrize(
    ("name", "value"),
    [("empty.json", []), ("no-sections.json", {"content": []}), ("empty-section.json", {"content": [{"content": []}]})],
)
def test_a_file_without_poems_is_one_error_naming_it(tmp_path, name, value):
    path = write(tmp_path / "chinese-poetry" / name, value)
    with pytest.raises(UserError, match=f"{name}: no poems in it"):
        run(tmp_path, poems=[str(path)])


def test_a_paragraph_of_invisible_characters_is_empty(tmp_path):
    poems = [
        {"author": "無名", "title": "空", "paragraphs": ["\u200b\u3000 ", "\ufeff"]},  # nothing to read: skipped
        {"author": "李白", "title": "靜夜思", "paragraphs": ["\u200b床前明月光，疑是地上霜。\u200b", "\u200b\u3000 "]},
    ]
    stats, files = run(
        tmp_path,
        poems=[str(write(tmp_path / "poet.tang.0.json", poems))],
        ccpm=[str(ccpm(tmp_path / "ccpm.jsonl", CCPM_RECORDS))],
    )
    counts = stats["sources"]["poems"]
    assert counts["records_read"] == 2 and counts["skipped"] == {"no text in paragraphs": 1}
    texts = {row["text"] for row in files["corpus"] if row["group"].startswith("poet.tang.0.json")}
    assert texts == {"床前明月光，疑是地上霜。"}


def test_bad_paths_and_json_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        run(tmp_path, poems=[str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no \*\*/\*\.json files in"):
        run(tmp_path, poems=[str(tmp_path / "empty")])
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.json:1: not valid JSON"):
        run(tmp_path, poems=[str(tmp_path / "bad.json")])


def test_sentences_end_at_full_stops_and_keep_closing_quotes():
    assert sentences("关关雎鸠，在河之洲。窈窕淑女，君子好逑。") == ["关关雎鸠，在河之洲。", "窈窕淑女，君子好逑。"]
    assert sentences("问君何能尔？」心远地自偏；末句") == ["问君何能尔？」", "心远地自偏；", "末句"]
    assert sentences("。。") == []


def test_same_poem_filter_applies_to_linked_ccpm_pairs(tmp_path, tiny_st_model):
    """Linked, a CCPM pair's other lines of its poem are no negatives; unlinked, nothing told mine they were."""
    records = ccpm(tmp_path / "ccpm.jsonl", CCPM_RECORDS)
    root = collection(tmp_path / "chinese-poetry")
    counts = {}
    for name, poems in (("linked", [str(root)]), ("unlinked", [])):
        out = tmp_path / name
        prepare(PrepareConfig(ccpm=[str(records)], poems=poems, out=str(out / "processed"), eval_fraction=0.0))
        size = sum(1 for _ in (out / "processed" / "corpus.jsonl").open(encoding="utf-8"))
        config = MineConfig(
            data=str(out / "processed"),
            out=str(out / "mined"),
            model=tiny_st_model,
            num_negatives=3,
            range_min=0,
            range_max=size - 1,  # every line is a candidate: the counts do not depend on the random model
            relative_margin=None,
            cache_folder=None,
        )
        stats = mine(config)
        counts[name] = stats["train"]["same_poem_by_source"]
        rows = map(json.loads, (out / "mined" / "train.jsonl").read_text(encoding="utf-8").splitlines())
        negatives = {row["positive"]: {v for k, v in row.items() if k.startswith("negative_")} for row in rows}
        if name == "linked":
            assert not {"明月松间照", "明月松间照，清泉石上流。"} & negatives["空山新雨后"]
            assert not {"空山新雨后", "空山新雨后，天气晚来秋。"} & negatives["明月松间照"]
    # 空山新雨后 and 明月松间照 lose the other couplet and the other choice of 山居秋暝 (2 each), 床前明月光 its
    # poem's second couplet: 5 negatives the filter now drops that it could not before
    assert counts == {"linked": {"ccpm": 5}, "unlinked": {}}
