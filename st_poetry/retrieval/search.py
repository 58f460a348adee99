"""Find the classical poetry lines a modern-Chinese description describes: build a faiss index once, then query it.

    st-poetry index --model models/st-poetry --corpus data/processed/corpus.jsonl --out indexes/poetry
    st-poetry search --index indexes/poetry "山中下雨后傍晚的秋天"
    st-poetry search --index indexes/poetry --reranker models/reranker "山中下雨后傍晚的秋天"

An index folder holds
- `index.faiss`: the normalized line embeddings (so inner product = cosine), by `--index-type`: exact
  `IndexFlatIP`, `IndexScalarQuantizer` (`sq8`: 8-bit codes, a quarter of the size), an approximate HNSW graph
  over either (`hnsw`, `hnsw-sq8`), or, for `pq4-sq8` (the whole collection's default), the 8-bit codes that
  reorder the candidates of a 4-bit scan. It is opened memory-mapped (`faiss.IO_FLAG_MMAP_IFC`): the codes stay
  in the OS page cache, shared by every process (server worker) that opens the same file;
- `scan.faiss` (pq4-sq8): 4-bit PQ codes scanned by SIMD, read into memory (faiss copies fast-scan codes out of
  a mapped file too, whose pages would then be held twice); with index.faiss it makes a faiss `IndexRefine`;
- `vectors.npy` (sq8, hnsw-sq8): the exact float32 embeddings, memory-mapped. A query takes the 8-bit index's
  top RESCORE_FACTOR x k and reorders them by their exact cosines read from here (`RescoredIndex`), so results
  and scores are the exact ones and only the candidates' rows are read from disk; a hybrid search gets the exact
  cosine of a BM25-only candidate the same way;
- `lines.arrow`: the corpus metadata (id, text, title, author, dynasty, group), row i = faiss id i, an Arrow file
  opened memory-mapped (st_poetry.retrieval.lines), so opening a large index does not parse the whole corpus;
- `bm25/`: a bm25s index of the lines' single characters (document i = faiss id i), memory-mapped when opened,
  for `--hybrid` search (st_poetry.retrieval.hybrid);
- `index.json`, written last: the model and the `--backend` that encoded it, the exact prompt strings, the
  embedding size and the embedding of a fixed probe line. A query uses that backend unless told otherwise, checks
  its model against that record and refuses one that encodes differently, because scores between two models'
  embeddings mean nothing; another backend of the same weights (an int8 export) is let through by a looser probe
  threshold, as its quantization noise is far below the gap between two models.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import bm25s
import faiss
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from st_poetry.core import tables
from st_poetry.core.config import AUTO_PQ_LINES, FusionOptions, IndexConfig, QueryConfig, parse_backend
from st_poetry.core.errors import UserError
from st_poetry.core.files import atomic_output_dir, check_output_dir, decode_text, write_json
from st_poetry.core.log import get_logger, progress_off
from st_poetry.core.prompts import document_prompt, query_prompt
from st_poetry.core.schema import CORPUS
from st_poetry.retrieval.encoder import open_encoder
from st_poetry.retrieval.hybrid import fused_ranking
from st_poetry.retrieval.lexical import BM25_TOKENIZERS, HYBRID_LEXICAL, build_bm25
from st_poetry.retrieval.lines import FIELDS, LINES_FILE, Lines, write_lines
from st_poetry.retrieval.service import SearchOptions, SearchService, check_query, fusion_options

logger = get_logger(__name__)

INDEX_INFO = IndexConfig.MARKER
FAISS_FILE = "index.faiss"
SCAN_FILE = "scan.faiss"
VECTORS_FILE = "vectors.npy"
# An 8-bit index's candidates per line asked for, rescored exactly: the codes order lines within about 1e-3 of
# their cosine, so the exact top k lies well inside the top few k (docs/BENCHMARKS.md#compressed-index).
RESCORE_FACTOR = 4
RESCORE_MIN = 40
BM25_DIR = "bm25"
# What a query reads from index.json.
INFO_KEYS = ("model", "query_instruction", "max_seq_length", "prompts", "embedding_dim", "probe", "index_type", "size")
# Any fixed text does: what matters is that the model that built the index and the one querying it agree on it.
PROBE_TEXT = "空山新雨后，天气晚来秋。"
# Lines encoded per call while building: the peak holds one chunk's embeddings (see encode_to_file).
ENCODE_CHUNK = 65_536
# Rows a coded index learns its codebooks or ranges from (a random sample of the corpus).
TRAIN_SAMPLE = 65_536
# pq4-sq8: dimensions per 4-bit PQ code, and the 4-bit scan's candidates that the 8-bit codes reorder: chosen on the
# whole collection for recall@10 against exact search (docs/BENCHMARKS.md#choosing-the-whole-collections-index).
PQ_DIMS_PER_CODE = 4
REFINE_CANDIDATES = 3_000
# The same weights give a cosine of 1 up to float noise (CPU vs GPU, fp16); even a lightly fine-tuned copy of a
# model moves the probe further than this.
PROBE_MIN_COSINE = 0.999
# A query backend other than the index's (an int8 export against an fp32 index, or back) moves the probe by its
# quantization noise, far less than another model does (measurements in docs/BENCHMARKS.md#backends): accepted.
PROBE_MIN_COSINE_ACROSS_BACKENDS = 0.98


# ---------------------------------------------------------------------------------------------------------
# build


def read_corpus(path: str | Path) -> list[dict[str, str]]:
    """Corpus rows, every field a string (schema.CORPUS: "" when absent, a missing id numbered); no text: an error."""
    rows = CORPUS.read(path)
    if not rows:
        raise UserError(f"{path}: the corpus is empty")
    return rows


def encode(encoder: Callable[..., np.ndarray], texts: Sequence[str], **kwargs: Any) -> np.ndarray:
    """Normalized float32 rows, contiguous for faiss; `encoder` is a model's encode_query or encode_document."""
    embeddings = encoder(list(texts), normalize_embeddings=True, convert_to_numpy=True, **kwargs)
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def model_record(model: Any) -> dict[str, Any]:
    """What a querying model must reproduce: the prompt strings, the embedding size and the probe's embedding."""
    return {
        "prompts": {"query": query_prompt(model), "document": document_prompt(model)},
        "embedding_dim": model.get_embedding_dimension(),
        "probe": encode(model.encode_document, [PROBE_TEXT])[0].round(6).tolist(),
    }


