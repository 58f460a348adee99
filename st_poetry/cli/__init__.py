"""`st-poetry COMMAND [options]`: every stage behind one entry point; the Justfile's recipes are its aliases.

A command's module is imported only once its options are parsed, so `--help`, `prepare` and `download` never pay
for torch. Options come from the stage's config dataclass (st_poetry.core.config), parsed by st_poetry.cli.options:
defaults < `--config FILE` < flags.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from st_poetry.core import config as configs
from st_poetry.core.errors import INTERRUPTED_EXIT, MACHINE_ERRNOS, UserError, describe_os_error
from st_poetry.core.log import apply_cli_verbosity

C = TypeVar("C")

# command -> (its config class, "module:function" that runs it)
COMMANDS: dict[str, tuple[type, str]] = {
    "download": (configs.DownloadConfig, "st_poetry.data.download:download"),
    "prepare": (configs.PrepareConfig, "st_poetry.data.prepare:prepare"),
    "mine": (configs.MineConfig, "st_poetry.training.mine:mine"),
    "train": (configs.TrainConfig, "st_poetry.training.train:train"),
    "train-reranker": (configs.RerankConfig, "st_poetry.training.reranker:train"),
    "evaluate": (configs.EvaluateConfig, "st_poetry.evaluation.evaluate:evaluate"),
    "export": (configs.ExportConfig, "st_poetry.retrieval.export:export"),
    "index": (configs.IndexConfig, "st_poetry.retrieval.search:build_index"),
    "search": (configs.QueryConfig, "st_poetry.retrieval.search:query"),
    "serve": (configs.ServeConfig, "st_poetry.serve.run:serve"),
    "pipeline": (configs.PipelineConfig, "st_poetry.cli.pipeline:run_pipeline"),
}
PROG = "st-poetry"


def usage() -> str:
    lines = [f"usage: {PROG} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16}{(cls.__doc__ or '').strip().splitlines()[0]}" for name, (cls, _) in COMMANDS.items()]
    lines += ["", f"`{PROG} COMMAND --help` lists a command's options; -v/-q (repeatable) for more or less output."]
    return "\n".join(lines)


def run_command(name: str, config: Any) -> Any:
    """Run command `name` on its parsed config, importing its module now."""
    module, function = COMMANDS[name][1].split(":")
    return getattr(importlib.import_module(module), function)(config)


def run_cli(
    cls: type[C], stage: Callable[[C], Any], argv: Sequence[str] | None = None, prog: str | None = None
) -> None:
    """The whole `__main__` of a stage: parse and run, and end in one line on stderr instead of a traceback for
    a UserError (exit code 2), a machine error such as a full disk (1), or Ctrl-C (130)."""
    from st_poetry.cli.options import parse_config  # (transformers' parser: not for `st-poetry --help`)

    config = parse_config(cls, argv, prog)
    try:
        stage(config)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
    except OSError as error:
        if error.errno not in MACHINE_ERRNOS:
            raise
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        raise SystemExit(1) from None


def main(argv: Sequence[str] | None = None) -> None:
    argv = apply_cli_verbosity(sys.argv[1:] if argv is None else argv)  # -v/-q, anywhere, for every command
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "missing command"
        print(f"{usage()}\n\nerror: {given}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    name = argv[0]
    run_cli(COMMANDS[name][0], lambda config: run_command(name, config), argv[1:], prog=f"{PROG} {name}")
