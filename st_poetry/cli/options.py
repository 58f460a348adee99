"""Flags and config files -> a stage's typed config (field default < `--config FILE`, TOML or JSON < flag), with
transformers' HfArgumentParser, as its and FlagEmbedding's runners expose TrainingArguments: a training stage takes
every trainer field beside its own. It loads no torch; a training stage's trainer fields do (imported by name)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import importlib
import json
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from transformers import HfArgumentParser

from st_poetry.core.config import PIPELINE_STAGES, PipelineConfig, check_type
from st_poetry.core.errors import UserError

C = TypeVar("C")
ARGPARSE_KEYS = ("help", "choices", "aliases", "metavar")  # the metadata argparse takes; core.config reads the rest


def trainer_class(cls: type) -> type | None:
    """The trainer's arguments class a training config names in TRAINER ("module:class"); None for other stages."""
    module, _, name = getattr(cls, "TRAINER", ":").partition(":")
    return getattr(importlib.import_module(module), name) if module else None


def renamed(cls: type) -> dict[str, str]:
    """A trainer field -> the field of ours that sets it under a short name (learning_rate -> lr)."""
    pairs = ((f.metadata.get("trainer", f.name), f.name) for f in dataclasses.fields(cls))
    return {theirs: ours for theirs, ours in pairs if theirs != ours}


def _none_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:  # an `X | None` field's flag also takes none
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = convert.__name__  # argparse's "invalid int value: 'x'"
    return parse


class Parser(HfArgumentParser):
    """A config's fields, then (unless `trainer=False`: no torch) its trainer's but those a field of ours sets or the
    stage DERIVES. Every default is SUPPRESS: only what was given reaches the config, over a config file's values."""

    def __init__(self, cls: type, prog: str | None = None, trainer: bool = True) -> None:
        self.own, self.added = {f.name for f in dataclasses.fields(cls)}, set()
        self.taken = {*renamed(cls), *getattr(cls, "DERIVED", {})}
        classes = [cls, *([trainer_class(cls)] if trainer and hasattr(cls, "TRAINER") else [])]
        super().__init__(classes, prog=prog, description=cls.__doc__, epilog=getattr(cls, "TRAINER_HELP", None))
        self.add_argument("--config", metavar="FILE", help="TOML or JSON file of field values; flags override it")
        for action in self._actions:  # (set_defaults would put the SUPPRESS string itself in the namespace)
            action.default = argparse.SUPPRESS if action.dest in self.added | {"config"} else action.default

    def _parse_dataclass_field(self, parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        if field.metadata.get("section") or field.name in self.added | self.taken:
            return
        self.added.add(field.name)
        meta = {key: value for key, value in field.metadata.items() if key in ARGPARSE_KEYS}
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        base = typing.get_args(field.type)[0] if typing.get_args(field.type)[1:] == (type(None),) else None  # X | None
        if default not in ([], None, dataclasses.MISSING) or base:
            meta["help"] = meta.get("help", "") + f" (default: {default!r})".replace("%", "%%")
        if field.metadata.get("positional"):
            return parser.add_argument(field.name, nargs="*", help=meta["help"])
        if (theirs := field.metadata.get("trainer", field.name)) != field.name:  # --learning_rate is --lr
            meta["aliases"] = [*meta.get("aliases", ()), f"--{theirs}", f"--{theirs.replace('_', '-')}"]
        if field.name in self.own and field.type is bool:  # --x / --no-x taking no value, as in `--json QUERY`
            flags = [f"--{field.name.replace('_', '-')}", *meta.pop("aliases", ())]
            return parser.add_argument(*flags, dest=field.name, action=argparse.BooleanOptionalAction, **meta)
        if field.name in self.own and typing.get_origin(field.type) is list:
            meta["action"] = "extend"  # `--model A --model B` and `--model A B` both give [A, B]
        if base is bool:  # a trainer's `bool | None`: a bare --FIELD is true, as for its bools
            meta.update(nargs="?", const=True)
        field = copy.copy(field)
        field.metadata, field.type = meta, _none_or(base) if base in (int, float, str) else field.type
        super()._parse_dataclass_field(parser, field)


def config_values(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` keyed by field name (- or _; a trainer field's name for ours); unknown keys: one line naming `where`."""
    own, trainer = {f.name for f in dataclasses.fields(cls)}, trainer_class(cls)
    known = own | {f.name for f in dataclasses.fields(trainer or cls)}
    values = {renamed(cls).get(key, key): value for key, value in ((k.replace("-", "_"), v) for k, v in values.items())}
    if unknown := sorted(set(values) - known):
        close = sorted({match for name in unknown for match in difflib.get_close_matches(name, known, 1)})
        guess = f" (did you mean {', '.join(close)}?)" if close else ""
        also = f", and {trainer.__name__}'s fields" if trainer else ""
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}{guess}; known: {', '.join(sorted(own))}{also}")
    return values


def build(cls: type[C], values: dict[str, Any], where: str) -> C:
    """`cls` from field values (a file's, a section's or flags'); a trainer field goes into the config's `trainer`."""
    values = config_values(cls, values, where)
    if trainer := trainer_class(cls):
        hints, own = typing.get_type_hints(trainer), {f.name for f in dataclasses.fields(cls)}
        given = {name: values.pop(name) for name in sorted(set(values) - own)}
        for name, value in given.items():
            check_type(name, value, hints[name])  # a flag's is typed already; a file's may be anything
        values["trainer"] = {**values.get("trainer", {}), **given}
    return cls(**values)


def load_config_file(path: str | Path, cls: type) -> dict[str, Any]:
    """A JSON/TOML config's values by field name; an unreadable file or an unknown key is an error naming it."""
    path, kind = Path(path), "TOML" if str(path).endswith(".toml") else "JSON"
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:  # not UTF-8: a ValueError, reported below; a byte-order mark is fine
        text = path.read_text(encoding="utf-8-sig")
        values = importlib.import_module("tomllib").loads(text) if kind == "TOML" else json.loads(text)  # 3.11+
    except (ValueError, ModuleNotFoundError) as error:
        raise UserError(f"{path}: not a valid {kind} config: {error}") from error
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config file must hold a table/object of field values")
    return config_values(cls, values, str(path))


def stage_configs(config: PipelineConfig, every: bool = False) -> dict[str, Any]:
    """The chosen stages' configs in order, each section read as a --config file would be, errors naming it. `every`
    reads the others too: a mistake in [train] should not surface an hour into `--stages prepare mine`."""
    configs = {}
    for name, cls in PIPELINE_STAGES.items():
        if name in config.chosen or (every and getattr(config, name) is not None):
            try:
                configs[name] = build(cls, getattr(config, name) or {}, f"[{name}]")
            except (ValueError, TypeError) as error:
                raise UserError(f"[{name}] {error}") from None
    return {name: stage for name, stage in configs.items() if name in config.chosen}


def parse_config(cls: type[C], argv: Sequence[str] | None = None, prog: str | None = None) -> C:
    """Defaults < config file < flags; a bad value exits with argparse's one-line usage error (code 2), naming the file
    for a wrong type: flags arrive typed by argparse."""
    parser = Parser(cls, prog)
    flags = vars(parser.parse_args(argv))
    path = flags.pop("config", None)
    try:
        config = build(cls, {**(load_config_file(path, cls) if path else {}), **flags}, path or "flags")
        if isinstance(config, PipelineConfig):
            stage_configs(config, every=True)
        return config
    except (UserError, ValueError, TypeError) as error:
        parser.error(f"{path}: {error}" if isinstance(error, TypeError) and path else str(error))