def chosen_index_type(index_type: str, lines: int) -> str:
    """`auto`: exact 8-bit rescoring (sq8) for a corpus that one scan serves quickly, the 4-bit fast scan refined by
    8-bit codes (pq4-sq8) from AUTO_PQ_LINES lines up (docs/search.md#index-types)."""
    if index_type != "auto":
        return index_type
    return "pq4-sq8" if lines >= AUTO_PQ_LINES else "sq8"


def new_faiss_index(config: IndexConfig, dim: int) -> faiss.Index:
    """The faiss index of `config.index_type` (not `auto`: `chosen_index_type` resolves it): exact inner product
    over float32 vectors or 8-bit codes, an HNSW graph over either, or 4-bit PQ codes scanned by SIMD and refined by
    8-bit codes. The coded types must be trained before vectors are added: `index_vectors` does it on a sample."""
    if config.index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if config.index_type == "sq8":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    if config.index_type == "pq4-sq8":
        return faiss.index_factory(dim, f"PQ{pq_subquantizers(dim)}x4fs,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT)
    if config.index_type == "hnsw-sq8":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = config.hnsw_ef_search  # stored in index.faiss: the query-time default
    return index


def pq_subquantizers(dim: int) -> int:
    """PQ_DIMS_PER_CODE dimensions per 4-bit code where the size divides evenly, else the nearest finer split."""
    return next(m for m in range(max(1, dim // PQ_DIMS_PER_CODE), dim + 1) if dim % m == 0)


class VectorsFile:
    """A .npy file of float32 rows written chunk by chunk as they are encoded, and read back the same way: plain
    file IO, not a memory map, so a whole corpus's vectors pass through without staying in the process's memory
    (`np.load(path, mmap_mode="r")` reads it as an array)."""

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        self.path, self.rows, self.dim = path, rows, dim
        with open(path, "wb") as handle:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
            np.lib.format.write_array_header_1_0(handle, {**header, "shape": (rows, dim)})
            self.offset = handle.tell()

    def append(self, embeddings: np.ndarray) -> None:
        with open(self.path, "ab") as handle:
            np.ascontiguousarray(embeddings, dtype=np.float32).tofile(handle)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for start in range(0, self.rows, size):
                count = min(size, self.rows - start) * self.dim
                yield np.fromfile(handle, dtype=np.float32, count=count).reshape(-1, self.dim)

    def sample(self, size: int) -> np.ndarray:
        """The rows `training_rows` picks, read into memory."""
        mapped = np.load(self.path, mmap_mode="r")
        return np.ascontiguousarray(mapped[training_rows(self.rows, size)])  # a copy: the mapping goes with `mapped`


def training_rows(rows: int, size: int) -> np.ndarray:
    """`size` of `rows` row numbers (all when fewer), seeded, in order: what a coded index is trained on."""
    return np.sort(np.random.default_rng(0).choice(rows, min(size, rows), replace=False))


def encode_to_file(model: Any, texts: Sequence[str], vectors: VectorsFile, batch_size: int) -> float:
    """Encode `texts` as documents into `vectors`, ENCODE_CHUNK lines per call; returns the seconds spent.

    One encode call over a whole corpus holds its embeddings several times over (the batches, their stack, the
    array); chunks hold one chunk's.
    """
    seconds = 0.0
    with tqdm(total=len(texts), desc="encoding", unit=" lines", unit_scale=True, disable=progress_off()) as bar:
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = texts[start : start + ENCODE_CHUNK]
            began = time.perf_counter()
            vectors.append(encode(model.encode_document, chunk, batch_size=batch_size))
            seconds += time.perf_counter() - began
            bar.update(len(chunk))
    return seconds


def index_vectors(index: faiss.Index, vectors: VectorsFile) -> faiss.Index:
    """Train `index` (a coded type) on TRAIN_SAMPLE random rows of the corpus, not its first lines, which come from
    one source and dynasty; then add every row in order (row i = faiss id i). An HNSW graph is built as it is
    added to."""
    if not index.is_trained:
        index.train(vectors.sample(TRAIN_SAMPLE))
    for chunk in tqdm(
        vectors.chunks(ENCODE_CHUNK),
        desc="indexing",
        unit=" chunks",
        disable=progress_off(),
        total=-(-vectors.rows // ENCODE_CHUNK),
    ):
        index.add(chunk)
    return index


def build_index(config: IndexConfig) -> dict[str, Any]:
    """Encode every corpus line, index the embeddings and write the index folder; returns what index.json records.

    The lines' table is written first and the vectors go to vectors.npy chunk by chunk, then into the index, so
    neither the parsed rows nor the whole matrix stays in memory; the file stays beside an sq8 index, which is
    rescored from it. The faiss index is written and let go before BM25 is built, the other large step.
    """
    rows = read_corpus(config.corpus)  # bad input, or an --out this stage may not replace, fails before encoding
    check_output_dir(config.out, INDEX_INFO)
    model = open_encoder(
        config.model,
        max_seq_length=config.max_seq_length,
        query_instruction=config.query_instruction,
        backend=config.backend,
        throughput=True,
    )
    record = model_record(model)
    config = dataclasses.replace(config, index_type=chosen_index_type(config.index_type, len(rows)))
    with atomic_output_dir(config.out, INDEX_INFO) as tmp:
        write_lines(tmp / LINES_FILE, rows)
        del rows  # the texts are read back from the table: the rows' objects can then all be freed, none pinned
        texts = Lines(tmp / LINES_FILE).column("text").to_pylist()
        vectors = VectorsFile(tmp / VECTORS_FILE, len(texts), record["embedding_dim"])
        encode_seconds = encode_to_file(model, texts, vectors, config.batch_size)
        del model
        start = time.perf_counter()
        index = index_vectors(new_faiss_index(config, record["embedding_dim"]), vectors)
        size = index.ntotal
        write_faiss(index, tmp)
        del index
        if not rescored(config.index_type):
            vectors.path.unlink()
        bm25 = build_bm25(texts, BM25_TOKENIZERS[HYBRID_LEXICAL], show_progress=not progress_off())
        bm25.save(str(tmp / BM25_DIR), show_progress=False)
        index_seconds = time.perf_counter() - start
        info = {
            "model": config.model,
            "backend": config.backend,
            "model_file": parse_backend(config.backend)[1],
            "query_instruction": config.query_instruction,
            "max_seq_length": config.max_seq_length,
            **record,
            "index_type": config.index_type,
            "hnsw": (
                {"m": config.hnsw_m, "ef_construction": config.hnsw_ef_construction, "ef_search": config.hnsw_ef_search}
                if config.index_type.startswith("hnsw")
                else None
            ),
            "bm25": {"folder": BM25_DIR, "tokens": HYBRID_LEXICAL, "k1": bm25.k1, "b": bm25.b},
            "corpus": str(config.corpus),
            "size": size,
            "encode_seconds": round(encode_seconds, 1),
            "index_seconds": round(index_seconds, 1),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / INDEX_INFO, info)

    size_mb, bm25_mb = _folder_mb(Path(config.out)), _folder_mb(Path(config.out) / BM25_DIR)
    logger.info(
        f"indexed {size:,} lines from {config.corpus} with {config.model} (--backend {config.backend})\n"
        f"  {info['embedding_dim']}-dim, {config.index_type} index, prompts {info['prompts']}\n"
        f"  encoding {encode_seconds:.1f}s ({size / max(encode_seconds, 1e-9):.0f} lines/s), "
        f"indexing (faiss + BM25) {index_seconds:.1f}s\n"
        f"  wrote {config.out} ({size_mb:.1f} MB, of which BM25 {bm25_mb:.1f} MB)"
    )
    return info


def rescored(index_type: str) -> bool:
    """Whether an index type keeps its exact vectors beside its codes, to rescore its candidates."""
    return index_type in ("sq8", "hnsw-sq8")


class RescoredIndex:
    """An 8-bit faiss index whose candidates are reordered by exact cosines: what retrieval calls of a faiss index
    (`search`, `reconstruct_batch`, `ntotal`), answered from the memory-mapped float32 vectors."""

    def __init__(self, index: faiss.Index, vectors: np.ndarray) -> None:
        self.index, self.vectors, self.ntotal, self.d = index, vectors, index.ntotal, index.d

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        depth = min(self.ntotal, max(k * RESCORE_FACTOR, RESCORE_MIN))
        _, candidates = self.index.search(queries, depth)
        scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
        for row, (query, ids) in enumerate(zip(queries, candidates, strict=True)):
            found = ids >= 0  # an HNSW graph may return fewer
            scores[row, found] = self.reconstruct_batch(ids[found]) @ query
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(candidates, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        return scores, np.where(np.isfinite(scores), ids, -1)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """Exact vectors, read in id order (fewer page faults), returned in the order asked."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids)
        vectors = np.empty((len(ids), self.d), dtype=np.float32)
        vectors[order] = self.vectors[ids[order]]
        return vectors


class RefinedIndex:
    """A pq4-sq8 index (faiss `IndexRefine`) searched as retrieval calls a faiss index: the 4-bit scan's top
    REFINE_CANDIDATES lines (more when k asks for more) reordered by their 8-bit codes. A candidate's dense score,
    a BM25-only line's included, is its cosine to the 8-bit decoded vector (`reconstruct_batch`)."""

    def __init__(self, index: faiss.Index, candidates: int = REFINE_CANDIDATES) -> None:
        self.index, self.candidates, self.ntotal, self.d = index, candidates, index.ntotal, index.d
        self.reconstruct_batch = index.reconstruct_batch

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.IndexRefineSearchParameters(k_factor=max(1.0, self.candidates / k))
        return self.index.search(queries, k, params=params)


def write_faiss(index: faiss.Index, folder: Path) -> None:
    """index.faiss; a pq4-sq8 index (`IndexRefine`) as its 8-bit codes there and its 4-bit scan in SCAN_FILE."""
    if isinstance(index, faiss.IndexRefine):
        faiss.write_index(faiss.downcast_index(index.base_index), str(folder / SCAN_FILE))
        index = faiss.downcast_index(index.refine_index)
    faiss.write_index(index, str(folder / FAISS_FILE))


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


# ---------------------------------------------------------------------------------------------------------
# query


def read_faiss(path: Path) -> faiss.Index:
    """The index with its vectors or codes memory-mapped read-only (every type `just index` writes: the flat
    codes of flat and sq8, an HNSW graph's storage), so processes that open the same file share one copy in the
    page cache and a process's memory does not grow with the corpus; the HNSW graph's links are still read."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


def read_index_folder(folder: Path) -> tuple[dict[str, Any], faiss.Index, Lines]:
    """index.json, index.faiss and lines.arrow, checked to belong together; anything damaged is one line that says
    to rebuild, never a traceback from faiss or pyarrow."""
    if not (folder / INDEX_INFO).is_file():
        raise UserError(
            f"no index at {folder} (no {INDEX_INFO}): build one with `just index --model PATH --out {folder}`"
        )
    rebuild = rebuild_hint(folder)
    try:
        info = json.loads((folder / INDEX_INFO).read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise UserError(f"{folder / INDEX_INFO} is unreadable ({error}): {rebuild}") from None
    missing = [key for key in INFO_KEYS if key not in info] if isinstance(info, dict) else list(INFO_KEYS)
    if missing:
        raise UserError(f"{folder / INDEX_INFO} lacks {', '.join(missing)}: not written by `just index`; {rebuild}")
    index = _read_faiss_or_rebuild(read_faiss, folder / FAISS_FILE)
    try:
        lines = Lines(folder / LINES_FILE)
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"{folder / LINES_FILE} is missing or unreadable ({error}): {rebuild}") from None
    if not index.ntotal == len(lines) == info["size"] or index.d != info["embedding_dim"]:
        raise UserError(
            f"{folder} does not hold together: {FAISS_FILE} has {index.ntotal:,} {index.d}-dim vectors, {LINES_FILE} "
            f"{len(lines):,} lines, {INDEX_INFO} says {info['size']:,} of {info['embedding_dim']} dims "
            f"(files of two builds?): {rebuild}"
        )
    return info, index, lines


def rebuild_hint(folder: Path) -> str:
    """The end of every message about a damaged index folder."""
    return f"rebuild it: just index --model PATH --out {folder}"


def _read_faiss_or_rebuild(read: Callable[[Path], faiss.Index], path: Path) -> faiss.Index:
    try:
        return read(path)
    except RuntimeError as error:
        reason = str(error).rsplit("Error: ", 1)[-1].strip()
        raise UserError(f"{path} is unreadable (truncated or corrupt: {reason}): {rebuild_hint(path.parent)}") from None


def read_scan(folder: Path, codes: faiss.Index) -> faiss.IndexRefine:
    """A pq4-sq8 index put together: the 4-bit scan of SCAN_FILE, checked to match the 8-bit codes it is refined by."""
    scan = _read_faiss_or_rebuild(lambda path: faiss.read_index(str(path)), folder / SCAN_FILE)
    if (scan.ntotal, scan.d) != (codes.ntotal, codes.d):
        raise UserError(
            f"{folder} does not hold together: {SCAN_FILE} has {scan.ntotal:,} {scan.d}-dim vectors, {FAISS_FILE} "
            f"{codes.ntotal:,} {codes.d}-dim: {rebuild_hint(folder)}"
        )
    return faiss.IndexRefine(scan, codes)


def read_vectors(folder: Path, index: faiss.Index) -> np.ndarray:
    """vectors.npy memory-mapped read-only, checked to match index.faiss."""
    rebuild = rebuild_hint(folder)
    try:
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise UserError(f"{folder / VECTORS_FILE} is missing or unreadable ({error}): {rebuild}") from None
    if vectors.shape != (index.ntotal, index.d) or vectors.dtype != np.float32:
        raise UserError(
            f"{folder} does not hold together: {VECTORS_FILE} holds {vectors.dtype} {vectors.shape}, {FAISS_FILE} "
            f"{index.ntotal:,} {index.d}-dim vectors: {rebuild}"
        )
    return vectors


class PoetryIndex:
    """An index folder opened for search, with a model checked to encode like the one that built it."""

    def __init__(
        self, folder: str | Path, model: str | None = None, ef_search: int | None = None, backend: str | None = None
    ) -> None:
        self.folder = Path(folder)
        self.info, self.index, self.lines = read_index_folder(self.folder)
        if ef_search is not None:
            if not isinstance(self.index, faiss.IndexHNSW):
                raise UserError(f"--ef-search applies to hnsw indexes; {self.folder} is {self.info['index_type']}")
            self.index.hnsw.efSearch = ef_search
        # what retrieval searches: the faiss index, or an 8-bit one rescored from the exact vectors
        self.searched: faiss.Index | RescoredIndex | RefinedIndex = self.index
        if rescored(self.info["index_type"]):
            self.searched = RescoredIndex(self.index, read_vectors(self.folder, self.index))
        elif self.info["index_type"] == "pq4-sq8":
            self.searched = RefinedIndex(read_scan(self.folder, self.index))

        name = model or self.info["model"]
        self.backend = backend or self.info.get("backend", "torch")  # indexes from before --backend: torch
        try:
            self.model = open_encoder(
                name,
                max_seq_length=self.info["max_seq_length"],
                query_instruction=self.info["query_instruction"],
                backend=self.backend,
            )
        except UserError as error:
            if model:
                raise
            raise UserError(
                f"{self.folder} was built with {name!r}, which cannot be loaded ({error}); "
                "pass the model with --model PATH"
            ) from None
        self._check_model(name, given=model is not None or backend is not None)

    def _check_model(self, name: str, given: bool) -> None:
        built = f"{self.folder} was built with {self.info['model']!r} (--backend {self.info.get('backend', 'torch')})"
        rebuild = f"just index --model {name} --backend {self.backend} --out {self.folder}"
        fix = (
            f"query with that model (omit --model, --backend) or rebuild: {rebuild}" if given else f"rebuild: {rebuild}"
        )
        record = model_record(self.model)
        if record["embedding_dim"] != self.info["embedding_dim"]:
            raise UserError(
                f"{built} ({self.info['embedding_dim']}-dim embeddings), but {name!r} gives "
                f"{record['embedding_dim']}-dim ones: {fix}"
            )
        if record["prompts"] != self.info["prompts"]:
            raise UserError(f"{built} and prompts {self.info['prompts']}, but {name!r} has {record['prompts']}: {fix}")
        cosine = float(np.dot(record["probe"], self.info["probe"]))
        same_backend = self.backend == self.info.get("backend", "torch")
        if cosine < (PROBE_MIN_COSINE if same_backend else PROBE_MIN_COSINE_ACROSS_BACKENDS):
            now = (
                f"{name!r} (--backend {self.backend}) encodes differently" if given else "that model has changed since"
            )
            raise UserError(f"{built}, and {now} (probe cosine {cosine:.4f}): {fix}")

    @cached_property
    def bm25(self) -> bm25s.BM25:
        """The BM25 part, memory-mapped, opened at the first hybrid search: a dense search never needs it."""
        if "bm25" not in self.info:
            raise UserError(
                f"{self.folder} has no BM25 part (built before hybrid search): rebuild it with "
                f"`just index --model {self.info['model']} --out {self.folder}`, or search with --no-hybrid"
            )
        folder = self.folder / self.info["bm25"]["folder"]
        rebuild = rebuild_hint(self.folder)
        try:
            bm25 = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
        except (OSError, ValueError) as error:
            raise UserError(f"{folder} is missing or unreadable ({error}): {rebuild}") from None
        if bm25.scores["num_docs"] != self.index.ntotal:
            raise UserError(
                f"{self.folder} does not hold together: {folder.name}/ indexes {bm25.scores['num_docs']:,} lines, "
                f"{FAISS_FILE} {self.index.ntotal:,}: {rebuild}"
            )
        return bm25

    def search(
        self, queries: Sequence[str], top_k: int = 10, hybrid: bool = False, fusion: FusionOptions | None = None
    ) -> list[list[dict[str, Any]]]:
        """For each query, its top_k lines (all of them when the index has fewer) best first: rank, score and the
        line's metadata; the retrieval service's path (`SearchService`) without a reranker.

        score is the cosine; with `hybrid` it is the fused score (`fusion`'s settings, FusionOptions' defaults
        when None) and each hit also carries its dense_score (cosine) and bm25_score.
        """
        fusion = dataclasses.replace(fusion_options(fusion or FusionOptions()), hybrid=hybrid)
        return SearchService(self).search(queries, SearchOptions(top_k, fusion))

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """The queries' normalized embeddings, one row each, in one model call."""
        return encode(self.model.encode_query, queries)

    def retrieve(
        self, queries: Sequence[str], embeddings: np.ndarray, top_k: int, fusion: FusionOptions
    ) -> list[list[dict[str, Any]]]:
        """Each query's top_k hits from its embedding: by cosine (one faiss call for all queries), or with
        `fusion.hybrid` fused with BM25 over the query's characters; then the lines' metadata in one read."""
        if fusion.hybrid:
            bm25 = self.bm25
            tokenize = BM25_TOKENIZERS[self.info["bm25"]["tokens"]]
            tokens = [tokenize(text) for text in queries]  # none for a query of symbols: the dense side alone
            hits = [
                [(i, fused, {"dense_score": dense, "bm25_score": bm25}) for i, dense, bm25, fused in row]
                for row in fused_ranking(self.searched, embeddings, bm25, tokens, fusion, top_k)
            ]
        else:
            scores, ids = self.searched.search(embeddings, min(top_k, self.index.ntotal))
            # an HNSW search may return fewer than k: id -1
            hits = [
                [(int(i), float(score), {}) for score, i in zip(row_scores, row_ids, strict=True) if i >= 0]
                for row_scores, row_ids in zip(scores, ids, strict=True)
            ]
        found_ids = sorted({i for row in hits for i, _, _ in row})
        columns = self.lines.rows(found_ids)
        metadata = {i: {key: columns[key][n] for key in FIELDS} for n, i in enumerate(found_ids)}
        return [
            [{"rank": rank, "score": score, **extra, **metadata[i]} for rank, (i, score, extra) in enumerate(row, 1)]
            for row in hits
        ]


def read_queries(config: QueryConfig) -> list[str]:
    """Positional queries, then one per non-blank line of --file ('-' = stdin); an empty query is an error."""
    queries = [check_query(query) for query in config.queries]
    if config.file is not None:
        if config.file == "-":
            source, text = "stdin", decode_text(sys.stdin.buffer.read(), "stdin")
        elif Path(config.file).is_file():
            source, text = config.file, decode_text(Path(config.file).read_bytes(), config.file)
        else:
            raise UserError(f"query file not found: {config.file}")
        from_file = [check_query(line) for line in text.splitlines() if line.strip()]
        if not from_file:
            raise UserError(f"{source}: no queries in it (one description per line)")
        queries += from_file
    if not queries:
        raise UserError("no query given: pass descriptions as arguments, or --file FILE (--file - reads stdin)")
    return queries


def format_table(query: str, hits: Sequence[dict[str, Any]]) -> str:
    """One row per hit; a hybrid search also shows the two sides' scores (the score column is the fused one), a
    reranked one the reranker's score."""
    reranked = any("rerank_score" in hit for hit in hits)
    sides = {"dense_score": "dense", "bm25_score": "bm25"} if hits and "dense_score" in hits[0] else {}
    header = ("#", "score", *(("rerank",) if reranked else ()), *sides.values(), "line", "title", "author", "dynasty")
    rows = [header] + [
        (
            str(hit["rank"]),
            f"{hit['score']:.3f}",
            *((f"{hit['rerank_score']:.3f}" if "rerank_score" in hit else "",) if reranked else ()),
            *(f"{hit[key]:.3f}" for key in sides),
            hit["text"],
            hit["title"],
            hit["author"],
            hit["dynasty"],
        )
        for hit in hits
    ]
    return f"» {query}\n" + tables.format_table(header, rows[1:])


def query(config: QueryConfig) -> list[dict[str, Any]]:
    """Search the index for every query and print a table per query (or one JSON object per line).

    With --reranker the retriever's top --rerank-top-k lines are reordered; the time per query of retrieval
    and of reranking goes to stderr (stdout stays one JSON object per line with --json).
    """
    queries = read_queries(config)  # before the slow model loads
    index = PoetryIndex(config.index, model=config.model, ef_search=config.ef_search, backend=config.backend)
    reranker = None
    if config.reranker:
        from st_poetry.core.modeling import load_reranker  # torch: only for a search that reranks

        reranker = load_reranker(config.reranker)
    service = SearchService(index, reranker, config.rerank_top_k)
    if config.top_k > index.index.ntotal:
        logger.info(f"note: --top-k {config.top_k} is more than the index's {index.index.ntotal:,} lines: all of them")
    k = service.rerank_depth
    if reranker and k < config.rerank_top_k:
        logger.info(
            f"note: --rerank-top-k {config.rerank_top_k} is more than the index's {k:,} lines: reranking them all"
        )
    seconds: dict[str, float] = {}
    options = SearchOptions(config.top_k, fusion_options(config), rerank=reranker is not None)
    hits = service.search(queries, options, timing=seconds)
    results = [{"query": query, "results": query_hits} for query, query_hits in zip(queries, hits, strict=True)]
    for result in results:
        if config.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(format_table(result["query"], result["results"]), end="\n\n")
    timing = ", ".join(
        f"{name} {seconds[name] * 1000 / len(queries):.1f} ms" for name in ("retrieval", "rerank") if name in seconds
    )
    reranking = f" (reranking the top {k})" if reranker else ""
    logger.info(f"{len(queries)} queries, per query: {timing}{reranking}")
    return results
