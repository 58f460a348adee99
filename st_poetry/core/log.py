"""The library logger, `st_poetry`: what the stages say while they work, with `-v`/`-q` and rank awareness.

Every module logs through `get_logger(__name__)`, a child of `st_poetry`, whose one handler writes plain lines to
the stderr of the moment: an info record as it is ("note: ..." notes, a stage's summary), the others after their
level ("warning: ...", "debug: ..."). A command's result (search hits, `--help`) is printed on stdout instead, and
the one-line `error: ...` that ends a command is run_cli's, not a record.

    set_verbosity(logging.WARNING)   # -q: warnings only, and the libraries' chatter and progress bars off
    set_verbosity(logging.DEBUG)     # -v: debug lines too

Under torchrun every process runs the whole stage; only the main one (RANK 0) logs below a warning, as
transformers' Trainer does for its own logs. Stdlib only: `download` and `prepare` load no torch, so the
libraries' verbosity is set by `sync_libraries` once a stage has imported them (st_poetry.core.modeling).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

ROOT = "st_poetry"
DEFAULT_LEVEL = logging.INFO
# The libraries whose loggers follow -q (and -vv); transformers and datasets reset their level when first used,
# so theirs is set through their own API once they are imported.
LIBRARIES = ("sentence_transformers", "transformers", "datasets")
VERBOSE_FLAGS = {"-v": 1, "--verbose": 1, "-q": -1, "--quiet": -1}


_library_level: int | None = None  # what set_verbosity chose for the libraries; None: their own defaults
_saved: dict[str, tuple[int, bool]] = {}  # library -> (its level, its progress bars) before the first change


def is_main_process() -> bool:
    """False in a torchrun/accelerate worker other than the first (RANK, else LOCAL_RANK, is not 0)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")).strip() in ("", "0")


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes (pytest's capsys, a redirected stream), not at import."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def _main_process_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_main_process()


def _configure() -> None:
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_PlainFormatter("%(message)s"))
        handler.addFilter(_main_process_or_warning)
        logger.addHandler(handler)
        logger.setLevel(DEFAULT_LEVEL)
        logger.propagate = False  # as transformers does: one line per record even when the root logger prints too


_configure()


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (pass `__name__`), under the configured `st_poetry` logger."""
    return logging.getLogger(name if name == ROOT or name.startswith(f"{ROOT}.") else f"{ROOT}.{name}")


def get_verbosity() -> int:
    return logging.getLogger(ROOT).level


def set_verbosity(level: int, *, libraries: int | None = None) -> None:
    """Log `level` and above. Above INFO (quiet) the libraries log only errors and show no progress bars;
    `libraries` sets their level explicitly (-vv: INFO), None leaves them at their defaults otherwise."""
    global _library_level
    logging.getLogger(ROOT).setLevel(level)
    _library_level = libraries if libraries is not None else (logging.ERROR if level > logging.INFO else None)
    sync_libraries()


def progress_off() -> bool:
    """Whether our own progress bars stay hidden: quiet, or not the main process (tqdm's `disable`)."""
    return get_verbosity() > logging.INFO or not is_main_process()


def _library_api(name: str):
    """transformers' or datasets' `utils.logging` once imported (set_verbosity, progress-bar switches)."""
    return sys.modules.get(f"{name}.utils.logging")


def _library_settings(name: str) -> tuple[int, bool]:
    api = _library_api(name)
    if api is None:  # sentence-transformers: a plain logger; it shows progress bars at INFO or DEBUG
        return logging.getLogger(name).level, True
    return api.get_verbosity(), bool(api.is_progress_bar_enabled())


def _set_library(name: str, level: int, progress_bars: bool) -> None:
    api = _library_api(name)
    if api is None:
        logging.getLogger(name).setLevel(level)
        return
    api.set_verbosity(level)
    (api.enable_progress_bar if progress_bars else api.disable_progress_bar)()


def sync_libraries() -> None:
    """Give the libraries already imported the verbosity set_verbosity chose; a stage calls this once it has
    imported them, as they set their own level on import. Back at the default, their earlier settings return."""
    level = _library_level
    for name in LIBRARIES:
        if name != "sentence_transformers" and _library_api(name) is None:
            continue  # not imported (yet): its own import would reset the level
        if level is None:
            if name in _saved:
                _set_library(name, *_saved.pop(name))
            continue
        _saved.setdefault(name, _library_settings(name))
        _set_library(name, level, level <= logging.INFO)


def split_verbosity(argv: Sequence[str]) -> tuple[int, list[str]]:
    """The count of -v (+1) and -q (-1) flags anywhere before a `--` (-vv, -qq count twice) and argv without
    them; the command's own options never use these letters."""
    count, rest = 0, []
    for index, arg in enumerate(argv):
        if arg == "--":
            rest += argv[index:]
            break
        if arg in VERBOSE_FLAGS:
            count += VERBOSE_FLAGS[arg]
        elif len(arg) > 2 and arg[0] == "-" and arg[1] in "vq" and set(arg[1:]) == {arg[1]}:
            count += len(arg[1:]) * VERBOSE_FLAGS[arg[:2]]
        else:
            rest.append(arg)
    return count, rest


def verbosity_flags() -> list[str]:
    """The -v/-q flags that ask for the current verbosity: what a command passes on to a command it runs."""
    level = get_verbosity()
    if level <= logging.DEBUG:
        return ["-vv" if _library_level == logging.INFO else "-v"]
    return {logging.WARNING: ["-q"], logging.ERROR: ["-qq"]}.get(level, [])


def apply_cli_verbosity(argv: Sequence[str]) -> list[str]:
    """`-v`/`-q` for every command: strip them from argv and set the verbosity they ask for (-q: warnings,
    -qq: errors only; -v: debug lines; -vv: the libraries' info lines too)."""
    count, rest = split_verbosity(argv)
    if count < 0:
        level = logging.WARNING if count == -1 else logging.ERROR
    else:
        level = logging.DEBUG if count > 0 else DEFAULT_LEVEL
    set_verbosity(level, libraries=logging.INFO if count >= 2 else None)
    return rest
