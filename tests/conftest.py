"""Shared fixtures: a tiny random-init BERT with a character vocabulary, and a small prepared data set.

Nothing here touches the network or ../shared: a fresh clone must pass the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from st_poetry.core.schema import CORPUS, PAIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

# Real short poems with a line-by-line modern-Chinese rendering: (group, title, author, dynasty, lines, translations)
POEMS = [
    (
        "p1",
        "静夜思",
        "李白",
        "唐",
        ["床前明月光", "疑是地上霜", "举头望明月", "低头思故乡"],
        [
            "明亮的月光洒在床前",
            "好像地上泛起了一层白霜",
            "我抬起头来看那天上的明月",
            "又低下头来思念远方的故乡",
        ],
    ),
    (
        "p2",
        "春晓",
        "孟浩然",
        "唐",
        ["春眠不觉晓", "处处闻啼鸟", "夜来风雨声", "花落知多少"],
        ["春天睡醒不觉天已大亮", "到处都能听见小鸟的鸣叫声", "回想昨夜的阵阵风雨声", "不知吹落了多少花朵"],
    ),
    (
        "p3",
        "登鹳雀楼",
        "王之涣",
        "唐",
        ["白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼"],
        [
            "夕阳依傍着西山慢慢地沉没",
            "滔滔黄河朝着东海汹涌奔流",
            "若想把千里的风光景物看够",
            "那就要登上更高的一层城楼",
        ],
    ),
    (
        "p4",
        "相思",
        "王维",
        "唐",
        ["红豆生南国", "春来发几枝", "愿君多采撷", "此物最相思"],
        ["红豆生长在南方", "春天来了又生出多少新枝", "希望你多多采摘", "它最能寄托相思之情"],
    ),
    (
        "p5",
        "鹿柴",
        "王维",
        "唐",
        ["空山不见人", "但闻人语响", "返景入深林", "复照青苔上"],
        ["幽静的山谷里看不见人", "只能听到说话的声音", "落日的余晖映入深林", "又照在青苔上"],
    ),
    (
        "p6",
        "江雪",
        "柳宗元",
        "唐",
        ["千山鸟飞绝", "万径人踪灭", "孤舟蓑笠翁", "独钓寒江雪"],
        [
            "所有的山上飞鸟都不见踪影",
            "所有的小路都没有人的踪迹",
            "江上小船上一位披蓑衣戴斗笠的老渔翁",
            "独自在大雪覆盖的寒冷江面上垂钓",
        ],
    ),
    (
        "p7",
        "山居秋暝",
        "王维",
        "唐",
        ["空山新雨后", "天气晚来秋", "明月松间照", "清泉石上流"],
        [
            "空旷的群山沐浴了一场新雨",
            "夜晚降临使人感到已是初秋",
            "皎皎明月从松隙间洒下清光",
            "清清泉水在山石上淙淙淌流",
        ],
    ),
    (
        "p8",
        "悯农",
        "李绅",
        "唐",
        ["锄禾日当午", "汗滴禾下土", "谁知盘中餐", "粒粒皆辛苦"],
        [
            "农民在正午烈日的暴晒下锄禾",
            "汗水从身上滴在禾苗生长的土地上",
            "又有谁知道盘中的饭食",
            "每颗每粒都是农民用辛勤的劳动换来的",
        ],
    ),
]
EVAL_GROUPS = {"p7", "p8"}
EXTRA_CORPUS = ["大漠孤烟直", "长河落日圆", "两岸猿声啼不住", "轻舟已过万重山", "野火烧不尽", "春风吹又生"]


def _build_tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_chars = [chr(c) for c in range(33, 127)]
    cjk = [chr(c) for c in range(0x4E00, 0x9FA6)]
    punctuation = list("，。、；：？！“”‘’（）《》…—")
    (folder / "vocab.txt").write_text("\n".join(specials + ascii_chars + punctuation + cjk) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=True)
    assert tokenizer.tokenize("明月") == ["明", "月"], "the tiny tokenizer lost its vocabulary"
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def save_bag_of_chars_model(folder: Path, texts: list[str]) -> str:
    """A saved SentenceTransformer whose embedding is a text's normalized character-count vector.

    Similarities can be worked out on paper (the cosine of two texts' character counts), and a description
    finds the line it shares most characters with. `texts` gives the vocabulary; other characters count nothing.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {"[UNK]": 0, **{char: i + 1 for i, char in enumerate(sorted(set("".join(texts))))}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True)  # one token per CJK character
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    weights = torch.eye(len(vocab))
    weights[0] = 0
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=weights), Normalize()])
    model.save(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory) -> str:
    """A plain Hugging Face checkpoint (no modules.json): loads as Transformer + Pooling(cls) + Normalize."""
    return str(_build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert"))


@pytest.fixture(scope="session")
def tiny_st_model(tmp_path_factory, tiny_hf_model) -> str:
    """A sentence-transformers model with mean pooling and e5-style query/document prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(tiny_hf_model)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()],
        prompts={"query": "query: ", "document": "passage: "},
    )
    folder = tmp_path_factory.mktemp("models") / "tiny-st"
    model.save(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory, tiny_hf_model) -> str:
    """A saved CrossEncoder: the tiny BERT with a random one-score head (ranks at random, but deterministically)."""
    from sentence_transformers import CrossEncoder

    folder = tmp_path_factory.mktemp("models") / "tiny-reranker"
    CrossEncoder(tiny_hf_model, num_labels=1).save_pretrained(str(folder))
    return str(folder)


def prepared_rows() -> tuple[list[dict], list[dict], list[dict]]:
    """(train, eval, corpus) rows in the schema `just prepare` writes."""
    train, evaluation, corpus = [], [], []
    for group, title, author, dynasty, lines, translations in POEMS:
        for line, translation in zip(lines, translations, strict=True):
            row = {
                "anchor": translation,
                "positive": line,
                "negatives": [],
                "source": "works",
                "group": group,
            }
            (evaluation if group in EVAL_GROUPS else train).append(row)
            corpus.append({"text": line, "title": title, "author": author, "dynasty": dynasty, "group": group})
    for index, text in enumerate(EXTRA_CORPUS):
        corpus.append({"text": text, "title": "", "author": "", "dynasty": "", "group": f"x{index // 2}"})
    for index, row in enumerate(corpus):
        row["id"] = f"c{index}"
    return train, evaluation, corpus


@pytest.fixture
def prepared_dir(tmp_path) -> Path:
    """A folder as `just prepare` leaves it: train.jsonl, eval.jsonl, corpus.jsonl, stats.json."""
    folder = tmp_path / "processed"
    folder.mkdir()
    train, evaluation, corpus = prepared_rows()
    PAIR.write(folder / "train.jsonl", train)
    PAIR.write(folder / "eval.jsonl", evaluation)
    CORPUS.write(folder / "corpus.jsonl", corpus)
    (folder / "stats.json").write_text(json.dumps({"train_pairs": len(train), "eval_pairs": len(evaluation)}))
    return folder
